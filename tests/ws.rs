//! The WebSocket client channel (SPEC §7) against the real binary: authentication before the
//! upgrade, event frames identical to SSE data, acks moving the cursor (R7), `after`, replies
//! carrying ReqId, unparsable frames answered without dropping the connection, and a burst of
//! frames slowed but answered in order.
#![cfg(feature = "server")]

mod common;

use std::time::Duration;

use common::server::*;
use serde_json::{Value, json};

fn setup() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]);
    let r = s.post(
        "im_open_login_svc/multiaccount_import",
        json!({"Accounts": ["vinson", "dramon"]}),
    );
    assert_eq!(r["ErrorCode"], 0);
    (dir, s)
}

fn send(s: &Server, seq: u32, text: &str) -> String {
    let r = s.post(
        "openim/sendmsg",
        json!({"From_Account": "vinson", "To_Account": "dramon", "MsgRandom": 5, "MsgSeq": seq,
            "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}]}),
    );
    assert_eq!(r["ErrorCode"], 0, "{r}");
    r["MsgKey"].as_str().unwrap().to_owned()
}

#[test]
fn a_device_receives_event_frames_with_the_same_data_as_sse() {
    let (_d, s) = setup();
    let mut ws = s.ws("dramon", "phone", "&platform=iOS");
    let sse = s.events("dramon", "tablet", None);
    let key = send(&s, 1, "hello");
    let frame = ws.expect();
    assert_eq!(frame["Event"], "message");
    assert_eq!(frame["Seq"], 1);
    let (id, kind, data) = sse.recv_timeout(WAIT).unwrap();
    assert_eq!((id.as_str(), kind.as_str()), ("1", "message"));
    assert_eq!(frame["Data"], data, "Data is exactly the SSE data");
    assert_eq!(frame["Data"]["MsgKey"], key);
    s.post(
        "openim/admin_msgwithdraw",
        json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": key}),
    );
    let recall = ws.expect();
    assert_eq!(
        (recall["Event"].as_str(), recall["Seq"].as_u64()),
        (Some("recall"), Some(2))
    );
    assert_eq!(recall["Data"]["MsgKey"], key);
    assert_eq!(recall["Data"]["Operator_Account"], "administrator");
}

#[test]
fn authentication_fails_with_401_and_the_envelope_before_the_upgrade() {
    let (_d, s) = setup();
    // A UserSig of another account.
    let sig = imstore::usersig::generate(APP, KEY, "vinson", 3600, now());
    let url = format!(
        "ws://{}/v4/imstore/ws?sdkappid={APP}&identifier=dramon&usersig={sig}&device=x",
        s.addr
    );
    match tungstenite::connect(url) {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["ErrorCode"], 70013);
            assert_eq!(body["ActionStatus"], "FAIL");
        }
        other => panic!("expected HTTP 401, got {:?}", other.map(|_| ())),
    }
    let err = s.try_ws("dramon", "x", "&platform=Amiga").err().unwrap();
    assert!(err.starts_with("HTTP 400"), "{err}");
    assert!(err.contains("90001"), "{err}");
}

#[test]
fn acks_move_the_cursor_and_a_reconnect_resends_what_was_not_confirmed() {
    let (_d, s) = setup();
    let mut ws = s.ws("dramon", "phone", "");
    for i in 1..=3 {
        send(&s, i, &format!("m{i}"));
    }
    let seqs: Vec<u64> = (0..3)
        .map(|_| ws.expect()["Seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    ws.send(json!({"Op": "ack", "Seq": 2}));
    // The ack has no reply; the next frame is the next event.
    send(&s, 4, "m4");
    assert_eq!(ws.expect()["Seq"], 4);
    drop(ws);
    // 3 and 4 were received but never confirmed: they come again.
    let mut ws = s.ws("dramon", "phone", "");
    let again: Vec<u64> = (0..2)
        .map(|_| ws.expect()["Seq"].as_u64().unwrap())
        .collect();
    assert_eq!(again, vec![3, 4]);
    assert_eq!(ws.next(Duration::from_millis(300)), None);
    drop(ws);
    // `after` resumes (and confirms) like Last-Event-ID.
    let mut ws = s.ws("dramon", "phone", "&after=4");
    send(&s, 5, "m5");
    assert_eq!(ws.expect()["Seq"], 5);
}

#[test]
fn bad_frames_are_answered_with_90001_and_the_connection_stays() {
    let (_d, s) = setup();
    let mut ws = s.ws("dramon", "phone", "");
    ws.send_raw("this is not json");
    let reply = ws.expect();
    assert_eq!(reply["Event"], "reply");
    assert_eq!(reply["ErrorCode"], 90001);
    assert_eq!(reply["ReqId"], Value::Null);
    ws.send(json!({"Op": "nonsense", "ReqId": "r-1"}));
    let reply = ws.expect();
    assert_eq!(
        (reply["ErrorCode"].as_u64(), reply["ReqId"].as_str()),
        (Some(90001), Some("r-1"))
    );
    ws.send(json!({"Op": "ack", "ReqId": 9}));
    let reply = ws.expect();
    assert_eq!(
        (reply["ErrorCode"].as_u64(), reply["ReqId"].as_u64()),
        (Some(90001), Some(9))
    );
    // Still connected: events keep coming.
    send(&s, 1, "still here");
    assert_eq!(ws.expect()["Event"], "message");
}

/// A frame past the 64 KiB a client frame may hold ends the connection with a close frame
/// that says why — 1009 and REST's 93000 — not a silent drop a client would retry for good.
#[test]
fn a_frame_too_large_is_answered_with_a_close_frame_saying_93000() {
    let (_dir, s) = setup();
    let mut ws = s.ws("dramon", "phone", "");
    let big = format!(
        r#"{{"Op":"sendmsg","To_Account":"vinson","MsgRandom":1,"MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"{}"}}}}]}}"#,
        "x".repeat(70 * 1024)
    );
    ws.send_raw(&big);
    let close = ws.close_frame(common::server::WAIT);
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.starts_with("93000"), "{reason}");
}

/// A session ends when the UserSig it connected with expires, as Tencent's server logs a
/// client out (its SDK is told `onUserSigExpired`): a close frame 1008 saying 70001, after
/// the events sent while it was valid; the same UserSig then cannot connect again (401). An
/// event stream ends with an `error` event carrying the envelope.
#[test]
fn a_session_ends_with_70001_when_its_usersig_expires() {
    let (_d, s) = setup();
    // Long enough for a slow machine to connect and deliver one message first.
    let query = s.query_valid_for("dramon", 8);
    let mut ws = s.try_ws_with(&query, "phone", "").unwrap();
    let sse = s.events_with(&query, "tablet", None);
    let key = send(&s, 1, "while valid");
    assert_eq!(ws.expect()["Data"]["MsgKey"], key);
    let (_, kind, _) = sse.recv_timeout(WAIT).unwrap();
    assert_eq!(kind, "message");
    let (code, reason) = ws.close_frame(WAIT).expect("a close frame at the expiry");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.starts_with("70001"), "{reason}");
    let (_, kind, data) = sse
        .recv_timeout(WAIT)
        .expect("an error event at the expiry");
    assert_eq!(
        (kind.as_str(), &data["ErrorCode"]),
        ("error", &json!(70001))
    );
    assert_eq!(
        sse.recv_timeout(WAIT).err(),
        Some(std::sync::mpsc::RecvTimeoutError::Disconnected),
        "the event stream ended after its error event"
    );
    let refused = s.try_ws_with(&query, "phone", "").err().unwrap();
    assert!(
        refused.contains("401") && refused.contains("70001"),
        "{refused}"
    );
    // A UserSig still valid keeps its session: the account is not logged out.
    let mut again = s.ws("dramon", "phone", "");
    let later = send(&s, 2, "after");
    let keys: Vec<Value> = (0..2)
        .map(|_| again.expect()["Data"]["MsgKey"].clone())
        .collect();
    assert_eq!(
        keys,
        [json!(key), json!(later)],
        "the unconfirmed one again, then the new one"
    );
}

/// The operator goes back to an older backup. The server numbers what it is sent after the
/// restore above every number it gave before — each open raises a floor from the clock
/// (`Op::SeqFloor`) — so a client resuming from a position the restored server never reached
/// takes nothing new for a repeat: the message sent after the restore reaches it, over the
/// WebSocket and over SSE. Before, the restored server numbered that message 2, a number the
/// phone had seen and confirmed, and it never reached the phone.
#[test]
fn after_a_restore_new_entries_are_numbered_above_all_a_client_saw() {
    let (dir, s) = setup();
    send(&s, 1, "one");
    assert!(s.stop().success());
    let backup = tempfile::tempdir().unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir.path().join("."))
        .arg(backup.path())
        .status()
        .unwrap();
    assert!(copied.success());

    // Two more; the phone receives all three and confirms them.
    let s = start(dir.path(), &[]);
    let mut ws = s.ws("dramon", "phone", "");
    send(&s, 2, "two");
    send(&s, 3, "three");
    let seqs: Vec<u64> = (0..3)
        .map(|_| ws.expect()["Seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs[0], 1, "a new store numbers from 1");
    assert!(seqs[1] > 1_000_000 && seqs[2] == seqs[1] + 1, "{seqs:?}");
    let seen = seqs[2];
    ws.send(json!({"Op": "ack", "Seq": seen}));
    drop(ws);
    assert!(s.stop().success());

    // Back to the backup: its inbox holds one entry; the message sent now is numbered above
    // everything the phone saw, and reaches it.
    let s = start(backup.path(), &[]);
    let later = send(&s, 4, "after the restore");
    let mut ws = s.ws("dramon", "phone", &format!("&after={seen}"));
    let f = ws.expect();
    assert_eq!(f["Event"], "message", "{f}");
    assert_eq!(f["Data"]["MsgKey"], json!(later));
    let numbered = f["Seq"].as_u64().unwrap();
    assert!(numbered > seen, "{numbered} after {seen}");
    assert!(numbered < 1 << 53, "exact in JavaScript");
    // Over SSE alike, from the browser's Last-Event-ID.
    let sse = s.events("dramon", "tablet", Some(&seen.to_string()));
    let (id, kind, _) = sse.recv_timeout(WAIT).unwrap();
    assert_eq!((id, kind.as_str()), (numbered.to_string(), "message"));
    // A position past everything this store numbered (a clock set back before a restore, a
    // client making numbers up) confirms nothing: the session starts over from the device's
    // cursor — a new device's is before the oldest entry — and says so first.
    let ahead = (numbered + 1_000_000).to_string();
    let mut desk = s.ws("dramon", "desk", &format!("&after={ahead}"));
    assert_eq!(
        desk.expect(),
        json!({"Event": "reset", "Seq": 0, "Data": {}})
    );
    assert_eq!(desk.expect()["Seq"], 1);
    let sse = s.events("dramon", "watch", Some(&ahead));
    let (id, kind, _) = sse.recv_timeout(WAIT).unwrap();
    assert_eq!((id.as_str(), kind.as_str()), ("0", "reset"));
    // And the next open numbers above this one's.
    assert!(s.stop().success());
    let s = start(backup.path(), &[]);
    let mut ws = s.ws("dramon", "laptop", &format!("&after={numbered}"));
    send(&s, 5, "new");
    let f = ws.expect();
    assert_eq!(f["Event"], "message");
    assert!(f["Seq"].as_u64().unwrap() > numbered, "{f}");
}

#[test]
fn a_burst_of_frames_is_slowed_but_every_one_is_answered_in_order() {
    let (_d, s) = setup();
    let mut ws = s.ws("dramon", "phone", "");
    let n = 250;
    for i in 0..n {
        ws.send(json!({"Op": "nonsense", "ReqId": i}));
    }
    let started = std::time::Instant::now();
    for i in 0..n {
        let reply = ws.expect();
        assert_eq!(reply["ReqId"], i, "replies in order");
    }
    eprintln!("{n} frames answered in {:?}", started.elapsed());
}

/// A client that closes is answered with the server's Close frame: its close is clean
/// (before, the server dropped the connection, and a browser saw 1006).
#[test]
fn a_close_from_the_client_is_answered() {
    let (_d, s) = setup();
    let mut ws = s.ws("dramon", "phone", "");
    send(&s, 1, "one");
    assert_eq!(ws.expect()["Seq"], 1);
    assert!(ws.close_is_answered(WAIT));
}

#[test]
fn a_second_connection_of_the_same_device_ends_the_first() {
    let (_d, s) = setup();
    let mut first = s.ws("dramon", "phone", "");
    let mut second = s.ws("dramon", "phone", "");
    // With a reason, so that the client does not connect again and replace the newer one.
    let close = first
        .close_frame(WAIT)
        .expect("the older session was closed with a frame");
    assert_eq!(close.0, 4001, "{close:?}");
    send(&s, 1, "to the newer one");
    assert_eq!(second.expect()["Seq"], 1);
    // Over SSE, the older stream's last event says so (an EventSource would reconnect by
    // itself when the stream ends).
    let older = s.events("dramon", "tablet", None);
    assert_eq!(older.recv_timeout(WAIT).unwrap().1, "message");
    let newer = s.events("dramon", "tablet", None);
    assert_eq!(newer.recv_timeout(WAIT).unwrap().1, "message");
    let (_, kind, data) = older.recv_timeout(WAIT).unwrap();
    assert_eq!(kind, "replaced", "{data}");
}

#[test]
fn a_client_that_answers_no_ping_is_dropped_after_three_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &["--ws-ping-secs", "1"]);
    s.post(
        "im_open_login_svc/account_import",
        json!({"UserID": "dramon"}),
    );
    // A client that never reads never answers the server's pings.
    let silent = std::net::TcpStream::connect(&s.addr).unwrap();
    let q = s.query("dramon");
    let mut raw = silent.try_clone().unwrap();
    use std::io::{Read, Write};
    write!(
        raw,
        "GET /v4/imstore/ws?{q}&device=silent HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    // Raw bytes: the server's pings are read but never answered. It must close within a few
    // intervals (and well within the wait).
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match raw.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(closed, "a client that answered no ping was kept");
    // A client that answers (tungstenite does, as it reads) stays.
    let mut live = s.ws("dramon", "live", "");
    assert_eq!(live.next(Duration::from_secs(4)), None);
    // Sent from another thread: this one keeps reading, and so answering pings, meanwhile.
    let sent = s.post_in_background(
        "openim/sendmsg",
        json!({"From_Account": "administrator", "To_Account": "dramon", "MsgRandom": 1,
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "still here"}}]}),
    );
    assert_eq!(live.expect()["Event"], "message");
    assert_eq!(sent.join().unwrap()["ErrorCode"], 0);
}
