//! Devices from the store's side: connecting (a journaled `Connect`), confirming receipt (a
//! journaled `Cursor`), what a device may read, and the `Feed` a [`Subscription`] pulls from.
//! `device.rs` explains the delivery protocol and why it shows only durable entries.

use std::task::{Context, Poll};

use super::{Applied, Inner, Mode, Role, Store, no_device};
use crate::device::{
    self, Collected, DeviceId, Disconnected, Event, Feed, Subscription, SubscriptionId,
    check_device_id,
};
use crate::error::{Error, Result};
use crate::inbox::Entry;
use crate::message::{MessageView, MsgArc};
use crate::op::Op;

/// The most inbox entries one collection looks at.
const SCAN: usize = 4096;

impl Store {
    /// Connects a device of `account`: it first receives every retained inbox entry after its
    /// cursor — the last entry its client confirmed; a new device starts at the oldest — then
    /// new entries as they become durable. Connecting a device that is already connected ends
    /// the older subscription. A new device beyond `Config::max_devices_per_account` is
    /// refused (90001).
    pub fn connect(&self, account: &str, device: &str) -> Result<Subscription> {
        self.connect_inner(account, device, None)
    }

    /// Like [`connect`](Store::connect), resuming after inbox sequence number `after`: the last
    /// entry the client has (SSE `Last-Event-ID`, WebSocket `after`). That confirms receipt up
    /// to `after` (the cursor moves there if it was behind).
    ///
    /// An `after` past the inbox's last entry names entries this store never numbered (its
    /// data is older than the client's and its clock behind its sequence floor, say; a durable
    /// store's floor otherwise numbers a restored backup above all its lost records gave).
    /// It confirms nothing; the subscription starts from the device's
    /// cursor instead, and [`Subscription::reset`] says so: the client must take what follows
    /// as new, though its sequence numbers are ones it has seen (the server's `reset` event).
    pub fn connect_after(&self, account: &str, device: &str, after: u64) -> Result<Subscription> {
        self.connect_inner(account, device, Some(after))
    }

    fn connect_inner(
        &self,
        account: &str,
        device: &str,
        after: Option<u64>,
    ) -> Result<Subscription> {
        check_device_id(device)?;
        let cell = self.cell_as(account, Role::Plain)?;
        let device = DeviceId::from(device);
        let op = Op::Connect {
            account: cell.id.clone(),
            device: device.clone(),
            resume: after,
            at: self.now(),
        };
        let Applied::Connected {
            generation,
            signal,
            start,
            reset,
            end,
        } = self.run(&op)?
        else {
            unreachable!("a live connect starts a session")
        };
        let id = SubscriptionId {
            account: cell.id.clone(),
            device,
            generation,
        };
        let feed: std::sync::Weak<dyn Feed> = self.inner.me.clone();
        Ok(Subscription::new(id, feed, signal, (start, end), reset))
    }

    /// Disconnects a subscription and waits until the device's cursor and last-seen time are
    /// durable. Dropping the subscription does the same without waiting.
    pub fn disconnect(&self, sub: Subscription) -> Result<()> {
        drop(sub);
        self.durable(self.journal().map_or(0, |j| j.appended()))
    }

    /// Confirms, for `device` of `account`, receipt of every inbox entry up to `seq` (R7; the
    /// form of `POST /v4/imstore/ack`). Cumulative: a lower `seq` changes nothing.
    pub fn ack(&self, account: &str, device: &str, seq: u64) -> Result<()> {
        let cell = self.cell_as(account, Role::Plain)?;
        self.run(&Op::Cursor {
            account: cell.id.clone(),
            device: DeviceId::from(device),
            cursor: seq,
            at: self.now(),
        })
        .map(|_| ())
    }

    /// What a device whose cursor is `after` would receive now, without moving any cursor:
    /// the account's retained inbox entries after `after`, recalled messages and messages
    /// past retention left out.
    pub fn inbox(&self, account: &str, after: u64) -> Result<Vec<Event>> {
        let cell = self.cell_as(account, Role::Plain)?;
        let now = self.now();
        let cutoff = self.retention_cutoff();
        let (events, ticket) = {
            let state = cell.state.lock();
            let events: Vec<_> = state
                .inbox
                .after(after)
                .filter(|s| s.expires_at() > now && !s.online_only())
                .filter(|s| !past_retention(&s.entry(), cutoff))
                .filter_map(|s| device::event(s.seq(), &s.entry()))
                .collect();
            (events, state.ticket)
        };
        self.durable(ticket)?;
        Ok(events)
    }

    /// The last inbox sequence number the device's client confirmed.
    pub fn device_cursor(&self, account: &str, device: &str) -> Result<u64> {
        self.read_device(account, device, |slot| slot.cursor)
    }

    /// The messages a connected device holds in its cache, oldest first; recalled ones are
    /// tombstones. A device that is not connected holds none here (its client keeps its own).
    pub fn device_cache(&self, account: &str, device: &str) -> Result<Vec<MessageView>> {
        self.read_device(account, device, |slot| {
            slot.live
                .as_ref()
                .map_or_else(Vec::new, |live| live.cache.views())
        })
    }

    fn read_device<T>(
        &self,
        account: &str,
        device: &str,
        read: impl FnOnce(&device::DeviceSlot) -> T,
    ) -> Result<T> {
        let cell = self.cell_as(account, Role::Plain)?;
        let (value, ticket) = {
            let state = cell.state.lock();
            (state.devices.get(device).map(read), state.ticket)
        };
        // "No such device" rests on what forgot it (a purge, a delete): shown once durable
        // too (R6), or a crash could bring back a device a caller was told is gone.
        self.durable(ticket)?;
        value.ok_or_else(|| no_device(device))
    }

    /// The devices `account` has, with whether each is connected now.
    pub fn devices(&self, account: &str) -> Result<Vec<(String, bool)>> {
        let cell = self.cell_as(account, Role::Plain)?;
        let (mut out, ticket) = {
            let state = cell.state.lock();
            let out: Vec<_> = state
                .devices
                .iter()
                .map(|(id, s)| (id.to_string(), s.is_connected()))
                .collect();
            (out, state.ticket)
        };
        self.durable(ticket)?;
        out.sort();
        Ok(out)
    }

    /// Collects what a session may be handed after `after`, under the account lock: at most
    /// `max` events, looking at no more than [`SCAN`] entries, so the lock is held a bounded
    /// time even where thousands of entries in a row are not for this device (its own sends,
    /// expired or online-only entries, recalled messages). The subscription collects again
    /// from `upto`, releasing the lock in between.
    fn collect(
        &self,
        sub: &SubscriptionId,
        after: u64,
        max: usize,
    ) -> Result<Collected, Disconnected> {
        let cell = self.cell(&sub.account).ok_or(Disconnected)?;
        let now = self.now();
        let cutoff = self.retention_cutoff();
        let state = cell.state.lock();
        let live = state
            .devices
            .get(&*sub.device)
            .and_then(|s| s.live.as_ref())
            .filter(|l| l.generation == sub.generation && state.alive)
            .ok_or(Disconnected)?;
        let mut c = Collected {
            events: Vec::new(),
            messages: Vec::new(),
            modified: Vec::new(),
            upto: after,
            ticket: state.ticket,
        };
        // The records this collection reads, started loading together: each is read under
        // its own lock (its view, its reference count), and no later load passes a locked
        // instruction, so one at a time their misses would queue. A hint: skipped entries may
        // make the collection read a few more.
        for slot in state.inbox.after(after).take(max) {
            slot.prefetch_message();
        }
        for slot in state.inbox.after(after).take(SCAN) {
            if c.events.len() >= max {
                break;
            }
            c.upto = slot.seq();
            let skip = slot.expires_at() <= now
                || (slot.online_only() && slot.seq() <= live.since)
                || slot.sent_by(&sub.account, &sub.device);
            if skip {
                continue;
            }
            let entry = slot.entry();
            // A message past retention by its MsgTimeStamp is gone from history and a recall
            // of it answers 20022: not handed to a device either (the purge drops the entry
            // later). Its recall notice still is.
            if past_retention(&entry, cutoff) {
                continue;
            }
            if let Some(event) = device::event(slot.seq(), &entry) {
                match entry {
                    Entry::Message(m) => c.messages.push((slot.seq(), m)),
                    Entry::Modified(m, _) => c.modified.push((slot.seq(), m)),
                    Entry::Recalled(_) => {}
                }
                c.events.push(event);
            }
        }
        if c.upto == after {
            // Nothing new: this may run ahead of the last collection's ticket, which is fine,
            // since nothing is shown.
            c.ticket = 0;
        }
        Ok(c)
    }

    fn with_live(&self, sub: &SubscriptionId, f: impl FnOnce(&mut device::DeviceSlot)) {
        if let Some(cell) = self.cell(&sub.account) {
            let mut state = cell.state.lock();
            if let Some(slot) = state.devices.get_mut(&*sub.device)
                && slot
                    .live
                    .as_ref()
                    .is_some_and(|l| l.generation == sub.generation)
            {
                f(slot);
            }
        }
    }
}

impl Inner {
    fn store(&self) -> Option<Store> {
        self.me.upgrade().map(|inner| Store { inner })
    }
}

impl Feed for Inner {
    fn collect(
        &self,
        sub: &SubscriptionId,
        after: u64,
        max: usize,
    ) -> Result<Collected, Disconnected> {
        self.store().ok_or(Disconnected)?.collect(sub, after, max)
    }

    fn durable(&self, ticket: u64) -> Result<(), Disconnected> {
        match self.journal.get() {
            Some(j) => j.commit_to(ticket).map_err(|_| Disconnected),
            None => Ok(()),
        }
    }

    fn poll_durable(&self, ticket: u64, cx: &mut Context<'_>) -> Poll<Result<(), Disconnected>> {
        match self.journal.get() {
            Some(j) => j.poll_durable(ticket, cx).map_err(|_| Disconnected),
            None => Poll::Ready(Ok(())),
        }
    }

    fn handed_out(&self, sub: &SubscriptionId, messages: Vec<MsgArc>) {
        if messages.is_empty() {
            return;
        }
        if let Some(store) = self.store() {
            store.with_live(sub, |slot| {
                let live = slot.live.as_mut().expect("checked by with_live");
                for m in messages {
                    live.cache.push(m);
                }
            });
        }
    }

    fn ack(&self, sub: &SubscriptionId, seq: u64) -> Result<(), Error> {
        let store = self
            .store()
            .ok_or_else(|| Error::Internal("the store is closed".into()))?;
        // Not awaited: a cursor that did not reach the disk costs repeats, never a loss.
        store
            .apply(
                &Op::Cursor {
                    account: sub.account.clone(),
                    device: sub.device.clone(),
                    cursor: seq,
                    at: store.now(),
                },
                Mode::Live,
            )
            .map(|_| ())
    }

    /// Records when the device was last seen (idle devices are forgotten; best effort), then
    /// ends the session. In that order: ended first, there was a moment in which a purge found
    /// the device disconnected with the last sight of its connect, and a device connected
    /// longer than `device_idle_secs` was forgotten on its way out.
    fn release(&self, sub: &SubscriptionId) {
        let Some(store) = self.store() else { return };
        let mut cursor = None;
        store.with_live(sub, |slot| cursor = Some(slot.cursor));
        if let Some(cursor) = cursor {
            let _ = store.apply(
                &Op::Cursor {
                    account: sub.account.clone(),
                    device: sub.device.clone(),
                    cursor,
                    at: store.now(),
                },
                Mode::Live,
            );
            store.with_live(sub, device::DeviceSlot::end_session);
        }
    }

    /// The device's confirmed cursor once durable (R6: as `device_cursor`, a cursor a crash
    /// could take back is not shown; an ack is journaled without waiting).
    fn cursor(&self, sub: &SubscriptionId) -> Option<u64> {
        let cell = self.accounts.get(&sub.account)?;
        let (cursor, ticket) = {
            let state = cell.state.lock();
            (state.devices.get(&*sub.device)?.cursor, state.ticket)
        };
        self.durable(ticket).ok()?;
        Some(cursor)
    }
}

/// Whether `entry` shows a message whose MsgTimeStamp is before `cutoff` (past retention):
/// gone from history, not handed to a device (its recall notice still is).
fn past_retention(entry: &Entry, cutoff: u64) -> bool {
    matches!(entry, Entry::Message(m) | Entry::Modified(m, _) if u64::from(m.key.time()) < cutoff)
}

#[cfg(test)]
mod tests {
    use super::SCAN;
    use crate::device::EventKind;
    use crate::{Config, MsgElement, SendRequest, SenderCopy, Store};

    #[test]
    fn a_collection_looks_at_a_bounded_number_of_entries_and_the_feed_goes_on() {
        let store = Store::in_memory(Config::default()).unwrap();
        store.import_accounts(&["scan-a", "scan-b"]).unwrap();
        let phone = store.connect("scan-a", "phone").unwrap();
        // Entries in scan-a's inbox that its phone is never sent: its own sends.
        let own = SCAN * 2 + 10;
        for i in 0..own {
            let mut req =
                SendRequest::new("scan-a", "scan-b", i as u32, vec![MsgElement::text("mine")]);
            req.from_device = Some("phone".into());
            req.sender_copy = SenderCopy::RoamingAndDevices;
            store.send(req).unwrap();
        }
        store
            .send(SendRequest::new(
                "scan-b",
                "scan-a",
                1,
                vec![MsgElement::text("for you")],
            ))
            .unwrap();
        let c = store.collect(phone.id(), 0, 64).unwrap();
        assert!(c.events.is_empty());
        assert_eq!(c.upto, SCAN as u64, "stopped after SCAN entries");
        let events = phone.drain().unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].seq, own as u64 + 1);
        assert!(matches!(events[0].kind, EventKind::Message(_)));
    }
}
