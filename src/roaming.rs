//! Roaming history: one `Conversation` per unordered pair of accounts, holding every message of
//! both directions in (MsgTimeStamp, MsgSeq, arrival) order, with a per-side view, read marks,
//! unread counts, retention and the paging of `admin_getroammsg`.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use crate::account::UserId;
use crate::key::MsgKey;
use crate::message::{MessageView, StoredMessage};

/// A message's place in history order: (MsgTimeStamp, MsgSeq, arrival).
pub(crate) type Pos = (u32, u32, u64);

/// Fixed bytes a history item costs on the wire besides its accounts and content: field names,
/// numbers and punctuation of one `MsgList` entry.
const ITEM_OVERHEAD_BYTES: usize = 200;

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
    messages: VecDeque<Held>,
    /// Per side: the arrival number up to which that side has read what its peer sent.
    read_mark: [u64; 2],
    /// Per side: how many messages from its peer that side has not read (unread counts live
    /// here, in a lock the send and recall take anyway, not in a map of each account's).
    pub unread: [u32; 2],
    /// The journal ticket of the last operation that changed this conversation: readers show
    /// what they read here only once the journal is durable up to it (R6).
    pub ticket: u64,
}

/// A message in a conversation, with its (MsgTimeStamp, MsgSeq) beside it.
struct Held {
    /// MsgTimeStamp << 32 | MsgSeq.
    ts: u64,
    msg: Arc<StoredMessage>,
}

impl Held {
    fn new(msg: Arc<StoredMessage>) -> Self {
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
                    self.msg.arrival <= p.2
                } else {
                    self.msg.arrival < p.2
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

/// A conversation's key in the store's table: the numbers of its two accounts' cells in the
/// store (`AccountCell::n`), smaller first. Not the interned numbers: a request learns its
/// cells' numbers from the first lookup (the name's slot), so the conversation's slot can be
/// fetched while the cells themselves load.
pub(crate) fn conv_key(x: u32, y: u32) -> [u64; 1] {
    [u64::from(x.min(y)) << 32 | u64::from(x.max(y))]
}

impl Conversation {
    pub fn new(a: UserId, b: UserId) -> Self {
        debug_assert!(a.num() < b.num());
        Conversation {
            users: [a, b],
            next_arrival: 1,
            messages: VecDeque::new(),
            read_mark: [0, 0],
            unread: [0, 0],
            ticket: 0,
        }
    }

    /// A conversation rebuilt from a snapshot: its accounts in either order with their read
    /// marks, `messages` in history order.
    pub fn restore(
        a: UserId,
        b: UserId,
        next_arrival: u64,
        read_mark: [u64; 2],
        messages: Vec<Arc<StoredMessage>>,
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
        c.messages = messages.into_iter().map(Held::new).collect();
        c
    }

    /// What a snapshot records: (users in name order, next arrival, their read marks, messages
    /// in history order). Numbers are not kept on disk, so sides are written in name order.
    pub fn export(&self) -> ([UserId; 2], u64, [u64; 2], Vec<Arc<StoredMessage>>) {
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

    /// The messages with MsgTimeStamp and MsgSeq of `key`, both directions (a few at most).
    fn same_time_seq(&self, key: MsgKey) -> impl Iterator<Item = &Arc<StoredMessage>> {
        let ts = time_seq(key);
        let start = self.messages.partition_point(|h| h.ts < ts);
        self.messages
            .range(start..)
            .take_while(move |h| h.ts == ts)
            .map(|h| &h.msg)
            .filter(move |m| m.key == key)
    }

    /// The message `key` sent by `from` (a MsgKey is unique per direction).
    pub fn find(&self, from: &UserId, key: MsgKey) -> Option<&Arc<StoredMessage>> {
        self.same_time_seq(key).find(|m| m.from == *from)
    }

    /// Takes the next arrival number for a message about to be inserted.
    pub fn take_arrival(&mut self) -> u64 {
        let n = self.next_arrival;
        self.next_arrival += 1;
        n
    }

    pub fn insert(&mut self, msg: Arc<StoredMessage>) {
        let pos = position(&msg);
        let held = Held::new(msg);
        // Capacity doubles from one, not from four as a `VecDeque`'s own growth does: most
        // conversations of a large store hold one or two messages, and a buffer of four is
        // 64 bytes (80 with the allocator's header) where one needs 16.
        if self.messages.len() == self.messages.capacity() {
            self.messages.reserve_exact(self.messages.len().max(1));
        }
        // Most messages are the newest: they go at the end without a search.
        if self.messages.back().is_none_or(|h| h.before(pos, true)) {
            self.messages.push_back(held);
        } else {
            let at = self.messages.partition_point(|h| h.before(pos, true));
            self.messages.insert(at, held);
        }
    }

    /// Whether the recipient has not yet marked `msg` read.
    pub fn is_unread(&self, msg: &StoredMessage) -> bool {
        !msg.read_on_import() && msg.arrival > self.read_mark[self.side(&msg.to)]
    }

    /// Marks everything that has arrived so far as read by `reader`.
    pub fn mark_read(&mut self, reader: &UserId) {
        let side = self.side(reader);
        self.read_mark[side] = self.next_arrival - 1;
    }

    /// Whether `trim(cutoff)` would remove anything.
    pub fn has_expired(&self, cutoff: u64) -> bool {
        self.messages.front().is_some_and(|h| h.time() < cutoff)
    }

    /// Removes messages whose MsgTimeStamp is before `cutoff`; returns how many.
    pub fn trim(&mut self, cutoff: u64) -> usize {
        let n = self.messages.partition_point(|h| h.time() < cutoff);
        self.messages.drain(..n);
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
    ) -> impl Iterator<Item = &Arc<StoredMessage>> {
        let end = match upper {
            Bound::Included(u) => self.messages.partition_point(|h| h.before(u, true)),
            Bound::Excluded(u) => self.messages.partition_point(|h| h.before(u, false)),
            Bound::Unbounded => self.messages.len(),
        };
        self.messages
            .range(..end)
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
            // is gone (expired), its (time, seq) still bounds the page.
            let pos = self
                .same_time_seq(key)
                .map(|m| position(m))
                .min()
                .unwrap_or((key.time(), key.seq(), 0));
            upper = match upper {
                Bound::Included(u) if u < pos => Bound::Included(u),
                _ => Bound::Excluded(pos),
            };
        }
        let mut candidates = self.newest_first(side, upper, cutoff).peekable();
        let mut picked: Vec<&Arc<StoredMessage>> = Vec::new();
        let mut bytes = 0;
        let mut complete = true;
        while let Some(&msg) = candidates.peek() {
            let size = ITEM_OVERHEAD_BYTES + msg.from.len() + msg.to.len() + msg.encoded_len();
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
                    if Arc::ptr_eq(msg, twin) {
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
    fn older_twin(
        &self,
        msg: &StoredMessage,
        side: Side,
        cutoff: u64,
    ) -> Option<&Arc<StoredMessage>> {
        let other_sender = &self.users[1 - self.side(&msg.from)];
        let twin = self.find(other_sender, msg.key)?;
        (position(twin) < position(msg)
            && u64::from(msg.key.time()) >= cutoff
            && self.visible(twin, side))
        .then_some(twin)
    }

    /// The newest message in `side`'s view (the conversation's "last message").
    pub fn last_message(&self, side: Side, cutoff: u64) -> Option<HistoryItem> {
        let msg = self.newest_first(side, Bound::Unbounded, cutoff).next()?;
        Some(HistoryItem {
            is_peer_read: !self.is_unread(msg),
            message: msg.view(),
        })
    }
}

fn position(msg: &StoredMessage) -> Pos {
    (msg.key.time(), msg.key.seq(), msg.arrival)
}
