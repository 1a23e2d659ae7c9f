//! The journal: the data directory's files, the commit protocol (sync policies and group
//! commit), snapshots on disk, and recovery. `docs/FORMAT.md` describes the format this module
//! writes; keep the two in step. Here: opening, appending and committing (with `commit.rs`,
//! the committer thread); `checkpoint.rs` switches segments and writes snapshots;
//! `recovery.rs` reads a directory back; `format.rs` holds the bytes.
//!
//! Durability rules, relied on by `Store`:
//! - `append` is called with the operation's store locks held, before the operation changes
//!   memory, so the journal's order of records agrees with the order in which conflicting
//!   operations changed memory. It does no I/O except, rarely, reserving disk space, and when
//!   the disk is full it fails with nothing appended: the operation is refused before it has
//!   taken effect, and is never half-done.
//! - Disk space for a segment is reserved ahead of its writes (`fallocate`), so a write never
//!   meets a full disk. A full disk shows when reserving; when space comes back, the next
//!   reservation succeeds and operations are accepted again, without a restart.
//! - `commit_to` and `poll_durable` are called with no store lock held; they return once every
//!   record below the target is on disk as the policy demands. Readers wait for these too: the
//!   store shows nothing that is not durable (R6).
//! - After a write or fsync error (an I/O error, not a full disk) the journal is failed: every
//!   later append answers 91000, because memory may now be ahead of the disk and only a reopen
//!   can tell what survived.
//! - A segment is written in batches, one writer at a time (`State::leader`), and a batch is
//!   written only once the fsync of the one before it has returned; each starts with a marker
//!   frame (`kind::BATCH`, with the batch's length), and a clean close ends the segment with
//!   one. Recovery relies on that order to cut a torn last batch, and
//!   to refuse damage that has a later batch behind it (`recovery.rs`).
//! - A snapshot is written to a temporary file, fsynced, renamed, and the directory fsynced;
//!   only then are the segments and snapshots it replaces deleted.

use std::cell::RefCell;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::error::Error;

mod checkpoint;
mod commit;
pub(crate) mod erasure;
#[cfg(feature = "fault-injection")]
mod faults;
pub(crate) mod format;
mod recovery;
// The seam: `Journal` is the file journal below or, with feature `cluster`, a shard's
// JetStream stream (`crate::cluster`).
mod backend;
pub(crate) use backend::Journal;
#[cfg(feature = "cluster")]
pub(crate) use backend::parse_record;
#[cfg(any(feature = "cluster", test))]
pub(crate) use backend::{read_snapshot, snapshot_bytes};

#[cfg(feature = "fault-injection")]
pub use faults::{Faults, Gate};
use format::{BATCH_MARKER_LEN, FILE_HEADER_LEN, LOCK_FILE, batch_marker, list, unsealed_marker};
pub(crate) use format::{FRAME_HEADER_LEN, kind, push_frame, sync_dir};
use recovery::ReadMode;

/// When an acknowledged operation is on disk, and so when anyone may see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every commit writes and fsyncs the records up to its own: operations do not wait to
    /// share a write with later ones.
    Every,
    /// Concurrent operations share one write and one fsync: whoever commits writes everything
    /// appended so far. Each is acknowledged only after the fsync that covers it. The default.
    #[default]
    Group,
    /// Operations are written to the operating system before they are acknowledged (or seen)
    /// but never fsynced: they survive the process being killed, not the machine losing power
    /// (the last few seconds of acknowledged operations can then be lost; and since the
    /// operating system writes its pages back in any order, a later batch can reach the disk
    /// without an earlier one, which the open then refuses as damage until it is opened with
    /// `Config::repair`).
    None,
}

/// Why a data directory could not be opened.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// Another `Store` (in this or another process) has the directory open.
    Locked(PathBuf),
    /// A file could not be read or written.
    Io { path: PathBuf, source: io::Error },
    /// A file is damaged before its tail. Nothing was changed; `Config::repair` truncates the
    /// journal at this offset instead.
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A record passed its checksum but could not be applied: a bug, or files from another
    /// version.
    Replay {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The configuration is not usable (for example an invalid administrator name).
    Config(Error),
}

impl OpenError {
    /// The Tencent error code a request failing for this reason answers: 91000.
    pub fn code(&self) -> u32 {
        91000
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Locked(p) => write!(
                f,
                "{} is in use by another imstore Store (lock file {LOCK_FILE})",
                p.display()
            ),
            OpenError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            OpenError::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "{} is corrupt at byte {offset}: {reason}; open with Config::repair (imstore-server --repair) to cut it there, losing what follows",
                path.display()
            ),
            OpenError::Replay {
                path,
                offset,
                reason,
            } => {
                write!(
                    f,
                    "{} byte {offset}: record cannot be applied: {reason}",
                    path.display()
                )
            }
            OpenError::Config(e) => write!(f, "invalid configuration: {e}"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The snapshot recovery started from (its LSN: the first record it does not cover).
    pub snapshot_lsn: Option<u64>,
    /// Journal records applied after the snapshot.
    pub records_replayed: u64,
    /// A torn tail cut off the last segment: (file, offset, bytes removed).
    pub truncated_tail: Option<(PathBuf, u64, u64)>,
    /// What `Config::repair` removed, if it had to.
    pub repaired: Option<String>,
}

/// What recovery hands the store, in order: snapshot records, then journal operations.
pub(crate) enum Recovered<'a> {
    Snapshot { kind: u8, payload: &'a [u8] },
    Op(&'a [u8]),
}

/// How much disk space a segment reserves ahead of its writes, by default.
pub(crate) const DEFAULT_PREALLOC: u64 = 4 << 20;

// ----- the journal -----

/// The journal in a data directory (the only kind without feature `cluster`).
pub(crate) struct FileJournal {
    dir: PathBuf,
    shared: Arc<Shared>,
    committer: Option<JoinHandle<()>>,
    /// Held while a checkpoint rotates and writes a snapshot: one at a time.
    checkpointing: Mutex<()>,
    /// At open, the directory held files the newest snapshot replaces (a crash came between
    /// its writing and their deletion): they may hold erased bodies (`erasure.rs`).
    replaced_at_open: bool,
    /// Held (locked) for the journal's lifetime.
    _lock: File,
}

/// Told what the journal writes, batch by batch: what metrics are made of (the server's
/// `/metrics` is one). Called by the thread that wrote the batch, after its fsync, with no
/// journal or store lock held — but a writer waits for it, so keep it to a few atomic adds.
pub trait JournalObserver: Send + Sync {
    /// `records` records, `bytes` bytes, were written in one write; `fsync` is how long the
    /// fsync that made them durable took (`None` under [`SyncPolicy::None`]).
    fn batch_written(&self, records: usize, bytes: usize, fsync: Option<Duration>);
}

/// What the journal shares with its committer thread.
struct Shared {
    dir: PathBuf,
    policy: SyncPolicy,
    observer: Option<Arc<dyn JournalObserver>>,
    prealloc: u64,
    state: Mutex<State>,
    /// Signalled when `done_lsn` moves or the journal fails: threads waiting in `commit_to`.
    flushed: Condvar,
    /// Signalled when the committer thread may have work: an async waiter, or shutdown.
    work: Condvar,
    /// Signalled when a checkpoint is due, or at shutdown.
    due: Condvar,
    #[cfg(feature = "fault-injection")]
    faults: Faults,
}

struct State {
    /// Frames appended but not yet taken by a writer; the first has LSN `taken_lsn`.
    pending: Vec<u8>,
    /// Where each pending record ends in `pending`.
    ends: Vec<usize>,
    spare: Vec<u8>,
    /// The LSN the next appended record gets.
    next_lsn: u64,
    /// Records below this have been handed to a writer.
    taken_lsn: u64,
    /// Every record below this is written (and fsynced, unless the policy is `None`).
    done_lsn: u64,
    /// A thread is writing; others wait for it.
    leader: bool,
    file: Arc<File>,
    segment_path: PathBuf,
    /// Where the next batch goes in the current segment.
    write_at: u64,
    /// Where the last appended record ends in the current segment, written or not.
    reserved: u64,
    /// How far the current segment's disk space is reserved (`u64::MAX`: the file system
    /// cannot reserve, and a full disk then fails a write instead).
    allocated: u64,
    /// Journal bytes appended since the last snapshot's cut.
    bytes_since_snapshot: u64,
    /// The current segment's last batch is not followed by a marker: a clean close ends it
    /// with one (`Drop for FileJournal`). Set by every write, and at open unless the segment
    /// ends with a close's marker (or holds no record).
    unmarked_end: bool,
    snapshot_threshold: u64,
    checkpoint_due: bool,
    /// Whether, and when, a snapshot is due because a record since the last one erased a
    /// body (`erasure.rs`).
    erasure: erasure::Erasure,
    failed: Option<String>,
    /// Async waiters: (target, waker), woken once `done_lsn` reaches the target.
    wakers: Vec<(u64, Waker)>,
    /// The highest target an async waiter asked for: the committer thread writes up to it.
    wanted: u64,
    shutdown: bool,
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn failed_error(why: &str) -> Error {
    Error::Internal(format!("the journal cannot be written: {why}"))
}

impl FileJournal {
    /// Opens (or creates) the data directory, feeds `recover` the newest valid snapshot's
    /// records and then every journal record after it, and leaves the journal ready to append.
    pub fn open(
        dir: &Path,
        policy: SyncPolicy,
        repair: bool,
        prealloc: u64,
        observer: Option<Arc<dyn JournalObserver>>,
        mut recover: impl FnMut(Recovered<'_>) -> Result<(), String>,
    ) -> Result<(FileJournal, RecoveryReport), OpenError> {
        // The directories this open creates, deepest first: each is made durable in its
        // parent, or a power loss soon after could take the directory with every
        // acknowledged record in it.
        let mut created = Vec::new();
        let mut at = Some(dir);
        while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            created.push(d);
            at = d.parent();
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        for d in created {
            let parent = d
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            sync_dir(parent).map_err(io_err(parent))?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(dir.to_owned())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let listing = list(dir)?;
        let mut report = RecoveryReport::default();
        let end = recovery::read(
            &listing,
            ReadMode::Open { repair },
            &mut report,
            &mut recover,
        )?;
        // Older snapshots, and segments wholly below the newest snapshot's cut: left by a
        // crash before the checkpoint deleted them. The next checkpoint deletes them; they
        // may hold bodies erased since, so one is due (`Store::erasures_at_open`). (Deleting
        // them here would first need the newest snapshot made durable, which a checkpoint
        // does anyway.)
        // A snapshot's cut is where a segment starts (checkpoints rotate first), so a segment
        // that starts below it lies wholly below it: the checkpoint's own rule for deleting.
        let after = list(dir)?;
        let replaced_at_open = report.snapshot_lsn.is_some_and(|cut| {
            after.snapshots.iter().any(|(lsn, _)| *lsn < cut)
                || after.segments.iter().any(|(lsn, _)| *lsn < cut)
        });
        // Files recovery removed (a leftover or unwritten segment, those after a repair) stay
        // removed after a power loss.
        if after.segments.len() != listing.segments.len() {
            sync_dir(dir).map_err(io_err(dir))?;
        }

        let (file, segment_path, len, unmarked) = match end.current {
            Some(recovery::Current {
                path,
                valid_len,
                reseal,
                unmarked,
            }) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                // A batch the cut fell inside says how much of it is left.
                if let Some((at, left)) = reseal {
                    file.write_all_at(&batch_marker(left), at)
                        .map_err(io_err(&path))?;
                }
                // Cut a torn tail, and the reserved space after the last record: it is
                // reserved again below.
                if reseal.is_some() || file.metadata().map_err(io_err(&path))?.len() != valid_len {
                    file.set_len(valid_len).map_err(io_err(&path))?;
                }
                // Always: after a process crash the last records read may still be only in
                // the page cache (written, their fsync not yet returned). They are replayed
                // and about to be shown, so they must be durable first (R6).
                file.sync_all().map_err(io_err(&path))?;
                (file, path, valid_len, unmarked)
            }
            None => {
                let (file, path) = checkpoint::create_segment(dir, end.next_lsn, || Ok(()))
                    .map_err(io_err(dir))?;
                (file, path, FILE_HEADER_LEN as u64, false)
            }
        };
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            policy,
            observer,
            prealloc: prealloc.max(1 << 16),
            state: Mutex::new(State {
                pending: Vec::new(),
                ends: Vec::new(),
                spare: Vec::new(),
                next_lsn: end.next_lsn,
                taken_lsn: end.next_lsn,
                done_lsn: end.next_lsn,
                leader: false,
                file: Arc::new(file),
                segment_path,
                write_at: len,
                reserved: len,
                allocated: len,
                bytes_since_snapshot: 0,
                unmarked_end: unmarked,
                snapshot_threshold: u64::MAX,
                checkpoint_due: false,
                erasure: erasure::Erasure::default(),
                failed: None,
                wakers: Vec::new(),
                wanted: 0,
                shutdown: false,
            }),
            flushed: Condvar::new(),
            work: Condvar::new(),
            due: Condvar::new(),
            #[cfg(feature = "fault-injection")]
            faults: Faults::default(),
        });
        {
            // Reserve ahead now; if the disk is already full, the first append tries again.
            let mut st = shared.state.lock();
            let file = st.file.clone();
            st.allocated = shared.reserve_ahead(&file, len, len);
        }
        let committer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("imstore-commit".into())
                .spawn(move || shared.committer())
                .map_err(io_err(dir))?
        };
        let journal = FileJournal {
            dir: dir.to_owned(),
            shared,
            committer: Some(committer),
            checkpointing: Mutex::new(()),
            replaced_at_open,
            _lock: lock,
        };
        Ok((journal, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    #[cfg(feature = "fault-injection")]
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Appends one operation record and returns its ticket: the position `commit_to` must
    /// reach for it to be durable. Called with the operation's store locks held. Fails, with
    /// nothing appended, when the journal failed earlier or the disk is full. `erases`: the
    /// operation erases a body, which a snapshot must then take off the disk (`erasure.rs`).
    pub fn append(&self, encode: impl FnOnce(&mut Vec<u8>), erases: bool) -> Result<u64, Error> {
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            push_frame(scratch, kind::OP, encode);
            let sh = &*self.shared;
            let mut st = sh.state.lock();
            if let Some(why) = &st.failed {
                return Err(failed_error(why));
            }
            // The first record of a batch comes after the batch's marker (`kind::BATCH`).
            let marker: &[u8] = if st.pending.is_empty() {
                unsealed_marker()
            } else {
                &[]
            };
            let need = st.reserved + (marker.len() + scratch.len()) as u64;
            // Room, too, for a marker before each pending record: under `every` a write may
            // leave records pending, which then start a batch of their own (`write_out`).
            let room = need + (BATCH_MARKER_LEN * (st.ends.len() + 1)) as u64;
            if room > st.allocated {
                let from = st.allocated;
                let len = room - from + sh.prealloc;
                sh.reserve(&st.file, from, len).map_err(|e| {
                    Error::Internal(format!(
                        "no disk space for the journal in {} ({e}); the operation was not \
                         applied, retry when space is freed",
                        sh.dir.display()
                    ))
                })?;
                st.allocated = from + len;
            }
            st.pending.extend_from_slice(marker);
            st.pending.extend_from_slice(scratch);
            let end = st.pending.len();
            st.ends.push(end);
            st.reserved = need;
            st.next_lsn += 1;
            st.bytes_since_snapshot += (marker.len() + scratch.len()) as u64;
            let ticket = st.next_lsn;
            if erases && st.erasure.note(ticket) {
                sh.due.notify_all();
            }
            Ok(ticket)
        })
    }

    /// The record `ticket`, already appended, turned out to erase a body (a send that
    /// trimmed its conversation to retention).
    pub fn note_erased(&self, ticket: u64) {
        let mut st = self.shared.state.lock();
        if st.erasure.note(ticket) {
            self.shared.due.notify_all();
        }
    }

    /// How long after a record that erases a body a snapshot must take it off the disk
    /// (`None`: only the size threshold and `compact` write snapshots).
    pub fn set_erase_within(&self, within: Option<Duration>) {
        self.shared.state.lock().erasure.set_within(within);
        self.shared.due.notify_all();
    }

    /// A snapshot begun at `started` covers every record below `cut`: the erasures it
    /// covers are done.
    pub fn erasures_covered(&self, cut: u64, started: Instant) {
        self.shared.state.lock().erasure.covered(cut, started);
    }

    /// A checkpoint begun at `started` failed: one due for an erasure is tried again later,
    /// not at once.
    pub fn erasure_retry_later(&self, started: Instant) {
        self.shared.state.lock().erasure.retry_later(started);
    }

    /// Whether the directory held files the newest snapshot replaces when it was opened.
    pub fn replaced_at_open(&self) -> bool {
        self.replaced_at_open
    }

    /// When a snapshot is due for an erasure, if one is (for tests and metrics).
    pub fn erasure_due(&self) -> Option<Instant> {
        self.shared.state.lock().erasure.due()
    }

    /// The ticket of everything appended so far.
    pub fn appended(&self) -> u64 {
        self.shared.state.lock().next_lsn
    }

    /// Whether every record below `target` is on disk as the policy demands.
    pub fn is_done(&self, target: u64) -> bool {
        self.shared.state.lock().done_lsn >= target
    }

    /// Returns once every record below `target` is on disk as the policy demands. One caller at
    /// a time writes and fsyncs; the others wait for it, so concurrent writers share one fsync
    /// (group commit).
    pub fn commit_to(&self, target: u64) -> Result<(), Error> {
        let mut st = self.shared.state.lock();
        self.shared.commit_locked(&mut st, target)
    }

    /// The async form of `commit_to`: ready once every record below `target` is durable. The
    /// journal's committer thread does the writing, so no async worker blocks on the disk.
    pub fn poll_durable(&self, target: u64, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let sh = &*self.shared;
        let mut st = sh.state.lock();
        let target = target.min(st.next_lsn);
        if st.done_lsn >= target {
            return Poll::Ready(Ok(()));
        }
        if let Some(why) = &st.failed {
            return Poll::Ready(Err(failed_error(why)));
        }
        // The committer has stopped (the store is closing, `shutdown`): nobody would wake this
        // waiter. Written here, as `commit_to` would — on an async worker, but only while the
        // store closes.
        if st.shutdown {
            return Poll::Ready(sh.commit_locked(&mut st, target));
        }
        if !st
            .wakers
            .iter()
            .any(|(t, w)| *t == target && w.will_wake(cx.waker()))
        {
            st.wakers.push((target, cx.waker().clone()));
        }
        st.wanted = st.wanted.max(target);
        sh.work.notify_one();
        Poll::Pending
    }

    /// Writes and fsyncs everything appended so far, whatever the policy.
    pub fn flush(&self) -> Result<(), Error> {
        let mut st = self.shared.state.lock();
        let target = st.next_lsn;
        self.shared.commit_locked(&mut st, target)?;
        // A failed fsync fails the journal, as the committer's does: the kernel may have
        // dropped the pages it could not write, and only a reopen can tell what is on disk.
        st.file.sync_all().map_err(|e| {
            let why = format!("{}: {e}", st.segment_path.display());
            self.shared.fail(&mut st, why.clone());
            Error::Internal(why)
        })
    }

    /// Makes a checkpoint due now, whatever the journal's size: the store's replay has grown
    /// costly in a way the size does not show (`Store::raise_seq_floor`).
    pub fn checkpoint_soon(&self) {
        let mut st = self.shared.state.lock();
        st.checkpoint_due = true;
        self.shared.due.notify_all();
    }

    /// Sets how much journal makes a checkpoint due.
    pub fn set_snapshot_threshold(&self, bytes: u64) {
        self.shared.state.lock().snapshot_threshold = bytes;
    }

    /// Blocks until a checkpoint is due (`true`) or the journal shuts down (`false`): enough
    /// journal has accumulated, or an erasure's deadline has come (`erasure.rs`; it stays due
    /// until a snapshot covers it). A checkpoint already due for the journal's size when the
    /// journal shuts down is still run: a clean close leaves the journal bounded.
    pub fn wait_checkpoint_due(&self) -> bool {
        let sh = &*self.shared;
        let mut st = sh.state.lock();
        loop {
            if st.checkpoint_due {
                st.checkpoint_due = false;
                return true;
            }
            // Not at shutdown: the next open finds the erasing records in the journal and
            // makes their snapshot due again.
            if st.shutdown {
                return false;
            }
            let erase = st.erasure.due();
            if erase.is_some_and(|at| at <= Instant::now()) {
                return true;
            }
            match erase {
                Some(at) => {
                    sh.due.wait_until(&mut st, at);
                }
                None => sh.due.wait(&mut st),
            }
        }
    }

    /// Held while a checkpoint runs.
    pub fn checkpoint_lock(&self) -> MutexGuard<'_, ()> {
        self.checkpointing.lock()
    }

    /// Stops the committer thread and wakes a waiting checkpointer; appends still work, and
    /// `commit_to` still writes on the caller's thread.
    pub fn shutdown(&self) {
        let sh = &*self.shared;
        let mut st = sh.state.lock();
        st.shutdown = true;
        // Async waiters the committer would have woken poll again, and write for themselves
        // (`poll_durable`): it may stop before it gets to them.
        for (_, w) in st.wakers.drain(..) {
            w.wake();
        }
        drop(st);
        sh.work.notify_all();
        sh.due.notify_all();
    }
}

impl Drop for FileJournal {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
        // A clean close ends the segment with the marker of an empty batch: it says that
        // the batch before it was fsynced (acknowledged), so recovery never takes damage in
        // it for a torn write. And it gives back the space reserved ahead: the segment ends
        // there. (After a crash the zeros stay; recovery reads them as the end.) Best effort:
        // a marker that does not reach the disk whole is a torn tail of nothing.
        let st = self.shared.state.lock();
        if st.failed.is_none() && st.pending.is_empty() {
            let mut end = st.write_at;
            let marked = st.unmarked_end && st.file.write_all_at(&batch_marker(0), end).is_ok();
            if marked {
                end += BATCH_MARKER_LEN as u64;
            }
            let trimmed = st.allocated > end && st.allocated != u64::MAX;
            if trimmed {
                let _ = st.file.set_len(end);
            }
            if marked || trimmed {
                let _ = st.file.sync_all();
            }
        }
    }
}
