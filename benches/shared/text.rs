// Message `i`'s text, shared by `workload` and `peers` (which hands both engines the same).

/// Message `i`'s text, "message " and `i` in 24 digits (32 characters): what
/// `format!("message {i:024}")` makes, written out by hand — a server's request parser hands
/// the store a fresh `String` of the text, one allocation and a copy, not a trip through the
/// formatting machinery, which cost ~7% of a send's samples here (perf, 1M).
fn text(i: u64) -> String {
    let mut bytes = *b"message 000000000000000000000000";
    let (mut n, mut d) = (i, bytes.len());
    while n > 0 {
        d -= 1;
        bytes[d] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    std::str::from_utf8(&bytes).expect("ASCII").to_owned()
}

/// Panics unless `text` makes what `format!` would (run when a bench starts).
fn check_text() {
    for i in [0, 7, 1_000_000, 123_456_789_012, u64::MAX] {
        assert_eq!(text(i), format!("message {i:024}"));
    }
}
