//! A shard's snapshots: objects in the bucket `imstore_snapshots`, named by their cut and
//! epoch, the newest named in `imstore_meta`; built from the previous snapshot and the
//! stream (never from the live store) and taken in the background every `snapshot_every`
//! records.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{kv, object_store};

use super::{Cluster, ClusterError, SNAPSHOT_BUCKET, journal, nats, stream_name};
use crate::journal::RecoveryReport;
use crate::store::Store;

/// The object holding shard `n`'s snapshot at `cut`: `shard.<n>.<cut, 20 digits>.<epoch>`,
/// the epoch being the highest owner epoch up to the cut (replay after it skips records of
/// lower epochs, and learns where that epoch's records are from the record at the cut, which
/// the purge keeps). A new snapshot is a new object, named the newest by compare-and-set (the
/// previous one is deleted after it), so that a stale owner's late upload of an older
/// snapshot can never replace a newer one.
fn snapshot_object(n: u32, cut: u64, epoch: u64) -> String {
    format!("shard.{n}.{cut:020}.{epoch}")
}

pub(super) fn snapshot_path(n: u32) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("nats:{SNAPSHOT_BUCKET}/shard.{n}"))
}

/// The key of `imstore_meta` naming shard `n`'s newest snapshot object. Listing the object
/// store instead can wait for ever on nats-server 2.9 while another node stores a snapshot
/// (the listing's pending count never reaches zero), so the newest is found by name only:
/// nothing here lists the object store.
fn snapshot_key(n: u32) -> String {
    format!("snap.{n}")
}

/// Shard `n`'s newest snapshot as [`snapshot_key`] names it: its cut, epoch and object name,
/// a look that reads no object.
async fn newest_snapshot_name(
    meta: &kv::Store,
    n: u32,
) -> Result<Option<(u64, u64, String)>, String> {
    let named = meta
        .get(snapshot_key(n))
        .await
        .map_err(|e| e.to_string())?
        .and_then(|v| String::from_utf8(v.to_vec()).ok());
    Ok(named.and_then(|name| parse_snapshot_name(n, &name).map(|(cut, epoch)| (cut, epoch, name))))
}

/// The newest snapshot of shard `n`: its cut, epoch and bytes, found through
/// [`snapshot_key`].
pub(super) async fn latest_snapshot(
    store: &object_store::ObjectStore,
    meta: &kv::Store,
    n: u32,
) -> Result<Option<(u64, u64, Vec<u8>)>, String> {
    let Some((cut, epoch, name)) = newest_snapshot_name(meta, n).await? else {
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

impl Cluster {
    /// Snapshots shard `n` up to the last acknowledged record into the object store, purges the
    /// stream below that record (which stays: the owner's next append expects it) and deletes
    /// older snapshots. Built from the previous snapshot and the stream, not from the live
    /// store, so writes go on meanwhile. Returns the cut.
    ///
    /// `epoch` is this node's lease epoch of the shard. The purge and the deletion wait for a
    /// look at the lease, after the new snapshot is named the newest: a new owner takes the
    /// lease before it reads which snapshot is the newest, and then replays the stream from
    /// that snapshot's cut. If the lease is still this node's at the look, any new owner
    /// takes it after, and so reads the name written before the look: it replays from the
    /// new cut, which the purge keeps. If the lease has moved (or cannot be read), a new owner
    /// may be replaying from the previous snapshot's cut right now: the stream is left whole,
    /// the previous snapshot is named the newest again and ours deleted (a new owner that read
    /// ours fails its open and tries again), and the call fails as not owned here.
    ///
    /// Should the purge or the deletion fail after the look, the owner keeps what is left to
    /// do (`Shared::unfinished`): its next try finishes it, even with nothing new to snapshot,
    /// and its next snapshot deletes those objects with its own predecessor. A failure leaves
    /// an erasure due (`journal/erasure.rs`) to be tried again later.
    pub(super) fn snapshot_shard(
        &self,
        n: u32,
        epoch: u64,
        shared: &journal::Shared,
    ) -> Result<u64, ClusterError> {
        if let Some(why) = shared.failed() {
            return Err(ClusterError::Nats(format!(
                "shard {n} is not owned here: {why}"
            )));
        }
        // One snapshot at a time per node: each holds a whole shard's state in memory while
        // it is built.
        let _one = self.inner.snapshotting.lock();
        // Timed from here, not while other shards' snapshots held the lock: an erasure's
        // next try waits as long as this one took.
        let started = std::time::Instant::now();
        let taken = self.snapshot_shard_locked(n, epoch, shared, started);
        if taken.is_err() {
            shared.erasure_retry_later(started);
        }
        taken
    }

    fn snapshot_shard_locked(
        &self,
        n: u32,
        epoch: u64,
        shared: &journal::Shared,
        started: std::time::Instant,
    ) -> Result<u64, ClusterError> {
        let not_owner =
            |why: String| ClusterError::Nats(format!("shard {n} is not owned here: {why}"));
        let (upto, cut) = shared.done();
        let (snaps, meta) = (self.inner.snapshots.clone(), self.inner.meta.clone());
        let within = self.inner.config.publish_retry;
        // Nothing since the newest snapshot (see below): known from its name alone, without
        // reading the object (a snapshot due for an erasure may ask again every 30 s).
        let m = meta.clone();
        let newest = self
            .block(async move {
                tokio::time::timeout(within, newest_snapshot_name(&m, n))
                    .await
                    .map_err(|_| {
                        format!("naming shard {n}'s newest snapshot: no answer within {within:?}")
                    })?
            })
            .map_err(ClusterError::Nats)?;
        if let Some((from, _, _)) = newest
            && from >= cut
        {
            if let Some(left) = shared.unfinished().filter(|(c, _)| *c == from) {
                self.finish_snapshot(n, epoch, left)?;
                shared.set_unfinished(None);
                shared.snapshot_complete(from, upto, started);
            } else {
                shared.nothing_new_since(from, upto, started);
            }
            return Ok(from);
        }
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
        let mut owners = super::journal::Owners::after(prev.as_ref().map_or(0, |(_, e, _)| *e));
        if from >= cut {
            // Named meanwhile (the look above saw an older name): as there.
            shared.nothing_new_since(from, upto, started);
            return Ok(from);
        }
        let bytes = Store::build_snapshot(&self.inner.config.store, cut, |recover| {
            if let Some((_, _, b)) = &prev {
                crate::journal::read_snapshot(b, recover)?;
            }
            let mut report = RecoveryReport::default();
            self.replay(n, from, cut, recover, &mut report, &mut owners)
                .map_err(|e| e.to_string())?;
            Ok(())
        })
        .map_err(|e| ClusterError::Nats(e.to_string()))?;
        if let Some(why) = shared.failed() {
            return Err(not_owner(why));
        }
        let (snaps, js, meta, leases) = (
            self.inner.snapshots.clone(),
            self.inner.js.clone(),
            self.inner.meta.clone(),
            self.inner.leases.clone(),
        );
        let node = self.inner.config.node_id.clone();
        #[cfg(feature = "fault-injection")]
        let inner = self.inner.clone();
        // What an earlier snapshot of this owner left undeleted is deleted with what this one
        // replaces; and it stays to do unless this one gets that far.
        let earlier = shared.unfinished();
        let unfinished = Arc::new(parking_lot::Mutex::new(earlier.clone()));
        let left = unfinished.clone();
        let outcome = self.block(async move {
            let name = snapshot_object(n, cut, owners.epoch);
            let late = |what: &str| nats(format!("{what}: no answer within {within:?}"));
            tokio::time::timeout(within, snaps.put(name.as_str(), &mut bytes.as_slice()))
                .await
                .map_err(|_| late(&format!("storing {name}")))?
                .map_err(|e| nats(format!("storing {name}: {e}")))?;
            // Name it the newest — unless a newer one is named already (a stale owner's late
            // snapshot never replaces a newer owner's): compare and set.
            let named = async {
                // What the name was when ours was last written: should that write have taken
                // effect with its answer lost, the next look finds ours named, and this is
                // what it replaced.
                let mut replaced = None;
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
                        if *named == name
                            && let (Some(e), Some(previous)) = (&entry, replaced)
                        {
                            return Ok::<_, ClusterError>((Some(e.revision), previous));
                        }
                        return Ok((None, Some(named.clone())));
                    }
                    let previous = current.map(|(_, name)| name);
                    replaced = Some(previous.clone());
                    let written = match &entry {
                        Some(e) => meta
                            .update(snapshot_key(n), name.clone().into(), e.revision)
                            .await
                            .map_err(|e| e.to_string()),
                        None => meta
                            .create(snapshot_key(n), name.clone().into())
                            .await
                            .map_err(|e| e.to_string()),
                    };
                    match written {
                        Ok(revision) => return Ok((Some(revision), previous)),
                        // Someone else wrote in between: look again.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            };
            let (named_at, previous) = tokio::time::timeout(within, named)
                .await
                .map_err(|_| late(&format!("naming {name} the newest snapshot")))??;
            let Some(named_at) = named_at else {
                // Ours is not needed (unless it is the very one named).
                if previous.as_deref() != Some(name.as_str()) {
                    let _ = tokio::time::timeout(within, snaps.delete(&name)).await;
                }
                return Ok((cut, false));
            };
            // Still this node's lease? (See the doc above: after the naming, before the purge.)
            if let Some(why) = lease_moved(&leases, n, &node, epoch, within).await {
                // Name the previous snapshot again (the stream it needs is whole), so that
                // neither it nor ours is left behind unnamed; ours goes. Should a newer one be
                // named meanwhile, the naming stays as it is.
                let restored = match &previous {
                    Some(p) => meta
                        .update(snapshot_key(n), p.clone().into(), named_at)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => meta
                        .delete_expect_revision(snapshot_key(n), Some(named_at))
                        .await
                        .map_err(|e| e.to_string()),
                };
                let outcome = match restored {
                    Ok(()) => {
                        let _ = tokio::time::timeout(within, snaps.delete(&name)).await;
                        format!("{name} is withdrawn")
                    }
                    Err(e) => format!(
                        "{name} stays named ({e}); the previous snapshot {previous:?} may be left \
                         in the object store"
                    ),
                };
                return Err(nats(format!(
                    "shard {n} is not owned here: {why}; {outcome}, the stream is not purged"
                )));
            }
            // Named, and still the owner's: should the purge or the delete fail, the next try
            // finishes them (`Shared::unfinished`), even with nothing new to snapshot.
            let mut doomed: Vec<String> = earlier.map(|(_, d)| d).unwrap_or_default();
            doomed.extend(previous.clone());
            *left.lock() = Some((cut, doomed.clone()));
            #[cfg(feature = "fault-injection")]
            if inner
                .fail_snapshot_purge
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                return Err(nats(format!("purging {} (injected)", stream_name(n))));
            }
            purge_and_delete(&js, &snaps, n, cut, &doomed, within).await?;
            *left.lock() = None;
            Ok((cut, true))
        });
        shared.set_unfinished(unfinished.lock().take());
        outcome.map(|(cut, replaced)| {
            // Named, the stream below it purged and the snapshot it replaces deleted: the
            // bodies erased up to the cut are gone from JetStream's stream and objects.
            if replaced {
                shared.snapshot_complete(cut, upto, started);
            } else {
                // A newer one is named: erasures wait for the next with something new.
                shared.erasure_retry_later(started);
            }
            cut
        })
    }

    /// The last steps of this owner's snapshot at `cut` that failed (`Shared::unfinished`):
    /// the lease look, the purge below it, the deletion of the snapshots it replaced. The
    /// purge and the deletions may run again, so a try that fails again is tried later.
    fn finish_snapshot(
        &self,
        n: u32,
        epoch: u64,
        (cut, doomed): (u64, Vec<String>),
    ) -> Result<(), ClusterError> {
        let (snaps, js, leases) = (
            self.inner.snapshots.clone(),
            self.inner.js.clone(),
            self.inner.leases.clone(),
        );
        let node = self.inner.config.node_id.clone();
        let within = self.inner.config.publish_retry;
        self.block(async move {
            if let Some(why) = lease_moved(&leases, n, &node, epoch, within).await {
                return Err(nats(format!(
                    "shard {n} is not owned here: {why}; the stream is not purged"
                )));
            }
            purge_and_delete(&js, &snaps, n, cut, &doomed, within).await
        })
    }
}

/// Whether shard `n`'s lease is still `node`'s at `epoch`: `None` if so, else why not.
async fn lease_moved(
    leases: &kv::Store,
    n: u32,
    node: &str,
    epoch: u64,
    within: Duration,
) -> Option<String> {
    match tokio::time::timeout(within, super::lease::read(leases, n)).await {
        Ok(Ok(Some((v, _)))) if v.node == node && v.epoch == epoch => None,
        Ok(Ok(Some((v, _)))) => Some(format!(
            "its lease is node {}'s at epoch {} (epoch {epoch} here)",
            v.node, v.epoch
        )),
        Ok(Ok(None)) => Some("its lease is nobody's".to_owned()),
        Ok(Err(e)) => Some(format!("its lease could not be read: {e}")),
        Err(_) => Some(format!("its lease was not read within {within:?}")),
    }
}

/// Purges shard `n`'s stream below `cut` and deletes `doomed`, the snapshots the one at `cut`
/// replaces, which hold the bodies of messages recalled since: the last steps of a snapshot.
/// Both may run again (an object already gone counts as deleted).
async fn purge_and_delete(
    js: &async_nats::jetstream::Context,
    snaps: &object_store::ObjectStore,
    n: u32,
    cut: u64,
    doomed: &[String],
    within: Duration,
) -> Result<(), ClusterError> {
    let late = |what: &str| nats(format!("{what}: no answer within {within:?}"));
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
    // Each is tried; a delete that fails is said (the object is named, for an operator to
    // remove, and the next try deletes it again).
    let mut failed = None;
    for old in doomed {
        let error = match tokio::time::timeout(within, snaps.delete(old)).await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) if e.kind() == object_store::DeleteErrorKind::NotFound => continue,
            Ok(Err(e)) => nats(format!("deleting the replaced snapshot {old}: {e}")),
            Err(_) => late(&format!("deleting the replaced snapshot {old}")),
        };
        failed.get_or_insert(error);
    }
    failed.map_or(Ok(()), Err)
}

/// Takes a shard's snapshots in the background, every `snapshot_every` records: a thread per
/// shard, checking once a second, ending when the shard is closed or lost.
pub(super) struct Snapshotter;

impl Snapshotter {
    pub(super) fn start(
        cluster: &Cluster,
        n: u32,
        epoch: u64,
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
                    let grown = every > 0 && shared.done_seq() >= *last.lock() + every;
                    if !grown && !shared.erasure_due_now() {
                        continue;
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    let cluster = Cluster { inner };
                    let mut last = last.lock();
                    // A failure (NATS unreachable, say) is tried again at the next check, or
                    // for an erasure a little later.
                    if let Ok(cut) = cluster.snapshot_shard(n, epoch, &shared) {
                        *last = cut;
                    }
                }
            });
    }
}
