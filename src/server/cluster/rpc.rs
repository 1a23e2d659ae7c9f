//! Requests between nodes: a call for shard `n` is a NATS request on `imstore.rpc.<n>`, which
//! only the shard's owner subscribes to — so no node needs to know who owns what. A message is
//! a JSON header line, `\n`, then raw bytes (a REST body, a client frame, an answer).
//!
//! Retries: a request nobody answers (the shard is between owners: NATS says "no
//! responders"), one that times out, one still waiting when its shard changes owners, and an
//! owner's "not mine any more" are tried again with the same bytes for up to [`RETRY_FOR`] — longer than a takeover takes (lease 3 s + a
//! balancer round + opening) — and then answered 91000. A retried write is safe: REST sends
//! carry a MsgKey fixed by the first node that saw them (see `front.rs`), and the owner answers
//! a send whose MsgKey it already has with that message's answer; a recall retried after an
//! attempt that may have landed (no answer in time, or an "ask again" from a former owner
//! while the new one ran it), and answered 20023 (already recalled), is answered as the
//! first attempt would have been: OK ([`Answer::after_doubt`]).

use std::time::{Duration, Instant};

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How long a call keeps trying to reach its shard's owner.
pub const RETRY_FOR: Duration = Duration::from_secs(20);
/// How long one request waits for its answer at least.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How much longer than its answer's timeout a request may take as a whole: the time to hand
/// it to the client.
const QUEUE_SLACK: Duration = Duration::from_secs(1);
/// How long a reply or a notice to other nodes may wait for room in the client's queue before
/// it is given up (its caller asks again, or learns it some other way).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a REST call or client request waits for its owner's answer: longer than JetStream
/// may take to acknowledge an append while it elects a stream leader, so that a call is not
/// sent again while its first attempt is still in progress — unless its shard changes owners
/// meanwhile (see [`call`]).
pub const REST_TIMEOUT: Duration = Duration::from_secs(35);

/// The subject of shard `n`'s owner.
pub fn subject(n: u32) -> String {
    format!("imstore.rpc.{n}")
}

/// What a node asks a shard's owner.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Call {
    /// A REST call (bytes: its body). `accounts`: the accounts it names, imported into the
    /// shard from the accounts bucket first.
    Rest {
        path: String,
        query: String,
        ip: String,
        accounts: Vec<String>,
    },
    /// A device's request over its WebSocket (bytes: the frame).
    Client {
        account: String,
        device: String,
        platform: String,
        ip: String,
        peer: String,
        /// A `sendmsg`'s MsgTimeStamp, given by the node (a client does not date its
        /// messages), so that a retry of the call finds the message instead of storing it
        /// again; `None` from a node of an earlier version (the owner's clock then).
        #[serde(default)]
        msg_time: Option<u32>,
    },
    /// Connects a device in this shard for a node's session (`after`: resume point, which
    /// confirms receipt up to it). `again`: the session connects again after "no session";
    /// it does not take the device from a session that claimed it since (`owner.rs`).
    Connect {
        account: String,
        device: String,
        session: u64,
        after: Option<u64>,
        /// Absent (a node of an earlier version): a first connect.
        #[serde(default)]
        again: bool,
        /// What the node has passed on from this shard (a connect again): an inbox that ends
        /// before it is older than what the device was given, and the answer is a reset.
        #[serde(default)]
        seen: Option<u64>,
    },
    /// The session's next events after `after` (what the node has received from this shard),
    /// waiting up to `wait_ms` for some.
    Pull {
        account: String,
        device: String,
        session: u64,
        after: u64,
        wait_ms: u64,
    },
    /// The client confirmed receipt up to `seq` (R7).
    Ack {
        account: String,
        device: String,
        seq: u64,
    },
    /// The session ended.
    Close {
        account: String,
        device: String,
        session: u64,
    },
    /// Deletes an account from the shard's store (it is absent: nothing to do).
    DeleteAccount { user: String },
}

/// An event of a device's stream, as a shard's owner hands it to a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireEvent {
    pub seq: u64,
    pub kind: String,
    pub data: String,
}

/// An owner's answer (bytes: the envelope of a REST or client call).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    /// The envelope's ErrorCode.
    #[serde(default)]
    pub code: u32,
    /// This node does not own the shard (any more): ask again.
    #[serde(default)]
    pub retry: bool,
    /// The session is not known here (a new owner, or it was idle too long): connect again.
    #[serde(default)]
    pub no_session: bool,
    /// Another session of the same device connected since: this one ends.
    #[serde(default)]
    pub superseded: bool,
    #[serde(default)]
    pub events: Vec<WireEvent>,
    /// A connect's resume position was past the shard's inbox (its data is older than the
    /// client's): nothing was confirmed, and the session starts after this position instead
    /// (`Subscription::reset`).
    #[serde(default)]
    pub reset: Option<u64>,
    /// Why, when `code` is not 0 and there is no envelope.
    #[serde(default)]
    pub info: String,
    /// Set by the caller, not sent: an earlier attempt of this call went unanswered after it
    /// may have reached the owner (a timeout, a lost connection), so it may have taken effect.
    #[serde(skip)]
    pub after_doubt: bool,
}

pub fn encode<T: Serialize>(header: &T, bytes: &[u8]) -> Bytes {
    let mut out = serde_json::to_vec(header).expect("serializable");
    out.push(b'\n');
    out.extend_from_slice(bytes);
    out.into()
}

pub fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<(T, &[u8]), String> {
    let split = payload
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let header = serde_json::from_slice(&payload[..split]).map_err(|e| e.to_string())?;
    Ok((header, &payload[split + 1..]))
}

/// Why a call did not get an answer from its shard's owner.
#[derive(Debug)]
pub enum CallError {
    /// Nobody owned the shard, or the owner did not answer, for `RETRY_FOR`.
    Unreachable(String),
    /// The request cannot be sent (too large for NATS, say).
    Refused(String),
}

impl CallError {
    pub fn into_error(self) -> crate::error::Error {
        match self {
            CallError::Unreachable(why) => crate::error::Error::Internal(format!(
                "the shard's owner could not be reached ({why}); retry"
            )),
            CallError::Refused(why) => crate::error::Error::InvalidField {
                field: "body",
                code: 93000,
                why,
            },
        }
    }
}

/// Sends `call` to shard `n`'s owner, retrying as the module says; the answer and its bytes.
///
/// `resends` changes when a node took a shard over (or reconnected to NATS): an attempt to
/// that shard (to any, after a reconnection) still waiting then is sent again at once, in
/// doubt, if the call is still within [`RETRY_FOR`] (past it, it waits its attempt out). The
/// owner it went to may be the one replaced — stopped, cut off, or releasing the shard with
/// requests still queued — which would never answer, and the caller would wait out the whole
/// timeout (35 s for REST) and then be told 91000, with a new owner serving for most of that
/// time. A call to another shard is left alone: its owner may just be slow.
pub async fn call(
    client: &Client,
    n: u32,
    call: &Call,
    bytes: &[u8],
    timeout: Duration,
    mut resends: tokio::sync::watch::Receiver<super::Resend>,
) -> Result<(Answer, Bytes), CallError> {
    let payload = encode(call, bytes);
    let deadline = Instant::now() + RETRY_FOR;
    let mut pause = Duration::from_millis(50);
    let mut doubt = false;
    let mut resends_open = true;
    loop {
        let wait = timeout.max(REQUEST_TIMEOUT);
        let request = async_nats::Request::new()
            .payload(payload.clone())
            .timeout(Some(wait));
        // The request's own timeout covers the wait for the answer, not for room in the
        // client's command queue, which stays full while the client reconnects: the whole
        // call is bounded too.
        let sent =
            tokio::time::timeout(wait + QUEUE_SLACK, client.send_request(subject(n), request));
        let seen = resends.borrow_and_update().mark(n);
        let resent = async {
            loop {
                if !resends_open || resends.changed().await.is_err() {
                    // Nobody announces takeovers any more: wait out the attempt.
                    std::future::pending::<()>().await;
                }
                // Within RETRY_FOR only: past it, a call waits its attempt out, so that it is
                // bounded by its answer's timeout plus a second, as it always was.
                if resends.borrow_and_update().mark(n) != seen && Instant::now() < deadline {
                    return;
                }
            }
        };
        let sent = tokio::select! {
            sent = sent => sent,
            () = resent => {
                // Shard n changed owners while this attempt waited: send it again (it may have
                // landed: in doubt).
                doubt = true;
                tracing::debug!(shard = n, "a takeover: the call is sent again");
                continue;
            }
        };
        if resends.has_changed().is_err() {
            resends_open = false;
        }
        let Ok(sent) = sent else {
            doubt = true;
            if Instant::now() >= deadline {
                return Err(CallError::Unreachable(format!(
                    "shard {n}: the NATS client took no request for {wait:?}"
                )));
            }
            continue;
        };
        let why = match sent {
            Ok(msg) => match decode::<Answer>(&msg.payload) {
                // Another node may have heard the same request: a former owner answers "ask
                // again" while the new one runs it (see `owner::handle`).
                Ok((answer, _)) if answer.retry => {
                    doubt = true;
                    answer.info
                }
                Ok((mut answer, rest)) => {
                    let rest = msg.payload.slice_ref(rest);
                    answer.after_doubt = doubt;
                    return Ok((answer, rest));
                }
                Err(e) => format!("a malformed answer: {e}"),
            },
            Err(e) => match e.kind() {
                RequestErrorKind::NoResponders => "no owner".to_owned(),
                RequestErrorKind::TimedOut => {
                    doubt = true;
                    "no answer in time".to_owned()
                }
                RequestErrorKind::MaxPayloadExceeded | RequestErrorKind::InvalidSubject => {
                    return Err(CallError::Refused(e.to_string()));
                }
                RequestErrorKind::Other => {
                    doubt = true;
                    e.to_string()
                }
            },
        };
        if Instant::now() + pause >= deadline {
            return Err(CallError::Unreachable(format!("shard {n}: {why}")));
        }
        tracing::debug!(shard = n, %why, "retrying a call");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// A plain nats-server (no JetStream) on a loopback port it picks itself, killed on drop.
    struct Server(std::process::Child, u16);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The server picks its port (`-p -1`) and writes it to a ports file, read back here: a
    /// port found free and released first could be taken by another process meanwhile.
    fn nats_server() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let bin = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let child = std::process::Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("this test needs `nats-server` ({bin}): {e}"));
        let mut server = Server(child, 0);
        // `<executable>_<pid>.ports`: {"nats":["nats://127.0.0.1:<port>"], ...}, written
        // whole or not yet (retried while it does not parse).
        let ports = dir.path().join(format!(
            "{}_{}.ports",
            std::path::Path::new(&bin)
                .file_name()
                .unwrap()
                .to_string_lossy(),
            server.0.id()
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while server.1 == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server wrote no ports file {} within 10 s",
                ports.display()
            );
            let port = std::fs::read(&ports)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| {
                    let url = v["nats"][0].as_str()?.to_owned();
                    url.rsplit(':').next()?.parse::<u16>().ok()
                });
            match port {
                Some(p) => server.1 = p,
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        server
    }

    /// A takeover's payload names a shard of the cluster; anything else — a node id, a
    /// number past the cluster's shards (the counts are sized by it) — is a reconnection.
    #[test]
    fn only_a_shard_of_the_cluster_is_read_from_a_takeover() {
        use crate::server::cluster::takeover_shard;
        assert_eq!(takeover_shard(b"\0shard:9", 64), Some(9));
        assert_eq!(takeover_shard(b"\0shard:64", 64), None);
        assert_eq!(takeover_shard(b"\0shard:4000000000", 64), None);
        assert_eq!(takeover_shard(b"node-a", 64), None);
        assert_eq!(
            takeover_shard(b"shard:9", 64),
            None,
            "a node id, not a takeover"
        );
        let mut r = crate::server::cluster::Resend::default();
        r.heard(Some(u32::MAX));
        assert_eq!(r.mark(7), (1, 0), "past the counted shards: a reconnection");
    }

    /// No takeover announced while a call waits.
    fn quiet() -> tokio::sync::watch::Receiver<crate::server::cluster::Resend> {
        tokio::sync::watch::channel(Default::default()).1
    }

    async fn connect(server: &Server) -> async_nats::Client {
        let url = format!("nats://127.0.0.1:{}", server.1);
        for _ in 0..100 {
            if let Ok(c) = async_nats::connect(&url).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not start");
    }

    /// An owner that takes a call and never answers (stopped, cut off, or releasing the
    /// shard with the request queued), then a takeover of its shard is announced: the call is
    /// sent again at once, and the new owner's answer comes back marked in doubt — not, after
    /// the whole 30 s wait, a 91000. Another shard's takeover leaves it waiting.
    #[test]
    fn a_call_waiting_on_a_replaced_owner_is_sent_again_on_a_takeover() {
        let server = nats_server();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = connect(&server).await;
            let owner = client.clone();
            let mut calls = owner.subscribe(subject(9)).await.unwrap();
            owner.flush().await.unwrap();
            let (takeover, resends) =
                tokio::sync::watch::channel(crate::server::cluster::Resend::default());
            let answering = tokio::spawn(async move {
                let _first = calls.next().await.unwrap();
                // Another shard's takeover: this call's owner may just be slow; it waits.
                takeover.send_modify(|r| r.heard(Some(3)));
                let quiet = tokio::time::timeout(Duration::from_millis(300), calls.next()).await;
                assert!(quiet.is_err(), "sent again on another shard's takeover");
                // The old owner holds the first attempt; a new owner of shard 9 announces
                // itself, and another shard's owner right after (heard before the waiting
                // call looks: it must still see shard 9's).
                takeover.send_modify(|r| {
                    r.heard(Some(9));
                    r.heard(Some(3));
                });
                let again = calls.next().await.unwrap();
                let answer = Answer::default();
                owner
                    .publish(again.reply.unwrap(), encode(&answer, b"{}"))
                    .await
                    .unwrap();
                owner.flush().await.unwrap();
                takeover
            });
            let call_ = Call::DeleteAccount { user: "u".into() };
            let answered = call(&client, 9, &call_, &[], Duration::from_secs(30), resends).await;
            let (answer, _) = answered.expect("answered by the new owner");
            assert_eq!(answer.code, 0);
            assert!(answer.after_doubt, "the first attempt may have landed");
            drop(answering.await.unwrap());
        });
    }

    /// An owner that never answers the first attempt of a call (it took effect, say, and the
    /// owner died before answering) and answers the second: the caller learns that the answer
    /// comes after doubt — as after an "ask again", and not when the first attempt found
    /// nobody at all.
    #[test]
    fn a_retry_after_an_unanswered_attempt_is_marked() {
        let server = nats_server();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let url = format!("nats://127.0.0.1:{}", server.1);
            let mut client = None;
            for _ in 0..100 {
                if let Ok(c) = async_nats::connect(&url).await {
                    client = Some(c);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let client = client.expect("nats-server started");
            // Nobody subscribed yet: "no responders", retried until the owner appears.
            let owner = client.clone();
            let mut calls = owner.subscribe(subject(7)).await.unwrap();
            owner.flush().await.unwrap();
            let answering = tokio::spawn(async move {
                let mut n = 0;
                while let Some(msg) = calls.next().await {
                    n += 1;
                    if n == 1 {
                        continue; // the first attempt gets no answer
                    }
                    // The third is answered "ask again", as a former owner answers while the
                    // new one (which may have run it) answers too.
                    let answer = Answer {
                        code: 20023,
                        retry: n == 3,
                        ..Answer::default()
                    };
                    owner
                        .publish(msg.reply.unwrap(), encode(&answer, b"{}"))
                        .await
                        .unwrap();
                    owner.flush().await.unwrap();
                }
            });
            let call_ = Call::DeleteAccount { user: "u".into() };
            let (answer, _) = call(&client, 7, &call_, &[], Duration::from_millis(1), quiet())
                .await
                .unwrap();
            assert_eq!(answer.code, 20023);
            assert!(answer.after_doubt, "the first attempt may have landed");
            // "Ask again", then answered: doubt too.
            let (answer, _) = call(&client, 7, &call_, &[], Duration::from_millis(1), quiet())
                .await
                .unwrap();
            assert_eq!(answer.code, 20023);
            assert!(answer.after_doubt, "another node may have run it");
            // Answered at once: no doubt.
            let (answer, _) = call(&client, 7, &call_, &[], Duration::from_millis(1), quiet())
                .await
                .unwrap();
            assert!(!answer.after_doubt);
            answering.abort();
        });
    }
}
