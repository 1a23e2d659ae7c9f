//! Arbitrary strings into `MsgKey::parse`: it agrees with a plain reference parser of the
//! canonical grammar, and what it accepts formats back to the same string.
#![no_main]

use imstore::MsgKey;
use libfuzzer_sys::fuzz_target;

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
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || (p.len() > 1 && p.starts_with('0')) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    Some((out[0], out[1], out[2]))
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let parsed = MsgKey::parse(s);
    assert_eq!(parsed.ok().map(|k| (k.seq(), k.random(), k.time())), reference(s), "{s:?}");
    if let Ok(k) = parsed {
        assert_eq!(k.to_string(), s);
    }
});
