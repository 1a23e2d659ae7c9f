//! Roaming history: one `Conversation` per unordered pair of accounts, holding every message of
//! both directions in (MsgTimeStamp, MsgSeq, arrival) order, with a per-side view, read marks,
//! unread counts, retention and the paging of `admin_getroammsg`.

use std::ops::Bound;

use crate::account::UserId;
use crate::key::MsgKey;
use crate::message::{
    ARRIVAL_LIMIT, Content, MessageView, MsgArc, StoredMessage, json_escaped_len,
};

mod ring;
use ring::Ring;

/// A message's place in history order: (MsgTimeStamp, MsgSeq, arrival).
pub(crate) type Pos = (u32, u32, u64);

/// How long a send repeated with a later MsgTimeStamp is still taken for a retry
/// ([`Conversation::find_retry`]): Tencent's deduplication window.
pub const RETRY_WINDOW_SECS: u64 = 120;

/// How much later than a retry its first attempt may be dated (clocks of a cluster's nodes).
pub const RETRY_SKEW_SECS: u64 = 5;

/// Up to how many messages of a retry's window [`Conversation::find_retry`] reads in a row;
/// beyond, it looks up each second's (time, seq) instead.
const RETRY_SCAN: usize = 64;

/// Fixed bytes a history item costs on the wire besides its accounts and content, at most:
/// field names, numbers and punctuation of one `MsgList` entry (`api::wire::WireMessage`),
/// with ten-digit MsgSeq, MsgRandom, MsgTimeStamp and MsgFlagBits, a CloudCustomData, and the
/// comma between entries — 221 bytes.
const ITEM_OVERHEAD_BYTES: usize = 224;

/// Bytes of an `admin_getroammsg` answer besides its `MsgList` entries, at most: the envelope,
/// Complete, MsgCnt, LastMsgTime and LastMsgKey, with ten-digit numbers — 169 bytes. Taken off
/// the page's byte cap, so that the whole answer stays within it.
const ANSWER_OVERHEAD_BYTES: usize = 176;

/// How many of a page's newest records `Conversation::page` starts loading before it reads
/// them (the page's MaxCnt and one more, up to this).
const PAGE_PREFETCH: usize = 24;

/// An `admin_getroammsg` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Operator_Account: whose view of the conversation.
    pub operator: String,
    /// Peer_Account: the other party.
    pub peer: String,
    /// MaxCnt: at most this many messages (at least 1).
    pub max_cnt: u32,
    /// MinTime, inclusive, Unix seconds.
    pub min_time: u32,
    /// MaxTime, inclusive, Unix seconds.
    pub max_time: u32,
    /// LastMsgKey of the previous page: continue with messages older than it.
    pub last_msg_key: Option<MsgKey>,
}

impl HistoryQuery {
    /// The whole retained history of `operator` with `peer`, newest `max_cnt` first page.
    pub fn new(operator: &str, peer: &str, max_cnt: u32) -> Self {
        HistoryQuery {
            operator: operator.to_owned(),
            peer: peer.to_owned(),
            max_cnt,
            min_time: 0,
            max_time: u32::MAX,
            last_msg_key: None,
        }
    }

    /// The query for the page after `page`.
    pub fn next_page(&self, page: &HistoryPage) -> Option<HistoryQuery> {
        if page.complete {
            return None;
        }
        Some(HistoryQuery {
            max_time: page.last_msg_time,
            last_msg_key: page.last_msg_key,
            ..self.clone()
        })
    }
}

/// One entry of a history page.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryItem {
    /// The message; its content is `None` when recalled (MsgFlagBits 8, empty MsgBody).
    pub message: MessageView,
    /// IsPeerRead: the recipient has marked this message read.
    pub is_peer_read: bool,
}

/// An `admin_getroammsg` answer.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryPage {
    /// MsgList, oldest first.
    pub messages: Vec<HistoryItem>,
    /// Complete: nothing older in the range remains.
    pub complete: bool,
    /// LastMsgTime: MsgTimeStamp of the oldest message returned (0 when none).
    pub last_msg_time: u32,
    /// LastMsgKey: MsgKey of the oldest message returned.
    pub last_msg_key: Option<MsgKey>,
}

/// Which side of a conversation: 0 for the smaller UserID, 1 for the larger.
pub(crate) type Side = usize;

pub(crate) struct Conversation {
    /// The two accounts in number order (`UserId::num`): side 0 and side 1.
    users: [UserId; 2],
    next_arrival: u64,
    /// Both directions in history order. A message is found by binary search on its
    /// (MsgTimeStamp, MsgSeq) — both are in its MsgKey — so no index is kept beside it; they
    /// are kept next to each pointer (8 bytes a message) so the search reads this buffer only,
    /// not a message record per probe (a cache miss each, in a large store). A deque: expiry
    /// removes from the front on every send once retention applies, which in a `Vec` would
    /// move the whole remaining history each time.
    messages: Messages,
    /// Per side: the arrival number up to which that side has read what its peer sent.
    read_mark: [u64; 2],
    /// Per side: how many messages from its peer that side has not read (unread counts live
    /// here, in a lock the send and recall take anyway, not in a map of each account's).
    pub unread: [u32; 2],
    /// The journal ticket of the last operation that changed this conversation: readers show
    /// what they read here only once the journal is durable up to it (R6).
    pub ticket: u64,
    /// Per side: the store's number of the conversation before this one in that side's
    /// account's list (`AccountState::conversations`; `NO_CONVERSATION` at the end). Set
    /// before the conversation is stored, never changed after.
    next: [u32; 2],
}

/// The addresses a [`Conversation::hint`] can name: 56 bits (x86-64 and arm64 user space).
const HINT_ADDRESS: u64 = (1 << 56) - 1;

/// How much of a buffer a hint names: its first 255 bytes — 15 places and most of a 16th,
/// from the buffer's start, not the ring's head (a binary search of a longer one reads a few
/// of its lines, which no hint can name): four cache lines, five when the buffer (one from
/// the allocator, of 64 places or more) does not start a line.
const HINT_BYTES: usize = 255;

/// Starts loading what a [`Conversation::hint`] names. It may be stale — memory freed or
/// reused since: a prefetch reads nothing the program sees and never faults.
pub(crate) fn prefetch_hint(hint: u64) {
    if hint != 0 {
        crate::table::prefetch_range(
            (hint & HINT_ADDRESS) as usize as *const u8,
            (hint >> 56) as usize,
        );
    }
}

/// A message in a conversation, with its (MsgTimeStamp, MsgSeq) beside it.
struct Held {
    /// MsgTimeStamp << 32 | MsgSeq.
    ts: u64,
    msg: MsgArc,
}

/// A conversation's messages in history order: the one message most conversations of a large
/// store hold is kept in place (its recall reads no buffer: one cache miss fewer), more in a
/// ring (`ring.rs`). 32 bytes in every form.
enum Messages {
    Empty,
    One(Held),
    /// Two or more. Its buffer doubles from two (a `VecDeque`'s own growth starts at four:
    /// 64 bytes where two need 32).
    Many(Ring),
}

impl Messages {
    fn from_vec(mut v: Vec<Held>) -> Self {
        match v.len() {
            0 => Messages::Empty,
            1 => Messages::One(v.pop().expect("one")),
            _ => Messages::Many(Ring::from_vec(v)),
        }
    }

    fn as_slices(&self) -> (&[Held], &[Held]) {
        match self {
            Messages::Empty => (&[], &[]),
            Messages::One(h) => (std::slice::from_ref(h), &[]),
            Messages::Many(d) => d.as_slices(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Messages::Empty => 0,
            Messages::One(_) => 1,
            Messages::Many(d) => d.len(),
        }
    }

    fn front(&self) -> Option<&Held> {
        self.range(0, 1).next()
    }

    fn back(&self) -> Option<&Held> {
        self.range(0, self.len()).next_back()
    }

    /// The index of the first message for which `pred` is false (`pred` holds for a prefix).
    fn partition_point(&self, mut pred: impl FnMut(&Held) -> bool) -> usize {
        match self {
            Messages::Empty => 0,
            Messages::One(h) => usize::from(pred(h)),
            Messages::Many(d) => d.partition_point(pred),
        }
    }

    /// Messages `start..end` (clamped to the length).
    fn range(&self, start: usize, end: usize) -> impl DoubleEndedIterator<Item = &Held> {
        let (a, b) = self.as_slices();
        let (n, end) = (a.len(), end.min(a.len() + b.len()));
        let start = start.min(end);
        a[start.min(n)..end.min(n)]
            .iter()
            .chain(&b[start.saturating_sub(n)..end.saturating_sub(n)])
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = &Held> {
        self.range(0, self.len())
    }

    /// Inserts `held` before the message at `at` (at the end when `at` is the length).
    fn insert(&mut self, at: usize, held: Held) {
        match std::mem::replace(self, Messages::Empty) {
            Messages::Empty => *self = Messages::One(held),
            Messages::One(first) => {
                let mut d = Ring::with_capacity(2);
                d.insert(0, first);
                d.insert(at.min(1), held);
                *self = Messages::Many(d);
            }
            Messages::Many(mut d) => {
                d.insert(at.min(d.len()), held);
                *self = Messages::Many(d);
            }
        }
    }

    /// Removes the first `n` messages.
    fn drain_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        match self {
            Messages::Empty => {}
            Messages::One(_) => *self = Messages::Empty,
            Messages::Many(d) => {
                d.drain_front(n);
                // One left goes back in place, and its buffer is freed.
                match d.len() {
                    0 => *self = Messages::Empty,
                    1 => *self = Messages::One(d.pop_front().expect("one")),
                    _ => {}
                }
            }
        }
    }
}

impl Held {
    fn new(msg: MsgArc) -> Self {
        Held {
            ts: time_seq(msg.key),
            msg,
        }
    }

    fn time(&self) -> u64 {
        self.ts >> 32
    }

    /// Whether this message comes before position `p` in history order; reads the message
    /// record only on a tie of (MsgTimeStamp, MsgSeq).
    fn before(&self, p: Pos, or_at: bool) -> bool {
        let ts = u64::from(p.0) << 32 | u64::from(p.1);
        self.ts < ts
            || (self.ts == ts
                && if or_at {
                    self.msg.arrival() <= p.2
                } else {
                    self.msg.arrival() < p.2
                })
    }
}

fn time_seq(key: MsgKey) -> u64 {
    u64::from(key.time()) << 32 | u64::from(key.seq())
}

/// The pair of accounts a conversation is keyed by, in number order.
pub(crate) fn conversation_id(x: &UserId, y: &UserId) -> (UserId, UserId) {
    if x.num() <= y.num() {
        (x.clone(), y.clone())
    } else {
        (y.clone(), x.clone())
    }
}

/// What tells a conversation apart in the store's table: the numbers of its two accounts'
/// cells in the store (`AccountCell::n`), smaller first. Not the interned numbers: a request
/// learns its cells' numbers from the first lookup (the name's slot), with the conversation's
/// slot already loading beside it (`Store::conv_key_of` says where it is filed).
pub(crate) fn conv_key(x: u32, y: u32) -> u64 {
    u64::from(x.min(y)) << 32 | u64::from(x.max(y))
}

impl Conversation {
    pub fn new(a: UserId, b: UserId) -> Self {
        debug_assert!(a.num() < b.num());
        Conversation {
            users: [a, b],
            next_arrival: 1,
            messages: Messages::Empty,
            read_mark: [0, 0],
            unread: [0, 0],
            ticket: 0,
            next: [crate::account::NO_CONVERSATION; 2],
        }
    }

    /// Links a conversation not yet stored in front of its accounts' lists: `heads` are
    /// the lists' heads now, of `users()[0]` and `users()[1]`.
    pub fn link(&mut self, heads: [u32; 2]) {
        self.next = heads;
    }

    /// The conversation after this one in `user`'s list (`NO_CONVERSATION` at the end).
    pub fn next_of(&self, user: &UserId) -> u32 {
        self.next[self.side(user)]
    }

    /// A conversation rebuilt from a snapshot: its accounts in either order with their read
    /// marks, `messages` in history order.
    pub fn restore(
        a: UserId,
        b: UserId,
        next_arrival: u64,
        read_mark: [u64; 2],
        messages: Vec<MsgArc>,
    ) -> Self {
        let (a, b, read_mark) = if a.num() < b.num() {
            (a, b, read_mark)
        } else {
            (b, a, [read_mark[1], read_mark[0]])
        };
        let mut c = Conversation::new(a, b);
        c.next_arrival = next_arrival;
        c.read_mark = read_mark;
        let mut messages = messages;
        messages.sort_by_key(|m| position(m));
        c.messages = Messages::from_vec(messages.into_iter().map(Held::new).collect());
        c
    }

    /// The arrival number the next message gets.
    pub fn next_arrival(&self) -> u64 {
        self.next_arrival
    }

    /// Adds the messages of a snapshot's continuation record (a conversation too large for one
    /// record is written in several). Rebuilds the buffer: a restore-time cost, paid only by
    /// conversations of hundreds of thousands of messages.
    pub fn extend_restored(&mut self, more: Vec<MsgArc>) {
        let mut all: Vec<MsgArc> = self.messages.iter().map(|h| h.msg.clone()).collect();
        all.extend(more);
        all.sort_by_key(|m| position(m));
        self.messages = Messages::from_vec(all.into_iter().map(Held::new).collect());
    }

    /// What a snapshot records: (users in name order, next arrival, their read marks, messages
    /// in history order). Numbers are not kept on disk, so sides are written in name order.
    pub fn export(&self) -> ([UserId; 2], u64, [u64; 2], Vec<MsgArc>) {
        let [a, b] = self.users.clone();
        let (users, read_mark) = if a < b {
            ([a, b], self.read_mark)
        } else {
            ([b, a], [self.read_mark[1], self.read_mark[0]])
        };
        let messages = self.messages.iter().map(|h| h.msg.clone()).collect();
        (users, self.next_arrival, read_mark, messages)
    }

    /// The two accounts, in number order.
    pub fn users(&self) -> &[UserId; 2] {
        &self.users
    }

    pub fn side(&self, user: &UserId) -> Side {
        usize::from(*user != self.users[0])
    }

    /// The messages with MsgTimeStamp and MsgSeq of `key`, both directions (a few at most),
    /// found by what the buffer holds beside each pointer: no message record is read.
    fn same_time_seq_held(&self, key: MsgKey) -> impl Iterator<Item = &Held> {
        let ts = time_seq(key);
        let start = self.messages.partition_point(|h| h.ts < ts);
        self.messages
            .range(start, self.messages.len())
            .take_while(move |h| h.ts == ts)
    }

    /// The messages with MsgKey `key`, both directions (two at most).
    fn same_time_seq(&self, key: MsgKey) -> impl Iterator<Item = &MsgArc> {
        self.same_time_seq_held(key)
            .map(|h| &h.msg)
            .filter(move |m| m.key == key)
    }

    /// Where this conversation's messages are, for a request to start loading them together
    /// with the conversation ([`prefetch_hint`]; the store keeps it in the conversation's
    /// table slot): the record of its one message, or the first [`HINT_BYTES`] of its
    /// buffer — the address in the low 56 bits, how many bytes above. 0 when it has none (or
    /// its address does not fit).
    pub fn hint(&self) -> u64 {
        let (addr, len) = match &self.messages {
            Messages::Empty => return 0,
            Messages::One(h) => (
                &*h.msg as *const StoredMessage as u64,
                std::mem::size_of::<StoredMessage>(),
            ),
            Messages::Many(r) => r.buffer(),
        };
        if addr > HINT_ADDRESS {
            return 0;
        }
        addr | (len.min(HINT_BYTES) as u64) << 56
    }

    /// Starts loading where `find(_, key)` will look: the message itself when the conversation
    /// holds one (then `true`: nothing more to load), else the start of its buffer (a hint).
    pub fn prefetch_find(&self, key: MsgKey) -> bool {
        match &self.messages {
            Messages::Empty => true,
            Messages::One(h) => {
                if h.ts == time_seq(key) {
                    MsgArc::prefetch(&h.msg);
                }
                true
            }
            Messages::Many(d) => {
                // The buffer the search reads: all of it, up to four lines a part (a binary
                // search of a longer one reads a few of its lines, which no hint can name).
                let (a, b) = d.as_slices();
                for part in [a, b].into_iter().filter(|p| !p.is_empty()) {
                    crate::table::prefetch(&part[..part.len().min(16)]);
                }
                false
            }
        }
    }

    /// Starts loading the messages `find(_, key)` will read: those with `key`'s MsgTimeStamp
    /// and MsgSeq (one, nearly always). A hint for a `find` soon after; this one reads the
    /// buffer only, never a message record: a record not yet loaded would be a miss taken
    /// here, under this conversation's lock, which the next lock of a batch waits out (a
    /// locked instruction lets no later load pass it), so a wave's misses would queue instead
    /// of overlapping.
    pub fn prefetch_found(&self, key: MsgKey) {
        for h in self.same_time_seq_held(key) {
            MsgArc::prefetch(&h.msg);
        }
    }

    /// The message `key` sent by `from` (a MsgKey is unique per direction).
    pub fn find(&self, from: &UserId, key: MsgKey) -> Option<&MsgArc> {
        self.same_time_seq(key).find(|m| m.from == *from)
    }

    /// The message a send with MsgKey `key` and `content` repeats, sent again later (a
    /// retry whose MsgTimeStamp the server gave anew): from `from`, with the same MsgSeq and
    /// MsgRandom and the same content, dated at most [`RETRY_WINDOW_SECS`] before `key` (or
    /// [`RETRY_SKEW_SECS`] after it) —
    /// Tencent's deduplication (sender, MsgSeq, MsgRandom and the content's CRC, for 120 s).
    /// A recalled or modified message no longer has the content it was sent with: a send like
    /// it is a new message (storing a retry twice is a lesser harm than dropping a new one).
    /// Reads a record only where MsgSeq matches: the (time, seq) beside each pointer sorts the
    /// window's messages, so a window of many is searched second by second.
    pub fn find_retry(&self, from: &UserId, key: MsgKey, content: &Content) -> Option<&MsgArc> {
        let (seq, low) = (
            key.seq(),
            u64::from(key.time()).saturating_sub(RETRY_WINDOW_SECS),
        );
        // A retry may also be dated a little before its first attempt: in a cluster each
        // attempt is dated by the node that took it, whose clocks differ a little.
        let time = u64::from(key.time()) + RETRY_SKEW_SECS;
        let same = |h: &Held| {
            h.ts as u32 == seq
                && h.msg.from == *from
                && h.msg.key.random() == key.random()
                && h.msg.content().as_ref() == Some(content)
        };
        // Newest first: most windows hold a few messages at the end of the history.
        for (read, h) in self.messages.iter().rev().enumerate() {
            if read == RETRY_SCAN {
                break;
            }
            match h.time() {
                t if t > time => continue,
                t if t < low => return None,
                _ if same(h) => return Some(&h.msg),
                _ => {}
            }
        }
        if self.messages.len() <= RETRY_SCAN {
            return None;
        }
        // A long history in or after the window: each second's (time, seq) looked up.
        (low..=time.min(u64::from(u32::MAX))).find_map(|second| {
            let ts = second << 32 | u64::from(seq);
            let at = self.messages.partition_point(|h| h.ts < ts);
            let len = self.messages.len();
            self.messages
                .range(at, len)
                .take_while(|h| h.ts == ts)
                .find(|h| same(h))
                .map(|h| &h.msg)
        })
    }

    /// Whether another message can be taken in: arrival numbers are kept in 48 bits
    /// ([`ARRIVAL_LIMIT`]) and are never reused, so a conversation that has used them all
    /// refuses further sends (checked before the send is journaled).
    pub fn can_take_arrival(&self) -> bool {
        self.next_arrival < ARRIVAL_LIMIT
    }

    /// Moves the next arrival number (tests of the limit: reaching it takes 2^48 sends).
    #[cfg(test)]
    pub fn set_next_arrival(&mut self, next: u64) {
        self.next_arrival = next;
    }

    /// Takes the next arrival number for a message about to be inserted (after
    /// [`Conversation::can_take_arrival`]).
    pub fn take_arrival(&mut self) -> u64 {
        let n = self.next_arrival;
        assert!(n < ARRIVAL_LIMIT, "checked by can_take_arrival");
        self.next_arrival += 1;
        n
    }

    pub fn insert(&mut self, msg: MsgArc) {
        let pos = position(&msg);
        let held = Held::new(msg);
        // Most messages are the newest: they go at the end without a search.
        let at = if self.messages.back().is_none_or(|h| h.before(pos, true)) {
            self.messages.len()
        } else {
            self.messages.partition_point(|h| h.before(pos, true))
        };
        self.messages.insert(at, held);
    }

    /// Whether the recipient has not yet marked `msg` read (IsPeerRead: a message sent with
    /// `NoUnread` too, which its unread count leaves out).
    pub fn is_unread(&self, msg: &StoredMessage) -> bool {
        !msg.read_on_import() && msg.arrival() > self.read_mark[self.side(&msg.to)]
    }

    /// Marks everything that has arrived so far as read by `reader`.
    pub fn mark_read(&mut self, reader: &UserId) {
        let side = self.side(reader);
        self.read_mark[side] = self.next_arrival - 1;
    }

    /// Marks read what `reader` was sent at or before `time` (MsgReadTime), and returns its
    /// unread count, counted again. A read mark is a place in arrival order, so it moves to
    /// just before the first message to `reader` sent after `time`: a message sent at or
    /// before `time` that arrived after a later one stays unread (a message sent after `time`
    /// is never marked read). It never moves back. The count is of `reader`'s messages here
    /// after the mark, neither recalled nor imported as read (what a send counts and a recall
    /// takes back): one trimmed past retention while unread no longer counts. Reads every
    /// message of the conversation once.
    pub fn mark_read_until(&mut self, reader: &UserId, time: u32) -> u32 {
        let side = self.side(reader);
        let mine = |m: &&MsgArc| m.to == *reader;
        let first_after = (self.messages.iter().map(|h| &h.msg))
            .filter(mine)
            .filter(|m| m.key.time() > time)
            .map(|m| m.arrival())
            .min()
            .unwrap_or(self.next_arrival);
        let mark = (first_after - 1).max(self.read_mark[side]);
        self.read_mark[side] = mark;
        let unread = (self.messages.iter().map(|h| &h.msg))
            .filter(mine)
            .filter(|m| m.arrival() > mark && m.counts_unread() && !m.is_recalled())
            .count();
        u32::try_from(unread).unwrap_or(u32::MAX)
    }

    /// Whether `trim(cutoff)` would remove anything.
    pub fn has_expired(&self, cutoff: u64) -> bool {
        self.messages.front().is_some_and(|h| h.time() < cutoff)
    }

    /// Removes messages whose MsgTimeStamp is before `cutoff`; returns how many.
    pub fn trim(&mut self, cutoff: u64) -> usize {
        let n = self.messages.partition_point(|h| h.time() < cutoff);
        self.messages.drain_front(n);
        n
    }

    fn visible(&self, msg: &StoredMessage, side: Side) -> bool {
        msg.to == self.users[side] || msg.sender_copy().in_sender_roaming()
    }

    /// Messages in `side`'s view, newest first, at or before `upper`, not older than `cutoff`.
    fn newest_first(
        &self,
        side: Side,
        upper: Bound<Pos>,
        cutoff: u64,
    ) -> impl Iterator<Item = &MsgArc> {
        self.newest_first_below(self.end_of(upper), side, cutoff)
    }

    /// How many messages are at or before `upper` (those below the returned index).
    fn end_of(&self, upper: Bound<Pos>) -> usize {
        match upper {
            Bound::Included(u) => self.messages.partition_point(|h| h.before(u, true)),
            Bound::Excluded(u) => self.messages.partition_point(|h| h.before(u, false)),
            Bound::Unbounded => self.messages.len(),
        }
    }

    /// [`newest_first`](Conversation::newest_first) of the messages below index `end`.
    fn newest_first_below(
        &self,
        end: usize,
        side: Side,
        cutoff: u64,
    ) -> impl Iterator<Item = &MsgArc> {
        self.messages
            .range(0, end)
            .rev()
            .take_while(move |h| h.time() >= cutoff)
            .map(|h| &h.msg)
            .filter(move |m| self.visible(m, side))
    }

    /// One page of `admin_getroammsg` for `side`. `cutoff` is the retention horizon.
    pub fn page(&self, side: Side, q: &HistoryQuery, max_bytes: usize, cutoff: u64) -> HistoryPage {
        let cutoff = cutoff.max(u64::from(q.min_time));
        let mut upper = Bound::Included((q.max_time, u32::MAX, u64::MAX));
        if let Some(key) = q.last_msg_key {
            // The previous page ended at this message: continue strictly before it. When the key
            // is gone (expired), its (time, seq) still bounds the page. Only messages in this
            // side's view count: the page ended at one of them, and a hidden twin older than it
            // would cut off the messages between the two.
            let pos = self
                .same_time_seq(key)
                .filter(|m| self.visible(m, side))
                .map(|m| position(m))
                .min()
                .unwrap_or((key.time(), key.seq(), 0));
            upper = match upper {
                Bound::Included(u) if u < pos => Bound::Included(u),
                _ => Bound::Excluded(pos),
            };
        }
        let end = self.end_of(upper);
        // The records the page reads, started loading together: each is read under its own
        // lock (its size, then its view), and a locked instruction lets no later load pass, so
        // one at a time their misses — one or two a record in a large store — would queue. By
        // the buffer alone (the (time, seq) beside each pointer); a hint, at most a few lines.
        let newest = (q.max_cnt as usize).saturating_add(1).min(PAGE_PREFETCH);
        for h in self.messages.range(end.saturating_sub(newest), end) {
            MsgArc::prefetch(&h.msg);
        }
        let max_bytes = max_bytes.saturating_sub(ANSWER_OVERHEAD_BYTES);
        let mut candidates = self.newest_first_below(end, side, cutoff).peekable();
        let mut picked: Vec<&MsgArc> = Vec::new();
        let mut bytes = 0;
        let mut complete = true;
        while let Some(&msg) = candidates.peek() {
            let size = ITEM_OVERHEAD_BYTES
                + json_escaped_len(&msg.from)
                + json_escaped_len(&msg.to)
                + msg.encoded_len();
            let full = picked.len() >= q.max_cnt as usize || bytes + size > max_bytes;
            // A page always makes progress, whatever the byte cap.
            if full && !picked.is_empty() {
                complete = false;
                break;
            }
            bytes += size;
            picked.push(msg);
            candidates.next();
        }
        if !complete {
            // The next page continues strictly before the oldest message's LastMsgKey. A MsgKey
            // can name two messages, one per direction; the continuation starts below the older
            // of them, so a page must not end between the two. Shorten the page to end before
            // the pair or, when that would empty it, stretch it over the pair.
            while let Some(twin) = picked.last().and_then(|m| self.older_twin(m, side, cutoff)) {
                if picked.len() > 1 {
                    picked.pop();
                    continue;
                }
                for msg in candidates.by_ref() {
                    picked.push(msg);
                    if MsgArc::ptr_eq(msg, twin) {
                        break;
                    }
                }
                complete = candidates.peek().is_none();
                break;
            }
        }
        let items: Vec<HistoryItem> = picked
            .into_iter()
            .rev()
            .map(|m| HistoryItem {
                is_peer_read: !self.is_unread(m),
                message: m.view(),
            })
            .collect();
        let oldest = items.first().map(|i| i.message.key);
        HistoryPage {
            messages: items,
            complete,
            last_msg_time: oldest.map_or(0, |k| k.time()),
            last_msg_key: oldest,
        }
    }

    /// The message of the other direction with the same MsgKey, if it is in `side`'s view,
    /// older than `msg` and not past `cutoff`.
    fn older_twin(&self, msg: &StoredMessage, side: Side, cutoff: u64) -> Option<&MsgArc> {
        let other_sender = &self.users[1 - self.side(&msg.from)];
        let twin = self.find(other_sender, msg.key)?;
        (position(twin) < position(msg)
            && u64::from(msg.key.time()) >= cutoff
            && self.visible(twin, side))
        .then_some(twin)
    }

    /// The newest message in `side`'s view (the conversation's "last message"), passing
    /// over those sent with SendMsgControl `NoLastMsg`.
    pub fn last_message(&self, side: Side, cutoff: u64) -> Option<HistoryItem> {
        let msg = self
            .newest_first(side, Bound::Unbounded, cutoff)
            .find(|m| !m.control().no_last_msg)?;
        Some(HistoryItem {
            is_peer_read: !self.is_unread(msg),
            message: msg.view(),
        })
    }
}

fn position(msg: &StoredMessage) -> Pos {
    (msg.key.time(), msg.key.seq(), msg.arrival())
}

#[cfg(test)]
mod tests;
