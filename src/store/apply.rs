//! `Store::apply`: the one function every mutation goes through, live and on replay. Each
//! `apply_*` takes its locks (in the crate's order), validates against the current state,
//! records the operation (live only), stores the record's ticket on everything it changes
//! (R6: readers wait for it), then mutates — which cannot fail once recorded.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;

use super::{Applied, Found, Mode, Role, Store, no_device};
use crate::account::{AccountState, UserId, lock_pair};
use crate::callback::{Origin, Outbox, Queued};
use crate::device::{DeviceId, DeviceSlot, Live, Signal};
use crate::error::{Error, Result};
use crate::inbox::{Entry, Inbox, ONLINE_GRACE_SECS};
use crate::key::MsgKey;
use crate::message::RecallNotice;
use crate::message::{MsgArc, SenderCopy, StoredMessage};
use crate::op::{ModifyOp, Op, SendKind, SendOp};
use crate::roaming::Conversation;

impl Store {
    /// Applies one operation: the single path shared by live calls and replay.
    pub(crate) fn apply(&self, op: &Op, mode: Mode) -> Result<Applied> {
        self.apply_found(op, mode, None)
    }

    /// [`apply`](Store::apply), with the parties' cells of a send, recall or modify as the
    /// request found them ([`Found`]; other operations ignore it).
    pub(crate) fn apply_found(&self, op: &Op, mode: Mode, found: Found) -> Result<Applied> {
        match op {
            Op::ImportAccount { user } => self.apply_import(op, user, mode),
            Op::DeleteAccount { user, read_all } => self.apply_delete(op, user, *read_all, mode),
            Op::Send(send) => self.apply_send(op, send, mode, found),
            Op::Recall {
                from,
                to,
                key,
                by,
                at,
                origin,
                notice,
            } => {
                let notice = notice.unwrap_or_else(|| self.inner.config.notice_lifetime());
                let origin = origin.as_ref();
                self.apply_recall(op, from, to, *key, by, *at, origin, notice, mode, found)
            }
            Op::Modify(m) => self.apply_modify(op, m, mode, found),
            Op::SetRead {
                reader,
                peer,
                at,
                origin,
                until,
            } => self.apply_set_read(op, (reader, peer), *at, *until, origin.as_ref(), mode),
            Op::OutboxAck { upto } => {
                // Journaled under the outbox's lock, as every operation that changes it is
                // (`record_queueing`).
                let mut outbox = self.inner.outbox.lock();
                let ticket = self.record(op, mode)?;
                Ok(Applied::Purged(outbox.ack(*upto, ticket)))
            }
            Op::Connect {
                account,
                device,
                resume,
                at,
            } => self.apply_connect(op, account, device, *resume, *at, mode),
            Op::Cursor {
                account,
                device,
                cursor,
                at,
            } => {
                let cell = self.cell_as(account, Role::Plain)?;
                let mut guard = cell.state.lock();
                let state = &mut *guard;
                let last_seq = state.inbox.last_seq();
                let slot = state
                    .devices
                    .get_mut(device)
                    .ok_or_else(|| no_device(device))?;
                // An ack that moves nothing (a repeat), from a device seen moments ago, is not
                // journaled: a client re-acking in a loop would otherwise write a record each
                // time and make every commit of its account wait for them.
                // A cursor past the inbox's end names entries this store never numbered (a
                // client ahead of a restored store, `apply_connect`): it confirms nothing —
                // taking it as the inbox's end would confirm entries numbered since, which
                // the device may not have.
                let within = *cursor <= last_seq;
                let moves = within && *cursor > slot.cursor;
                let seen_lately = at.saturating_sub(slot.last_seen) < LAST_SEEN_GRAIN_SECS;
                if mode == Mode::Live && !moves && seen_lately {
                    return Ok(Applied::Done);
                }
                state.ticket = self.record(op, mode)?;
                if within {
                    slot.cursor = slot.cursor.max(*cursor);
                }
                if *at != 0 {
                    slot.last_seen = *at;
                }
                Ok(Applied::Done)
            }
            Op::ForgetDevices {
                account,
                devices,
                at,
                idle,
            } => {
                let Some(mut state) = self.purged_account(account, mode)? else {
                    return Ok(Applied::Purged(0));
                };
                state.ticket = self.record(op, mode)?;
                // The live purge's setting, not this process's: replay forgets what it forgot.
                let idle = idle.unwrap_or(self.inner.config.device_idle_secs);
                let mut forgotten = 0;
                for d in devices {
                    // Connected (or seen) since the purge chose it: it stays. The same test
                    // holds on replay, where the connect's record precedes this one.
                    if state.devices.get(d).is_some_and(|s| {
                        !s.is_connected() && s.last_seen.saturating_add(idle) <= *at
                    }) {
                        state.devices.remove(d);
                        forgotten += 1;
                    }
                }
                Ok(Applied::Purged(forgotten))
            }
            Op::PurgeConversation { a, b, cutoff } => {
                let Some((key, conv)) = self.conversation_keyed(a, b) else {
                    return Ok(Applied::Purged(0));
                };
                let mut c = conv.lock();
                c.ticket = self.record(op, mode)?;
                let before = c.hint();
                let purged = c.trim(*cutoff);
                self.rehint(&key, &c, before);
                Ok(Applied::Purged(purged))
            }
            Op::SeqFloor { floor } => self.apply_seq_floor(op, *floor, mode),
            Op::PurgeInbox {
                account,
                at,
                retention,
            } => {
                let Some(mut state) = self.purged_account(account, mode)? else {
                    return Ok(Applied::Purged(0));
                };
                state.ticket = self.record(op, mode)?;
                // The live purge's retention, not this process's (see `ForgetDevices`).
                let retention = retention.unwrap_or(self.inner.config.retention_secs);
                let (purged, erased) = state.inbox.purge(*at, at.saturating_sub(retention));
                if erased {
                    self.note_erased(state.ticket, mode);
                }
                Ok(Applied::Purged(purged))
            }
        }
    }

    /// The state, locked, of the account a purge (`PurgeInbox`, `ForgetDevices`) works on.
    /// The purge chose a live account, then waits for its lock, which a delete may hold:
    /// under the lock it must find the account still live, or record nothing — a record after
    /// the delete's would make replay, where the delete comes first, refuse the journal. On
    /// replay, such a record (journaled by versions before this check) is passed over
    /// (`None`): live it changed nothing, a deleted account's state being empty.
    fn purged_account(
        &self,
        account: &UserId,
        mode: Mode,
    ) -> Result<Option<MutexGuard<'_, AccountState>>> {
        let cell = match mode {
            Mode::Live => self.cell_as(account, Role::Plain)?,
            Mode::Replay => {
                (self.inner.accounts.any(account)).ok_or_else(|| Role::Plain.missing(account))?
            }
        };
        let state = cell.state.lock();
        match (state.alive, mode) {
            (true, _) => Ok(Some(state)),
            (false, Mode::Live) => Err(Role::Plain.missing(account)),
            (false, Mode::Replay) => Ok(None),
        }
    }

    fn apply_import(&self, op: &Op, user: &UserId, mode: Mode) -> Result<Applied> {
        // Import and delete decide whether the account is live under its state lock, held
        // while they record: memory and journal order an import and a delete of the same
        // account alike.
        let cell = self.inner.accounts.cell(user)?;
        let mut state = cell.state.lock();
        if state.alive {
            return Ok(Applied::Unchanged);
        }
        let ticket = self.record(op, mode)?;
        state.reset();
        state.alive = true;
        state.ticket = ticket;
        // A deleted namesake's numbers go on (none is given twice), above the sequence floor.
        let next = self.inner.retired.lock().remove(user).unwrap_or(1);
        let floor = self.inner.seq_floor.load(Ordering::Relaxed);
        if next.max(floor) > 1 {
            state.inbox = Inbox::starting_at(next.max(floor));
        }
        // The membership ticket before the live flag: a reader that finds the account (or
        // does not, after a delete) then waits for at least this ticket (R6).
        self.inner.membership.fetch_max(ticket, Ordering::AcqRel);
        self.inner.accounts.set_live(cell, true);
        Ok(Applied::Done)
    }

    /// `Op::SeqFloor`: every live account's inbox goes on at `floor` or above, as will an
    /// account imported later, deleted before or not (`seq_floor`, `apply_import`). Only
    /// `Store::raise_seq_floor` makes one, at open before anyone is served, and replay
    /// applies it in journal order: no other operation runs meanwhile, so an entry numbered
    /// after this record is numbered above the floor, live and on replay alike. Each account's
    /// lock is taken alone.
    fn apply_seq_floor(&self, op: &Op, floor: u64, mode: Mode) -> Result<Applied> {
        let ticket = self.record(op, mode)?;
        if mode == Mode::Replay {
            self.inner.floors_replayed.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.seq_floor.fetch_max(floor, Ordering::Relaxed);
        for cell in self.inner.accounts.cells() {
            let mut state = cell.state.lock();
            state.inbox.raise_next_seq(floor);
            state.ticket = state.ticket.max(ticket);
        }
        Ok(Applied::Done)
    }

    fn apply_delete(&self, op: &Op, user: &UserId, read_all: bool, mode: Mode) -> Result<Applied> {
        let missing = || Error::AccountNotFound(user.to_string());
        let cell = self.inner.accounts.get(user).ok_or_else(missing)?;
        let mut state = cell.state.lock();
        if !state.alive {
            return Err(missing());
        }
        let ticket = self.record(op, mode)?;
        for slot in state.devices.values_mut() {
            slot.end_session();
        }
        let next = state.inbox.next_seq();
        // Its unread counts go, and with them what made them: its read marks move to the end
        // (`read_all`: every delete since this was added; a record from before replays as it
        // ran), so that a message from before counts as read if the account is imported again
        // (a recall of one must not take a later message's unread count). The peers' history
        // shows them read (IsPeerRead). The conversations stay (the peers' history keeps them).
        self.each_conversation(user, &state, |c| {
            let side = c.side(user);
            c.unread[side] = 0;
            if read_all {
                c.mark_read(user);
            }
            // Recorded before this conversation's lock was taken: an operation on it in
            // between (a purge, a read mark) may hold a later ticket, which must stay.
            c.ticket = c.ticket.max(ticket);
        });
        // The cell stays (lookups hand out plain references), empty and not live.
        state.reset();
        state.ticket = ticket;
        // Where its inbox goes on, under the state lock: an import of the account, which
        // takes it under the same lock, must find it (or a re-import would number its inbox
        // from 1 again while a replay goes on from `next`).
        self.inner.retired.lock().insert(user.clone(), next);
        self.inner.membership.fetch_max(ticket, Ordering::AcqRel);
        self.inner.accounts.set_live(cell, false);
        Ok(Applied::Done)
    }

    fn apply_send(&self, op: &Op, s: &SendOp, mode: Mode, found: Found) -> Result<Applied> {
        if s.from == s.to {
            return Err(self_send(&s.to));
        }
        let retention = s.retention.unwrap_or(self.inner.config.retention_secs);
        // Live only (a replayed send was accepted live), and not for history imports (which
        // deliver nothing: one past retention is only trimmed, as a migration expects).
        if mode == Mode::Live {
            if s.kind == SendKind::ImportHistory {
                check_not_ahead(s.key, s.at)?;
            } else {
                check_within_retention(s.key, s.at, retention)?;
            }
        }
        self.with_parties(
            &s.from,
            &s.to,
            found,
            true,
            || unreachable!("created on demand"),
            |fs, ts, c| {
                // An import is the same message in either direction (Tencent's importmsg). A
                // send may repeat one sent moments before under another MsgTimeStamp (a
                // client's retry, dated by the server anew each time): looked for live only
                // (`SendOp::retry_dedup`), since a record is a send that was not one.
                let existing = c.find(&s.from, s.key).or_else(|| match s.kind {
                    SendKind::Send if s.retry_dedup && mode == Mode::Live => {
                        c.find_retry(&s.from, s.key, &s.content)
                    }
                    SendKind::Send => None,
                    _ => c.find(&s.to, s.key),
                });
                if let Some(existing) = existing {
                    return Ok(Applied::Sent {
                        msg: existing.clone(),
                        duplicate: true,
                    });
                }
                if !c.can_take_arrival() {
                    return Err(Error::Internal(format!(
                        "the conversation of {} and {} has used every arrival number",
                        s.from, s.to
                    )));
                }
                let (ticket, mut outbox) = self.record_queueing(op, mode, s.origin.as_ref())?;
                (fs.ticket, ts.ticket, c.ticket) = (ticket, ticket, ticket);
                let msg = MsgArc::new(
                    StoredMessage::new(
                        s.from.clone(),
                        s.to.clone(),
                        s.key,
                        c.take_arrival(),
                        s.sender_copy,
                        s.kind == SendKind::ImportHistory,
                        s.content.with_origin_device(s.origin_device.as_deref()),
                    )
                    .with_control(s.control),
                );
                c.insert(msg.clone());
                if c.trim(s.at.saturating_sub(retention)) > 0 {
                    self.note_erased(ticket, mode);
                }
                if s.kind != SendKind::ImportHistory {
                    self.deliver_sent(fs, ts, c, s, &msg);
                }
                if let Some(origin) = &s.origin {
                    let queued = Queued::AfterSend {
                        msg: msg.clone(),
                        online_only: s.lifetime == 0,
                        unread: total_unread(ts),
                    };
                    queue(&mut outbox, origin, queued, ticket);
                }
                Ok(Applied::Sent {
                    msg,
                    duplicate: false,
                })
            },
        )
        .map_err(unknown_recipient)
    }

    /// Journals `op` ([`record`](Store::record)); for an operation that queues an
    /// after-callback (it has an `origin`), with the outbox's lock taken first and handed back
    /// held, for [`queue`] to use. So callbacks are numbered, and the outbox's ticket moves, in
    /// journal order: the order a replay numbers them in, so that a journaled `OutboxAck`
    /// names the same callbacks live and after a crash; and the ticket only grows, so the
    /// outbox never shows a callback before its operation is durable (R6). Taken by two
    /// threads in turn, numbers and tickets could cross (a test saw half of 12,000 callbacks
    /// of four threads numbered otherwise by the replay). Lock order: the outbox comes after
    /// the operation's accounts and conversation, the journal's own lock after it.
    fn record_queueing(
        &self,
        op: &Op,
        mode: Mode,
        origin: Option<&Origin>,
    ) -> Result<(u64, Option<MutexGuard<'_, Outbox>>)> {
        let outbox = origin.map(|_| self.inner.outbox.lock());
        let ticket = self.record(op, mode)?;
        Ok((ticket, outbox))
    }

    /// The inbox, unread and cache side of a send.
    fn deliver_sent(
        &self,
        fs: &mut AccountState,
        ts: &mut AccountState,
        c: &mut Conversation,
        s: &SendOp,
        msg: &MsgArc,
    ) {
        // MsgLifeTime 0: for the devices connected now, which get a short while to read it.
        let online_only = s.lifetime == 0;
        let expires_at = s.at
            + if online_only {
                ONLINE_GRACE_SECS
            } else {
                s.lifetime
            };
        ts.deliver(Entry::Message(msg.clone()), expires_at, s.at, online_only);
        if msg.counts_unread() {
            let side = c.side(&s.to);
            c.unread[side] = c.unread[side].saturating_add(1);
            ts.unread_total = ts.unread_total.saturating_add(1);
        }
        if s.sender_copy == SenderCopy::RoamingAndDevices {
            fs.deliver(Entry::Message(msg.clone()), expires_at, s.at, online_only);
        }
        // The sending device holds its own message (and is not sent it back).
        if let Some(live) = s
            .origin_device
            .as_ref()
            .and_then(|d| fs.devices.get_mut(d))
            .and_then(|slot| slot.live.as_mut())
        {
            live.cache.push(msg.clone());
        }
    }

    /// Locks both parties and their conversation in the crate's lock order and runs `f` on
    /// them: 90008 / 90003 when a party does not exist (or was deleted meanwhile), `missing()`
    /// when they are one account or have no conversation and `create` is false.
    /// `found`: the cells as the request found them ([`Found`]), used when they are live and
    /// carry `from` and `to`.
    pub(super) fn with_parties<R>(
        &self,
        from: &UserId,
        to: &UserId,
        found: Found,
        create: bool,
        missing: impl FnOnce() -> Error,
        f: impl FnOnce(&mut AccountState, &mut AccountState, &mut Conversation) -> Result<R>,
    ) -> Result<R> {
        let accounts = &self.inner.accounts;
        let cell = |n: u32, id: &UserId| {
            accounts
                .cell_numbered(n)
                .filter(|c| c.id == *id && c.is_live())
        };
        let hinted = found.and_then(|(f, t, c)| Some((cell(f, from)?, cell(t, to)?, c)));
        // `searched`: the request looked for these two cells' conversation (`hint` is what it
        // found, perhaps none).
        let ((nf, fc), (nt, tc), hint, searched) = match hinted {
            Some((fc, tc, c)) => ((fc.n, fc), (tc.n, tc), c, true),
            None => (
                self.numbered_as(from, Role::Acting)?,
                self.numbered_as(to, Role::Other)?,
                None,
                false,
            ),
        };
        if nf == nt {
            return Err(missing());
        }
        // Found before any lock is taken (the request's lookup found it already, or by the
        // cells' numbers and name hashes): a lock is a full barrier, and the cache misses of
        // the two accounts and the conversation overlap only if nothing orders them.
        let found = if searched && hint.is_none() && create {
            // The request found none: not looked for again, since `conversation_or_new`
            // looks under the table's writers' lock anyway (one made since is found there).
            None
        } else {
            self.conversation_hinted(fc, tc, hint)
        };
        if let Some(conv) = found {
            crate::table::prefetch(conv);
        }
        let (mut fs, mut ts) = lock_pair(fc, tc);
        if !fs.alive {
            return Err(Role::Acting.missing(from));
        }
        if !ts.alive {
            return Err(Role::Other.missing(to));
        }
        // Where the inboxes' next entries go, loading while the conversation is searched.
        fs.inbox.prefetch_tail();
        ts.inbox.prefetch_tail();
        let conv = match found {
            Some(conv) => conv,
            None if create => self.conversation_or_new((fc, &mut fs), (tc, &mut ts))?,
            None => return Err(missing()),
        };
        let mut c = conv.lock();
        if !create {
            // A recall, a client's recall or a modify: no message comes or goes, so they
            // stay where the conversation's slot says (`rehint`).
            return f(&mut fs, &mut ts, &mut c);
        }
        let before = c.hint();
        let r = f(&mut fs, &mut ts, &mut c);
        self.rehint(&self.conv_key_of(fc, tc), &c, before);
        r
    }

    /// [`with_parties`](Store::with_parties) for the live, unexpired message `key` from `from`
    /// to `to`, with recall's precedence: 90008, 90003, 20022, 20023.
    ///
    /// Past retention counts as not found live only: a replayed recall or modification was
    /// accepted live, when its message was within the retention of then, and the message is
    /// still there on replay (sends trim to the retention they ran under, purges to theirs);
    /// the retention at replay may be shorter.
    #[allow(clippy::too_many_arguments)]
    fn with_live_message<R>(
        &self,
        from: &UserId,
        to: &UserId,
        found: Found,
        key: MsgKey,
        at: u64,
        mode: Mode,
        f: impl FnOnce(&mut AccountState, &mut AccountState, &mut Conversation, MsgArc) -> Result<R>,
    ) -> Result<R> {
        let not_found = || Error::MessageNotFound {
            from: from.to_string(),
            to: to.to_string(),
            key,
        };
        self.with_parties(from, to, found, false, not_found, |fs, ts, c| {
            let expired = mode == Mode::Live
                && u64::from(key.time()) < at.saturating_sub(self.inner.config.retention_secs);
            let msg = c
                .find(from, key)
                .filter(|_| !expired)
                .cloned()
                .ok_or_else(not_found)?;
            if msg.is_recalled() {
                return Err(Error::AlreadyRecalled {
                    from: from.to_string(),
                    to: to.to_string(),
                    key,
                });
            }
            f(fs, ts, c, msg)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_recall(
        &self,
        op: &Op,
        from: &UserId,
        to: &UserId,
        key: MsgKey,
        by: &UserId,
        at: u64,
        origin: Option<&Origin>,
        notice_lifetime: u64,
        mode: Mode,
        found: Found,
    ) -> Result<Applied> {
        self.with_live_message(from, to, found, key, at, mode, |fs, ts, c, msg| {
            let (ticket, mut outbox) = self.record_queueing(op, mode, origin)?;
            (fs.ticket, ts.ticket, c.ticket) = (ticket, ticket, ticket);
            // The one instant every layer changes: they all share this record.
            msg.recall(by.clone(), at);
            let side = c.side(to);
            if msg.counts_unread() && c.is_unread(&msg) && c.unread[side] > 0 {
                c.unread[side] -= 1;
                ts.unread_total = ts.unread_total.saturating_sub(1);
            }
            // What `msg.recall_notice()` would say, without taking the message's lock again.
            let notice = RecallNotice {
                from: msg.from.clone(),
                to: msg.to.clone(),
                key: msg.key,
                recalled_by: by.clone(),
                recalled_at: at,
            };
            if let Some(origin) = origin {
                let queued = Queued::AfterRecall {
                    msg: msg.clone(),
                    unread: total_unread(ts),
                    at,
                };
                queue(&mut outbox, origin, queued, ticket);
            }
            drop(outbox);
            let expires_at = at.saturating_add(notice_lifetime);
            fs.deliver(Entry::Recalled(msg.clone()), expires_at, at, false);
            // The last holder of this reference: moved, not counted again (each count is a
            // locked instruction, a full barrier).
            ts.deliver(Entry::Recalled(msg), expires_at, at, false);
            Ok(Applied::Recalled(notice))
        })
    }

    fn apply_modify(&self, op: &Op, m: &ModifyOp, mode: Mode, found: Found) -> Result<Applied> {
        self.with_live_message(
            &m.from,
            &m.to,
            found,
            m.key,
            m.at,
            mode,
            |fs, ts, c, msg| {
                let old = msg.content().expect("a live message has content");
                let custom = m.cloud_custom_data.as_deref().or(old.cloud_custom_data());
                let content = m.body.as_ref().unwrap_or(&old).with_custom_data(custom)?;
                let ticket = self.record(op, mode)?;
                (fs.ticket, ts.ticket, c.ticket) = (ticket, ticket, ticket);
                msg.replace(content);
                let notice_lifetime = m
                    .notice
                    .unwrap_or_else(|| self.inner.config.notice_lifetime());
                let expires_at = m.at.saturating_add(notice_lifetime);
                fs.deliver(Entry::Modified(msg.clone(), m.at), expires_at, m.at, false);
                ts.deliver(Entry::Modified(msg, m.at), expires_at, m.at, false);
                Ok(Applied::Done)
            },
        )
    }

    /// A read mark: everything so far, or (`until`, MsgReadTime) what was sent at or before
    /// it (`Conversation::mark_read_until`).
    fn apply_set_read(
        &self,
        op: &Op,
        (reader, peer): (&UserId, &UserId),
        at: u64,
        until: Option<u32>,
        origin: Option<&Origin>,
        mode: Mode,
    ) -> Result<Applied> {
        let (_, rc) = self.numbered_as(reader, Role::Acting)?;
        // Live, the peer must exist when the mark is asked for. It is not locked, so a delete
        // of it may be recorded before this mark: on replay the peer is then found deleted,
        // and the mark applies as it did live (the conversation stays; a delete changes only
        // the deleted account's side of it).
        // A peer deleted before the mark was asked for is read only for the conversation it
        // left behind (the reader's unread count with it stays, and must be clearable).
        let (pc, peer_gone) = match mode {
            Mode::Live => match self.numbered_as(peer, Role::Other) {
                Ok((_, pc)) => (pc, false),
                Err(e) => (self.inner.accounts.any(peer).ok_or(e)?, true),
            },
            Mode::Replay => (
                (self.inner.accounts.any(peer)).ok_or_else(|| Role::Other.missing(peer))?,
                false,
            ),
        };
        let mut state = rc.state.lock();
        if !state.alive {
            return Err(Role::Acting.missing(reader));
        }
        // Looked up under the reader's lock: a send that makes the conversation holds it
        // (`conversation_or_new`), so the conversation exists here if and only if its making
        // was recorded before this mark — as replay finds it.
        let conv = self.conversation_of(rc, pc);
        if peer_gone && conv.is_none() {
            return Err(Role::Other.missing(peer));
        }
        let mut c = conv.as_ref().map(|c| c.lock());
        let (ticket, mut outbox) = self.record_queueing(op, mode, origin)?;
        state.ticket = ticket;
        if let Some(c) = &mut c {
            c.ticket = ticket;
            let side = c.side(reader);
            let unread = match until {
                None => {
                    c.mark_read(reader);
                    0
                }
                Some(time) => c.mark_read_until(reader, time),
            };
            state.unread_total = state
                .unread_total
                .saturating_sub(c.unread[side])
                .saturating_add(unread);
            c.unread[side] = unread;
        }
        if let Some(origin) = origin {
            let queued = Queued::AfterRead {
                report: reader.clone(),
                peer: peer.clone(),
                // LastReadTime: the MsgReadTime given, else now.
                at: until.map_or(at, u64::from),
                unread: total_unread(&state),
            };
            queue(&mut outbox, origin, queued, ticket);
        }
        Ok(Applied::Done)
    }

    /// A device connects: added if new (refused beyond `max_devices_per_account`), its cursor
    /// moved to the client's resume position, seen now; live, a session begins.
    fn apply_connect(
        &self,
        op: &Op,
        account: &UserId,
        device: &DeviceId,
        resume: Option<u64>,
        at: u64,
        mode: Mode,
    ) -> Result<Applied> {
        let cell = self.cell_as(account, Role::Plain)?;
        let mut guard = cell.state.lock();
        let state = &mut *guard;
        if !state.alive {
            return Err(Role::Plain.missing(account));
        }
        // Live only: a replayed connect was accepted live, under the limit of then (an
        // operator may have lowered it since; the store must still open).
        let max = self.inner.config.max_devices_per_account;
        if mode == Mode::Live && !state.devices.contains_key(device) && state.devices.len() >= max {
            return Err(Error::TooManyDevices {
                account: account.to_string(),
                max,
            });
        }
        state.ticket = self.record(op, mode)?;
        let last_seq = state.inbox.last_seq();
        let oldest = state.inbox.before_oldest();
        let slot = state
            .devices
            .entry(device.clone())
            .or_insert_with(|| DeviceSlot::new(oldest, at));
        // A resume position past the inbox's end names entries this store never numbered —
        // its data is older than the client's (a restored backup; a power loss under
        // `SyncPolicy::None`) — and confirms nothing: the entries numbered since may be ones
        // the client never had. The session starts from the device's cursor instead, and
        // the client is told so (`reset`), to number from there again.
        let reset = resume.is_some_and(|r| r > last_seq);
        let resume = resume.filter(|_| !reset);
        if let Some(r) = resume {
            slot.cursor = slot.cursor.max(r);
        }
        // Connected, or seen, within the grace online-only entries are kept for: it counts
        // as there all along (a flaky network), and keeps its last session's `since`.
        let back_soon =
            slot.live.is_some() || at.saturating_sub(slot.last_seen) <= ONLINE_GRACE_SECS;
        if at != 0 {
            slot.last_seen = at;
        }
        if mode == Mode::Replay {
            return Ok(Applied::Done);
        }
        slot.end_session();
        let since = if back_soon && slot.online_since != u64::MAX {
            slot.online_since
        } else {
            last_seq
        };
        slot.online_since = since;
        let generation = self.inner.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        let signal = Arc::new(Signal::default());
        slot.live = Some(Box::new(Live {
            generation,
            signal: signal.clone(),
            since,
            cache: crate::cache::DeviceCache::new(self.inner.config.cache_capacity),
        }));
        Ok(Applied::Connected {
            generation,
            signal,
            start: resume.unwrap_or(slot.cursor),
            reset,
            end: last_seq,
        })
    }
}

/// How stale a device's last sight may be left by an ack that moves no cursor (which is then
/// not journaled): idle devices are forgotten after days, and a device back within the
/// online-only grace (`ONLINE_GRACE_SECS`, a minute) is told apart at this grain.
const LAST_SEEN_GRAIN_SECS: u64 = 10;

/// Queues an after-callback in the outbox `record_queueing` took with the operation's record.
fn queue(
    outbox: &mut Option<MutexGuard<'_, Outbox>>,
    origin: &Origin,
    queued: Queued,
    ticket: u64,
) {
    outbox
        .as_mut()
        .expect("taken for an operation with an origin")
        .push(origin, queued, ticket);
}

/// A MsgTimeStamp more than [`MAX_MSG_TIME_AHEAD_SECS`](crate::MAX_MSG_TIME_AHEAD_SECS)
/// ahead of the clock is refused (90006): such a message would sort as the newest for good,
/// outlive every retention trim and stay within the client recall window — a clock gone
/// wrong, not a message to keep. History imports too.
pub(super) fn check_not_ahead(key: MsgKey, now: u64) -> Result<()> {
    let time = u64::from(key.time());
    if time > now.saturating_add(crate::MAX_MSG_TIME_AHEAD_SECS) {
        return Err(Error::InvalidField {
            field: "MsgTimeStamp",
            code: 90006,
            why: format!(
                "{time} is more than {} s ahead of the server's clock (now {now})",
                crate::MAX_MSG_TIME_AHEAD_SECS
            ),
        });
    }
    Ok(())
}

/// An account's unread messages over all its conversations (a callback's UnreadMsgNum).
fn total_unread(state: &AccountState) -> u32 {
    state.unread_total
}

/// A message already past roaming retention would be trimmed as it is stored — in no
/// history, beyond recall, yet delivered, and stored again by every retry, whose repeat is
/// never found: refused (90006) instead, as is one too far ahead ([`check_not_ahead`]).
/// Checked before a send's before-send callback (`prepare_send`) and again where it is
/// applied.
pub(super) fn check_within_retention(key: MsgKey, now: u64, retention: u64) -> Result<()> {
    check_not_ahead(key, now)?;
    let time = u64::from(key.time());
    if time < now.saturating_sub(retention) {
        return Err(Error::InvalidField {
            field: "MsgTimeStamp",
            code: 90006,
            why: format!(
                "{time} is past the roaming retention of {retention} s (now {now}): the \
                 message would be gone as it is stored"
            ),
        });
    }
    Ok(())
}

/// A send's To_Account that names no account: 90012, Tencent's code for sendmsg and
/// importmsg, where the peer of other requests answers 90003 (90003 stays for a missing or
/// malformed field, and for a message to its own sender).
pub(super) fn unknown_recipient(e: Error) -> Error {
    match e {
        Error::ToAccountNotFound(u) => Error::RecipientNotFound(u),
        e => e,
    }
}

/// The refusal of a message to its own sender.
pub(super) fn self_send(to: &UserId) -> Error {
    Error::ToAccountNotFound(format!("{to} (To_Account must differ from From_Account)"))
}

#[cfg(test)]
mod tests;
