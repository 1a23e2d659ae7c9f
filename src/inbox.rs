//! The offline inbox: per account, an ordered log of what its devices must receive — messages
//! and Recalled/Modified notices — numbered by a contiguous sequence and bounded by each entry's
//! lifetime.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::message::StoredMessage;

/// What an inbox entry carries. Cloning is a reference-count increment.
#[derive(Clone)]
pub(crate) enum Entry {
    /// A message to deliver; skipped if it is recalled before the device receives it.
    Message(Arc<StoredMessage>),
    /// A message was recalled; the notice is read off the (recalled) record.
    Recalled(Arc<StoredMessage>),
    /// A message's content was replaced; the device is sent the content current at delivery.
    Modified(Arc<StoredMessage>, u64),
}

impl Entry {
    /// Whether this is a message `device` of `account` sent itself (it is not sent it back).
    pub fn sent_by(&self, account: &str, device: &str) -> bool {
        match self {
            Entry::Message(m) => &*m.from == account && m.origin_device.as_deref() == Some(device),
            _ => false,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Slot {
    pub seq: u64,
    pub expires_at: u64,
    /// For devices connected when it was appended only (a message with MsgLifeTime 0).
    pub online_only: bool,
    pub entry: Entry,
}

/// How long an online-only entry (MsgLifeTime 0) waits in the inbox for the devices that were
/// connected when it arrived to read it.
pub(crate) const ONLINE_GRACE_SECS: u64 = 60;

pub(crate) struct Inbox {
    slots: VecDeque<Slot>,
    next_seq: u64,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox {
            slots: VecDeque::new(),
            next_seq: 1,
        }
    }
}

impl Inbox {
    /// Appends an entry and returns its sequence number. Entries at the front that have expired
    /// by `now` are dropped first, so an inbox holds at most one lifetime of traffic.
    pub fn append(&mut self, entry: Entry, expires_at: u64, now: u64, online_only: bool) -> u64 {
        self.trim(now);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.slots.push_back(Slot {
            seq,
            expires_at,
            online_only,
            entry,
        });
        seq
    }

    /// Whether `purge(now, cutoff)` would remove anything (an idle store writes nothing).
    pub fn has_expired(&self, now: u64, retention_cutoff: u64) -> bool {
        self.slots
            .iter()
            .any(|s| s.expires_at <= now || past_retention(s, retention_cutoff))
    }

    /// Drops expired entries from the front; returns how many.
    pub fn trim(&mut self, now: u64) -> usize {
        let before = self.slots.len();
        while self.slots.front().is_some_and(|s| s.expires_at <= now) {
            self.slots.pop_front();
        }
        before - self.slots.len()
    }

    /// An empty inbox whose first entry gets `next_seq`: a re-imported account continues the
    /// numbers its deleted namesake used, so that no number is given twice.
    pub fn starting_at(next_seq: u64) -> Self {
        Inbox {
            slots: VecDeque::new(),
            next_seq: next_seq.max(1),
        }
    }

    /// The sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// An inbox rebuilt from a snapshot.
    pub fn restore(next_seq: u64, slots: Vec<Slot>) -> Self {
        Inbox {
            slots: slots.into(),
            next_seq,
        }
    }

    /// What a snapshot records: the next sequence number and the retained entries.
    pub fn export(&self) -> (u64, Vec<Slot>) {
        (self.next_seq, self.slots.iter().cloned().collect())
    }

    /// Drops every expired entry, wherever it sits, and every message (or modification) whose
    /// MsgTimeStamp is before `retention_cutoff`: a message past retention leaves the inbox
    /// with the history. Returns how many entries went.
    pub fn purge(&mut self, now: u64, retention_cutoff: u64) -> usize {
        let before = self.slots.len();
        self.slots
            .retain(|s| s.expires_at > now && !past_retention(s, retention_cutoff));
        before - self.slots.len()
    }

    /// The sequence number just before the oldest retained entry: where a new device starts.
    pub fn before_oldest(&self) -> u64 {
        self.slots.front().map_or(self.next_seq, |s| s.seq) - 1
    }

    /// The sequence number of the newest entry ever appended (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Retained entries with a sequence number above `cursor`, oldest first.
    pub fn after(&self, cursor: u64) -> impl Iterator<Item = &Slot> {
        let start = self.slots.partition_point(|s| s.seq <= cursor);
        self.slots.range(start..)
    }
}

fn past_retention(s: &Slot, retention_cutoff: u64) -> bool {
    match &s.entry {
        Entry::Message(m) | Entry::Modified(m, _) => u64::from(m.key.time()) < retention_cutoff,
        Entry::Recalled(_) => false,
    }
}
