//! Account names as keys of the table of names: a name's bytes in four words, checked for a
//! NUL without leaving registers.

/// An account name as a table key: its bytes in four words, zero-padded (a UserID holds no
/// NUL, so the padding cannot be confused with a name's bytes); `None` for what cannot be a
/// UserID's bytes (longer than 32 bytes, or holding a NUL). Comparing a probe with a slot reads
/// no other memory.
pub(crate) fn name_key(s: &str) -> Option<[u64; 4]> {
    const MAX: usize = crate::account::MAX_USER_ID_LEN;
    if s.len() > MAX {
        return None;
    }
    let mut bytes = [0u8; MAX];
    bytes[..s.len()].copy_from_slice(s.as_bytes());
    let words = std::array::from_fn(|i| {
        u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    });
    (!has_nul(&words, s.len())).then_some(words)
}

/// Whether the first `len` bytes of `words` (a name, zero-padded) hold a zero byte: a mask of
/// the zero bytes of all 32, of which the padding's are dropped. On x86-64 two vector compares
/// and byte masks (SSE2, always there) of the words as they are in registers: ~19 instructions
/// a name (callgrind), where `contains` is a byte loop of ~47 for a 9-byte name, a word-at-a-time test 115
/// (the masks a name's last word needs), and a plain loop building the mask ~56 (the compiler
/// does not see the byte mask in it). The words are not reloaded from the buffer they were
/// just copied into: a 16-byte load of bytes written by narrower stores waits for them.
#[inline(always)]
fn has_nul(words: &[u64; 4], len: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_movemask_epi8, _mm_set_epi64x, _mm_setzero_si128,
        };
        // SAFETY: SSE2 is part of x86-64; nothing here touches memory.
        let zeros = unsafe {
            let z = _mm_setzero_si128();
            let lo = _mm_set_epi64x(words[1] as i64, words[0] as i64);
            let hi = _mm_set_epi64x(words[3] as i64, words[2] as i64);
            let lo = _mm_movemask_epi8(_mm_cmpeq_epi8(lo, z)) as u32 & 0xFFFF;
            let hi = _mm_movemask_epi8(_mm_cmpeq_epi8(hi, z)) as u32 & 0xFFFF;
            lo | hi << 16
        };
        let own = ((1u64 << len) - 1) as u32;
        zeros & own != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        has_nul_bytewise(words, len)
    }
}

/// [`has_nul`] a byte at a time: what other architectures run. Tested on every architecture
/// against the name's own bytes (and on x86-64 beside the vector form).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn has_nul_bytewise(words: &[u64; 4], len: usize) -> bool {
    (0..len).any(|i| (words[i / 8] >> (8 * (i % 8))) as u8 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_keys_pad_with_zeros_and_refuse_nul_and_long_names() {
        let naive = |s: &str| -> Option<[u64; 4]> {
            if s.len() > 32 || s.contains('\0') {
                return None;
            }
            let mut b = [0u8; 32];
            b[..s.len()].copy_from_slice(s.as_bytes());
            Some(std::array::from_fn(|i| {
                u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap())
            }))
        };
        let mut names = vec![
            String::new(),
            "a".into(),
            "user12345".into(),
            "é漢字".into(),
        ];
        for len in 0..=34 {
            names.push("x".repeat(len));
            for at in 0..len {
                // A NUL (and 0x80 and 0x01 bytes, which SWAR tricks confuse with one, and a
                // NUL with a 0x01 after it) at every place.
                let mut b = vec![b'y'; len];
                b[at] = 0;
                names.push(String::from_utf8(b.clone()).unwrap());
                if at + 1 < len {
                    b[at + 1] = 1;
                    names.push(String::from_utf8(b).unwrap());
                }
                let mut c: Vec<char> = "z".repeat(len).chars().collect();
                c[at] = '\u{80}';
                names.push(c.iter().collect());
                c[at] = '\u{1}';
                names.push(c.into_iter().collect());
            }
        }
        for n in &names {
            assert_eq!(name_key(n), naive(n), "{n:?}");
            // The byte-at-a-time NUL test other architectures use says the same.
            if n.len() <= 32 {
                let mut b = [0u8; 32];
                b[..n.len()].copy_from_slice(n.as_bytes());
                let words = std::array::from_fn(|i| {
                    u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap())
                });
                assert_eq!(has_nul_bytewise(&words, n.len()), n.contains('\0'), "{n:?}");
                assert_eq!(has_nul(&words, n.len()), n.contains('\0'), "{n:?}");
            }
        }
    }
}
