//! Opening a shard as its owner ([`Cluster::open_shard`]): take its lease (a new epoch), replay
//! its stream — or the newest snapshot and what follows it — through `apply`, skipping stale
//! owners' zombies, append an ownership marker wherever the stream ends, replay what came
//! before the marker, and renew the lease. Durability rule: nothing of the shard is served
//! until the marker is acknowledged by JetStream, so no earlier owner's append is
//! acknowledged or applied by anyone from then on (its pipelined records may still land, as
//! zombies, which replay skips).

use super::*;

impl Cluster {
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

        // Replay, then the marker, then what came before it.
        let mut shared = None;
        let mut replaced = false;
        let store = Store::open_with_journal(cfg.store.clone(), |recover| {
            let mut report = RecoveryReport::default();
            // The newest snapshot, then the stream after its cut.
            let mut applied = 0u64;
            let mut owners = journal::Owners::default();
            let (snaps, meta) = (self.inner.snapshots.clone(), self.inner.meta.clone());
            // Read again on a failure, three times at most, each read bounded: the object's
            // chunks come from a consumer on any replica, and one that lags ends the read
            // early (its digest then fails, never a short snapshot taken for whole).
            let within = cfg.publish_retry;
            let newest = self.block(async move {
                nats::tries(3, within, || latest_snapshot(&snaps, &meta, n))
                    .await
                    .map_err(|e| format!("reading shard {n}'s snapshot: {e}"))
            });
            if let Some((_, epoch, bytes)) = newest.map_err(open_nats)?
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
                owners = journal::Owners::after(epoch);
            }
            // Catch up with the stream first, so that what is left to replay once the marker
            // has fenced earlier owners out is short; then the marker, appended wherever the
            // stream ends by then (no expected sequence: an earlier owner still appending
            // cannot make it lose a race, round after round); then what came before it. The
            // stream before the marker cannot change any more: an earlier owner's next
            // append expects a sequence the marker took and is refused (or lands after the
            // marker as a zombie, which every replay skips and its owner never acknowledges).
            let stream_last = |applied: u64| {
                let js = self.inner.js.clone();
                let retry = cfg.publish_retry;
                let (first, last) = self
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
                Ok((first, last))
            };
            #[cfg(feature = "fault-injection")]
            {
                let hook = self.inner.before_replay.lock().take();
                if let Some(f) = hook {
                    f();
                }
            }
            let (first, last) = stream_last(applied)?;
            // Records below the snapshot's cut still in the stream: its owner stopped between
            // naming it and purging (or the purge failed). They may hold bodies erased before
            // the cut, which replay never sees: a snapshot is due (`journal/erasure.rs`).
            replaced = first > 0 && first < applied;
            if last > applied {
                applied = self.replay(n, applied, last, recover, &mut report, &mut owners)?;
            }
            if let Some(why) = renewer.lost() {
                return Err(open_nats(format!("lost the lease while opening: {why}")));
            }
            let (t, marker) = (target.clone(), marker(&cfg.node_id, held.epoch));
            // A third of the lease's life to spare: renewed every `renew_every`, it keeps
            // more unless renewals are failing.
            let current = renewer.current(cfg.lease_ttl / 3);
            let at = self
                .block(async move {
                    journal::append_anywhere(&t, &t.marker_id(), &marker, current).await
                })
                .map_err(open_nats)?;
            if at <= applied {
                return Err(open_nats(format!(
                    "the ownership marker got sequence {at}, within what was replayed (to {applied})"
                )));
            }
            if at - 1 > applied {
                self.replay(n, applied, at - 1, recover, &mut report, &mut owners)?;
            }
            // The lease makes epochs exclusive: a later owner's record before the marker
            // means this node lost the shard while opening.
            if owners.epoch > held.epoch {
                return Err(open_nats(format!(
                    "an owner of epoch {} appended before this node's marker (epoch {})",
                    owners.epoch, held.epoch
                )));
            }
            let sh = journal::Shared::new(n, at);
            shared = Some(sh.clone());
            self.inner
                .handle
                .spawn(journal::publisher(sh.clone(), target.clone()));
            Ok((
                Journal::Stream(StreamJournal::new(
                    sh,
                    format!("nats:{}", stream_name(n)),
                    replaced,
                )),
                report,
            ))
        })
        .map_err(|e| {
            // Give up what was taken: the publisher, the lease.
            if let Some(sh) = &shared {
                sh.fail("the shard could not be opened".into());
            }
            renewer.stop_and_join(self);
            let kv = self.inner.leases.clone();
            let node = cfg.node_id.clone();
            let mut held = renewer.held();
            let _ = self.block(async move {
                lease::release(&kv, n, &node, &mut held)
                    .await
                    .map_err(|_| String::from("the lease was not released"))
            });
            ClusterError::Open(e)
        })?;
        let shared = shared.expect("set by a successful open");
        let snapshots = Arc::new(parking_lot::Mutex::new(
            store.recovery_report().snapshot_lsn.unwrap_or(0),
        ));
        if cfg.snapshot_every > 0 || cfg.store.erase_within_secs > 0 {
            Snapshotter::start(self, n, held.epoch, shared.clone(), snapshots.clone());
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

    /// Feeds `recover` the operations of shard `n`'s stream after sequence `from` up to `to`
    /// (inclusive), in order, but those `owners` says no owner acknowledged (see
    /// [`journal::Owners`]); returns `to`. Right after a snapshot, where `owners` does not yet
    /// know the position of its epoch's next record, the record at `from` (the snapshot's
    /// last, which the purge keeps) is read too, to tell it.
    pub(super) fn replay(
        &self,
        n: u32,
        from: u64,
        to: u64,
        recover: &mut dyn FnMut(Recovered<'_>) -> Result<(), String>,
        report: &mut RecoveryReport,
        owners: &mut journal::Owners,
    ) -> Result<u64, OpenError> {
        let mut seed = from > 0 && !owners.knows_next();
        let (tx, rx) = mpsc::sync_channel::<Result<Record, String>>(1024);
        let inner = self.inner.clone();
        #[cfg(feature = "fault-injection")]
        let stall_after = self.inner.stall_replay_after.swap(0, Ordering::Relaxed);
        #[cfg(not(feature = "fault-injection"))]
        let stall_after = 0;
        let start = if seed { from - 1 } else { from };
        self.inner.handle.spawn(async move {
            if let Err(e) = read_stream(&inner, n, (start, to), stall_after, &tx).await {
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
            // The record at the cut: read only to learn where its epoch is (it was applied, or
            // is the snapshot's last). A stream without it reads on without.
            if seed && seq == from {
                let id = msg_id.unwrap_or_default();
                let marker = parse_record(&payload).is_ok_and(|(k, _)| k == journal::KIND_OWNER);
                owners.admit(seq, marker, &id).map_err(replay_err)?;
                seed = false;
                continue;
            }
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
            let marker = match k {
                kind::OP => false,
                journal::KIND_OWNER => true,
                other => return Err(replay_err(format!("unexpected record kind {other}"))),
            };
            let msg_id = msg_id.unwrap_or_default();
            if owners.admit(seq, marker, &msg_id).map_err(replay_err)? {
                recover(Recovered::Op(body)).map_err(replay_err)?;
                report.records_replayed += 1;
            }
            expect += 1;
        }
        Ok(to)
    }
}
