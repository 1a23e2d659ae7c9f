//! The journal: the data directory's files, record framing, the commit protocol (sync policies
//! and group commit), snapshots on disk, and recovery. `docs/FORMAT.md` describes the format
//! this module writes; keep the two in step.
//!
//! Durability rules, relied on by `Store`:
//! - `append` is called with the operation's store locks held, so the journal's order of
//!   records agrees with the order in which conflicting operations changed memory.
//! - `commit` is called with no store lock held; it returns once every record appended before
//!   the call is on disk as the policy demands. Nothing is acknowledged before that.
//! - After a write or fsync error the journal is failed: every later append answers 91000,
//!   because memory may now be ahead of the disk and only a reopen can tell what survived.
//! - A snapshot is written to a temporary file, fsynced, renamed, and the directory fsynced;
//!   only then are the segments and snapshots it replaces deleted.

use std::cell::RefCell;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::codec::{MAX_PAYLOAD, PAYLOAD_VERSION};
use crate::error::Error;

/// When an acknowledged operation is on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every operation is written and fsynced on its own before it is acknowledged.
    Every,
    /// Concurrent operations share one write and one fsync; each is acknowledged only after
    /// the fsync that covers it. The default.
    #[default]
    Group,
    /// Operations are written to the operating system before they are acknowledged but never
    /// fsynced: they survive the process being killed, not the machine losing power (the last
    /// few seconds of acknowledged operations can then be lost).
    None,
}

const SEGMENT_MAGIC: &[u8; 8] = b"IMSTJRNL";
const SNAPSHOT_MAGIC: &[u8; 8] = b"IMSTSNAP";
const FORMAT_VERSION: u32 = 1;
const FILE_HEADER_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 12;
const LOCK_FILE: &str = "LOCK";

/// Record kinds (the frame's `kind` byte).
pub(crate) mod kind {
    pub const OP: u8 = 1;
    pub const SNAP_ACCOUNT: u8 = 2;
    pub const SNAP_CONVERSATION: u8 = 3;
    pub const SNAP_END: u8 = 4;
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
                "{} is corrupt at byte {offset}: {reason}; open with Config::repair to truncate it there",
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

// ----- framing -----

/// Appends one frame — header, then the payload `write` produces — to `buf`.
pub(crate) fn push_frame(buf: &mut Vec<u8>, kind: u8, write: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    write(buf);
    let len = u32::try_from(buf.len() - start - FRAME_HEADER_LEN).expect("payload under 4 GiB");
    let mut head = [0u8; FRAME_HEADER_LEN];
    head[0..4].copy_from_slice(&len.to_le_bytes());
    head[4] = kind;
    head[5] = PAYLOAD_VERSION;
    let head_crc = crc32c::crc32c(&head[0..6]) as u16;
    head[6..8].copy_from_slice(&head_crc.to_le_bytes());
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&head[4..6]),
        &buf[start + FRAME_HEADER_LEN..],
    );
    head[8..12].copy_from_slice(&crc.to_le_bytes());
    buf[start..start + FRAME_HEADER_LEN].copy_from_slice(&head);
}

pub(crate) struct Frame<'a> {
    pub kind: u8,
    pub payload: &'a [u8],
    pub offset: usize,
}

enum Bad {
    /// The bytes end inside the frame.
    Short,
    /// The frame is complete but wrong.
    Damaged(&'static str),
}

fn read_frame(bytes: &[u8], at: usize) -> Result<(Frame<'_>, usize), Bad> {
    let rest = &bytes[at..];
    let Some(head) = rest.first_chunk::<FRAME_HEADER_LEN>() else {
        return Err(Bad::Short);
    };
    let len = u32::from_le_bytes(head[0..4].try_into().unwrap()) as usize;
    let head_crc = u16::from_le_bytes([head[6], head[7]]);
    if crc32c::crc32c(&head[0..6]) as u16 != head_crc {
        return Err(Bad::Damaged("frame header checksum mismatch"));
    }
    if head[5] != PAYLOAD_VERSION {
        return Err(Bad::Damaged("unknown payload version"));
    }
    if len > MAX_PAYLOAD {
        return Err(Bad::Damaged("frame longer than the payload limit"));
    }
    let Some(payload) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Err(Bad::Short);
    };
    let crc = u32::from_le_bytes(head[8..12].try_into().unwrap());
    if crc32c::crc32c_append(crc32c::crc32c(&head[4..6]), payload) != crc {
        return Err(Bad::Damaged("record checksum mismatch"));
    }
    Ok((
        Frame {
            kind: head[4],
            payload,
            offset: at,
        },
        at + FRAME_HEADER_LEN + len,
    ))
}

/// Every whole frame from `start`, and where and why reading stopped early.
fn scan(bytes: &[u8], start: usize) -> (Vec<Frame<'_>>, Option<(usize, Bad)>) {
    let mut frames = Vec::new();
    let mut at = start;
    while at < bytes.len() {
        match read_frame(bytes, at) {
            Ok((frame, next)) => {
                frames.push(frame);
                at = next;
            }
            Err(bad) => return (frames, Some((at, bad))),
        }
    }
    (frames, None)
}

/// Whether a valid frame starts anywhere after `offset`: then the damage at `offset` is not a
/// torn tail but corruption with acknowledged records behind it.
fn valid_frame_after(bytes: &[u8], offset: usize) -> bool {
    (offset + 1..bytes.len().saturating_sub(FRAME_HEADER_LEN - 1))
        .any(|at| read_frame(bytes, at).is_ok())
}

fn file_header(magic: &[u8; 8], lsn: u64) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

fn parse_file_header(bytes: &[u8], magic: &[u8; 8]) -> Result<u64, &'static str> {
    let Some(h) = bytes.first_chunk::<FILE_HEADER_LEN>() else {
        return Err("shorter than its header");
    };
    if crc32c::crc32c(&h[0..20]) != u32::from_le_bytes(h[20..24].try_into().unwrap()) {
        return Err("file header checksum mismatch");
    }
    if &h[0..8] != magic {
        return Err("not an imstore file of this kind (bad magic)");
    }
    if u32::from_le_bytes(h[8..12].try_into().unwrap()) != FORMAT_VERSION {
        return Err("written by an unknown format version");
    }
    Ok(u64::from_le_bytes(h[12..20].try_into().unwrap()))
}

fn segment_name(lsn: u64) -> String {
    format!("journal-{lsn:020}.log")
}

fn snapshot_name(lsn: u64) -> String {
    format!("snapshot-{lsn:020}.snap")
}

fn parse_name(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The files of a data directory, by LSN.
struct Listing {
    segments: Vec<(u64, PathBuf)>,
    snapshots: Vec<(u64, PathBuf)>,
}

fn list(dir: &Path) -> Result<Listing, OpenError> {
    let mut l = Listing {
        segments: Vec::new(),
        snapshots: Vec::new(),
    };
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            // A snapshot that never finished; it was never renamed into place.
            fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
        } else if let Some(lsn) = parse_name(&name, "journal-", ".log") {
            l.segments.push((lsn, entry.path()));
        } else if let Some(lsn) = parse_name(&name, "snapshot-", ".snap") {
            l.snapshots.push((lsn, entry.path()));
        }
    }
    l.segments.sort();
    l.snapshots.sort();
    Ok(l)
}

/// What recovery hands the store, in order: snapshot records, then journal operations.
pub(crate) enum Recovered<'a> {
    Snapshot { kind: u8, payload: &'a [u8] },
    Op(&'a [u8]),
}

// ----- the journal -----

pub(crate) struct Journal {
    dir: PathBuf,
    policy: SyncPolicy,
    state: Mutex<State>,
    flushed: Condvar,
    /// Held (locked) for the journal's lifetime.
    _lock: File,
}

struct State {
    /// Frames appended but not yet handed to the OS.
    pending: Vec<u8>,
    spare: Vec<u8>,
    /// The LSN the next appended record gets.
    next_lsn: u64,
    /// Every record below this is written (and fsynced, unless the policy is `None`).
    done_lsn: u64,
    /// A thread is writing `pending` out; others wait for it.
    leader: bool,
    file: Arc<File>,
    segment_path: PathBuf,
    /// Journal bytes written since the last snapshot.
    bytes_since_snapshot: u64,
    failed: Option<String>,
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Journal {
    /// Opens (or creates) the data directory, feeds `recover` the newest valid snapshot's
    /// records and then every journal record after it, and leaves the journal ready to append.
    pub fn open(
        dir: &Path,
        policy: SyncPolicy,
        repair: bool,
        mut recover: impl FnMut(Recovered<'_>) -> Result<(), String>,
    ) -> Result<(Journal, RecoveryReport), OpenError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
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

        // The newest snapshot, validated whole before any of it is used.
        let mut start_lsn = 0;
        if let Some((lsn, path)) = listing.snapshots.last() {
            let bytes = fs::read(path).map_err(io_err(path))?;
            let corrupt = |offset: usize, reason: &str| OpenError::Corrupt {
                path: path.clone(),
                offset: offset as u64,
                reason: reason.to_owned(),
            };
            let header_lsn =
                parse_file_header(&bytes, SNAPSHOT_MAGIC).map_err(|r| corrupt(0, r))?;
            if header_lsn != *lsn {
                return Err(corrupt(0, "header LSN differs from the file name"));
            }
            let (frames, bad) = scan(&bytes, FILE_HEADER_LEN);
            if let Some((offset, _)) = bad {
                return Err(corrupt(offset, "damaged snapshot record"));
            }
            if frames.last().map(|f| f.kind) != Some(kind::SNAP_END) {
                return Err(corrupt(bytes.len(), "snapshot has no end record"));
            }
            for f in &frames {
                recover(Recovered::Snapshot {
                    kind: f.kind,
                    payload: f.payload,
                })
                .map_err(|reason| OpenError::Replay {
                    path: path.clone(),
                    offset: f.offset as u64,
                    reason,
                })?;
            }
            start_lsn = *lsn;
            report.snapshot_lsn = Some(*lsn);
        }

        // Segments from the one holding `start_lsn` on.
        let first = listing
            .segments
            .iter()
            .rposition(|(lsn, _)| *lsn <= start_lsn)
            .unwrap_or(0);
        let segments = listing.segments.get(first..).unwrap_or_default();
        let mut next_lsn = start_lsn;
        let mut current: Option<(PathBuf, u64)> = None; // (path, valid length)
        for (i, (seg_lsn, path)) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let bytes = fs::read(path).map_err(io_err(path))?;
            let corrupt = |offset: usize, reason: &str| OpenError::Corrupt {
                path: path.clone(),
                offset: offset as u64,
                reason: reason.to_owned(),
            };
            let header = parse_file_header(&bytes, SEGMENT_MAGIC);
            let header_lsn = match header {
                Ok(l) => l,
                // Created but its header never reached the disk: nothing was appended to it.
                Err(_) if last && bytes.len() < FILE_HEADER_LEN => {
                    fs::remove_file(path).map_err(io_err(path))?;
                    break;
                }
                Err(r) => return Err(corrupt(0, r)),
            };
            if header_lsn != *seg_lsn {
                return Err(corrupt(0, "header LSN differs from the file name"));
            }
            if *seg_lsn > next_lsn {
                return Err(corrupt(0, "records are missing before this segment"));
            }
            let (frames, bad) = scan(&bytes, FILE_HEADER_LEN);
            let mut valid_len = bytes.len();
            let mut stop_here = false;
            if let Some((offset, why)) = bad {
                let torn = last && !valid_frame_after(&bytes, offset);
                if torn {
                    report.truncated_tail =
                        Some((path.clone(), offset as u64, (bytes.len() - offset) as u64));
                } else if repair {
                    let reason = match why {
                        Bad::Short => "frame cut short",
                        Bad::Damaged(r) => r,
                    };
                    report.repaired = Some(format!(
                        "{} truncated at byte {offset} ({reason}); {} later segment(s) removed",
                        path.display(),
                        segments.len() - i - 1
                    ));
                    stop_here = true;
                } else {
                    let reason = match why {
                        Bad::Short => "a record is cut short before the end of the journal",
                        Bad::Damaged(r) => r,
                    };
                    return Err(corrupt(offset, reason));
                }
                valid_len = offset;
            }
            for (n, f) in frames.iter().enumerate() {
                let lsn = seg_lsn + n as u64;
                if lsn < start_lsn {
                    continue;
                }
                if f.kind != kind::OP {
                    return Err(corrupt(
                        f.offset,
                        "unexpected record kind in a journal segment",
                    ));
                }
                recover(Recovered::Op(f.payload)).map_err(|reason| OpenError::Replay {
                    path: path.clone(),
                    offset: f.offset as u64,
                    reason,
                })?;
                report.records_replayed += 1;
            }
            next_lsn = next_lsn.max(seg_lsn + frames.len() as u64);
            current = Some((path.clone(), valid_len as u64));
            if stop_here {
                for (_, later) in &segments[i + 1..] {
                    fs::remove_file(later).map_err(io_err(later))?;
                }
                break;
            }
        }

        let (file, segment_path) = match current {
            Some((path, valid_len)) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                if file.metadata().map_err(io_err(&path))?.len() != valid_len {
                    file.set_len(valid_len).map_err(io_err(&path))?;
                    file.sync_all().map_err(io_err(&path))?;
                }
                (file, path)
            }
            None => create_segment(dir, next_lsn).map_err(io_err(dir))?,
        };
        let mut file = file;
        use std::io::Seek;
        file.seek(io::SeekFrom::End(0))
            .map_err(io_err(&segment_path))?;
        let journal = Journal {
            dir: dir.to_owned(),
            policy,
            state: Mutex::new(State {
                pending: Vec::new(),
                spare: Vec::new(),
                next_lsn,
                done_lsn: next_lsn,
                leader: false,
                file: Arc::new(file),
                segment_path,
                bytes_since_snapshot: 0,
                failed: None,
            }),
            flushed: Condvar::new(),
            _lock: lock,
        };
        Ok((journal, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one operation record. Called with the operation's store locks held; does no
    /// I/O unless the policy is `Every`.
    pub fn append(&self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), Error> {
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            push_frame(scratch, kind::OP, encode);
            let mut st = self.state.lock();
            if let Some(why) = &st.failed {
                return Err(Error::Internal(format!(
                    "the journal failed earlier: {why}"
                )));
            }
            st.pending.extend_from_slice(scratch);
            st.next_lsn += 1;
            st.bytes_since_snapshot += scratch.len() as u64;
            if self.policy == SyncPolicy::Every {
                // Through the same leader protocol as `commit_to`: one writer at a time, so
                // records reach the file in LSN order and `done_lsn` never runs ahead of one.
                let target = st.next_lsn;
                self.commit_locked(&mut st, target)?;
            }
            Ok(())
        })
    }

    /// The LSN the next record will get: `commit_to` of this covers everything appended so far.
    pub fn appended(&self) -> u64 {
        self.state.lock().next_lsn
    }

    /// Whether every record below `target` is on disk as the policy demands.
    pub fn is_done(&self, target: u64) -> bool {
        self.state.lock().done_lsn >= target
    }

    /// Returns once every record appended before this call is on disk as the policy demands.
    pub fn commit(&self) -> Result<(), Error> {
        self.commit_to(self.appended())
    }

    /// Returns once every record below `target` is on disk as the policy demands. One caller
    /// at a time writes everything pending and fsyncs; the others wait for it, so concurrent
    /// writers share one fsync (group commit).
    pub fn commit_to(&self, target: u64) -> Result<(), Error> {
        let mut st = self.state.lock();
        self.commit_locked(&mut st, target)
    }

    fn commit_locked(&self, st: &mut MutexGuard<'_, State>, target: u64) -> Result<(), Error> {
        loop {
            if st.done_lsn >= target {
                return Ok(());
            }
            if let Some(why) = &st.failed {
                return Err(Error::Internal(format!(
                    "the journal cannot be written: {why}"
                )));
            }
            if st.leader {
                self.flushed.wait(st);
                continue;
            }
            self.write_out(st)?;
        }
    }

    /// Writes what is pending (and fsyncs unless the policy is `None`), releasing the lock
    /// while the I/O runs so that appends go on.
    fn write_out(&self, st: &mut MutexGuard<'_, State>) -> Result<(), Error> {
        st.leader = true;
        let spare = std::mem::take(&mut st.spare);
        let mut batch = std::mem::replace(&mut st.pending, spare);
        let upto = st.next_lsn;
        let file = st.file.clone();
        let fsync = self.policy != SyncPolicy::None;
        let result = MutexGuard::unlocked(st, || {
            (&*file).write_all(&batch)?;
            if fsync {
                file.sync_data()?;
            }
            Ok::<(), io::Error>(())
        });
        st.leader = false;
        batch.clear();
        st.spare = batch;
        let outcome = match result {
            Ok(()) => {
                st.done_lsn = st.done_lsn.max(upto);
                Ok(())
            }
            Err(e) => {
                let why = format!("{}: {e}", st.segment_path.display());
                st.failed = Some(why.clone());
                Err(Error::Internal(why))
            }
        };
        self.flushed.notify_all();
        outcome
    }

    /// Writes and fsyncs everything appended so far, whatever the policy.
    pub fn flush(&self) -> Result<(), Error> {
        self.commit()?;
        let st = self.state.lock();
        st.file
            .sync_all()
            .map_err(|e| Error::Internal(format!("{}: {e}", st.segment_path.display())))
    }

    pub fn bytes_since_snapshot(&self) -> u64 {
        self.state.lock().bytes_since_snapshot
    }

    /// Ends the current segment and starts a new one at the next LSN, which it returns: the
    /// cut a snapshot taken now covers. The caller holds the store's gate, so nothing is being
    /// appended.
    pub fn rotate(&self) -> Result<u64, Error> {
        self.flush()?;
        let mut st = self.state.lock();
        let lsn = st.next_lsn;
        let (file, path) = create_segment(&self.dir, lsn)
            .map_err(|e| Error::Internal(format!("new journal segment: {e}")))?;
        st.file = Arc::new(file);
        st.segment_path = path;
        st.bytes_since_snapshot = 0;
        Ok(lsn)
    }

    /// Writes a snapshot covering every record below `lsn`, durably, then deletes the segments
    /// and snapshots it replaces.
    pub fn write_snapshot(
        &self,
        lsn: u64,
        write: impl FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()>,
    ) -> Result<PathBuf, Error> {
        let fail = |e: io::Error| {
            Error::Internal(format!("writing a snapshot in {}: {e}", self.dir.display()))
        };
        let path = self.dir.join(snapshot_name(lsn));
        let tmp = self.dir.join(format!("{}.tmp", snapshot_name(lsn)));
        let mut file = io::BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(fail)?);
        file.write_all(&file_header(SNAPSHOT_MAGIC, lsn))
            .map_err(fail)?;
        write(&mut |bytes| file.write_all(bytes)).map_err(fail)?;
        let file = file.into_inner().map_err(|e| fail(e.into_error()))?;
        file.sync_all().map_err(fail)?;
        fs::rename(&tmp, &path).map_err(fail)?;
        sync_dir(&self.dir).map_err(fail)?;
        // The snapshot is durable: what it replaces can go.
        let listing = list(&self.dir).map_err(|e| Error::Internal(e.to_string()))?;
        let current = self.state.lock().segment_path.clone();
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
        Ok(path)
    }
}

fn create_segment(dir: &Path, lsn: u64) -> io::Result<(File, PathBuf)> {
    let path = dir.join(segment_name(lsn));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    file.write_all(&file_header(SEGMENT_MAGIC, lsn))?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok((file, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_flips_are_caught() {
        let mut buf = Vec::new();
        push_frame(&mut buf, kind::OP, |b| b.extend_from_slice(b"hello"));
        push_frame(&mut buf, kind::OP, |b| b.extend_from_slice(b"world"));
        let (frames, bad) = scan(&buf, 0);
        assert!(bad.is_none());
        assert_eq!(
            frames.iter().map(|f| f.payload).collect::<Vec<_>>(),
            vec![b"hello", b"world"]
        );
        for bit in 0..buf.len() * 8 {
            let mut flipped = buf.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let (frames, bad) = scan(&flipped, 0);
            assert!(
                bad.is_some() && frames.len() < 2,
                "flip of bit {bit} went unnoticed"
            );
        }
    }
}
