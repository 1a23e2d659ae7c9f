//! Slots of one size carved out of 2 MiB chunks the engine maps itself ([`crate::pages`],
//! huge pages), instead of one allocation each from the embedder's allocator: message records
//! (`message/record.rs`, `RECORDS`), inbox blocks (`inbox/slots.rs`) and conversation buffers
//! (`roaming/ring.rs`).
//!
//! Why: records are the largest part of a store (4M messages: ~290 MB), inbox blocks the next
//! (~130 MB), and a send or recall reads them at random. In ordinary 4 KiB pages each such
//! read is a TLB miss too; in huge pages it is not. glibc gives its heap huge pages only when
//! the process is started with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, which a library cannot
//! ask for. And a slot has no size header: a 72-byte record is 72 bytes, not an 80-byte glibc
//! allocation.
//!
//! How: a chunk belongs to one of [`SHARDS`] shards, each a free list and the unused end of
//! its newest chunk under a lock of its own; a thread allocates from the shard it was given
//! on its first allocation (threads are dealt round the shards). A freed slot goes back to the
//! shard its chunk belongs to — the chunk's first bytes say which, and a chunk is found from a
//! slot's address by rounding down to 2 MiB — so a thread that only frees (expiry, say) feeds
//! the shard that allocated. A shard out of slots takes another shard's whole free list before
//! it maps a chunk (a store built and dropped by one thread — a snapshot's scratch store —
//! leaves its slots for the others), so what is mapped stays near the most records held at
//! once, plus at most a partly used chunk a shard. Chunks are not given back to the system:
//! the peak stays mapped, to be reused, as with glibc's own small allocations. Each
//! allocation starts loading the slot the next one will hand out (`LOADED_AHEAD`), so that an
//! operation's first write to its new slot does not wait for memory.
//!
//! Lock order: a shard holding its own lock only tries another's (`try_lock`, never waits), so
//! two shards taking from each other cannot deadlock; nothing else is locked under a shard's
//! lock. Mapping a chunk (a system call, and a push on the shard's list of chunks) is done
//! under it: once per 29,000 records; so is mapping the next one ahead, once a shard has two
//! (`SPARE_FROM`), and queueing it for the threads that fault it in (`pages::populate_soon`:
//! a bounded queue's `try_send`, no thread started here).

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::pages::{HUGE, Mapping};

/// Shards of a slab: more than the threads that usually send at once on the machines this
/// runs on, so threads rarely share one; each costs a chunk (2 MiB) once used.
pub(crate) const SHARDS: usize = 8;

/// How much of the slot the next allocation will hand out each allocation starts loading:
/// a send writes its record into memory no core has touched lately (or that the populating
/// thread zeroed, in its own core's cache), and the first locked instruction after that
/// write — a lock, a reference count — waits until the line is here. Loaded one operation
/// ahead, it is there (sends 2–5% faster at 1M, in eight runs of eight: blocks of 64 sends
/// with it and without, alternated in one process). A record whole (72 bytes), the first
/// two lines of a larger slot (an inbox block, a conversation's buffer: written from the
/// start). On the free list's path, the next free slot.
const LOADED_AHEAD: usize = 128;

/// Bytes at the start of every chunk before its first slot: the chunk's shard.
const HEADER: usize = 64;

/// Slots of `size` bytes (aligned to `align`) in 2 MiB chunks.
pub(crate) struct Slab {
    size: usize,
    shards: [Shard; SHARDS],
}

/// One shard, on a cache line of its own so that threads on different shards do not share
/// one.
#[repr(align(64))]
struct Shard(Mutex<Free>);

struct Free {
    /// The first free slot; each free slot's first word holds the next (null at the end).
    list: *mut u8,
    /// The newest chunk's slots not yet handed out: `next..end`.
    next: *mut u8,
    end: *mut u8,
    /// Every chunk of this shard (unmapped only when the slab is dropped: a test's slab).
    chunks: Vec<Mapping>,
    /// The next chunk, mapped ahead and faulted in by another thread (`pages::populate_soon`)
    /// once this shard holds [`SPARE_FROM`] chunks.
    spare: Option<Mapping>,
}

/// A shard that has mapped this many chunks maps its next one ahead: a growing store's new
/// chunks are then faulted in — a huge page zeroed, most of what growing costs — off the
/// thread that sends, for one chunk (2 MiB) more resident a shard that grows, while a store
/// that fits in one chunk maps no more than before.
const SPARE_FROM: usize = 2;

// SAFETY: the pointers are into this shard's own chunks, reached only under the shard's lock.
unsafe impl Send for Free {}

impl Slab {
    pub const fn new(size: usize, align: usize) -> Slab {
        assert!(size >= std::mem::size_of::<*mut u8>() && size.is_multiple_of(align));
        assert!(align.is_power_of_two() && HEADER.is_multiple_of(align));
        assert!(align >= std::mem::align_of::<*mut u8>());
        assert!(size <= HUGE - HEADER, "a slot fits in a chunk");
        Slab {
            size,
            shards: [const {
                Shard(Mutex::new(Free {
                    list: std::ptr::null_mut(),
                    next: std::ptr::null_mut(),
                    end: std::ptr::null_mut(),
                    chunks: Vec::new(),
                    spare: None,
                }))
            }; SHARDS],
        }
    }

    /// An uninitialised slot of `size` bytes, this slab's until `free`.
    pub fn alloc(&self) -> NonNull<u8> {
        self.alloc_in(my_shard())
    }

    fn alloc_in(&self, shard: usize) -> NonNull<u8> {
        let mut f = self.shards[shard].0.lock();
        if f.list.is_null() && f.next == f.end {
            // Out of slots: another shard's free slots before a new chunk. Their chunks stay
            // that shard's, so they go back to it when freed.
            for other in (1..SHARDS).map(|d| (shard + d) % SHARDS) {
                if let Some(mut o) = self.shards[other].0.try_lock()
                    && !o.list.is_null()
                {
                    f.list = std::mem::replace(&mut o.list, std::ptr::null_mut());
                    break;
                }
            }
        }
        if let Some(p) = NonNull::new(f.list) {
            // SAFETY: a slot on the free list holds the next one in its first word (`free`
            // wrote it; slots are aligned for a pointer).
            f.list = unsafe { p.as_ptr().cast::<*mut u8>().read() };
            if !f.list.is_null() {
                crate::table::prefetch_range(f.list, self.size.min(LOADED_AHEAD));
            }
            return p;
        }
        if f.next == f.end {
            let chunk = f.spare.take().unwrap_or_else(|| Mapping::new(HUGE));
            let base = chunk.as_ptr();
            // SAFETY: the header lies inside the fresh chunk, which is aligned to HUGE.
            unsafe { base.cast::<usize>().write(shard) };
            let slots = (HUGE - HEADER) / self.size;
            // SAFETY: both offsets are within the chunk (`new` checked a slot fits).
            (f.next, f.end) = unsafe { (base.add(HEADER), base.add(HEADER + slots * self.size)) };
            f.chunks.push(chunk);
            if f.chunks.len() >= SPARE_FROM {
                let spare = Mapping::new(HUGE);
                crate::pages::populate_soon(&spare);
                f.spare = Some(spare);
            }
        }
        let p = f.next;
        // SAFETY: `next` is below `end`, and `end` is a whole number of slots past it.
        f.next = unsafe { p.add(self.size) };
        // The slot the next allocation hands out, loaded now (`LOADED_AHEAD`).
        crate::table::prefetch_range(f.next, self.size.min(LOADED_AHEAD));
        NonNull::new(p).expect("a slot in a mapping is non-null")
    }

    /// Gives `slot` back.
    ///
    /// # Safety
    /// `slot` came from this slab's `alloc`, is given back once, and nothing reads or writes
    /// it after (whatever it held has been dropped).
    pub unsafe fn free(&self, slot: NonNull<u8>) {
        let base = slot.as_ptr().map_addr(|a| a & !(HUGE - 1)).cast::<usize>();
        // SAFETY: the slot lies in a chunk aligned to HUGE, whose first word `alloc` wrote.
        let shard = unsafe { base.read() };
        let mut f = self.shards[shard].0.lock();
        // SAFETY: the slot is this slab's, no longer used, and aligned for a pointer.
        unsafe { slot.as_ptr().cast::<*mut u8>().write(f.list) };
        f.list = slot.as_ptr();
    }

    /// Chunks mapped so far (2 MiB each).
    #[cfg(test)]
    pub fn chunks(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().chunks.len()).sum()
    }
}

/// The shard this thread allocates from, dealt on its first allocation.
fn my_shard() -> usize {
    static DEALT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    // A const-initialised Cell has no destructor, so this never fails, even while the thread's
    // other thread-locals are being dropped (which may free records); 0 would do if it did.
    MINE.try_with(|mine| {
        if mine.get() == usize::MAX {
            mine.set(DEALT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        mine.get()
    })
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn slots_per_chunk(size: usize) -> usize {
        (HUGE - HEADER) / size
    }

    #[test]
    fn slots_are_distinct_aligned_and_reused_once_freed() {
        let slab = Slab::new(72, 8);
        let n = slots_per_chunk(72) + 10;
        let slots: Vec<NonNull<u8>> = (0..n).map(|_| slab.alloc()).collect();
        assert_eq!(slab.chunks(), 2);
        let addrs: HashSet<usize> = slots.iter().map(|p| p.as_ptr() as usize).collect();
        assert_eq!(addrs.len(), n);
        for p in &slots {
            assert_eq!(p.as_ptr() as usize % 8, 0);
            let off = p.as_ptr() as usize % HUGE;
            assert!(
                off >= HEADER && off + 72 <= HUGE,
                "a slot inside its chunk, past the header"
            );
            // SAFETY: a slot of this slab, 72 bytes, not freed yet.
            unsafe { p.as_ptr().write_bytes(0xA5, 72) };
        }
        for p in &slots {
            // SAFETY: allocated above, freed once.
            unsafe { slab.free(*p) };
        }
        // The same number again comes from the freed slots: no chunk more.
        let again: HashSet<usize> = (0..n).map(|_| slab.alloc().as_ptr() as usize).collect();
        assert_eq!(again, addrs);
        assert_eq!(slab.chunks(), 2);
    }

    #[test]
    fn a_freed_slot_goes_back_to_the_shard_of_its_chunk() {
        let slab = Slab::new(72, 8);
        let p = slab.alloc_in(3);
        let q = slab.alloc_in(5);
        // SAFETY: allocated above, each freed once (from this thread, whatever its shard).
        unsafe {
            slab.free(p);
            slab.free(q);
        }
        assert_eq!(slab.shards[3].0.lock().list, p.as_ptr());
        assert_eq!(slab.shards[5].0.lock().list, q.as_ptr());
        assert_eq!(slab.alloc_in(3), p);
        assert_eq!(slab.alloc_in(5), q);
    }

    #[test]
    fn a_shard_out_of_slots_takes_another_shards_free_ones_before_mapping() {
        let slab = Slab::new(72, 8);
        let per_chunk = slots_per_chunk(72);
        // Shard 0 fills a chunk, and everything is freed: its chunk's slots are on its list.
        let made: Vec<NonNull<u8>> = (0..per_chunk).map(|_| slab.alloc_in(0)).collect();
        for p in &made {
            // SAFETY: allocated above, freed once.
            unsafe { slab.free(*p) };
        }
        assert_eq!(slab.chunks(), 1);
        // Shard 1, with nothing of its own, takes them rather than map a chunk.
        let taken: HashSet<usize> = (0..per_chunk)
            .map(|_| slab.alloc_in(1).as_ptr() as usize)
            .collect();
        assert_eq!(
            slab.chunks(),
            1,
            "no chunk mapped while another shard had free slots"
        );
        assert_eq!(taken, made.iter().map(|p| p.as_ptr() as usize).collect());
        // Freed again, they go back to shard 0, whose chunk they are in.
        for p in &made {
            // SAFETY: allocated (by shard 1) above, freed once.
            unsafe { slab.free(*p) };
        }
        assert!(slab.shards[1].0.lock().list.is_null());
        assert!(!slab.shards[0].0.lock().list.is_null());
        // Only when no shard has a free slot is a chunk mapped.
        let _all: Vec<NonNull<u8>> = (0..=per_chunk).map(|_| slab.alloc_in(2)).collect();
        assert_eq!(slab.chunks(), 2);
    }

    #[test]
    fn threads_allocating_and_freeing_in_turn_reuse_one_chunk() {
        let slab = Slab::new(72, 8);
        let per_chunk = slots_per_chunk(72);
        // Twenty threads in turn (dealt round the shards) each allocate a chunk's worth; three
        // other threads free it all. However shards are dealt, no round needs a new chunk.
        for _ in 0..20 {
            let made: Vec<usize> = std::thread::scope(|s| {
                s.spawn(|| {
                    (0..per_chunk)
                        .map(|_| slab.alloc().as_ptr() as usize)
                        .collect()
                })
                .join()
                .unwrap()
            });
            let made = std::sync::Mutex::new(made);
            std::thread::scope(|t| {
                for _ in 0..3 {
                    t.spawn(|| {
                        while let Some(p) = made.lock().unwrap().pop() {
                            // SAFETY: allocated above, popped (so freed) once.
                            unsafe { slab.free(NonNull::new(p as *mut u8).unwrap()) };
                        }
                    });
                }
            });
        }
        assert_eq!(slab.chunks(), 1, "{} chunks", slab.chunks());
    }

    #[test]
    fn threads_allocating_and_freeing_at_once_never_share_a_slot() {
        let slab = Slab::new(72, 8);
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let slab = &slab;
                s.spawn(move || {
                    let mut held: Vec<NonNull<u8>> = Vec::new();
                    for i in 0..50_000usize {
                        let p = slab.alloc();
                        // SAFETY: a fresh slot of 72 bytes, this thread's until freed.
                        unsafe { p.as_ptr().write_bytes(t, 72) };
                        held.push(p);
                        if i % 3 == 2 {
                            let q = held.swap_remove(i % held.len());
                            // SAFETY: every byte is still this thread's mark: nobody else
                            // was handed the slot while it was held.
                            let bytes = unsafe { std::slice::from_raw_parts(q.as_ptr(), 72) };
                            assert!(bytes.iter().all(|b| *b == t));
                            // SAFETY: allocated above, freed once.
                            unsafe { slab.free(q) };
                        }
                    }
                    for q in held {
                        // SAFETY: as above.
                        let bytes = unsafe { std::slice::from_raw_parts(q.as_ptr(), 72) };
                        assert!(bytes.iter().all(|b| *b == t));
                        // SAFETY: allocated above, freed once.
                        unsafe { slab.free(q) };
                    }
                });
            }
        });
    }
}
