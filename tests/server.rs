//! End to end over real HTTP (SPEC §6): start `imstore-server` on port 0 with a temporary data
//! directory; import accounts, send, watch a device's SSE stream receive the message and then
//! its recall notice, see MsgFlagBits 8 in history, resume with Last-Event-ID, stop with
//! SIGTERM (exit 0), restart on the same directory and find all of it again.
#![cfg(feature = "server")]

mod common;

use common::server::*;
use imstore::usersig;
use serde_json::{Value, json};

fn history(s: &Server) -> Value {
    s.post("openim/admin_getroammsg", json!({"Operator_Account": "dramon", "Peer_Account": "vinson", "MaxCnt": 100, "MinTime": 0, "MaxTime": 4294967295u32}))
}

#[test]
fn the_server_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]);
    assert_eq!(
        s.post(
            "im_open_login_svc/multiaccount_import",
            json!({"Accounts": ["vinson", "dramon"]})
        )["FailAccounts"],
        json!([])
    );

    let phone = s.events("dramon", "phone", None);
    let sent = s.post("openim/sendmsg", json!({"From_Account": "vinson", "To_Account": "dramon", "MsgRandom": 833502, "MsgSeq": 31906,
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hello over http"}}]}));
    assert_eq!(sent["ErrorCode"], 0, "{sent}");
    let key = sent["MsgKey"].as_str().unwrap().to_owned();
    let (id1, kind, data) = phone
        .recv_timeout(WAIT)
        .expect("the device receives the message");
    assert_eq!(
        (kind.as_str(), data["MsgKey"].as_str()),
        ("message", Some(key.as_str()))
    );
    assert_eq!(data["MsgBody"][0]["MsgContent"]["Text"], "hello over http");

    let withdraw = s.post(
        "openim/admin_msgwithdraw",
        json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": key}),
    );
    assert_eq!(
        withdraw,
        json!({"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0})
    );
    let (id2, kind, data) = phone
        .recv_timeout(WAIT)
        .expect("the device receives the recall");
    assert_eq!(
        (
            kind.as_str(),
            data["MsgKey"].as_str(),
            data["Operator_Account"].as_str()
        ),
        ("recall", Some(key.as_str()), Some("administrator"))
    );
    assert!(id2.parse::<u64>().unwrap() > id1.parse::<u64>().unwrap());

    let page = history(&s);
    assert_eq!(
        (
            page["MsgList"][0]["MsgFlagBits"].as_u64(),
            page["MsgList"][0]["MsgBody"].clone()
        ),
        (Some(8), json!([]))
    );

    // Resuming after the first event delivers only what followed it.
    let tablet = s.events("dramon", "phone", Some(&id1));
    let (id, kind, _) = tablet.recv_timeout(WAIT).unwrap();
    assert_eq!((id, kind.as_str()), (id2.clone(), "recall"));

    // Only an administrator may call the REST API; a device reads only its own inbox.
    assert_eq!(
        s.post_as("vinson", "openim/admin_msgwithdraw", "{}")["ErrorCode"],
        90009
    );
    let vinson_sig = usersig::generate(APP, KEY, "vinson", 3600, now());
    let forged = format!(
        "{}/v4/imstore/events?sdkappid={APP}&identifier=dramon&usersig={vinson_sig}&device=x",
        s.base
    );
    let body: Value = serde_json::from_str(
        &ureq::get(&forged)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["ErrorCode"], 70013);

    // Unknown paths and methods, and a body over the limit, still answer an envelope.
    assert_eq!(s.post("openim/nothing", json!({}))["ErrorCode"], 60010);
    // A name that does not percent-decode to UTF-8 is an unknown API too, in the envelope.
    assert_eq!(s.post("openim/%FF%FE", json!({}))["ErrorCode"], 60010);
    let big = json!({"UserID": "x".repeat(70_000)}).to_string();
    assert_eq!(
        s.post_as("administrator", "im_open_login_svc/account_import", &big)["ErrorCode"],
        93000
    );

    let before = history(&s);
    assert!(s.stop().success(), "SIGTERM exits 0");

    let s = start(dir.path(), &[]);
    assert_eq!(
        history(&s),
        before,
        "a restart keeps history, recalled flag included"
    );
    let check = s.post(
        "im_open_login_svc/account_check",
        json!({"CheckItem": [{"UserID": "vinson"}, {"UserID": "dramon"}]}),
    );
    assert!(
        check["ResultItem"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["AccountStatus"] == "Imported")
    );
    assert_eq!(
        s.post(
            "openim/get_c2c_unread_msg_num",
            json!({"To_Account": "dramon"})
        )["AllC2CUnreadMsgNum"],
        0
    );
    // R7: the cursor is what the client confirmed, and it survived the restart. Resuming
    // with Last-Event-ID id1 (the "tablet" above) confirmed the message; the recall was never
    // confirmed, so a reconnect without a resume position is sent it again.
    let phone = s.events("dramon", "phone", None);
    let (id, kind, _) = phone.recv_timeout(WAIT).unwrap();
    assert_eq!((id, kind.as_str()), (id2.clone(), "recall"));
    drop(phone);
    // Resuming with the last id seen confirms it: then only what is new arrives.
    let phone = s.events("dramon", "phone", Some(&id2));
    s.post("openim/sendmsg", json!({"From_Account": "vinson", "To_Account": "dramon", "MsgRandom": 1, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "after restart"}}]}));
    let (_, kind, data) = phone.recv_timeout(WAIT).unwrap();
    assert_eq!(
        (
            kind.as_str(),
            data["MsgBody"][0]["MsgContent"]["Text"].as_str()
        ),
        ("message", Some("after restart"))
    );
    assert_eq!(s.post("imstore/compact", json!({}))["ErrorCode"], 0);
    assert!(s.stop().success());
}

/// `--erase-within-secs`: a body recalled over REST leaves the data directory on its own, with
/// no `imstore/compact` (SPEC §4.3, "cannot be restored"); the history still shows the recall.
#[test]
fn a_recalled_body_leaves_the_data_directory_within_erase_within_secs() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &["--erase-within-secs", "1"]);
    s.post(
        "im_open_login_svc/multiaccount_import",
        json!({"Accounts": ["vinson", "dramon"]}),
    );
    let sent = s.post(
        "openim/sendmsg",
        json!({"From_Account": "vinson", "To_Account": "dramon", "MsgRandom": 7, "MsgSeq": 1,
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "SECRET-OVER-HTTP-27e1"}}]}),
    );
    assert_eq!(sent["ErrorCode"], 0, "{sent}");
    let on_disk = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .any(|p| {
                std::fs::read(&p)
                    .unwrap_or_default()
                    .windows(21)
                    .any(|w| w == b"SECRET-OVER-HTTP-27e1")
            })
    };
    assert!(on_disk(), "the journal holds the body before the recall");
    let withdraw = s.post(
        "openim/admin_msgwithdraw",
        json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": sent["MsgKey"]}),
    );
    assert_eq!(withdraw["ErrorCode"], 0, "{withdraw}");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while on_disk() {
        assert!(
            std::time::Instant::now() < until,
            "the recalled body is still on disk after 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(history(&s)["MsgList"][0]["MsgFlagBits"], 8);
    assert!(s.stop().success());
}
