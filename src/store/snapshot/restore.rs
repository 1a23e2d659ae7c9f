//! Restoring a snapshot and replaying the journal into a store (`Store::recover`): each
//! snapshot record is checked as it is read — arrival numbers, inbox numbering, device
//! cursors, continuation order — so that a record that is well formed but wrong fails the
//! open rather than makes the store give a number out again.

use crate::account::{UserId, lock_pair};
use crate::callback::{Origin, Platform, Queued};
use crate::codec::{
    self, AccountImage, AccountImageV1, ConvImage, EntryImage, MsgImage, MsgRef, OutboxImage,
    RetiredImage, SnapshotEnd, StateImage,
};
use crate::device::{DeviceId, DeviceSlot};
use crate::error::Error;
use crate::inbox::{Entry, Inbox, Slot};
use crate::journal::{Recovered, kind};
use crate::key::MsgKey;
use crate::message::{ARRIVAL_LIMIT, Content, MsgArc, MsgState, StoredMessage};
use crate::roaming::Conversation;
use crate::store::{Mode, Store};

impl Store {
    /// Applies one recovered record: a snapshot record or a journal operation.
    pub(in crate::store) fn recover(&self, rec: Recovered<'_>) -> Result<(), String> {
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
                    let user = UserId::new(user).map_err(|e| e.to_string())?;
                    // A deleted account keeps its (dormant) cell, as a replay from the start
                    // leaves it: a record after the cut may name it — a read mark that raced
                    // its peer's delete — and replays only as it applied live.
                    self.inner.accounts.cell(&user).map_err(|e| e.to_string())?;
                    retired.insert(user, next);
                }
                Ok(())
            }
            Recovered::Snapshot {
                kind: kind::SNAP_SEQ_FLOOR,
                payload,
            } => {
                let floor: u64 = codec::decode(payload).map_err(|e| e.0)?;
                (self.inner.seq_floor).fetch_max(floor, std::sync::atomic::Ordering::Relaxed);
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
pub(super) fn check_account(img: &AccountImage<'_>) -> Result<(), String> {
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
        // No correct store keeps one (`apply` clamps every cursor to the last entry): the
        // record is damaged — a next sequence number gone back, most likely, which would
        // give out numbers devices have confirmed.
        return Err(format!(
            "device {device}'s cursor {cursor} is past the last entry {}",
            img.next_seq - 1
        ));
    }
    Ok(())
}

/// What a conversation's arrival numbers must satisfy to be restored: the next one is past
/// every stored message's (numbers are never handed out twice) and within the 48 bits a record
/// keeps, and each side's read mark is below it (else messages yet to come would count as
/// read). Arrival numbers start at 1, so the next is never 0.
pub(super) fn check_arrivals(next: u64, read_mark: [u64; 2], newest: u64) -> Result<(), String> {
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
