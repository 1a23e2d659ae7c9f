//! The commit protocol, on the file journal's shared state: group commit (one thread writes
//! and fsyncs for everyone waiting, as the sync policy demands), the committer thread (for
//! async waiters, and within a second for records nobody waits for), reserving disk space
//! ahead of writes, and failing the journal after an I/O error. The durability rules it
//! keeps are in `journal.rs`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use parking_lot::MutexGuard;

use super::format::{seal_batch, unsealed_marker};
use super::{Shared, State, SyncPolicy, failed_error};
use crate::error::Error;

impl Shared {
    pub(super) fn commit_locked(
        &self,
        st: &mut MutexGuard<'_, State>,
        target: u64,
    ) -> Result<(), Error> {
        let target = target.min(st.next_lsn);
        loop {
            if st.done_lsn >= target {
                return Ok(());
            }
            if let Some(why) = &st.failed {
                return Err(failed_error(why));
            }
            if st.leader {
                self.flushed.wait(st);
                continue;
            }
            self.write_out(st, target)?;
        }
    }

    /// Takes pending records — all of them, or under `Every` those up to `target` — writes them
    /// (and fsyncs unless the policy is `None`) with the lock released, so appends go on.
    pub(super) fn write_out(
        &self,
        st: &mut MutexGuard<'_, State>,
        target: u64,
    ) -> Result<(), Error> {
        st.leader = true;
        let count = match self.policy {
            SyncPolicy::Every => ((target - st.taken_lsn) as usize).min(st.ends.len()),
            SyncPolicy::Group | SyncPolicy::None => st.ends.len(),
        };
        let bytes = st.ends[count - 1];
        let mut batch = if count == st.ends.len() {
            let spare = std::mem::take(&mut st.spare);
            std::mem::replace(&mut st.pending, spare)
        } else {
            st.pending.drain(..bytes).collect()
        };
        seal_batch(&mut batch);
        st.ends.drain(..count);
        // What stays pending is the next batch: it starts with a marker of its own
        // (`kind::BATCH`), which moves its records and takes its place in the segment (the
        // space was reserved with them: `append`).
        let marker = if st.pending.is_empty() {
            0
        } else {
            let m = unsealed_marker();
            st.pending.splice(0..0, m.iter().copied());
            st.reserved += m.len() as u64;
            st.bytes_since_snapshot += m.len() as u64;
            m.len()
        };
        for e in &mut st.ends {
            *e = *e - bytes + marker;
        }
        let upto = st.taken_lsn + count as u64;
        st.taken_lsn = upto;
        let (file, at) = (st.file.clone(), st.write_at);
        let end = at + batch.len() as u64;
        // Keep reserved space ahead of the writes, off the appenders' path.
        let extend = (st.allocated < st.reserved + self.prealloc / 2).then_some(st.allocated);
        #[cfg(feature = "fault-injection")]
        let allocated = st.allocated;
        let fsync = self.policy != SyncPolicy::None;
        let result = MutexGuard::unlocked(st, || {
            let extended = extend.and_then(|from| {
                let len = self.prealloc;
                self.reserve(&file, from, len).ok().map(|()| from + len)
            });
            #[cfg(feature = "fault-injection")]
            self.faults.hold_write.pass();
            // A full disk fails a write past the space reserved.
            #[cfg(feature = "fault-injection")]
            if self.faults.no_space() && end > extended.unwrap_or(allocated) {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            file.write_all_at(&batch, at)?;
            #[cfg(feature = "fault-injection")]
            self.faults.hold_fsync.pass();
            let synced = fsync
                .then(|| {
                    let started = std::time::Instant::now();
                    file.sync_data().map(|()| started.elapsed())
                })
                .transpose()?;
            if let Some(observer) = &self.observer {
                observer.batch_written(count, batch.len(), synced);
            }
            Ok::<_, io::Error>(extended)
        });
        st.leader = false;
        if st.spare.capacity() < batch.capacity() {
            let mut batch = batch;
            batch.clear();
            st.spare = batch;
        }
        let outcome = match result {
            Ok(extended) => {
                if let Some(a) = extended {
                    st.allocated = st.allocated.max(a);
                }
                st.write_at = end;
                st.unmarked_end = true;
                self.reached(st, upto);
                Ok(())
            }
            Err(e) => {
                let why = format!("{}: {e}", st.segment_path.display());
                self.fail(st, why.clone());
                Err(Error::Internal(why))
            }
        };
        self.flushed.notify_all();
        // Wake the committer thread only when an async waiter wants more than is done: waking
        // it after every write would cost a context switch per operation.
        if st.wanted > st.done_lsn {
            self.work.notify_one();
        }
        outcome
    }

    /// Records that every record below `upto` is durable, wakes async waiters it satisfies, and
    /// marks a checkpoint due when enough journal has accumulated.
    pub(super) fn reached(&self, st: &mut State, upto: u64) {
        st.done_lsn = st.done_lsn.max(upto);
        let done = st.done_lsn;
        st.wakers.retain(|(t, w)| {
            let ready = *t <= done;
            if ready {
                w.wake_by_ref();
            }
            !ready
        });
        if st.bytes_since_snapshot >= st.snapshot_threshold && !st.checkpoint_due {
            st.checkpoint_due = true;
            self.due.notify_all();
        }
    }

    pub(super) fn fail(&self, st: &mut State, why: String) {
        st.failed = Some(why);
        for (_, w) in st.wakers.drain(..) {
            w.wake();
        }
        self.flushed.notify_all();
    }

    /// Reserves `len` bytes of disk space at `offset` of `file`.
    pub(super) fn reserve(&self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(feature = "fault-injection")]
        if self.faults.no_space() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on a file descriptor this `File` owns.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                0,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Reserves space after `reserved` for a segment whose records end there; returns how far
    /// the space is reserved. A file system that cannot reserve gets `u64::MAX` (no limit).
    pub(super) fn reserve_ahead(&self, file: &File, allocated: u64, reserved: u64) -> u64 {
        let len = reserved - allocated.min(reserved) + self.prealloc;
        let from = allocated.min(reserved);
        match self.reserve(file, from, len) {
            Ok(()) => from + len,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => u64::MAX,
            Err(_) => allocated,
        }
    }

    /// The committer thread: writes for async waiters, and within a second for records nobody
    /// waits for (device cursors), so an idle journal has nothing pending.
    pub(super) fn committer(&self) {
        let mut st = self.state.lock();
        let mut quiet = false;
        loop {
            if st.shutdown {
                return;
            }
            let behind = st.next_lsn > st.done_lsn;
            if behind && st.failed.is_none() && !st.leader && (st.wanted > st.done_lsn || quiet) {
                let target = st.next_lsn;
                let _ = self.commit_locked(&mut st, target);
                quiet = false;
                continue;
            }
            quiet = self
                .work
                .wait_for(&mut st, Duration::from_secs(1))
                .timed_out();
        }
    }
}
