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
