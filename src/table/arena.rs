//! `Arena`: values numbered 0, 1, 2, ... in chunks that never move, read without a lock
//! (see `table.rs` for why). Chunks double from 64 values to 16,384, then stay that size,
//! mapped eight to a 2 MiB-aligned region so that they lie in huge pages.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::prefetch;
use crate::pages::Mapping;

/// log2 of the first arena chunk's values; chunks double up to `BIG_BITS`, then stay that size.
const SMALL_BITS: u32 = 6;
const BIG_BITS: u32 = 14;
/// Values in the doubling chunks (64 + 128 + ... + 16,384).
const DOUBLING: usize = (1 << (BIG_BITS + 1)) - (1 << SMALL_BITS);
const DOUBLING_CHUNKS: usize = (BIG_BITS - SMALL_BITS + 1) as usize;
/// Chunks an arena can hold: 2^26 values in the full-size ones, after the doubling ones.
const ARENA_CHUNKS: usize = DOUBLING_CHUNKS + (1 << 12);

/// A value's place in a chunk: written once by the pusher, before `Arena::len` covers it.
struct Place<T>(UnsafeCell<MaybeUninit<T>>);

/// Full-size chunks mapped together: one mapping for eight, so that a full-size chunk of
/// a small value (16,384 conversations: 1.6 MB, less than a huge page) still lies in huge
/// pages with its neighbours.
const REGION_CHUNKS: usize = 8;

/// (chunk, index in it, the chunk's size) of value `n`.
fn place(n: usize) -> (usize, usize, usize) {
    if n < DOUBLING {
        let x = n + (1 << SMALL_BITS);
        let k = (usize::BITS - 1 - x.leading_zeros()) - SMALL_BITS;
        (
            k as usize,
            x - (1 << (k + SMALL_BITS)),
            1 << (k + SMALL_BITS),
        )
    } else {
        let m = n - DOUBLING;
        (
            DOUBLING_CHUNKS + (m >> BIG_BITS),
            m & ((1 << BIG_BITS) - 1),
            1 << BIG_BITS,
        )
    }
}

/// Values numbered from 0 in the order they were added, stored in place in chunks that never
/// move: `get` is two indexes and the value's own cache line. Chunks are made as values reach
/// them, 64 values first and doubling up to 16,384 (so a small store stays small, and at most
/// one chunk is partly used); the directory, 8 bytes per chunk (~32 KiB), comes with the arena.
/// Chunks are memory the arena maps itself ([`Mapping`]): the doubling ones a mapping each,
/// the full-size ones eight to a mapping, which asks for huge pages (a large store's cells and
/// conversations are read at random, and each read in ordinary pages is a TLB miss too).
///
/// A value is published by `len`, as in a sequence of append-only slots: the pusher writes
/// value `n` (under `push`, where nobody else writes, and where no reader looks: `n` is not
/// below `len` yet), then stores `len = n + 1` with Release; a reader loads `len` with Acquire
/// and reads only values below it, which happen-before that load. A chunk's address is
/// stored before any value in it is published, so it happens-before too. So a value costs its
/// own bytes and nothing beside them (a `OnceLock` per value cost 8 bytes and, to set, the
/// `Once` state machine: ~170 instructions per new conversation).
pub(crate) struct Arena<T> {
    /// Each chunk's first place, null until made.
    chunks: Box<[AtomicPtr<Place<T>>]>,
    len: AtomicUsize,
    /// The pusher's lock, over the mappings the chunks lie in (unmapped with the arena).
    push: Mutex<Vec<Mapping>>,
}

// SAFETY: values are written once, before they are published, by the thread holding `push`,
// and only read (`&T`) after; moving an arena between threads moves its values.
unsafe impl<T: Send + Sync> Sync for Arena<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Arena<T> {}

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Arena {
            chunks: (0..ARENA_CHUNKS)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            len: AtomicUsize::new(0),
            push: Mutex::new(Vec::new()),
        }
    }
}

impl<T> Drop for Arena<T> {
    fn drop(&mut self) {
        for n in 0..*self.len.get_mut() {
            if let Some(p) = self.place_of(n as u32) {
                // SAFETY: every value below `len` was written, and is dropped once, here;
                // the mappings go after (`push`'s vector, dropped with the arena).
                unsafe { (*p.0.get()).assume_init_drop() };
            }
        }
    }
}

impl<T> Arena<T> {
    /// The most values an arena holds.
    pub const CAPACITY: usize = DOUBLING + ((ARENA_CHUNKS - DOUBLING_CHUNKS) << BIG_BITS);

    /// Adds `value`; returns its number, or gives the value back when the arena is full.
    pub fn push(&self, value: T) -> Result<u32, T> {
        const {
            assert!(
                std::mem::size_of::<T>() > 0,
                "arenas hold values with bytes"
            )
        };
        let mut maps = self.push.lock();
        let n = self.len.load(Ordering::Relaxed);
        if n >= Self::CAPACITY {
            return Err(value);
        }
        let (k, i, size) = place(n);
        let mut chunk = self.chunks[k].load(Ordering::Relaxed);
        if chunk.is_null() {
            let bytes = size * std::mem::size_of::<Place<T>>();
            chunk = if k < DOUBLING_CHUNKS {
                maps.push(Mapping::new(bytes));
                maps.last().expect("just pushed").as_ptr().cast()
            } else {
                let nth = (k - DOUBLING_CHUNKS) % REGION_CHUNKS;
                if nth == 0 {
                    maps.push(Mapping::new(bytes * REGION_CHUNKS));
                }
                let region = maps.last().expect("a region is mapped at its first chunk");
                // The region's next chunk, faulted in by another thread while this one fills
                // (`pages::populate_soon`): its huge pages are not zeroed by a pusher.
                crate::pages::populate_range_soon(region, (nth + 1) * bytes, bytes);
                // SAFETY: chunk `nth` of its region lies inside it (the region holds
                // REGION_CHUNKS of them), aligned as the mapping is (a page, at least).
                unsafe { region.as_ptr().add(nth * bytes).cast() }
            };
            self.chunks[k].store(chunk, Ordering::Release);
        }
        // SAFETY: place `n` is not below `len`, so no reader reads it, and only the holder of
        // `push` writes; it was never written (numbers are handed out once). It lies inside
        // chunk `k`, whose `size` places are mapped for the arena's life.
        unsafe { (*(*chunk.add(i)).0.get()).write(value) };
        self.len.store(n + 1, Ordering::Release);
        // The next place, loaded for the next push (as `Slab::alloc` loads its next slot: a
        // new conversation is written into it).
        if i + 1 < size {
            crate::table::prefetch_range(
                chunk.wrapping_add(i + 1).cast(),
                std::mem::size_of::<T>(),
            );
        }
        Ok(n as u32)
    }

    pub fn get(&self, n: u32) -> Option<&T> {
        if n as usize >= self.len.load(Ordering::Acquire) {
            return None;
        }
        let place = self.place_of(n)?;
        // SAFETY: `n` is below `len` (Acquire): its value was written before `len` was stored
        // past it (Release), and is never written again.
        Some(unsafe { (*place.0.get()).assume_init_ref() })
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Value `n`'s place, written or not, found through the chunk directory alone.
    fn place_of(&self, n: u32) -> Option<&Place<T>> {
        let (k, i, _) = place(n as usize);
        let chunk = self.chunks.get(k)?.load(Ordering::Acquire);
        // SAFETY: a chunk's address is stored once it is mapped, and its `size` places (`i`
        // is below it) stay mapped for the arena's life. A place is plain bytes until written;
        // callers read a value only below `len`.
        (!chunk.is_null()).then(|| unsafe { &*chunk.add(i) })
    }

    /// Starts loading every cache line of value `n`, reading only the chunk directory (a
    /// hint: nothing if `n` is not there).
    pub fn prefetch(&self, n: u32) {
        if let Some(p) = self.place_of(n) {
            prefetch(p);
        }
    }

    /// Every value, in number order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        (0..self.len() as u32).filter_map(|n| self.get(n))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn arena_chunks_tile_the_numbers() {
        let mut expect = (0, 0);
        for n in 0..DOUBLING + 3 * (1 << BIG_BITS) {
            let (k, i, size) = place(n);
            assert_eq!((k, i), expect, "value {n}");
            assert!(i < size);
            expect = if i + 1 == size {
                (k + 1, 0)
            } else {
                (k, i + 1)
            };
        }
        assert_eq!(place(Arena::<u8>::CAPACITY - 1).0, ARENA_CHUNKS - 1);
        const { assert!(Arena::<u8>::CAPACITY >= 1 << 26) };
    }

    #[test]
    fn arena_numbers_values_in_order_and_keeps_them_in_place() {
        let a = Arena::<String>::default();
        for i in 0..10_000 {
            assert_eq!(a.push(format!("v{i}")), Ok(i));
        }
        let first: *const String = a.get(0).unwrap();
        for i in 0..20_000 {
            a.push(String::new()).unwrap();
            let _ = i;
        }
        assert!(std::ptr::eq(first, a.get(0).unwrap()), "values never move");
        assert_eq!(a.get(9_999).map(String::as_str), Some("v9999"));
        assert_eq!(a.get(30_000), None);
        assert_eq!(a.len(), 30_000);
        assert_eq!(a.iter().count(), 30_000);
    }

    #[test]
    fn full_size_chunks_lie_eight_to_a_mapping_and_keep_their_values() {
        // 24-byte values: a region of eight full-size chunks is 3 MiB, huge pages and all.
        let a = Arena::<[u64; 3]>::default();
        let v = |i: u64| [i, !i, i * 3];
        let n = DOUBLING + (REGION_CHUNKS + 2) * (1 << BIG_BITS) + 5;
        for i in 0..n {
            assert_eq!(a.push(v(i as u64)), Ok(i as u32));
        }
        for i in 0..n as u32 {
            assert_eq!(a.get(i), Some(&v(u64::from(i))));
        }
        assert_eq!(a.get(n as u32), None);
        let first = |k: usize| a.chunks[k].load(Ordering::Relaxed) as usize;
        let bytes = (1 << BIG_BITS) * std::mem::size_of::<[u64; 3]>();
        // Within a region the chunks follow one another; the ninth starts a new mapping.
        for k in DOUBLING_CHUNKS..DOUBLING_CHUNKS + REGION_CHUNKS - 1 {
            assert_eq!(first(k + 1), first(k) + bytes);
        }
        let region = first(DOUBLING_CHUNKS);
        let ninth = first(DOUBLING_CHUNKS + REGION_CHUNKS);
        assert!(ninth < region || ninth >= region + REGION_CHUNKS * bytes);
        assert_eq!(first(DOUBLING_CHUNKS + REGION_CHUNKS + 1), ninth + bytes);
        assert_eq!(
            region % crate::pages::HUGE,
            0,
            "a region starts on a huge page"
        );
        assert_eq!(
            a.push.lock().len(),
            DOUBLING_CHUNKS + 2,
            "one mapping a doubling chunk, one a region"
        );
    }

    /// Counts its drops.
    struct Counted(Arc<AtomicUsize>, u32);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn arena_values_are_dropped_once_with_the_arena_and_only_published_ones_are_read() {
        let drops = Arc::new(AtomicUsize::new(0));
        let a = Arena::<Counted>::default();
        // Readers race the pusher: whatever `get` returns is a value pushed in full, with its
        // number; past `len` it returns nothing.
        let n = if cfg!(miri) { 300 } else { 20_000 };
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut seen = 0;
                    while seen < n {
                        let len = a.len() as u32;
                        for k in seen..len {
                            assert_eq!(a.get(k).expect("published").1, k);
                        }
                        assert!(a.get(len + 1).is_none_or(|c| c.1 == len + 1));
                        seen = len;
                    }
                });
            }
            for k in 0..n {
                assert_eq!(a.push(Counted(drops.clone(), k)).ok(), Some(k));
            }
        });
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        drop(a);
        assert_eq!(
            drops.load(Ordering::Relaxed),
            n as usize,
            "each value dropped once"
        );
    }
}
