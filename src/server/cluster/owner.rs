//! A shard this node owns: answering the calls other nodes (and this one) send it — REST
//! calls, client requests, devices' connects, pulls and acks — as a single node would, once
//! what a call did or read is durable; and the subscriptions it holds for devices connected
//! to any node. See `server/cluster.rs` for when a node owns a shard.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::Subscriber;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::rpc::{self, Answer, Call, WireEvent};
use super::{Node, SESSION_IDLE};
use crate::api::{Api, CallContext, DeviceRequest, Reply, error_reply};
use crate::cluster::Shard;
use crate::device::{Event, Subscription};
use crate::error::Error;
use crate::server::webhook;
use crate::{Origin, Store};

/// A shard this node owns.
pub(super) struct Owned {
    pub(super) n: u32,
    /// Closed when released (then it is no longer the owner).
    pub(super) shard: Shard,
    pub(super) store: Store,
    pub(super) api: Arc<Api>,
    /// Devices connected through some node, and which session holds each.
    pub(super) devices: Mutex<Devices>,
    /// Turns true when the shard is released: its tasks stop.
    pub(super) stop: watch::Sender<bool>,
}

type DeviceKey = (String, String);

/// The sessions of devices connected here through some node, by (account, device).
///
/// **Claims.** A device that connects again — through any node — takes its place from the
/// session before it, whose connection may still be open (a client that went away without
/// closing, not yet noticed by its node). The newer session *claims* the device here before its
/// subscription is made, so when that ends the older subscription, the older session can tell
/// it was superseded (and ends) rather than lost (and connects again, which would end the
/// newer one in turn). A session connecting *again* — after a new owner or an idle drop
/// answered "no session" — never takes a device another session has claimed or holds. A
/// session whose subscription ended for another reason (the device forgotten, say) keeps its
/// claim while it connects again.
///
/// Claims are not carried to a new owner: when a shard moves just after a device connected
/// again, and its older, stale session has not yet pulled there since, the two reconnect to
/// the new owner as equals and the first wins. If that is the stale one, the live connection
/// is told it was superseded once; the client's next connection wins everywhere.
#[derive(Default)]
pub(super) struct Devices {
    remotes: HashMap<DeviceKey, Arc<Remote>>,
    /// The session that last claimed each device, and when (a claim whose connect never
    /// finished is dropped after [`SESSION_IDLE`]).
    claims: HashMap<DeviceKey, (u64, Instant)>,
}

impl Devices {
    fn claimed_by(&self, key: &DeviceKey) -> Option<u64> {
        self.claims.get(key).map(|(s, _)| *s)
    }

    /// Drops `session`'s claim and subscription, if they are still its; what was dropped is
    /// returned, to be dropped outside the lock.
    fn release(&mut self, key: &DeviceKey, session: u64) -> Option<Arc<Remote>> {
        if self.claimed_by(key) == Some(session) {
            self.claims.remove(key);
        }
        if self.remotes.get(key).is_some_and(|r| r.session == session) {
            return self.remotes.remove(key);
        }
        None
    }

    pub(super) fn clear(&mut self) -> Vec<Arc<Remote>> {
        self.claims.clear();
        self.remotes.drain().map(|(_, r)| r).collect()
    }
}

/// A device's subscription in this shard, held for the node its connection is on.
pub(super) struct Remote {
    session: u64,
    sub: Subscription,
    /// The last sequence number handed to the node: a pull from before it means the node
    /// did not get the answer, and what follows is handed out again. Locked for a pull's
    /// whole turn: one pull at a time.
    handed: tokio::sync::Mutex<u64>,
    last_pull: Mutex<Instant>,
    pulls: Pulls,
}

/// The pulls of one session in a shard. Its node sends a pull again when it cannot know the
/// one before got through (it reconnected to NATS, its request timed out), and gives up on
/// that one: a pull still waiting here for events then answers at once, empty, instead of
/// keeping `handed` locked for the rest of its wait (up to 30 s) with the newer one
/// queued behind it.
#[derive(Default)]
struct Pulls {
    started: AtomicU64,
    newer: tokio::sync::Notify,
}

impl Pulls {
    /// A pull starts; returns its number. A pull waiting meanwhile is superseded.
    fn start(&self) -> u64 {
        let this = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        self.newer.notify_waiters();
        this
    }

    /// Resolves once a pull after pull `this` has started (at once if one has).
    async fn superseded(&self, this: u64) {
        // Made before the count is read: a pull that starts after the read wakes it.
        let newer = self.newer.notified();
        if self.started.load(Ordering::Acquire) != this {
            return;
        }
        newer.await
    }
}

impl Owned {
    pub(super) fn is_owner(&self) -> bool {
        self.shard.is_owner()
    }

    fn lease_valid(&self) -> bool {
        self.shard.lease_valid()
    }

    /// Imports `users` from the accounts bucket if this shard does not have them yet.
    async fn ensure_accounts(self: &Arc<Self>, users: &[String]) -> Result<(), Error> {
        let missing: Vec<String> = users
            .iter()
            .filter(|u| !u.is_empty() && !self.store.account_exists(u).unwrap_or(true))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let owned = self.clone();
        tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = missing.iter().map(String::as_str).collect();
            owned.shard.ensure_accounts(&names)
        })
        .await
        .map_err(|e| Error::Internal(format!("importing accounts: {e}")))?
    }
}

/// How many calls other than pulls an owner runs at once for one shard; past it a call is
/// answered "ask again" at once (its node retries for up to 20 s, then answers 91000), so
/// that a flood of calls holds a bounded number of tasks. Pulls are not counted: a session
/// has one at a time (a newer one ends the one before), so the devices bound them.
const MAX_CALLS: usize = 8192;

/// Whether `call` may run: pulls always; other calls while a permit is free (held until
/// answered).
fn admit(
    call: &Call,
    permits: &Arc<tokio::sync::Semaphore>,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, (Answer, Vec<u8>)> {
    if matches!(call, Call::Pull { .. }) {
        return Ok(None);
    }
    match permits.clone().try_acquire_owned() {
        Ok(p) => Ok(Some(p)),
        Err(_) => Err(retry(&format!(
            "the owner is busy: {MAX_CALLS} calls in flight for this shard"
        ))),
    }
}

/// Answers shard `n`'s calls until the shard is released.
pub(super) async fn serve(
    node: Arc<Node>,
    owned: Arc<Owned>,
    mut calls: Subscriber,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CALLS));
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => break,
            m = calls.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let (node, owned, stop) = (node.clone(), owned.clone(), stop.clone());
        let permits = permits.clone();
        tokio::spawn(async move {
            let (answer, bytes) = match rpc::decode::<Call>(&msg.payload) {
                Ok((call, bytes)) => match admit(&call, &permits) {
                    Ok(_permit) => handle(&node, &owned, call, bytes, stop).await,
                    Err(busy) => busy,
                },
                Err(e) => (
                    Answer {
                        code: 90001,
                        info: format!("a malformed call: {e}"),
                        ..Answer::default()
                    },
                    Vec::new(),
                ),
            };
            // Bounded: an answer that cannot be handed over in time is asked for again.
            let reply = node.client.publish(reply_to, rpc::encode(&answer, &bytes));
            let _ = tokio::time::timeout(rpc::PUBLISH_TIMEOUT, reply).await;
        });
    }
    let _ = calls.unsubscribe().await;
    tracing::debug!(shard = owned.n, "stopped serving the shard");
}

/// How long a node whose lease is not current waits before it answers "ask again" (see
/// `handle`).
const STALE_ANSWER_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// Where a node must start a device's stream from again, if anywhere: for a resume position
/// past the inbox (`Subscription::reset`), or an inbox that ends before what the node passed on
/// from it (`seen`: this owner's stream is older than the last owner's), the position the
/// session starts after — what follows is new to the device, whatever its numbers.
fn reset_of(sub: &crate::Subscription, seen: Option<u64>) -> Option<u64> {
    let (start, end) = sub.started();
    sub.reset()
        .or_else(|| seen.filter(|s| *s > end).map(|_| start))
}

fn retry(why: &str) -> (Answer, Vec<u8>) {
    (
        Answer {
            retry: true,
            info: why.to_owned(),
            ..Answer::default()
        },
        Vec::new(),
    )
}

fn replied(reply: Reply) -> (Answer, Vec<u8>) {
    (
        Answer {
            code: reply.code,
            ..Answer::default()
        },
        reply.json.into_bytes(),
    )
}

fn superseded() -> (Answer, Vec<u8>) {
    (
        Answer {
            superseded: true,
            ..Answer::default()
        },
        Vec::new(),
    )
}

fn no_session() -> (Answer, Vec<u8>) {
    (
        Answer {
            no_session: true,
            ..Answer::default()
        },
        Vec::new(),
    )
}

fn failed(e: &Error) -> (Answer, Vec<u8>) {
    replied(error_reply(e))
}

/// Tencent's OptPlatform name as the static string a [`DeviceRequest`] holds.
fn platform_name(p: &str) -> &'static str {
    ["Web", "Android", "iOS", "Windows", "Mac", "iPad"]
        .into_iter()
        .find(|q| *q == p)
        .unwrap_or("Unknown")
}

/// How many bytes of events one pull's answer carries at most (at least one event, whatever
/// its size): well under what one NATS message may carry (1 MiB by default). A batch of 64
/// events can be several MiB — a 12 KB message of control characters is ~80 KB once its
/// JSON is escaped again in the answer's header — and an answer NATS refuses would never
/// arrive: the device would stay stuck on that shard, asking again for the same batch. It
/// also bounds what a node holds per session and shard.
const PULL_ANSWER_BYTES: usize = 64 << 10;

/// The first of `events`, as sent, that fit in [`PULL_ANSWER_BYTES`] (at least one).
fn within_one_answer(events: &[Event]) -> Vec<WireEvent> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for e in events {
        let w = wire(e);
        let size = serde_json::to_vec(&w).map_or(usize::MAX, |v| v.len());
        if !out.is_empty() && bytes.saturating_add(size) > PULL_ANSWER_BYTES {
            break;
        }
        bytes = bytes.saturating_add(size);
        out.push(w);
    }
    out
}

fn wire(e: &Event) -> WireEvent {
    let (kind, data) = crate::api::event_payload(e);
    WireEvent {
        seq: e.seq,
        kind: kind.to_owned(),
        data,
    }
}

/// Applies a REST or client call's step on the shard's store (in memory, with its origin for
/// the webhooks), answers once it is durable, and finishes it (a send's before-send decision and
/// after-callbacks, when there are webhooks).
async fn step_durably(
    owned: &Owned,
    webhooks: Option<&webhook::Webhooks>,
    origin: Origin,
    step: impl FnOnce() -> crate::api::Step,
) -> (Answer, Vec<u8>) {
    let store = &owned.store;
    let (step, ticket) =
        store.deferring(|| store.with_origin(webhooks.is_some().then_some(origin), step));
    if let Err(e) = crate::server::durable(store, ticket).await {
        return failed(&e);
    }
    // Boxed: a webhook call's future is large, and every pull waiting here would carry its size.
    replied(Box::pin(crate::server::finish_step(&owned.api, webhooks, step)).await)
}

/// Runs one call as the shard's owner.
pub(super) async fn handle(
    node: &Node,
    owned: &Arc<Owned>,
    call: Call,
    bytes: &[u8],
    mut stop: watch::Receiver<bool>,
) -> (Answer, Vec<u8>) {
    if !owned.lease_valid() {
        // Answered late: while a shard changes hands both nodes may hear the call, and the
        // first answer is the one taken — so the new owner's, when it answers within the
        // delay, rather than this "ask again", which would otherwise win every retry for as
        // long as this node cannot renew (a lease bucket electing a leader) and could run the
        // caller's retries out. (The caller counts an "ask again" as doubt: the new owner may
        // have run the call, and a retried recall's 20023 is then its OK.)
        tokio::time::sleep(STALE_ANSWER_DELAY).await;
        return retry("this node's lease on the shard is not current");
    }
    let store = &owned.store;
    // Calls that bring operations are refused while the shard's stream is stalled; pulls,
    // connections and closes, which a device's session repeats, are not.
    if matches!(call, Call::Rest { .. } | Call::Client { .. })
        && let Err(e) = crate::server::refuse_if_stalled(store)
    {
        return failed(&e);
    }
    let webhooks = node.webhooks.as_deref();
    let ctx = CallContext {
        before_send_elsewhere: webhooks.is_some(),
        client_msg_time: None,
    };
    match call {
        Call::Rest {
            path,
            query,
            ip,
            accounts,
        } => {
            if path == "/v4/imstore/compact" {
                tracing::info!(shard = owned.n, "snapshotting");
                let snapshotting = owned.clone();
                let cut = tokio::task::spawn_blocking(move || snapshotting.shard.snapshot()).await;
                tracing::info!(
                    shard = owned.n,
                    ok = matches!(cut, Ok(Ok(_))),
                    "snapshot done"
                );
                return match cut {
                    Ok(Ok(cut)) => {
                        let mut fields = serde_json::Map::new();
                        fields.insert("Shard".into(), owned.n.into());
                        fields.insert("SnapshotSeq".into(), cut.into());
                        replied(crate::api::ok_reply(fields))
                    }
                    // The shard moved while it was being snapshotted (its new owner closed this
                    // node's lease): the caller's node asks again, and reaches the new owner.
                    Ok(Err(_)) if !owned.shard.is_owner() => {
                        retry("the shard moved while it was being snapshotted")
                    }
                    Ok(Err(e)) => failed(&Error::Internal(e.to_string())),
                    Err(e) => failed(&Error::Internal(format!("snapshot task: {e}"))),
                };
            }
            if let Err(e) = owned.ensure_accounts(&accounts).await {
                return failed(&e);
            }
            step_durably(owned, webhooks, Origin::rest(ip), || {
                owned.api.step(&path, &query, bytes, &ctx)
            })
            .await
        }
        Call::Client {
            account,
            device,
            platform,
            ip,
            peer,
            msg_time,
        } => {
            if let Err(e) = owned.ensure_accounts(&[account.clone(), peer]).await {
                return failed(&e);
            }
            let frame = match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => {
                    return failed(&Error::InvalidRequest(
                        "the frame is not a JSON object".into(),
                    ));
                }
            };
            let req = DeviceRequest {
                account,
                device,
                platform: platform_name(&platform),
                after: None,
                sig_expires_at: None,
            };
            let ip = ip.parse().unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
            let origin = webhook::device_origin(req.platform, ip);
            // The node dated a send (`channels::client_frame`): a retry of this call stores
            // nothing twice. Never from the frame, which the client wrote.
            let ctx = CallContext {
                client_msg_time: msg_time,
                ..ctx
            };
            step_durably(owned, webhooks, origin, || {
                owned.api.client_step(&req, &frame, &ctx)
            })
            .await
        }
        Call::Connect {
            account,
            device,
            session,
            after,
            again,
            seen,
        } => {
            let key = (account, device);
            {
                let mut devices = owned.devices.lock();
                let held_by_other = devices
                    .remotes
                    .get(&key)
                    .is_some_and(|r| r.session != session);
                match devices.claimed_by(&key) {
                    Some(other) if again && other != session => return superseded(),
                    None if again && held_by_other => return superseded(),
                    _ => {
                        devices
                            .claims
                            .insert(key.clone(), (session, Instant::now()));
                    }
                }
            }
            let (account, device) = (&key.0, &key.1);
            if let Err(e) = owned.ensure_accounts(std::slice::from_ref(account)).await {
                let released = owned.devices.lock().release(&key, session);
                // Dropped outside the lock: a subscription's drop journals the disconnect.
                drop(released);
                return failed(&e);
            }
            let (sub, ticket) = store.deferring(|| match after {
                Some(after) => store.connect_after(account, device, after),
                None => store.connect(account, device),
            });
            let sub = match crate::server::durable(store, ticket).await.and(sub) {
                Ok(sub) => sub,
                Err(e) => {
                    let released = owned.devices.lock().release(&key, session);
                    drop(released);
                    return failed(&e);
                }
            };
            let reset = reset_of(&sub, seen);
            let remote = Arc::new(Remote {
                session,
                sub,
                handed: tokio::sync::Mutex::new(0),
                last_pull: Mutex::new(Instant::now()),
                pulls: Pulls::default(),
            });
            let mut devices = owned.devices.lock();
            if devices.claimed_by(&key) != Some(session) {
                // A newer session claimed the device meanwhile (its subscription ended ours).
                drop(devices);
                drop(remote);
                return superseded();
            }
            // The session before, if any, ends: its next pull says so.
            let old = devices.remotes.insert(key, remote);
            drop(devices);
            drop(old);
            (
                Answer {
                    reset,
                    ..Answer::default()
                },
                Vec::new(),
            )
        }
        Call::Pull {
            account,
            device,
            session,
            after,
            wait_ms,
        } => {
            let key = (account, device);
            let (remote, claim) = {
                let devices = owned.devices.lock();
                (devices.remotes.get(&key).cloned(), devices.claimed_by(&key))
            };
            let held_by_other = remote.as_ref().is_some_and(|r| r.session != session);
            let Some(remote) = remote.filter(|r| r.session == session) else {
                // Another session holds or is taking the device here: this one ends. Neither:
                // a new owner, or dropped as idle — connect again.
                return match claim {
                    Some(other) if other != session => superseded(),
                    _ if held_by_other => superseded(),
                    _ => no_session(),
                };
            };
            *remote.last_pull.lock() = Instant::now();
            let this = remote.pulls.start();
            let mut handed = remote.handed.lock().await;
            if *handed > after {
                // Pulled again from before what this owner handed out: the node did not get
                // it (its answer was lost). It is collected again from the inbox, not sent as
                // it was: a message recalled or modified since must not reach the device with
                // the body it had (that would undo, on the device, a recall already
                // acknowledged).
                remote.sub.rewind(after);
            }
            *handed = after;
            let mut events = Vec::new();
            let wait = Duration::from_millis(wait_ms.min(30_000));
            tokio::select! {
                _ = stop.changed() => return retry("the shard was released"),
                // Its node gave up on this pull: answer it (empty) and let the newer one in.
                _ = remote.pulls.superseded(this) => {}
                batch = tokio::time::timeout(wait, remote.sub.next_batch()) => match batch {
                    Ok(Ok(batch)) => events = batch,
                    Ok(Err(_)) => {
                        // Ended here. Another session claimed the device: this one is
                        // superseded. Otherwise (forgotten, say) the node connects again.
                        let mut devices = owned.devices.lock();
                        if devices.claimed_by(&key).is_some_and(|s| s != session) {
                            return superseded();
                        }
                        // Only the subscription goes: the session keeps (and renews) its
                        // claim, so no older session takes the device before this one
                        // connects again.
                        if let Some(claim) = devices.claims.get_mut(&key) {
                            claim.1 = Instant::now();
                        }
                        let ours = devices.remotes.get(&key).is_some_and(|r| r.session == session);
                        let ended = if ours { devices.remotes.remove(&key) } else { None };
                        drop(devices);
                        drop(ended);
                        return no_session();
                    }
                    Err(_) => {}
                },
            }
            let taken = events.len();
            let events = within_one_answer(&events);
            if let Some(last) = events.last() {
                if events.len() < taken {
                    // What did not fit is handed out by the next pull, collected again.
                    remote.sub.rewind(last.seq);
                }
                *handed = last.seq;
            }
            *remote.last_pull.lock() = Instant::now();
            (
                Answer {
                    events,
                    ..Answer::default()
                },
                Vec::new(),
            )
        }
        Call::Ack {
            account,
            device,
            seq,
        } => {
            let (acked, ticket) = store.deferring(|| store.ack(&account, &device, seq));
            match crate::server::durable(store, ticket).await.and(acked) {
                Ok(()) => (Answer::default(), Vec::new()),
                Err(e) => failed(&e),
            }
        }
        Call::Close {
            account,
            device,
            session,
        } => {
            let key = (account, device);
            let closed = owned.devices.lock().release(&key, session);
            // Dropped outside the lock: a subscription's drop journals the disconnect.
            drop(closed);
            (Answer::default(), Vec::new())
        }
        Call::DeleteAccount { user } => {
            let (deleted, ticket) = store.deferring(|| store.delete_account(&user));
            // 0: it was here and is gone; 70107: it was not here.
            match crate::server::durable(store, ticket).await.and(deleted) {
                Ok(()) => (Answer::default(), Vec::new()),
                Err(e) => failed(&e),
            }
        }
    }
}

/// Drops device sessions no node has pulled for [`SESSION_IDLE`] (their node died, say):
/// what an owner holds for remote devices stays bounded.
pub(super) async fn forget_idle(owned: Arc<Owned>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(SESSION_IDLE / 6) => {}
        }
        let idle: Vec<Arc<Remote>> = {
            let mut devices = owned.devices.lock();
            let idle: Vec<(DeviceKey, u64)> = devices
                .remotes
                .iter()
                .filter(|(_, r)| r.last_pull.lock().elapsed() > SESSION_IDLE)
                .map(|(k, r)| (k.clone(), r.session))
                .collect();
            let Devices { remotes, claims } = &mut *devices;
            claims.retain(|k, (s, at)| {
                remotes.get(k).is_some_and(|r| r.session == *s) || at.elapsed() <= SESSION_IDLE
            });
            idle.iter()
                .filter_map(|(k, s)| devices.release(k, *s))
                .collect()
        };
        // Dropped outside the lock: a subscription's drop journals the disconnect.
        drop(idle);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Call, MAX_CALLS, Pulls, admit};

    /// Calls past MAX_CALLS in flight are answered "ask again"; pulls are never refused; a
    /// call's permit returns when it is answered.
    #[test]
    fn calls_past_the_cap_are_asked_again_and_pulls_pass() {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CALLS));
        let call = Call::DeleteAccount { user: "u".into() };
        let pull = Call::Pull {
            account: "u".into(),
            device: "d".into(),
            session: 1,
            after: 0,
            wait_ms: 0,
        };
        let held: Vec<_> = (0..MAX_CALLS)
            .map(|_| admit(&call, &permits).ok().flatten().expect("a permit"))
            .collect();
        let (answer, _) = admit(&call, &permits).unwrap_err();
        assert!(answer.retry, "{answer:?}");
        assert!(answer.info.contains("busy"), "{answer:?}");
        assert!(admit(&pull, &permits).unwrap().is_none());
        drop(held);
        assert!(admit(&call, &permits).unwrap().is_some());
    }

    /// A pull that waits for events while holding the session's lock, as `Call::Pull` does,
    /// and a newer pull of the same session: the newer one gets the lock once it starts, not
    /// when the older one's wait ends (never, here).
    #[test]
    fn a_newer_pull_supersedes_the_one_waiting() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pulls = Arc::new(Pulls::default());
            let lock = Arc::new(tokio::sync::Mutex::new(()));
            let pull = |pulls: Arc<Pulls>, lock: Arc<tokio::sync::Mutex<()>>| async move {
                let this = pulls.start();
                let _held = lock.lock().await;
                tokio::select! {
                    _ = pulls.superseded(this) => this,
                    _ = std::future::pending::<()>() => unreachable!(),
                }
            };
            let first = tokio::spawn(pull(pulls.clone(), lock.clone()));
            // The first one is waiting, holding the lock.
            while lock.try_lock().is_ok() {
                tokio::task::yield_now().await;
            }
            let second = tokio::spawn(pull(pulls.clone(), lock.clone()));
            let within = Duration::from_secs(10);
            assert_eq!(
                tokio::time::timeout(within, first).await.unwrap().unwrap(),
                1
            );
            // The second now waits in turn; a third supersedes it.
            while lock.try_lock().is_ok() {
                tokio::task::yield_now().await;
            }
            let third = tokio::spawn(pull(pulls.clone(), lock.clone()));
            assert_eq!(
                tokio::time::timeout(within, second).await.unwrap().unwrap(),
                2
            );
            // A pull superseded before it waits does not wait at all.
            let stale = pulls.start();
            pulls.start();
            tokio::time::timeout(within, pulls.superseded(stale))
                .await
                .unwrap();
            third.abort();
        });
    }

    /// A node connecting a device again after an owner change is told to start it again when
    /// this owner's inbox ends before what the node passed on (or before the resume position);
    /// not when it holds all of it.
    #[test]
    fn a_reconnect_to_an_older_inbox_is_a_reset() {
        use crate::{Config, MsgElement, SendRequest, Store};
        let store = Store::in_memory(Config::default()).unwrap();
        store.import_accounts(&["a", "b"]).unwrap();
        for i in 0..3 {
            let text = vec![MsgElement::text(format!("m{i}"))];
            store.send(SendRequest::new("a", "b", i, text)).unwrap();
        }
        // Resumed after 2 of 3, having passed on all 3: nothing to reset.
        let sub = store.connect_after("b", "phone", 2).unwrap();
        assert_eq!(super::reset_of(&sub, Some(3)), None);
        assert_eq!(super::reset_of(&sub, None), None);
        // The node passed on 5 from a stream that now ends at 3: from where the session starts.
        assert_eq!(super::reset_of(&sub, Some(5)), Some(2));
        drop(sub);
        // A resume position past the inbox: from the device's cursor.
        let sub = store.connect_after("b", "phone", 9).unwrap();
        assert_eq!(super::reset_of(&sub, Some(9)), Some(2));
    }
}
