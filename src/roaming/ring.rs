//! A conversation's buffer of two or more messages ([`Ring`]): a ring of [`Held`] whose
//! capacity is a power of two from 2, doubling when full (as the `VecDeque` it replaces grew
//! here). Buffers of up to 32 messages — nearly every conversation of a large store — are
//! slots of the slabs ([`crate::slab`], huge pages: a recall's search of the buffer is then
//! no TLB miss, and a slot has no allocator header: 16 bytes less a buffer); longer ones come
//! from the embedder's allocator.

use std::alloc::Layout;
use std::ptr::NonNull;

use super::Held;
use crate::slab::Slab;

/// Capacities 2, 4, 8, 16 and 32 come from slabs.
const SLAB_CAP: usize = 32;

const fn class(entries: usize) -> Slab {
    Slab::new(
        entries * std::mem::size_of::<Held>(),
        std::mem::align_of::<Held>(),
    )
}

static CLASSES: [Slab; 5] = [class(2), class(4), class(8), class(16), class(32)];

/// `len` messages from `head` on, wrapping at `cap`.
pub(super) struct Ring {
    ptr: NonNull<Held>,
    head: u32,
    len: u32,
    cap: u32,
}

// SAFETY: a `Ring` owns its messages as a `VecDeque` would, and `Held` is Send and Sync (a
// number and a counted reference); the buffer is reached only through `&self` / `&mut self`.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// An empty ring with room for `n` messages (at least 2; a power of two).
    pub fn with_capacity(n: usize) -> Ring {
        let cap = n.max(2).next_power_of_two();
        let cap32 = u32::try_from(cap).expect("a conversation's buffer fits in u32");
        Ring {
            ptr: Self::alloc(cap),
            head: 0,
            len: 0,
            cap: cap32,
        }
    }

    pub fn from_vec(v: Vec<Held>) -> Ring {
        let mut r = Ring::with_capacity(v.len());
        for h in v {
            r.insert(r.len(), h);
        }
        r
    }

    fn alloc(cap: usize) -> NonNull<Held> {
        if cap <= SLAB_CAP {
            return CLASSES[Self::class_of(cap)].alloc().cast();
        }
        let layout = Self::layout(cap);
        // SAFETY: a layout of non-zero size (a capacity above 32 of 16-byte messages).
        let p = unsafe { std::alloc::alloc(layout) };
        NonNull::new(p)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
            .cast()
    }

    /// Gives a buffer of `cap` back where it came from.
    ///
    /// # Safety
    /// `ptr` came from `alloc(cap)`, is given back once, and holds no message still in use.
    unsafe fn dealloc(ptr: NonNull<Held>, cap: usize) {
        if cap <= SLAB_CAP {
            // SAFETY: a slot of this class's slab, given back once (the caller's promise).
            unsafe { CLASSES[Self::class_of(cap)].free(ptr.cast()) };
        } else {
            // SAFETY: allocated by `alloc` with this layout, freed once.
            unsafe { std::alloc::dealloc(ptr.as_ptr().cast(), Self::layout(cap)) };
        }
    }

    fn class_of(cap: usize) -> usize {
        cap.trailing_zeros() as usize - 1
    }

    fn layout(cap: usize) -> Layout {
        Layout::array::<Held>(cap).expect("a conversation's buffer fits in memory")
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Where the buffer is, and its size in bytes.
    pub fn buffer(&self) -> (u64, usize) {
        (
            self.ptr.as_ptr() as u64,
            self.cap as usize * std::mem::size_of::<Held>(),
        )
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// The place of message `i` (below the capacity: `i` may be `len`).
    fn place(&self, i: usize) -> *mut Held {
        let at = (self.head as usize + i) & (self.cap as usize - 1);
        // SAFETY: `at` is below the capacity, so inside the buffer.
        unsafe { self.ptr.as_ptr().add(at) }
    }

    /// The messages in order, as the part up to the buffer's end and the part wrapped round.
    pub fn as_slices(&self) -> (&[Held], &[Held]) {
        let (head, len, cap) = (self.head as usize, self.len(), self.cap as usize);
        let first = len.min(cap - head);
        // SAFETY: places head..head+first and 0..len-first hold the `len` written messages
        // (`first` stops at the buffer's end; the rest wrapped round to its start).
        unsafe {
            (
                std::slice::from_raw_parts(self.ptr.as_ptr().add(head), first),
                std::slice::from_raw_parts(self.ptr.as_ptr(), len - first),
            )
        }
    }

    /// The index of the first message for which `pred` is false (`pred` holds for a prefix).
    pub fn partition_point(&self, mut pred: impl FnMut(&Held) -> bool) -> usize {
        let (a, b) = self.as_slices();
        match a.last() {
            Some(last) if pred(last) => a.len() + b.partition_point(pred),
            _ => a.partition_point(pred),
        }
    }

    /// Inserts `held` before message `at` (at the end when `at` is the length), doubling the
    /// buffer when it is full.
    pub fn insert(&mut self, at: usize, held: Held) {
        assert!(at <= self.len(), "inserting at {at} of {}", self.len());
        if self.len == self.cap {
            self.grow();
        }
        // Messages at..len move one place back, the last first (an append moves none).
        for i in (at..self.len()).rev() {
            // SAFETY: both places are inside the buffer (`len` is below the capacity now);
            // place i+1 is free (the one past the end, or just moved from), and the message
            // at i is moved, not copied: its old place is written next.
            unsafe { std::ptr::copy_nonoverlapping(self.place(i), self.place(i + 1), 1) };
        }
        // SAFETY: place `at` is inside the buffer and its message (if any) was moved on.
        unsafe { self.place(at).write(held) };
        self.len += 1;
    }

    /// Moves the messages to a buffer twice the size, in order from its start.
    fn grow(&mut self) {
        let cap = self.cap as usize * 2;
        // Checked before anything changes hands: a panic after the swap would leave the ring
        // freeing its new buffer with the old one's size.
        let cap32 = u32::try_from(cap).expect("a conversation's buffer fits in u32");
        let new = Self::alloc(cap);
        let (a, b) = self.as_slices();
        let (na, nb) = (a.len(), b.len());
        // SAFETY: the new buffer holds `cap` > `len` messages; the old one's are moved (bitwise)
        // and it is given back with none left in use.
        unsafe {
            std::ptr::copy_nonoverlapping(a.as_ptr(), new.as_ptr(), na);
            std::ptr::copy_nonoverlapping(b.as_ptr(), new.as_ptr().add(na), nb);
            Self::dealloc(self.ptr, self.cap as usize);
        }
        self.ptr = new;
        self.head = 0;
        self.cap = cap32;
    }

    pub fn pop_front(&mut self) -> Option<Held> {
        if self.len == 0 {
            return None;
        }
        // SAFETY: the front place holds a written message, moved out once: the ring stops
        // covering it before anything else happens.
        let held = unsafe { self.place(0).read() };
        self.head = (self.head + 1) & (self.cap - 1);
        self.len -= 1;
        Some(held)
    }

    /// Drops the first `n` messages (all of them if fewer).
    pub fn drain_front(&mut self, n: usize) {
        for _ in 0..n.min(self.len()) {
            drop(self.pop_front());
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.drain_front(self.len());
        // SAFETY: the buffer `with_capacity` or `grow` made for this capacity, now empty,
        // given back once.
        unsafe { Self::dealloc(self.ptr, self.cap as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MsgArc;

    fn held(m: &MsgArc, ts: u64) -> Held {
        Held { ts, msg: m.clone() }
    }

    fn order(r: &Ring) -> Vec<u64> {
        let (a, b) = r.as_slices();
        a.iter().chain(b).map(|h| h.ts).collect()
    }

    #[test]
    fn a_ring_wraps_doubles_past_the_slabs_and_drops_each_message_once() {
        let m = super::super::tests::held(0).msg;
        let mut r = Ring::with_capacity(2);
        let mut model = std::collections::VecDeque::new();
        for i in 0..100u64 {
            // Trim the front now and then, so that the head moves and later messages wrap.
            if i % 3 == 2 {
                r.drain_front(1);
                model.pop_front();
            }
            r.insert(r.len(), held(&m, i));
            model.push_back(i);
            assert_eq!(order(&r), model.iter().copied().collect::<Vec<_>>());
            assert!(r.capacity().is_power_of_two() && r.capacity() >= r.len());
        }
        assert_eq!(r.capacity(), 128, "past the slabs' 32, from the allocator");
        assert_eq!(MsgArc::count(&m), 1 + model.len() as u32);
        // An insert in the middle of a wrapped ring.
        r.drain_front(40);
        model.drain(..40);
        // Appends until the messages wrap round the buffer's end (the head has moved on, so
        // they do before it is full).
        for t in 200..200 + r.capacity() as u64 {
            if !r.as_slices().1.is_empty() {
                break;
            }
            r.insert(r.len(), held(&m, t));
            model.push_back(t);
        }
        assert!(!r.as_slices().1.is_empty(), "wrapped");
        assert_eq!(order(&r), model.iter().copied().collect::<Vec<_>>());
        let below_70 = model.iter().take_while(|t| **t < 70).count();
        assert_eq!(r.partition_point(|h| h.ts < 70), below_70);
        r.insert(3, held(&m, 1000));
        model.insert(3, 1000);
        assert_eq!(order(&r), model.iter().copied().collect::<Vec<_>>());
        drop(r);
        assert_eq!(MsgArc::count(&m), 1, "every message dropped once");
    }
}
