//! The journal's bytes on disk: file headers, record frames, file names, directory listing.
//! `docs/FORMAT.md` describes them; keep the two in step.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::{OpenError, io_err};
use crate::codec::{MAX_PAYLOAD, PAYLOAD_VERSION};

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"IMSTJRNL";
pub(crate) const SNAPSHOT_MAGIC: &[u8; 8] = b"IMSTSNAP";
/// A snapshot's format version.
pub(crate) const SNAPSHOT_VERSION: u32 = 1;
/// A segment's format version: 2 says every batch in it starts with a marker
/// ([`kind::BATCH`]), from the first one after the header on, so that recovery can cut a first
/// batch torn from its start; 1 (written by earlier versions, with or without markers, and
/// still appended to after an upgrade) says nothing about the batches before the first marker.
pub(crate) const SEGMENT_VERSION: u32 = 2;
pub(crate) const FILE_HEADER_LEN: usize = 24;
pub(crate) const FRAME_HEADER_LEN: usize = 12;
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Record kinds (the frame's `kind` byte).
pub(crate) mod kind {
    pub const OP: u8 = 1;
    pub const SNAP_ACCOUNT: u8 = 2;
    pub const SNAP_CONVERSATION: u8 = 3;
    pub const SNAP_END: u8 = 4;
    /// An account with its devices' last-seen times (written instead of kind 2, which is
    /// still read).
    pub const SNAP_ACCOUNT2: u8 = 5;
    /// Deleted accounts' next sequence numbers.
    pub const SNAP_RETIRED: u8 = 6;
    /// The outbox of after-callbacks.
    pub const SNAP_OUTBOX: u8 = 7;
    /// More messages of the conversation the records before it began: a conversation too
    /// large for one record (`codec::MAX_PAYLOAD`) is written in several.
    pub const SNAP_CONVERSATION_MORE: u8 = 8;
    /// More inbox entries and unread counts of the account the records before it began.
    pub const SNAP_ACCOUNT_MORE: u8 = 9;
    /// In a journal segment: the start of a batch — the bytes one write puts on disk before
    /// its fsync (`commit.rs`). Its payload: the batch's length after it, a `u32`. No LSN.
    /// Recovery uses it to tell a batch torn by a power loss, which nobody was told of, from
    /// damage with acknowledged records behind it (`recovery.rs`, `docs/FORMAT.md`).
    pub const BATCH: u8 = 10;
    /// The store's sequence floor (`Op::SeqFloor`), when one was ever set: a `u64`.
    pub const SNAP_SEQ_FLOOR: u8 = 11;
}

/// A batch marker's length: a frame header and a `u32`.
pub(crate) const BATCH_MARKER_LEN: usize = FRAME_HEADER_LEN + 4;

/// The marker ([`kind::BATCH`]) of a batch whose records take `len` bytes after it.
pub(crate) fn batch_marker(len: u32) -> [u8; BATCH_MARKER_LEN] {
    let mut m = Vec::with_capacity(BATCH_MARKER_LEN);
    push_frame(&mut m, kind::BATCH, |b| {
        b.extend_from_slice(&len.to_le_bytes())
    });
    m.try_into().expect("a marker's length")
}

/// The marker a batch starts with while it is appended to, until [`seal_batch`] writes its
/// length: a valid marker of an empty batch, so that one written unsealed would only make
/// recovery refuse damage after it, never read past records.
pub(crate) fn unsealed_marker() -> &'static [u8; BATCH_MARKER_LEN] {
    static MARKER: std::sync::OnceLock<[u8; BATCH_MARKER_LEN]> = std::sync::OnceLock::new();
    MARKER.get_or_init(|| batch_marker(0))
}

/// Writes into `batch` — a marker, then records — its marker's length, just before it is
/// written. (A batch over 4 GiB, which the journal never writes, would keep a length of 0.)
pub(crate) fn seal_batch(batch: &mut [u8]) {
    if batch.len() >= BATCH_MARKER_LEN {
        let len = u32::try_from(batch.len() - BATCH_MARKER_LEN).unwrap_or(0);
        batch[..BATCH_MARKER_LEN].copy_from_slice(&batch_marker(len));
    }
}

/// The length a batch marker's payload declares (`None`: not a marker's payload).
pub(super) fn batch_len(payload: &[u8]) -> Option<usize> {
    Some(u32::from_le_bytes(*payload.first_chunk::<4>()?) as usize)
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

pub(super) enum Bad {
    /// The bytes end inside the frame.
    Short,
    /// The frame is complete but wrong.
    Damaged(&'static str),
}

pub(super) fn read_frame(bytes: &[u8], at: usize) -> Result<(Frame<'_>, usize), Bad> {
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
pub(super) fn scan(bytes: &[u8], start: usize) -> (Vec<Frame<'_>>, Option<(usize, Bad)>) {
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
pub(super) fn valid_frame_after(bytes: &[u8], offset: usize) -> bool {
    (offset + 1..bytes.len().saturating_sub(FRAME_HEADER_LEN - 1))
        .any(|at| read_frame(bytes, at).is_ok())
}

/// Whether a valid batch marker ([`kind::BATCH`]) starts anywhere after `offset`: then the
/// batch holding the damage at `offset` was followed by another, which is written only once the
/// one before it was fsynced — so the damage is in records that were acknowledged.
pub(super) fn batch_after(bytes: &[u8], offset: usize) -> bool {
    (offset + 1..bytes.len().saturating_sub(FRAME_HEADER_LEN - 1))
        .any(|at| read_frame(bytes, at).is_ok_and(|(f, _)| f.kind == kind::BATCH))
}

/// The header of a new file of `magic`'s kind, at its kind's current version.
pub(super) fn file_header(magic: &[u8; 8], lsn: u64) -> [u8; FILE_HEADER_LEN] {
    let version = if magic == SEGMENT_MAGIC {
        SEGMENT_VERSION
    } else {
        SNAPSHOT_VERSION
    };
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[12..20].copy_from_slice(&lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A file's header checked against `magic`: its LSN and its format version, one this version
/// reads (a segment: 1 or 2; a snapshot: 1).
pub(super) fn parse_file_header(bytes: &[u8], magic: &[u8; 8]) -> Result<(u64, u32), &'static str> {
    let Some(h) = bytes.first_chunk::<FILE_HEADER_LEN>() else {
        return Err("shorter than its header");
    };
    if crc32c::crc32c(&h[0..20]) != u32::from_le_bytes(h[20..24].try_into().unwrap()) {
        return Err("file header checksum mismatch");
    }
    if &h[0..8] != magic {
        return Err("not an imstore file of this kind (bad magic)");
    }
    let version = u32::from_le_bytes(h[8..12].try_into().unwrap());
    let newest = if magic == SEGMENT_MAGIC {
        SEGMENT_VERSION
    } else {
        SNAPSHOT_VERSION
    };
    if !(1..=newest).contains(&version) {
        return Err("written by an unknown format version");
    }
    Ok((u64::from_le_bytes(h[12..20].try_into().unwrap()), version))
}

pub(super) fn segment_name(lsn: u64) -> String {
    format!("journal-{lsn:020}.log")
}

pub(super) fn snapshot_name(lsn: u64) -> String {
    format!("snapshot-{lsn:020}.snap")
}

pub(super) fn parse_name(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The files of a data directory, by LSN.
pub(super) struct Listing {
    pub segments: Vec<(u64, PathBuf)>,
    pub snapshots: Vec<(u64, PathBuf)>,
}

pub(super) fn list(dir: &Path) -> Result<Listing, OpenError> {
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

/// Whether every byte from `offset` on is zero: the unwritten, preallocated end of a segment.
pub(super) fn zero_tail(bytes: &[u8], offset: usize) -> bool {
    bytes[offset..].iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_their_kinds_version_and_unknown_versions_are_refused() {
        let with_version = |magic: &[u8; 8], version: u32| {
            let mut h = file_header(magic, 7);
            h[8..12].copy_from_slice(&version.to_le_bytes());
            let crc = crc32c::crc32c(&h[0..20]);
            h[20..24].copy_from_slice(&crc.to_le_bytes());
            h
        };
        let seg = file_header(SEGMENT_MAGIC, 7);
        assert_eq!(
            parse_file_header(&seg, SEGMENT_MAGIC),
            Ok((7, SEGMENT_VERSION))
        );
        assert_eq!(SEGMENT_VERSION, 2);
        let snap = file_header(SNAPSHOT_MAGIC, 9);
        assert_eq!(parse_file_header(&snap, SNAPSHOT_MAGIC), Ok((9, 1)));
        // Segments written before markers are read.
        let old = with_version(SEGMENT_MAGIC, 1);
        assert_eq!(parse_file_header(&old, SEGMENT_MAGIC), Ok((7, 1)));
        for (magic, version) in [
            (SEGMENT_MAGIC, 0),
            (SEGMENT_MAGIC, 3),
            (SNAPSHOT_MAGIC, 0),
            (SNAPSHOT_MAGIC, 2),
        ] {
            assert_eq!(
                parse_file_header(&with_version(magic, version), magic),
                Err("written by an unknown format version")
            );
        }
        assert!(parse_file_header(&seg, SNAPSHOT_MAGIC).is_err());
    }

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
