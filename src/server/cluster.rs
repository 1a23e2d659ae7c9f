//! `imstore-server --cluster` (cargo feature `cluster`; SPEC §9): a node of a cluster on NATS
//! JetStream. Every node answers every REST call and device connection; the work runs on the
//! node that owns the conversation's shard.
//!
//! | module | owns |
//! |---|---|
//! | here | the node: which shards it owns (the balancer), its accounts directory, `run_until` |
//! | `owner` | a shard this node owns: answering calls for it, devices' subscriptions there |
//! | `rpc` | requests between nodes (`imstore.rpc.<shard>`), their retries |
//! | `front` | a REST call on any node: which shard(s) it concerns, forwarding, merging answers |
//! | `feed` | a device on any node: one merged, resumable stream over every shard |
//!
//! **Ownership.** Each node says it is alive every second (`node.<id>` in `imstore_meta`,
//! valid 3 s) and aims to own its share of the shards — `shards / live nodes`, one more for the
//! first `shards % live` nodes in name order, so that every shard has a node's share: each
//! second it opens free shards (lease absent or expired) while below its share, and closes
//! (releases) shards above it, so that a node that joins gets work and one that dies has its
//! shards taken within the lease (3 s) plus a round (1 s) plus the replay — well inside 10 s.
//! A shard this node lost (its journal was fenced, or its lease lapsed) is closed at once.
//!
//! **Serving.** The owner of shard `n` subscribes to `imstore.rpc.<n>` and answers calls as a
//! single node would — the same `Api`, a call answered once what it did or read is durable —
//! with one extra check first: its lease must still be valid ([`Shard::lease_valid`]). A
//! stalled owner whose lease may have been taken answers "ask again" instead of reading a
//! state that may be stale; a write it makes anyway is refused by the stream (fencing).
//!
//! **Webhooks** run where the shard is owned: the owner asks the before-send callback and
//! delivers its shard's after-callbacks from the shard's outbox. **Rate limits**: each node
//! admits `ceil(limit / live nodes)` calls per second per API, so the cluster as a whole
//! admits about the configured limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::Instrument;

use super::metrics::Metrics;
use super::webhook::Webhooks;
use crate::Store;
use crate::api::{Api, ApiConfig};
use crate::cluster::{Cluster, ClusterConfig, ClusterError};
use crate::error::Error;

pub(super) mod channels;
pub(super) mod feed;
pub(super) mod front;
mod owner;
pub(super) mod rpc;

use owner::{Devices, Owned, forget_idle, handle, serve};

use rpc::{Answer, Call};

pub use super::ClusterServerConfig;

/// How long a node counts as alive after its last heartbeat.
const HEARTBEAT_TTL: Duration = Duration::from_secs(3);
/// How often a node says it is alive and rebalances.
const ROUND: Duration = Duration::from_secs(1);
/// Published by a node that reconnected to NATS (its node id) or took shard `n` over
/// ([`TAKEOVER`] and `n`): requests in flight may have lost their answers (a dead owner never
/// answers), so pulls are sent again, and calls to that shard (to any, after a reconnect).
const RESEND: &str = "imstore.resend";
/// The start of a takeover's [`RESEND`] payload (a NUL no node id holds), then the shard.
const TAKEOVER: &str = "\0shard:";

/// The shard a [`RESEND`]'s payload says was taken over; `None` for anything else — a node
/// id, what an older version sends, a shard number past the cluster's (the counts are sized
/// by it: a payload must not make a node allocate) — which is read as a reconnection, and
/// concerns every call.
fn takeover_shard(payload: &[u8], shards: u32) -> Option<u32> {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|p| p.strip_prefix(TAKEOVER))
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|&n| n < shards)
}

/// The most shards whose takeovers [`Resend`] counts one by one (8 bytes each).
const COUNTED_SHARDS: u32 = 1 << 16;

/// The [`RESEND`]s heard: how many reconnections, and how many takeovers of each shard.
/// Counts, not the last one heard: a watch keeps only its latest value, and two RESENDs
/// heard in a row must not hide the first from a call waiting on its shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Resend {
    reconnections: u64,
    takeovers: std::sync::Arc<Vec<u64>>,
}

impl Resend {
    /// Counts a RESEND: of a reconnection, or of the takeover of `shard` (a shard of the
    /// cluster, [`takeover_shard`]: the counts grow to it; one past [`COUNTED_SHARDS`]
    /// counts as a reconnection, whoever calls).
    pub(super) fn heard(&mut self, shard: Option<u32>) {
        match shard.filter(|&n| n < COUNTED_SHARDS) {
            None => self.reconnections += 1,
            Some(n) => {
                let counts = std::sync::Arc::make_mut(&mut self.takeovers);
                let n = n as usize;
                if counts.len() <= n {
                    counts.resize(n + 1, 0);
                }
                counts[n] += 1;
            }
        }
    }

    /// What a call to shard `n` compares to learn whether it should be sent again: it
    /// changes with every reconnection and every takeover of shard `n`.
    pub fn mark(&self, n: u32) -> (u64, u64) {
        let takeovers = self.takeovers.get(n as usize).copied().unwrap_or(0);
        (self.reconnections, takeovers)
    }
}

/// A device session no node has pulled for this long is dropped by the owner.
const SESSION_IDLE: Duration = Duration::from_secs(60);

/// A node: its connection to the cluster and the shards it owns now.
pub(super) struct Node {
    cluster: Cluster,
    client: async_nats::Client,
    /// Authenticates and admits calls on this node (its store holds nothing but the admins).
    pub(super) front: Arc<Api>,
    owned: Mutex<HashMap<u32, Arc<Owned>>>,
    api_config: ApiConfig,
    rate_limit: Option<u32>,
    webhooks: Option<Arc<Webhooks>>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    sessions: AtomicU64,
    /// Bumped when this node or another reconnects to NATS, or a node takes a shard over:
    /// answers to requests in flight then may have been lost, and pulls (and calls to that
    /// shard) are sent again rather than left to time out.
    resend: watch::Sender<Resend>,
    /// The first administrator: the sender of a send without From_Account.
    pub(super) first_admin: String,
    /// How often each owned shard's expired history, inbox entries and idle devices are
    /// purged (`--purge-interval-secs`), as a single node purges its store.
    purge_interval: Duration,
}

impl Node {
    /// Connects to the cluster (blocking: call it from a blocking thread).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn connect(
        config: &ClusterServerConfig,
        store: crate::Config,
        api_config: ApiConfig,
        webhooks: Option<Arc<Webhooks>>,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
        purge_interval: Duration,
    ) -> Result<Arc<Node>, ClusterError> {
        let mut cfg = ClusterConfig::new(config.urls.clone(), config.node_id.clone());
        cfg.shards = config.shards;
        cfg.replicas = config.replicas;
        let first_admin = store
            .admins
            .first()
            .cloned()
            .unwrap_or_else(|| "administrator".into());
        let front_store = Store::in_memory(
            crate::Config::default()
                .with_admins(store.admins.clone())
                .with_clock(store.clock.clone()),
        )
        .map_err(|e| ClusterError::Config(e.to_string()))?;
        cfg.store = store;
        let cluster = Cluster::connect(cfg)?;
        let rate_limit = api_config.rate_limit;
        let front = Arc::new(Api::new(front_store, api_config.clone()));
        Ok(Arc::new(Node {
            client: cluster.client(),
            cluster,
            front,
            owned: Mutex::new(HashMap::new()),
            api_config: ApiConfig {
                rate_limit: None,
                ..api_config
            },
            rate_limit,
            webhooks,
            metrics,
            runtime,
            // Session ids differ across this node's restarts: a restarted node's sessions do
            // not pass for its earlier ones.
            sessions: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64),
            ),
            first_admin,
            resend: watch::channel(Resend::default()).0,
            purge_interval,
        }))
    }

    /// A receiver that changes whenever a node reconnected to NATS or took a shard over (see
    /// [`RESEND`]).
    pub(super) fn resends(&self) -> watch::Receiver<Resend> {
        self.resend.subscribe()
    }

    /// Tells every node when this one reconnects to NATS, and listens for the others.
    async fn watch_reconnections(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut mine = self.cluster.reconnections();
        let mut theirs = match self.client.subscribe(RESEND).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hear of other nodes' reconnections");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                changed = mine.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tracing::info!("reconnected to NATS; calls in flight are sent again");
                    let resend = self.client.publish(RESEND, self.cluster.node_id().to_owned().into());
                    let _ = tokio::time::timeout(rpc::PUBLISH_TIMEOUT, resend).await;
                    self.resend.send_modify(|r| r.heard(None));
                }
                heard = theirs.next() => {
                    let Some(heard) = heard else {
                        return;
                    };
                    let shard = takeover_shard(&heard.payload, self.shards());
                    self.resend.send_modify(|r| r.heard(shard));
                }
            }
        }
    }

    pub(super) fn shards(&self) -> u32 {
        self.cluster.config().shards
    }

    pub(super) fn shard_of(&self, a: &str, b: &str) -> u32 {
        self.cluster.shard_of(a, b)
    }

    pub(super) fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub(super) fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Sends `call` to shard `n`'s owner — run here, without a trip through NATS, when this
    /// node owns the shard — retrying as `rpc.rs` says.
    pub(super) async fn call(
        &self,
        n: u32,
        call: &Call,
        bytes: &[u8],
        timeout: Duration,
    ) -> Result<(Answer, bytes::Bytes), rpc::CallError> {
        let local = self.owned.lock().get(&n).cloned();
        if let Some(owned) = local {
            let stop = owned.stop.subscribe();
            // Boxed: only calls that run here carry the owner's (larger) future.
            let (answer, out) = Box::pin(handle(self, &owned, call.clone(), bytes, stop)).await;
            if !answer.retry {
                return Ok((answer, out.into()));
            }
        }
        rpc::call(&self.client, n, call, bytes, timeout, self.resends()).await
    }

    /// A new id for a device session on this node.
    pub(super) fn next_session(&self) -> u64 {
        self.sessions.fetch_add(1, Ordering::Relaxed)
    }

    /// The stores of the shards owned now.
    pub(super) fn stores(&self) -> Vec<crate::Store> {
        let owned = self.owned.lock();
        owned.values().map(|o| o.store.clone()).collect()
    }

    /// Shards owned now, sorted.
    pub(super) fn owned_shards(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.owned.lock().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Keeps this node's share of the shards until `stop`, then releases them all.
    pub(super) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // The first heartbeat, then one round's pause: nodes started together see each other
        // before taking shards, instead of one taking all and giving most back.
        let first = {
            let node = self.clone();
            tokio::task::spawn_blocking(move || node.cluster.heartbeat(HEARTBEAT_TTL)).await
        };
        if let Ok(Err(e)) = first {
            tracing::warn!(error = %e, "first heartbeat failed");
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(ROUND + ROUND / 2) => {}
        }
        while !*stop.borrow() {
            let node = self.clone();
            let started = Instant::now();
            let mut round = tokio::task::spawn_blocking(move || node.balance());
            // A round that opens shards (each a replay of seconds) can outlast a heartbeat's
            // lifetime: this node says it is alive meanwhile, or the others count it gone and
            // their shares and rate limits grow.
            loop {
                tokio::select! {
                    done = &mut round => {
                        if let Err(e) = done {
                            tracing::warn!(error = %e, "balancing failed");
                        }
                        break;
                    }
                    () = tokio::time::sleep(ROUND) => {
                        let node = self.clone();
                        let beat = tokio::task::spawn_blocking(move || {
                            node.cluster.keep_alive(HEARTBEAT_TTL)
                        });
                        if let Ok(Err(e)) = beat.await {
                            tracing::warn!(error = %e, "heartbeat failed");
                        }
                    }
                }
            }
            tokio::select! {
                _ = stop.changed() => break,
                () = tokio::time::sleep(ROUND.saturating_sub(started.elapsed())) => {}
            }
        }
        let node = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for n in node.owned_shards() {
                node.release(n);
            }
            if let Err(e) = node.cluster.leave() {
                tracing::warn!(error = %e, "could not say this node left");
            }
        })
        .await;
    }

    /// One round: heartbeat, drop lost shards, then open or release towards this node's share.
    fn balance(self: &Arc<Self>) {
        let alive = match self.cluster.heartbeat(HEARTBEAT_TTL) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                // Lost shards are still dropped below; nothing new is taken.
                Vec::new()
            }
        };
        let live = u32::try_from(alive.len()).unwrap_or(u32::MAX).max(1);
        // Without a heartbeat answer the count of nodes is unknown: the share stays as it was.
        if !alive.is_empty() {
            self.front
                .set_rate_limit(self.rate_limit.map(|r| r.div_ceil(live).max(1)));
        }
        let lost: Vec<u32> = self
            .owned
            .lock()
            .iter()
            .filter(|(_, o)| !o.is_owner())
            .map(|(n, _)| *n)
            .collect();
        for n in lost {
            tracing::warn!(shard = n, "lost the shard; closing it");
            self.release(n);
        }
        if alive.is_empty() {
            self.metrics.set_shards_owned(self.owned.lock().len());
            return;
        }
        let shards = self.shards();
        // This node's place among the live ones: the first `shards % live` get one more.
        let me = alive
            .iter()
            .position(|a| a == self.cluster.node_id())
            .unwrap_or(alive.len()) as u32;
        let share = (shards / live + u32::from(me < shards % live)) as usize;
        let owned = self.owned.lock().len();
        if owned > share {
            let mut mine = self.owned_shards();
            mine.reverse();
            for n in mine.into_iter().take(owned - share) {
                tracing::info!(
                    shard = n,
                    share,
                    "releasing a shard to a node that has fewer"
                );
                self.release(n);
            }
        } else if owned < share {
            // Start at a place of this node's own, so that nodes do not all race for shard 0.
            let start = me.min(live - 1) * shards / live;
            for i in 0..shards {
                if self.owned.lock().len() >= share {
                    break;
                }
                let n = (start + i) % shards;
                if self.owned.lock().contains_key(&n) {
                    continue;
                }
                match self.cluster.lease_holder(n) {
                    Ok(Some((_, _, left))) if !left.is_zero() => continue,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(shard = n, error = %e, "lease unreadable");
                        continue;
                    }
                }
                let started = Instant::now();
                match self.open(n) {
                    Ok(()) => tracing::info!(
                        shard = n,
                        millis = started.elapsed().as_millis() as u64,
                        "took the shard"
                    ),
                    Err(ClusterError::LeaseHeld { .. }) => {}
                    Err(e) => tracing::warn!(shard = n, error = %e, "could not open the shard"),
                }
            }
        }
        self.metrics.set_shards_owned(self.owned.lock().len());
    }

    /// Opens shard `n` and starts serving it (blocking).
    fn open(self: &Arc<Self>, n: u32) -> Result<(), ClusterError> {
        let shard = self.cluster.open_shard(n)?;
        let store = shard.store().clone();
        let api = Arc::new(Api::new(store.clone(), self.api_config.clone()));
        let subscribing = self.client.subscribe(rpc::subject(n));
        let subscriber = self
            .runtime
            .block_on(tokio::time::timeout(rpc::PUBLISH_TIMEOUT, subscribing))
            .map_err(|_| ClusterError::Nats(format!("subscribing to shard {n}'s calls: no room")))?
            .map_err(|e| ClusterError::Nats(format!("subscribing to shard {n}'s calls: {e}")))?;
        let (stop, stopped) = watch::channel(false);
        let owned = Arc::new(Owned {
            n,
            shard,
            store: store.clone(),
            api,
            devices: Mutex::new(Devices::default()),
            stop,
        });
        self.owned.lock().insert(n, owned.clone());
        self.runtime.spawn(serve(
            self.clone(),
            owned.clone(),
            subscriber,
            stopped.clone(),
        ));
        self.runtime
            .spawn(forget_idle(owned.clone(), stopped.clone()));
        let purge = super::purge_loop(store.clone(), self.purge_interval, stopped.clone());
        self.runtime
            .spawn(purge.instrument(tracing::debug_span!("shard", n)));
        if let Some(w) = &self.webhooks {
            let (w, metrics) = (w.clone(), self.metrics.clone());
            self.runtime
                .spawn(async move { w.dispatch(store, stopped, metrics).await });
        }
        // Pulls and calls waiting on the shard's previous owner (dead, or gone) are sent
        // again now.
        let resend = self.client.publish(RESEND, format!("{TAKEOVER}{n}").into());
        let _ = (self.runtime).block_on(tokio::time::timeout(rpc::PUBLISH_TIMEOUT, resend));
        Ok(())
    }

    /// Stops serving shard `n` and closes it, releasing its lease (blocking).
    fn release(&self, n: u32) {
        let Some(owned) = self.owned.lock().remove(&n) else {
            return;
        };
        let _ = owned.stop.send(true);
        let dropped = owned.devices.lock().clear();
        drop(dropped);
        if let Err(e) = owned.shard.close_shared() {
            tracing::warn!(shard = n, error = %e, "closing the shard");
        }
    }
}

/// The node's [`crate::api::Directory`]: the accounts bucket, and — to delete — the bucket
/// first (from then on no shard imports the account again; one that had looked just before
/// undoes its import, see `Shard::ensure_accounts`), then every shard.
pub(super) struct NodeDirectory<'a>(pub &'a Node);

impl crate::api::Directory for NodeDirectory<'_> {
    fn import(&self, user: &str) -> Result<(), Error> {
        self.0.cluster.import_account(user)
    }

    fn exists(&self, user: &str) -> Result<bool, Error> {
        self.0.cluster.account_exists(user)
    }

    /// The bucket first — from then on no shard imports the account again — then every
    /// shard. A delete cut off half way is finished by calling it again: the shards are
    /// cleared whether or not the bucket still had the account, and 70107 is answered only
    /// when nothing anywhere had it.
    fn delete(&self, user: &str) -> Result<(), Error> {
        let node = self.0;
        let in_bucket = node.cluster.account_exists(user)?;
        if in_bucket {
            node.cluster.delete_account(user)?;
        }
        let call = Call::DeleteAccount {
            user: user.to_owned(),
        };
        let answers = node.runtime.block_on(futures_util::future::join_all(
            (0..node.shards()).map(|n| node.call(n, &call, &[], rpc::REST_TIMEOUT)),
        ));
        let mut in_a_shard = false;
        for answer in answers {
            let (answer, bytes) = answer.map_err(rpc::CallError::into_error)?;
            match answer.code {
                0 => in_a_shard = true,
                70107 => {}
                _ => {
                    return Err(Error::Internal(format!(
                        "deleting the account in a shard: {}",
                        String::from_utf8_lossy(&bytes)
                    )));
                }
            }
        }
        if in_bucket || in_a_shard {
            Ok(())
        } else {
            Err(Error::AccountNotFound(user.to_owned()))
        }
    }
}

/// [`super::run_until`] for a node of a cluster: connects to NATS (answering 503 "starting"
/// meanwhile), then serves; shards are taken by the balancer as the node finds its share. At
/// shutdown it releases its shards (each one's appends acknowledged first) so that the other
/// nodes take them at once, and says it left.
pub(super) async fn run_until(
    config: super::ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use super::{App, conn, metrics as m};
    let cluster_config = config.cluster.clone().expect("a cluster node");
    let key = config.secret_key.clone().ok_or(
        "a cluster node needs the app's secret key (--secret-key or IMSTORE_SECRET_KEY): every node must verify the same UserSigs",
    )?;
    // Refused when empty (`--secret-key "$UNSET"`): anybody could sign for the administrator.
    let (key, _) = super::app_key(Some(&key), &config.data_dir)?;
    let webhooks = match &config.webhooks {
        Some(w) => Some(Arc::new(Webhooks::new(w.clone(), config.sdkappid)?)),
        None => None,
    };
    let metrics = m::Metrics::new();
    metrics.set_shards_owned(0);
    let (listener, addr, register, starting) = super::Starting::listen(config.listen).await?;
    let store_config = crate::Config::default()
        .with_admins(config.admins.clone())
        .with_client_recall_window_secs(config.client_recall_window_secs)
        .with_erase_within_secs(config.erase_within_secs)
        .with_journal_observer(Arc::new(m::JournalMetrics(metrics.clone())));
    let api_config = ApiConfig {
        sdkappid: config.sdkappid,
        secret_key: key,
        rate_limit: config.rate_limit,
        usersig_cache: config.usersig_cache,
    };
    let connecting = {
        let (cc, webhooks, metrics) = (cluster_config.clone(), webhooks.clone(), metrics.clone());
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let purge = config.purge_interval;
            Node::connect(
                &cc,
                store_config,
                api_config,
                webhooks,
                metrics,
                runtime,
                purge,
            )
        })
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let node = tokio::select! {
        connected = connecting => connected??,
        () = &mut shutdown => {
            starting.stop();
            return Ok(());
        }
    };
    starting.end().await;
    tracing::info!(node = %cluster_config.node_id, shards = cluster_config.shards, nats = %cluster_config.urls, "joined the cluster");
    println!("listening on http://{addr}");
    {
        use std::io::Write;
        std::io::stdout().flush()?;
    }
    ready(addr);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tasks, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let balancer = tokio::spawn(node.clone().run(stop_rx.clone()));
    tokio::spawn(node.clone().watch_reconnections(stop_rx.clone()));
    let app = App {
        api: node.front.clone(),
        body_limit: config.body_limit,
        shutdown: stop_rx.clone(),
        ws_ping: config.ws_ping,
        webhooks,
        metrics: metrics.clone(),
        register: register.clone(),
        node: Some(node.clone()),
    };
    let accept = tokio::spawn(conn::accept_loop(
        listener,
        super::router(app),
        register,
        stop_rx,
        tasks,
        config.unread_timeout,
    ));
    shutdown.await;
    let drain = config.drain.min(Duration::from_secs(2));
    tracing::info!(drain_ms = drain.as_millis() as u64, "shutting down");
    metrics.set_stopping();
    tokio::time::sleep(drain).await;
    let _ = stop_tx.send(true);
    let _ = accept.await;
    let _ = tokio::time::timeout(Duration::from_secs(3), all_done.recv()).await;
    if tokio::time::timeout(Duration::from_secs(10), balancer)
        .await
        .is_err()
    {
        tracing::warn!("releasing the shards took too long; their leases will expire");
    }
    tracing::info!("left the cluster");
    Ok(())
}
