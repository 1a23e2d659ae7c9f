//! Which durability backend a store's journal is: the data directory's files
//! ([`FileJournal`]) or, with feature `cluster`, a shard's JetStream stream
//! ([`crate::cluster::StreamJournal`]). `Store` sees one type with one set of methods —
//! append, commit, poll for durability — so the visibility tickets of R6 and the single `apply`
//! work the same on both.

use std::io;
use std::path::{Path, PathBuf};
use std::task::{Context, Poll};

use parking_lot::MutexGuard;

#[cfg(feature = "fault-injection")]
use super::Faults;
use std::sync::Arc;

use super::{FileJournal, JournalObserver, OpenError, Recovered, RecoveryReport, SyncPolicy};
use crate::error::Error;

pub(crate) enum Journal {
    File(FileJournal),
    #[cfg(feature = "cluster")]
    Stream(crate::cluster::StreamJournal),
}

#[cfg(feature = "cluster")]
fn no_snapshots() -> Error {
    Error::Internal("a cluster shard takes no local snapshots".into())
}

impl Journal {
    /// Opens the file journal in `dir` (see [`FileJournal::open`]).
    pub fn open(
        dir: &Path,
        policy: SyncPolicy,
        repair: bool,
        prealloc: u64,
        observer: Option<Arc<dyn JournalObserver>>,
        recover: impl FnMut(Recovered<'_>) -> Result<(), String>,
    ) -> Result<(Journal, RecoveryReport), OpenError> {
        FileJournal::open(dir, policy, repair, prealloc, observer, recover)
            .map(|(j, report)| (Journal::File(j), report))
    }

    pub fn dir(&self) -> &Path {
        match self {
            Journal::File(j) => j.dir(),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.name(),
        }
    }

    #[cfg(feature = "fault-injection")]
    pub fn faults(&self) -> &Faults {
        match self {
            Journal::File(j) => j.faults(),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.faults(),
        }
    }

    #[inline]
    pub fn append(&self, encode: impl FnOnce(&mut Vec<u8>), erases: bool) -> Result<u64, Error> {
        match self {
            Journal::File(j) => j.append(encode, erases),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.append(encode, erases),
        }
    }

    /// See [`FileJournal::note_erased`].
    pub fn note_erased(&self, ticket: u64) {
        match self {
            Journal::File(j) => j.note_erased(ticket),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.note_erased(ticket),
        }
    }

    /// See [`FileJournal::set_erase_within`].
    pub fn set_erase_within(&self, within: Option<std::time::Duration>) {
        match self {
            Journal::File(j) => j.set_erase_within(within),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.set_erase_within(within),
        }
    }

    #[inline]
    pub fn appended(&self) -> u64 {
        match self {
            Journal::File(j) => j.appended(),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.appended(),
        }
    }

    #[inline]
    pub fn is_done(&self, target: u64) -> bool {
        match self {
            Journal::File(j) => j.is_done(target),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.is_done(target),
        }
    }

    #[inline]
    pub fn commit_to(&self, target: u64) -> Result<(), Error> {
        match self {
            Journal::File(j) => j.commit_to(target),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.commit_to(target),
        }
    }

    #[inline]
    pub fn poll_durable(&self, target: u64, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self {
            Journal::File(j) => j.poll_durable(target, cx),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.poll_durable(target, cx),
        }
    }

    pub fn flush(&self) -> Result<(), Error> {
        match self {
            Journal::File(j) => j.flush(),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.flush(),
        }
    }

    /// See [`FileJournal::checkpoint_soon`]; a stream's shard owner makes its own snapshots.
    pub fn checkpoint_soon(&self) {
        match self {
            Journal::File(j) => j.checkpoint_soon(),
            #[cfg(feature = "cluster")]
            Journal::Stream(_) => {}
        }
    }

    pub fn set_snapshot_threshold(&self, bytes: u64) {
        match self {
            Journal::File(j) => j.set_snapshot_threshold(bytes),
            #[cfg(feature = "cluster")]
            Journal::Stream(_) => {}
        }
    }

    pub fn wait_checkpoint_due(&self) -> bool {
        match self {
            Journal::File(j) => j.wait_checkpoint_due(),
            #[cfg(feature = "cluster")]
            Journal::Stream(_) => false,
        }
    }

    /// A file journal's snapshot, begun at `started`, covers every record below `cut` (a
    /// shard's snapshots report to their stream journal themselves).
    pub fn erasures_covered(&self, cut: u64, started: std::time::Instant) {
        match self {
            Journal::File(j) => j.erasures_covered(cut, started),
            #[cfg(feature = "cluster")]
            Journal::Stream(_) => {}
        }
    }

    pub fn erasure_retry_later(&self, started: std::time::Instant) {
        match self {
            Journal::File(j) => j.erasure_retry_later(started),
            #[cfg(feature = "cluster")]
            Journal::Stream(_) => {}
        }
    }

    /// Whether the journal held what its newest snapshot replaces when it was opened (a crash
    /// before a checkpoint deleted those files, or before a shard's snapshot purged its stream).
    pub fn replaced_at_open(&self) -> bool {
        match self {
            Journal::File(j) => j.replaced_at_open(),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.replaced_at_open(),
        }
    }

    /// When a snapshot is due for an erasure, if one is.
    pub fn erasure_due(&self) -> Option<std::time::Instant> {
        match self {
            Journal::File(j) => j.erasure_due(),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.erasure_due(),
        }
    }

    pub fn checkpoint_lock(&self) -> MutexGuard<'_, ()> {
        match self {
            Journal::File(j) => j.checkpoint_lock(),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.checkpoint_lock(),
        }
    }

    pub fn shutdown(&self) {
        match self {
            Journal::File(j) => j.shutdown(),
            #[cfg(feature = "cluster")]
            Journal::Stream(j) => j.shutdown(),
        }
    }

    pub fn rotate(&self) -> Result<u64, Error> {
        match self {
            Journal::File(j) => j.rotate(),
            #[cfg(feature = "cluster")]
            Journal::Stream(_) => Err(no_snapshots()),
        }
    }

    pub fn replay_upto(
        &self,
        cut: u64,
        recover: impl FnMut(Recovered<'_>) -> Result<(), String>,
    ) -> Result<RecoveryReport, OpenError> {
        match self {
            Journal::File(j) => j.replay_upto(cut, recover),
            #[cfg(feature = "cluster")]
            Journal::Stream(_) => Err(OpenError::Config(no_snapshots())),
        }
    }

    pub fn write_snapshot(
        &self,
        lsn: u64,
        write: impl FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()>,
    ) -> Result<(PathBuf, u64), Error> {
        match self {
            Journal::File(j) => j.write_snapshot(lsn, write),
            #[cfg(feature = "cluster")]
            Journal::Stream(_) => {
                let _ = (lsn, write);
                Err(no_snapshots())
            }
        }
    }
}

/// One whole framed record, as `push_frame` makes it and a stream message carries it: its kind
/// and payload, or why it is not a valid frame.
#[cfg(feature = "cluster")]
pub(crate) fn parse_record(bytes: &[u8]) -> Result<(u8, &[u8]), &'static str> {
    match super::format::read_frame(bytes, 0) {
        Ok((frame, end)) if end == bytes.len() => Ok((frame.kind, frame.payload)),
        Ok(_) => Err("bytes after the record"),
        Err(super::format::Bad::Short) => Err("record cut short"),
        Err(super::format::Bad::Damaged(why)) => Err(why),
    }
}

/// A snapshot as the file journal writes one (header with `cut`, then the frames `write`
/// produces), in memory: a cluster shard keeps its snapshots in the object store.
#[cfg(any(feature = "cluster", test))]
pub(crate) fn snapshot_bytes(
    cut: u64,
    write: impl FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()>,
) -> io::Result<Vec<u8>> {
    let mut out = super::format::file_header(super::format::SNAPSHOT_MAGIC, cut).to_vec();
    write(&mut |bytes| {
        out.extend_from_slice(bytes);
        Ok(())
    })?;
    Ok(out)
}

/// Feeds `recover` the records of a snapshot made by [`snapshot_bytes`], validated whole
/// first; returns its cut.
#[cfg(any(feature = "cluster", test))]
pub(crate) fn read_snapshot(
    bytes: &[u8],
    recover: &mut dyn FnMut(Recovered<'_>) -> Result<(), String>,
) -> Result<u64, String> {
    use super::format::{FILE_HEADER_LEN, SNAPSHOT_MAGIC, kind, parse_file_header, scan};
    let (cut, _) = parse_file_header(bytes, SNAPSHOT_MAGIC)?;
    let (frames, bad) = scan(bytes, FILE_HEADER_LEN);
    if let Some((offset, _)) = bad {
        return Err(format!("damaged snapshot record at byte {offset}"));
    }
    if frames.last().map(|f| f.kind) != Some(kind::SNAP_END) {
        return Err("snapshot has no end record".into());
    }
    for f in &frames {
        recover(Recovered::Snapshot {
            kind: f.kind,
            payload: f.payload,
        })?;
    }
    Ok(cut)
}
