//! UserSig (SPEC §6): signatures made by Tencent's own generator (PyPI `tls-sig-api-v2` 1.1,
//! see `fixtures/gen_usersig_fixtures.py`) verify, and every way of being wrong has its code.
use imstore::usersig::{generate, verify};
use serde_json::Value;

fn fixtures() -> Vec<Value> {
    let doc: Value = serde_json::from_str(include_str!("fixtures/usersig.json")).unwrap();
    doc["fixtures"].as_array().unwrap().clone()
}

fn fixture(name: &str) -> Value {
    fixtures().into_iter().find(|f| f["name"] == name).unwrap()
}

fn check(f: &Value, now: u64) -> Result<imstore::usersig::Verified, imstore::Error> {
    verify(
        f["sdkappid"].as_u64().unwrap(),
        f["key"].as_str().unwrap(),
        f["identifier"].as_str().unwrap(),
        f["usersig"].as_str().unwrap(),
        now,
    )
}

#[test]
fn signatures_from_tencents_generator_verify() {
    for name in ["administrator", "account", "unicode", "userbuf"] {
        let f = fixture(name);
        let v =
            check(&f, f["time"].as_u64().unwrap() + 1).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(v.identifier, f["identifier"].as_str().unwrap());
        assert_eq!(v.expire, f["expire"].as_u64().unwrap());
    }
}

#[test]
fn an_expired_signature_answers_70001() {
    let f = fixture("account");
    let end = f["time"].as_u64().unwrap() + f["expire"].as_u64().unwrap();
    assert!(check(&f, end).is_ok());
    assert_eq!(check(&f, end + 1).unwrap_err().code(), 70001);
}

#[test]
fn a_signature_with_a_negative_expire_from_tencents_generator_answers_70001() {
    let f = fixture("negative_expire");
    assert!(f["expire"].as_i64().unwrap() < 0);
    // Valid signature, expired from the start: 70001, not 70003.
    for now in [0, f["time"].as_u64().unwrap()] {
        assert_eq!(check(&f, now).unwrap_err().code(), 70001, "at {now}");
    }
}

#[test]
fn a_malformed_signature_answers_70003() {
    let f = fixture("account");
    let sig = f["usersig"].as_str().unwrap();
    for bad in ["", "not base64 !", "eJw_", &sig[..sig.len() / 2], "YWJj"] {
        assert_eq!(
            verify(1400000000, "k", "vinson", bad, 0)
                .unwrap_err()
                .code(),
            70003,
            "{bad:?}"
        );
    }
}

#[test]
fn a_signature_made_with_another_key_answers_70009() {
    let f = fixture("wrong_key");
    assert_eq!(
        check(&f, f["time"].as_u64().unwrap()).unwrap_err().code(),
        70009
    );
}

#[test]
fn a_signature_for_another_identifier_answers_70013() {
    let f = fixture("account");
    let key = f["key"].as_str().unwrap();
    let err = verify(
        1400000000,
        key,
        "dramon",
        f["usersig"].as_str().unwrap(),
        f["time"].as_u64().unwrap(),
    )
    .unwrap_err();
    assert_eq!(err.code(), 70013);
}

#[test]
fn a_signature_for_another_sdkappid_answers_70014() {
    let f = fixture("account");
    let key = f["key"].as_str().unwrap();
    let err = verify(
        1400000001,
        key,
        "vinson",
        f["usersig"].as_str().unwrap(),
        f["time"].as_u64().unwrap(),
    )
    .unwrap_err();
    assert_eq!(err.code(), 70014);
}

#[test]
fn our_signatures_verify_and_match_tencents_format() {
    let f = fixture("administrator");
    let key = f["key"].as_str().unwrap();
    let sig = generate(1400000000, key, "administrator", 180 * 86400, 1_795_000_000);
    assert!(verify(1400000000, key, "administrator", &sig, 1_795_000_000).is_ok());
    assert!(
        sig.chars()
            .all(|c| c.is_ascii_alphanumeric() || "*-_".contains(c)),
        "URL-safe alphabet: {sig}"
    );
    // A tampered byte breaks it.
    let mut tampered = sig.into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert!(verify(1400000000, key, "administrator", &tampered, 1_795_000_000).is_err());
}
