//! Snapshots of the whole store, and checkpoints: a snapshot is built from the journal, not
//! from the live store. The journal switches to a new segment (the cut), the previous snapshot
//! and the finished segments are replayed into a scratch in-memory store through the same
//! `apply` as ever, and that store is captured and written. The live store goes on meanwhile:
//! nothing it does waits for a snapshot. A recalled message is captured without its body,
//! which is how compaction erases recalled bodies from disk.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Mode, Store};
use crate::account::{UserId, lock_pair};
use crate::callback::{Origin, Platform, Queued};
use crate::codec::{
    self, AccountImage, AccountImageV1, ConvImage, EntryImage, MsgImage, MsgRef, OutboxEntryImage,
    OutboxImage, RetiredImage, SnapshotEnd, StateImage,
};
use crate::config::Config;
use crate::device::{DeviceId, DeviceSlot};
use crate::error::Error;
use crate::hooks::NoHooks;
use crate::inbox::{Entry, Inbox, Slot};
use crate::journal::Journal;
use crate::journal::{Recovered, kind, push_frame};
use crate::key::MsgKey;
use crate::message::{ARRIVAL_LIMIT, Content, MsgArc, MsgState, StoredMessage};
use crate::roaming::Conversation;

/// The store at one cut, holding shared records and copies of their state (a recall after the
/// cut changes the record, not the copy).
pub(super) struct Capture {
    conversations: Vec<ConvCapture>,
    accounts: Vec<AccountCapture>,
    retired: Vec<(UserId, u64)>,
    outbox: OutboxCapture,
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
        }
    }

    /// Applies one recovered record: a snapshot record or a journal operation.
    pub(super) fn recover(&self, rec: Recovered<'_>) -> Result<(), String> {
        match rec {
            Recovered::Op(bytes) => {
                let op = codec::decode_op(bytes, |n| self.intern(n)).map_err(|e| e.0)?;
                self.apply(&op, Mode::Replay)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Recovered::Snapshot {
                kind: kind::SNAP_CONVERSATION,
                payload,
            } => {
                let img: ConvImage<'_> = codec::decode(payload).map_err(|e| e.0)?;
                self.restore_conversation(img).map_err(|e| e.to_string())
            }
            Recovered::Snapshot {
                kind: kind::SNAP_ACCOUNT2,
                payload,
            } => {
                let img: AccountImage<'_> = codec::decode(payload).map_err(|e| e.0)?;
                self.restore_account(img).map_err(|e| e.to_string())
            }
            Recovered::Snapshot {
                kind: kind::SNAP_ACCOUNT,
                payload,
            } => {
                let img: AccountImageV1<'_> = codec::decode(payload).map_err(|e| e.0)?;
                self.restore_account(img.upgrade(self.now()))
                    .map_err(|e| e.to_string())
            }
            Recovered::Snapshot {
                kind: kind::SNAP_CONVERSATION_MORE,
                payload,
            } => {
                let img: ConvImage<'_> = codec::decode(payload).map_err(|e| e.0)?;
                self.restore_conversation_more(img)
                    .map_err(|e| e.to_string())
            }
            Recovered::Snapshot {
                kind: kind::SNAP_ACCOUNT_MORE,
                payload,
            } => {
                let img: AccountImage<'_> = codec::decode(payload).map_err(|e| e.0)?;
                self.restore_account_more(img).map_err(|e| e.to_string())
            }
            Recovered::Snapshot {
                kind: kind::SNAP_OUTBOX,
                payload,
            } => {
                let img: OutboxImage<'_> = codec::decode(payload).map_err(|e| e.0)?;
                self.restore_outbox(img).map_err(|e| e.to_string())
            }
            Recovered::Snapshot {
                kind: kind::SNAP_RETIRED,
                payload,
            } => {
                let img: RetiredImage<'_> = codec::decode(payload).map_err(|e| e.0)?;
                let mut retired = self.inner.retired.lock();
                for (user, next) in img.accounts {
                    retired.insert(UserId::new(user).map_err(|e| e.to_string())?, next);
                }
                Ok(())
            }
            Recovered::Snapshot {
                kind: kind::SNAP_END,
                payload,
            } => {
                let end: SnapshotEnd = codec::decode(payload).map_err(|e| e.0)?;
                let found = (
                    self.inner.accounts.len() as u64,
                    self.inner.conversations.len() as u64,
                );
                if found != (end.accounts, end.conversations) {
                    return Err(format!("snapshot lists {end:?} but holds {found:?}"));
                }
                Ok(())
            }
            Recovered::Snapshot { kind, .. } => Err(format!("unknown snapshot record kind {kind}")),
        }
    }

    /// The store's shared `UserId` for `name` (a new one for a name not yet known).
    fn intern(&self, name: &str) -> Result<UserId, Error> {
        match self.cell(name) {
            Some(cell) => Ok(cell.id.clone()),
            None => UserId::new(name),
        }
    }

    fn restore_message(&self, img: &MsgImage<'_>) -> Result<StoredMessage, Error> {
        let state = match &img.state {
            StateImage::Live { body_json, custom } => MsgState::Live(
                Content::from_trusted_json(body_json, *custom)
                    .with_origin_device(img.origin_device),
            ),
            StateImage::Recalled { by, at } => MsgState::Recalled {
                by: self.intern(by)?,
                at: *at,
            },
        };
        let sender_copy = codec::sender_copy_from_code(img.sender_copy & 0x1f)
            .map_err(|e| Error::Internal(e.0))?;
        let control =
            crate::message::SendControl::from_bits((img.sender_copy >> 5) & 3).expect("two bits");
        if img.arrival >= ARRIVAL_LIMIT {
            return Err(Error::Internal(format!(
                "the snapshot gives a message arrival number {}, past the limit {ARRIVAL_LIMIT}",
                img.arrival
            )));
        }
        Ok(StoredMessage::restore(
            self.intern(img.from)?,
            self.intern(img.to)?,
            MsgKey::new(img.key.0, img.key.1, img.key.2),
            img.arrival,
            sender_copy,
            img.sender_copy & 0x80 != 0,
            state,
        )
        .with_control(control))
    }

    fn restore_conversation(&self, img: ConvImage<'_>) -> Result<(), Error> {
        let (a, b) = (UserId::new(img.a)?, UserId::new(img.b)?);
        let messages = img
            .messages
            .iter()
            .map(|m| self.restore_message(m).map(MsgArc::new))
            .collect::<Result<Vec<_>, _>>()?;
        if self.conversation(&a, &b).is_some() {
            return Err(Error::Internal(format!(
                "the snapshot lists the conversation of {a} and {b} twice"
            )));
        }
        let newest = messages.iter().map(|m| m.arrival()).max().unwrap_or(0);
        check_arrivals(img.next_arrival, img.read_mark, newest).map_err(|why| {
            Error::Internal(format!(
                "the snapshot's conversation of {a} and {b} is damaged: {why}"
            ))
        })?;
        let mut conv = Conversation::restore(a, b, img.next_arrival, img.read_mark, messages);
        let [a, b] = conv.users().clone();
        let accounts = &self.inner.accounts;
        if a == b {
            return Err(Error::Internal(format!(
                "the snapshot lists a conversation of {a} with itself"
            )));
        }
        let (ca, cb) = (accounts.cell(&a)?, accounts.cell(&b)?);
        let key = self.conv_key_of(ca, cb);
        // Each lock alone: nobody else touches a store being restored.
        let heads = [ca.state.lock().conversations, cb.state.lock().conversations];
        conv.link(heads);
        let (n, conv) = self.add_conversation(key, conv, &mut false)?;
        self.rehint(&key, &conv.lock(), 0);
        ca.state.lock().conversations = n;
        cb.state.lock().conversations = n;
        Ok(())
    }

    /// The message a snapshot record names: in roaming, or carried whole.
    fn restore_ref(&self, r: &MsgRef<'_>) -> Result<MsgArc, Error> {
        match r {
            MsgRef::Roaming { from, to, key } => {
                let (from, to) = (self.intern(from)?, self.intern(to)?);
                let key = MsgKey::new(key.0, key.1, key.2);
                let conv = self.conversation(&from, &to);
                conv.and_then(|c| c.lock().find(&from, key).cloned())
                    .ok_or_else(|| {
                        Error::Internal(format!(
                            "a record names message {key} from {from} that the snapshot lacks"
                        ))
                    })
            }
            MsgRef::Orphan(m) => Ok(MsgArc::new(self.restore_message(m)?)),
        }
    }

    fn restore_outbox(&self, img: OutboxImage<'_>) -> Result<(), Error> {
        let mut entries = std::collections::VecDeque::with_capacity(img.entries.len());
        for e in &img.entries {
            let platform = Platform::from_code(e.platform)
                .ok_or_else(|| Error::Internal(format!("unknown platform {}", e.platform)))?;
            let origin = Origin {
                platform,
                client_ip: e.client_ip.to_owned(),
            };
            let msg = || -> Result<MsgArc, Error> {
                let r = e
                    .msg
                    .as_ref()
                    .ok_or_else(|| Error::Internal("an outbox entry lacks its message".into()))?;
                self.restore_ref(r)
            };
            let queued = match e.kind {
                0 => Queued::AfterSend {
                    msg: msg()?,
                    online_only: e.online_only,
                    unread: e.unread,
                },
                1 => Queued::AfterRecall {
                    msg: msg()?,
                    unread: e.unread,
                    at: e.at,
                },
                2 => Queued::AfterRead {
                    report: self.intern(e.report)?,
                    peer: self.intern(e.peer)?,
                    at: e.at,
                    unread: e.unread,
                },
                k => return Err(Error::Internal(format!("unknown outbox entry kind {k}"))),
            };
            entries.push_back((e.id, origin, queued));
        }
        // One frame of the outbox after another (`OUTBOX_CHUNK`), each with the same numbers.
        let mut outbox = self.inner.outbox.lock();
        outbox.next_id = img.next_id;
        outbox.dropped = img.dropped;
        outbox.entries.extend(entries);
        Ok(())
    }

    /// More messages of a conversation a record before this one restored
    /// (`SNAP_CONVERSATION_MORE`), with the same arrival numbers.
    fn restore_conversation_more(&self, img: ConvImage<'_>) -> Result<(), Error> {
        let (a, b) = (UserId::new(img.a)?, UserId::new(img.b)?);
        let (key, conv) = self.conversation_keyed(&a, &b).ok_or_else(|| {
            Error::Internal(format!(
                "the snapshot continues a conversation of {a} and {b} it did not begin"
            ))
        })?;
        let messages = img
            .messages
            .iter()
            .map(|m| self.restore_message(m).map(MsgArc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let newest = messages.iter().map(|m| m.arrival()).max().unwrap_or(0);
        let mut c = conv.lock();
        check_arrivals(c.next_arrival(), img.read_mark, newest)
            .and_then(|()| {
                (img.next_arrival == c.next_arrival())
                    .then_some(())
                    .ok_or_else(|| format!("next arrival {} changed", img.next_arrival))
            })
            .map_err(|why| {
                Error::Internal(format!(
                    "the snapshot's conversation of {a} and {b} is damaged: {why}"
                ))
            })?;
        let before = c.hint();
        c.extend_restored(messages);
        self.rehint(&key, &c, before);
        Ok(())
    }

    /// More inbox entries and unread counts of an account a record before this one restored
    /// (`SNAP_ACCOUNT_MORE`).
    fn restore_account_more(&self, img: AccountImage<'_>) -> Result<(), Error> {
        let cell = self.inner.accounts.cell(&UserId::new(img.user)?)?;
        let damaged = |why: String| {
            Error::Internal(format!(
                "the snapshot's account {} is damaged: {why}",
                cell.id
            ))
        };
        if !cell.state.lock().alive {
            return Err(damaged("continued before it began".into()));
        }
        if !img.devices.is_empty() {
            return Err(damaged("devices in a continuation record".into()));
        }
        let slots = self.restore_slots(&img.entries)?;
        let unread = self.restore_unread(cell, &img.unread)?;
        let mut state = cell.state.lock();
        if state.inbox.next_seq() != img.next_seq {
            return Err(damaged(format!(
                "next sequence number {} changed",
                img.next_seq
            )));
        }
        (state.inbox.extend_restored(slots))
            .map_err(|seq| damaged(format!("inbox entry {seq} out of order")))?;
        state.unread_total = state.unread_total.saturating_add(unread);
        Ok(())
    }

    fn restore_slots(&self, entries: &[EntryImage<'_>]) -> Result<Vec<Slot>, Error> {
        let mut slots = Vec::with_capacity(entries.len());
        for e in entries {
            let msg = self.restore_ref(&e.msg)?;
            let entry = match e.kind {
                0 | 3 => Entry::Message(msg),
                1 => Entry::Recalled(msg),
                2 => Entry::Modified(msg, e.modified_at),
                k => return Err(Error::Internal(format!("unknown inbox entry kind {k}"))),
            };
            slots.push(Slot::new(e.seq, entry, e.expires_at, e.kind == 3));
        }
        Ok(slots)
    }

    /// Sets `cell`'s unread counts per peer; returns their sum.
    fn restore_unread(
        &self,
        cell: &crate::account::AccountCell,
        unread: &[(&str, u32)],
    ) -> Result<u32, Error> {
        let mut total = 0u32;
        for (peer, n) in unread {
            let peer = self.intern(peer)?;
            if peer == cell.id {
                return Err(Error::Internal(format!(
                    "{} has unread messages from itself",
                    cell.id
                )));
            }
            let conv = match self.conversation(&cell.id, &peer) {
                Some(conv) => conv,
                None => {
                    let peer_cell = self.inner.accounts.cell(&peer)?;
                    let (mut xs, mut ys) = lock_pair(cell, peer_cell);
                    self.conversation_or_new((cell, &mut xs), (peer_cell, &mut ys))?
                }
            };
            let mut c = conv.lock();
            let side = c.side(&cell.id);
            c.unread[side] = *n;
            total = total.saturating_add(*n);
        }
        Ok(total)
    }

    fn restore_account(&self, img: AccountImage<'_>) -> Result<(), Error> {
        let cell = self.inner.accounts.cell(&UserId::new(img.user)?)?;
        check_account(&img).map_err(|why| {
            Error::Internal(format!(
                "the snapshot's account {} is damaged: {why}",
                img.user
            ))
        })?;
        let slots = self.restore_slots(&img.entries)?;
        let total = self.restore_unread(cell, &img.unread)?;
        {
            let mut state = cell.state.lock();
            state.alive = true;
            state.unread_total = total;
            state.inbox = Inbox::restore(img.next_seq, slots);
            for (id, cursor, last_seen) in &img.devices {
                state
                    .devices
                    .insert(DeviceId::from(*id), DeviceSlot::new(*cursor, *last_seen));
            }
            self.inner.accounts.set_live(cell, true);
        }
        Ok(())
    }
}

/// What an account's first record must hold for its inbox to go on numbering as it did (a
/// record whose checksum is right but whose content is not — written by a bug, or by hand —
/// would otherwise give out a sequence number again): a next sequence number of at least 1,
/// entries in order below it, device cursors not past the last entry. (Continuation
/// records are checked as they extend the inbox, `Inbox::extend_restored`.)
fn check_account(img: &AccountImage<'_>) -> Result<(), String> {
    if img.next_seq == 0 {
        return Err("next sequence number 0".into());
    }
    let mut last = 0;
    for e in &img.entries {
        if e.seq <= last || e.seq >= img.next_seq {
            return Err(format!(
                "inbox entry {} out of order (after {last}, next {})",
                e.seq, img.next_seq
            ));
        }
        last = e.seq;
    }
    if let Some((device, cursor, _)) = img.devices.iter().find(|d| d.1 >= img.next_seq) {
        return Err(format!(
            "device {device}'s cursor {cursor} is past the last entry {}",
            img.next_seq - 1
        ));
    }
    Ok(())
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

/// What a conversation's arrival numbers must satisfy to be restored: the next one is past
/// every stored message's (numbers are never handed out twice) and within the 48 bits a record
/// keeps, and each side's read mark is below it (else messages yet to come would count as
/// read). Arrival numbers start at 1, so the next is never 0.
fn check_arrivals(next: u64, read_mark: [u64; 2], newest: u64) -> Result<(), String> {
    if next == 0 || next <= newest {
        return Err(format!(
            "next arrival {next} is not past its newest message's ({newest})"
        ));
    }
    if next > ARRIVAL_LIMIT {
        return Err(format!(
            "next arrival {next} is past the limit {ARRIVAL_LIMIT}"
        ));
    }
    if let Some(m) = read_mark.iter().find(|&&m| m >= next) {
        return Err(format!(
            "read mark {m} is not below the next arrival {next}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManualClock, MsgElement, SendRequest};

    fn snapshot_of(store: &Store, limit: usize) -> Vec<u8> {
        let capture = store.capture();
        crate::journal::snapshot_bytes(7, |w| capture.write_limited(w, limit)).unwrap()
    }

    fn restored(bytes: &[u8], config: &Config) -> Store {
        let store = Store::empty(config.clone()).unwrap();
        crate::journal::read_snapshot(bytes, &mut |rec| store.recover(rec)).unwrap();
        store
    }

    fn kinds(bytes: &[u8]) -> Vec<u8> {
        let mut kinds = Vec::new();
        let store = Store::empty(Config::default()).unwrap();
        crate::journal::read_snapshot(bytes, &mut |rec| {
            if let Recovered::Snapshot { kind, .. } = rec {
                kinds.push(kind);
            }
            store.recover(rec)
        })
        .unwrap();
        kinds
    }

    /// A conversation, an inbox, unread counts and deleted accounts too large for one record
    /// are written in several and read back the same as when written whole.
    #[test]
    fn records_past_the_limit_are_split_and_read_back_whole() {
        let clock = ManualClock::new(1_700_000_000);
        let config = Config::default().with_clock(clock);
        let src = Store::in_memory(config.clone()).unwrap();
        let peers: Vec<String> = (0..60).map(|i| format!("peer-{i}")).collect();
        let gone: Vec<String> = (0..200).map(|i| format!("gone-{i}")).collect();
        src.import_accounts(&["big-a", "big-b"]).unwrap();
        src.import_accounts(&peers).unwrap();
        for chunk in gone.chunks(100) {
            src.import_accounts(chunk).unwrap();
        }
        let mut keys = Vec::new();
        for i in 0..400u32 {
            let text = format!("message number {i} of a long conversation");
            let mut req = SendRequest::new("big-a", "big-b", i, vec![MsgElement::text(&text)]);
            req.sender_copy = crate::SenderCopy::RoamingAndDevices;
            keys.push(src.send(req).unwrap().msg_key.to_string());
        }
        for key in keys.iter().step_by(7) {
            src.recall("administrator", "big-a", "big-b", key).unwrap();
        }
        for (i, p) in peers.iter().enumerate() {
            let req = SendRequest::new(p, "big-b", i as u32, vec![MsgElement::text("hi")]);
            src.send(req).unwrap();
        }
        for g in &gone {
            src.delete_account(g).unwrap();
        }
        drop(src.connect("big-b", "phone").unwrap());
        src.ack("big-b", "phone", 3).unwrap();

        let whole = snapshot_of(&src, codec::MAX_PAYLOAD);
        let split = snapshot_of(&src, 1024);
        let (k_whole, k_split) = (kinds(&whole), kinds(&split));
        assert!(!k_whole.contains(&kind::SNAP_CONVERSATION_MORE));
        let count = |k: &[u8], kind: u8| k.iter().filter(|&&x| x == kind).count();
        assert!(
            count(&k_split, kind::SNAP_CONVERSATION_MORE) > 5,
            "{k_split:?}"
        );
        assert!(count(&k_split, kind::SNAP_ACCOUNT_MORE) > 5, "{k_split:?}");
        assert!(count(&k_split, kind::SNAP_RETIRED) > 1, "{k_split:?}");
        // Each record of an inbox holds at most as many entries as take half the limit in
        // memory: its decode claims memory, not bytes (`codec::MAX_IMAGE_CLAIM`).
        let most = 1024 / 2 / std::mem::size_of::<codec::EntryImage<'_>>();
        let mut records = 0;
        crate::journal::read_snapshot(&split, &mut |rec| {
            if let Recovered::Snapshot { kind, payload } = rec
                && (kind == kind::SNAP_ACCOUNT2 || kind == kind::SNAP_ACCOUNT_MORE)
            {
                let img: AccountImage<'_> = codec::decode(payload).unwrap();
                assert!(img.entries.len() <= most, "{} > {most}", img.entries.len());
                records += 1;
            }
            Ok(())
        })
        .unwrap();
        assert!(records > 5, "{records}");

        // Both read back to the same store: captured again whole, the same bytes.
        let (a, b) = (restored(&whole, &config), restored(&split, &config));
        let again = snapshot_of(&a, codec::MAX_PAYLOAD);
        assert_eq!(again.len(), whole.len());
        assert!(again == snapshot_of(&b, codec::MAX_PAYLOAD));
        let history = |s: &Store| {
            let q = crate::HistoryQuery::new("big-a", "big-b", 20);
            s.history(&q).unwrap().messages.len()
        };
        assert_eq!(history(&b), 20);
        assert_eq!(b.inbox("big-b", 0).unwrap(), src.inbox("big-b", 0).unwrap());
        let unread = |s: &Store| {
            let mut all = s.unread_all("big-b").unwrap();
            all.sort();
            all.iter()
                .map(|(p, n)| format!("{p}:{n}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(unread(&b).len(), 61);
        assert_eq!(unread(&b), unread(&src));
        // Each restored conversation's slot says where its messages are (`Store::rehint`),
        // the long one's continued in records of their own too.
        for s in [&a, &b] {
            for (x, y) in [("big-a", "big-b"), ("peer-3", "big-b")] {
                let (x, y) = (UserId::new(x).unwrap(), UserId::new(y).unwrap());
                let (key, conv) = s.conversation_keyed(&x, &y).unwrap();
                let hint = conv.lock().hint();
                assert_ne!(hint, 0);
                assert_eq!(s.inner.conversations.get_hinted(&key).unwrap().1, hint);
            }
        }
    }

    /// A snapshot record past the frame limit is refused, not written: it could not be read
    /// back. What came before it in the buffer stays.
    #[test]
    fn a_snapshot_record_past_the_frame_limit_is_refused() {
        let mut buf = Vec::new();
        snap_frame(&mut buf, kind::SNAP_END, codec::MAX_PAYLOAD, |b| {
            b.extend_from_slice(b"small")
        })
        .unwrap();
        let kept = buf.len();
        let big = snap_frame(&mut buf, kind::SNAP_OUTBOX, codec::MAX_PAYLOAD, |b| {
            b.resize(b.len() + codec::MAX_PAYLOAD + 1, 7)
        });
        assert!(big.unwrap_err().to_string().contains("limit"));
        // One item too large for a record on its own: the split cannot help.
        let mut w = |_: &[u8]| -> io::Result<()> { Ok(()) };
        let one = split_record(
            &mut buf,
            &mut w,
            100,
            ((kind::SNAP_CONVERSATION, 8), 1),
            3,
            |r, b| b.resize(b.len() + 160 * r.len(), 1),
        );
        assert!(one.unwrap_err().to_string().contains("limit"));
        assert_eq!(buf.len(), kept);
        snap_frame(&mut buf, kind::SNAP_OUTBOX, codec::MAX_PAYLOAD, |b| {
            b.resize(b.len() + codec::MAX_PAYLOAD, 7)
        })
        .unwrap();
    }

    #[test]
    fn damaged_arrival_numbers_are_refused_on_restore() {
        assert_eq!(check_arrivals(1, [0, 0], 0), Ok(()));
        assert_eq!(check_arrivals(8, [7, 3], 7), Ok(()));
        assert_eq!(
            check_arrivals(ARRIVAL_LIMIT, [0, 0], ARRIVAL_LIMIT - 1),
            Ok(())
        );
        // Numbers would be handed out again, or read marks wrap below zero.
        assert!(check_arrivals(0, [0, 0], 0).is_err());
        assert!(check_arrivals(7, [0, 0], 7).is_err());
        assert!(check_arrivals(3, [0, 0], 7).is_err());
        assert!(check_arrivals(ARRIVAL_LIMIT + 1, [0, 0], 0).is_err());
        // A read mark at or past the next arrival marks messages to come as read.
        assert!(check_arrivals(8, [8, 0], 7).is_err());
        assert!(check_arrivals(8, [0, u64::MAX], 7).is_err());
    }

    /// An account record whose inbox would number an entry again, or whose device cursor
    /// is past its last entry, is refused on restore.
    #[test]
    fn damaged_inbox_numbers_are_refused_on_restore() {
        let entry = |seq: u64| codec::EntryImage {
            seq,
            expires_at: 1,
            kind: 1,
            modified_at: 0,
            msg: codec::MsgRef::Roaming {
                from: "a",
                to: "b",
                key: (1, 2, 3),
            },
        };
        let account = |next_seq: u64, seqs: &[u64], cursor: u64| AccountImage {
            user: "b",
            next_seq,
            entries: seqs.iter().map(|&s| entry(s)).collect(),
            devices: vec![("phone", cursor, 0)],
            unread: vec![],
        };
        assert_eq!(check_account(&account(8, &[3, 5, 7], 7)), Ok(()));
        assert_eq!(check_account(&account(1, &[], 0)), Ok(()));
        assert!(check_account(&account(0, &[], 0)).is_err());
        assert!(
            check_account(&account(2, &[5], 1)).is_err(),
            "an entry past next"
        );
        assert!(
            check_account(&account(8, &[5, 3], 5)).is_err(),
            "out of order"
        );
        assert!(check_account(&account(8, &[5, 5], 5)).is_err(), "twice");
        assert!(
            check_account(&account(8, &[5], 8)).is_err(),
            "a cursor past the end"
        );
    }
}
