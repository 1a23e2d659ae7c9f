//! Prefetch hints: start loading the cache lines a value, a range or an address lies on, for
//! work that needs them after other work. Used by every lookup and allocation of the hot path.

/// Asks the CPU to start loading every cache line `value` lies on, for work that will need it
/// after some other work (a hint only: no effect on what the program computes). Every line,
/// not the first: a value need not start a line (a record is a 72-byte slot; glibc aligns to
/// 16 bytes), so a 72-byte record lies on two lines, and the work reads fields on each — a
/// line left out is a miss taken later, alone, under a lock.
pub(crate) fn prefetch<T: ?Sized>(value: &T) {
    prefetch_range(
        (value as *const T).cast::<u8>(),
        std::mem::size_of_val(value),
    );
}

/// Calls `f` with the start of every 64-byte cache line that bytes `start..start + len` lie
/// on. A plain loop: an iterator with `step_by` cost ~50 instructions a call (callgrind), on
/// every request's hot path.
fn each_line(start: usize, len: usize, mut f: impl FnMut(usize)) {
    let (mut line, end) = (start & !63, start + len);
    while line < end {
        f(line);
        line += 64;
    }
}

/// Starts loading the `len` bytes at `start` (every line they lie on), which need not be
/// valid memory (the next slot a slab or an arena will hand out, say: see `Slab::alloc`).
pub(crate) fn prefetch_range(start: *const u8, len: usize) {
    each_line(start as usize, len, |line| {
        prefetch_addr(start.wrapping_add(line.wrapping_sub(start as usize)));
    });
}

/// [`prefetch`] of an address, which need not be valid (one past the end of a buffer, say):
/// the CPU never faults on a prefetch and the program never reads through it.
pub(crate) fn prefetch_addr(addr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64; a prefetch reads nothing the program sees and never
    // faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(addr.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefetch_covers_every_line_a_value_lies_on() {
        let all = |start, len| {
            let mut lines = Vec::new();
            each_line(start, len, |line| lines.push(line));
            lines
        };
        // A 192-byte value 16 bytes into a line (where glibc would put it): four lines, the
        // last holding its final 16 bytes; at a line's start (an arena's cell), three.
        assert_eq!(all(1040, 192), [1024, 1088, 1152, 1216]);
        assert_eq!(all(1024, 192), [1024, 1088, 1152]);
        // A 40-byte name slot across a line's end, and one inside a line.
        assert_eq!(all(40, 40), [0, 64]);
        assert_eq!(all(64, 40), [64]);
        assert_eq!(all(64, 0), Vec::<usize>::new());
    }
}
