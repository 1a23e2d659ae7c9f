//! The offline inbox: per account, an ordered log of what its devices must receive — messages
//! and Recalled/Modified notices — numbered by an increasing sequence (contiguous but for the
//! jumps a sequence floor makes, `Op::SeqFloor`) and bounded by each entry's lifetime.

use std::collections::VecDeque;

use crate::message::MsgArc;

mod slots;
use slots::Slots;

/// What an inbox entry carries. Cloning is a reference-count increment.
#[derive(Clone)]
pub(crate) enum Entry {
    /// A message to deliver; skipped if it is recalled before the device receives it.
    Message(MsgArc),
    /// A message was recalled; the notice is read off the (recalled) record.
    Recalled(MsgArc),
    /// A message's content was replaced; the device is sent the content current at delivery.
    Modified(MsgArc, u64),
}

/// One inbox entry as stored, 16 bytes (it is paid once per message per inbox): the message,
/// the entry's expiry in Unix seconds as a `u32` (good until 2106; later times are kept as the
/// largest `u32`, never expiring early), and in `low` its sequence number's distance from its
/// block's first (`Block::base`), its kind and its online-only flag. A Modified entry's time is
/// kept beside the blocks (`Inbox::modified`): such entries are rare.
struct Packed {
    msg: MsgArc,
    expires_at: u32,
    /// Bits 0..29: seq - block base; bit 29: online only; bits 30..32: kind.
    low: u32,
}

const DELTA_BITS: u32 = 29;
const DELTA_LIMIT: u64 = 1 << DELTA_BITS;
const ONLINE_ONLY: u32 = 1 << DELTA_BITS;
const KIND_SHIFT: u32 = DELTA_BITS + 1;
const KIND_MESSAGE: u32 = 0;
const KIND_RECALLED: u32 = 1;
const KIND_MODIFIED: u32 = 2;

fn secs32(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

impl Packed {
    fn kind(&self) -> u32 {
        self.low >> KIND_SHIFT
    }

    fn delta(&self) -> u64 {
        u64::from(self.low & (ONLINE_ONLY - 1))
    }
}

/// An entry as the inbox hands it out (borrowed): its sequence number and what it holds.
#[derive(Clone, Copy)]
pub(crate) struct SlotRef<'a> {
    seq: u64,
    packed: &'a Packed,
    /// When the message was modified (a Modified entry), else 0.
    modified_at: u32,
}

impl<'a> SlotRef<'a> {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// When the entry expires, Unix seconds.
    pub fn expires_at(&self) -> u64 {
        match self.packed.expires_at {
            u32::MAX => u64::MAX,
            t => u64::from(t),
        }
    }

    /// For devices connected when it was appended only (a message with MsgLifeTime 0).
    pub fn online_only(&self) -> bool {
        self.packed.low & ONLINE_ONLY != 0
    }

    /// Starts loading the message record this entry points to (a hint; reads the entry only).
    pub fn prefetch_message(&self) {
        MsgArc::prefetch(&self.packed.msg);
    }

    /// The entry (a reference-count increment).
    pub fn entry(&self) -> Entry {
        let m = self.packed.msg.clone();
        match self.packed.kind() {
            KIND_MESSAGE => Entry::Message(m),
            KIND_RECALLED => Entry::Recalled(m),
            _ => Entry::Modified(m, u64::from(self.modified_at)),
        }
    }

    /// Whether this is a message `device` of `account` sent itself (it is not sent it back).
    pub fn sent_by(&self, account: &crate::account::UserId, device: &str) -> bool {
        self.packed.kind() == KIND_MESSAGE
            && self.packed.msg.from == *account
            && self.packed.msg.sent_from(device)
    }

    fn to_owned(self) -> Slot {
        Slot {
            seq: self.seq,
            entry: self.entry(),
            expires_at: self.expires_at(),
            online_only: self.online_only(),
        }
    }
}

/// An entry whole, as a snapshot writes and reads it.
pub(crate) struct Slot {
    seq: u64,
    entry: Entry,
    expires_at: u64,
    online_only: bool,
}

impl Slot {
    pub fn new(seq: u64, entry: Entry, expires_at: u64, online_only: bool) -> Slot {
        Slot {
            seq,
            entry,
            expires_at: match secs32(expires_at) {
                u32::MAX => u64::MAX,
                t => u64::from(t),
            },
            online_only,
        }
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    pub fn online_only(&self) -> bool {
        self.online_only
    }

    pub fn message(&self) -> &MsgArc {
        match &self.entry {
            Entry::Message(m) | Entry::Recalled(m) | Entry::Modified(m, _) => m,
        }
    }

    pub fn entry(&self) -> Entry {
        self.entry.clone()
    }
}

/// How long an online-only entry (MsgLifeTime 0) waits in the inbox for the devices that were
/// connected when it arrived to read it.
pub(crate) const ONLINE_GRACE_SECS: u64 = 60;

/// Entries per block. A block is 256 bytes; an inbox wastes at most one block's unused tail,
/// and that of each block a gap in its numbers ended (a sequence floor's jump at a restart).
const BLOCK: usize = 16;

/// Entries whose sequence numbers are `base` plus what each holds (below 2^29 — a gap that
/// large, left by a purge, starts a new block).
struct Block {
    base: u64,
    slots: Slots,
}

impl Block {
    fn seq(&self, p: &Packed) -> u64 {
        self.base + p.delta()
    }

    fn last_seq(&self) -> Option<u64> {
        self.slots.last().map(|p| self.seq(p))
    }
}

/// The entries, oldest first, in blocks of `BLOCK` that never move once written: appending
/// writes one slot (and every `BLOCK`-th time allocates a block), never copies the inbox. A
/// `VecDeque` doubled its buffer instead — a copy of the whole inbox under the account's
/// lock, and up to half its capacity unused.
///
/// `full` holds the older blocks (each full when appended there; the front one may have lost
/// entries to expiry, and `purge` repacks them), `tail` the newest, so the slot an append
/// writes is one step from the account's state. No block in `full` is empty.
pub(crate) struct Inbox {
    full: VecDeque<Block>,
    tail: Block,
    /// (seq, time) of each retained Modified entry, in sequence order.
    modified: Vec<(u64, u32)>,
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
    /// by `now` are dropped first; expired entries behind one that has not (a recall notice
    /// lives longer than messages) stay until `purge`.
    pub fn append(&mut self, entry: Entry, expires_at: u64, now: u64, online_only: bool) -> u64 {
        if self.front_expiry <= now {
            self.trim(now);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.is_empty() {
            self.front_expiry = match secs32(expires_at) {
                u32::MAX => u64::MAX,
                t => u64::from(t),
            };
        }
        self.push(seq, entry, expires_at, online_only);
        seq
    }

    fn is_empty(&self) -> bool {
        self.tail.slots.is_empty() && self.full.is_empty()
    }

    /// Stores an entry with a sequence number above every stored one. The first block holds 4
    /// entries, then 16 (an account that receives little pays little); every later one is
    /// allocated whole.
    fn push(&mut self, seq: u64, entry: Entry, expires_at: u64, online_only: bool) {
        let (msg, kind) = match entry {
            Entry::Message(m) => (m, KIND_MESSAGE),
            Entry::Recalled(m) => (m, KIND_RECALLED),
            Entry::Modified(m, at) => {
                self.modified.push((seq, secs32(at)));
                (m, KIND_MODIFIED)
            }
        };
        if self.tail.slots.is_empty() {
            self.tail.base = seq;
        } else if self.tail.slots.len() == BLOCK || seq - self.tail.base >= DELTA_LIMIT {
            // A block begun for a gap (a sequence floor's jump, a purge's) starts small, as an
            // account's first does: an inbox that gets an entry or two between restarts would
            // otherwise hold a whole block for each.
            let slots = if self.tail.slots.len() == BLOCK {
                Slots::block()
            } else {
                Slots::new()
            };
            let next = Block { base: seq, slots };
            self.full.push_back(std::mem::replace(&mut self.tail, next));
        }
        let low = (seq - self.tail.base) as u32
            | if online_only { ONLINE_ONLY } else { 0 }
            | kind << KIND_SHIFT;
        // An account's first block has room for 4 entries, then for the whole block at once
        // (`Slots::push`).
        self.tail.slots.push(Packed {
            msg,
            expires_at: secs32(expires_at),
            low,
        });
    }

    /// Starts loading the memory the next `append` writes (a hint: see `table::prefetch`).
    pub fn prefetch_tail(&self) {
        // One past the last entry: where the next goes unless the block is full (then a new
        // block is allocated, memory the allocator most likely touched lately).
        crate::table::prefetch_addr(self.tail.slots.as_ptr_range().end.cast());
    }

    fn view<'a>(&'a self, block: &Block, p: &'a Packed) -> SlotRef<'a> {
        let seq = block.seq(p);
        let modified_at = if p.kind() == KIND_MODIFIED {
            let i = self.modified.partition_point(|&(s, _)| s < seq);
            self.modified
                .get(i)
                .filter(|m| m.0 == seq)
                .map_or(0, |m| m.1)
        } else {
            0
        };
        SlotRef {
            seq,
            packed: p,
            modified_at,
        }
    }

    fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.full.iter().chain(std::iter::once(&self.tail))
    }

    /// Every entry, oldest first.
    fn iter(&self) -> impl Iterator<Item = SlotRef<'_>> {
        self.blocks()
            .flat_map(move |b| b.slots.iter().map(move |p| self.view(b, p)))
    }

    fn front(&self) -> Option<SlotRef<'_>> {
        self.iter().next()
    }

    fn len(&self) -> usize {
        self.blocks().map(|b| b.slots.len()).sum()
    }

    fn front_changed(&mut self) {
        self.front_expiry = self.front().map_or(u64::MAX, |s| s.expires_at());
        // Modified times of entries that are gone.
        let first = self.front().map_or(self.next_seq, |s| s.seq());
        let gone = self.modified.partition_point(|&(s, _)| s < first);
        self.modified.drain(..gone);
    }

    /// Whether `purge(now, cutoff)` would remove anything (an idle store writes nothing).
    pub fn has_expired(&self, now: u64, retention_cutoff: u64) -> bool {
        self.iter()
            .any(|s| s.expires_at() <= now || past_retention(&s, retention_cutoff))
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
            let expired = block
                .slots
                .iter()
                .take_while(|p| u64::from(p.expires_at) <= now && p.expires_at != u32::MAX)
                .count();
            let whole = expired == block.slots.len();
            block.slots.remove_front(expired);
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
            tail: Block {
                base: 0,
                slots: Slots::new(),
            },
            modified: Vec::new(),
            next_seq: next_seq.max(1),
            front_expiry: u64::MAX,
        }
    }

    /// Numbers the next entry at `floor` or above (`Op::SeqFloor`): the numbers in between
    /// are never given. An empty inbox's new devices start there.
    pub fn raise_next_seq(&mut self, floor: u64) {
        self.next_seq = self.next_seq.max(floor);
    }

    /// The sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// An inbox rebuilt from a snapshot (entries in sequence order, below `next_seq`).
    pub fn restore(next_seq: u64, slots: Vec<Slot>) -> Self {
        let mut inbox = Inbox::starting_at(next_seq);
        inbox.next_seq = next_seq;
        for s in slots {
            inbox.push(s.seq, s.entry, s.expires_at, s.online_only);
        }
        inbox.front_changed();
        inbox
    }

    /// Adds the entries of a snapshot's continuation record (an inbox too large for one record
    /// is written in several), in sequence order after every entry held and below
    /// `next_seq`; else `Err` names the first that is not.
    pub fn extend_restored(&mut self, slots: Vec<Slot>) -> Result<(), u64> {
        let mut last = (self.tail.last_seq())
            .or_else(|| self.full.back().and_then(Block::last_seq))
            .unwrap_or(0);
        for s in slots {
            if s.seq <= last || s.seq >= self.next_seq {
                return Err(s.seq);
            }
            last = s.seq;
            self.push(s.seq, s.entry, s.expires_at, s.online_only);
        }
        self.front_changed();
        Ok(())
    }

    /// What a snapshot records: the next sequence number and the retained entries.
    pub fn export(&self) -> (u64, Vec<Slot>) {
        (self.next_seq, self.iter().map(SlotRef::to_owned).collect())
    }

    /// Drops every expired entry, wherever it sits, and every message (or modification) whose
    /// MsgTimeStamp is before `retention_cutoff`: a message past retention leaves the inbox
    /// with the history. Returns how many entries went, and whether any was past retention:
    /// such an entry may hold the last reference to its body (the history let it go), which
    /// then leaves the store — an erasure (`journal/erasure.rs`). An entry that only expired
    /// refers to a message its history still holds. The survivors are repacked.
    pub fn purge(&mut self, now: u64, retention_cutoff: u64) -> (usize, bool) {
        let before = self.len();
        let mut erased = false;
        let kept: Vec<Slot> = self
            .iter()
            .filter(|s| {
                let past = past_retention(s, retention_cutoff);
                erased |= past;
                s.expires_at() > now && !past
            })
            .map(SlotRef::to_owned)
            .collect();
        let next_seq = self.next_seq;
        *self = Inbox::restore(next_seq, kept);
        (before - self.len(), erased)
    }

    /// The sequence number just before the oldest retained entry: where a new device starts.
    pub fn before_oldest(&self) -> u64 {
        self.front().map_or(self.next_seq, |s| s.seq()) - 1
    }

    /// The sequence number of the newest entry ever appended (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Retained entries with a sequence number above `cursor`, oldest first: the block by a
    /// binary search on each block's last entry, then the entry within it.
    pub fn after(&self, cursor: u64) -> impl Iterator<Item = SlotRef<'_>> {
        let b = self
            .full
            .partition_point(|blk| blk.last_seq().is_some_and(|s| s <= cursor));
        let first = self.full.get(b).unwrap_or(&self.tail);
        let skip = first.slots.partition_point(|p| first.seq(p) <= cursor);
        self.full
            .range(b..)
            .chain(std::iter::once(&self.tail))
            .enumerate()
            .flat_map(move |(i, blk)| {
                let from = if i == 0 { skip } else { 0 };
                blk.slots[from..].iter().map(move |p| self.view(blk, p))
            })
    }
}

fn past_retention(s: &SlotRef<'_>, retention_cutoff: u64) -> bool {
    s.packed.kind() != KIND_RECALLED && u64::from(s.packed.msg.key.time()) < retention_cutoff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::UserId;
    use crate::key::MsgKey;
    use crate::message::{Content, MsgElement, SenderCopy, StoredMessage};

    pub(super) fn msg() -> MsgArc {
        let u = UserId::new("inbox-test-a").unwrap();
        let v = UserId::new("inbox-test-b").unwrap();
        let c = Content::new(&[MsgElement::text("x")], None).unwrap();
        MsgArc::new(StoredMessage::new(
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
        assert_eq!(std::mem::size_of::<Packed>(), 16);
        let m = msg();
        let mut inbox = Inbox::starting_at(SEQ_FAR);
        inbox.append(Entry::Modified(m.clone(), 77), 5_000_000_000, 0, true);
        inbox.append(Entry::Recalled(m.clone()), 99, 0, false);
        inbox.append(Entry::Modified(m.clone(), 78), 100, 0, false);
        let s: Vec<SlotRef<'_>> = inbox.after(0).collect();
        assert_eq!(s[0].seq(), SEQ_FAR);
        assert!(s[0].online_only());
        assert_eq!(
            s[0].expires_at(),
            u64::MAX,
            "beyond 2106 never expires early"
        );
        assert!(matches!(s[0].entry(), Entry::Modified(_, 77)));
        assert_eq!(
            (s[1].seq(), s[1].expires_at(), s[1].online_only()),
            (SEQ_FAR + 1, 99, false)
        );
        assert!(matches!(s[1].entry(), Entry::Recalled(_)));
        assert!(!s[1].sent_by(&m.from, "d"));
        assert!(matches!(s[2].entry(), Entry::Modified(_, 78)));
        // Modified times survive a snapshot, and leave with their entries.
        let (next, slots) = inbox.export();
        let mut back = Inbox::restore(next, slots);
        let kinds: Vec<_> = back.after(0).map(|s| (s.seq(), s.entry())).collect();
        assert!(matches!(kinds[2], (n, Entry::Modified(_, 78)) if n == SEQ_FAR + 2));
        assert_eq!(back.trim(99), 0, "the first entry has not expired");
        assert_eq!(back.purge(99, 0), (1, false));
        assert_eq!(back.modified, vec![(SEQ_FAR, 77), (SEQ_FAR + 2, 78)]);
        assert_eq!(back.purge(100, 0), (1, false));
        assert_eq!(back.modified, vec![(SEQ_FAR, 77)]);
    }

    /// A sequence number far above 2^32: blocks hold numbers relative to their first.
    const SEQ_FAR: u64 = (1 << 40) + 5;

    #[test]
    fn a_gap_of_2_pow_29_or_more_starts_a_block() {
        let m = msg();
        let mut slots = Vec::new();
        let far = [1, 2, 2 + DELTA_LIMIT, 3 + DELTA_LIMIT, 3 + 3 * DELTA_LIMIT];
        for seq in far {
            slots.push(Slot::new(seq, Entry::Message(m.clone()), 1000, false));
        }
        let inbox = Inbox::restore(4 + 3 * DELTA_LIMIT, slots);
        assert_eq!(inbox.after(0).map(|s| s.seq()).collect::<Vec<_>>(), far);
        assert_eq!(
            inbox.after(2).map(|s| s.seq()).collect::<Vec<_>>(),
            far[2..]
        );
        assert_eq!(inbox.full.len(), 2);
    }

    /// A sequence floor (`raise_next_seq`, at each restart) ends the tail block: the block it
    /// begins starts as small as an account's first, so an inbox that gets an entry between
    /// restarts holds a small block for each, not a whole one. Numbers go on above the floor.
    #[test]
    fn a_block_begun_after_a_floor_starts_small() {
        let mut inbox = Inbox::default();
        let mut seqs = Vec::new();
        for restart in 1..=4u64 {
            inbox.raise_next_seq(restart * DELTA_LIMIT * 2);
            seqs.push(inbox.append(Entry::Message(msg()), 1000, 0, false));
        }
        assert_eq!(seqs, [2, 4, 6, 8].map(|k| k * DELTA_LIMIT));
        assert_eq!(inbox.after(4 * DELTA_LIMIT).count(), 2);
        let capacities: Vec<usize> = inbox.blocks().map(|b| b.slots.capacity()).collect();
        assert!(capacities.iter().all(|&c| c < BLOCK), "{capacities:?}");
        // A block that fills goes on whole, as before.
        for _ in 0..BLOCK {
            inbox.append(Entry::Message(msg()), 1000, 0, false);
        }
        assert_eq!(inbox.full.back().unwrap().slots.capacity(), BLOCK);
        assert_eq!(inbox.tail.slots.capacity(), BLOCK);
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
        assert_eq!(inbox.after(0).map(|s| s.seq()).collect::<Vec<_>>(), all);
        for cursor in 0..=n + 1 {
            let want: Vec<u64> = (cursor + 1..=n).collect();
            let got: Vec<u64> = inbox.after(cursor).map(|s| s.seq()).collect();
            assert_eq!(got, want, "after {cursor}");
        }
        // Trim stops at the first entry that has not expired: nothing goes at 60.
        assert_eq!(inbox.trim(60), 0);
        assert!(inbox.has_expired(60, 0));
        assert_eq!(inbox.purge(60, 0), ((n / 5) as usize, false));
        let kept: Vec<u64> = (1..=n).filter(|i| i % 5 != 0).collect();
        assert_eq!(inbox.after(0).map(|s| s.seq()).collect::<Vec<_>>(), kept);
        assert_eq!(
            inbox.after(kept[20]).next().map(|s| s.seq()),
            Some(kept[21])
        );
        // A snapshot's round trip keeps entries and numbering.
        let (next, slots) = inbox.export();
        let back = Inbox::restore(next, slots);
        assert_eq!(back.after(0).map(|s| s.seq()).collect::<Vec<_>>(), kept);
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
        assert_eq!(inbox.purge(16, 0), (1, false), "the third, expired at 15");
        assert_eq!(inbox.append(Entry::Message(msg()), 30, 21, false), 4);
        let left: Vec<u64> = inbox.after(0).map(|s| s.seq()).collect();
        assert_eq!(left, vec![4]);
        assert_eq!(inbox.last_seq(), 4);
    }
}
