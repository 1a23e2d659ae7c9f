//! Memory the engine maps from the system itself rather than asking the embedder's
//! allocator: table levels and arena chunks (`table.rs`) and the slabs of records and inbox
//! blocks (`slab.rs`). A mapping is private, anonymous and zero-filled.
//!
//! A mapping of 2 MiB or more starts on a 2 MiB boundary and asks for transparent huge pages
//! (`MADV_HUGEPAGE`; on Linux, where the system setting is `madvise`, the usual default, only
//! memory that asks gets them). Why: a large store's send or recall reads a handful of cache
//! lines at random across hundreds of megabytes; with 4 KiB pages nearly every one of those
//! misses is also a TLB miss, and its page walk is more memory reads again (two-dimensional
//! under a hypervisor: up to 24). With 2 MiB pages the TLB covers a few gigabytes and the walks
//! go. The cost: a huge page is resident whole once touched (at most 2 MiB per mapping beyond
//! what is used), and with the system's `defrag` setting at `madvise` (also the usual
//! default) the first touch of a huge page may wait for the kernel to compact memory. An
//! operator who wants neither sets transparent huge pages to `never`, and this memory is then
//! ordinary pages, as before.
//!
//! Growing memory is faulted in ahead, off the writers' threads ([`populate_soon`]): a
//! slab's next chunk, an arena region's next chunk, a table's new level. The first write to a
//! fresh huge page has the kernel zero 2 MiB — measured at 13-18% of a growing store's send
//! time on the development host (a virtual machine, where that zeroing is slow) — and this
//! moves it to the process's two populating threads, while the writer fills the memory
//! before. The CPU time is the same, spent on another core; what it costs in
//! memory is one slab chunk (2 MiB) a growing slab shard and one arena chunk ahead, resident
//! before it is used. Where the system cannot (kernels before 5.14, other systems), nothing
//! changes.

use std::ptr::NonNull;

/// The size of a huge page on x86-64 and arm64 (4 KiB base pages); mappings this large or
/// larger are aligned to it.
pub(crate) const HUGE: usize = 2 << 20;

/// The base page: mappings are whole pages.
const PAGE: usize = 4096;

/// A private anonymous mapping of `len` bytes, zero-filled by the system, unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; what is stored in it, and how it
// is shared, is up to the owner (the table's atomics, the slab's locks).
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` itself only hands out its address.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes (more than 0; the mapping is rounded up to whole 4 KiB pages); a
    /// refusal is an allocation failure, handled as the standard library handles one.
    pub fn new(len: usize) -> Mapping {
        assert!(len > 0, "an empty mapping");
        let len = len.next_multiple_of(PAGE);
        #[cfg(miri)]
        let ptr = {
            // Miri has no mmap: the same zeroed, aligned memory from its allocator.
            let layout = Self::layout(len);
            // SAFETY: a layout of non-zero size.
            let p = unsafe { std::alloc::alloc_zeroed(layout) };
            NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
        };
        #[cfg(not(miri))]
        let ptr = Self::map(len);
        Mapping { ptr, len }
    }

    /// A system mapping of `len` bytes (whole pages), aligned to `HUGE` and asking for huge
    /// pages when it is that large.
    #[cfg(not(miri))]
    fn map(len: usize) -> NonNull<u8> {
        let huge = len >= HUGE;
        // A huge mapping is taken a huge page larger, then trimmed to start on a boundary.
        let asked = if huge { len + HUGE } else { len };
        // SAFETY: a fresh private anonymous mapping (no address hint, no file); the result is
        // checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                asked,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let layout = std::alloc::Layout::from_size_align(len, PAGE).expect("a mapping's size");
            std::alloc::handle_alloc_error(layout);
        }
        let mut start = p.cast::<u8>();
        if huge {
            // Already aligned: the spare huge page is all tail; else head + tail = HUGE.
            let head = (HUGE - (start as usize & (HUGE - 1))) & (HUGE - 1);
            let tail = HUGE - head;
            // SAFETY: both ranges lie inside the mapping just made and are whole pages (mmap
            // returns page-aligned memory; `len` and HUGE are page multiples), and nothing
            // points into them. A failed unmap leaves them mapped and unused: no harm.
            unsafe {
                if head > 0 {
                    libc::munmap(start.cast(), head);
                }
                start = start.add(head);
                if tail > 0 {
                    libc::munmap(start.add(len).cast(), tail);
                }
            }
            #[cfg(target_os = "linux")]
            // SAFETY: a hint on the range just kept; it changes no contents. A refusal (huge
            // pages off or unsupported) leaves ordinary pages.
            unsafe {
                libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE);
            }
        }
        NonNull::new(start).expect("mmap gives a non-null address")
    }

    #[cfg(miri)]
    fn layout(len: usize) -> std::alloc::Layout {
        let align = if len >= HUGE { HUGE } else { PAGE };
        std::alloc::Layout::from_size_align(len, align).expect("a mapping's size")
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }
}

/// How many populate requests may wait for the populating threads; past it a request is
/// dropped.
const QUEUE: usize = 16;

/// The threads that populate: started together at the process's first request, they live as
/// long as the process, asleep while there is nothing to do.
const WORKERS: usize = 2;

/// Whole pages `start..start + len` to fault in, and whom to tell when done (tests).
struct Request {
    start: usize,
    len: usize,
    _done: Option<crossbeam_channel::Sender<()>>,
}

/// Asks the system to fault in every page of `map` writable (`MADV_POPULATE_WRITE`, Linux
/// 5.14 on: each page as if written, its contents untouched), on one of the process's
/// populating threads ([`WORKERS`]), so that the zeroing of the fresh pages is done there, not
/// on the thread that will first write them. The caller only queues the request (no thread is
/// started on its path, which runs under a slab's or table's lock: starting one took 14-36 µs
/// here, 256 µs at worst). A hint, which nothing waits for: a request past [`QUEUE`] waiting
/// ones, threads that could not be started, a kernel without the advice or another system:
/// the pages are faulted in on first use, as without it. If `map` is unmapped meanwhile the
/// advice fails on the range, or populates whatever was mapped there since, leaving its
/// contents as they were: either is harmless.
pub(crate) fn populate_soon(map: &Mapping) {
    populate_range_soon(map, 0, map.len);
}

/// [`populate_soon`] of bytes `offset..offset + len` of `map` (cut to the mapping's end; the
/// kernel takes the whole pages they lie on). Whether the request was queued.
pub(crate) fn populate_range_soon(map: &Mapping, offset: usize, len: usize) -> bool {
    request(map, offset, len, None)
}

fn request(
    map: &Mapping,
    offset: usize,
    len: usize,
    done: Option<crossbeam_channel::Sender<()>>,
) -> bool {
    let end = offset.saturating_add(len).min(map.len);
    if offset >= end {
        return false;
    }
    // Whole pages: the advice takes a page-aligned start.
    let first = offset & !(PAGE - 1);
    let r = Request {
        start: map.as_ptr() as usize + first,
        len: end - first,
        _done: done,
    };
    workers().is_some_and(|q| q.try_send(r).is_ok())
}

/// The populating threads' queue, once they run; `None` where nothing can be populated.
fn workers() -> Option<&'static crossbeam_channel::Sender<Request>> {
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        static QUEUED: std::sync::OnceLock<Option<crossbeam_channel::Sender<Request>>> =
            std::sync::OnceLock::new();
        QUEUED
            .get_or_init(|| {
                let (tx, rx) = crossbeam_channel::bounded::<Request>(QUEUE);
                let started = (0..WORKERS)
                    .filter(|_| {
                        let rx = rx.clone();
                        std::thread::Builder::new()
                            .name("imstore-populate".into())
                            .spawn(move || rx.iter().for_each(|r| populate(&r)))
                            .is_ok()
                    })
                    .count();
                (started > 0).then_some(tx)
            })
            .as_ref()
    }
    #[cfg(not(all(target_os = "linux", not(miri))))]
    None
}

/// Faults in the request's pages, a huge page at a time: the advice holds the process's
/// memory map lock (shared) while it works, and a thread mapping memory meanwhile (a slab's
/// next chunk, say) waits for it — so for one huge page's zeroing at most, not a whole level's.
#[cfg(all(target_os = "linux", not(miri)))]
fn populate(r: &Request) {
    let mut at = 0;
    while at < r.len {
        let step = (r.len - at).min(HUGE);
        // SAFETY: advice on whole pages of a range that was mapped; it changes no contents
        // (see `populate_soon`).
        let e = unsafe {
            libc::madvise(
                (r.start + at) as *mut libc::c_void,
                step,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if e != 0 {
            // Not supported here, or the range is gone: nothing more to do.
            break;
        }
        at += step;
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        #[cfg(miri)]
        // SAFETY: allocated by `new` with this layout, freed once.
        unsafe {
            std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len));
        }
        #[cfg(not(miri))]
        // SAFETY: the range `new` kept, unmapped once; the owner keeps no reference into it
        // past the mapping's life.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which of the 4 KiB pages of `len` bytes at `p` are resident.
    #[cfg(all(target_os = "linux", not(miri)))]
    fn resident(p: *mut u8, len: usize) -> Vec<bool> {
        let mut v = vec![0u8; len / PAGE];
        // SAFETY: a whole-page range of a live mapping, and a vector of one byte per page.
        let r = unsafe { libc::mincore(p.cast(), len, v.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore");
        v.iter().map(|b| b & 1 == 1).collect()
    }

    /// A populated range becomes resident, by another thread, with its contents as they were;
    /// the rest of the mapping stays untouched.
    #[test]
    #[cfg(all(target_os = "linux", not(miri)))]
    fn a_populated_range_becomes_resident_and_keeps_its_contents() {
        let m = Mapping::new(3 * HUGE);
        // SAFETY: the mapping's own bytes, while it lives.
        let bytes = unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), 3 * HUGE) };
        bytes[HUGE + 5] = 42;
        assert!(
            !resident(m.as_ptr(), 3 * HUGE)[2 * HUGE / PAGE],
            "untouched yet"
        );
        // Refused only while QUEUE others wait (other tests' stores, when tests share a
        // process): asked again until there is room, for 10 s at most.
        let start = std::time::Instant::now();
        let done = loop {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if request(&m, HUGE + 100, HUGE + 200, Some(tx)) {
                break rx;
            }
            assert!(start.elapsed().as_secs() < 10, "no room to queue a request");
            std::thread::yield_now();
        };
        // Told when the request is dropped, done.
        let _ = done.recv_timeout(std::time::Duration::from_secs(30));
        let r = resident(m.as_ptr(), 3 * HUGE);
        assert!(r[HUGE / PAGE..2 * HUGE / PAGE].iter().all(|&x| x));
        assert!(r[2 * HUGE / PAGE], "the pages the range ends on");
        assert!(!r[0], "the first huge page was not asked for");
        assert_eq!(bytes[HUGE + 5], 42);
        let zeros = bytes
            .iter()
            .enumerate()
            .filter(|&(i, b)| i != HUGE + 5 && *b != 0);
        assert_eq!(zeros.count(), 0);
        // Nothing to populate: nothing queued.
        assert!(!populate_range_soon(&m, 3 * HUGE, HUGE));
    }

    #[test]
    fn large_mappings_start_on_a_huge_page_and_all_read_as_zeros() {
        for (len, mapped) in [
            (100, 4096),
            (HUGE, HUGE),
            (3 * HUGE + 5000, 3 * HUGE + 8192),
        ] {
            let m = Mapping::new(len);
            assert_eq!(m.len(), mapped, "whole pages");
            let len = mapped;
            if len >= HUGE {
                assert_eq!(m.as_ptr() as usize % HUGE, 0);
            }
            // SAFETY: the mapping's own bytes, read and written while it lives.
            let bytes = unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), len) };
            assert!(bytes.iter().step_by(4093).all(|b| *b == 0));
            bytes[len - 1] = 7;
            bytes[0] = 9;
            assert_eq!((bytes[0], bytes[len - 1]), (9, 7));
        }
    }
}
