//! `MsgKey`: the identity of a one-to-one message, `"{MsgSeq}_{MsgRandom}_{MsgTimeStamp}"`.
//!
//! Parsing is on the hot path of every recall and modify, so it is one pass over the bytes with
//! no allocation. Only the canonical form is accepted, so that `parse(format(k)) == k` and two
//! different strings never name the same key.

use std::fmt;
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
    pub fn parse(s: &str) -> Result<Self, ParseMsgKeyError> {
        let bytes = s.as_bytes();
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
/// (simdjson's `parse_eight_digits_unrolled`): pairs, then quads, then the whole.
#[inline(always)]
fn eight_digits(v: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    let v = v * 10 + (v >> 8);
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

    #[test]
    fn serde_is_a_string() {
        let k = MsgKey::new(31906, 833502, 1572869830);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, "\"31906_833502_1572869830\"");
        assert_eq!(serde_json::from_str::<MsgKey>(&json).unwrap(), k);
        assert!(serde_json::from_str::<MsgKey>("\"1_2\"").is_err());
    }
}
