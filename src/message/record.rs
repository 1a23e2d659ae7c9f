//! The one record of a message that every layer shares ([`StoredMessage`]), its state under
//! its own lock, and [`MsgArc`], the reference-counted pointer the layers hold to it.
//!
//! Why not `Arc`: an `Arc` puts two 8-byte counts (strong and weak) in front of the record;
//! 72 + 16 = 88 bytes, which was a 96-byte glibc allocation. Nothing here needs a weak count,
//! and a 4-byte strong count fits inside the record's 72 bytes (the arrival number is kept in
//! 48 bits to make room). This is the recipe of `std::sync::Arc` (and of servo's `triomphe`)
//! without weak references. A record lives in a 72-byte slot of the records' slab
//! (`crate::slab`, huge pages), not in an allocation of the embedder's allocator.

use std::cell::UnsafeCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering, fence};

use parking_lot::RawMutex;
use parking_lot::lock_api::RawMutex as _;

use super::{Content, MessageView, RecallNotice, SendControl, SenderCopy};
use crate::account::UserId;
use crate::key::MsgKey;
use crate::slab::Slab;

/// Arrival numbers are kept in 48 bits: a conversation can take this many (2.8 * 10^14; at a
/// million messages a second in one conversation, nine years). A send past it is refused
/// ([`crate::roaming::Conversation::take_arrival`]), never wrapped.
pub(crate) const ARRIVAL_LIMIT: u64 = 1 << 48;

/// The most references a record may have; a clone past it aborts (as `Arc`'s does), so the
/// count cannot wrap to a use-after-free. Every reference is held by some layer's entry, so
/// this is not reached short of a leak.
const MAX_REFS: u32 = i32::MAX as u32;

/// The one record of a message that every layer shares: 72 bytes with its reference count (a
/// slot of the records' slab), text of up to 38 bytes included.
pub(crate) struct StoredMessage {
    pub from: UserId,
    pub to: UserId,
    pub key: MsgKey,
    /// Position among the conversation's arrivals (breaks ties in history order): the low 32
    /// bits, then the next 16 ([`ARRIVAL_LIMIT`]).
    arrival_lo: u32,
    arrival_hi: u16,
    /// References to this record: the [`MsgArc`]s pointing at it.
    refs: AtomicU32,
    /// Bits 0..2: SyncOtherMachine (`SenderCopy`); bit 2: imported as history (`importmsg`,
    /// SyncFromOldSystem 2), counted read from the start.
    flags: u8,
    /// Guards `state`. A raw lock rather than a `Mutex<MsgState>`, so that its byte sits in
    /// the record's padding instead of padding a field of its own.
    lock: RawMutex,
    state: UnsafeCell<MsgState>,
}

// SAFETY: `state` is only reached through `with_state`, under `lock`.
unsafe impl Sync for StoredMessage {}
// SAFETY: every field is Send; `UnsafeCell` only removes Sync.
unsafe impl Send for StoredMessage {}

const READ_ON_IMPORT: u8 = 1 << 2;
/// SendMsgControl `NoUnread` and `NoLastMsg`.
const NO_UNREAD: u8 = 1 << 3;
const NO_LAST_MSG: u8 = 1 << 4;

/// The message records of every store in the process.
static RECORDS: Slab = Slab::new(
    std::mem::size_of::<StoredMessage>(),
    std::mem::align_of::<StoredMessage>(),
);

/// Lock order: a message's state lock is taken after account and conversation locks and is
/// never held while taking another lock.
#[derive(Clone)]
pub(crate) enum MsgState {
    Live(Content),
    /// Who recalled it and when: the Recalled notice is built from this.
    Recalled {
        by: UserId,
        at: u64,
    },
}

/// Moves the old state out of `slot`, zeroes every byte of the slot, and writes `new`: a
/// smaller variant written over an inline body (a Recalled tombstone is 12 bytes, the body up
/// to 38) would otherwise leave the rest of the text behind it in the record. The moved-out
/// state zeroes its own copy when dropped.
fn overwrite(slot: &mut MsgState, new: MsgState) -> MsgState {
    let p: *mut MsgState = slot;
    // SAFETY: `p` comes from a `&mut`, so it is valid, aligned and unaliased for the whole
    // MsgState. The old value is moved out (read) before its bytes are zeroed, and a valid
    // value is written back before the borrow ends; nothing in between can panic. The writes
    // are volatile so that the zeroing of bytes the new value leaves unused is not elided.
    unsafe {
        let old = std::ptr::read(p);
        let bytes = p.cast::<u8>();
        for i in 0..std::mem::size_of::<MsgState>() {
            std::ptr::write_volatile(bytes.add(i), 0);
        }
        std::ptr::write(p, new);
        old
    }
}

/// Releases a message's lock when dropped (also on unwind).
struct Unlock<'a>(&'a RawMutex);

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        // SAFETY: created only right after `lock()` on the same lock, by this thread.
        unsafe { self.0.unlock() }
    }
}

impl StoredMessage {
    /// A live message. `content` carries the sending device, if any
    /// ([`Content::with_origin_device`]).
    pub fn new(
        from: UserId,
        to: UserId,
        key: MsgKey,
        arrival: u64,
        sender_copy: SenderCopy,
        read_on_import: bool,
        content: Content,
    ) -> Self {
        Self::restore(
            from,
            to,
            key,
            arrival,
            sender_copy,
            read_on_import,
            MsgState::Live(content),
        )
    }

    /// A message rebuilt from a snapshot.
    pub fn restore(
        from: UserId,
        to: UserId,
        key: MsgKey,
        arrival: u64,
        sender_copy: SenderCopy,
        read_on_import: bool,
        state: MsgState,
    ) -> Self {
        let copy = match sender_copy {
            SenderCopy::Roaming => 0,
            SenderCopy::RoamingAndDevices => 1,
            SenderCopy::Nothing => 2,
        };
        assert!(
            arrival < ARRIVAL_LIMIT,
            "arrival numbers are checked on send"
        );
        StoredMessage {
            from,
            to,
            key,
            arrival_lo: arrival as u32,
            arrival_hi: (arrival >> 32) as u16,
            refs: AtomicU32::new(0),
            flags: copy | if read_on_import { READ_ON_IMPORT } else { 0 },
            lock: RawMutex::INIT,
            state: UnsafeCell::new(state),
        }
    }

    /// Runs `f` on the state under the message's lock (`f` takes no other lock).
    fn with_state<R>(&self, f: impl FnOnce(&mut MsgState) -> R) -> R {
        self.lock.lock();
        let _unlock = Unlock(&self.lock);
        // SAFETY: the lock is held until `_unlock` drops, after `f` returns.
        f(unsafe { &mut *self.state.get() })
    }

    /// Position among the conversation's arrivals; breaks ties in history order.
    pub fn arrival(&self) -> u64 {
        u64::from(self.arrival_hi) << 32 | u64::from(self.arrival_lo)
    }

    pub fn sender_copy(&self) -> SenderCopy {
        match self.flags & 3 {
            0 => SenderCopy::Roaming,
            1 => SenderCopy::RoamingAndDevices,
            _ => SenderCopy::Nothing,
        }
    }

    pub fn read_on_import(&self) -> bool {
        self.flags & READ_ON_IMPORT != 0
    }

    /// The message as sent with SendMsgControl `control` (set before it is shared).
    pub fn with_control(mut self, control: SendControl) -> Self {
        self.flags |= if control.no_unread { NO_UNREAD } else { 0 }
            | if control.no_last_msg { NO_LAST_MSG } else { 0 };
        self
    }

    /// Its SendMsgControl.
    pub fn control(&self) -> SendControl {
        SendControl {
            no_unread: self.flags & NO_UNREAD != 0,
            no_last_msg: self.flags & NO_LAST_MSG != 0,
        }
    }

    /// Whether it counts in its recipient's unread counts while unread: neither imported as
    /// read nor sent with `NoUnread` (what a send adds and a recall or read mark takes back).
    pub fn counts_unread(&self) -> bool {
        self.flags & (READ_ON_IMPORT | NO_UNREAD) == 0
    }

    /// The state as it is now (a cheap copy: the content is shared or inline).
    pub fn state(&self) -> MsgState {
        self.with_state(|s| s.clone())
    }

    /// The live content, or `None` once recalled.
    pub fn content(&self) -> Option<Content> {
        self.with_state(|s| match s {
            MsgState::Live(c) => Some(c.clone()),
            MsgState::Recalled { .. } => None,
        })
    }

    /// Bytes the live content occupies on the wire (0 once recalled).
    pub fn encoded_len(&self) -> usize {
        self.with_state(|s| match s {
            MsgState::Live(c) => c.encoded_len(),
            MsgState::Recalled { .. } => 0,
        })
    }

    pub fn is_recalled(&self) -> bool {
        self.with_state(|s| matches!(s, MsgState::Recalled { .. }))
    }

    /// Whether this live message was sent from `device` of its sender.
    pub fn sent_from(&self, device: &str) -> bool {
        self.with_state(|s| match s {
            MsgState::Live(c) => c.origin_device() == Some(device),
            MsgState::Recalled { .. } => false,
        })
    }

    /// Erases the content (zeroing the store's copy); a caller still holding a view taken
    /// before the recall keeps its own.
    pub fn recall(&self, by: UserId, at: u64) {
        let old = self.with_state(|s| overwrite(s, MsgState::Recalled { by, at }));
        drop(old);
    }

    /// The Recalled notice of a recalled message.
    pub fn recall_notice(&self) -> Option<RecallNotice> {
        let (by, at) = self.with_state(|s| match s {
            MsgState::Live(_) => None,
            MsgState::Recalled { by, at } => Some((by.clone(), *at)),
        })?;
        Some(RecallNotice {
            from: self.from.clone(),
            to: self.to.clone(),
            key: self.key,
            recalled_by: by,
            recalled_at: at,
        })
    }

    /// Replaces the content of a live message (keeping the device it was sent from).
    pub fn replace(&self, content: Content) {
        let old = self.with_state(|s| match s {
            MsgState::Live(c) => {
                let content = content.with_origin_device(c.origin_device());
                Some(overwrite(s, MsgState::Live(content)))
            }
            MsgState::Recalled { .. } => None,
        });
        drop(old);
    }

    pub fn view(&self) -> MessageView {
        MessageView {
            from: self.from.clone(),
            to: self.to.clone(),
            key: self.key,
            content: self.content(),
        }
    }
}

/// A counted reference to a [`StoredMessage`] (as `MsgArc`, without weak
/// references): cloning increments the record's count, dropping the last reference frees it.
pub(crate) struct MsgArc {
    ptr: NonNull<StoredMessage>,
}

// SAFETY: a MsgArc hands out only `&StoredMessage`, which is Send and Sync; the count is
// atomic, so clones and drops on any threads agree on when the record is freed.
unsafe impl Send for MsgArc {}
// SAFETY: as above.
unsafe impl Sync for MsgArc {}

impl MsgArc {
    pub fn new(msg: StoredMessage) -> MsgArc {
        msg.refs.store(1, Ordering::Relaxed);
        let ptr = RECORDS.alloc().cast::<StoredMessage>();
        // SAFETY: a fresh slot of the records' slab: sized and aligned for a record, and this
        // reference's alone.
        unsafe { ptr.as_ptr().write(msg) };
        MsgArc { ptr }
    }

    /// Whether both point at the same record.
    pub fn ptr_eq(a: &MsgArc, b: &MsgArc) -> bool {
        a.ptr == b.ptr
    }

    /// The record's address (identifies it while a reference is held).
    pub fn as_ptr(this: &MsgArc) -> *const StoredMessage {
        this.ptr.as_ptr()
    }

    /// Starts loading every cache line of the record (a hint: reads nothing, counts nothing —
    /// for a batch of records about to be read under their own locks, whose misses would
    /// otherwise queue one behind the other).
    pub fn prefetch(this: &MsgArc) {
        crate::table::prefetch::<StoredMessage>(this);
    }

    /// How many references the record has now.
    #[cfg(test)]
    pub(crate) fn count(this: &MsgArc) -> u32 {
        this.refs.load(Ordering::Acquire)
    }
}

impl std::ops::Deref for MsgArc {
    type Target = StoredMessage;

    fn deref(&self) -> &StoredMessage {
        // SAFETY: the record lives while any MsgArc to it does (this one included).
        unsafe { self.ptr.as_ref() }
    }
}

impl Clone for MsgArc {
    fn clone(&self) -> MsgArc {
        // Relaxed as in `Arc::clone`: a new reference is made from an existing one, which
        // keeps the record alive; no other memory is published by the increment.
        let old = self.refs.fetch_add(1, Ordering::Relaxed);
        if old > MAX_REFS {
            std::process::abort();
        }
        MsgArc { ptr: self.ptr }
    }
}

impl Drop for MsgArc {
    fn drop(&mut self) {
        // Release, then an Acquire fence by the last owner, as in `Arc::drop`: every use of
        // the record through other references happens before it is freed.
        if self.refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        // SAFETY: the count reached zero, so this was the last reference: the record is
        // dropped once, and its slot (from `RECORDS` in `MsgArc::new`) given back once, with
        // nothing left pointing at it.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            RECORDS.free(self.ptr.cast());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MsgElement;

    #[test]
    fn records_stay_small() {
        // A 72-byte record (its count included) is a 72-byte slab slot; every byte more is a
        // byte more per stored message. The workload benchmark's bytes per message rest on this.
        assert_eq!(std::mem::size_of::<StoredMessage>(), 72);
        assert_eq!(std::mem::size_of::<MsgArc>(), 8);
        assert_eq!(std::mem::size_of::<Option<MsgArc>>(), 8);
        assert_eq!(std::mem::size_of::<Content>(), 40);
    }

    fn record(arrival: u64, body: &str) -> StoredMessage {
        StoredMessage::new(
            UserId::new("record-test-a").unwrap(),
            UserId::new("record-test-b").unwrap(),
            MsgKey::new(1, 2, 3),
            arrival,
            SenderCopy::Roaming,
            false,
            Content::new(&[MsgElement::text(body)], None).unwrap(),
        )
    }

    #[test]
    fn arrival_numbers_keep_all_48_bits() {
        for arrival in [
            0,
            1,
            u64::from(u32::MAX),
            1 << 32,
            0xABCD_1234_5678,
            ARRIVAL_LIMIT - 1,
        ] {
            assert_eq!(record(arrival, "x").arrival(), arrival);
        }
    }

    #[test]
    #[should_panic(expected = "arrival numbers are checked on send")]
    fn an_arrival_past_the_limit_is_refused() {
        record(ARRIVAL_LIMIT, "x");
    }

    #[test]
    fn the_count_follows_clones_and_drops_across_threads() {
        let m = MsgArc::new(record(7, "counted"));
        assert_eq!(MsgArc::count(&m), 1);
        let copies: Vec<MsgArc> = (0..10).map(|_| m.clone()).collect();
        assert_eq!(MsgArc::count(&m), 11);
        assert!(copies.iter().all(|c| MsgArc::ptr_eq(c, &m)));
        let other = MsgArc::new(record(7, "counted"));
        assert!(!MsgArc::ptr_eq(&other, &m));
        std::thread::scope(|s| {
            for chunk in copies.chunks(2) {
                let chunk = chunk.to_vec();
                s.spawn(move || {
                    for _ in 0..1000 {
                        drop(chunk[0].clone());
                    }
                    assert_eq!(chunk[0].arrival(), 7);
                    drop(chunk);
                });
            }
        });
        assert_eq!(MsgArc::count(&m), 11);
        drop(copies);
        assert_eq!(MsgArc::count(&m), 1);
        assert_eq!(
            m.content().unwrap().body(),
            vec![MsgElement::text("counted")]
        );
    }

    /// The bytes of a record's state, as they sit in memory.
    fn state_bytes(m: &StoredMessage) -> Vec<u8> {
        m.with_state(|s| {
            let p: *const MsgState = s;
            // SAFETY: reading the bytes of a live MsgState under its lock (uninitialised
            // padding is not read as values: only compared after the copy).
            unsafe {
                std::slice::from_raw_parts(p.cast::<u8>(), std::mem::size_of::<MsgState>()).to_vec()
            }
        })
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// Whether any 6 consecutive bytes of `text` are in `haystack`.
    fn any_trace(haystack: &[u8], text: &str) -> bool {
        text.as_bytes().windows(6).any(|w| contains(haystack, w))
    }

    #[test]
    fn no_trace_of_a_recalled_or_replaced_inline_body_stays_in_the_record() {
        let text = "inline secret, 31 bytes long!!";
        let u = UserId::new("message-test-a").unwrap();
        let v = UserId::new("message-test-b").unwrap();
        let new = |body: &str| {
            StoredMessage::new(
                u.clone(),
                v.clone(),
                MsgKey::new(1, 2, 3),
                1,
                SenderCopy::Roaming,
                false,
                Content::new(&[MsgElement::text(body)], None).unwrap(),
            )
        };
        let m = new(text);
        assert!(
            contains(&state_bytes(&m), &text.as_bytes()[..16]),
            "kept inline"
        );
        m.recall(u.clone(), 9);
        assert!(!any_trace(&state_bytes(&m), text));
        // Modified to a body too long to be inline: the inline bytes go too.
        let m = new(text);
        let long = "x".repeat(200);
        m.replace(Content::new(&[MsgElement::text(&long)], None).unwrap());
        assert!(!any_trace(&state_bytes(&m), text));
        assert_eq!(m.content().unwrap().body(), vec![MsgElement::text(long)]);
    }

    #[test]
    fn recall_keeps_the_record_and_drops_the_body() {
        let c = Content::new(&[MsgElement::text("secret")], None).unwrap();
        let u = UserId::new("message-test-a").unwrap();
        let v = UserId::new("message-test-b").unwrap();
        let m = StoredMessage::new(
            u.clone(),
            v.clone(),
            MsgKey::new(1, 2, 3),
            1,
            SenderCopy::RoamingAndDevices,
            true,
            c.with_origin_device(Some("pc")),
        );
        assert!(m.sent_from("pc") && !m.sent_from("phone"));
        assert_eq!(m.sender_copy(), SenderCopy::RoamingAndDevices);
        assert!(m.read_on_import());
        let view = m.view();
        m.recall(u.clone(), 9);
        assert!(m.is_recalled() && m.content().is_none() && !m.sent_from("pc"));
        assert_eq!(m.encoded_len(), 0);
        let n = m.recall_notice().unwrap();
        assert_eq!(
            (n.from, n.to, n.recalled_by, n.recalled_at),
            (u.clone(), v, u, 9)
        );
        // The view taken before keeps its copy.
        assert_eq!(
            view.content.unwrap().body(),
            vec![MsgElement::text("secret")]
        );
    }
}
