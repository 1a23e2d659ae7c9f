//! `MsgKey`: the identity of a one-to-one message, `"{MsgSeq}_{MsgRandom}_{MsgTimeStamp}"`.
//!
//! Parsing is on the hot path of every recall and modify, so it allocates nothing, and the keys
//! that occur (any MsgSeq, a ten-digit MsgTimeStamp) are parsed without a branch on the exact
//! lengths of MsgSeq and MsgRandom, which would mispredict: a few word loads at offsets fixed by
//! the key's length, SWAR digit tests and conversions, and checks that send anything else to a
//! number-by-number parser. One branch tells a MsgSeq of nine or ten digits (the server's random
//! u32s, all but about one in forty) from a shorter one: it goes the same way for keys of one
//! kind, and mispredicts only where the two kinds are interleaved. Only the canonical form is
//! accepted, so that `parse(format(k)) == k` and two different strings never name the same key.

use std::fmt;
use std::hint::select_unpredictable;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest string Tencent accepts as a MsgKey.
pub const MAX_MSG_KEY_LEN: usize = 50;

/// A message key: MsgSeq, MsgRandom and MsgTimeStamp (Unix seconds).
///
/// ```
/// use imstore::MsgKey;
/// let k: MsgKey = "31906_833502_1572869830".parse().unwrap();
/// assert_eq!((k.seq(), k.random(), k.time()), (31906, 833502, 1572869830));
/// assert_eq!(k.to_string(), "31906_833502_1572869830");
/// assert!("031906_833502_1572869830".parse::<MsgKey>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgKey {
    seq: u32,
    random: u32,
    time: u32,
}

/// Why a string is not a canonical MsgKey. Recall answers it with error 90054.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseMsgKeyError {
    kind: &'static str,
}

impl fmt::Display for ParseMsgKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid MsgKey: {}", self.kind)
    }
}

impl std::error::Error for ParseMsgKeyError {}

impl MsgKey {
    /// Builds a key from its three parts.
    pub const fn new(seq: u32, random: u32, time: u32) -> Self {
        MsgKey { seq, random, time }
    }

    /// MsgSeq.
    pub const fn seq(&self) -> u32 {
        self.seq
    }

    /// MsgRandom.
    pub const fn random(&self) -> u32 {
        self.random
    }

    /// MsgTimeStamp, Unix seconds.
    pub const fn time(&self) -> u32 {
        self.time
    }

    /// Parses the canonical form: three decimal u32 separated by exactly two `_`, no sign, no
    /// spaces, no leading zeros (except `0` itself), at most 50 bytes.
    #[inline]
    pub fn parse(s: &str) -> Result<Self, ParseMsgKeyError> {
        match parse_common::<false>(s.as_bytes()) {
            Some(key) => Ok(key),
            None => parse_other(s.as_bytes()),
        }
    }
}

/// '0' in every byte: `word ^ ZEROS` turns the digits of `word` into their values 0..=9 and every
/// other byte into something above 9.
const ZEROS: u64 = 0x30 * ONES;

/// The keys that occur: MsgSeq of one to ten digits, MsgRandom of one to ten, MsgTimeStamp of
/// exactly ten (every time from September 2001 on), hence 14 to 32 bytes: 21 to 32, or with
/// `SHORT` 14 to 20 (then MsgSeq has at most seven digits). `None` for every other string,
/// canonical or not: `parse_stepwise` then parses it or says what is wrong with it.
///
/// With the MsgTimeStamp ten digits long, its digits and MsgRandom's last ten bytes sit at offsets
/// fixed by the key's length, so all the loads are issued at once; only MsgSeq's length is found
/// by scanning (its first non-digit among the first eight bytes, in SWAR, then the ninth and tenth
/// bytes if those eight are all digits), and it fixes MsgRandom's length. Each number's digits,
/// moved to the top of a word (or masked to their own bytes there), are checked and converted in
/// SWAR (`eight_digits`, plus the leading one or two digits of a nine- or ten-digit number). One
/// branch depends on a length: whether MsgSeq has more than eight digits. It goes the same way for
/// keys of one kind (the server's random MsgSeqs, or a caller's own), and nine against ten digits
/// is chosen without one. The other branches only reject: on the keys that occur they go the same
/// way every time. (A general parser without branches, finding both `_` among the 32 bytes and
/// shifting every number into place, measured slower than the stepwise one: each number's chain of
/// dependent operations, load, scan, shift and convert, is longer than the mispredictions it
/// saves. Nine- and ten-digit MsgSeqs taken without the branch, by a scan of sixteen bytes and a
/// ten-digit conversion divided by a power of ten, measured about a quarter slower on keys with
/// shorter ones, those of `cargo bench --bench msgkey`.)
#[inline(always)]
fn parse_common<const SHORT: bool>(b: &[u8]) -> Option<MsgKey> {
    let len = b.len();
    if !(if SHORT { 14..=20 } else { 21..=32 }).contains(&len) {
        return None;
    }
    let head = word::<8>(b, 0) ^ ZEROS; // MsgSeq, '_', then MsgRandom
    let time_low = word::<8>(b, len - 8) ^ ZEROS; // MsgTimeStamp's last eight digits
    let time_lead = word::<2>(b, len - 10) ^ (ZEROS & 0xFFFF); // and its first two
    let (random_low, random_lead) = if SHORT {
        // MsgRandom has at most seven digits, ending before the '_' at len - 11 <= 9: the eight
        // bytes before that '_' (in a key of 19 or 20 bytes), or the first eight moved up to end
        // there. Nothing before them.
        let at = len.saturating_sub(19);
        ((word::<8>(b, at) ^ ZEROS) << (8 * (at + 19 - len)), 0)
    } else {
        // The eight bytes before the '_' at len - 11, and the two before those.
        (
            word::<8>(b, len - 19) ^ ZEROS,
            word::<2>(b, len - 21) ^ (ZEROS & 0xFFFF),
        )
    };
    // MsgSeq's length if it has at most eight digits: its first non-digit, 8 if the first eight
    // bytes are all digits (the lowest flag of `not_digit` is exact). The byte there should be the
    // '_' after MsgSeq; it is a digit only when the first eight are and MsgSeq goes on.
    let n_head = (not_digit(head).trailing_zeros() / 8) as usize;
    let after = b[n_head];
    let (n_seq, seq) = if !SHORT && after.wrapping_sub(b'0') < 10 {
        // Nine digits, or ten if b[9] is a digit too: which, without a branch (among random u32s
        // about one in five has nine).
        let ten = b[9].wrapping_sub(b'0') < 10;
        let n = 9 + usize::from(ten);
        if b[n] != b'_' {
            return None;
        }
        // The last eight digits, ending at the top byte; and the first one or two as a pair (the
        // first two bytes, or the first byte as the second digit).
        let low = word::<8>(b, n - 8) ^ ZEROS;
        let lead = select_unpredictable(ten, head & 0xFFFF, (head & 0xFF) << 8);
        (n, eight_digits(low) + two_digits(lead) * 100_000_000)
    } else {
        if after != b'_' {
            return None;
        }
        // MsgSeq moved up so that its last digit is the top byte: the little-endian image of the
        // number left-padded with zeros to eight digits. (With no digits, a shift by 0 and a
        // meaningless number, rejected below.)
        (
            n_head,
            eight_digits(head.wrapping_shl(64 - 8 * n_head as u32)),
        )
    };
    // A MsgSeq or MsgRandom of no digits is rejected below, by `SMALLEST[0]`.
    let n_random = len.wrapping_sub(n_seq + 12);
    if n_random > 10 || b[len - 11] != b'_' {
        return None;
    }
    // MsgRandom's bytes only: the last n_random of the ten before the second '_'.
    let random_low = random_low & LOW_BYTES[n_random];
    let random_lead = random_lead & LEAD_BYTES[n_random];
    if not_digit(time_low) | not_digit(random_low) | not_digit(time_lead | random_lead << 16) != 0 {
        return None;
    }
    let random = eight_digits(random_low) + two_digits(random_lead) * 100_000_000;
    let time = eight_digits(time_low) + two_digits(time_lead) * 100_000_000;
    // No leading zero (the smallest number of its length), and within u32 (only ten digits can
    // exceed it).
    if seq < SMALLEST[n_seq]
        || random < SMALLEST[n_random]
        || time < SMALLEST[10]
        || (seq | random | time) > u64::from(u32::MAX)
    {
        return None;
    }
    Some(MsgKey {
        seq: seq as u32,
        random: random as u32,
        time: time as u32,
    })
}

/// The `N` bytes of `b` from `at`, as a little-endian number (the first byte lowest).
#[inline(always)]
fn word<const N: usize>(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w[..N].copy_from_slice(&b[at..at + N]);
    u64::from_le_bytes(w)
}

/// High bit of each byte of `digits` (digit values, `byte ^ ZEROS`) that is not 0..=9. Whether
/// any is set, and the lowest set, are exact; a byte of 0x8A or more (itself flagged) may carry
/// a false flag into the byte above it.
#[inline(always)]
fn not_digit(digits: u64) -> u64 {
    (digits.wrapping_add(0x76 * ONES) | digits) & (0x80 * ONES)
}

/// Keeps the last `n` (up to eight) bytes of a word: the low digits of an `n`-digit number that
/// ends at its top byte.
const LOW_BYTES: [u64; 11] = {
    let mut m = [u64::MAX; 11];
    let mut n = 0;
    while n < 8 {
        m[n] = !(u64::MAX >> (8 * n));
        n += 1;
    }
    m
};

/// Keeps the leading digits of an `n`-digit number in the two bytes before its last eight: none
/// below nine digits, the upper byte for nine, both for ten.
const LEAD_BYTES: [u64; 11] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF00, 0xFFFF];

/// The smallest canonical number of `n` digits (0 has one digit; none has no digits, so that a
/// MsgSeq or MsgRandom found to have none is rejected with the others).
const SMALLEST: [u64; 11] = [
    u64::MAX,
    0,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

/// Two digit values, the first in the low byte, as a number.
#[inline(always)]
fn two_digits(v: u64) -> u64 {
    (v & 0xFF) * 10 + (v >> 8)
}

/// Keys of 14 to 20 bytes in the common shape, apart (out of line) so as not to slow the longer
/// ones; then the rest.
#[inline(never)]
fn parse_other(b: &[u8]) -> Result<MsgKey, ParseMsgKeyError> {
    match parse_common::<true>(b) {
        Some(key) => Ok(key),
        None => parse_stepwise(b),
    }
}

/// Number by number: every key that `parse_common` leaves (shorter than 14 bytes, or a MsgTimeStamp
/// of fewer than ten digits), and every error with its reason.
fn parse_stepwise(bytes: &[u8]) -> Result<MsgKey, ParseMsgKeyError> {
    if bytes.len() > MAX_MSG_KEY_LEN {
        return Err(ParseMsgKeyError {
            kind: "longer than 50 bytes",
        });
    }
    let (seq, rest) = number(bytes)?;
    let (random, rest) = number(after_underscore(rest)?)?;
    let (time, rest) = number(after_underscore(rest)?)?;
    if !rest.is_empty() {
        return Err(ParseMsgKeyError {
            kind: "trailing characters after MsgTimeStamp",
        });
    }
    Ok(MsgKey { seq, random, time })
}

#[inline(always)]
fn after_underscore(rest: &[u8]) -> Result<&[u8], ParseMsgKeyError> {
    match rest.split_first() {
        Some((b'_', tail)) => Ok(tail),
        _ => Err(ParseMsgKeyError {
            kind: "expected three numbers separated by '_'",
        }),
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;

/// One canonical decimal u32 at the start of `bytes`, and what follows it.
///
/// Eight bytes are examined at once (SWAR): which are digits, and their value, in a handful of
/// register operations with no data-dependent branch — the per-digit loop of the obvious parser
/// mispredicts once per number, which is most of its cost.
#[inline(always)]
fn number(bytes: &[u8]) -> Result<(u32, &[u8]), ParseMsgKeyError> {
    let Some(word) = bytes.first_chunk::<8>() else {
        return number_scalar(bytes);
    };
    let digits = u64::from_le_bytes(*word) ^ (0x30 * ONES); // '0'..'9' become 0..9
    // High bit of each byte that is not a digit: above 9, or not ASCII. No carries cross bytes.
    let not_digit = (((digits & (0x7F * ONES)) + 0x76 * ONES) | digits) & (0x80 * ONES);
    let n = (not_digit.trailing_zeros() / 8) as usize;
    canonical_length(bytes, n)?;
    // Keep the n digits, moved to the top bytes: the little-endian image of the number
    // left-padded with zeros to eight digits.
    let mut value = eight_digits(digits << (64 - 8 * n as u32));
    let mut len = n;
    if n == 8 {
        // Up to two more digits; an eleventh is out of range.
        while let Some(d) = bytes
            .get(len)
            .map(|b| b.wrapping_sub(b'0'))
            .filter(|d| *d <= 9)
        {
            if len == 10 {
                return Err(OUT_OF_RANGE);
            }
            value = value * 10 + u64::from(d);
            len += 1;
        }
    }
    let value = u32::try_from(value).map_err(|_| OUT_OF_RANGE)?;
    Ok((value, &bytes[len..]))
}

const OUT_OF_RANGE: ParseMsgKeyError = ParseMsgKeyError {
    kind: "number out of u32 range",
};

/// Converts eight digit values (0..=9), first digit in the lowest byte, to their number
/// (simdjson's `parse_eight_digits_unrolled`): pairs, then quads, then the whole. Other bytes give
/// a meaningless number below 2^32, not a panic (`parse_common` converts a MsgSeq of no digits
/// before it rejects it).
#[inline(always)]
fn eight_digits(v: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    ((v & MASK)
        .wrapping_mul(MUL1)
        .wrapping_add(((v >> 16) & MASK).wrapping_mul(MUL2)))
        >> 32
}

/// A number of `n` digits at the start of `bytes` is canonical: at least one digit, and no
/// leading zero unless it is `0` itself.
#[inline(always)]
fn canonical_length(bytes: &[u8], n: usize) -> Result<(), ParseMsgKeyError> {
    match n {
        0 => Err(ParseMsgKeyError {
            kind: "expected a decimal number",
        }),
        2.. if bytes[0] == b'0' => Err(ParseMsgKeyError {
            kind: "leading zero",
        }),
        _ => Ok(()),
    }
}

/// The same for the last few bytes of a key, one digit at a time.
fn number_scalar(bytes: &[u8]) -> Result<(u32, &[u8]), ParseMsgKeyError> {
    let n = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    canonical_length(bytes, n)?;
    // Fewer than eight bytes remain, so n < 8: no overflow.
    let value = bytes[..n]
        .iter()
        .fold(0u32, |v, b| v * 10 + u32::from(b - b'0'));
    Ok((value, &bytes[n..]))
}

impl FromStr for MsgKey {
    type Err = ParseMsgKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MsgKey::parse(s)
    }
}

impl fmt::Display for MsgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}_{}", self.seq, self.random, self.time)
    }
}

impl Serialize for MsgKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MsgKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MsgKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MsgKey string such as \"31906_833502_1572869830\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MsgKey, E> {
                MsgKey::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_canonical_keys() {
        assert_eq!(MsgKey::parse("0_0_0"), Ok(MsgKey::new(0, 0, 0)));
        let max = "4294967295_4294967295_4294967295";
        assert_eq!(
            MsgKey::parse(max),
            Ok(MsgKey::new(u32::MAX, u32::MAX, u32::MAX))
        );
    }

    #[test]
    fn rejects_non_canonical_keys() {
        for bad in [
            "",
            "_",
            "1_2",
            "1_2_3_4",
            "1__2_3",
            "01_2_3",
            "1_00_3",
            "+1_2_3",
            "-1_2_3",
            " 1_2_3",
            "1_2_3 ",
            "1_2_4294967296",
            "1_2_99999999999",
            "1_2_3a",
            "a_b_c",
            "1_2_",
            "1_2_٣",
            "1_2_00000000000000000000000000000000000000000000000003",
        ] {
            assert!(MsgKey::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn every_digit_count_parses_exactly() {
        for v in [
            0u32,
            7,
            10,
            99,
            100,
            12345678,
            99999999,
            100000000,
            123456789,
            1000000000,
            u32::MAX,
        ] {
            let s = format!("{v}_{v}_{v}");
            assert_eq!(MsgKey::parse(&s), Ok(MsgKey::new(v, v, v)), "{s}");
        }
        for bad in [
            "1_2_/",
            "1_2_:",
            "1_2_\u{80}",
            "1_2_12345678a",
            "1_2_a12345678",
            "1_2_4294967296",
            "1_2_9999999999",
            "4294967296_2_1572869830",
            "12345678901_2_1572869830",
            "0123456789_2_1572869830",
            "123456789a_2_1572869830",
            "123456789__2_1572869830",
            "1234567890a_2_1572869830",
        ] {
            assert!(MsgKey::parse(bad).is_err(), "{bad}");
        }
    }

    /// The grammar, said plainly: what `parse` must agree with.
    fn reference(s: &str) -> Option<MsgKey> {
        let parts: Vec<&str> = s.split('_').collect();
        let [a, b, c] = parts[..] else { return None };
        let num = |p: &str| {
            let canonical = !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && !(p.len() > 1 && p.starts_with('0'));
            canonical.then(|| p.parse::<u32>().ok()).flatten()
        };
        Some(MsgKey::new(num(a)?, num(b)?, num(c)?))
    }

    #[test]
    fn agrees_with_the_plain_grammar_on_every_one_byte_corruption() {
        let values = [
            0u32,
            5,
            10,
            99,
            100,
            1234,
            99999999,
            100000000,
            123456789,
            u32::MAX,
        ];
        let mut checked = 0;
        for a in values {
            for b in values {
                for c in values {
                    let key = format!("{a}_{b}_{c}");
                    assert_eq!(MsgKey::parse(&key), Ok(MsgKey::new(a, b, c)));
                    let mut variants = Vec::new();
                    for i in 0..key.len() {
                        for x in [b'0', b'9', b'_', b'/', b':', 0, 0x80] {
                            let mut bytes = key.clone().into_bytes();
                            bytes[i] = x;
                            variants.extend(String::from_utf8(bytes).ok());
                        }
                    }
                    for extra in ["0", "9", "_", "_1", "12", "a"] {
                        variants.push(format!("{key}{extra}"));
                        variants.push(format!("{extra}{key}"));
                    }
                    for s in variants {
                        assert_eq!(MsgKey::parse(&s).ok(), reference(&s), "{s:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 100_000);
    }

    /// What `parse` must do with `s`: agree with the plain grammar (at most 50 bytes), and with
    /// the stepwise parser down to the reason it gives for a rejection.
    fn check(s: &str) {
        let got = MsgKey::parse(s);
        let want = (s.len() <= MAX_MSG_KEY_LEN).then(|| reference(s)).flatten();
        assert_eq!(got.ok(), want, "{s:?}");
        assert_eq!(got, parse_stepwise(s.as_bytes()), "{s:?}");
    }

    /// Numbers of every length from 1 to 10 digits (`per_length` of: the smallest, the largest,
    /// one between), and the edges of u32 (above it, ten-digit numbers that must be rejected).
    fn numbers(per_length: usize) -> Vec<u64> {
        let mut v = vec![0, u64::from(u32::MAX), 1 << 32, 9_999_999_999];
        for n in 1..=10 {
            let (lo, hi) = (10u64.pow(n - 1), 10u64.pow(n) - 1);
            v.extend(
                [lo, hi, lo + (hi - lo) / 3 + 1]
                    .into_iter()
                    .take(per_length),
            );
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn every_combination_of_lengths_parses_and_the_common_ones_take_the_fast_path() {
        let numbers = numbers(3);
        let digits = |v: u64| v.to_string().len();
        let mut common = 0;
        for &a in &numbers {
            for &b in &numbers {
                for &c in &numbers {
                    let s = format!("{a}_{b}_{c}");
                    check(&s);
                    let in_range = [a, b, c].iter().all(|&v| v <= u64::from(u32::MAX));
                    let want = in_range.then(|| MsgKey::new(a as u32, b as u32, c as u32));
                    assert_eq!(MsgKey::parse(&s).ok(), want, "{s}");
                    // The shape `parse_common` takes, any MsgSeq and MsgRandom with a ten-digit
                    // MsgTimeStamp (else the stepwise parser does all the work).
                    let shape = in_range && digits(c) == 10;
                    let fast = match s.len() {
                        ..21 => parse_common::<true>(s.as_bytes()),
                        _ => parse_common::<false>(s.as_bytes()),
                    };
                    assert_eq!(fast, shape.then_some(want).flatten(), "{s}");
                    common += usize::from(shape);
                }
            }
        }
        assert!(common > 1_000, "{common}");
    }

    #[test]
    fn agrees_with_the_grammar_on_one_character_edits_of_keys() {
        let numbers = numbers(2);
        let mut checked = 0;
        for &a in &numbers {
            for &b in &numbers {
                for &c in &numbers {
                    let key = format!("{a}_{b}_{c}");
                    let chars: Vec<char> = key.chars().collect();
                    let edit = |i: usize, remove: usize, insert: Option<char>| {
                        let mut s: String = chars[..i].iter().collect();
                        s.extend(insert);
                        s.extend(&chars[i + remove..]);
                        s
                    };
                    for i in 0..=chars.len() {
                        // Insert before character i; replace it, or delete it.
                        let removals: &[usize] = if i < chars.len() { &[0, 1] } else { &[0] };
                        for &remove in removals {
                            for x in ['0', '1', '9', '_', 'a', '+', '-', ' ', '/', ':', '\u{e9}'] {
                                check(&edit(i, remove, Some(x)));
                                checked += 1;
                            }
                        }
                        if i < chars.len() {
                            check(&edit(i, 1, None));
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 1_000_000);
    }

    #[test]
    fn agrees_with_the_grammar_on_malformed_keys_and_every_length() {
        let parts = [
            "",
            "0",
            "00",
            "01",
            "007",
            "1",
            "9",
            "10",
            "12345678",
            "123456789",
            "1234567890",
            "4294967295",
            "4294967296",
            "99999999999",
            "+1",
            "-1",
            " 1",
            "1 ",
            "a",
            "\u{e9}",
            "1\u{e9}",
            "1572869830",
        ];
        for a in parts {
            check(a);
            for b in parts {
                check(&format!("{a}_{b}"));
                for c in parts {
                    check(&format!("{a}_{b}_{c}"));
                    check(&format!("{a}__{b}_{c}"));
                    check(&format!("{a}_{b}__{c}"));
                    for d in ["", "0", "1", "1572869830"] {
                        check(&format!("{a}_{b}_{c}_{d}"));
                    }
                }
            }
        }
        for len in 0..=60 {
            for unit in ["0", "1", "9", "_", "1_", "0_", "12_", "a", "\u{e9}"] {
                check(&unit.repeat(len));
            }
            let pad = "0".repeat(len);
            for s in [
                format!("{pad}1_2_1572869830"),
                format!("1{pad}_2_1572869830"),
                format!("1_{pad}2_1572869830"),
                format!("1_2{pad}_1572869830"),
                format!("1_2_{pad}1572869830"),
                format!("1_2_1572869830{pad}"),
                format!("1_{}_1572869830", "7".repeat(len)),
                format!("{}_1_1572869830", "7".repeat(len)),
                format!("1_1_{}", "7".repeat(len)),
            ] {
                check(&s);
            }
        }
    }

    #[test]
    fn agrees_with_the_grammar_on_random_strings() {
        // xorshift64*: no dependency, and the same strings on every run.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move |n: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
        };
        let alphabet: Vec<char> = "0123456789_a\u{e9}".chars().collect();
        let mut valid = 0;
        for _ in 0..300_000 {
            // Any string over the alphabet, up to 60 characters.
            let len = next(61);
            let s: String = (0..len).map(|_| alphabet[next(alphabet.len())]).collect();
            check(&s);
            // Three runs of digits (up to 11, the first digit possibly 0) joined by '_', the last
            // often ten digits long, with now and then a character of the alphabet changed.
            let run = |next: &mut dyn FnMut(usize) -> usize, len: usize| -> String {
                (0..len)
                    .map(|_| char::from(b'0' + next(10) as u8))
                    .collect()
            };
            let (n1, n2) = (next(12), next(12));
            let n3 = if next(2) == 0 { 10 } else { next(12) };
            let key = format!(
                "{}_{}_{}",
                run(&mut next, n1),
                run(&mut next, n2),
                run(&mut next, n3)
            );
            let mut chars: Vec<char> = key.chars().collect();
            if next(4) == 0 {
                let i = next(chars.len());
                chars[i] = alphabet[next(alphabet.len())];
            }
            let s: String = chars.into_iter().collect();
            check(&s);
            valid += usize::from(reference(&s).is_some());
        }
        assert!(valid > 10_000, "{valid}");
    }

    #[test]
    fn serde_is_a_string() {
        let k = MsgKey::new(31906, 833502, 1572869830);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, "\"31906_833502_1572869830\"");
        assert_eq!(serde_json::from_str::<MsgKey>(&json).unwrap(), k);
        assert!(serde_json::from_str::<MsgKey>("\"1_2\"").is_err());
    }
}
