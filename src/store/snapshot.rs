//! Snapshots of the whole store, and checkpoints: a snapshot is built from the journal, not
//! from the live store. The journal switches to a new segment (the cut), the previous snapshot
//! and the finished segments are replayed into a scratch in-memory store through the same
//! `apply` as ever, and that store is captured and written. The live store goes on meanwhile:
//! nothing it does waits for a snapshot. A recalled message is captured without its body,
//! which is how compaction erases recalled bodies from disk. This file captures and writes;
//! `snapshot/restore.rs` reads a snapshot (and the journal) back.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::Store;
use crate::account::UserId;
use crate::callback::{Origin, Queued};
use crate::codec::{
    self, AccountImage, ConvImage, EntryImage, MsgImage, MsgRef, OutboxEntryImage, OutboxImage,
    RetiredImage, SnapshotEnd, StateImage,
};
use crate::config::Config;
use crate::device::DeviceId;
use crate::error::Error;
use crate::hooks::NoHooks;
use crate::inbox::{Entry, Slot};
use crate::journal::Journal;
use crate::journal::{kind, push_frame};
use crate::key::MsgKey;
use crate::message::{MsgArc, MsgState, StoredMessage};

/// The store at one cut, holding shared records and copies of their state (a recall after the
/// cut changes the record, not the copy).
pub(super) struct Capture {
    conversations: Vec<ConvCapture>,
    accounts: Vec<AccountCapture>,
    retired: Vec<(UserId, u64)>,
    outbox: OutboxCapture,
    /// `Inner::seq_floor` (0: none).
    seq_floor: u64,
}

struct OutboxCapture {
    next_id: u64,
    dropped: u64,
    entries: Vec<(u64, Origin, Queued, Option<MsgState>)>,
}

struct ConvCapture {
    users: [UserId; 2],
    next_arrival: u64,
    read_mark: [u64; 2],
    messages: Vec<(MsgArc, MsgState)>,
}

struct AccountCapture {
    user: UserId,
    next_seq: u64,
    slots: Vec<(Slot, MsgState)>,
    devices: Vec<(DeviceId, u64, u64)>,
    unread: Vec<(UserId, u32)>,
}

fn key_tuple(k: MsgKey) -> (u32, u32, u32) {
    (k.seq(), k.random(), k.time())
}

fn msg_image<'a>(m: &'a StoredMessage, state: &'a MsgState) -> MsgImage<'a> {
    MsgImage {
        from: &m.from,
        to: &m.to,
        key: key_tuple(m.key),
        arrival: m.arrival(),
        // Bit 7: imported as history, counted read (format 2; format 1 never sets it). Bit 5:
        // SendMsgControl NoUnread, bit 6: NoLastMsg (`SendControl::bits`; older versions
        // never set them).
        sender_copy: codec::sender_copy_code(m.sender_copy())
            | (u8::from(m.read_on_import()) << 7)
            | (m.control().bits() << 5),
        origin_device: match state {
            MsgState::Live(c) => c.origin_device(),
            MsgState::Recalled { .. } => None,
        },
        state: match state {
            MsgState::Live(c) => StateImage::Live {
                body_json: c.body_json(),
                custom: c.cloud_custom_data(),
            },
            MsgState::Recalled { by, at } => StateImage::Recalled { by, at: *at },
        },
    }
}

/// Writes a snapshot of everything below a new cut, built off the live store: rotate, replay
/// the journal into a scratch store, capture and write it, delete what it replaces. Returns the
/// snapshot's path and its cut. One at a time (the journal's checkpoint lock).
pub(super) fn checkpoint(journal: &Journal, config: &Config) -> Result<(PathBuf, u64), Error> {
    let _one = journal.checkpoint_lock();
    let started = std::time::Instant::now();
    let cut = journal.rotate()?;
    #[cfg(feature = "fault-injection")]
    journal.faults().hold_checkpoint.pass();
    let scratch = Store::empty(config.clone().with_hooks(Arc::new(NoHooks)))?;
    journal
        .replay_upto(cut, |rec| scratch.recover(rec))
        .map_err(|e| Error::Internal(format!("building a snapshot: {e}")))?;
    let capture = scratch.capture();
    let (path, size) = journal.write_snapshot(cut, |w| capture.write(w))?;
    journal.set_snapshot_threshold(config.snapshot_after_bytes.max(size));
    // Written, and the segments and snapshot it replaces deleted: the bodies erased below the
    // cut are off the disk (a ticket is the LSN after its record, so `cut` covers them).
    journal.erasures_covered(cut, started);
    Ok((path, cut))
}

impl Store {
    /// Copies the store's state. Only a scratch store nobody else touches is captured; each
    /// lock below is taken alone.
    pub(super) fn capture(&self) -> Capture {
        let conversations = self
            .inner
            .conversation_list
            .iter()
            .map(|c| {
                let (users, next_arrival, read_mark, messages) = c.lock().export();
                let messages = messages
                    .into_iter()
                    .map(|m| {
                        let s = m.state();
                        (m, s)
                    })
                    .collect();
                ConvCapture {
                    users,
                    next_arrival,
                    read_mark,
                    messages,
                }
            })
            .collect();
        let cells = self.inner.accounts.cells();
        let accounts = cells
            .iter()
            .map(|cell| {
                let state = cell.state.lock();
                let (next_seq, slots) = state.inbox.export();
                let slots = slots
                    .into_iter()
                    .map(|s| {
                        let st = s.message().state();
                        (s, st)
                    })
                    .collect();
                AccountCapture {
                    user: cell.id.clone(),
                    next_seq,
                    slots,
                    devices: state
                        .devices
                        .iter()
                        .map(|(id, d)| (id.clone(), d.cursor, d.last_seen))
                        .collect(),
                    unread: self.unread_peers(&cell.id, &state).0,
                }
            })
            .collect();
        // In name order, so that the same store always gives the same snapshot.
        let mut retired: Vec<_> = self
            .inner
            .retired
            .lock()
            .iter()
            .map(|(u, n)| (u.clone(), *n))
            .collect();
        retired.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let outbox = {
            let o = self.inner.outbox.lock();
            OutboxCapture {
                next_id: o.next_id,
                dropped: o.dropped,
                entries: o
                    .entries
                    .iter()
                    .map(|(id, origin, q)| {
                        let state = match q {
                            Queued::AfterSend { msg, .. } | Queued::AfterRecall { msg, .. } => {
                                Some(msg.state())
                            }
                            Queued::AfterRead { .. } => None,
                        };
                        (*id, origin.clone(), q.clone(), state)
                    })
                    .collect(),
            }
        };
        Capture {
            conversations,
            accounts,
            retired,
            outbox,
            seq_floor: self
                .inner
                .seq_floor
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl Capture {
    /// Encodes the capture as snapshot records: conversations first (inbox entries refer to
    /// them), then accounts, then the end record.
    pub(super) fn write(&self, w: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        self.write_limited(w, codec::MAX_PAYLOAD)
    }

    /// [`write`](Capture::write) with records of at most `limit` bytes: a conversation or an
    /// account too large for one is split (tests use a small limit).
    fn write_limited(
        &self,
        w: &mut dyn FnMut(&[u8]) -> io::Result<()>,
        limit: usize,
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut roaming: HashSet<*const StoredMessage> = HashSet::new();
        for c in &self.conversations {
            let kinds = (kind::SNAP_CONVERSATION, kind::SNAP_CONVERSATION_MORE);
            let sized = (kinds, std::mem::size_of::<codec::MsgImage<'_>>());
            split_record(&mut buf, w, limit, sized, c.messages.len(), |range, b| {
                let img = ConvImage {
                    a: &c.users[0],
                    b: &c.users[1],
                    next_arrival: c.next_arrival,
                    read_mark: c.read_mark,
                    messages: c.messages[range]
                        .iter()
                        .map(|(m, s)| msg_image(m, s))
                        .collect(),
                };
                codec::encode(&img, b)
            })?;
            roaming.extend(c.messages.iter().map(|(m, _)| MsgArc::as_ptr(m)));
        }
        for a in &self.accounts {
            // Continuation records carry the next entries and unread counts, no devices.
            let items = a.slots.len().max(a.unread.len());
            let kinds = (kind::SNAP_ACCOUNT2, kind::SNAP_ACCOUNT_MORE);
            // An entry's image is larger in memory than an unread count's.
            let sized = (kinds, std::mem::size_of::<codec::EntryImage<'_>>());
            split_record(&mut buf, w, limit, sized, items, |range, b| {
                let first = range.start == 0;
                let part = |len: usize| range.start.min(len)..range.end.min(len);
                let img = AccountImage {
                    user: &a.user,
                    next_seq: a.next_seq,
                    entries: (a.slots[part(a.slots.len())].iter())
                        .map(|(slot, state)| entry_image(slot, state, &roaming))
                        .collect(),
                    devices: (a.devices.iter())
                        .filter(|_| first)
                        .map(|(d, c, s)| (&**d, *c, *s))
                        .collect(),
                    unread: (a.unread[part(a.unread.len())].iter())
                        .map(|(p, n)| (&**p, *n))
                        .collect(),
                };
                codec::encode(&img, b)
            })?;
        }
        // The outbox in frames of OUTBOX_CHUNK entries (restored one after another): whole,
        // a full outbox (a million entries by default) would pass the frame limit.
        let o = &self.outbox;
        let mut chunks = o.entries.chunks(OUTBOX_CHUNK).peekable();
        let empty: &[_] = &[];
        let first = chunks.peek().is_none().then_some(empty);
        for chunk in first.into_iter().chain(chunks) {
            let img = OutboxImage {
                next_id: o.next_id,
                dropped: o.dropped,
                entries: chunk
                    .iter()
                    .map(|(id, origin, q, state)| {
                        let msg_ref = |m| message_ref(m, state.as_ref(), &roaming);
                        let (kind, msg, report, peer, at, unread, online_only) = match q {
                            Queued::AfterSend {
                                msg,
                                online_only,
                                unread,
                            } => (0, Some(msg_ref(msg)), "", "", 0, *unread, *online_only),
                            Queued::AfterRecall { msg, unread, at } => {
                                (1, Some(msg_ref(msg)), "", "", *at, *unread, false)
                            }
                            Queued::AfterRead {
                                report,
                                peer,
                                at,
                                unread,
                            } => (2, None, &**report, &**peer, *at, *unread, false),
                        };
                        OutboxEntryImage {
                            id: *id,
                            platform: origin.platform.code(),
                            client_ip: &origin.client_ip,
                            kind,
                            msg,
                            report,
                            peer,
                            at,
                            unread,
                            online_only,
                        }
                    })
                    .collect(),
            };
            snap_frame(&mut buf, kind::SNAP_OUTBOX, limit, |b| {
                codec::encode(&img, b)
            })?;
            flush_if_large(&mut buf, w)?;
        }
        if !self.retired.is_empty() {
            // Each record of deleted accounts is restored on its own: any split reads back.
            let kinds = (kind::SNAP_RETIRED, kind::SNAP_RETIRED);
            let sized = (kinds, std::mem::size_of::<(&str, u64)>());
            split_record(&mut buf, w, limit, sized, self.retired.len(), |range, b| {
                let img = RetiredImage {
                    accounts: self.retired[range]
                        .iter()
                        .map(|(u, n)| (&**u, *n))
                        .collect(),
                };
                codec::encode(&img, b)
            })?;
        }
        if self.seq_floor > 0 {
            push_frame(&mut buf, kind::SNAP_SEQ_FLOOR, |b| {
                codec::encode(&self.seq_floor, b)
            });
        }
        let end = SnapshotEnd {
            accounts: self.accounts.len() as u64,
            conversations: self.conversations.len() as u64,
        };
        push_frame(&mut buf, kind::SNAP_END, |b| codec::encode(&end, b));
        w(&buf)
    }
}

/// Outbox entries a snapshot frame holds at most: an entry carries at most one message (its
/// body at most 12 KiB, its custom data bounded too), so a frame stays far under the limit.
const OUTBOX_CHUNK: usize = 256;

/// [`push_frame`] of one snapshot record, refused if its payload passes the limit every
/// reader applies (`codec::MAX_PAYLOAD`): a snapshot that could not be read back must not
/// replace the journal it stands for. (The checkpoint fails; the journal is kept, and the
/// checkpoint is tried again later.)
fn snap_frame(
    buf: &mut Vec<u8>,
    kind: u8,
    limit: usize,
    encode: impl FnOnce(&mut Vec<u8>),
) -> io::Result<()> {
    try_frame(buf, kind, limit, encode).map_err(|len| oversized(kind, len, limit))
}

/// [`snap_frame`] answering, for a record past `limit`, its payload's length.
fn try_frame(
    buf: &mut Vec<u8>,
    kind: u8,
    limit: usize,
    encode: impl FnOnce(&mut Vec<u8>),
) -> Result<(), usize> {
    let start = buf.len();
    push_frame(buf, kind, encode);
    let len = buf.len() - start - crate::journal::FRAME_HEADER_LEN;
    if len > limit {
        buf.truncate(start);
        return Err(len);
    }
    Ok(())
}

fn oversized(kind: u8, len: usize, limit: usize) -> io::Error {
    io::Error::other(format!(
        "a snapshot record of kind {kind:#x} would be {len} bytes, past the {limit} limit"
    ))
}

/// Writes a record of `items` things (a conversation's messages; an account's inbox entries
/// and unread counts): one record of kind `kinds.0` when it fits in `limit`, else that record
/// with the first items and then records of kind `kinds.1` with the rest. A record too large
/// is encoded again with as many items as should fill half the limit at the sizes it found
/// (at most half as many), so a huge conversation costs a few encodings, not one per halving.
/// `encode` writes the record of a range of items. Only a single item too large for a record
/// (which the request limits rule out) fails.
///
/// A record also holds at most as many items as take half of `limit` in memory at
/// `item_size` bytes each (the size of the item's image): decoding claims memory, not bytes
/// (`codec::MAX_IMAGE_CLAIM`), and an image is several times larger in memory than encoded.
fn split_record(
    buf: &mut Vec<u8>,
    w: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    limit: usize,
    (kinds, item_size): ((u8, u8), usize),
    items: usize,
    mut encode: impl FnMut(std::ops::Range<usize>, &mut Vec<u8>),
) -> io::Result<()> {
    let most = (limit / 2 / item_size.max(1)).max(1);
    let (mut at, mut take) = (0, items.clamp(1, most));
    loop {
        let end = (at + take).min(items);
        let kind = if at == 0 { kinds.0 } else { kinds.1 };
        match try_frame(buf, kind, limit, |b| encode(at..end, b)) {
            Ok(()) => {
                flush_if_large(buf, w)?;
                if end >= items {
                    return Ok(());
                }
                at = end;
            }
            Err(len) if end - at <= 1 => return Err(oversized(kind, len, limit)),
            Err(len) => {
                let n = end - at;
                let fit = (n as u128 * (limit / 2) as u128 / len.max(1) as u128) as usize;
                take = fit.clamp(1, n / 2);
            }
        }
    }
}

fn flush_if_large(buf: &mut Vec<u8>, w: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    if buf.len() >= 1 << 20 {
        w(buf)?;
        buf.clear();
    }
    Ok(())
}

/// An inbox entry as a snapshot records it.
fn entry_image<'a>(
    slot: &'a Slot,
    state: &'a MsgState,
    roaming: &HashSet<*const StoredMessage>,
) -> EntryImage<'a> {
    let (kind, modified_at) = match slot.entry() {
        Entry::Message(_) if slot.online_only() => (3, 0),
        Entry::Message(_) => (0, 0),
        Entry::Recalled(_) => (1, 0),
        Entry::Modified(_, at) => (2, at),
    };
    EntryImage {
        seq: slot.seq(),
        expires_at: slot.expires_at(),
        kind,
        modified_at,
        msg: message_ref(slot.message(), Some(state), roaming),
    }
}

/// How an inbox or outbox entry names its message: by its place in roaming, or carrying it.
fn message_ref<'a>(
    m: &'a MsgArc,
    state: Option<&'a MsgState>,
    roaming: &HashSet<*const StoredMessage>,
) -> MsgRef<'a> {
    if roaming.contains(&MsgArc::as_ptr(m)) {
        MsgRef::Roaming {
            from: &m.from,
            to: &m.to,
            key: key_tuple(m.key),
        }
    } else {
        MsgRef::Orphan(msg_image(m, state.expect("captured with its message")))
    }
}

mod restore;
#[cfg(test)]
use restore::{check_account, check_arrivals};

#[cfg(test)]
mod tests;
