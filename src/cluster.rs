//! Conversation shards on NATS JetStream (cargo feature `cluster`; SPEC §9) — the foundation.
//!
//! Conversations (unordered account pairs) hash into a fixed number of shards
//! ([`shard_of`]), chosen when the cluster is created and kept in the bucket `imstore_meta`.
//! A shard is an ordinary [`Store`] whose journal is the JetStream stream `IMSTORE_SHARD_<n>`
//! (subjects `imstore.shard.<n>.<node>.<epoch>`, 3 replicas by default) instead of files: the same `Op`
//! records, applied by the same `apply`, live and on replay. See `cluster/journal.rs` for how
//! appends are fenced with `Nats-Expected-Last-Sequence` and acknowledged only once JetStream
//! has them (R6), `cluster/lease.rs` for ownership leases, `cluster/accounts.rs` for accounts,
//! `cluster/nats.rs` for the buckets and reading a stream, `cluster/snapshot.rs` for
//! snapshots, `cluster/open.rs` for opening a shard ([`Cluster::open_shard`]: lease, replay,
//! ownership marker), `cluster/shard.rs` for an opened [`Shard`] and its lease renewal.
//!
//! `imstore-server --cluster` (`server/cluster.rs`) builds on this: nodes that balance the
//! shards between them, forward calls to owners, and merge devices' streams across shards.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, object_store, stream};

use crate::config::Config;
use crate::journal::{Journal, OpenError, Recovered, RecoveryReport, kind, parse_record};
use crate::store::Store;

mod accounts;
mod journal;
mod lease;
mod nats;
mod open;
mod shard;
mod snapshot;

pub(crate) use journal::StreamJournal;
use nats::{Record, marker, open_nats, read_stream, setup, shard_stream, stream_last, with_retry};
use shard::Renewer;
pub use shard::Shard;
use snapshot::{Snapshotter, latest_snapshot, snapshot_path};

/// How a node joins a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// NATS servers: `nats://H:P`, comma-separated.
    pub urls: String,
    /// This node's name: lease holder and Msg-Id prefix. Letters, digits, `-` and `_`.
    pub node_id: String,
    /// The number of shards, fixed when the cluster is created (default 64).
    pub shards: u32,
    /// Replicas of every stream and bucket (default 3; at most the number of NATS nodes).
    pub replicas: usize,
    /// A lease not renewed for this long may be taken over (default 3 s).
    pub lease_ttl: Duration,
    /// How often an owner renews its leases (default 1 s).
    pub renew_every: Duration,
    /// How long a record may go unacknowledged by JetStream — a stream leader election takes
    /// 5-8 s — before the shard's journal fails (default 30 s; less than 120 s, the streams'
    /// duplicate window, or `Cluster::connect` refuses it).
    pub publish_retry: Duration,
    /// Request timeout towards JetStream (default 2 s).
    pub request_timeout: Duration,
    /// An owner snapshots its shard into the object store `imstore_snapshots` after this many
    /// records (default 100,000; 0: only when asked, [`Shard::snapshot`], or for an erasure),
    /// and purges the stream below the snapshot: a new owner replays only what follows it.
    /// Also `store.erase_within_secs` after the first record since the last snapshot that
    /// erased a body (a recall, say), so that the stream and the objects lose it too.
    pub snapshot_every: u64,
    /// The configuration of each shard's store.
    pub store: Config,
}

impl ClusterConfig {
    pub fn new(urls: impl Into<String>, node_id: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            urls: urls.into(),
            node_id: node_id.into(),
            shards: 64,
            replicas: 3,
            lease_ttl: Duration::from_secs(3),
            renew_every: Duration::from_secs(1),
            publish_retry: Duration::from_secs(30),
            request_timeout: Duration::from_secs(2),
            snapshot_every: 100_000,
            store: Config::default(),
        }
    }
}

/// Why a cluster operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// NATS or JetStream refused or did not answer.
    Nats(String),
    /// The configuration is not usable (or disagrees with the cluster's).
    Config(String),
    /// Another node holds the shard's lease, for `expires_in` more at most.
    LeaseHeld {
        shard: u32,
        node: String,
        expires_in: Duration,
    },
    /// The shard's stream could not be replayed into a store.
    Open(OpenError),
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::Nats(e) => write!(f, "NATS: {e}"),
            ClusterError::Config(e) => write!(f, "cluster configuration: {e}"),
            ClusterError::LeaseHeld {
                shard,
                node,
                expires_in,
            } => write!(
                f,
                "shard {shard} is owned by node {node} (lease expires within {expires_in:?})"
            ),
            ClusterError::Open(e) => write!(f, "opening a shard: {e}"),
        }
    }
}

impl std::error::Error for ClusterError {}

impl ClusterError {
    /// The Tencent error code a request failing for this reason answers: 91000.
    pub fn code(&self) -> u32 {
        91000
    }
}

fn nats(e: impl fmt::Display) -> ClusterError {
    ClusterError::Nats(e.to_string())
}

/// The shard of the conversation between `a` and `b` (in either order) among `shards`: CRC32C
/// of the two names in byte order, so every node and every version agrees.
pub fn shard_of(a: &str, b: &str, shards: u32) -> u32 {
    let (x, y) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    let h = crc32c::crc32c_append(
        crc32c::crc32c_append(crc32c::crc32c(x.as_bytes()), &[0]),
        y.as_bytes(),
    );
    h % shards.max(1)
}

/// The name of shard `n`'s stream.
pub fn stream_name(n: u32) -> String {
    format!("IMSTORE_SHARD_{n}")
}

/// The subjects of shard `n`'s stream: `imstore.shard.<n>.>`.
pub fn subjects(n: u32) -> String {
    format!("imstore.shard.{n}.>")
}

/// The subject an owner publishes shard `n`'s records on in its epoch: one subject per
/// (node, epoch), so that who wrote what can be read off the stream (the Msg-Id, which
/// replay relies on, carries the same).
pub fn owner_subject(n: u32, node: &str, epoch: u64) -> String {
    format!("imstore.shard.{n}.{node}.{epoch}")
}

/// How long a shard's stream remembers a Msg-Id to refuse it again: every retry of an append
/// ends within `ClusterConfig::publish_retry`, which must be shorter.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

const META_BUCKET: &str = "imstore_meta";
const SNAPSHOT_BUCKET: &str = "imstore_snapshots";

/// A node's connection to the cluster: NATS, its buckets, and a small runtime of its own on
/// which every NATS exchange runs, so the synchronous API can be called from any thread.
/// Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<ClusterInner>,
}

struct ClusterInner {
    config: ClusterConfig,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    js: jetstream::Context,
    leases: kv::Store,
    accounts: kv::Store,
    snapshots: object_store::ObjectStore,
    /// `imstore_meta`: the shard count, and each node's heartbeat (`node.<id>`).
    meta: kv::Store,
    /// Counts the connections to NATS made after the first (reconnections).
    connections: tokio::sync::watch::Receiver<u64>,
    /// Held while a snapshot is built (one at a time).
    snapshotting: parking_lot::Mutex<()>,
    /// Consumers replays made to read on after one stalled (`read_stream`).
    replay_consumers_replaced: std::sync::atomic::AtomicU64,
    /// Fault injection: the next replay's reader gets nothing more after this many records (0:
    /// off), as from a stalled pull.
    #[cfg(feature = "fault-injection")]
    stall_replay_after: std::sync::atomic::AtomicU64,
    /// Fault injection: run by the next `Shard::ensure_accounts` between finding an account in
    /// the bucket and importing it into the shard.
    #[cfg(feature = "fault-injection")]
    pub(crate) before_import: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Fault injection: run by the next `open_shard` between reading the newest snapshot
    /// and replaying the stream after it (where a stale owner's snapshot can fall).
    #[cfg(feature = "fault-injection")]
    before_replay: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Fault injection: the next snapshot that gets as far as its purge fails there, after
    /// its naming and lease look (as a purge that times out does).
    #[cfg(feature = "fault-injection")]
    pub(crate) fail_snapshot_purge: std::sync::atomic::AtomicBool,
}

impl Drop for ClusterInner {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.inner.config.node_id)
            .field("shards", &self.inner.config.shards)
            .finish_non_exhaustive()
    }
}

/// Writes this node's heartbeat key (`node.<id>` of `imstore_meta`: the deadline, in Unix
/// milliseconds, until which it counts as alive); returns now, as those milliseconds.
async fn say_alive(kv: &kv::Store, me: &str, ttl: Duration) -> Result<u64, ClusterError> {
    let now = lease::now_ms();
    let deadline = now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    kv.put(format!("node.{me}"), deadline.to_string().into())
        .await
        .map_err(nats)?;
    Ok(now)
}

/// The longest a blocking call into NATS may take: five times the publish retry, plus half a
/// minute. Each request has its own timeout, but async-nats hands a request to its connection
/// through a queue that stays full while it reconnects, and the wait for room there has none.
/// The longest legitimate call, a snapshot, takes four steps in a row, each retried for
/// `publish_retry` at most.
fn block_limit(config: &ClusterConfig) -> Duration {
    config.publish_retry * 5 + Duration::from_secs(30)
}

/// What a call into NATS answers when it took longer than its limit.
trait TimedOut {
    fn timed_out(limit: Duration) -> Self;
}

fn timed_out_why(limit: Duration) -> String {
    format!("no answer from NATS within {limit:?}")
}

impl<T> TimedOut for Result<T, ClusterError> {
    fn timed_out(limit: Duration) -> Self {
        Err(ClusterError::Nats(timed_out_why(limit)))
    }
}

impl<T> TimedOut for crate::Result<T> {
    fn timed_out(limit: Duration) -> Self {
        Err(crate::Error::Internal(timed_out_why(limit)))
    }
}

impl<T> TimedOut for Result<T, String> {
    fn timed_out(limit: Duration) -> Self {
        Err(timed_out_why(limit))
    }
}

/// Runs `f` on `handle` and waits for it from this thread (any thread, also an async worker,
/// which it blocks meanwhile), at most `limit`.
fn block_on<F>(handle: &tokio::runtime::Handle, limit: Duration, f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: TimedOut + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(tokio::time::timeout(limit, f).await);
    });
    match rx.recv().expect("the cluster runtime ended") {
        Ok(out) => out,
        Err(_) => F::Output::timed_out(limit),
    }
}

impl Cluster {
    /// Connects to NATS, creates the buckets if they are missing, and records (or checks) the
    /// shard count.
    pub fn connect(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        if config.node_id.is_empty()
            || !config
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ClusterError::Config(format!(
                "node id {:?}: use letters, digits, '-' and '_'",
                config.node_id
            )));
        }
        // A retried append is deduplicated by its Msg-Id only within the stream's duplicate
        // window: retries must end before it does (`journal::append_anywhere`).
        if config.publish_retry >= DUPLICATE_WINDOW {
            return Err(ClusterError::Config(format!(
                "publish_retry {:?} must be shorter than the streams' duplicate window {DUPLICATE_WINDOW:?}",
                config.publish_retry
            )));
        }
        if config.shards == 0 || config.replicas == 0 {
            return Err(ClusterError::Config(
                "shards and replicas must be at least 1".into(),
            ));
        }
        let addrs = config
            .urls
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClusterError::Config(format!("NATS URLs {:?}: {e}", config.urls)))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("imstore-nats")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Nats(format!("starting the NATS runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let cfg = config.clone();
        let (connections, connections_rx) = tokio::sync::watch::channel(0u64);
        let limit = block_limit(&config);
        let (js, (leases, accounts, snapshots, meta)) = block_on(&handle, limit, async move {
            let connections = Arc::new(connections);
            let first = Arc::new(AtomicBool::new(true));
            let client = async_nats::ConnectOptions::new()
                .name(format!("imstore-{}", cfg.node_id))
                .event_callback(move |event| {
                    // The first `Connected` is the connection itself, not a reconnection.
                    if matches!(event, async_nats::Event::Connected)
                        && !first.swap(false, Ordering::AcqRel)
                    {
                        connections.send_modify(|n| *n += 1);
                    }
                    async {}
                })
                .connection_timeout(Duration::from_secs(5))
                .connect(addrs)
                .await
                .map_err(nats)?;
            let js = jetstream::context::ContextBuilder::new()
                .timeout(cfg.request_timeout)
                .max_ack_inflight(4 * journal::WINDOW)
                .backpressure_on_inflight(true)
                .build(client.clone());
            // The buckets (leases, accounts, meta, snapshots) on a context of their own,
            // without the shards' backpressure: a lease's renewal must not queue for a permit
            // behind the publishes of shards whose streams are electing a leader (their
            // permits are held until their acknowledgements time out, tens of seconds), or a
            // busy node would lose the leases of its healthy shards.
            let buckets_js = jetstream::context::ContextBuilder::new()
                .timeout(cfg.request_timeout)
                .build(client);
            // A cluster still electing leaders (a node just restarted, say) answers with
            // timeouts for a few seconds: try again for as long as an append would.
            let buckets = with_retry(cfg.publish_retry, || setup(&buckets_js, &cfg)).await?;
            Ok::<_, ClusterError>((js, buckets))
        })?;
        Ok(Cluster {
            inner: Arc::new(ClusterInner {
                config,
                runtime: Some(runtime),
                handle,
                js,
                leases,
                accounts,
                snapshots,
                meta,
                connections: connections_rx,
                snapshotting: parking_lot::Mutex::new(()),
                replay_consumers_replaced: Default::default(),
                #[cfg(feature = "fault-injection")]
                stall_replay_after: Default::default(),
                #[cfg(feature = "fault-injection")]
                before_import: parking_lot::Mutex::new(None),
                #[cfg(feature = "fault-injection")]
                before_replay: parking_lot::Mutex::new(None),
                #[cfg(feature = "fault-injection")]
                fail_snapshot_purge: Default::default(),
            }),
        })
    }

    fn block<F>(&self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: TimedOut + Send + 'static,
    {
        block_on(&self.inner.handle, block_limit(&self.inner.config), f)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// The shard of the conversation between `a` and `b`.
    pub fn shard_of(&self, a: &str, b: &str) -> u32 {
        shard_of(a, b, self.inner.config.shards)
    }

    /// The NATS connection, for a server's requests between nodes. Usable from any runtime.
    pub fn client(&self) -> async_nats::Client {
        self.inner.js.client()
    }

    /// Changes each time the client connects to NATS again after losing its connection: a
    /// request in flight then may have lost its answer, and is better sent again at once than
    /// left to time out.
    pub fn reconnections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.connections.clone()
    }

    // ----- nodes -----

    /// Says this node is alive for `ttl` more (the key `node.<id>` of `imstore_meta` holds the
    /// deadline), and returns every node alive now, sorted — this one included.
    pub fn heartbeat(&self, ttl: Duration) -> Result<Vec<String>, ClusterError> {
        let (kv, me) = (self.inner.meta.clone(), self.node_id().to_owned());
        self.block(async move {
            let now = say_alive(&kv, &me, ttl).await?;
            // Every node's key as of this heartbeat (`current_entries`: after every write
            // acknowledged before it, whichever replica the listing reads).
            let alive = nats::current_entries(&kv)
                .await
                .map_err(nats)?
                .into_iter()
                .filter_map(|(key, value)| {
                    let node = key.strip_prefix("node.")?;
                    let deadline = std::str::from_utf8(&value).ok()?.parse::<u64>().ok()?;
                    (deadline > now).then(|| node.to_owned())
                })
                .collect::<Vec<_>>();
            Ok(alive)
        })
    }

    /// Says this node is alive for `ttl` more, as [`heartbeat`](Cluster::heartbeat) does,
    /// without listing the others: for while a long task holds up the next heartbeat.
    pub fn keep_alive(&self, ttl: Duration) -> Result<(), ClusterError> {
        let (kv, me) = (self.inner.meta.clone(), self.node_id().to_owned());
        self.block(async move { say_alive(&kv, &me, ttl).await.map(|_| ()) })
    }

    /// Says this node has left (a graceful stop): the others stop counting it at once.
    pub fn leave(&self) -> Result<(), ClusterError> {
        let (kv, me) = (self.inner.meta.clone(), self.node_id().to_owned());
        self.block(async move {
            kv.delete(format!("node.{me}")).await.map_err(nats)?;
            Ok(())
        })
    }

    // ----- accounts -----

    /// Imports an account into the cluster's accounts bucket (idempotent).
    pub fn import_account(&self, user: &str) -> crate::Result<()> {
        let (kv, user) = (self.inner.accounts.clone(), user.to_owned());
        self.block(async move { accounts::import(&kv, &user).await })
    }

    /// Whether the accounts bucket has `user`.
    pub fn account_exists(&self, user: &str) -> crate::Result<bool> {
        let (kv, user) = (self.inner.accounts.clone(), user.to_owned());
        self.block(async move { accounts::exists(&kv, &user).await })
    }

    /// Deletes `user` from the accounts bucket (70107 when absent). Shards that imported it
    /// keep their records of it: `imstore-server` deletes it from the bucket first, then in
    /// every shard (and `Shard::ensure_accounts` undoes an import the delete crossed).
    pub fn delete_account(&self, user: &str) -> crate::Result<()> {
        let (kv, user) = (self.inner.accounts.clone(), user.to_owned());
        self.block(async move { accounts::delete(&kv, &user).await })
    }

    /// Every account in the bucket, sorted.
    pub fn accounts(&self) -> crate::Result<Vec<String>> {
        let kv = self.inner.accounts.clone();
        self.block(async move { accounts::list(&kv).await })
    }

    // ----- shards -----

    /// Who holds shard `n`'s lease: node, epoch and how long until it expires (zero when it
    /// has expired), or `None` if nobody ever held it.
    pub fn lease_holder(&self, n: u32) -> Result<Option<(String, u64, Duration)>, ClusterError> {
        let kv = self.inner.leases.clone();
        let v = self
            .block(async move { lease::read(&kv, n).await })
            .map_err(ClusterError::Nats)?;
        Ok(v.map(|(v, _)| {
            let left = v.expires_ms.saturating_sub(lease::now_ms());
            (v.node, v.epoch, Duration::from_millis(left))
        }))
    }

    /// How many times a replay replaced its stream consumer because it stalled (see
    /// `open_shard`): each also logged as a warning.
    pub fn replay_consumers_replaced(&self) -> u64 {
        self.inner.replay_consumers_replaced.load(Ordering::Relaxed)
    }

    /// Fault injection: the next replay's consumer hands over nothing after `records`, as a
    /// stalled pull does (the replay must read on with a new one).
    #[cfg(feature = "fault-injection")]
    pub fn stall_next_replay_after(&self, records: u64) {
        self.inner
            .stall_replay_after
            .store(records, Ordering::Relaxed);
    }

    /// Fault injection: `f` runs in the next [`Shard::ensure_accounts`] of this node after an
    /// account was found in the bucket and before it is imported into the shard (where a
    /// concurrent `account_delete` can fall).
    #[cfg(feature = "fault-injection")]
    pub fn before_next_shard_import(&self, f: impl FnOnce() + Send + 'static) {
        *self.inner.before_import.lock() = Some(Box::new(f));
    }

    /// Fault injection: `f` runs once, in the next [`open_shard`](Cluster::open_shard) on this
    /// node, after the newest snapshot is read and before the stream after it is replayed.
    #[cfg(feature = "fault-injection")]
    pub fn before_next_replay(&self, f: impl FnOnce() + Send + 'static) {
        *self.inner.before_replay.lock() = Some(Box::new(f));
    }

    /// Fault injection: the next snapshot on this node that gets as far as its purge fails
    /// there, after it was named the newest (the owner's next try must finish it).
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_snapshot_purge(&self) {
        self.inner
            .fail_snapshot_purge
            .store(true, Ordering::Relaxed);
    }

    /// Fault injection: whether a failure set by
    /// [`fail_next_snapshot_purge`](Cluster::fail_next_snapshot_purge) is still to happen.
    #[cfg(feature = "fault-injection")]
    pub fn snapshot_purge_failure_pending(&self) -> bool {
        self.inner.fail_snapshot_purge.load(Ordering::Relaxed)
    }

    /// The NATS server leading shard `n`'s stream (its Raft leader), if there is one now.
    pub fn stream_leader(&self, n: u32) -> Result<Option<String>, ClusterError> {
        let js = self.inner.js.clone();
        self.block(async move {
            let mut s = js.get_stream(stream_name(n)).await.map_err(nats)?;
            let info = s.info().await.map_err(nats)?;
            Ok(info.cluster.as_ref().and_then(|c| c.leader.clone()))
        })
    }

    /// Whether shard `n`'s stream has a leader and every replica is current (caught up).
    pub fn stream_healthy(&self, n: u32) -> Result<bool, ClusterError> {
        let js = self.inner.js.clone();
        self.block(async move {
            let mut s = js.get_stream(stream_name(n)).await.map_err(nats)?;
            let info = s.info().await.map_err(nats)?;
            Ok(info.cluster.as_ref().is_some_and(|c| {
                c.leader.is_some() && c.replicas.iter().all(|p| p.current && !p.offline)
            }))
        })
    }

    /// Who wrote each record of shard `n`'s stream: (stream sequence, node, epoch), in stream
    /// order, from its `Nats-Msg-Id`. For audits and tests: a record of an epoch lower than one
    /// before it is a fenced-out zombie, never applied. Reads the whole stream, one request per
    /// record.
    pub fn writers(&self, n: u32) -> Result<Vec<(u64, String, u64)>, ClusterError> {
        let js = self.inner.js.clone();
        self.block(async move {
            let mut stream = js.get_stream(stream_name(n)).await.map_err(nats)?;
            let info = stream.info().await.map_err(nats)?;
            let (first, last) = (info.state.first_sequence, info.state.last_sequence);
            let mut out = Vec::new();
            for seq in first..=last {
                if seq == 0 {
                    continue;
                }
                let m = match stream.get_raw_message(seq).await {
                    Ok(m) => m,
                    Err(e) if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound) => {
                        continue;
                    }
                    Err(e) => return Err(nats(e)),
                };
                let id = m
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                let mut parts = id.split('.');
                let node = parts.next().unwrap_or("").to_owned();
                let epoch = parts.next().and_then(|e| e.parse().ok()).unwrap_or(0);
                out.push((seq, node, epoch));
            }
            Ok(out)
        })
    }
}
