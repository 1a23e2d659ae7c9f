//! Conversation shards on NATS JetStream (cargo feature `cluster`; SPEC §9) — the foundation.
//!
//! Conversations (unordered account pairs) hash into a fixed number of shards
//! ([`shard_of`]), chosen when the cluster is created and kept in the bucket `imstore_meta`.
//! A shard is an ordinary [`Store`] whose journal is the JetStream stream `IMSTORE_SHARD_<n>`
//! (subjects `imstore.shard.<n>.<node>.<epoch>`, 3 replicas by default) instead of files: the same `Op`
//! records, applied by the same `apply`, live and on replay. See `cluster/journal.rs` for how
//! appends are fenced with `Nats-Expected-Last-Sequence` and acknowledged only once JetStream
//! has them (R6), `cluster/lease.rs` for ownership leases, `cluster/accounts.rs` for accounts.
//!
//! Opening a shard ([`Cluster::open_shard`]): take its lease (a new epoch), replay the whole
//! stream (or the newest snapshot and what follows it) through `apply`, skipping stale
//! owners' zombies, then append an ownership marker expecting the last sequence read —
//! from then on no earlier owner's append is acknowledged or applied by anyone (its pipelined
//! records may still land, as zombies) — and start renewing the lease. The
//! marker is retried (after replaying what else arrived) if an earlier owner was still
//! appending.
//!
//! `imstore-server --cluster` (`server/cluster.rs`) builds on this: nodes that balance the
//! shards between them, forward calls to owners, and merge devices' streams across shards.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, object_store, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::config::Config;
use crate::error::Error;
use crate::journal::{Journal, OpenError, Recovered, RecoveryReport, kind, parse_record};
use crate::store::Store;

mod accounts;
mod journal;
mod lease;

pub(crate) use journal::StreamJournal;

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
    /// 5-8 s — before the shard's journal fails (default 30 s).
    pub publish_retry: Duration,
    /// Request timeout towards JetStream (default 2 s).
    pub request_timeout: Duration,
    /// An owner snapshots its shard into the object store `imstore_snapshots` after this many
    /// records (default 100,000; 0: only when asked, [`Shard::snapshot`]), and purges the
    /// stream below the snapshot: a new owner replays only what follows it.
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
    /// Another node appended to the shard while it was being opened, again and again.
    Contended(u32),
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
            ClusterError::Contended(n) => {
                write!(f, "shard {n}: another owner kept appending while opening")
            }
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

const META_BUCKET: &str = "imstore_meta";
const SNAPSHOT_BUCKET: &str = "imstore_snapshots";

/// The object holding shard `n`'s snapshot at `cut`: `shard.<n>.<cut, 20 digits>.<epoch>`,
/// the epoch being the highest owner epoch up to the cut (replay after it skips records of
/// lower epochs). A new snapshot is a new object, named the newest by compare-and-set (the
/// previous one is deleted after it), so that a stale owner's late upload of an older
/// snapshot can never replace a newer one.
fn snapshot_object(n: u32, cut: u64, epoch: u64) -> String {
    format!("shard.{n}.{cut:020}.{epoch}")
}

fn snapshot_path(n: u32) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("nats:{SNAPSHOT_BUCKET}/shard.{n}"))
}

/// The key of `imstore_meta` naming shard `n`'s newest snapshot object. Listing the object
/// store instead can wait for ever on nats-server 2.9 while another node stores a snapshot
/// (the listing's pending count never reaches zero), so the newest is found by name only:
/// nothing here lists the object store.
fn snapshot_key(n: u32) -> String {
    format!("snap.{n}")
}

/// The newest snapshot of shard `n`: its cut, epoch and bytes, found through
/// [`snapshot_key`].
async fn latest_snapshot(
    store: &object_store::ObjectStore,
    meta: &kv::Store,
    n: u32,
) -> Result<Option<(u64, u64, Vec<u8>)>, String> {
    let named = meta
        .get(snapshot_key(n))
        .await
        .map_err(|e| e.to_string())?
        .and_then(|v| String::from_utf8(v.to_vec()).ok());
    let newest =
        named.and_then(|name| parse_snapshot_name(n, &name).map(|(cut, epoch)| (cut, epoch, name)));
    let Some((cut, epoch, name)) = newest else {
        return Ok(None);
    };
    let mut object = store.get(&name).await.map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some((cut, epoch, bytes)))
}

/// (cut, epoch) of a snapshot object's name `shard.<n>.<cut>.<epoch>`.
fn parse_snapshot_name(n: u32, name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(&format!("shard.{n}."))?;
    let (cut, epoch) = rest.split_once('.')?;
    Some((cut.parse().ok()?, epoch.parse().ok()?))
}

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

/// Runs `f` on `handle` and waits for it from this thread (any thread, also an async worker,
/// which it blocks meanwhile).
fn block_on<F>(handle: &tokio::runtime::Handle, f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().expect("the cluster runtime ended")
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
        let (js, (leases, accounts, snapshots, meta)) = block_on(&handle, async move {
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
                .build(client);
            // A cluster still electing leaders (a node just restarted, say) answers with
            // timeouts for a few seconds: try again for as long as an append would.
            let buckets = with_retry(cfg.publish_retry, || setup(&js, &cfg)).await?;
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
            }),
        })
    }

    fn block<F>(&self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        block_on(&self.inner.handle, f)
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
            let now = lease::now_ms();
            let deadline = now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            kv.put(format!("node.{me}"), deadline.to_string().into())
                .await
                .map_err(nats)?;
            let mut keys = kv.keys().await.map_err(nats)?;
            let mut alive = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key.map_err(nats)?;
                let Some(node) = key.strip_prefix("node.") else {
                    continue;
                };
                let deadline = kv
                    .get(&key)
                    .await
                    .map_err(nats)?
                    .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok());
                if deadline.is_some_and(|d| d > now) {
                    alive.push(node.to_owned());
                }
            }
            alive.sort();
            Ok(alive)
        })
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
    /// keep their records of it: `imstore-server` deletes it in every shard first.
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

    /// Opens shard `n` as its owner: takes the lease (failing with `LeaseHeld` if another node
    /// holds it), replays the stream into a fresh store, fences earlier owners out with an
    /// ownership marker, and renews the lease until the shard is closed or dropped.
    pub fn open_shard(&self, n: u32) -> Result<Shard, ClusterError> {
        let cfg = &self.inner.config;
        if n >= cfg.shards {
            return Err(ClusterError::Config(format!(
                "shard {n} of {} does not exist",
                cfg.shards
            )));
        }
        // The stream, created on first use.
        let (js, replicas, retry) = (self.inner.js.clone(), cfg.replicas, cfg.publish_retry);
        self.block(async move { with_retry(retry, || shard_stream(&js, n, replicas)).await })?;

        // The lease: a new epoch.
        let (kv, node, ttl) = (
            self.inner.leases.clone(),
            cfg.node_id.clone(),
            cfg.lease_ttl,
        );
        let held = self.block(async move {
            // A take whose answer was lost is taken again, by this node, at the next
            // epoch: the lost one is never used.
            with_retry(retry, || async {
                lease::take(&kv, n, &node, ttl).await.map_err(|e| match e {
                    lease::TakeError::Held { node, expires_ms } => ClusterError::LeaseHeld {
                        shard: n,
                        node,
                        expires_in: Duration::from_millis(
                            expires_ms.saturating_sub(lease::now_ms()),
                        ),
                    },
                    lease::TakeError::Nats(e) => ClusterError::Nats(e),
                    lease::TakeError::Conflict => ClusterError::Nats("lease conflict".into()),
                })
            })
            .await
        })?;
        let target = journal::Target {
            js: self.inner.js.clone(),
            stream: stream_name(n),
            subject: owner_subject(n, &cfg.node_id, held.epoch),
            msg_id_prefix: format!("{}.{}.", cfg.node_id, held.epoch),
            retry_for: cfg.publish_retry,
        };
        let renewer = Renewer::start(self, n, held.clone());

        // Replay, then the marker; again if an earlier owner appended in between.
        let mut shared = None;
        let store = Store::open_with_journal(cfg.store.clone(), |recover| {
            let mut report = RecoveryReport::default();
            // The newest snapshot, then the stream after its cut.
            let mut applied = 0u64;
            let mut max_epoch = 0u64;
            let (snaps, meta) = (self.inner.snapshots.clone(), self.inner.meta.clone());
            if let Some((_, epoch, bytes)) = self
                .block(async move { latest_snapshot(&snaps, &meta, n).await })
                .map_err(open_nats)?
            {
                let cut = crate::journal::read_snapshot(&bytes, recover).map_err(|reason| {
                    OpenError::Replay {
                        path: snapshot_path(n),
                        offset: 0,
                        reason,
                    }
                })?;
                report.snapshot_lsn = Some(cut);
                applied = cut;
                max_epoch = epoch;
            }
            // Catch up with the stream first, so that what is left to replay once the marker
            // has fenced earlier owners out is short; then the marker, at the sequence after
            // the stream's last. Another record there first (an earlier owner still appending)
            // means only a new look at the stream's end and another try — not a replay in
            // between, which would give a busy earlier owner time to append again, round after
            // round, until `publish_retry` ran out. What came after the catch-up is replayed
            // once the marker is in: the stream cannot grow before it then.
            let deadline = Instant::now() + cfg.publish_retry;
            let stream_last = |applied: u64| {
                let js = self.inner.js.clone();
                let retry = cfg.publish_retry;
                let last = self
                    .block(async move {
                        with_retry(retry, || async {
                            stream_last(&js, n).await.map_err(ClusterError::Nats)
                        })
                        .await
                    })
                    .map_err(open_nats)?;
                if last < applied {
                    return Err(open_nats(format!(
                        "stream {} ends at {last}, before its snapshot's cut {applied}",
                        stream_name(n)
                    )));
                }
                Ok(last)
            };
            let mut last = stream_last(applied)?;
            if last > applied {
                applied = self.replay(n, applied, last, recover, &mut report, &mut max_epoch)?;
            }
            loop {
                if let Some(why) = renewer.lost() {
                    return Err(open_nats(format!("lost the lease while opening: {why}")));
                }
                let marker = marker(&cfg.node_id, held.epoch);
                let t = target.clone();
                let seq = last + 1;
                match self.block(async move { journal::reconcile(&t, seq, seq, &marker).await }) {
                    journal::Outcome::Stored => break,
                    journal::Outcome::Taken(_) | journal::Outcome::Zombie
                        if Instant::now() < deadline =>
                    {
                        last = stream_last(applied)?;
                    }
                    journal::Outcome::Taken(_) | journal::Outcome::Zombie => {
                        return Err(OpenError::Config(Error::Internal(
                            ClusterError::Contended(n).to_string(),
                        )));
                    }
                    journal::Outcome::Failed(why) => return Err(open_nats(why)),
                }
            }
            if last > applied {
                applied = self.replay(n, applied, last, recover, &mut report, &mut max_epoch)?;
            }
            let sh = journal::Shared::new(n, applied + 1);
            shared = Some(sh.clone());
            self.inner
                .handle
                .spawn(journal::publisher(sh.clone(), target.clone()));
            Ok((
                Journal::Stream(StreamJournal::new(sh, format!("nats:{}", stream_name(n)))),
                report,
            ))
        })
        .map_err(|e| {
            // Give up what was taken: the publisher, the lease.
            if let Some(sh) = &shared {
                sh.fail("the shard could not be opened".into());
            }
            renewer.stop();
            let kv = self.inner.leases.clone();
            let node = cfg.node_id.clone();
            let mut held = renewer.state.held.lock().clone();
            let _ = self.block(async move { lease::release(&kv, n, &node, &mut held).await });
            ClusterError::Open(e)
        })?;
        let shared = shared.expect("set by a successful open");
        let snapshots = Arc::new(parking_lot::Mutex::new(
            store.recovery_report().snapshot_lsn.unwrap_or(0),
        ));
        if cfg.snapshot_every > 0 {
            Snapshotter::start(self, n, shared.clone(), snapshots.clone());
        }
        renewer.attach(shared.clone());
        Ok(Shard {
            cluster: self.clone(),
            n,
            epoch: held.epoch,
            store,
            shared,
            renewer,
            abandoned: AtomicBool::new(false),
            snapshots,
        })
    }

    /// Snapshots shard `n` up to the last acknowledged record into the object store, purges the
    /// stream below that record (which stays: the owner's next append expects it) and deletes
    /// older snapshots. Built from the previous snapshot and the stream, not from the live
    /// store, so writes go on meanwhile. Returns the cut.
    fn snapshot_shard(&self, n: u32, shared: &journal::Shared) -> Result<u64, ClusterError> {
        let not_owner =
            |why: String| ClusterError::Nats(format!("shard {n} is not owned here: {why}"));
        if let Some(why) = shared.failed() {
            return Err(not_owner(why));
        }
        // One snapshot at a time per node: each holds a whole shard's state in memory while
        // it is built.
        let _one = self.inner.snapshotting.lock();
        let cut = shared.done_seq();
        let (snaps, meta) = (self.inner.snapshots.clone(), self.inner.meta.clone());
        let within = self.inner.config.publish_retry;
        let prev = self
            .block(async move {
                tokio::time::timeout(within, latest_snapshot(&snaps, &meta, n))
                    .await
                    .map_err(|_| {
                        format!("listing the snapshots of shard {n}: no answer within {within:?}")
                    })?
            })
            .map_err(ClusterError::Nats)?;
        let from = prev.as_ref().map_or(0, |(c, _, _)| *c);
        let mut epoch = prev.as_ref().map_or(0, |(_, e, _)| *e);
        if from >= cut {
            return Ok(from);
        }
        let bytes = Store::build_snapshot(&self.inner.config.store, cut, |recover| {
            if let Some((_, _, b)) = &prev {
                crate::journal::read_snapshot(b, recover)?;
            }
            let mut report = RecoveryReport::default();
            self.replay(n, from, cut, recover, &mut report, &mut epoch)
                .map_err(|e| e.to_string())?;
            Ok(())
        })
        .map_err(|e| ClusterError::Nats(e.to_string()))?;
        if let Some(why) = shared.failed() {
            return Err(not_owner(why));
        }
        let (snaps, js, meta) = (
            self.inner.snapshots.clone(),
            self.inner.js.clone(),
            self.inner.meta.clone(),
        );
        self.block(async move {
            let name = snapshot_object(n, cut, epoch);
            let late = |what: &str| nats(format!("{what}: no answer within {within:?}"));
            tokio::time::timeout(within, snaps.put(name.as_str(), &mut bytes.as_slice()))
                .await
                .map_err(|_| late(&format!("storing {name}")))?
                .map_err(|e| nats(format!("storing {name}: {e}")))?;
            // Name it the newest — unless a newer one is named already (a stale owner's late
            // snapshot never replaces a newer owner's): compare and set.
            let named = async {
                loop {
                    let entry = meta.entry(snapshot_key(n)).await.map_err(nats)?;
                    let current = entry
                        .as_ref()
                        .filter(|e| e.operation == kv::Operation::Put)
                        .and_then(|e| std::str::from_utf8(&e.value).ok())
                        .and_then(|v| parse_snapshot_name(n, v).map(|p| (p, v.to_owned())));
                    if let Some(((c, _), named)) = &current
                        && *c >= cut
                    {
                        return Ok::<_, ClusterError>((false, Some(named.clone())));
                    }
                    let previous = current.map(|(_, name)| name);
                    let written = match &entry {
                        Some(e) => meta
                            .update(snapshot_key(n), name.clone().into(), e.revision)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        None => meta
                            .create(snapshot_key(n), name.clone().into())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                    };
                    match written {
                        Ok(()) => return Ok((true, previous)),
                        // Someone else wrote in between: look again.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            };
            let (newest, previous) = tokio::time::timeout(within, named)
                .await
                .map_err(|_| late(&format!("naming {name} the newest snapshot")))??;
            if !newest {
                // Ours is not needed (unless it is the very one named).
                if previous.as_deref() != Some(name.as_str()) {
                    let _ = tokio::time::timeout(within, snaps.delete(&name)).await;
                }
                return Ok(cut);
            }
            let purge = async {
                js.get_stream_no_info(stream_name(n))
                    .await
                    .map_err(nats)?
                    .purge()
                    .sequence(cut)
                    .await
                    .map_err(|e| nats(format!("purging {} below {cut}: {e}", stream_name(n))))
            };
            tokio::time::timeout(within, purge)
                .await
                .map_err(|_| late(&format!("purging {}", stream_name(n))))??;
            if let Some(old) = previous {
                let _ = tokio::time::timeout(within, snaps.delete(&old)).await;
            }
            Ok(cut)
        })
    }

    /// [`open_shard`](Cluster::open_shard), retried while another node's lease has not yet
    /// expired, for at most `timeout`.
    pub fn open_shard_wait(&self, n: u32, timeout: Duration) -> Result<Shard, ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.open_shard(n) {
                Err(ClusterError::LeaseHeld { expires_in, .. }) if Instant::now() < deadline => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    std::thread::sleep(
                        expires_in
                            .clamp(Duration::from_millis(50), Duration::from_millis(500))
                            .min(left),
                    );
                }
                other => return other,
            }
        }
    }

    /// Feeds `recover` the records of shard `n`'s stream after sequence `from` up to `to`
    /// (inclusive), in order; returns `to`.
    fn replay(
        &self,
        n: u32,
        from: u64,
        to: u64,
        recover: &mut dyn FnMut(Recovered<'_>) -> Result<(), String>,
        report: &mut RecoveryReport,
        max_epoch: &mut u64,
    ) -> Result<u64, OpenError> {
        let (tx, rx) = mpsc::sync_channel::<Result<Record, String>>(1024);
        let inner = self.inner.clone();
        #[cfg(feature = "fault-injection")]
        let stall_after = self.inner.stall_replay_after.swap(0, Ordering::Relaxed);
        #[cfg(not(feature = "fault-injection"))]
        let stall_after = 0;
        self.inner.handle.spawn(async move {
            if let Err(e) = read_stream(&inner, n, (from, to), stall_after, &tx).await {
                let _ = tx.send(Err(e));
            }
        });
        let path = std::path::PathBuf::from(format!("nats:{}", stream_name(n)));
        let mut expect = from + 1;
        while expect <= to {
            let (seq, msg_id, payload) = rx
                .recv()
                .map_err(|_| open_nats("the stream reader ended early"))?
                .map_err(open_nats)?;
            let replay_err = |reason: String| OpenError::Replay {
                path: path.clone(),
                offset: seq,
                reason,
            };
            // The ordered consumer may hand a message over again (when it recreates its
            // consumer): those were applied already. A gap is an error.
            if seq < expect {
                continue;
            }
            if seq != expect {
                return Err(replay_err(format!("expected sequence {expect}")));
            }
            let (k, body) = parse_record(&payload).map_err(|r| OpenError::Corrupt {
                path: path.clone(),
                offset: seq,
                reason: r.to_owned(),
            })?;
            let epoch = msg_id
                .as_deref()
                .and_then(journal::epoch_of)
                .ok_or_else(|| replay_err(format!("no owner's Msg-Id: {msg_id:?}")))?;
            match k {
                // A stale owner's zombie (see `cluster/journal.rs`): never acknowledged.
                kind::OP if epoch < *max_epoch => {}
                kind::OP => {
                    recover(Recovered::Op(body)).map_err(replay_err)?;
                    report.records_replayed += 1;
                    *max_epoch = epoch;
                }
                journal::KIND_OWNER => *max_epoch = (*max_epoch).max(epoch),
                other => return Err(replay_err(format!("unexpected record kind {other}"))),
            }
            expect += 1;
        }
        Ok(to)
    }
}

/// A stream message being replayed: sequence, Msg-Id, the framed record.
type Record = (u64, Option<String>, Bytes);

fn open_nats(e: impl fmt::Display) -> OpenError {
    OpenError::Config(Error::Internal(format!("NATS: {e}")))
}

/// An ownership marker: `node epoch`, framed like any record.
fn marker(node: &str, epoch: u64) -> Bytes {
    let mut frame = Vec::new();
    crate::journal::push_frame(&mut frame, journal::KIND_OWNER, |b| {
        b.extend_from_slice(format!("{node} {epoch}").as_bytes())
    });
    Bytes::from(frame)
}

/// The buckets a node uses, created if missing, and the shard count checked.
async fn setup(
    js: &jetstream::Context,
    cfg: &ClusterConfig,
) -> Result<(kv::Store, kv::Store, object_store::ObjectStore, kv::Store), ClusterError> {
    let leases = bucket(js, lease::BUCKET, cfg.replicas).await?;
    let accounts = bucket(js, accounts::BUCKET, cfg.replicas).await?;
    let meta = bucket(js, META_BUCKET, cfg.replicas).await?;
    let snapshots = match js.get_object_store(SNAPSHOT_BUCKET).await {
        Ok(o) => o,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: SNAPSHOT_BUCKET.to_owned(),
                num_replicas: cfg.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| nats(format!("creating bucket {SNAPSHOT_BUCKET}: {e}")))?,
    };
    let shards = cfg.shards.to_string();
    match meta.create("shards", shards.clone().into()).await {
        Ok(_) => {}
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let have = meta.get("shards").await.map_err(nats)?.unwrap_or_default();
            if have != shards.as_bytes() {
                return Err(ClusterError::Config(format!(
                    "the cluster was created with {} shards, not {shards}",
                    String::from_utf8_lossy(&have)
                )));
            }
        }
        Err(e) => return Err(nats(e)),
    }
    Ok((leases, accounts, snapshots, meta))
}

/// Runs `f` until it succeeds, fails for another reason than NATS, or `within` has passed.
async fn with_retry<T, Fut>(within: Duration, mut f: impl FnMut() -> Fut) -> Result<T, ClusterError>
where
    Fut: Future<Output = Result<T, ClusterError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Err(ClusterError::Nats(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

/// Opens KV bucket `name`, creating its stream if missing. The stream is created here, with the
/// configuration a KV bucket has (ADR-8), rather than by `create_key_value`, which first asks
/// for the account's information in a form nats-server 2.9 does not answer.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    if let Ok(kv) = js.get_key_value(name).await {
        return Ok(kv);
    }
    let created = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            max_bytes: -1,
            max_messages: -1,
            max_message_size: -1,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await;
    if let Err(e) = created {
        return Err(ClusterError::Nats(format!("creating bucket {name}: {e}")));
    }
    js.get_key_value(name)
        .await
        .map_err(|e| ClusterError::Nats(format!("opening bucket {name}: {e}")))
}

async fn shard_stream(
    js: &jetstream::Context,
    n: u32,
    replicas: usize,
) -> Result<(), ClusterError> {
    js.get_or_create_stream(stream::Config {
        name: stream_name(n),
        subjects: vec![subjects(n)],
        num_replicas: replicas,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        deny_delete: true,
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::Nats(format!("stream {}: {e}", stream_name(n))))?;
    Ok(())
}

async fn stream_last(js: &jetstream::Context, n: u32) -> Result<u64, String> {
    let mut s = js
        .get_stream(stream_name(n))
        .await
        .map_err(|e| e.to_string())?;
    Ok(s.info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence)
}

/// Sends the messages of shard `n`'s stream after `from` up to `to` down `tx`, in order, with
/// an ordered consumer.
///
/// A consumer that hands over nothing for a quarter of `idle` is replaced by a new one that
/// starts at the next sequence not yet sent. (The ordered consumer mends a stalled pull by
/// itself only after missing two of its 15-second idle heartbeats, past `idle`: a replay
/// once failed that way in CI, its stream whole and its server up.) A consumer that cannot be
/// made (the stream between leaders) is asked for again. The read fails only when no message
/// at all came for `idle`, through however many consumers.
///
/// `stall_after` (fault injection; 0: off): the first consumer hands over nothing after that
/// many records.
async fn read_stream(
    inner: &ClusterInner,
    n: u32,
    (from, to): (u64, u64),
    stall_after: u64,
    tx: &mpsc::SyncSender<Result<Record, String>>,
) -> Result<(), String> {
    let (mut stall_at, mut sent) = ((stall_after > 0).then_some(stall_after), 0u64);
    let s = inner
        .js
        .get_stream_no_info(stream_name(n))
        .await
        .map_err(|e| e.to_string())?;
    let idle = inner.config.publish_retry;
    let stall = idle / 4;
    let mut next = from + 1;
    let mut progress = Instant::now();
    // Bounded: each round either sends a message (and `next` moves towards `to`) or spends
    // `stall` of the `idle` that ends the read.
    loop {
        let open = async {
            let consumer = s
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: next,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            consumer.messages().await.map_err(|e| e.to_string())
        };
        let left = idle.saturating_sub(progress.elapsed());
        let mut messages = match tokio::time::timeout(left, open).await {
            Ok(Ok(messages)) => messages,
            // The stream may be between leaders, say: try again while `idle` lasts.
            Ok(Err(e)) if progress.elapsed() < idle => {
                tracing::warn!("stream {}: a consumer at {next}: {e}", stream_name(n));
                tokio::time::sleep(Duration::from_millis(250).min(left)).await;
                continue;
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(format!(
                    "no consumer of stream {} for {idle:?}",
                    stream_name(n)
                ));
            }
        };
        loop {
            let left = idle.saturating_sub(progress.elapsed());
            if left.is_zero() {
                return Err(format!(
                    "no message from stream {} for {idle:?}",
                    stream_name(n)
                ));
            }
            let got = if stall_at == Some(sent) {
                // The injected stall: this consumer's next message never comes.
                stall_at = None;
                tokio::time::sleep(left.min(stall)).await;
                None
            } else {
                tokio::time::timeout(left.min(stall), messages.next())
                    .await
                    .ok()
            };
            // No message for `stall`, or the consumer failed (then after a pause, so that a
            // consumer failing at once is not made again and again): read on with a new one.
            let why = match got {
                None => format!("no message for {stall:?}"),
                Some(None) => {
                    tokio::time::sleep(Duration::from_millis(250).min(left)).await;
                    "the consumer ended".to_owned()
                }
                Some(Some(Err(e))) => {
                    tokio::time::sleep(Duration::from_millis(250).min(left)).await;
                    e.to_string()
                }
                Some(Some(Ok(m))) => {
                    let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
                    // Sent already, by this consumer before it recreated itself or by the one
                    // before.
                    if seq < next {
                        continue;
                    }
                    if seq > to {
                        return Ok(());
                    }
                    let msg_id = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                        .map(|v| v.as_str().to_owned());
                    match tx.try_send(Ok((seq, msg_id, m.payload.clone()))) {
                        Ok(()) => {}
                        // The replaying thread is behind: wait for it without stalling the
                        // runtime.
                        Err(mpsc::TrySendError::Full(item)) => {
                            if tokio::task::block_in_place(|| tx.send(item)).is_err() {
                                return Ok(());
                            }
                        }
                        Err(mpsc::TrySendError::Disconnected(_)) => return Ok(()),
                    }
                    if seq == to {
                        return Ok(());
                    }
                    (next, progress, sent) = (seq + 1, Instant::now(), sent + 1);
                    continue;
                }
            };
            inner
                .replay_consumers_replaced
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "stream {}: {why} at sequence {next} of {to}: reading on with a new consumer",
                stream_name(n)
            );
            break;
        }
    }
}

/// Renews one shard's lease in the background. When the lease is lost — taken over, or not
/// renewed before its deadline — the shard's journal fails: the owner stops writing.
struct Renewer {
    state: Arc<RenewState>,
}

struct RenewState {
    stop: tokio::sync::Notify,
    stopped: AtomicBool,
    paused: AtomicBool,
    lost: parking_lot::Mutex<Option<String>>,
    journal: parking_lot::Mutex<Option<Arc<journal::Shared>>>,
    held: parking_lot::Mutex<lease::Held>,
    done: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Renewer {
    fn start(cluster: &Cluster, n: u32, held: lease::Held) -> Renewer {
        let state = Arc::new(RenewState {
            stop: tokio::sync::Notify::new(),
            stopped: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            lost: parking_lot::Mutex::new(None),
            journal: parking_lot::Mutex::new(None),
            held: parking_lot::Mutex::new(held),
            done: parking_lot::Mutex::new(None),
        });
        let st = state.clone();
        let kv = cluster.inner.leases.clone();
        let cfg = cluster.inner.config.clone();
        let task = cluster.inner.handle.spawn(async move {
            loop {
                tokio::select! {
                    _ = st.stop.notified() => return,
                    _ = tokio::time::sleep(cfg.renew_every) => {}
                }
                if st.stopped.load(Ordering::Acquire) {
                    return;
                }
                if st.paused.load(Ordering::Acquire) {
                    continue;
                }
                let mut held = st.held.lock().clone();
                let outcome = lease::renew(&kv, n, &cfg.node_id, &mut held, cfg.lease_ttl).await;
                let why = match outcome {
                    Ok(()) => {
                        *st.held.lock() = held;
                        continue;
                    }
                    Err(lease::RenewError::Lost(why)) => why,
                    // The bucket did not answer (its stream may be electing a leader): keep
                    // trying. Past the deadline another node may take the lease — then the
                    // next renewal finds it taken, and any append of ours is refused by the
                    // stream — so writing on meanwhile is safe; `Shard::lease_valid` tells
                    // readers whether the deadline holds.
                    Err(lease::RenewError::Nats(_)) => continue,
                };
                st.lose(why);
                return;
            }
        });
        *state.done.lock() = Some(task);
        Renewer { state }
    }

    fn attach(&self, journal: Arc<journal::Shared>) {
        *self.state.journal.lock() = Some(journal.clone());
        if let Some(why) = self.lost() {
            journal.fail(why);
        }
    }

    fn lost(&self) -> Option<String> {
        self.state.lost.lock().clone()
    }

    fn stop(&self) {
        self.state.stopped.store(true, Ordering::Release);
        self.state.stop.notify_one();
    }
}

impl RenewState {
    fn lose(&self, why: String) {
        let why = format!("lost the lease: {why}");
        *self.lost.lock() = Some(why.clone());
        if let Some(j) = &*self.journal.lock() {
            j.fail(why);
        }
    }
}

/// Takes a shard's snapshots in the background, every `snapshot_every` records: a thread per
/// shard, checking once a second, ending when the shard is closed or lost.
struct Snapshotter;

impl Snapshotter {
    fn start(
        cluster: &Cluster,
        n: u32,
        shared: Arc<journal::Shared>,
        last: Arc<parking_lot::Mutex<u64>>,
    ) {
        let weak = Arc::downgrade(&cluster.inner);
        let every = cluster.inner.config.snapshot_every;
        let _ = std::thread::Builder::new()
            .name(format!("imstore-snap-{n}"))
            .spawn(move || {
                while shared.failed().is_none() {
                    std::thread::sleep(Duration::from_secs(1));
                    if shared.done_seq() < *last.lock() + every {
                        continue;
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    let cluster = Cluster { inner };
                    let mut last = last.lock();
                    // A failure (NATS unreachable, say) is tried again at the next check.
                    if let Ok(cut) = cluster.snapshot_shard(n, &shared) {
                        *last = cut;
                    }
                }
            });
    }
}

/// Shard `n`, opened by this node as its owner: a [`Store`] whose journal is the shard's
/// stream. Dropping it (or [`close`](Shard::close)) stops writing, waits for what was
/// appended, and gives the lease up.
pub struct Shard {
    cluster: Cluster,
    n: u32,
    epoch: u64,
    store: Store,
    shared: Arc<journal::Shared>,
    renewer: Renewer,
    /// Closed or abandoned: nothing left to do on drop.
    abandoned: AtomicBool,
    /// The cut of the newest snapshot; held while one is taken.
    snapshots: Arc<parking_lot::Mutex<u64>>,
}

impl fmt::Debug for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shard")
            .field("n", &self.n)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Shard {
    /// The shard's store: every operation of the library, journaled in the shard's stream.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn number(&self) -> u32 {
        self.n
    }

    /// This owner's epoch (the lease's, raised at every takeover).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The stream sequence of the last record JetStream acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.shared.done_seq()
    }

    /// How many records of a stale owner this owner found after its marker and stepped over
    /// (see `cluster/journal.rs`).
    pub fn zombies_stepped_over(&self) -> u64 {
        self.shared.zombies.load(Ordering::Relaxed)
    }

    /// Whether this node still owns the shard: `false` once its lease was lost or an append
    /// was refused (then every write answers 91000, and the shard must be closed).
    pub fn is_owner(&self) -> bool {
        self.shared.failed().is_none()
    }

    /// Whether the lease's deadline (as of its last renewal) has not passed: until then no
    /// other node can have taken the shard, so what this store shows is current.
    pub fn lease_valid(&self) -> bool {
        self.is_owner() && lease::now_ms() < self.renewer.state.held.lock().expires_ms
    }

    /// Why this node no longer owns the shard.
    pub fn lost(&self) -> Option<String> {
        self.shared.failed()
    }

    /// Imports into this shard's store each of `users` that the cluster's accounts bucket has
    /// and the shard does not yet: call it before an operation that names them. An account
    /// that is in neither stays absent, so the operation answers its usual error code.
    pub fn ensure_accounts(&self, users: &[&str]) -> crate::Result<()> {
        for user in users {
            if !self.store.account_exists(user)? && self.cluster.account_exists(user)? {
                self.store.import_account(user)?;
            }
        }
        Ok(())
    }

    /// Snapshots the shard now (see `ClusterConfig::snapshot_every`): the object store gets
    /// the state up to the last acknowledged record, and the stream keeps only what follows.
    /// Returns the snapshot's cut, its stream sequence.
    pub fn snapshot(&self) -> Result<u64, ClusterError> {
        let mut last = self.snapshots.lock();
        let cut = self.cluster.snapshot_shard(self.n, &self.shared)?;
        *last = cut;
        Ok(cut)
    }

    /// The cut of the newest snapshot this shard was opened from or has taken (0: none).
    pub fn last_snapshot(&self) -> u64 {
        *self.snapshots.lock()
    }

    /// Stops writing, waits until everything appended is acknowledged, and releases the
    /// lease, so that another node can take the shard at once.
    pub fn close(self) -> Result<(), ClusterError> {
        self.close_inner()
    }

    /// [`close`](Shard::close) through a shared reference (a server that shares the shard
    /// among its tasks); closing twice does nothing more.
    pub fn close_shared(&self) -> Result<(), ClusterError> {
        self.close_inner()
    }

    fn close_inner(&self) -> Result<(), ClusterError> {
        if self.abandoned.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let flushed = self.store.flush();
        self.renewer.stop();
        self.shared.fail("the shard was closed".into());
        // A renewal in flight must not land after the release (it would renew the lease).
        if let Some(task) = self.renewer.state.done.lock().take() {
            let within = self.cluster.config().publish_retry;
            let _ = self
                .cluster
                .block(async move { tokio::time::timeout(within, task).await });
        }
        if self.renewer.lost().is_none() {
            let kv = self.cluster.inner.leases.clone();
            let (node, n) = (self.cluster.node_id().to_owned(), self.n);
            let held = self.renewer.state.held.lock().clone();
            let within = self.cluster.config().publish_retry;
            // The bucket may be electing a leader: try for as long as an append would. A lease
            // someone else has taken meanwhile is not ours to release.
            let released = self.cluster.block(async move {
                with_retry(within, || {
                    let (kv, node, mut held) = (&kv, &node, held.clone());
                    async move {
                        match lease::release(kv, n, node, &mut held).await {
                            Ok(()) | Err(lease::RenewError::Lost(_)) => Ok(()),
                            Err(lease::RenewError::Nats(e)) => Err(ClusterError::Nats(e)),
                        }
                    }
                })
                .await
            });
            released?;
        }
        flushed.map_err(|e| ClusterError::Nats(e.to_string()))
    }

    /// Stops renewing the lease and writing, as if this node had died: nothing more is
    /// published and the lease is not released, so it expires on its own. For tests and chaos
    /// drills.
    #[doc(hidden)]
    pub fn abandon(self) {
        self.abandoned.store(true, Ordering::Release);
        self.renewer.stop();
        self.shared.fail("abandoned".into());
    }

    /// Stops renewing the lease but keeps writing, as an owner that stalled (a long pause, a
    /// partition from the lease bucket) would: another node may then take the shard over, and
    /// this one's next append must be refused. For tests.
    #[doc(hidden)]
    pub fn pause_lease_renewal(&self) {
        self.renewer.state.paused.store(true, Ordering::Release);
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}
