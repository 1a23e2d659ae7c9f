//! The checkpoint's side of the journal: switching to a new segment at a cut (`rotate`),
//! reading the state below a cut as it is on disk, writing a snapshot and deleting the files
//! it replaces; and making a segment file (also at the first open). Durability rules: a new
//! segment's header (format version 2) is written and fsynced, with its directory, before any
//! batch goes into it, so every batch in it starts with a marker (`recovery.rs` relies on it);
//! a snapshot is fsynced and renamed into place, and the directory fsynced, before anything it
//! replaces is deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::MutexGuard;

use super::format::{
    FILE_HEADER_LEN, SEGMENT_MAGIC, SNAPSHOT_MAGIC, file_header, list, segment_name, snapshot_name,
    sync_dir,
};
use super::recovery::{self, ReadMode};
use super::{FileJournal, OpenError, Recovered, RecoveryReport, failed_error, format};
use crate::error::Error;

impl FileJournal {
    /// Ends the current segment and starts a new one; returns the cut: the LSN of the new
    /// segment's first record. Every record below the cut is durable in finished segments.
    /// Appends go on meanwhile; only writers wait, as they would for any other write.
    pub fn rotate(&self) -> Result<u64, Error> {
        let sh = &*self.shared;
        let mut st = sh.state.lock();
        loop {
            if let Some(why) = &st.failed {
                return Err(failed_error(why));
            }
            if !st.leader {
                break;
            }
            sh.flushed.wait(&mut st);
        }
        st.leader = true;
        let spare = std::mem::take(&mut st.spare);
        let mut batch = std::mem::replace(&mut st.pending, spare);
        format::seal_batch(&mut batch);
        st.ends.clear();
        let cut = st.next_lsn;
        st.taken_lsn = cut;
        let (old, at) = (st.file.clone(), st.write_at);
        let end = at + batch.len() as u64;
        // The old segment's last records. The space reserved after them stays: appends made
        // while the lock is let go (here, and while the new segment is made) count on it — for
        // their place in this segment if the switch fails, and as room the disk has already
        // given until the new segment has theirs. The snapshot deletes this segment, zeros and
        // all (recovery reads zeros as a segment's end).
        let finished = MutexGuard::unlocked(&mut st, || {
            #[cfg(feature = "fault-injection")]
            sh.faults.hold_write.pass();
            old.write_all_at(&batch, at)?;
            old.sync_all()
        });
        if let Err(e) = finished {
            st.leader = false;
            let why = format!("{}: {e}", st.segment_path.display());
            sh.fail(&mut st, why.clone());
            return Err(Error::Internal(why));
        }
        st.write_at = end;
        st.unmarked_end |= !batch.is_empty();
        // What is pending now comes after the cut, which the snapshot about to be made covers:
        // the count toward the next checkpoint starts here. (Counted on from before, `reached`
        // would mark the next checkpoint due at once, and each would be followed by another;
        // a switch that keeps failing would be retried without pause.)
        st.bytes_since_snapshot = st.pending.len() as u64;
        sh.reached(&mut st, cut);
        let head = FILE_HEADER_LEN as u64;
        // A segment holding no record already starts at the cut (a rotation right after
        // another, or after opening): it goes on as the new one. Creating "the cut's segment"
        // would open this very file again — and a failure would then remove the live segment.
        let reused = end == head && st.segment_path == self.dir.join(segment_name(cut));
        let created = if reused {
            Ok((old, st.segment_path.clone()))
        } else {
            // Fault injection can make it fail after its file is open.
            let injected = || -> io::Result<()> {
                #[cfg(feature = "fault-injection")]
                if sh.faults.no_new_segment() {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                Ok(())
            };
            MutexGuard::unlocked(&mut st, || create_segment(&self.dir, cut, injected))
                .map(|(file, path)| (Arc::new(file), path))
        };
        // The records appended meanwhile need their room in the new segment before it takes
        // them: without it, a full disk would fail their write, and the journal with it —
        // though each was accepted with room reserved. Then the switch fails instead, and the
        // journal goes on in the old segment, where their room is.
        let created = match created {
            Ok((file, path)) => {
                let reserved = head + st.pending.len() as u64;
                let allocated = if reused {
                    st.allocated
                } else {
                    sh.reserve_ahead(&file, head, reserved)
                };
                if allocated >= reserved {
                    Ok((file, path, allocated))
                } else {
                    // Removed with the lock let go (appends go on, on the old segment).
                    drop(file);
                    MutexGuard::unlocked(&mut st, || remove_segment(&self.dir, &path));
                    Err(io::Error::from_raw_os_error(libc::ENOSPC))
                }
            }
            Err(e) => Err(e),
        };
        st.leader = false;
        let outcome = match created {
            Ok((file, path, allocated)) => {
                st.reserved = head + st.pending.len() as u64;
                st.allocated = allocated;
                st.file = file;
                st.segment_path = path;
                st.write_at = head;
                st.unmarked_end = false;
                st.bytes_since_snapshot = st.pending.len() as u64;
                Ok(cut)
            }
            // The journal goes on in the old segment; the checkpoint is tried again later.
            Err(e) => {
                st.reserved = end + st.pending.len() as u64;
                Err(Error::Internal(format!(
                    "starting a new journal segment in {}: {e}",
                    self.dir.display()
                )))
            }
        };
        sh.flushed.notify_all();
        if st.wanted > st.done_lsn {
            sh.work.notify_one();
        }
        outcome
    }

    /// Feeds `recover` the state below `cut` as it is on disk (the newest snapshot and the
    /// finished segments after it), changing nothing.
    pub fn replay_upto(
        &self,
        cut: u64,
        mut recover: impl FnMut(Recovered<'_>) -> Result<(), String>,
    ) -> Result<RecoveryReport, OpenError> {
        let listing = list(&self.dir)?;
        let mut report = RecoveryReport::default();
        recovery::read(&listing, ReadMode::Upto(cut), &mut report, &mut recover)?;
        Ok(report)
    }

    /// Writes a snapshot covering every record below `lsn`, durably, then deletes the segments
    /// and snapshots it replaces. Returns its path and size.
    pub fn write_snapshot(
        &self,
        lsn: u64,
        write: impl FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()>,
    ) -> Result<(PathBuf, u64), Error> {
        let fail = |e: io::Error| {
            Error::Internal(format!("writing a snapshot in {}: {e}", self.dir.display()))
        };
        let path = self.dir.join(snapshot_name(lsn));
        let tmp = self.dir.join(format!("{}.tmp", snapshot_name(lsn)));
        let written = (|| {
            let mut file = io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            file.write_all(&file_header(SNAPSHOT_MAGIC, lsn))?;
            // Start writeback every few MiB as the snapshot is written, so that its final
            // fsync has little left to do: a large snapshot flushed at once would queue the
            // journal's fsyncs behind it.
            let mut since_writeback = 0usize;
            let mut flushed_upto = 0u64;
            write(&mut |bytes| {
                file.write_all(bytes)?;
                since_writeback += bytes.len();
                if since_writeback >= WRITEBACK_EVERY {
                    file.flush()?;
                    let end = file.get_ref().metadata()?.len();
                    start_writeback(file.get_ref(), flushed_upto, end - flushed_upto);
                    flushed_upto = end;
                    since_writeback = 0;
                }
                Ok(())
            })?;
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            let size = file.metadata()?.len();
            fs::rename(&tmp, &path)?;
            sync_dir(&self.dir)?;
            Ok(size)
        })();
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(fail(e));
            }
        };
        // The snapshot is durable: what it replaces can go.
        let listing = list(&self.dir).map_err(|e| Error::Internal(e.to_string()))?;
        let current = self.shared.state.lock().segment_path.clone();
        for (seg_lsn, seg) in &listing.segments {
            if *seg_lsn < lsn && *seg != current {
                fs::remove_file(seg).map_err(fail)?;
            }
        }
        for (snap_lsn, snap) in &listing.snapshots {
            if *snap_lsn < lsn {
                fs::remove_file(snap).map_err(fail)?;
            }
        }
        sync_dir(&self.dir).map_err(fail)?;
        Ok((path, size))
    }
}

/// How much of a snapshot is written between requests to start writing it back.
const WRITEBACK_EVERY: usize = 8 << 20;

/// Asks the kernel to start writing `len` bytes at `offset` back to disk, without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only a hint: `sync_all` still makes it durable.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor this `File` owns; failure is harmless.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Creates the segment whose first record is `lsn`, a file that must not exist yet. On
/// failure (a full disk, say) the file is removed again, as far as that works: the journal
/// goes on in the segment before, and a file left behind starts inside its records (which
/// recovery recognises and removes — and a later rotation to the same `lsn`, here).
pub(super) fn create_segment(
    dir: &Path,
    lsn: u64,
    injected: impl Fn() -> io::Result<()>,
) -> io::Result<(File, PathBuf)> {
    let path = dir.join(segment_name(lsn));
    let create = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
    };
    let mut file = match create() {
        // Left behind by a failed rotation to the same cut (the segment before still holds
        // the journal's records, so this file holds none): made again.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(&path)?;
            create()?
        }
        other => other?,
    };
    let made = injected()
        .and_then(|()| file.write_all(&file_header(SEGMENT_MAGIC, lsn)))
        .and_then(|()| file.sync_all())
        .and_then(|()| sync_dir(dir));
    if let Err(e) = made {
        drop(file);
        remove_segment(dir, &path);
        return Err(e);
    }
    Ok((file, path))
}

/// Removes a segment a switch made and could not use, as far as that works: one left behind
/// starts inside the records of the segment before, which recovery recognises and removes.
fn remove_segment(dir: &Path, path: &Path) {
    if fs::remove_file(path).is_ok() {
        let _ = sync_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::SyncPolicy;

    /// A checkpoint's switch of segments starts the count toward the next one: the journal
    /// before the cut is the snapshot's. Before, the switch saw the count from before it still
    /// over the threshold and marked the next checkpoint due at once — every checkpoint was
    /// followed by another, rewriting the whole snapshot.
    #[test]
    fn a_switch_of_segments_does_not_make_the_next_checkpoint_due() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) =
            FileJournal::open(dir.path(), SyncPolicy::Group, false, 1 << 16, None, |_| {
                Ok(())
            })
            .unwrap();
        journal.set_snapshot_threshold(256);
        let mut ticket = 0;
        for _ in 0..20 {
            ticket = journal
                .append(|b| b.extend_from_slice(&[7; 20]), false)
                .unwrap();
        }
        journal.commit_to(ticket).unwrap();
        assert!(journal.wait_checkpoint_due(), "over the threshold: due");
        journal.rotate().unwrap();
        assert!(
            !journal.shared.state.lock().checkpoint_due,
            "due again right after the switch"
        );
        // Once as much again is written, it is due again.
        for _ in 0..20 {
            ticket = journal
                .append(|b| b.extend_from_slice(&[7; 20]), false)
                .unwrap();
        }
        journal.commit_to(ticket).unwrap();
        assert!(journal.shared.state.lock().checkpoint_due);
    }
}
