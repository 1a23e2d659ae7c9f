//! Devices: each account's devices, their cursors into the account's inbox, their caches, and
//! live delivery over bounded channels ([`Subscription`]).
//!
//! Delivery protocol, all of it under the account lock except `Subscription::accept`:
//! - a device is *caught up* when its channel has been handed every inbox entry up to the
//!   newest (`pushed == inbox.last_seq()`); a writer appending an entry `try_send`s it to every
//!   caught-up device and never blocks;
//! - when a channel is full the device is marked *lagging* and writers skip it;
//! - the subscriber, finding its channel empty, refills it from the inbox after `pushed` and
//!   clears the lagging mark once caught up. Because a writer only marks a device lagging when
//!   its channel is full, a subscriber that finds it empty after a refill can block on it
//!   without missing a wake-up.
//! - `cursor` (in `DeviceShared`) is what the application has actually received; a reconnect
//!   replays from it, so entries still in a dropped channel are delivered again, and entries
//!   already received are not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError, bounded};
use parking_lot::Mutex;

use crate::account::AccountCell;
use crate::cache::DeviceCache;
use crate::clock::Clock;
use crate::error::Error;
use crate::hash::HashMap;
use crate::inbox::{Entry, Inbox};
use crate::message::{MessageView, RecallNotice, StoredMessage};

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
    /// The entry's sequence number in the account's inbox (the SSE `id:`).
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

/// The subscription ended: the device connected again elsewhere, its account was deleted, or
/// the store was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disconnected;

impl std::fmt::Display for Disconnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the device subscription has ended")
    }
}

impl std::error::Error for Disconnected {}

type Delivery = (u64, Entry);

/// What a device keeps that the application's receiving thread also touches.
pub(crate) struct DeviceShared {
    pub id: DeviceId,
    inner: Mutex<DeviceInner>,
}

struct DeviceInner {
    /// Bumped on every connect; an older subscription sees the mismatch and ends.
    generation: u64,
    /// The last inbox sequence number the application received (or that was skipped for it).
    cursor: u64,
    cache: DeviceCache,
}

impl DeviceShared {
    pub fn cursor(&self) -> u64 {
        self.inner.lock().cursor
    }

    pub fn set_cursor(&self, cursor: u64) {
        self.inner.lock().cursor = cursor;
    }

    pub fn cache_push(&self, msg: Arc<StoredMessage>) {
        self.inner.lock().cache.push(msg);
    }

    pub fn cache_views(&self) -> Vec<MessageView> {
        self.inner.lock().cache.views()
    }
}

/// A device as its account sees it (lives under the account lock).
pub(crate) struct DeviceSlot {
    pub shared: Arc<DeviceShared>,
    live: Option<Live>,
}

struct Live {
    tx: Sender<Delivery>,
    generation: u64,
    /// The last inbox sequence number handed to the channel (or skipped).
    pushed: u64,
    lagging: bool,
}

impl DeviceSlot {
    pub fn new(id: DeviceId, cursor: u64, cache_capacity: usize) -> Self {
        let inner = DeviceInner {
            generation: 0,
            cursor,
            cache: DeviceCache::new(cache_capacity),
        };
        DeviceSlot {
            shared: Arc::new(DeviceShared {
                id,
                inner: Mutex::new(inner),
            }),
            live: None,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.live.is_some()
    }

    /// Starts a new live session, replacing any older one. `resume_after`, when given, moves the
    /// cursor (a client resuming with the last sequence number it saw).
    pub fn connect(
        &mut self,
        capacity: usize,
        resume_after: Option<u64>,
        last_seq: u64,
    ) -> (Receiver<Delivery>, u64) {
        let (tx, rx) = bounded(capacity.max(1));
        let mut inner = self.shared.inner.lock();
        inner.generation += 1;
        if let Some(c) = resume_after {
            inner.cursor = c.min(last_seq);
        }
        let generation = inner.generation;
        // Starts lagging: the subscriber's first refill replays the inbox after the cursor.
        self.live = Some(Live {
            tx,
            generation,
            pushed: inner.cursor,
            lagging: true,
        });
        (rx, generation)
    }

    /// Hands `entry` (just appended as `seq`) to the device if it is caught up.
    fn push(&mut self, seq: u64, entry: &Entry) {
        let Some(live) = &mut self.live else { return };
        if live.lagging {
            return;
        }
        debug_assert_eq!(
            live.pushed + 1,
            seq,
            "a caught-up device has been handed every entry"
        );
        if entry.origin_device() == Some(&*self.shared.id) {
            live.pushed = seq;
            return;
        }
        match live.tx.try_send((seq, entry.clone())) {
            Ok(()) => live.pushed = seq,
            Err(TrySendError::Full(_)) => live.lagging = true,
            Err(TrySendError::Disconnected(_)) => self.live = None,
        }
    }

    /// Fills the channel of session `generation` from the inbox. Returns `false` when that
    /// session is no longer current.
    fn refill(&mut self, inbox: &Inbox, now: u64, generation: u64) -> bool {
        let Some(live) = &mut self.live else {
            return false;
        };
        if live.generation != generation {
            return false;
        }
        if !live.lagging {
            return true;
        }
        for slot in inbox.after(live.pushed) {
            let skip = slot.expires_at <= now
                || slot.entry.origin_device() == Some(&*self.shared.id)
                || matches!(&slot.entry, Entry::Message(m) if m.is_recalled());
            if !skip {
                match live.tx.try_send((slot.seq, slot.entry.clone())) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => return true,
                    Err(TrySendError::Disconnected(_)) => {
                        self.live = None;
                        return false;
                    }
                }
            }
            live.pushed = slot.seq;
        }
        live.pushed = inbox.last_seq();
        live.lagging = false;
        true
    }
}

/// Hands a just-appended inbox entry to every caught-up connected device of the account.
pub(crate) fn push_live(devices: &mut HashMap<DeviceId, DeviceSlot>, seq: u64, entry: &Entry) {
    for slot in devices.values_mut() {
        slot.push(seq, entry);
    }
}

/// A connected device's live feed: first every retained inbox entry after the device's cursor,
/// in order, then new entries as they are appended. Each entry is received once.
///
/// Dropping the subscription disconnects the device; connecting again resumes after the last
/// entry received.
pub struct Subscription {
    rx: Receiver<Delivery>,
    device: Arc<DeviceShared>,
    account: Arc<AccountCell>,
    generation: u64,
    clock: Arc<dyn Clock>,
}

enum Wait {
    No,
    Until(Instant),
    Forever,
}

impl Subscription {
    pub(crate) fn new(
        rx: Receiver<Delivery>,
        device: Arc<DeviceShared>,
        account: Arc<AccountCell>,
        generation: u64,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Subscription {
            rx,
            device,
            account,
            generation,
            clock,
        }
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.device.id
    }

    /// The account's name.
    pub fn account(&self) -> &str {
        &self.account.id
    }

    /// The inbox sequence number of the last entry received.
    pub fn cursor(&self) -> u64 {
        self.device.cursor()
    }

    /// The next event if one is ready now.
    pub fn try_recv(&self) -> Result<Option<Event>, Disconnected> {
        self.next(Wait::No)
    }

    /// The next event, waiting as long as it takes.
    pub fn recv(&self) -> Result<Event, Disconnected> {
        self.next(Wait::Forever)
            .map(|e| e.expect("an unbounded wait yields an event"))
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Event>, Disconnected> {
        self.next(Wait::Until(Instant::now() + timeout))
    }

    /// Every event ready now.
    pub fn drain(&self) -> Result<Vec<Event>, Disconnected> {
        let mut out = Vec::new();
        while let Some(e) = self.try_recv()? {
            out.push(e);
        }
        Ok(out)
    }

    fn next(&self, wait: Wait) -> Result<Option<Event>, Disconnected> {
        loop {
            let delivery = match self.rx.try_recv() {
                Ok(d) => d,
                Err(TryRecvError::Disconnected) => return Err(Disconnected),
                Err(TryRecvError::Empty) => {
                    self.refill()?;
                    match self.rx.try_recv() {
                        Ok(d) => d,
                        Err(TryRecvError::Disconnected) => return Err(Disconnected),
                        Err(TryRecvError::Empty) => match wait {
                            Wait::No => return Ok(None),
                            Wait::Forever => self.rx.recv().map_err(|_| Disconnected)?,
                            Wait::Until(deadline) => match self.rx.recv_deadline(deadline) {
                                Ok(d) => d,
                                Err(RecvTimeoutError::Timeout) => return Ok(None),
                                Err(RecvTimeoutError::Disconnected) => return Err(Disconnected),
                            },
                        },
                    }
                }
            };
            if let Some(event) = self.accept(delivery)? {
                return Ok(Some(event));
            }
        }
    }

    /// Lock order: account, then nothing else.
    fn refill(&self) -> Result<(), Disconnected> {
        let now = self.clock.now();
        let mut guard = self.account.state.lock();
        let state = &mut *guard;
        let current = state
            .devices
            .get_mut(&self.device.id)
            .is_some_and(|slot| slot.refill(&state.inbox, now, self.generation));
        if current { Ok(()) } else { Err(Disconnected) }
    }

    /// Turns a delivery into what the application receives, advancing the cursor. A message
    /// recalled (or modify notice for a message recalled) since it was queued is skipped: the
    /// device never receives the body, and its Recalled notice follows.
    ///
    /// Lock order: device, then the message's state.
    fn accept(&self, (seq, entry): Delivery) -> Result<Option<Event>, Disconnected> {
        let mut inner = self.device.inner.lock();
        if inner.generation != self.generation {
            return Err(Disconnected);
        }
        if seq <= inner.cursor {
            return Ok(None);
        }
        inner.cursor = seq;
        let event = event(seq, &entry);
        if let (Some(_), Entry::Message(msg)) = (&event, entry) {
            inner.cache.push(msg);
        }
        Ok(event)
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

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("account", &self.account())
            .field("device", &self.device())
            .finish_non_exhaustive()
    }
}
