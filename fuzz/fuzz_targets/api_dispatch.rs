//! Arbitrary (path, query, body) into the REST dispatcher: it must answer every input with a
//! well-formed envelope whose ErrorCode matches, and never panic.
//!
//! Input layout: byte 0 picks a known API (or, past the list, takes the path from the input)
//! and whether a valid administrator UserSig is prepended to the query; the rest is split at
//! the first two NUL bytes into path, query and body.
#![no_main]

use std::sync::OnceLock;

use imstore::api::{Api, ApiConfig};
use imstore::{Config, ManualClock, Store, usersig};
use libfuzzer_sys::fuzz_target;

const APP: u64 = 1400000000;
const KEY: &str = "fuzz-key";
const NOW: u64 = 1_700_000_000;
const APIS: [&str; 12] = [
    "/v4/im_open_login_svc/account_import",
    "/v4/im_open_login_svc/multiaccount_import",
    "/v4/im_open_login_svc/account_check",
    "/v4/im_open_login_svc/account_delete",
    "/v4/openim/sendmsg",
    "/v4/openim/batchsendmsg",
    "/v4/openim/admin_getroammsg",
    "/v4/openim/admin_msgwithdraw",
    "/v4/openim/admin_set_msg_read",
    "/v4/openim/get_c2c_unread_msg_num",
    "/v4/openim/modify_c2c_msg",
    "/v4/imstore/compact",
];

fn auth() -> &'static str {
    static AUTH: OnceLock<String> = OnceLock::new();
    AUTH.get_or_init(|| {
        let sig = usersig::generate(APP, KEY, "administrator", 86400, NOW);
        format!("sdkappid={APP}&identifier=administrator&usersig={sig}")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut parts = rest.splitn(3, |b| *b == 0);
    let (path, query, body) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    let path = match APIS.get(usize::from(mode & 0x7f)) {
        Some(p) => (*p).to_owned(),
        None => String::from_utf8_lossy(path).into_owned(),
    };
    let query = String::from_utf8_lossy(query);
    let query = if mode & 0x80 == 0 { format!("{}&{query}", auth()) } else { query.into_owned() };

    // A fresh store per input keeps runs independent and memory flat.
    let store = Store::in_memory(Config::default().with_clock(ManualClock::new(NOW))).unwrap();
    store.import_accounts(&["vinson", "dramon"]).unwrap();
    let api = Api::new(store, ApiConfig::new(APP, KEY));
    let reply = api.handle(&path, &query, body);
    let v: serde_json::Value = serde_json::from_str(&reply.json).expect("the answer is JSON");
    assert_eq!(v["ErrorCode"].as_u64(), Some(u64::from(reply.code)), "{}", reply.json);
    assert!(v["ActionStatus"].is_string() && v["ErrorInfo"].is_string(), "{}", reply.json);
});
