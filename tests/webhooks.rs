//! Clients that send, and Tencent's webhooks (SPEC §7, §8), against the real binary and a real
//! webhook receiver: the seed's flow end to end (a client sends, the app backend learns the
//! MsgKey from C2C.CallbackAfterSendMsg and recalls it with admin_msgwithdraw), every
//! before-send answer and failure policy, ForbidCallbackControl, the durable outbox across a
//! receiver outage and a SIGKILL, and clients recalling, reading and paging.
#![cfg(feature = "server")]

mod common;

use std::time::Duration;

use common::server::*;
use common::webhook::{Answer, Call, HeldPort, Receiver, ok};
use serde_json::{Value, json};

const TOKEN: &str = "callback-token-7f";
const QUICK: Duration = Duration::from_millis(600);

fn start_with_callbacks(dir: &std::path::Path, receiver: &Receiver, extra: &[&str]) -> Server {
    let mut args = vec!["--callback-url", &receiver.url, "--callback-token", TOKEN];
    args.extend_from_slice(extra);
    let s = start(dir, &args);
    let r = s.post(
        "im_open_login_svc/multiaccount_import",
        json!({"Accounts": ["vinson", "dramon"]}),
    );
    assert_eq!(r["ErrorCode"], 0);
    s
}

fn text(body: &str) -> Value {
    json!([{"MsgType": "TIMTextElem", "MsgContent": {"Text": body}}])
}

fn rest_send(s: &Server, seq: u32, body: &str, extra: Value) -> Value {
    let mut req = json!({"From_Account": "vinson", "To_Account": "dramon", "MsgRandom": 7,
        "MsgSeq": seq, "MsgBody": text(body)});
    if let (Value::Object(req), Value::Object(extra)) = (&mut req, extra) {
        req.extend(extra);
    }
    s.post("openim/sendmsg", req)
}

fn history_texts(s: &Server) -> Vec<String> {
    let page = s.post("openim/admin_getroammsg", json!({"Operator_Account": "dramon", "Peer_Account": "vinson", "MaxCnt": 100, "MinTime": 0, "MaxTime": 4294967295u32}));
    page["MsgList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["MsgBody"][0]["MsgContent"]["Text"]
                .as_str()
                .unwrap_or("<recalled>")
                .to_owned()
        })
        .collect()
}

/// Checks the common query parameters and the signature of a call.
fn assert_signed(call: &Call, platform: &str) {
    let q = &call.query;
    assert_eq!(q["SdkAppid"], APP.to_string());
    assert_eq!(q["contenttype"], "json");
    assert_eq!(q["OptPlatform"], platform, "{q:?}");
    assert_eq!(q["ClientIP"], "127.0.0.1");
    let time: u64 = q["RequestTime"].parse().unwrap();
    assert_eq!(q["Sign"], imstore::api::callback_sign(TOKEN, time));
    assert!(time.abs_diff(now()) < 60, "RequestTime is now");
    assert_eq!(call.body["CallbackCommand"], q["CallbackCommand"]);
}

/// The flow Tencent's `admin_msgwithdraw` documents: a client sends; the app backend records
/// the MsgKey from the after-send callback; it recalls the message with that MsgKey; every
/// device of both parties is told exactly once; the backend hears of the recall.
#[test]
fn the_seed_flow_end_to_end() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_callbacks(dir.path(), &receiver, &[]);
    let mut vinson_phone = s.ws("vinson", "phone", "&platform=iOS");
    let mut vinson_laptop = s.ws("vinson", "laptop", "&platform=Windows");
    let mut dramon_phone = s.ws("dramon", "phone", "&platform=Android");

    vinson_phone.send(
        json!({"Op": "sendmsg", "ReqId": "r1", "To_Account": "dramon",
        "MsgRandom": 833502, "MsgBody": text("hello from a client")}),
    );
    let reply = vinson_phone.expect_from(&s);
    assert_eq!(
        (
            reply["Event"].as_str(),
            reply["ReqId"].as_str(),
            reply["ErrorCode"].as_u64()
        ),
        (Some("reply"), Some("r1"), Some(0)),
        "{reply}"
    );
    let key = reply["MsgKey"].as_str().unwrap().to_owned();

    // The backend was asked before, and told after — from iOS.
    let before = receiver.next_of("C2C.CallbackBeforeSendMsg", WAIT).unwrap();
    assert_signed(&before, "iOS");
    assert_eq!(before.body["MsgKey"], key);
    let after = receiver.next_of("C2C.CallbackAfterSendMsg", WAIT).unwrap();
    assert_signed(&after, "iOS");
    assert_eq!(
        (
            after.body["From_Account"].as_str(),
            after.body["To_Account"].as_str()
        ),
        (Some("vinson"), Some("dramon"))
    );
    assert_eq!(after.body["MsgBody"], text("hello from a client"));
    assert_eq!(after.body["UnreadMsgNum"], 1);
    let recorded_key = after.body["MsgKey"].as_str().unwrap().to_owned();
    assert_eq!(recorded_key, key);

    // The recipient and the sender's other device got it; the sending device did not.
    let got = dramon_phone.expect();
    assert_eq!(
        (got["Event"].as_str(), got["Data"]["MsgKey"].as_str()),
        (Some("message"), Some(key.as_str()))
    );
    assert_eq!(vinson_laptop.expect()["Data"]["MsgKey"], key);

    // The backend recalls it with the recorded MsgKey.
    let withdraw = s.post(
        "openim/admin_msgwithdraw",
        json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": recorded_key}),
    );
    assert_eq!(withdraw["ErrorCode"], 0, "{withdraw}");
    for ws in [&mut vinson_phone, &mut vinson_laptop, &mut dramon_phone] {
        let notice = ws.expect();
        assert_eq!(
            (notice["Event"].as_str(), notice["Data"]["MsgKey"].as_str()),
            (Some("recall"), Some(key.as_str()))
        );
        assert_eq!(ws.next(QUICK), None, "exactly one notice");
    }
    let recall = receiver
        .next_of("C2C.CallbackAfterMsgWithDraw", WAIT)
        .unwrap();
    assert_signed(&recall, "RESTAPI");
    assert_eq!(recall.body["MsgKey"], key);
    assert_eq!(recall.body["UnreadMsgNum"], 0);
    assert!(recall.body["EventTime"].as_u64().unwrap() >= now() * 1000 - 60_000);
    assert_eq!(history_texts(&s), vec!["<recalled>"]);
}

#[test]
fn before_send_answers_decide_what_happens() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_callbacks(dir.path(), &receiver, &["--callback-timeout-ms", "3000"]);
    let mut phone = s.ws("dramon", "phone", "");
    let answer = |v: Value| {
        move |c: &Call| {
            if c.command() == "C2C.CallbackBeforeSendMsg" {
                Answer::ok(v.clone())
            } else {
                ok()
            }
        }
    };

    // Allow.
    assert_eq!(rest_send(&s, 1, "allowed", json!({}))["ErrorCode"], 0);
    assert_eq!(phone.expect()["Data"]["MsgBody"], text("allowed"));
    // Refuse: 20006, nothing stored or delivered, no after-send.
    receiver.answer_with(answer(
        json!({"ActionStatus": "OK", "ErrorCode": 1, "ErrorInfo": ""}),
    ));
    assert_eq!(rest_send(&s, 2, "refused", json!({}))["ErrorCode"], 20006);
    // Silent drop: success, nothing stored.
    receiver.answer_with(answer(
        json!({"ActionStatus": "OK", "ErrorCode": 2, "ErrorInfo": ""}),
    ));
    let dropped = rest_send(&s, 3, "dropped", json!({}));
    assert_eq!(dropped["ErrorCode"], 0);
    assert!(dropped["MsgKey"].as_str().unwrap().starts_with("3_7_"));
    // Replace the body.
    receiver.answer_with(answer(
        json!({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": "",
        "MsgBody": text("[filtered]"), "CloudCustomData": "cleaned"}),
    ));
    assert_eq!(rest_send(&s, 4, "bad words", json!({}))["ErrorCode"], 0);
    let replaced = phone.expect();
    assert_eq!(replaced["Data"]["MsgBody"], text("[filtered]"));
    assert_eq!(replaced["Data"]["CloudCustomData"], "cleaned");
    // The app's own code and words.
    receiver.answer_with(answer(
        json!({"ActionStatus": "FAIL", "ErrorCode": 120123, "ErrorInfo": "not on Sundays"}),
    ));
    let custom = rest_send(&s, 5, "custom", json!({}));
    assert_eq!(
        (custom["ErrorCode"].as_u64(), custom["ErrorInfo"].as_str()),
        (Some(120123), Some("not on Sundays"))
    );
    // ForbidBeforeSendMsgCallback: not asked, so not refused.
    let forbidden = rest_send(
        &s,
        6,
        "not asked",
        json!({"ForbidCallbackControl": ["ForbidBeforeSendMsgCallback"]}),
    );
    assert_eq!(forbidden["ErrorCode"], 0);
    // Timeout, fail open: delivered.
    receiver.answer_with(|c: &Call| Answer {
        delay: if c.command() == "C2C.CallbackBeforeSendMsg" {
            Duration::from_secs(10)
        } else {
            Duration::ZERO
        },
        ..ok()
    });
    assert_eq!(rest_send(&s, 7, "slow app", json!({}))["ErrorCode"], 0);
    // An answer that is not JSON is a failure too: fail open.
    receiver.answer_with(|_c: &Call| Answer {
        status: 200,
        body: "not json".into(),
        delay: Duration::ZERO,
    });
    assert_eq!(rest_send(&s, 8, "garbled app", json!({}))["ErrorCode"], 0);
    receiver.answer_with(|_c: &Call| ok());

    assert_eq!(
        history_texts(&s),
        vec![
            "allowed",
            "[filtered]",
            "not asked",
            "slow app",
            "garbled app"
        ]
    );
    // The device got the rest, and only what was stored.
    for t in ["not asked", "slow app", "garbled app"] {
        assert_eq!(phone.expect()["Data"]["MsgBody"], text(t));
    }
    assert_eq!(phone.next(QUICK), None);
    // After-callbacks go out in operation order, retried while the app answered "not json":
    // once the last stored message's has arrived, every earlier one's has too.
    loop {
        let call = receiver
            .next_of("C2C.CallbackAfterSendMsg", WAIT)
            .expect("the after-send of the last message arrives");
        if call.body["MsgBody"][0]["MsgContent"]["Text"] == "garbled app" {
            break;
        }
    }
    // After-send callbacks only for what was stored, with the stored (replaced) body.
    let log = receiver.log.lock().unwrap().clone();
    let after: Vec<String> = log
        .iter()
        .filter(|c| c.command() == "C2C.CallbackAfterSendMsg")
        .map(|c| {
            c.body["MsgBody"][0]["MsgContent"]["Text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let before: Vec<u64> = log
        .iter()
        .filter(|c| c.command() == "C2C.CallbackBeforeSendMsg")
        .map(|c| c.body["MsgSeq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        before,
        vec![1, 2, 3, 4, 5, 7, 8],
        "seq 6 forbade the before-send callback"
    );
    let mut after_sorted = after.clone();
    after_sorted.dedup();
    assert_eq!(
        after_sorted,
        vec![
            "allowed",
            "[filtered]",
            "not asked",
            "slow app",
            "garbled app"
        ]
    );
}

#[test]
fn a_failed_before_send_refuses_with_80003_when_fail_closed() {
    let receiver = Receiver::start();
    receiver.answer_with(|c: &Call| {
        if c.command() == "C2C.CallbackBeforeSendMsg" {
            Answer {
                status: 500,
                body: "{}".into(),
                delay: Duration::ZERO,
            }
        } else {
            ok()
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_callbacks(
        dir.path(),
        &receiver,
        &["--callback-fail-closed", "--callback-timeout-ms", "3000"],
    );
    assert_eq!(rest_send(&s, 1, "refused", json!({}))["ErrorCode"], 80003);
    receiver.answer_with(|c: &Call| Answer {
        delay: if c.command() == "C2C.CallbackBeforeSendMsg" {
            Duration::from_secs(10)
        } else {
            Duration::ZERO
        },
        ..ok()
    });
    assert_eq!(rest_send(&s, 2, "timed out", json!({}))["ErrorCode"], 80003);
    // An answer that would allow, but longer than 64 KiB, is not read: a failed call.
    receiver.answer_with(|c: &Call| {
        if c.command() == "C2C.CallbackBeforeSendMsg" {
            Answer::ok(json!({
                "ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": "x".repeat(70_000)
            }))
        } else {
            ok()
        }
    });
    assert_eq!(rest_send(&s, 5, "too long", json!({}))["ErrorCode"], 80003);
    assert!(history_texts(&s).is_empty());
    // And ForbidAfterSendMsgCallback sends no after-send.
    receiver.answer_with(|_: &Call| ok());
    assert_eq!(
        rest_send(
            &s,
            3,
            "quiet",
            json!({"ForbidCallbackControl": ["ForbidAfterSendMsgCallback"]})
        )["ErrorCode"],
        0
    );
    assert_eq!(rest_send(&s, 4, "loud", json!({}))["ErrorCode"], 0);
    let after = receiver.next_of("C2C.CallbackAfterSendMsg", WAIT).unwrap();
    assert_eq!(
        after.body["MsgSeq"], 4,
        "the first after-send is the loud one"
    );
}

/// What the receiver got of the after-callbacks, repeats dropped, in first-arrival order.
fn after_callbacks(receiver: &Receiver, n: usize) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let call = receiver.next(WAIT).expect("every after-callback arrives");
        if call.command() == "C2C.CallbackBeforeSendMsg" {
            continue;
        }
        let id = (
            call.command().to_owned(),
            call.body["MsgKey"].as_str().unwrap_or("read").to_owned(),
        );
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    seen
}

fn outage_operations(s: &Server) -> Vec<(String, String)> {
    let mut want = Vec::new();
    for i in 1..=4 {
        let r = rest_send(s, i, &format!("m{i}"), json!({}));
        assert_eq!(
            r["ErrorCode"], 0,
            "acknowledged though the app is down: {r}"
        );
        want.push((
            "C2C.CallbackAfterSendMsg".to_owned(),
            r["MsgKey"].as_str().unwrap().to_owned(),
        ));
    }
    let k = want[1].1.clone();
    assert_eq!(
        s.post(
            "openim/admin_msgwithdraw",
            json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": k})
        )["ErrorCode"],
        0
    );
    want.push(("C2C.CallbackAfterMsgWithDraw".to_owned(), k));
    assert_eq!(
        s.post(
            "openim/admin_set_msg_read",
            json!({"Report_Account": "dramon", "Peer_Account": "vinson"})
        )["ErrorCode"],
        0
    );
    want.push(("C2C.CallbackAfterMsgReport".to_owned(), "read".to_owned()));
    want
}

#[test]
fn after_callbacks_wait_out_an_outage_and_arrive_in_order() {
    let receiver = Receiver::start();
    receiver.answer_with(|_: &Call| Answer {
        status: 503,
        body: "down".into(),
        delay: Duration::ZERO,
    });
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_callbacks(dir.path(), &receiver, &[]);
    let want = outage_operations(&s);
    assert_eq!(
        receiver.next(QUICK).map(|c| c.command().to_owned()),
        None,
        "nothing accepted while down"
    );
    receiver.answer_with(|_: &Call| ok());
    assert_eq!(after_callbacks(&receiver, want.len()), want);
}

#[test]
fn after_callbacks_pending_at_a_sigkill_arrive_after_the_restart() {
    // The receiver is not even listening: its port is held, connections to it refused.
    let port = HeldPort::new();
    let url = format!("http://{}/im-callback", port.addr);
    let dir = tempfile::tempdir().unwrap();
    let s = start(
        dir.path(),
        &[
            "--callback-url",
            &url,
            "--callback-token",
            TOKEN,
            "--callback-timeout-ms",
            "300",
        ],
    );
    s.post(
        "im_open_login_svc/multiaccount_import",
        json!({"Accounts": ["vinson", "dramon"]}),
    );
    let want = outage_operations(&s);
    s.kill();
    // The app comes up on its address; the server restarts and delivers what was pending.
    let receiver = Receiver::start_on(port.listen());
    let s = start(
        dir.path(),
        &["--callback-url", &url, "--callback-token", TOKEN],
    );
    assert_eq!(after_callbacks(&receiver, want.len()), want);
    drop(s);
}

#[test]
fn clients_recall_their_own_messages_within_the_window_read_and_page() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_callbacks(
        dir.path(),
        &receiver,
        &["--client-recall-window-secs", "120"],
    );
    let mut vinson = s.ws("vinson", "phone", "&platform=Mac");
    let mut dramon = s.ws("dramon", "phone", "&platform=Web");
    vinson.send(json!({"Op": "sendmsg", "ReqId": 1, "To_Account": "dramon", "MsgRandom": 1, "MsgBody": text("mine")}));
    let mine = vinson.expect()["MsgKey"].as_str().unwrap().to_owned();
    dramon.expect();
    dramon.send(json!({"Op": "sendmsg", "ReqId": 2, "To_Account": "vinson", "MsgRandom": 2, "MsgBody": text("theirs")}));
    let theirs = dramon.expect()["MsgKey"].as_str().unwrap().to_owned();
    assert_eq!(vinson.expect()["Event"], "message");
    // A peer's message is refused: there is no such message from vinson.
    vinson.send(json!({"Op": "recall", "ReqId": 3, "To_Account": "dramon", "MsgKey": theirs}));
    let refused = vinson.expect();
    assert_eq!(
        (refused["ReqId"].as_u64(), refused["ErrorCode"].as_u64()),
        (Some(3), Some(20022))
    );
    // One's own, within the window: recalled everywhere.
    vinson.send(json!({"Op": "recall", "ReqId": 4, "To_Account": "dramon", "MsgKey": mine}));
    let mut got = [vinson.expect(), vinson.expect()];
    got.sort_by_key(|f| f["Event"].as_str().unwrap().to_owned());
    assert_eq!(
        (got[0]["Event"].as_str(), got[1]["Event"].as_str()),
        (Some("recall"), Some("reply"))
    );
    assert_eq!(got[1]["ErrorCode"], 0);
    assert_eq!(dramon.expect()["Event"], "recall");
    let withdraw = receiver
        .next_of("C2C.CallbackAfterMsgWithDraw", WAIT)
        .unwrap();
    assert_eq!(
        (
            withdraw.query["OptPlatform"].as_str(),
            withdraw.body["MsgKey"].as_str()
        ),
        ("Mac", Some(mine.as_str()))
    );
    // After the window: 20016. (A message dated 10 minutes back, sent for vinson by the backend.)
    let old = s.post(
        "openim/sendmsg",
        json!({"From_Account": "vinson", "To_Account": "dramon", "MsgRandom": 9,
        "MsgTimeStamp": now() - 600, "MsgBody": text("old")}),
    );
    let old_key = old["MsgKey"].as_str().unwrap().to_owned();
    dramon.expect();
    vinson.send(json!({"Op": "recall", "ReqId": 5, "To_Account": "dramon", "MsgKey": old_key}));
    assert_eq!(vinson.expect()["ErrorCode"], 20016);
    // Read: the peer's conversation is read, and the backend hears of it.
    dramon.send(json!({"Op": "read", "ReqId": 6, "Peer_Account": "vinson"}));
    assert_eq!(dramon.expect()["ErrorCode"], 0);
    let read = receiver
        .next_of("C2C.CallbackAfterMsgReport", WAIT)
        .unwrap();
    assert_eq!(
        (
            read.body["Report_Account"].as_str(),
            read.query["OptPlatform"].as_str()
        ),
        (Some("dramon"), "Web")
    );
    assert_eq!(read.body["UnreadMsgNum"], 0);
    // History: this account's side, as admin_getroammsg answers it.
    dramon.send(json!({"Op": "history", "ReqId": "h", "Peer_Account": "vinson", "MaxCnt": 10, "MinTime": 0, "MaxTime": 4294967295u32}));
    let page = dramon.expect();
    assert_eq!(
        (
            page["ReqId"].as_str(),
            page["Complete"].as_u64(),
            page["MsgCnt"].as_u64()
        ),
        (Some("h"), Some(1), Some(3))
    );
    let flags: Vec<u64> = page["MsgList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["MsgFlagBits"].as_u64().unwrap())
        .collect();
    assert_eq!(flags.iter().filter(|f| **f == 8).count(), 1);
    // Errors carry sendmsg's codes.
    vinson.send(json!({"Op": "sendmsg", "ReqId": 7, "To_Account": "nobody", "MsgRandom": 1, "MsgBody": text("x")}));
    assert_eq!(vinson.expect()["ErrorCode"], 90012);
    vinson.send(json!({"Op": "sendmsg", "ReqId": 8, "To_Account": "dramon", "MsgBody": text("x")}));
    assert_eq!(vinson.expect()["ErrorCode"], 90005);
}

#[test]
fn a_get_with_a_json_body_is_served_like_the_post_it_stands_for() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]);
    s.post(
        "im_open_login_svc/account_import",
        json!({"UserID": "vinson"}),
    );
    let url = format!(
        "{}/v4/im_open_login_svc/account_check?{}",
        s.base,
        s.query("administrator")
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .allow_non_standard_methods(true)
        .build()
        .into();
    let mut resp = agent
        .get(&url)
        .force_send_body()
        .send(json!({"CheckItem": [{"UserID": "vinson"}, {"UserID": "nobody"}]}).to_string())
        .unwrap();
    let answer: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(answer["ErrorCode"], 0, "{answer}");
    assert_eq!(answer["ResultItem"][0]["AccountStatus"], "Imported");
    assert_eq!(answer["ResultItem"][1]["AccountStatus"], "NotImported");
}

/// A message recalled while its after-send callback is being retried (the app is down) goes
/// out without its body when the app comes back: each attempt is rendered anew, and no copy
/// of the body outlives the recall in the dispatcher.
#[test]
fn a_message_recalled_while_its_callback_is_retried_goes_out_without_its_body() {
    let receiver = Receiver::start();
    receiver.answer_with(|_: &Call| Answer {
        status: 503,
        body: "down".into(),
        delay: Duration::ZERO,
    });
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_callbacks(dir.path(), &receiver, &[]);
    let sent = rest_send(&s, 1, "the secret", json!({}));
    assert_eq!(sent["ErrorCode"], 0, "{sent}");
    let key = sent["MsgKey"].as_str().unwrap().to_owned();
    // Refused attempts are only logged (the channel has the accepted calls).
    let attempt = |with_body: bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let log = receiver.log.lock().unwrap().clone();
            if let Some(c) = log.into_iter().find(|c| {
                c.command() == "C2C.CallbackAfterSendMsg"
                    && c.body.to_string().contains("the secret") == with_body
            }) {
                return c;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no after-send attempt (with the body: {with_body})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    attempt(true);
    let r = s.post(
        "openim/admin_msgwithdraw",
        json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": key}),
    );
    assert_eq!(r["ErrorCode"], 0, "{r}");
    // A later attempt, refused too, already goes without the body; only then does the app
    // come back (so that the one it accepts was not made before the recall).
    assert_eq!(attempt(false).body["MsgBody"], json!([]));
    receiver.answer_with(|_: &Call| ok());
    let accepted = receiver
        .next_of("C2C.CallbackAfterSendMsg", Duration::from_secs(60))
        .expect("the after-send is accepted once the app is back");
    assert_eq!(accepted.body["MsgKey"], key.as_str());
    assert!(
        !accepted.body.to_string().contains("the secret"),
        "the recalled body went out: {}",
        accepted.body
    );
    assert_eq!(accepted.body["MsgBody"], json!([]), "{}", accepted.body);
}

/// An app that answers after-callbacks more slowly than `--callback-timeout-ms` (which bounds
/// before-send, holding up a send) still has them acknowledged: before, each attempt timed out,
/// the first callback was sent again for ever, and nothing after it ever went out.
#[test]
fn after_callbacks_slower_than_the_before_send_timeout_are_acknowledged() {
    let receiver = Receiver::start();
    receiver.answer_with(|call: &Call| {
        let mut a = ok();
        if call.command() != "C2C.CallbackBeforeSendMsg" {
            a.delay = Duration::from_millis(1500);
        }
        a
    });
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_callbacks(dir.path(), &receiver, &["--callback-timeout-ms", "500"]);
    let keys: Vec<String> = (1..=2)
        .map(|i| {
            let r = rest_send(&s, i, &format!("slow app {i}"), json!({}));
            assert_eq!(r["ErrorCode"], 0, "{r}");
            r["MsgKey"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut seen = Vec::new();
    while !seen.contains(&keys[1]) {
        let call = receiver
            .next_of("C2C.CallbackAfterSendMsg", Duration::from_secs(30))
            .expect("the second after-send arrives");
        seen.push(call.body["MsgKey"].as_str().unwrap().to_owned());
    }
    // The first went out and was acknowledged, not repeated without end.
    assert_eq!(seen.first(), Some(&keys[0]));
    assert!(
        seen.len() <= 3,
        "the first after-send was repeated: {seen:?}"
    );
}

/// A REST call made from `source` (a loopback address other than 127.0.0.1).
fn post_from(s: &Server, source: [u8; 4], api: &str, body: &Value) -> Value {
    use socket2::{Domain, Socket, Type};
    use std::io::{Read, Write};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from((source, 0)).into())
        .unwrap();
    let addr: std::net::SocketAddr = s.addr.parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut c: std::net::TcpStream = socket.into();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let body = body.to_string();
    write!(
        c,
        "POST /v4/{api}?{} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        s.query("administrator"),
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let json = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(json).unwrap()
}

/// A send with `ForbidAfterSendMsgCallback` still tells its before-send who called: the
/// caller's address (before, the default 127.0.0.1, since the send was prepared as one that
/// fires no callbacks).
#[test]
fn before_send_reports_the_caller_when_the_after_send_is_forbidden() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_callbacks(dir.path(), &receiver, &[]);
    let r = post_from(
        &s,
        [127, 0, 0, 2],
        "openim/sendmsg",
        &json!({"From_Account": "vinson", "To_Account": "dramon", "MsgRandom": 7, "MsgSeq": 1,
            "MsgBody": text("quiet"),
            "ForbidCallbackControl": ["ForbidAfterSendMsgCallback"]}),
    );
    assert_eq!(r["ErrorCode"], 0, "{r}");
    let before = receiver
        .next_of("C2C.CallbackBeforeSendMsg", WAIT)
        .expect("the before-send was asked");
    assert_eq!(before.query["ClientIP"], "127.0.0.2");
    // And no after-send went out for it: the next one is a later, ordinary send's.
    assert_eq!(rest_send(&s, 2, "loud", json!({}))["ErrorCode"], 0);
    let after = receiver.next_of("C2C.CallbackAfterSendMsg", WAIT).unwrap();
    assert_eq!(after.body["MsgSeq"], 2);
}

/// Many sends at once, an app slow to answer: the server keeps at most 32 before-send calls
/// (and 8 after-callbacks, here one outbox's one) in flight, so its sockets to the app stay
/// within the descriptors it reserves for them. Before, every send called at once.
#[test]
fn before_send_calls_in_flight_are_bounded() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/im-callback", listener.local_addr().unwrap());
    let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    {
        let (open, most) = (open.clone(), most.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (open, most) = (open.clone(), most.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    loop {
                        let mut len = 0usize;
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                                break;
                            }
                            let lower = line.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; len];
                        if reader.read_exact(&mut body).is_err() {
                            break;
                        }
                        // In flight from its body's arrival to its answer.
                        let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(300));
                        open.fetch_sub(1, Ordering::SeqCst);
                        let answer = r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        if out.write_all(reply.as_bytes()).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(
        dir.path(),
        &["--callback-url", &url, "--callback-timeout-ms", "20000"],
    );
    let r = s.post(
        "im_open_login_svc/multiaccount_import",
        json!({"Accounts": ["vinson", "dramon"]}),
    );
    assert_eq!(r["ErrorCode"], 0);
    let url = format!("{}/v4/openim/sendmsg?{}", s.base, s.query("administrator"));
    let senders: Vec<_> = (0..60u32)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let body = json!({"From_Account": "vinson", "To_Account": "dramon",
                    "MsgRandom": i, "MsgSeq": i, "MsgBody": text("many at once")});
                let mut resp = ureq::post(&url).send(body.to_string()).unwrap();
                let v: Value =
                    serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
                v["ErrorCode"].as_i64()
            })
        })
        .collect();
    for sender in senders {
        assert_eq!(sender.join().unwrap(), Some(0));
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most > 1, "the calls did not overlap at all: {most}");
    // 32 before-sends, and the one outbox's after-send.
    assert!(most <= 32 + 1, "{most} calls to the app at once");
}

/// An app that answers a callback with a redirect: it is not followed — an HTTP client sends a
/// POST's redirect on as a GET without the body, and the app's answer to that would
/// acknowledge a callback it never saw. The call counts as failed and is tried again.
#[test]
fn a_redirect_is_a_failed_call_not_followed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let receiver = Receiver::start();
    let redirect = std::sync::Arc::new(AtomicBool::new(true));
    let redirecting = redirect.clone();
    receiver.answer_with(move |call: &Call| {
        if call.command() == "C2C.CallbackAfterSendMsg" && redirecting.load(Ordering::SeqCst) {
            Answer {
                status: 302,
                body: String::new(),
                delay: Duration::ZERO,
            }
        } else {
            ok()
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_callbacks(dir.path(), &receiver, &[]);
    let sent = rest_send(&s, 1, "redirected", json!({}));
    assert_eq!(sent["ErrorCode"], 0, "{sent}");
    let key = sent["MsgKey"].as_str().unwrap().to_owned();
    // Tried again after the redirect: two attempts, and no request without a body.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = receiver.log.lock().unwrap().clone();
        assert!(
            log.iter().all(|c| !c.body.is_null()),
            "a redirect was followed: {log:?}"
        );
        let attempts = log
            .iter()
            .filter(|c| c.command() == "C2C.CallbackAfterSendMsg")
            .count();
        if attempts >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no second attempt");
        std::thread::sleep(Duration::from_millis(20));
    }
    redirect.store(false, Ordering::SeqCst);
    let accepted = receiver
        .next_of("C2C.CallbackAfterSendMsg", Duration::from_secs(60))
        .expect("accepted once the app answers");
    assert_eq!(accepted.body["MsgKey"], key.as_str());
}

/// A client retrying a send whose answer it lost — the same MsgSeq, MsgRandom and body, with
/// or without the same MsgTimeStamp — is answered with the stored message, and the app's
/// before-send webhook is not called about it again. Before, the retry asked again, and an
/// app that refused it now (or a failing webhook, fail-closed) answered "refused" about a
/// message the recipient already had.
#[test]
fn a_retried_send_is_answered_with_the_stored_message_without_asking_again() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_callbacks(dir.path(), &receiver, &["--callback-fail-closed"]);
    let first = rest_send(&s, 41, "delivered", json!({}));
    assert_eq!(first["ErrorCode"], 0, "{first}");
    let stamped = rest_send(&s, 42, "stamped", json!({"MsgTimeStamp": first["MsgTime"]}));
    assert_eq!(stamped["ErrorCode"], 0, "{stamped}");
    let mut before = 0;
    while let Some(c) = receiver.next(QUICK) {
        before += usize::from(c.command() == "C2C.CallbackBeforeSendMsg");
    }
    assert_eq!(before, 2);
    // The app refuses everything from now on: a new message is refused ...
    receiver.answer_with(|c: &Call| {
        if c.command() == "C2C.CallbackBeforeSendMsg" {
            Answer::ok(json!({"ActionStatus": "OK", "ErrorCode": 1, "ErrorInfo": ""}))
        } else {
            ok()
        }
    });
    assert_eq!(rest_send(&s, 43, "new", json!({}))["ErrorCode"], 20006);
    // ... and the retries are answered with what is stored, without a call.
    let retry = rest_send(&s, 41, "delivered", json!({}));
    assert_eq!(retry["ErrorCode"], 0, "{retry}");
    assert_eq!(retry["MsgKey"], first["MsgKey"]);
    let again = rest_send(
        &s,
        42,
        "stamped",
        json!({"MsgTimeStamp": stamped["MsgTime"]}),
    );
    assert_eq!(again["ErrorCode"], 0, "{again}");
    assert_eq!(again["MsgKey"], stamped["MsgKey"]);
    let mut before = 0;
    while let Some(c) = receiver.next(QUICK) {
        before += usize::from(c.command() == "C2C.CallbackBeforeSendMsg");
    }
    assert_eq!(before, 1, "only the new message's");
    assert_eq!(history_texts(&s).len(), 2);
}
