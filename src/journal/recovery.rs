//! Reading a data directory back: the newest snapshot, then every journal record after it, in
//! LSN order. `Journal::open` reads to the end and may cut a torn tail (or, with `repair`, the
//! damage); a checkpoint reads, without changing anything, only the records below its cut.

use std::fs;
use std::path::PathBuf;

use super::format::{
    BATCH_MARKER_LEN, Bad, FILE_HEADER_LEN, Frame, Listing, SEGMENT_MAGIC, SEGMENT_VERSION,
    SNAPSHOT_MAGIC, batch_after, batch_len, kind, parse_file_header, scan, valid_frame_after,
    zero_tail,
};
use super::{OpenError, Recovered, RecoveryReport, io_err};

/// How far to read and what reading may change.
#[derive(Clone, Copy)]
pub(super) enum ReadMode {
    /// Opening: read everything; a torn tail is cut off, damage before it refused (or, with
    /// `repair`, cut off with everything after it).
    Open { repair: bool },
    /// A checkpoint: read the records below this LSN; change nothing, refuse any damage.
    Upto(u64),
}

/// Where reading ended.
pub(super) struct ReadEnd {
    /// The LSN the next record gets.
    pub next_lsn: u64,
    /// The last segment, if there is one.
    pub current: Option<Current>,
}

/// The last segment as reading left it.
pub(super) struct Current {
    pub path: PathBuf,
    /// How many of its bytes are valid.
    pub valid_len: u64,
    /// A batch marker to write again before going on — (its offset, the length of its batch
    /// that is left) — when the cut fell inside that batch: left as it was, it would claim
    /// bytes the next batch is written over, and a torn tail of that next batch would be
    /// refused for them.
    pub reseal: Option<(u64, u32)>,
    /// The segment holds records, and no marker ends it (a clean close writes one): the batch
    /// before the end was not known to be acknowledged, so the next clean close marks it.
    pub unmarked: bool,
}

/// Feeds `recover` the newest snapshot's records, then every journal record after it.
pub(super) fn read(
    listing: &Listing,
    mode: ReadMode,
    report: &mut RecoveryReport,
    recover: &mut dyn FnMut(Recovered<'_>) -> Result<(), String>,
) -> Result<ReadEnd, OpenError> {
    let upto = match mode {
        ReadMode::Upto(cut) => cut,
        ReadMode::Open { .. } => u64::MAX,
    };
    // The newest snapshot, validated whole before any of it is used.
    let mut start_lsn = 0;
    if let Some((lsn, path)) = listing.snapshots.iter().rfind(|(lsn, _)| *lsn <= upto) {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let corrupt = |offset: usize, reason: &str| OpenError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason: reason.to_owned(),
        };
        let (header_lsn, _) =
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
    let segments: Vec<_> = listing
        .segments
        .get(first..)
        .unwrap_or_default()
        .iter()
        .filter(|(lsn, _)| *lsn < upto)
        .collect();
    let mut next_lsn = start_lsn;
    let mut current = None;
    for (i, (seg_lsn, path)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let bytes = fs::read(path).map_err(io_err(path))?;
        let corrupt = |offset: usize, reason: &str| OpenError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason: reason.to_owned(),
        };
        // A segment that starts inside the records already read (of the segment before) and
        // holds none: left by a switch of segments that failed after creating the file (a
        // full disk, say), after which the journal went on in the segment before. Nothing was
        // ever appended to it. Opening removes it; a checkpoint passes over it.
        let leftover = |header_written: bool| {
            i > 0
                && *seg_lsn <= next_lsn
                && (!header_written || *seg_lsn < next_lsn)
                && (bytes.len() <= FILE_HEADER_LEN || zero_tail(&bytes, FILE_HEADER_LEN))
        };
        let unwritten = bytes.len() < FILE_HEADER_LEN || zero_tail(&bytes, 0);
        let (header_lsn, version) = match parse_file_header(&bytes, SEGMENT_MAGIC) {
            Ok(h) => h,
            Err(_) if unwritten && leftover(false) => {
                if let ReadMode::Open { .. } = mode {
                    fs::remove_file(path).map_err(io_err(path))?;
                }
                continue;
            }
            // Created but its header never reached the disk: nothing was appended to it.
            Err(_) if last && matches!(mode, ReadMode::Open { .. }) && unwritten => {
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
        if leftover(true) {
            if let ReadMode::Open { .. } = mode {
                fs::remove_file(path).map_err(io_err(path))?;
            }
            continue;
        }
        // One that starts inside them and does hold records was such a leftover too, written
        // to by a version that made it the current segment at its next open: its records came
        // after the segment before's, and are replayed after them, as that version did.
        let (frames, bad) = scan(&bytes, FILE_HEADER_LEN);
        let mut valid_len = bytes.len();
        let mut stop_here = false;
        if let Some((offset, why)) = bad {
            if zero_tail(&bytes, offset) {
                // Disk space reserved ahead of the writes and never written: the clean end.
            } else if let ReadMode::Upto(_) = mode {
                return Err(corrupt(offset, "damaged record below a checkpoint's cut"));
            } else if last && torn_tail(&bytes, &frames, offset, version >= SEGMENT_VERSION) {
                report.truncated_tail =
                    Some((path.clone(), offset as u64, (bytes.len() - offset) as u64));
            } else if let ReadMode::Open { repair: true } = mode {
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
        // Batch markers take no LSN.
        let mut ops = 0u64;
        for f in &frames {
            match f.kind {
                kind::BATCH => continue,
                kind::OP => {}
                _ => {
                    return Err(corrupt(
                        f.offset,
                        "unexpected record kind in a journal segment",
                    ));
                }
            }
            let lsn = seg_lsn + ops;
            ops += 1;
            if lsn < start_lsn {
                continue;
            }
            if lsn >= upto {
                break;
            }
            recover(Recovered::Op(f.payload)).map_err(|reason| OpenError::Replay {
                path: path.clone(),
                offset: f.offset as u64,
                reason,
            })?;
            report.records_replayed += 1;
        }
        let ops = frames.iter().filter(|f| f.kind != kind::BATCH).count() as u64;
        next_lsn = next_lsn.max(seg_lsn + ops);
        let marker = frames.iter().rfind(|f| f.kind == kind::BATCH);
        let reseal = marker.and_then(|m| {
            let start = m.offset + BATCH_MARKER_LEN;
            let end = start + batch_len(m.payload)?;
            (end > valid_len).then(|| {
                (
                    m.offset as u64,
                    u32::try_from(valid_len - start).unwrap_or(0),
                )
            })
        });
        let unmarked = frames
            .last()
            .is_some_and(|f| f.kind != kind::BATCH || batch_len(f.payload) != Some(0));
        current = Some(Current {
            path: path.clone(),
            valid_len: valid_len as u64,
            reseal,
            unmarked,
        });
        if stop_here {
            for (_, later) in &segments[i + 1..] {
                fs::remove_file(later).map_err(io_err(later))?;
            }
            break;
        }
    }
    if let ReadMode::Upto(cut) = mode
        && next_lsn < cut
    {
        return Err(OpenError::Corrupt {
            path: current.map_or_else(PathBuf::new, |c| c.path),
            offset: 0,
            reason: format!("the journal ends at record {next_lsn}, before the cut {cut}"),
        });
    }
    Ok(ReadEnd { next_lsn, current })
}

/// Whether the damage at `offset` in the last segment, after the valid `frames`, is a torn
/// tail — bytes of the last write, whose fsync never returned, so nobody was told of their
/// records — rather than damage with acknowledged records behind it:
/// - no valid frame starts after it (the write was cut short); or
/// - it lies inside the batch the last whole marker before it opens (`kind::BATCH`, which
///   says how long its batch is), and nothing valid starts after that batch's end, and no
///   marker starts anywhere after the damage; or it starts right where that batch ends (the
///   next batch's marker is damaged) and no marker starts after it. A batch is written only once the one before
///   it was fsynced, and a clean close ends the segment with a marker, so that batch is the
///   last, never acknowledged, which a power loss wrote in part and out of order (a disk may
///   persist a write's later blocks and not its earlier ones).
///
/// In a segment `marked` from its start (format version 2, whose header was fsynced before
/// any batch), the damage may also be the first batch's marker itself, right after the
/// header: as where a batch ends, then no marker may start after it.
fn torn_tail(bytes: &[u8], frames: &[Frame<'_>], offset: usize, marked: bool) -> bool {
    if !valid_frame_after(bytes, offset) {
        return true;
    }
    if marked && frames.is_empty() {
        return !batch_after(bytes, offset);
    }
    let Some(marker) = frames.iter().rfind(|f| f.kind == kind::BATCH) else {
        // No marked batch before the damage: written by an older version (the start of a
        // version 1 segment), or, in a marked segment, not as this version writes.
        return false;
    };
    let Some(len) = batch_len(marker.payload) else {
        return false;
    };
    let end = marker.offset + BATCH_MARKER_LEN + len;
    match offset.cmp(&end) {
        // Inside that batch: nothing may follow it.
        std::cmp::Ordering::Less => {
            !valid_frame_after(bytes, end - 1) && !batch_after(bytes, offset)
        }
        // Where it ends: the next batch, whose own marker is damaged, must be the last.
        std::cmp::Ordering::Equal => !batch_after(bytes, offset),
        std::cmp::Ordering::Greater => false,
    }
}
