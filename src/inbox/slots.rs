//! A block's entries ([`Slots`]): in one slot of the blocks' slabs ([`crate::slab`], huge
//! pages) rather than a `Vec` from the embedder's allocator — room for 4 entries in an
//! account's first block, then for a whole block of [`BLOCK`].
//!
//! Why: an inbox's newest block is written by every send and recall to the account, and a
//! large store's accounts are many; in ordinary pages those writes are TLB misses as well as
//! cache misses. And a slot has no allocator header: 16 bytes less a block.

use std::ptr::NonNull;

use super::{BLOCK, Packed};
use crate::slab::Slab;

/// Entries an account's first block has room for: most accounts of a small store hold few.
const FIRST: usize = 4;

static FIRST_BLOCKS: Slab = Slab::new(
    FIRST * std::mem::size_of::<Packed>(),
    std::mem::align_of::<Packed>(),
);
static BLOCKS: Slab = Slab::new(
    BLOCK * std::mem::size_of::<Packed>(),
    std::mem::align_of::<Packed>(),
);

/// Up to `BLOCK` entries in place: `len` of them written, in a slot of `cap` (0 with no slot).
pub(super) struct Slots {
    ptr: NonNull<Packed>,
    len: u8,
    cap: u8,
}

// SAFETY: `Slots` owns its entries as a `Vec` would; `Packed` is Send and Sync (a counted
// reference and two numbers), and the slot is reached only through `&self` / `&mut self`.
unsafe impl Send for Slots {}
// SAFETY: as above.
unsafe impl Sync for Slots {}

impl Slots {
    /// No entries and no slot.
    pub const fn new() -> Self {
        Slots {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
        }
    }

    /// No entries, with room for a whole block.
    pub fn block() -> Self {
        let mut s = Slots::new();
        s.grow(BLOCK);
        s
    }

    fn slab(cap: usize) -> &'static Slab {
        if cap == FIRST { &FIRST_BLOCKS } else { &BLOCKS }
    }

    pub fn capacity(&self) -> usize {
        usize::from(self.cap)
    }

    /// Appends `p`; a block holds at most `BLOCK` (the inbox starts another before that).
    pub fn push(&mut self, p: Packed) {
        if self.len == self.cap {
            assert!(self.capacity() < BLOCK, "a block holds {BLOCK} entries");
            self.grow(if self.cap == 0 { FIRST } else { BLOCK });
        }
        // SAFETY: `len` is below `cap`, so the place is inside the slot and not written.
        unsafe { self.ptr.as_ptr().add(self.len.into()).write(p) };
        self.len += 1;
    }

    /// Moves the entries into a slot with room for `cap`.
    fn grow(&mut self, cap: usize) {
        let new = Self::slab(cap).alloc().cast::<Packed>();
        // SAFETY: the new slot holds `cap` entries, more than the `len` moved; the old one is
        // given back once, after its entries have been moved out (bitwise: they are not
        // dropped there).
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), new.as_ptr(), self.len.into());
            if self.cap > 0 {
                Self::slab(self.capacity()).free(self.ptr.cast());
            }
        }
        self.ptr = new;
        self.cap = cap as u8;
    }

    /// Drops the first `n` entries (at most all) and moves the rest to the front.
    pub fn remove_front(&mut self, n: usize) {
        let len = usize::from(self.len);
        assert!(n <= len, "removing {n} of {len} entries");
        // Emptied first: were a drop to panic, the rest would leak, never drop twice.
        self.len = 0;
        // SAFETY: entries 0..n are written and dropped once here; entries n..len are moved
        // (bitwise) to 0..len-n, within the slot (`ptr::copy` allows the overlap).
        unsafe {
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), n));
            std::ptr::copy(self.ptr.as_ptr().add(n), self.ptr.as_ptr(), len - n);
        }
        self.len = (len - n) as u8;
    }
}

impl std::ops::Deref for Slots {
    type Target = [Packed];

    fn deref(&self) -> &[Packed] {
        // SAFETY: the first `len` places of the slot are written entries (with no slot, `len`
        // is 0 and the pointer dangling but aligned, as an empty slice allows).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len.into()) }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        let len = usize::from(self.len);
        self.len = 0;
        // SAFETY: the first `len` entries are written and dropped once; the slot, if any, is
        // given back once, to the slab it came from.
        unsafe {
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), len));
            if self.cap > 0 {
                Self::slab(self.capacity()).free(self.ptr.cast());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MsgArc;

    fn packed(m: &MsgArc, i: u32) -> Packed {
        Packed {
            msg: m.clone(),
            expires_at: i,
            low: i,
        }
    }

    fn lows(s: &Slots) -> Vec<u32> {
        s.iter().map(|p| p.low).collect()
    }

    #[test]
    fn entries_grow_from_four_to_a_block_and_stay_in_order() {
        let m = crate::inbox::tests::msg();
        let mut s = Slots::new();
        assert_eq!((s.len(), s.capacity()), (0, 0));
        for i in 0..BLOCK as u32 {
            s.push(packed(&m, i));
            let want = if i < FIRST as u32 { FIRST } else { BLOCK };
            assert_eq!(s.capacity(), want, "after {} entries", i + 1);
            assert_eq!(lows(&s), (0..=i).collect::<Vec<_>>());
        }
        assert_eq!(MsgArc::count(&m), 1 + BLOCK as u32);
        s.remove_front(5);
        assert_eq!(lows(&s), (5..BLOCK as u32).collect::<Vec<_>>());
        assert_eq!(
            MsgArc::count(&m),
            1 + BLOCK as u32 - 5,
            "removed entries dropped"
        );
        s.remove_front(0);
        assert_eq!(s.len(), BLOCK - 5);
        s.remove_front(BLOCK - 5);
        assert!(s.is_empty());
        assert_eq!(MsgArc::count(&m), 1);
        s.push(packed(&m, 99));
        assert_eq!(lows(&s), [99]);
        drop(s);
        assert_eq!(MsgArc::count(&m), 1, "dropping the block drops its entries");
        let mut b = Slots::block();
        assert_eq!(b.capacity(), BLOCK);
        b.push(packed(&m, 7));
        assert_eq!((lows(&b), MsgArc::count(&m)), (vec![7], 2));
    }

    #[test]
    #[should_panic(expected = "a block holds 16 entries")]
    fn a_block_never_holds_more_than_a_block() {
        let m = crate::inbox::tests::msg();
        let mut s = Slots::block();
        for i in 0..=BLOCK as u32 {
            s.push(packed(&m, i));
        }
    }
}
