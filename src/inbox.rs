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

/// One inbox entry, packed into 24 bytes (it is paid once per message per inbox): the
/// message, the sequence number with the entry's kind and online-only flag in its top bits,
/// and two Unix times in seconds as `u32` (good until 2106; later times are kept as the
/// largest `u32`, never expiring early).
#[derive(Clone)]
pub(crate) struct Slot {
    msg: Arc<StoredMessage>,
    /// Bits 0..60: sequence number; bit 60: online only; bits 61..63: kind.
    tag: u64,
    expires_at: u32,
    /// When the message was modified (a Modified entry), else 0.
    modified_at: u32,
}

const SEQ_BITS: u32 = 60;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
const ONLINE_ONLY: u64 = 1 << SEQ_BITS;
const KIND_SHIFT: u32 = SEQ_BITS + 1;
const KIND_MESSAGE: u64 = 0;
const KIND_RECALLED: u64 = 1;
const KIND_MODIFIED: u64 = 2;

fn secs32(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

impl Slot {
    pub fn new(seq: u64, entry: Entry, expires_at: u64, online_only: bool) -> Slot {
        assert!(seq <= SEQ_MASK, "inbox sequence numbers stay below 2^60");
        let (msg, kind, modified_at) = match entry {
            Entry::Message(m) => (m, KIND_MESSAGE, 0),
            Entry::Recalled(m) => (m, KIND_RECALLED, 0),
            Entry::Modified(m, at) => (m, KIND_MODIFIED, secs32(at)),
        };
        Slot {
            msg,
            tag: seq | if online_only { ONLINE_ONLY } else { 0 } | kind << KIND_SHIFT,
            expires_at: secs32(expires_at),
            modified_at,
        }
    }

    pub fn seq(&self) -> u64 {
        self.tag & SEQ_MASK
    }

    /// When the entry expires, Unix seconds.
    pub fn expires_at(&self) -> u64 {
        if self.expires_at == u32::MAX {
            u64::MAX
        } else {
            u64::from(self.expires_at)
        }
    }

    /// For devices connected when it was appended only (a message with MsgLifeTime 0).
    pub fn online_only(&self) -> bool {
        self.tag & ONLINE_ONLY != 0
    }

    /// The message the entry is about.
    pub fn message(&self) -> &Arc<StoredMessage> {
        &self.msg
    }

    /// The entry (a reference-count increment).
    pub fn entry(&self) -> Entry {
        let m = self.msg.clone();
        match self.tag >> KIND_SHIFT {
            KIND_MESSAGE => Entry::Message(m),
            KIND_RECALLED => Entry::Recalled(m),
            _ => Entry::Modified(m, u64::from(self.modified_at)),
        }
    }

    /// Whether this is a message `device` of `account` sent itself (it is not sent it back).
    pub fn sent_by(&self, account: &crate::account::UserId, device: &str) -> bool {
        self.tag >> KIND_SHIFT == KIND_MESSAGE
            && self.msg.from == *account
            && self.msg.sent_from(device)
    }
}

/// How long an online-only entry (MsgLifeTime 0) waits in the inbox for the devices that were
/// connected when it arrived to read it.
pub(crate) const ONLINE_GRACE_SECS: u64 = 60;

/// Entries per block. A block is 384 bytes; an inbox wastes at most one block's unused tail.
const BLOCK: usize = 16;

/// The entries, oldest first, in blocks of `BLOCK` that never move once written: appending
/// writes one slot (and every `BLOCK`-th time allocates a block), never copies the inbox. A
/// `VecDeque` doubled its buffer instead — a copy of the whole inbox under the account's
/// lock, and up to half its capacity unused.
///
/// `full` holds the older blocks (each full when appended there; the front one may have lost
/// entries to expiry, and `purge` repacks them), `tail` the newest, so the slot an append
/// writes is one step from the account's state. No block in `full` is empty.
pub(crate) struct Inbox {
    full: VecDeque<Vec<Slot>>,
    tail: Vec<Slot>,
    next_seq: u64,
    /// The front entry's expiry (`u64::MAX` when empty): appending checks it without
    /// touching the front of the queue.
    front_expiry: u64,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox::starting_at(1)
    }
}

impl Inbox {
    /// Appends an entry and returns its sequence number. Entries at the front that have expired
    /// by `now` are dropped first, so an inbox holds at most one lifetime of traffic.
    pub fn append(&mut self, entry: Entry, expires_at: u64, now: u64, online_only: bool) -> u64 {
        if self.front_expiry <= now {
            self.trim(now);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = Slot::new(seq, entry, expires_at, online_only);
        if self.tail.is_empty() && self.full.is_empty() {
            self.front_expiry = slot.expires_at();
        }
        self.push(slot);
        seq
    }

    /// The first block grows as a `Vec` does (4, 8, 16 entries: an account that receives
    /// little pays little); every later one is allocated whole.
    fn push(&mut self, slot: Slot) {
        if self.tail.len() == BLOCK {
            let next = Vec::with_capacity(BLOCK);
            self.full.push_back(std::mem::replace(&mut self.tail, next));
        }
        self.tail.push(slot);
    }

    /// Starts loading the memory the next `append` writes (a hint: see `table::prefetch`).
    pub fn prefetch_tail(&self) {
        // One past the last entry: where the next goes unless the block is full (then a new
        // block is allocated, memory the allocator most likely touched lately).
        crate::table::prefetch_addr(self.tail.as_ptr_range().end.cast());
    }

    /// Every entry, oldest first.
    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.full.iter().flatten().chain(&self.tail)
    }

    fn front(&self) -> Option<&Slot> {
        self.full.front().map_or(self.tail.first(), |b| b.first())
    }

    fn len(&self) -> usize {
        self.full.iter().map(Vec::len).sum::<usize>() + self.tail.len()
    }

    fn front_changed(&mut self) {
        self.front_expiry = self.front().map_or(u64::MAX, Slot::expires_at);
    }

    /// Whether `purge(now, cutoff)` would remove anything (an idle store writes nothing).
    pub fn has_expired(&self, now: u64, retention_cutoff: u64) -> bool {
        self.iter()
            .any(|s| s.expires_at() <= now || past_retention(s, retention_cutoff))
    }

    /// Drops expired entries from the front; returns how many.
    pub fn trim(&mut self, now: u64) -> usize {
        let mut dropped = 0;
        loop {
            let block = match self.full.front_mut() {
                Some(b) => b,
                None => &mut self.tail,
            };
            // Expiry is not monotonic in sequence order (online-only entries expire within
            // a minute): a scan, which stops at the first entry that has not expired.
            let expired = block.iter().take_while(|s| s.expires_at() <= now).count();
            let whole = expired == block.len();
            block.drain(..expired);
            dropped += expired;
            if !whole || self.full.is_empty() {
                break;
            }
            self.full.pop_front();
        }
        self.front_changed();
        dropped
    }

    /// An empty inbox whose first entry gets `next_seq`: a re-imported account continues the
    /// numbers its deleted namesake used, so that no number is given twice.
    pub fn starting_at(next_seq: u64) -> Self {
        Inbox {
            full: VecDeque::new(),
            tail: Vec::new(),
            next_seq: next_seq.max(1),
            front_expiry: u64::MAX,
        }
    }

    /// The sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// An inbox rebuilt from a snapshot.
    pub fn restore(next_seq: u64, slots: Vec<Slot>) -> Self {
        let mut inbox = Inbox::starting_at(next_seq);
        inbox.next_seq = next_seq;
        for slot in slots {
            inbox.push(slot);
        }
        inbox.front_changed();
        inbox
    }

    /// What a snapshot records: the next sequence number and the retained entries.
    pub fn export(&self) -> (u64, Vec<Slot>) {
        (self.next_seq, self.iter().cloned().collect())
    }

    /// Drops every expired entry, wherever it sits, and every message (or modification) whose
    /// MsgTimeStamp is before `retention_cutoff`: a message past retention leaves the inbox
    /// with the history. Returns how many entries went. The survivors are repacked.
    pub fn purge(&mut self, now: u64, retention_cutoff: u64) -> usize {
        let before = self.len();
        let kept: Vec<Slot> = std::mem::take(&mut self.full)
            .into_iter()
            .flatten()
            .chain(std::mem::take(&mut self.tail))
            .filter(|s| s.expires_at() > now && !past_retention(s, retention_cutoff))
            .collect();
        for slot in kept {
            self.push(slot);
        }
        self.front_changed();
        before - self.len()
    }

    /// The sequence number just before the oldest retained entry: where a new device starts.
    pub fn before_oldest(&self) -> u64 {
        self.front().map_or(self.next_seq, Slot::seq) - 1
    }

    /// The sequence number of the newest entry ever appended (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Retained entries with a sequence number above `cursor`, oldest first: the block by a
    /// binary search on each block's last entry, then the entry within it.
    pub fn after(&self, cursor: u64) -> impl Iterator<Item = &Slot> {
        let b = self
            .full
            .partition_point(|blk| blk.last().is_some_and(|s| s.seq() <= cursor));
        let (in_full, in_tail) = match self.full.get(b) {
            Some(blk) => (blk.partition_point(|s| s.seq() <= cursor), 0),
            None => (0, self.tail.partition_point(|s| s.seq() <= cursor)),
        };
        self.full
            .range(b..)
            .flatten()
            .skip(in_full)
            .chain(&self.tail[in_tail..])
    }
}

fn past_retention(s: &Slot, retention_cutoff: u64) -> bool {
    s.tag >> KIND_SHIFT != KIND_RECALLED && u64::from(s.msg.key.time()) < retention_cutoff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::UserId;
    use crate::key::MsgKey;
    use crate::message::{Content, MsgElement, SenderCopy};

    fn msg() -> Arc<StoredMessage> {
        let u = UserId::new("inbox-test-a").unwrap();
        let v = UserId::new("inbox-test-b").unwrap();
        let c = Content::new(&[MsgElement::text("x")], None).unwrap();
        Arc::new(StoredMessage::new(
            u,
            v,
            MsgKey::new(1, 2, 100),
            1,
            SenderCopy::Roaming,
            false,
            c,
        ))
    }

    #[test]
    fn slots_pack_and_unpack() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
        let m = msg();
        let s = Slot::new(
            SEQ_MASK,
            Entry::Modified(m.clone(), 77),
            5_000_000_000,
            true,
        );
        assert_eq!(s.seq(), SEQ_MASK);
        assert!(s.online_only());
        assert_eq!(s.expires_at(), u64::MAX, "beyond 2106 never expires early");
        assert!(matches!(s.entry(), Entry::Modified(_, 77)));
        let s = Slot::new(7, Entry::Recalled(m.clone()), 99, false);
        assert_eq!((s.seq(), s.expires_at(), s.online_only()), (7, 99, false));
        assert!(matches!(s.entry(), Entry::Recalled(_)));
        assert!(!s.sent_by(&m.from, "d"));
    }

    #[test]
    fn entries_span_blocks_through_trim_purge_and_restore() {
        let mut inbox = Inbox::default();
        // Three and a half blocks; every fifth entry expires at 50, the others at 1000.
        let n = BLOCK as u64 * 3 + BLOCK as u64 / 2;
        for i in 1..=n {
            let exp = if i % 5 == 0 { 50 } else { 1000 };
            assert_eq!(inbox.append(Entry::Message(msg()), exp, 0, false), i);
        }
        let all: Vec<u64> = (1..=n).collect();
        assert_eq!(inbox.after(0).map(Slot::seq).collect::<Vec<_>>(), all);
        for cursor in 0..=n + 1 {
            let want: Vec<u64> = (cursor + 1..=n).collect();
            let got: Vec<u64> = inbox.after(cursor).map(Slot::seq).collect();
            assert_eq!(got, want, "after {cursor}");
        }
        // Trim stops at the first entry that has not expired: nothing goes at 60.
        assert_eq!(inbox.trim(60), 0);
        assert!(inbox.has_expired(60, 0));
        assert_eq!(inbox.purge(60, 0), (n / 5) as usize);
        let kept: Vec<u64> = (1..=n).filter(|i| i % 5 != 0).collect();
        assert_eq!(inbox.after(0).map(Slot::seq).collect::<Vec<_>>(), kept);
        assert_eq!(inbox.after(kept[20]).next().map(Slot::seq), Some(kept[21]));
        // A snapshot's round trip keeps entries and numbering.
        let (next, slots) = inbox.export();
        let back = Inbox::restore(next, slots);
        assert_eq!(back.after(0).map(Slot::seq).collect::<Vec<_>>(), kept);
        assert_eq!((back.last_seq(), back.before_oldest()), (n, 0));
        // Everything expires: trim empties every block, and numbering goes on.
        assert_eq!(inbox.trim(1000), kept.len());
        assert_eq!(inbox.after(0).count(), 0);
        assert_eq!(inbox.before_oldest(), n);
        assert_eq!(
            inbox.append(Entry::Message(msg()), 2000, 1000, false),
            n + 1
        );
        assert_eq!(inbox.before_oldest(), n);
    }

    #[test]
    fn trim_drops_whole_blocks_and_part_of_the_next() {
        let mut inbox = Inbox::default();
        for i in 1..=(BLOCK as u64 * 2 + 3) {
            let exp = if i <= BLOCK as u64 + 4 { 10 } else { 100 };
            inbox.append(Entry::Message(msg()), exp, 0, false);
        }
        assert_eq!(inbox.trim(10), BLOCK + 4);
        assert_eq!(inbox.before_oldest(), BLOCK as u64 + 4);
        assert_eq!(inbox.after(0).count(), BLOCK - 4 + 3);
        assert_eq!(inbox.front_expiry, 100);
    }

    #[test]
    fn appends_trim_what_expired_in_front() {
        let mut inbox = Inbox::default();
        assert_eq!(inbox.append(Entry::Message(msg()), 10, 0, false), 1);
        assert_eq!(inbox.append(Entry::Message(msg()), 20, 0, false), 2);
        assert_eq!(inbox.append(Entry::Message(msg()), 15, 11, false), 3);
        assert_eq!(inbox.before_oldest(), 1, "the first entry expired at 10");
        assert_eq!(inbox.purge(16, 0), 1, "the third, expired at 15");
        assert_eq!(inbox.append(Entry::Message(msg()), 30, 21, false), 4);
        let left: Vec<u64> = inbox.after(0).map(Slot::seq).collect();
        assert_eq!(left, vec![4]);
        assert_eq!(inbox.last_seq(), 4);
    }
}
