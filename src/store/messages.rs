//! Message operations from the caller's side: send (in two halves around the before-send
//! decision), batch send, import, recall by an administrator or by the sender's client, and
//! modify. (The outbox of after-callbacks they queue: `outbox.rs`.)
//!
//! The before-send decision point is one: [`Store::prepare_send`] validates and keys a
//! message, something decides a [`BeforeSend`] — the store's own `Hooks` (in [`Store::send`])
//! or, in a server, a webhook awaited with no store lock held — and [`Store::finish_send`]
//! applies that decision. Every way a decision can end (allow, refuse, drop, replace, refuse
//! with the app's code, unavailable) is handled there and only there.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::apply::{self_send, unknown_recipient};
use super::{Applied, Deferred, Found, MAX_BATCH_RECIPIENTS, Role, Store, check_lifetime};
use crate::account::UserId;
use crate::callback::Origin;
use crate::device::{DeviceId, check_device_id};
use crate::error::{Error, Result};
use crate::hooks::{BeforeSend, OutgoingMessage};
use crate::journal::Journal;
use crate::key::MsgKey;
use crate::message::{
    Content, MsgElement, RecallNotice, SendControl, SendReceipt, SendRequest, SenderCopy,
};
use crate::op::{ModifyOp, Op, SendKind, SendOp};
use crate::store::{BatchReceipt, BatchSendRequest};

thread_local! {
    /// Inside `Store::with_origin`: (the store, where its operations come from).
    static ORIGIN: RefCell<Option<(usize, Option<Origin>)>> = const { RefCell::new(None) };
}

/// A send validated and keyed, waiting for its before-send decision
/// ([`Store::prepare_send`], [`Store::finish_send`]).
#[derive(Debug)]
pub struct PreparedSend<'a> {
    from: UserId,
    to: UserId,
    /// The names as the request gave them (`None`: the administrator sends): the decision
    /// is asked about these without looking the interned names up again.
    names: (Option<Cow<'a, str>>, Cow<'a, str>),
    key: MsgKey,
    lifetime: u64,
    body: Vec<MsgElement>,
    cloud_custom_data: Option<String>,
    content: Content,
    sender_copy: SenderCopy,
    control: SendControl,
    origin_device: Option<DeviceId>,
    origin: Option<Origin>,
    /// Whether its after-send callback is queued (REST `ForbidAfterSendMsgCallback` says no;
    /// its before-send still reports `origin`).
    after_callback: bool,
    /// The parties' cells as the lookups found them ([`Found`]; `None` when the sender is an
    /// administrator without an account).
    found: Found,
}

impl PreparedSend<'_> {
    /// What the before-send decision is asked about.
    pub fn outgoing(&self) -> OutgoingMessage<'_> {
        OutgoingMessage {
            from: self
                .names
                .0
                .as_deref()
                .unwrap_or_else(|| self.from.as_str()),
            to: &self.names.1,
            key: self.key,
            online_only: self.lifetime == 0,
            body: &self.body,
            cloud_custom_data: self.cloud_custom_data.as_deref(),
        }
    }

    /// Where the send came from (its callbacks report it), if it fires callbacks.
    pub fn origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }

    /// The same send without its after-send callback (REST `ForbidAfterSendMsgCallback`).
    pub fn without_after_callback(mut self) -> Self {
        self.after_callback = false;
        self
    }
}

/// An `importmsg`: a message from an older system, with all its identity given.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportRequest {
    pub from: String,
    pub to: String,
    pub msg_seq: u32,
    pub msg_random: u32,
    pub msg_time: u32,
    pub body: Vec<MsgElement>,
    pub cloud_custom_data: Option<String>,
    /// SyncFromOldSystem 5: counted unread and pushed to devices. `false` (2): history, counted
    /// read, not pushed.
    pub realtime: bool,
}

impl Store {
    /// Runs `f` with this store's operations coming from `origin`: sends, recalls and read marks
    /// made in `f` then fire after-callbacks (they are queued in the outbox with the operation;
    /// `None` fires none). Batch sends and imports never fire callbacks.
    pub fn with_origin<R>(&self, origin: Option<Origin>, f: impl FnOnce() -> R) -> R {
        let me = Arc::as_ptr(&self.inner) as usize;
        let outer = ORIGIN.replace(Some((me, origin)));
        let result = f();
        ORIGIN.set(outer);
        result
    }

    /// Where this thread's operations on this store come from (see [`Store::with_origin`]).
    pub(super) fn origin(&self) -> Option<Origin> {
        let me = Arc::as_ptr(&self.inner) as usize;
        ORIGIN.with_borrow(|o| match o {
            Some((store, origin)) if *store == me => origin.clone(),
            _ => None,
        })
    }

    /// Sends a one-to-one message (`sendmsg`), running the before- and after-send hooks.
    /// Sending the same (From, To, MsgKey) again returns the same receipt and stores nothing.
    pub fn send(&self, req: SendRequest<'_>) -> Result<SendReceipt> {
        self.send_deferred(req)?.wait()
    }

    /// [`send`](Store::send) without waiting for the journal: the message is stored (and shown
    /// to nobody yet), and [`Deferred::wait`] acknowledges it once it is durable. A thread can
    /// keep many sends in flight and they share fsyncs.
    pub fn send_deferred(&self, req: SendRequest<'_>) -> Result<Deferred<'_, SendReceipt>> {
        let prepared = self.prepare_send(req)?;
        let decision = self.inner.config.hooks.before_send(&prepared.outgoing());
        self.finish_send(prepared, decision)
    }

    /// The first half of a send: validates the request (90008, 90012 for a To_Account that
    /// names no account, 90003 for a message to its own sender, 90026, 90002, 93000)
    /// and fixes its MsgKey. Nothing is stored yet.
    pub fn prepare_send<'a>(&self, req: SendRequest<'a>) -> Result<PreparedSend<'a>> {
        let (nf, from, nt, to, conv) = match req.from.as_deref() {
            Some(from) => {
                let ((nf, f), (nt, t), conv) =
                    self.pair(from, &req.to).map_err(unknown_recipient)?;
                (Some(nf), f.id.clone(), nt, t.id.clone(), conv)
            }
            None => {
                let (nf, from) = self.sender_numbered(None)?;
                let (nt, to) = self
                    .numbered_as(&*req.to, Role::Other)
                    .map_err(unknown_recipient)?;
                let conv = nf
                    .and_then(|n| self.inner.accounts.cell_numbered(n))
                    .and_then(|fc| self.prefetch_conversation(&self.conv_key_of(fc, to), true));
                (nf, from, nt, to.id.clone(), conv)
            }
        };
        // Refused before the app is asked about it, as `apply_send` would refuse it after: the
        // same answer whatever the before-send decision (a drop would otherwise answer OK).
        if from == to {
            // Once the accounts it found are durable, as every refusal (R6).
            self.accounts_durable()?;
            return Err(self_send(&to));
        }
        let lifetime = check_lifetime(req.lifetime)?;
        let origin_device = req
            .from_device
            .as_deref()
            .map(|d| check_device_id(d).map(|_| DeviceId::from(d)))
            .transpose()?;
        let content = Content::new(&req.body, req.cloud_custom_data.as_deref())?;
        let key = self.resolve_key(req.msg_seq, req.msg_random, req.msg_time);
        // Before the app is asked about it.
        super::apply::check_within_retention(key, self.now(), self.inner.config.retention_secs)?;
        Ok(PreparedSend {
            from,
            to,
            names: (req.from, req.to),
            key,
            lifetime,
            body: req.body,
            cloud_custom_data: req.cloud_custom_data,
            content,
            sender_copy: req.sender_copy,
            control: req.control,
            origin_device,
            origin: self.origin(),
            after_callback: true,
            found: nf.map(|nf| (nf, nt, conv)),
        })
    }

    /// The answer to `p` when it repeats a message already stored — the same (From, To,
    /// MsgKey), or a client's retry as a send finds it (the same sender, MsgSeq, MsgRandom and
    /// content within 120 s): that message's receipt, acknowledged once everything appended
    /// so far is durable, as a send that finds it answers. Such a send stores nothing and
    /// returns the existing message whatever a before-send decision would say (SPEC §2), so
    /// the decision need not be asked again: a server skips its before-send webhook for it.
    /// The answer is made here, not by applying the send again: a recall or modify of the
    /// message in between would make the retry look new, and it would be stored without the
    /// decision it skipped.
    pub fn repeat_of_stored(&self, p: &PreparedSend<'_>) -> Option<Deferred<'_, SendReceipt>> {
        let conv = self.conversation(&p.from, &p.to)?;
        // A send whose body the decision replaced is found by what was sent.
        let replaced = self.inner.replaced_sends.find(p, self.now());
        let key = {
            let c = conv.lock();
            let found = c.find(&p.from, p.key);
            let found = found.or_else(|| c.find_retry(&p.from, p.key, &p.content));
            let found = found.or_else(|| c.find(&p.from, replaced?));
            found?.key
        };
        Some(Deferred {
            store: self,
            ticket: self.journal().map_or(0, Journal::appended),
            value: SendReceipt {
                msg_time: key.time(),
                msg_key: key,
            },
            sent: None,
        })
    }

    /// The second half of a send: applies the before-send `decision` — store it, store a
    /// replacement, refuse it (20006, or the app's code in 120001..=130000), drop it silently,
    /// or refuse it because the decision could not be had (80003). A send that repeats a
    /// stored message is answered with that message's receipt whatever the decision
    /// ([`repeat_of_stored`](Store::repeat_of_stored)): a client retrying a send whose answer it
    /// lost is not told "refused" about a message its peer has.
    pub fn finish_send(
        &self,
        p: PreparedSend<'_>,
        decision: BeforeSend,
    ) -> Result<Deferred<'_, SendReceipt>> {
        // Not on the common path (an allow while no replaced send is remembered): a
        // replacement or a refusal looks first, and an allow when a retry of a replaced send
        // could be it (the retry search in `apply` compares content, which was replaced).
        if (!matches!(decision, BeforeSend::Allow) || self.inner.replaced_sends.any())
            && let Some(stored) = self.repeat_of_stored(&p)
        {
            return Ok(stored);
        }
        let sent_as = matches!(decision, BeforeSend::Replace { .. })
            .then(|| (p.from.clone(), p.to.clone(), p.key, p.content.clone()));
        let mut content = p.content;
        // A refusal or a drop answers only once the accounts it found are durable (R6): a
        // crash must not undo an import after the caller was told 20006 rather than 90003.
        let found = || self.accounts_durable();
        match decision {
            BeforeSend::Allow => {}
            BeforeSend::Block => {
                found()?;
                return Err(Error::BlockedByHook {
                    code: 20006,
                    info: None,
                });
            }
            BeforeSend::BlockWithCode { code, info } => {
                found()?;
                return Err(if (120_001..=130_000).contains(&code) {
                    Error::BlockedByHook { code, info }
                } else {
                    Error::BlockedByHook {
                        code: 20006,
                        info: None,
                    }
                });
            }
            BeforeSend::Unavailable => {
                found()?;
                return Err(Error::CallbackUnavailable);
            }
            BeforeSend::Drop => {
                return Ok(Deferred {
                    store: self,
                    ticket: self.inner.membership.load(Ordering::Acquire),
                    value: SendReceipt {
                        msg_time: p.key.time(),
                        msg_key: p.key,
                    },
                    sent: None,
                });
            }
            BeforeSend::Replace {
                body,
                cloud_custom_data,
            } => {
                let body = body.as_deref().unwrap_or(&p.body);
                let custom = cloud_custom_data
                    .as_deref()
                    .or(p.cloud_custom_data.as_deref());
                content = Content::new(body, custom)?;
            }
        }
        let op = Op::Send(SendOp {
            from: p.from,
            to: p.to,
            key: p.key,
            content,
            sender_copy: p.sender_copy,
            lifetime: p.lifetime,
            origin_device: p.origin_device,
            at: self.now(),
            kind: SendKind::Send,
            origin: p.origin.filter(|_| p.after_callback),
            retention: Some(self.inner.config.retention_secs),
            control: p.control,
            retry_dedup: true,
        });
        let Applied::Sent { msg, duplicate } = self.deferred(&op, p.found)? else {
            unreachable!("send applies as Sent")
        };
        if let Some(sent_as) = sent_as.filter(|_| !duplicate) {
            let now = self.now();
            self.inner.replaced_sends.note(sent_as, msg.key, now);
        }
        Ok(Deferred {
            store: self,
            ticket: self.journal().map_or(0, Journal::appended),
            value: SendReceipt {
                msg_time: msg.key.time(),
                msg_key: msg.key,
            },
            sent: (!duplicate && self.inner.config.hooks.observes_sends()).then(|| msg.view()),
        })
    }

    /// Sends one message to up to 500 recipients (`batchsendmsg`) under one MsgKey. Runs no
    /// hooks and fires no callbacks. Per-recipient failures are listed in the receipt; the call
    /// itself fails only for errors of the whole request.
    pub fn batch_send(&self, req: BatchSendRequest) -> Result<BatchReceipt> {
        if req.to.len() > MAX_BATCH_RECIPIENTS {
            return Err(Error::TooManyRecipients(req.to.len()));
        }
        if req.to.is_empty() {
            return Err(Error::ToAccountNotFound(
                "(To_Account lists no recipient)".into(),
            ));
        }
        let from = self.sender(req.from.as_deref())?;
        let lifetime = check_lifetime(req.lifetime)?;
        let content = Content::new(&req.body, req.cloud_custom_data.as_deref())?;
        let key = self.resolve_key(req.msg_seq, req.msg_random, req.msg_time);
        super::apply::check_within_retention(key, self.now(), self.inner.config.retention_secs)?;
        let mut errors = Vec::new();
        for to in &req.to {
            let Some(cell) = self.cell(to) else {
                // Once the delete (or the absence of an import) it rests on is durable (R6).
                errors.push((to.clone(), self.absent(Role::Plain, to)));
                continue;
            };
            let op = Op::Send(SendOp {
                from: from.clone(),
                to: cell.id.clone(),
                key,
                content: content.clone(),
                sender_copy: req.sender_copy,
                lifetime,
                origin_device: None,
                at: self.now(),
                kind: SendKind::Send,
                origin: None,
                retention: Some(self.inner.config.retention_secs),
                control: req.control,
                retry_dedup: false,
            });
            match self.run(&op) {
                // Deleted between the lookup and the send: as unknown as never imported.
                Err(Error::RecipientNotFound(_)) => {
                    errors.push((to.clone(), Error::AccountNotFound(to.clone())))
                }
                Err(e) => errors.push((to.clone(), e)),
                Ok(_) => {}
            }
        }
        Ok(BatchReceipt {
            msg_time: key.time(),
            msg_key: key,
            errors,
        })
    }

    /// Imports a message from an older system (`importmsg`): history (counted read, not
    /// pushed) or real time (counted unread, pushed). Idempotent: a message with the same
    /// MsgKey in either direction of the conversation is never stored twice. No hooks, no
    /// callbacks.
    pub fn import(&self, req: ImportRequest) -> Result<SendReceipt> {
        let (from, to, found) = self
            .parties(&req.from, &req.to)
            .map_err(unknown_recipient)?;
        let content = Content::new(&req.body, req.cloud_custom_data.as_deref())?;
        let key = MsgKey::new(req.msg_seq, req.msg_random, req.msg_time);
        let op = Op::Send(SendOp {
            from,
            to,
            key,
            content,
            sender_copy: SenderCopy::Roaming,
            lifetime: crate::message::MAX_LIFETIME_SECS,
            origin_device: None,
            at: self.now(),
            kind: if req.realtime {
                SendKind::ImportRealtime
            } else {
                SendKind::ImportHistory
            },
            origin: None,
            retention: Some(self.inner.config.retention_secs),
            control: SendControl::default(),
            retry_dedup: false,
        });
        let Applied::Sent { msg, .. } = self.run_found(&op, found)? else {
            unreachable!("an import applies as Sent")
        };
        Ok(SendReceipt {
            msg_time: msg.key.time(),
            msg_key: msg.key,
        })
    }

    /// A request's From_Account (90008) and To_Account (90003), with their cells' numbers for
    /// `apply` ([`Found`]). Also starts loading their conversation's table slot, as a send
    /// does, so that its miss overlaps the cells' own: `apply` looks the conversation up (once)
    /// before it takes a lock.
    fn parties(&self, from: &str, to: &str) -> Result<(UserId, UserId, Found)> {
        let ((nf, from), (nt, to), conv) = self.pair(from, to)?;
        Ok((from.id.clone(), to.id.clone(), Some((nf, nt, conv))))
    }

    pub(super) fn sender(&self, from: Option<&str>) -> Result<UserId> {
        self.sender_numbered(from).map(|(_, id)| id)
    }

    /// [`sender`](Store::sender) with its cell's number (`None` for an administrator this store
    /// has no account for).
    fn sender_numbered(&self, from: Option<&str>) -> Result<(Option<u32>, UserId)> {
        match from {
            Some(f) => {
                let (n, cell) = self.numbered_as(f, Role::Acting)?;
                Ok((Some(n), cell.id.clone()))
            }
            None => {
                let admin = self.inner.admins.first().cloned().ok_or_else(|| {
                    Error::FromAccountNotFound("(no administrator configured)".into())
                })?;
                Ok((self.inner.accounts.number(&admin), admin))
            }
        }
    }

    fn resolve_key(&self, seq: Option<u32>, random: u32, time: Option<u32>) -> MsgKey {
        let seq = seq.unwrap_or_else(|| self.random_u32());
        let time = time.unwrap_or_else(|| u32::try_from(self.now()).unwrap_or(u32::MAX));
        MsgKey::new(seq, random, time)
    }

    /// Recalls a message (`admin_msgwithdraw`) in every layer at once: history keeps it with
    /// MsgFlagBits 8 and no content, no device receives it any more, every device cache holds a
    /// tombstone, both parties' devices get a Recalled notice, unread counts drop. Errors, in
    /// this order: 90009, 90008, 90003, 90054, 20022, 20023.
    pub fn recall(&self, operator: &str, from: &str, to: &str, key: &str) -> Result<RecallNotice> {
        self.recall_deferred(operator, from, to, key)?.wait()
    }

    /// [`recall`](Store::recall) without waiting for the journal: the recall has taken effect
    /// in memory (shown to nobody yet), and [`Deferred::wait`] acknowledges it once durable.
    pub fn recall_deferred(
        &self,
        operator: &str,
        from: &str,
        to: &str,
        key: &str,
    ) -> Result<Deferred<'_, RecallNotice>> {
        let by = self.admin(operator)?;
        let (from, to, found) = self.parties(from, to)?;
        let key = MsgKey::parse(key)?;
        self.recall_op(from, to, key, by, found)
    }

    /// A client's recall of its own message (`account` sent it to `to`): the same recall, by
    /// the sender, allowed within `Config::client_recall_window_secs` of the message's
    /// MsgTimeStamp. Errors, in this order: 90008, 90003, 90054, 20022, 20023, 20016 (too late).
    pub fn recall_own(&self, account: &str, to: &str, key: &str) -> Result<RecallNotice> {
        self.recall_own_deferred(account, to, key)?.wait()
    }

    /// [`recall_own`](Store::recall_own) without waiting for the journal.
    pub fn recall_own_deferred(
        &self,
        account: &str,
        to: &str,
        key: &str,
    ) -> Result<Deferred<'_, RecallNotice>> {
        let (from, to, found) = self.parties(account, to)?;
        let key = MsgKey::parse(key)?;
        let window = self.inner.config.client_recall_window_secs;
        if self.now() > u64::from(key.time()).saturating_add(window) {
            // Too late — unless there is no such live message, which is said first.
            let (from_s, to_s) = (from.to_string(), to.to_string());
            let not_found = || Error::MessageNotFound {
                from: from_s.clone(),
                to: to_s.clone(),
                key,
            };
            let refusal = self
                .with_parties(&from, &to, found, false, not_found, |_, _, c| {
                    Err(match c.find(&from, key) {
                        None => not_found(),
                        Some(m) if m.is_recalled() => Error::AlreadyRecalled {
                            from: from.to_string(),
                            to: to.to_string(),
                            key,
                        },
                        Some(_) => Error::RecallTooLate {
                            key,
                            window_secs: window,
                        },
                    })
                })
                .map(|()| unreachable!("always a refusal"))
                .unwrap_or_else(|e: Error| e);
            // A refusal may rest on operations not yet durable (a recall in flight, say).
            self.durable(self.journal().map_or(0, Journal::appended))?;
            return Err(refusal);
        }
        self.recall_op(from.clone(), to, key, from, found)
    }

    /// The recall of `key` from `from` to `to` by `by`; `found`: the parties' cells, if the
    /// caller has them ([`Found`]).
    pub(super) fn recall_op(
        &self,
        from: UserId,
        to: UserId,
        key: MsgKey,
        by: UserId,
        found: Found,
    ) -> Result<Deferred<'_, RecallNotice>> {
        let op = Op::Recall {
            from,
            to,
            key,
            by,
            at: self.now(),
            origin: self.origin(),
            notice: Some(self.inner.config.notice_lifetime()),
        };
        let Applied::Recalled(notice) = self.deferred(&op, found)? else {
            unreachable!("recall applies as Recalled")
        };
        Ok(Deferred {
            store: self,
            ticket: self.journal().map_or(0, Journal::appended),
            value: notice,
            sent: None,
        })
    }

    /// Replaces the MsgBody and/or CloudCustomData of a live message (`modify_c2c_msg`) in
    /// every layer and sends both parties' devices a Modified notice. A recalled message answers
    /// 20023.
    pub fn modify(
        &self,
        from: &str,
        to: &str,
        key: &str,
        body: Option<Vec<MsgElement>>,
        cloud_custom_data: Option<String>,
    ) -> Result<()> {
        let (from, to, found) = self.parties(from, to)?;
        let key = MsgKey::parse(key)?;
        if body.is_none() && cloud_custom_data.is_none() {
            return Err(Error::InvalidMsgBody(
                "give a new MsgBody or CloudCustomData".into(),
            ));
        }
        let body = body.map(|b| Content::new(&b, None)).transpose()?;
        let op = Op::Modify(Box::new(ModifyOp {
            from,
            to,
            key,
            body,
            cloud_custom_data,
            at: self.now(),
            notice: Some(self.inner.config.notice_lifetime()),
        }));
        self.run_found(&op, found).map(|_| ())
    }
}

#[cfg(test)]
mod tests;

/// Sends stored with a body the before-send decision replaced (an app's moderation writing
/// `***`), by what was sent: sender, recipient, MsgSeq, MsgRandom and a fingerprint of the
/// content as sent. A client's retry of one carries the content as sent, which the stored
/// message no longer has, so the retry search of the conversation cannot find it; it is found
/// here, within the retry window. Live only (as that search is), and bounded: entries leave
/// once past the window, oldest first, and past [`REPLACED_SENDS_MAX`] none is added. While
/// it holds none — the common case — a send reads one atomic here and takes no lock.
#[derive(Default)]
pub(crate) struct ReplacedSends {
    /// How many entries there are (read without the lock).
    count: AtomicUsize,
    fingerprint: crate::hash::RandomState,
    held: parking_lot::Mutex<Replaced>,
}

#[derive(Default)]
struct Replaced {
    sends: crate::hash::HashMap<SentAs, (MsgKey, u64)>,
    /// The entries by when they were noted, oldest first.
    order: std::collections::VecDeque<(u64, SentAs)>,
}

/// A replaced send as it was sent: sender, recipient, MsgSeq, MsgRandom, content fingerprint.
type SentAs = (UserId, UserId, u32, u32, u64);

/// Most replaced sends remembered at once (~150 bytes each).
const REPLACED_SENDS_MAX: usize = 65_536;

impl ReplacedSends {
    /// Whether any is remembered now.
    fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    fn fingerprint(&self, content: &Content) -> u64 {
        use std::hash::BuildHasher;
        self.fingerprint
            .hash_one((content.body_json().as_ref(), content.cloud_custom_data()))
    }

    /// Drops the entries noted longer ago than a retry can come.
    fn expire(&self, held: &mut Replaced, now: u64) {
        let window = crate::roaming::RETRY_WINDOW_SECS + crate::roaming::RETRY_SKEW_SECS;
        while let Some((at, _)) = held.order.front() {
            if at.saturating_add(window) >= now {
                break;
            }
            let (at, key) = held.order.pop_front().expect("looked at");
            if held.sends.get(&key).is_some_and(|(_, noted)| *noted == at) {
                held.sends.remove(&key);
            }
        }
        self.count.store(held.sends.len(), Ordering::Release);
    }

    fn note(&self, sent_as: (UserId, UserId, MsgKey, Content), stored: MsgKey, now: u64) {
        let (from, to, key, original) = sent_as;
        let key = (
            from,
            to,
            key.seq(),
            key.random(),
            self.fingerprint(&original),
        );
        let mut held = self.held.lock();
        self.expire(&mut held, now);
        if held.sends.len() >= REPLACED_SENDS_MAX {
            return;
        }
        held.sends.insert(key.clone(), (stored, now));
        held.order.push_back((now, key));
        self.count.store(held.sends.len(), Ordering::Release);
    }

    /// The key of the replaced send `p` repeats, if it was stored within the retry window
    /// of `p`'s MsgTimeStamp (as the conversation's retry search dates it).
    fn find(&self, p: &PreparedSend<'_>, now: u64) -> Option<MsgKey> {
        if !self.any() {
            return None;
        }
        let fp = self.fingerprint(&p.content);
        let key = (
            p.from.clone(),
            p.to.clone(),
            p.key.seq(),
            p.key.random(),
            fp,
        );
        let mut held = self.held.lock();
        self.expire(&mut held, now);
        let (stored, _) = held.sends.get(&key)?;
        let (t, s) = (u64::from(p.key.time()), u64::from(stored.time()));
        let within =
            s + crate::roaming::RETRY_WINDOW_SECS >= t && s <= t + crate::roaming::RETRY_SKEW_SECS;
        within.then_some(*stored)
    }
}
