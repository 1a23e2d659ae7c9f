//! A shard opened by this node as its owner ([`Shard`]), and the lease renewal that keeps
//! it owned: once the lease is lost the shard's journal fails and the owner stops writing.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::nats::with_retry;
use super::{Cluster, ClusterError, journal, lease};
use crate::store::Store;

/// Renews one shard's lease in the background. When the lease is lost — taken over, or not
/// renewed before its deadline — the shard's journal fails: the owner stops writing.
pub(super) struct Renewer {
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
    pub(super) fn start(cluster: &Cluster, n: u32, held: lease::Held) -> Renewer {
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

    /// The lease as last renewed (to give it up).
    pub(super) fn held(&self) -> lease::Held {
        self.state.held.lock().clone()
    }

    pub(super) fn attach(&self, journal: Arc<journal::Shared>) {
        *self.state.journal.lock() = Some(journal.clone());
        if let Some(why) = self.lost() {
            journal.fail(why);
        }
    }

    pub(super) fn lost(&self) -> Option<String> {
        self.state.lost.lock().clone()
    }

    /// `Err` with why once the lease is lost, or will run out by this node's clock within
    /// `margin`: for work that must not land once another node may hold the lease (a new
    /// owner's marker). Callable from any thread or task.
    pub(super) fn current(
        &self,
        margin: std::time::Duration,
    ) -> impl Fn() -> Result<(), String> + Send + 'static {
        let state = self.state.clone();
        move || {
            if let Some(why) = state.lost.lock().clone() {
                return Err(format!("lost the lease: {why}"));
            }
            let expires_ms = state.held.lock().expires_ms;
            let margin_ms = u64::try_from(margin.as_millis()).unwrap_or(u64::MAX);
            if lease::now_ms().saturating_add(margin_ms) >= expires_ms {
                return Err(format!("the lease runs out within {margin:?}"));
            }
            Ok(())
        }
    }

    pub(super) fn stop(&self) {
        self.state.stopped.store(true, Ordering::Release);
        self.state.stop.notify_one();
    }

    /// [`stop`](Renewer::stop), and waits (up to `publish_retry`) for a renewal in flight:
    /// one that landed after the lease's release would renew it, and it would look held for
    /// another `lease_ttl`.
    pub(super) fn stop_and_join(&self, cluster: &Cluster) {
        self.stop();
        if let Some(task) = self.state.done.lock().take() {
            let within = cluster.config().publish_retry;
            let _ = cluster.block(async move {
                tokio::time::timeout(within, task)
                    .await
                    .map_err(|e| e.to_string())
            });
        }
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

/// Shard `n`, opened by this node as its owner: a [`Store`] whose journal is the shard's
/// stream. Dropping it (or [`close`](Shard::close)) stops writing, waits for what was
/// appended, and gives the lease up.
pub struct Shard {
    pub(super) cluster: Cluster,
    pub(super) n: u32,
    pub(super) epoch: u64,
    pub(super) store: Store,
    pub(super) shared: Arc<journal::Shared>,
    pub(super) renewer: Renewer,
    /// Closed or abandoned: nothing left to do on drop.
    pub(super) abandoned: AtomicBool,
    /// The cut of the newest snapshot; held while one is taken.
    pub(super) snapshots: Arc<parking_lot::Mutex<u64>>,
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
    ///
    /// An `account_delete` clears the bucket, then every shard. One that falls between this
    /// look at the bucket and the import finds nothing to clear here, and the import would
    /// bring the account back in this shard alone; so the bucket is looked at again after
    /// the import, and an account gone from it by then is deleted here too. (The delete's
    /// clearing of the bucket comes before or after that second look: before, this undoes
    /// the import; after, the delete's own clearing of the shard follows the import.)
    pub fn ensure_accounts(&self, users: &[&str]) -> crate::Result<()> {
        for user in users {
            if !self.store.account_exists(user)? && self.cluster.account_exists(user)? {
                #[cfg(feature = "fault-injection")]
                {
                    let hook = self.cluster.inner.before_import.lock().take();
                    if let Some(f) = hook {
                        f();
                    }
                }
                self.store.import_account(user)?;
                if !self.cluster.account_exists(user)? {
                    match self.store.delete_account(user) {
                        Ok(()) | Err(crate::Error::AccountNotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// Snapshots the shard now (see `ClusterConfig::snapshot_every`): the object store gets
    /// the state up to the last acknowledged record, and the stream keeps only what follows.
    /// Returns the snapshot's cut, its stream sequence.
    pub fn snapshot(&self) -> Result<u64, ClusterError> {
        let mut last = self.snapshots.lock();
        let cut = self
            .cluster
            .snapshot_shard(self.n, self.epoch, &self.shared)?;
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
        self.shared.fail("the shard was closed".into());
        self.renewer.stop_and_join(&self.cluster);
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
