//! A device's stream on any node of a cluster: one merged, resumable stream over every shard.
//!
//! An account's inbox is spread over the shards (one per conversation's shard), each with its
//! own sequence numbers. A device connected to this node gets a *session*: the device is
//! connected in every shard (on each shard's owner, which holds the subscription — so the
//! single node's delivery rules hold there: only durable entries, cursors moved only by the
//! client), and one task per shard pulls its events (`Call::Pull`, waiting on the owner until
//! there are some) into one channel, in arrival order.
//!
//! **Position token.** Each event the device gets carries, instead of a number, the token of
//! the position after it: the last sequence number received from each shard, written
//! `c<shard>-<seq>.<shard>-<seq>...` (shards with none left out; `c` alone: nothing yet).
//! Confirming a token (WebSocket `{"Op":"ack","Seq":TOKEN}`, SSE `Last-Event-ID`,
//! `POST /v4/imstore/ack {"Seq":TOKEN}`, or `after=TOKEN` on a new connection) confirms
//! receipt, in each shard, up to its sequence there (R7).
//!
//! **Failover.** When a shard changes owner its subscription is gone: the new owner answers
//! "no session", and the task connects the device again after the last position the client
//! confirmed in that shard — so what was handed out but not confirmed comes again (at least
//! once, R7), and the task drops what this connection already passed on (the same sequence
//! numbers: the new owner replayed the same stream). An owner that is briefly unreachable
//! is asked again (`rpc.rs`); a pull whose answer may have been lost because some node
//! reconnected to NATS is sent again at once. Memory per session is one pending batch per
//! shard, each at most 64 events and (as an owner answers it) ~64 KiB, or one event, however
//! large (`owner.rs`, `PULL_ANSWER_BYTES`): a larger batch is handed out over several pulls.
//!
//! **Connecting again.** The same device connecting again — through this node or another —
//! ends the session before it, whose connection may still be open (its client went away
//! without closing). The owners answer the old session's pulls "superseded" and it ends; its
//! connecting again after "no session" never takes the device back from the newer one (the
//! claims in `owner.rs`), so two open connections of one device cannot end each other in turn.
//!
//! Cost: a session is connected in every shard (one journal record per shard at connect) and
//! keeps one pull waiting per shard (up to 15 s each, then asked again): with the default 64
//! shards, about 4 requests a second per idle device. A push from owners to nodes would cut
//! that; it is not built yet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::Node;
use super::rpc::{self, Answer, Call, WireEvent};
use crate::api::DeviceRequest;
use crate::error::Error;

/// How long an owner holds a pull while it has nothing to hand out.
const PULL_WAIT: Duration = Duration::from_secs(15);

/// A position: the last sequence number received from each shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Token(pub Vec<u64>);

impl Token {
    pub fn new(shards: u32) -> Token {
        Token(vec![0; shards as usize])
    }

    /// Parses a token this cluster gave (90001 otherwise).
    pub fn parse(s: &str, shards: u32) -> Result<Token, Error> {
        let bad = || Error::InvalidField {
            field: "after",
            code: 90001,
            why: "must be a position token this cluster gave (c<shard>-<seq>...)".into(),
        };
        let rest = s.trim().strip_prefix('c').ok_or_else(bad)?;
        let mut t = Token::new(shards);
        for part in rest.split('.').filter(|p| !p.is_empty()) {
            let (n, seq) = part.split_once('-').ok_or_else(bad)?;
            let n: u32 = n.parse().map_err(|_| bad())?;
            let seq: u64 = seq.parse().map_err(|_| bad())?;
            *t.0.get_mut(n as usize).ok_or_else(bad)? = seq;
        }
        Ok(t)
    }

    pub fn encode(&self) -> String {
        let mut out = String::from("c");
        for (n, seq) in self.0.iter().enumerate().filter(|(_, s)| **s > 0) {
            if out.len() > 1 {
                out.push('.');
            }
            out.push_str(&format!("{n}-{seq}"));
        }
        out
    }
}

/// What the shard tasks send the session: events of a shard, or the end of the session.
pub enum Delivery {
    Events(u32, Vec<WireEvent>),
    /// The shard's owner started the session after this position, not after the one asked
    /// for, which was past the shard's inbox (`Subscription::reset`): the client is told.
    Reset(u32, u64),
    /// The same device connected again (through any node): this session ends.
    Superseded,
    /// The account is gone (an owner refuses to connect it, 70107): this session ends, as
    /// on a single node, rather than ask every shard again for good.
    AccountGone,
}

/// An owner's refusal that asking again will not change: the account was deleted.
fn lasting(code: u32) -> bool {
    code == 70107
}

/// A device's merged stream. Dropping it ends the session everywhere.
pub struct Feed {
    node: Arc<Node>,
    req: DeviceRequest,
    session: u64,
    rx: mpsc::Receiver<Delivery>,
    /// What this connection has passed on to the client.
    position: Token,
    /// What the client confirmed, per shard (read by the shard tasks when they reconnect).
    confirmed: Arc<Vec<AtomicU64>>,
    stop: watch::Sender<bool>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        close_everywhere(self.node.clone(), &self.req, self.session);
    }
}

/// Lets every shard's owner drop the session's subscription now (they would after
/// [`SESSION_IDLE`](super::SESSION_IDLE) anyway), in the background, each asked once for at
/// most 2 s.
fn close_everywhere(node: Arc<Node>, req: &DeviceRequest, session: u64) {
    let call = Call::Close {
        account: req.account.clone(),
        device: req.device.clone(),
        session,
    };
    tokio::spawn(async move {
        let closes = (0..node.shards()).map(|n| {
            let (node, call) = (&node, &call);
            async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    node.client()
                        .request(rpc::subject(n), rpc::encode(call, &[])),
                )
                .await;
            }
        });
        futures_util::future::join_all(closes).await;
    });
}

/// Connects `req`'s device in every shard (resuming after `after` where it names a position),
/// then starts pulling. Fails — with the single node's error — if a shard refuses the device
/// (too many devices, an unknown account) or cannot be reached.
pub async fn open(
    node: &Arc<Node>,
    req: DeviceRequest,
    after: Option<Token>,
) -> Result<Feed, Error> {
    let shards = node.shards();
    let session = node.next_session();
    let mut start = after.clone().unwrap_or_else(|| Token::new(shards));
    let connects = (0..shards).map(|n| {
        let (node, req, resume) = (node, &req, after.as_ref().map(|t| t.0[n as usize]));
        let resume = resume.filter(|s| *s > 0);
        async move { connect(node, n, req, session, resume, (false, None)).await }
    });
    // A shard where a newer session claimed the device already answers our first pull with
    // "superseded", and the feed ends then.
    let mut resets = Vec::new();
    for (n, result) in futures_util::future::join_all(connects)
        .await
        .into_iter()
        .enumerate()
    {
        match result {
            Ok(Connected { reset: Some(r), .. }) => {
                start.0[n] = r;
                resets.push(Delivery::Reset(n as u32, r));
            }
            Ok(_) => {}
            Err(e) => {
                // The shards that did connect hold a subscription nobody will pull.
                close_everywhere(node.clone(), &req, session);
                return Err(e);
            }
        }
    }
    let confirmed: Arc<Vec<AtomicU64>> =
        Arc::new(start.0.iter().map(|s| AtomicU64::new(*s)).collect());
    let (tx, rx) = mpsc::channel(shards as usize);
    for reset in resets {
        // At most one a shard: the channel holds them.
        let _ = tx.try_send(reset);
    }
    let (stop, stopped) = watch::channel(false);
    for n in 0..shards {
        tokio::spawn(pull(
            node.clone(),
            n,
            req.clone(),
            session,
            start.0[n as usize],
            confirmed.clone(),
            tx.clone(),
            stopped.clone(),
        ));
    }
    Ok(Feed {
        node: node.clone(),
        req,
        session,
        rx,
        position: start,
        confirmed,
        stop,
    })
}

/// What connecting a session in a shard did.
struct Connected {
    /// Another session of the device took its place there (this one ends).
    superseded: bool,
    /// The position the session starts after, when the one asked for was past the shard's
    /// inbox (`Answer::reset`).
    reset: Option<u64>,
}

/// Connects the session in shard `n` (`again`: after the owner answered "no session", with
/// `seen` what this connection passed on from the shard).
async fn connect(
    node: &Node,
    n: u32,
    req: &DeviceRequest,
    session: u64,
    after: Option<u64>,
    (again, seen): (bool, Option<u64>),
) -> Result<Connected, Error> {
    let call = Call::Connect {
        account: req.account.clone(),
        device: req.device.clone(),
        session,
        after,
        again,
        seen,
    };
    let (answer, bytes) = node
        .call(n, &call, &[], rpc::REST_TIMEOUT)
        .await
        .map_err(rpc::CallError::into_error)?;
    if answer.code != 0 {
        return Err(error_of(&answer, &bytes));
    }
    Ok(Connected {
        superseded: answer.superseded,
        reset: answer.reset,
    })
}

/// The error an owner answered, as the single node's [`Error`] (its code and text).
fn error_of(answer: &Answer, bytes: &[u8]) -> Error {
    let info = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("ErrorInfo")
                .and_then(|i| i.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| answer.info.clone());
    Error::Remote {
        code: answer.code,
        info,
    }
}

/// One shard's events for the session, until it stops.
#[allow(clippy::too_many_arguments)]
async fn pull(
    node: Arc<Node>,
    n: u32,
    req: DeviceRequest,
    session: u64,
    mut received: u64,
    confirmed: Arc<Vec<AtomicU64>>,
    tx: mpsc::Sender<Delivery>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connected = true;
    // A pull in flight when a node reconnects to NATS may have lost its answer: it is sent
    // again then.
    let mut reconnected = node.resends();
    while !*stop.borrow() {
        let step = async {
            if !connected {
                let resume = confirmed[n as usize].load(Ordering::Acquire);
                let after = (resume > 0).then_some(resume);
                let c = connect(&node, n, &req, session, after, (true, Some(received))).await?;
                if c.superseded {
                    return Ok(Answer {
                        superseded: true,
                        ..Answer::default()
                    });
                }
                connected = true;
                if let Some(r) = c.reset {
                    // The new owner's inbox ends before what the client confirmed, or what it
                    // was passed: what it numbers after `r` is new to the client.
                    return Ok(Answer {
                        reset: Some(r),
                        ..Answer::default()
                    });
                }
            }
            let call = Call::Pull {
                account: req.account.clone(),
                device: req.device.clone(),
                session,
                after: received,
                wait_ms: PULL_WAIT.as_millis() as u64,
            };
            node.call(n, &call, &[], PULL_WAIT + Duration::from_secs(5))
                .await
                .map_err(rpc::CallError::into_error)
                .map(|(answer, _)| answer)
        };
        let answer = tokio::select! {
            _ = stop.changed() => return,
            _ = reconnected.changed() => continue,
            a = step => a,
        };
        match answer {
            Ok(a) if a.superseded => {
                let _ = tx.send(Delivery::Superseded).await;
                return;
            }
            Ok(Answer { reset: Some(r), .. }) => {
                received = r;
                confirmed[n as usize].store(r, Ordering::Release);
                tokio::select! {
                    _ = stop.changed() => return,
                    sent = tx.send(Delivery::Reset(n, r)) => if sent.is_err() { return },
                }
            }
            Ok(a) if a.no_session => connected = false,
            Ok(a) if lasting(a.code) => {
                let _ = tx.send(Delivery::AccountGone).await;
                return;
            }
            Ok(a) if a.code != 0 => {
                // The owner refused: connect again, slowly.
                tracing::debug!(shard = n, code = a.code, info = %a.info, "pull failed");
                connected = false;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(a) => {
                let events: Vec<WireEvent> =
                    a.events.into_iter().filter(|e| e.seq > received).collect();
                if let Some(last) = events.last() {
                    received = last.seq;
                    tokio::select! {
                        _ = stop.changed() => return,
                        sent = tx.send(Delivery::Events(n, events)) => if sent.is_err() { return },
                    }
                }
            }
            Err(e) if lasting(e.code()) => {
                tracing::debug!(shard = n, error = %e, "the account is gone; the session ends");
                let _ = tx.send(Delivery::AccountGone).await;
                return;
            }
            Err(e) => {
                tracing::debug!(shard = n, error = %e, "pull failed; connecting again");
                connected = false;
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

impl Feed {
    pub fn request(&self) -> &DeviceRequest {
        &self.req
    }

    /// The next shard's events, each with the token of the position after it; `None` when
    /// the session ended (superseded, or its account is gone).
    pub async fn next(&mut self) -> Option<Vec<(String, WireEvent)>> {
        match self.rx.recv().await? {
            Delivery::Superseded | Delivery::AccountGone => None,
            Delivery::Reset(n, r) => {
                self.position.0[n as usize] = r;
                let reset = WireEvent {
                    seq: r,
                    kind: crate::api::RESET_EVENT.into(),
                    data: "{}".into(),
                };
                Some(vec![(self.position.encode(), reset)])
            }
            Delivery::Events(n, events) => Some(
                events
                    .into_iter()
                    .map(|e| {
                        self.position.0[n as usize] = e.seq;
                        (self.position.encode(), e)
                    })
                    .collect(),
            ),
        }
    }

    /// The client confirmed `token`: each shard's cursor moves to its position there — no
    /// further than this connection passed on in the shard (a token from before a `reset`,
    /// or one the client made up, confirms nothing it was not given here).
    pub async fn confirm(&self, token: &str) -> Result<(), Error> {
        let token = Token::parse(token, self.node.shards())?;
        let mut moved = Vec::new();
        for (n, seq) in token.0.iter().enumerate() {
            let seq = &(*seq).min(self.position.0[n]);
            if self.confirmed[n].fetch_max(*seq, Ordering::AcqRel) < *seq {
                moved.push((n as u32, *seq));
            }
        }
        ack(&self.node, &self.req, &moved).await
    }
}

/// Moves the device's cursor in each `(shard, seq)`.
pub async fn ack(node: &Node, req: &DeviceRequest, moved: &[(u32, u64)]) -> Result<(), Error> {
    let acks = moved.iter().map(|(n, seq)| {
        let call = Call::Ack {
            account: req.account.clone(),
            device: req.device.clone(),
            seq: *seq,
        };
        async move {
            let (answer, bytes) = node
                .call(*n, &call, &[], rpc::REST_TIMEOUT)
                .await
                .map_err(rpc::CallError::into_error)?;
            if answer.code != 0 {
                return Err(error_of(&answer, &bytes));
            }
            Ok(())
        }
    });
    for r in futures_util::future::join_all(acks).await {
        r?;
    }
    Ok(())
}

/// `frame`'s WebSocket form: `{"Event":KIND,"Seq":"TOKEN","Data":DATA}`.
pub fn ws_frame(token: &str, e: &WireEvent) -> String {
    format!(
        r#"{{"Event":"{}","Seq":"{token}","Data":{}}}"#,
        e.kind, e.data
    )
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn tokens_round_trip_and_refuse_what_this_cluster_did_not_give() {
        let mut t = Token::new(8);
        assert_eq!(t.encode(), "c");
        t.0[0] = 12;
        t.0[7] = 3;
        assert_eq!(t.encode(), "c0-12.7-3");
        assert_eq!(Token::parse("c0-12.7-3", 8).unwrap(), t);
        assert_eq!(Token::parse("c", 8).unwrap(), Token::new(8));
        for bad in ["", "12", "c8-1", "c0-x", "c0", "x0-1"] {
            assert_eq!(Token::parse(bad, 8).unwrap_err().code(), 90001, "{bad}");
        }
    }
}
