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
        let mut parts = [0u32; 3];
        let mut pos = 0;
        for (i, part) in parts.iter_mut().enumerate() {
            let (value, next) = parse_u32(bytes, pos)?;
            *part = value;
            pos = next;
            if i < 2 {
                if bytes.get(pos) != Some(&b'_') {
                    return Err(ParseMsgKeyError {
                        kind: "expected '_' between the three numbers",
                    });
                }
                pos += 1;
            }
        }
        if pos != bytes.len() {
            return Err(ParseMsgKeyError {
                kind: "trailing characters after MsgTimeStamp",
            });
        }
        Ok(MsgKey {
            seq: parts[0],
            random: parts[1],
            time: parts[2],
        })
    }
}

/// Parses one canonical decimal u32 starting at `start`; returns it and the index after it.
#[inline]
fn parse_u32(bytes: &[u8], start: usize) -> Result<(u32, usize), ParseMsgKeyError> {
    let mut pos = start;
    let mut value: u64 = 0;
    while let Some(&b) = bytes.get(pos) {
        if !b.is_ascii_digit() {
            break;
        }
        // Eleven digits can never fit; stop before the accumulator could overflow.
        if pos - start == 10 {
            return Err(ParseMsgKeyError {
                kind: "number out of u32 range",
            });
        }
        value = value * 10 + u64::from(b - b'0');
        pos += 1;
    }
    match pos - start {
        0 => Err(ParseMsgKeyError {
            kind: "expected a decimal number",
        }),
        n if n > 1 && bytes[start] == b'0' => Err(ParseMsgKeyError {
            kind: "leading zero",
        }),
        _ => u32::try_from(value)
            .map(|v| (v, pos))
            .map_err(|_| ParseMsgKeyError {
                kind: "number out of u32 range",
            }),
    }
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
    fn serde_is_a_string() {
        let k = MsgKey::new(31906, 833502, 1572869830);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, "\"31906_833502_1572869830\"");
        assert_eq!(serde_json::from_str::<MsgKey>(&json).unwrap(), k);
        assert!(serde_json::from_str::<MsgKey>("\"1_2\"").is_err());
    }
}
