//! Devices: each account's devices, their cursors into the account's inbox, the live session of
//! a connected device (its signal and its client cache), and the [`Subscription`] a connected
//! device reads from.
//!
//! Delivery is pulled, not pushed. A writer appending to an inbox only raises the signal of each
//! connected device of the account (it never blocks and never queues anything per device); the
//! subscriber reads the inbox after the last entry it handed out. So a slow client costs
//! nothing but its position, a disconnected device holds no channel and no cache (a few dozen
//! bytes: cursor, last seen), and nothing a device is shown can run ahead of the disk:
//!
//! - **R6.** Entries are collected under the account lock, which every operation touching this
//!   account's inbox, devices or messages holds while it changes them, together with the
//!   account's ticket (the journal position of the last such operation). They are handed out
//!   only once the journal is durable up to that ticket. Everything they show — the entries,
//!   the message bodies, a recall that makes a message skipped — is then on disk, so a crash
//!   cannot take back anything a device was shown.
//! - **R7.** The cursor is what the client confirmed (`ack`, a resume position), never what was
//!   handed out — and never more than was handed out: a session's ack is bounded by what it
//!   sent, and a resume position past the inbox's end confirms nothing (the session starts
//!   from the cursor and says so, [`Subscription::reset`]). A session starts from the cursor (or from the client's resume position), so
//!   everything not confirmed is sent again after a disconnect, restart or crash. Entries carry
//!   their sequence number; clients drop repeats.
//! - No lost wake-up: the signal is a flag. A writer sets it after appending, under the account
//!   lock; a subscriber that found nothing clears it only when it next waits, and a flag set in
//!   between makes that wait return at once.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::cache::DeviceCache;
use crate::error::Error;
use crate::inbox::Entry;
use crate::message::{MessageView, MsgArc, RecallNotice, StoredMessage};

/// A device name, unique within its account.
pub type DeviceId = Arc<str>;

/// The longest device name, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 64;

pub(crate) fn check_device_id(s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > MAX_DEVICE_ID_LEN || s.chars().any(char::is_control) {
        return Err(Error::InvalidRequest(format!(
            "device id {s:?} must be 1 to 64 bytes without control characters"
        )));
    }
    Ok(())
}

/// Something a device receives from its account's inbox.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The entry's sequence number in the account's inbox (the SSE `id:`, the WebSocket `Seq`).
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of inbox entries.
#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    /// A new message (SSE `event: message`).
    Message(MessageView),
    /// A message was recalled (SSE `event: recall`).
    Recalled(RecallNotice),
    /// A message's content was replaced (SSE `event: modify`); carries the current content.
    Modified {
        message: MessageView,
        modified_at: u64,
    },
}

/// The subscription ended: the device connected again elsewhere, its account was deleted, the
/// store was dropped, or the journal failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disconnected;

impl std::fmt::Display for Disconnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the device subscription has ended")
    }
}

impl std::error::Error for Disconnected {}

// ----- the signal -----

/// Wakes a subscriber, blocked on a thread or awaited by a task, when its account's inbox grew
/// or its session ended. Raising a signal that is already raised costs one atomic swap: a
/// device that has not read yet is woken once, however much is written meanwhile.
#[derive(Default)]
pub(crate) struct Signal {
    notified: AtomicBool,
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
    changed: Condvar,
}

impl Signal {
    pub fn notify(&self) {
        // A plain load first: an already raised signal costs no write to its cache line.
        if self.notified.load(Ordering::Acquire) || self.notified.swap(true, Ordering::AcqRel) {
            return;
        }
        self.wake();
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notified.store(true, Ordering::Release);
        self.wake();
    }

    /// Taking the lock orders this after a waiter's check of the flags (made under the lock),
    /// so a waiter either sees the flag or is waiting when it is told.
    fn wake(&self) {
        let waker = self.waker.lock().take();
        self.changed.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Waits until notified or closed, or until `deadline`; clears the notification.
    fn wait(&self, deadline: Option<Instant>) {
        let mut guard = self.waker.lock();
        while !self.notified.load(Ordering::Acquire) {
            match deadline {
                Some(d) => {
                    if self.changed.wait_until(&mut guard, d).timed_out() {
                        break;
                    }
                }
                None => self.changed.wait(&mut guard),
            }
        }
        drop(guard);
        self.clear();
    }

    fn clear(&self) {
        if !self.closed.load(Ordering::Acquire) {
            self.notified.store(false, Ordering::Release);
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.notified.load(Ordering::Acquire) {
            self.clear();
            return Poll::Ready(());
        }
        let mut waker = self.waker.lock();
        match &*waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        // Raised between the check above and storing the waker: the notifier found no waker.
        if self.notified.load(Ordering::Acquire) {
            drop(waker);
            self.clear();
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

// ----- devices -----

/// A device as its account keeps it (under the account lock).
pub(crate) struct DeviceSlot {
    /// The last inbox sequence number the client confirmed (R7).
    pub cursor: u64,
    /// When the device last connected or disconnected (Unix seconds); an idle device is
    /// forgotten after `Config::device_idle_secs`.
    pub last_seen: u64,
    /// The live session, while connected.
    pub live: Option<Box<Live>>,
    /// The `since` of its last session (`u64::MAX`: none since the store opened): a device
    /// that connects again within `ONLINE_GRACE_SECS` of its last sight keeps it, so the
    /// online-only entries it was there for and did not confirm are sent again (R7). Not
    /// journaled: after a restart every device starts from the inbox's end.
    pub online_since: u64,
}

/// A connected device's session.
pub(crate) struct Live {
    /// Unique per session: an older subscription of the same device sees the mismatch and ends.
    pub generation: u64,
    pub signal: Arc<Signal>,
    /// The inbox's last sequence number when the session began: online-only entries (lifetime
    /// 0) at or before it were sent before the device was there.
    pub since: u64,
    pub cache: DeviceCache,
}

/// A session ends however its `Live` goes — ended, superseded, its account deleted, or the
/// whole store dropped: its subscriber, blocked in `recv` or awaiting `next_batch`, is woken
/// and sees `Disconnected`.
impl Drop for Live {
    fn drop(&mut self) {
        self.signal.close();
    }
}

impl DeviceSlot {
    pub fn new(cursor: u64, last_seen: u64) -> Self {
        DeviceSlot {
            cursor,
            last_seen,
            live: None,
            online_since: u64::MAX,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.live.is_some()
    }

    /// Ends the live session, if any: its subscriber sees `Disconnected`.
    pub fn end_session(&mut self) {
        self.live = None; // `Live`'s drop closes its signal
    }
}

/// What a device receives for an inbox entry now: nothing for a message (or modification)
/// that has been recalled since it was appended.
pub(crate) fn event(seq: u64, entry: &Entry) -> Option<Event> {
    let kind = match entry {
        Entry::Message(msg) => EventKind::Message(live_view(msg)?),
        Entry::Modified(msg, at) => EventKind::Modified {
            message: live_view(msg)?,
            modified_at: *at,
        },
        Entry::Recalled(msg) => EventKind::Recalled(
            msg.recall_notice()
                .expect("a Recalled entry names a recalled message"),
        ),
    };
    Some(Event { seq, kind })
}

fn live_view(msg: &StoredMessage) -> Option<MessageView> {
    Some(msg.view()).filter(|v| !v.is_recalled())
}

// ----- subscriptions -----

/// What a subscriber collected under the account lock: the events and messages to hand out,
/// the position after the last entry looked at, and the journal position that must be durable
/// before any of it is shown.
pub(crate) struct Collected {
    pub events: Vec<Event>,
    /// The messages among the events, with their sequence numbers.
    pub messages: Vec<(u64, MsgArc)>,
    /// The records of the Modified events, with their sequence numbers.
    pub modified: Vec<(u64, MsgArc)>,
    pub upto: u64,
    pub ticket: u64,
}

/// The store side of a subscription: implemented by the store, which owns the locks.
pub(crate) trait Feed: Send + Sync {
    /// Collects up to `max` events after `after`; `Err` once the session has ended.
    fn collect(
        &self,
        sub: &SubscriptionId,
        after: u64,
        max: usize,
    ) -> Result<Collected, Disconnected>;
    /// Blocks until the journal is durable up to `ticket`.
    fn durable(&self, ticket: u64) -> Result<(), Disconnected>;
    /// Polls for durability up to `ticket`.
    fn poll_durable(&self, ticket: u64, cx: &mut Context<'_>) -> Poll<Result<(), Disconnected>>;
    /// Records that the session handed out `messages` (its client cache holds them now).
    fn handed_out(&self, sub: &SubscriptionId, messages: Vec<MsgArc>);
    /// Moves the device's cursor: its client confirmed everything up to `seq`.
    fn ack(&self, sub: &SubscriptionId, seq: u64) -> Result<(), Error>;
    /// Ends the session (the subscription was dropped).
    fn release(&self, sub: &SubscriptionId);
    /// The device's confirmed cursor.
    fn cursor(&self, sub: &SubscriptionId) -> Option<u64>;
}

/// Names one session of one device.
pub(crate) struct SubscriptionId {
    pub account: crate::account::UserId,
    pub device: DeviceId,
    pub generation: u64,
}

/// How many events one collection hands out at most.
const BATCH: usize = 64;

/// A connected device's feed: first every retained inbox entry after the device's cursor (or
/// the resume position it connected with), in order, then new entries as they become durable.
///
/// Receiving does not move the cursor: the client confirms with [`ack`](Subscription::ack)
/// (R7). Until it does, a new session of the device is sent the same entries again. Dropping
/// the subscription disconnects the device.
///
/// The blocking methods (`recv`, `recv_timeout`, `try_recv`, `drain`) suit threads;
/// [`next_batch`](Subscription::next_batch) is a future for async runtimes (any executor: it
/// needs nothing but `std`'s `Waker`).
pub struct Subscription {
    id: SubscriptionId,
    feed: Weak<dyn Feed>,
    signal: Arc<Signal>,
    buf: Mutex<Buffer>,
    /// The session's start when the resume position asked for was past the inbox's end.
    reset: Option<u64>,
    /// Where the session started, and the inbox's last sequence number then (read by a
    /// cluster owner's reconnect, `started`).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    start: u64,
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    end: u64,
}

struct Buffer {
    /// The last sequence number handed to the application (or skipped for it).
    sent: u64,
    /// The highest `sent` has been: entries up to it that are collected again after a
    /// [`rewind`](Subscription::rewind) are already in the client cache.
    handed: u64,
    /// Events handed out by the blocking API one at a time, with the record of each that
    /// shows a body: one recalled while it waits here is not handed out (R1: a device that
    /// has not received a message never will, once it is recalled; its notice follows).
    ready: VecDeque<(Event, Option<MsgArc>)>,
}

impl Subscription {
    pub(crate) fn new(
        id: SubscriptionId,
        feed: Weak<dyn Feed>,
        signal: Arc<Signal>,
        (start, end): (u64, u64),
        reset: bool,
    ) -> Self {
        Subscription {
            id,
            feed,
            signal,
            reset: reset.then_some(start),
            start,
            end,
            buf: Mutex::new(Buffer {
                sent: start,
                handed: start,
                ready: VecDeque::new(),
            }),
        }
    }

    fn feed(&self) -> Result<Arc<dyn Feed>, Disconnected> {
        self.feed.upgrade().ok_or(Disconnected)
    }

    #[cfg(test)]
    pub(crate) fn id(&self) -> &SubscriptionId {
        &self.id
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.id.device
    }

    /// The account's name.
    pub fn account(&self) -> &str {
        &self.id.account
    }

    /// The last sequence number the client confirmed.
    pub fn cursor(&self) -> u64 {
        self.feed()
            .ok()
            .and_then(|f| f.cursor(&self.id))
            .unwrap_or(0)
    }

    /// `Some(start)` when the position the session was asked to resume after
    /// ([`Store::connect_after`](crate::Store::connect_after)) was past the account's last
    /// inbox entry — the store's data is older than the client's and its clock was set back
    /// behind its sequence floor (`Op::SeqFloor`, which otherwise numbers a restored backup
    /// above all its lost records gave), or the client names numbers it was never sent, or the
    /// store lives in memory. Nothing was confirmed; the session starts after
    /// `start`, the device's cursor, and the entries that follow may carry sequence numbers
    /// the client has seen before, on other entries: a client told this (the server's
    /// `reset` event) must take them as new — its position is `start` now — rather than drop
    /// them as repeats.
    pub fn reset(&self) -> Option<u64> {
        self.reset
    }

    /// Where the session started (the position it hands out entries after) and the account's
    /// last inbox sequence number then.
    #[cfg(feature = "cluster")]
    pub(crate) fn started(&self) -> (u64, u64) {
        (self.start, self.end)
    }

    /// The last sequence number handed out in this session.
    pub fn sent(&self) -> u64 {
        self.buf.lock().given().1
    }

    /// Hands out again what comes after `after` (at most what was handed out): for a
    /// session whose client may not have received the last events. They are collected again
    /// from the inbox, as a reconnect would — a message recalled since is not sent, a modified
    /// one goes with its content now — rather than sent again as they were. The client cache
    /// does not take them twice.
    pub fn rewind(&self, after: u64) {
        let mut buf = self.buf.lock();
        // Events collected for the blocking API and not yet taken are collected again too.
        let untaken = buf.ready.front().map_or(u64::MAX, |(e, _)| e.seq - 1);
        buf.sent = buf.sent.min(after).min(untaken);
        buf.ready.clear();
    }

    /// Confirms receipt of every entry up to `seq`: the device's cursor moves there, and a
    /// later session starts after it. Cumulative; a lower `seq` than before changes nothing.
    /// No further than this session handed out: a `seq` past it (a client's mistake, or a
    /// position from before a [`reset`](Subscription::reset)) confirms up to what was handed
    /// out, never entries the device was not sent.
    pub fn ack(&self, seq: u64) -> Result<(), Error> {
        let feed = self
            .feed()
            .map_err(|_| Error::Internal("the store is closed".into()))?;
        let handed = self.buf.lock().given().0;
        feed.ack(&self.id, seq.min(handed))
    }

    /// The next event if one is ready now. It may wait for the commit that makes the event
    /// durable, never for a new event.
    pub fn try_recv(&self) -> Result<Option<Event>, Disconnected> {
        let mut buf = self.buf.lock();
        loop {
            if buf.ready.is_empty() {
                self.fill(&mut buf)?;
            }
            match buf.ready.pop_front() {
                None => return Ok(None),
                // Recalled since it was collected: collected again from before it, which
                // leaves it out and waits for the recall's commit; its notice follows.
                Some((e, Some(m))) if m.is_recalled() => {
                    buf.sent = e.seq - 1;
                    buf.ready.clear();
                    continue;
                }
                Some((e, _)) => return Ok(Some(e)),
            }
        }
    }

    /// The next event, waiting as long as it takes.
    pub fn recv(&self) -> Result<Event, Disconnected> {
        loop {
            if let Some(e) = self.try_recv()? {
                return Ok(e);
            }
            self.signal.wait(None);
        }
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Event>, Disconnected> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.try_recv()? {
                return Ok(Some(e));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.signal.wait(Some(deadline));
        }
    }

    /// Every event ready now.
    pub fn drain(&self) -> Result<Vec<Event>, Disconnected> {
        let mut out = Vec::new();
        while let Some(e) = self.try_recv()? {
            out.push(e);
        }
        Ok(out)
    }

    /// Collects durable events into `buf.ready` (blocking for their commit).
    fn fill(&self, buf: &mut Buffer) -> Result<(), Disconnected> {
        let feed = self.feed()?;
        loop {
            let c = feed.collect(&self.id, buf.sent, BATCH)?;
            if c.upto == buf.sent {
                return Ok(());
            }
            feed.durable(c.ticket)?;
            // Recalled while the batch waited for the disk: collected again (`next_batch`).
            if recalled_since(&c) {
                continue;
            }
            buf.sent = c.upto;
            // The records the events show bodies of, in the events' order (by sequence number).
            let mut shown: Vec<(u64, MsgArc)> = c.messages.to_vec();
            shown.extend(c.modified);
            shown.sort_unstable_by_key(|(seq, _)| *seq);
            let mut shown = shown.into_iter().peekable();
            feed.handed_out(&self.id, buf.fresh(c.messages));
            if !c.events.is_empty() {
                buf.ready.extend(c.events.into_iter().map(|e| {
                    while shown.next_if(|(seq, _)| *seq < e.seq).is_some() {}
                    let record = shown.next_if(|(seq, _)| *seq == e.seq).map(|(_, m)| m);
                    (e, record)
                }));
                return Ok(());
            }
        }
    }

    /// The next events, at most 64, once at least one is durable: for async tasks. Nothing is
    /// lost if the future is dropped before it completes (the events are handed out again).
    ///
    /// The store is not kept alive while this waits: dropping the last `Store` handle ends the
    /// wait with `Disconnected`, as it ends a blocking [`recv`](Subscription::recv).
    pub async fn next_batch(&self) -> Result<Vec<Event>, Disconnected> {
        loop {
            let fresh = self.buf.lock().take_ready();
            if !fresh.is_empty() {
                return Ok(fresh);
            }
            let sent = self.buf.lock().sent;
            let c = self.feed()?.collect(&self.id, sent, BATCH)?;
            if c.upto == sent {
                SignalWait(&self.signal).await;
                continue;
            }
            DurableWait(&self.feed, c.ticket).await?;
            // Recalled while the batch waited for the disk: collected again, which leaves it
            // out and waits for the recall's own commit (its notice follows). A device that has
            // not received a message never will once its recall is acknowledged.
            if recalled_since(&c) {
                continue;
            }
            let fresh = {
                let mut buf = self.buf.lock();
                if buf.sent != sent {
                    continue; // another reader of this subscription moved on meanwhile
                }
                buf.sent = c.upto;
                buf.fresh(c.messages)
            };
            self.feed()?.handed_out(&self.id, fresh);
            if !c.events.is_empty() {
                return Ok(c.events);
            }
        }
    }
}

/// Whether a message among the collected events was recalled after the collection.
fn recalled_since(c: &Collected) -> bool {
    (c.messages.iter().chain(&c.modified)).any(|(_, m)| m.is_recalled())
}

impl Buffer {
    /// How far the application was given events: (at most, counting what a session handed
    /// out before a rewind; in this stretch of the session). Events the blocking API collected
    /// and nobody took yet are not given: an `ack` of `sent()` must not confirm them.
    fn given(&self) -> (u64, u64) {
        let untaken = self.ready.front().map_or(u64::MAX, |(e, _)| e.seq - 1);
        (
            self.handed.max(self.sent).min(untaken),
            self.sent.min(untaken),
        )
    }

    /// The events the blocking API collected and nobody took yet, up to the first whose
    /// message was recalled since: from there the session collects again (the collection
    /// leaves the message out and waits for the recall's commit, so that a recall a crash
    /// takes back cannot have hidden a message from the device for good).
    fn take_ready(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        for (e, m) in std::mem::take(&mut self.ready) {
            if m.is_some_and(|m| m.is_recalled()) {
                self.sent = e.seq - 1;
                break;
            }
            out.push(e);
        }
        out
    }

    /// Of `messages` just collected (up to `sent`), those not handed out before in this
    /// session; `handed` moves up to `sent`.
    fn fresh(&mut self, messages: Vec<(u64, MsgArc)>) -> Vec<MsgArc> {
        let handed = self.handed;
        self.handed = handed.max(self.sent);
        messages
            .into_iter()
            .filter(|(seq, _)| *seq > handed)
            .map(|(_, m)| m)
            .collect()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(feed) = self.feed() {
            feed.release(&self.id);
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("account", &self.account())
            .field("device", &self.device())
            .finish_non_exhaustive()
    }
}

/// Completes when `signal` is raised (or closed).
pub(crate) fn wait_signal(signal: &Signal) -> impl Future<Output = ()> + '_ {
    SignalWait(signal)
}

struct SignalWait<'a>(&'a Signal);

impl Future for SignalWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll(cx)
    }
}

/// Waits for a journal position, holding the store only while it polls (a dropped store
/// wakes it through its journal's shutdown, and it ends `Disconnected`).
struct DurableWait<'a>(&'a Weak<dyn Feed>, u64);

impl Future for DurableWait<'_> {
    type Output = Result<(), Disconnected>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.upgrade() {
            Some(feed) => feed.poll_durable(self.1, cx),
            None => Poll::Ready(Err(Disconnected)),
        }
    }
}
