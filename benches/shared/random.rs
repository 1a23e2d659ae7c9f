// Message `i`'s MsgRandom, shared by `workload` and `peers` (which hands both engines the same).

/// MsgRandom of message `i`: a 32-bit number that looks random, as Tencent's clients and the
/// server make it (three in four have ten digits, so a key is 21 to 28 bytes long at these
/// scales), and fixed by `i` so that a recall can name the message again.
fn msg_random(i: u64) -> u32 {
    let z = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((z >> 32) ^ z) as u32
}
