//! MsgKey (SPEC §2): `parse(format(k)) == k`, and the fast parser agrees with a plain reference
//! parser of the canonical grammar on arbitrary strings.
use imstore::MsgKey;
use proptest::prelude::*;

/// The grammar, written the slow obvious way.
fn reference(s: &str) -> Option<(u32, u32, u32)> {
    if s.len() > 50 {
        return None;
    }
    let parts: Vec<&str> = s.split('_').collect();
    if parts.len() != 3 {
        return None;
    }
    let mut out = [0u32; 3];
    for (o, p) in out.iter_mut().zip(&parts) {
        let canonical = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && (p.len() == 1 || !p.starts_with('0'));
        if !canonical {
            return None;
        }
        *o = p.parse().ok()?;
    }
    Some((out[0], out[1], out[2]))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn format_then_parse_is_identity(seq: u32, random: u32, time: u32) {
        let k = MsgKey::new(seq, random, time);
        prop_assert_eq!(k.to_string().parse::<MsgKey>(), Ok(k));
    }

    #[test]
    fn parse_agrees_with_the_reference_grammar(s in "[0-9_]{0,34}|[0-9_ +\\-a/:é\u{0}]{0,20}|[1-9][0-9]{0,11}_[0-9]{1,11}_[0-9]{1,12}") {
        let got = MsgKey::parse(&s).ok().map(|k| (k.seq(), k.random(), k.time()));
        prop_assert_eq!(got, reference(&s), "{:?}", s);
    }
}
