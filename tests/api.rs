//! The REST API's wire format (SPEC §6): Tencent's documented requests and answers, and one
//! test per error code of each API.
mod common;

use std::sync::Arc;

use common::*;
use imstore::api::{Api, ApiConfig, Reply, event_payload};
use imstore::{BeforeSend, Config, Hooks, ManualClock, OutgoingMessage, Store, usersig};
use serde_json::{Value, json};

const APP: u64 = 1400000000;
const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

struct Harness {
    api: Api,
    store: Store,
    clock: Arc<ManualClock>,
}

fn harness_with(
    config: impl FnOnce(Config) -> Config,
    api: impl FnOnce(ApiConfig) -> ApiConfig,
) -> Harness {
    let clock = ManualClock::new(1_584_669_000);
    let store = Store::in_memory(config(Config::default().with_clock(clock.clone()))).unwrap();
    let api = Api::new(store.clone(), api(ApiConfig::new(APP, KEY)));
    Harness { api, store, clock }
}

fn harness() -> Harness {
    harness_with(|c| c, |a| a)
}

impl Harness {
    fn query_as(&self, identifier: &str) -> String {
        let sig = usersig::generate(APP, KEY, identifier, 86400, self.clock.now());
        format!(
            "sdkappid={APP}&identifier={identifier}&usersig={sig}&random=99999999&contenttype=json"
        )
    }

    fn call_raw(&self, path: &str, body: &str) -> Reply {
        self.api
            .handle(path, &self.query_as(ADMIN), body.as_bytes())
    }

    fn call(&self, path: &str, body: Value) -> Value {
        let reply = self.call_raw(path, &body.to_string());
        let v: Value = serde_json::from_str(&reply.json).unwrap();
        assert_eq!(v["ErrorCode"].as_u64().unwrap() as u32, reply.code);
        assert!(
            v["ActionStatus"].is_string() && v["ErrorInfo"].is_string(),
            "envelope: {v}"
        );
        v
    }

    fn code(&self, path: &str, body: Value) -> u64 {
        self.call(path, body)["ErrorCode"].as_u64().unwrap()
    }

    fn import(&self, users: &[&str]) {
        for u in users {
            assert_eq!(
                self.code("v4/im_open_login_svc/account_import", json!({"UserID": u})),
                0
            );
        }
    }
}

use imstore::Clock;

const SEND: &str = "/v4/openim/sendmsg";
const BATCH: &str = "/v4/openim/batchsendmsg";
const ROAM: &str = "/v4/openim/admin_getroammsg";
const WITHDRAW: &str = "/v4/openim/admin_msgwithdraw";
const READ: &str = "/v4/openim/admin_set_msg_read";
const UNREAD: &str = "/v4/openim/get_c2c_unread_msg_num";
const MODIFY: &str = "/v4/openim/modify_c2c_msg";

fn text(t: &str) -> Value {
    json!([{"MsgType": "TIMTextElem", "MsgContent": {"Text": t}}])
}

// ----- Tencent's documented examples -----

#[test]
fn withdraw_the_documented_request() {
    let h = harness();
    h.clock.set(1572869840); // within retention of the documented MsgTimeStamp
    h.import(&["vinson", "dramon"]);
    let sent = h.call(SEND, json!({"From_Account": "vinson", "To_Account": "dramon", "MsgSeq": 31906, "MsgRandom": 833502,
        "MsgTimeStamp": 1572869830u32, "MsgBody": text("hi")}));
    assert_eq!(sent["MsgKey"], "31906_833502_1572869830");
    let req = json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": "31906_833502_1572869830"});
    let ok = h.call(WITHDRAW, req.clone());
    assert_eq!(
        ok,
        json!({"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0})
    );
    assert_eq!(h.code(WITHDRAW, req), 20023);
}

#[test]
fn sendmsg_the_documented_request() {
    let h = harness();
    h.import(&["lumotuwe1", "lumotuwe2"]);
    let v = h.call(SEND, json!({
        "SyncOtherMachine": 2, "From_Account": "lumotuwe1", "To_Account": "lumotuwe2", "MsgLifeTime": 60,
        "MsgSeq": 93847636, "MsgRandom": 1287657,
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi, beauty"}}],
        "CloudCustomData": "your cloud custom data",
        "SupportMessageExtension": 0, "SendMsgControl": ["NoUnread"]
    }));
    assert_eq!(v["ActionStatus"], "OK");
    assert_eq!(v["MsgTime"], 1_584_669_000u64);
    assert_eq!(v["MsgKey"], "93847636_1287657_1584669000");
}

#[test]
fn getroammsg_the_documented_request_and_its_continuation() {
    let h = harness();
    h.import(&["user1", "user2"]);
    // 12 messages in the documented hour, both directions.
    for i in 0..12u32 {
        let (from, to) = if i % 2 == 0 {
            ("user1", "user2")
        } else {
            ("user2", "user1")
        };
        h.call(SEND, json!({"From_Account": from, "To_Account": to, "MsgRandom": 7200 + i, "MsgSeq": 549396494 + i,
            "MsgTimeStamp": 1584669680u32 + i * 9, "MsgBody": text(&format!("msg {i}")), "CloudCustomData": "your cloud custom data"}));
    }
    let page = h.call(
        ROAM,
        json!({"Operator_Account": "user2", "Peer_Account": "user1", "MaxCnt": 5,
        "MinTime": 1584669600u32, "MaxTime": 1584673200u32}),
    );
    assert_eq!(
        (page["Complete"].as_u64(), page["MsgCnt"].as_u64()),
        (Some(0), Some(5))
    );
    let list = page["MsgList"].as_array().unwrap();
    let first = &list[0];
    for field in [
        "From_Account",
        "To_Account",
        "MsgSeq",
        "MsgRandom",
        "MsgTimeStamp",
        "MsgFlagBits",
        "IsPeerRead",
        "MsgKey",
        "MsgBody",
        "CloudCustomData",
    ] {
        assert!(first.get(field).is_some(), "{field} missing in {first}");
    }
    assert_eq!(
        first["MsgKey"], page["LastMsgKey"],
        "LastMsgKey names the oldest returned, listed first"
    );
    assert_eq!(first["MsgTimeStamp"], page["LastMsgTime"]);
    assert_eq!(first["MsgBody"], text("msg 7"));
    // The continuation: MaxTime = LastMsgTime, with LastMsgKey.
    let mut seen: Vec<Value> = list.iter().map(|m| m["MsgKey"].clone()).collect();
    let mut page = page;
    while page["Complete"] == 0 {
        page = h.call(ROAM, json!({"Operator_Account": "user2", "Peer_Account": "user1", "MaxCnt": 5,
            "MinTime": 1584669600u32, "MaxTime": page["LastMsgTime"], "LastMsgKey": page["LastMsgKey"]}));
        seen.extend(
            page["MsgList"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["MsgKey"].clone()),
        );
    }
    seen.sort_by_key(|k| k.to_string());
    seen.dedup();
    assert_eq!(seen.len(), 12);
    // The older spelling of the accounts is accepted.
    let old = h.call(ROAM, json!({"From_Account": "user2", "To_Account": "user1", "MaxCnt": 100, "MinTime": 0, "MaxTime": 4294967295u32}));
    assert_eq!(old["MsgCnt"], 12);
}

#[test]
fn getroammsg_lists_recalled_messages_with_flag_8_and_an_empty_body() {
    let h = harness();
    h.import(&["a", "b"]);
    let k = h.call(SEND, json!({"From_Account": "a", "To_Account": "b", "MsgRandom": 1, "MsgBody": text("secret"), "CloudCustomData": "cd"}))["MsgKey"].clone();
    assert_eq!(
        h.code(
            WITHDRAW,
            json!({"From_Account": "a", "To_Account": "b", "MsgKey": k})
        ),
        0
    );
    let page = h.call(ROAM, json!({"Operator_Account": "b", "Peer_Account": "a", "MaxCnt": 10, "MinTime": 0, "MaxTime": 4294967295u32}));
    let m = &page["MsgList"][0];
    assert_eq!(
        (m["MsgFlagBits"].as_u64(), &m["MsgBody"]),
        (Some(8), &json!([]))
    );
    assert!(
        m.get("CloudCustomData").is_none(),
        "CloudCustomData is erased: {m}"
    );
    assert!(!page.to_string().contains("secret"));
}

// ----- authentication and dispatch -----

#[test]
fn an_expired_usersig_answers_70001() {
    let h = harness();
    let sig = usersig::generate(APP, KEY, ADMIN, 10, h.clock.now() - 11);
    let q = format!("sdkappid={APP}&identifier={ADMIN}&usersig={sig}");
    assert_eq!(h.api.handle(SEND, &q, b"{}").code, 70001);
}

#[test]
fn a_malformed_or_missing_usersig_answers_70003() {
    let h = harness();
    assert_eq!(
        h.api
            .handle(
                SEND,
                &format!("sdkappid={APP}&identifier={ADMIN}&usersig=garbage"),
                b"{}"
            )
            .code,
        70003
    );
    assert_eq!(
        h.api
            .handle(SEND, &format!("sdkappid={APP}&identifier={ADMIN}"), b"{}")
            .code,
        70003
    );
}

#[test]
fn a_usersig_signed_with_another_key_answers_70009() {
    let h = harness();
    let sig = usersig::generate(APP, "not the key", ADMIN, 86400, h.clock.now());
    assert_eq!(
        h.api
            .handle(
                SEND,
                &format!("sdkappid={APP}&identifier={ADMIN}&usersig={sig}"),
                b"{}"
            )
            .code,
        70009
    );
}

#[test]
fn a_usersig_of_another_identifier_answers_70013() {
    let h = harness();
    let sig = usersig::generate(APP, KEY, "someone", 86400, h.clock.now());
    assert_eq!(
        h.api
            .handle(
                SEND,
                &format!("sdkappid={APP}&identifier={ADMIN}&usersig={sig}"),
                b"{}"
            )
            .code,
        70013
    );
}

/// A missing SDKAppID answers 60012, one that is not a number 60006 (Tencent's public codes);
/// before, both answered 70014.
#[test]
fn a_missing_or_malformed_sdkappid_answers_60012_or_60006() {
    let h = harness();
    let sig = usersig::generate(APP, KEY, ADMIN, 86400, h.clock.now());
    let code = |query: String| h.api.handle(SEND, &query, b"{}").code;
    assert_eq!(code(format!("identifier={ADMIN}&usersig={sig}")), 60012);
    assert_eq!(
        code(format!("sdkappid=app&identifier={ADMIN}&usersig={sig}")),
        60006
    );
}

#[test]
fn another_sdkappid_answers_70014() {
    let h = harness();
    let sig = usersig::generate(APP + 1, KEY, ADMIN, 86400, h.clock.now());
    assert_eq!(
        h.api
            .handle(
                SEND,
                &format!("sdkappid={APP}&identifier={ADMIN}&usersig={sig}"),
                b"{}"
            )
            .code,
        70014
    );
    let sig = usersig::generate(APP, KEY, ADMIN, 86400, h.clock.now());
    assert_eq!(
        h.api
            .handle(
                SEND,
                &format!("sdkappid=1&identifier={ADMIN}&usersig={sig}"),
                b"{}"
            )
            .code,
        70014
    );
}

#[test]
fn a_non_admin_answers_90009_before_the_body_is_read() {
    let h = harness();
    h.import(&["vinson"]);
    let q = h.query_as("vinson");
    assert_eq!(h.api.handle(WITHDRAW, &q, b"not even json").code, 90009);
}

#[test]
fn an_unknown_api_answers_60010() {
    let h = harness();
    assert_eq!(h.call_raw("/v4/openim/nope", "{}").code, 60010);
    assert_eq!(h.call_raw("/v5/openim/sendmsg", "{}").code, 60010);
}

#[test]
fn a_body_that_is_not_a_json_object_answers_90001() {
    let h = harness();
    for body in ["", "{", "[]", "42", "\"x\""] {
        assert_eq!(h.call_raw(WITHDRAW, body).code, 90001, "{body:?}");
    }
}

#[test]
fn the_rate_limit_answers_60007_per_api() {
    let h = harness_with(
        |c| c,
        |mut a| {
            a.rate_limit = Some(3);
            a
        },
    );
    h.import(&["a", "b", "c"]);
    assert_eq!(
        h.code(
            "v4/im_open_login_svc/account_import",
            json!({"UserID": "d"})
        ),
        60007
    );
    // Another API has its own bucket.
    assert_eq!(
        h.code(READ, json!({"Report_Account": "a", "Peer_Account": "b"})),
        0
    );
}

#[test]
fn unknown_fields_are_ignored() {
    let h = harness();
    h.import(&["a", "b"]);
    assert_eq!(h.code(SEND, json!({"From_Account": "a", "To_Account": "b", "MsgRandom": 1, "MsgBody": text("x"), "Whatever": {"x": 1}})), 0);
}

// ----- accounts -----

#[test]
fn account_import_errors_answer_70402() {
    let h = harness();
    assert_eq!(
        h.code("v4/im_open_login_svc/account_import", json!({})),
        70402
    );
    assert_eq!(
        h.code("v4/im_open_login_svc/account_import", json!({"UserID": 5})),
        70402
    );
    assert_eq!(
        h.code(
            "v4/im_open_login_svc/account_import",
            json!({"UserID": "x".repeat(33)})
        ),
        70402
    );
    assert_eq!(
        h.code(
            "v4/im_open_login_svc/account_import",
            json!({"Identifier": "old"})
        ),
        0
    );
}

#[test]
fn multiaccount_import_lists_fail_accounts_and_refuses_over_100() {
    let h = harness();
    let v = h.call(
        "v4/im_open_login_svc/multiaccount_import",
        json!({"Accounts": ["a", "", "b"]}),
    );
    assert_eq!(v["FailAccounts"], json!([""]));
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    assert_eq!(
        h.code(
            "v4/im_open_login_svc/multiaccount_import",
            json!({"Accounts": many})
        ),
        70402
    );
    assert_eq!(
        h.code(
            "v4/im_open_login_svc/multiaccount_import",
            json!({"Accounts": "a"})
        ),
        70402
    );
}

/// Tencent's newer request form, `AccountList` of objects with profile fields (ignored), is
/// taken as the older `Accounts` is.
#[test]
fn multiaccount_import_takes_the_newer_account_list_form() {
    let h = harness();
    let v = h.call(
        "v4/im_open_login_svc/multiaccount_import",
        json!({"AccountList": [
            {"UserID": "UserID_001", "Nick": "Nick_001", "FaceUrl": "http://www.qq.com"},
            {"UserID": "UserID_002"}
        ]}),
    );
    assert_eq!(v["ErrorCode"], 0, "{v}");
    assert_eq!(v["FailAccounts"], json!([]));
    for u in ["UserID_001", "UserID_002"] {
        assert!(h.store.account_exists(u).unwrap(), "{u}");
    }
    assert_eq!(
        h.code("v4/im_open_login_svc/multiaccount_import", json!({})),
        70402
    );
}

#[test]
fn account_check_reports_imported_or_not() {
    let h = harness();
    h.import(&["a"]);
    let v = h.call(
        "v4/im_open_login_svc/account_check",
        json!({"CheckItem": [{"UserID": "a"}, {"UserID": "z"}]}),
    );
    assert_eq!(v["ResultItem"][0]["AccountStatus"], "Imported");
    assert_eq!(v["ResultItem"][1]["AccountStatus"], "NotImported");
}

#[test]
fn account_delete_answers_70107_per_unknown_account() {
    let h = harness();
    h.import(&["a"]);
    let v = h.call(
        "v4/im_open_login_svc/account_delete",
        json!({"DeleteItem": [{"UserID": "a"}, {"UserID": "z"}]}),
    );
    assert_eq!(v["ResultItem"][0]["ResultCode"], 0);
    assert_eq!(v["ResultItem"][1]["ResultCode"], 70107);
    assert!(!h.store.account_exists("a").unwrap());
}

// ----- sendmsg -----

fn send_body() -> Value {
    json!({"From_Account": "a", "To_Account": "b", "MsgRandom": 1, "MsgBody": text("x")})
}

fn with(mut v: Value, field: &str, value: Value) -> Value {
    v[field] = value;
    v
}

fn without(mut v: Value, field: &str) -> Value {
    v.as_object_mut().unwrap().remove(field);
    v
}

#[test]
fn sendmsg_field_errors_carry_tencents_codes() {
    let h = harness();
    h.import(&["a", "b"]);
    let cases = [
        (with(send_body(), "From_Account", json!("ghost")), 90008),
        (with(send_body(), "From_Account", json!(7)), 90008),
        (without(send_body(), "To_Account"), 90003),
        (with(send_body(), "To_Account", json!("ghost")), 90012),
        (without(send_body(), "MsgRandom"), 90005),
        (with(send_body(), "MsgRandom", json!(-1)), 90005),
        (with(send_body(), "MsgRandom", json!(4294967296u64)), 90005),
        (with(send_body(), "MsgTimeStamp", json!("now")), 90006),
        (
            with(send_body(), "MsgBody", json!({"MsgType": "TIMTextElem"})),
            90007,
        ),
        (without(send_body(), "MsgBody"), 90007),
        (with(send_body(), "MsgBody", json!([])), 90002),
        (
            with(
                send_body(),
                "MsgBody",
                json!([{"MsgType": "TIMTextElem", "MsgContent": {}}]),
            ),
            90002,
        ),
        (
            with(
                send_body(),
                "MsgBody",
                json!([{"MsgType": "TIMBogusElem", "MsgContent": {}}]),
            ),
            90002,
        ),
        (with(send_body(), "MsgLifeTime", json!(604801)), 90026),
        (with(send_body(), "MsgLifeTime", json!("60")), 90044),
        (with(send_body(), "SyncOtherMachine", json!(3)), 90031),
        (with(send_body(), "SyncOtherMachine", json!("1")), 90031),
        (with(send_body(), "MsgSeq", json!("x")), 90004),
        (with(send_body(), "MsgSeq", json!(-1)), 90004),
        // A day ahead of the clock and more: a clock gone wrong (`MAX_MSG_TIME_AHEAD_SECS`).
        (
            with(send_body(), "MsgTimeStamp", json!(4_000_000_000u32)),
            90006,
        ),
        (
            with(send_body(), "MsgTimeStamp", json!(1_584_669_000 + 86_401)),
            90006,
        ),
        (
            with(send_body(), "MsgBody", text(&"x".repeat(13 * 1024))),
            93000,
        ),
        // From_Account that names no account is said before a missing To_Account.
        (
            without(
                with(send_body(), "From_Account", json!("ghost")),
                "To_Account",
            ),
            90008,
        ),
    ];
    for (body, code) in cases {
        assert_eq!(h.code(SEND, body.clone()), code, "{body}");
    }
    // Fields a client serializes unset: 0 and "" are taken as absent.
    for (field, zero) in [
        ("SyncOtherMachine", json!(0)),
        ("MsgTimeStamp", json!(0)),
        ("From_Account", json!("")),
    ] {
        let body = with(with(send_body(), "MsgRandom", json!(777)), field, zero);
        let answer = h.call(SEND, body.clone());
        assert_eq!(answer["ErrorCode"], 0, "{body}: {answer}");
        if field == "MsgTimeStamp" {
            assert_eq!(answer["MsgTime"], 1_584_669_000, "now, not 0: {answer}");
        }
    }
    let a_day_ahead = with(send_body(), "MsgTimeStamp", json!(1_584_669_000 + 86_400));
    assert_eq!(h.code(SEND, a_day_ahead), 0);
    assert_eq!(h.code(SEND, send_body()), 0);
    assert_eq!(
        h.code(SEND, without(send_body(), "From_Account")),
        0,
        "absent From_Account sends as the admin"
    );
}

const IMPORT: &str = "/v4/openim/importmsg";
/// The harness's clock (`harness_with`).
const NOW: u64 = 1_584_669_000;

fn import_body() -> Value {
    json!({"SyncFromOldSystem": 2, "From_Account": "a", "To_Account": "b", "MsgSeq": 48374,
        "MsgRandom": 2837546, "MsgTimeStamp": NOW - 100, "MsgBody": text("from the old system")})
}

#[test]
fn importmsg_field_errors_carry_tencents_codes() {
    let h = harness();
    h.import(&["a", "b"]);
    let cases = [
        (without(import_body(), "SyncFromOldSystem"), 90030),
        (with(import_body(), "SyncFromOldSystem", json!(1)), 90030),
        (with(import_body(), "SyncFromOldSystem", json!("2")), 90030),
        (without(import_body(), "From_Account"), 90008),
        (with(import_body(), "From_Account", json!("ghost")), 90008),
        (without(import_body(), "To_Account"), 90003),
        (with(import_body(), "To_Account", json!("ghost")), 90012),
        (without(import_body(), "MsgSeq"), 90004),
        (without(import_body(), "MsgRandom"), 90005),
        (without(import_body(), "MsgTimeStamp"), 90006),
        (with(import_body(), "MsgTimeStamp", json!("then")), 90006),
        (without(import_body(), "MsgBody"), 90007),
        (with(import_body(), "MsgBody", json!([])), 90002),
        (
            with(import_body(), "MsgBody", text(&"x".repeat(13 * 1024))),
            93000,
        ),
    ];
    for (body, code) in cases {
        assert_eq!(h.code(IMPORT, body.clone()), code, "{body}");
    }
}

#[test]
fn importmsg_both_modes_and_duplicates() {
    let h = harness();
    h.import(&["a", "b"]);
    let first = h.call(IMPORT, import_body());
    assert_eq!(first["ErrorCode"], 0, "{first}");
    assert_eq!(first["MsgKey"], format!("48374_2837546_{}", NOW - 100));
    // The same key again, even from the other side: the same message, nothing new.
    let swapped = with(
        with(import_body(), "From_Account", json!("b")),
        "To_Account",
        json!("a"),
    );
    assert_eq!(h.call(IMPORT, swapped)["MsgKey"], first["MsgKey"]);
    assert_eq!(
        h.store.unread("b", "a").unwrap(),
        0,
        "history is counted read"
    );
    let realtime = with(
        with(import_body(), "SyncFromOldSystem", json!(5)),
        "MsgSeq",
        json!(2),
    );
    assert_eq!(h.call(IMPORT, realtime)["ErrorCode"], 0);
    assert_eq!(
        h.store.unread("b", "a").unwrap(),
        1,
        "real time is counted unread"
    );
    let page = h
        .store
        .history(&imstore::HistoryQuery::new("b", "a", 10))
        .unwrap();
    assert_eq!(page.messages.len(), 2);
}

struct Blocker;
impl Hooks for Blocker {
    fn before_send(&self, msg: &OutgoingMessage<'_>) -> BeforeSend {
        if msg.to == "b" {
            BeforeSend::Block
        } else {
            BeforeSend::BlockWithCode {
                code: 120_100,
                info: None,
            }
        }
    }
}

#[test]
fn sendmsg_blocked_by_the_callback_answers_20006_or_the_callbacks_code() {
    let h = harness_with(|c| c.with_hooks(Arc::new(Blocker)), |a| a);
    h.import(&["a", "b", "c"]);
    assert_eq!(h.code(SEND, send_body()), 20006);
    assert_eq!(
        h.code(SEND, with(send_body(), "To_Account", json!("c"))),
        120_100
    );
}

// ----- batchsendmsg -----

#[test]
fn batchsendmsg_over_500_answers_90011() {
    let h = harness();
    h.import(&["a"]);
    let to: Vec<String> = (0..501).map(|i| format!("u{i}")).collect();
    assert_eq!(
        h.code(
            BATCH,
            json!({"From_Account": "a", "To_Account": to, "MsgRandom": 1, "MsgBody": text("x")})
        ),
        90011
    );
}

#[test]
fn batchsendmsg_reports_some_error_with_70107_per_unknown_recipient() {
    let h = harness();
    h.import(&["a", "b", "c"]);
    let v = h.call(BATCH, json!({"From_Account": "a", "To_Account": ["b", "ghost", "c"], "MsgRandom": 1, "MsgBody": text("x")}));
    assert_eq!(v["ActionStatus"], "SomeError");
    assert_eq!(
        v["ErrorList"],
        json!([{"To_Account": "ghost", "ErrorCode": 70107}])
    );
    assert!(
        v["MsgKey"]
            .as_str()
            .is_some_and(|k| k.ends_with("_1584669000"))
    );
    let all_bad = h.call(BATCH, json!({"From_Account": "a", "To_Account": ["x", "y"], "MsgRandom": 1, "MsgBody": text("x")}));
    assert_eq!(
        (
            all_bad["ActionStatus"].as_str(),
            all_bad["ErrorCode"].as_u64()
        ),
        (Some("FAIL"), Some(70107))
    );
    let fine = h.call(
        BATCH,
        json!({"From_Account": "a", "To_Account": ["b"], "MsgRandom": 2, "MsgBody": text("x")}),
    );
    assert_eq!(
        (fine["ActionStatus"].as_str(), fine["ErrorList"].clone()),
        (Some("OK"), json!([]))
    );
}

#[test]
fn batchsendmsg_field_errors_carry_their_codes() {
    let h = harness();
    h.import(&["a", "b"]);
    let base =
        json!({"From_Account": "a", "To_Account": ["b"], "MsgRandom": 1, "MsgBody": text("x")});
    assert_eq!(
        h.code(BATCH, with(base.clone(), "To_Account", json!("b"))),
        90003
    );
    assert_eq!(
        h.code(BATCH, with(base.clone(), "From_Account", json!("ghost"))),
        90008
    );
    assert_eq!(h.code(BATCH, without(base.clone(), "MsgRandom")), 90005);
    assert_eq!(
        h.code(BATCH, with(base.clone(), "MsgBody", json!("x"))),
        90007
    );
    assert_eq!(
        h.code(BATCH, with(base, "MsgLifeTime", json!(999999))),
        90026
    );
}

// ----- history, withdraw, read, unread, modify, compact -----

#[test]
fn getroammsg_field_errors_carry_their_codes() {
    let h = harness();
    h.import(&["a", "b"]);
    let base = json!({"Operator_Account": "a", "Peer_Account": "b", "MaxCnt": 10, "MinTime": 0, "MaxTime": 100});
    assert_eq!(h.code(ROAM, base.clone()), 0);
    assert_eq!(
        h.code(ROAM, with(base.clone(), "Operator_Account", json!("ghost"))),
        90008
    );
    assert_eq!(
        h.code(ROAM, without(base.clone(), "Operator_Account")),
        90008
    );
    assert_eq!(
        h.code(ROAM, with(base.clone(), "Peer_Account", json!("ghost"))),
        90003
    );
    assert_eq!(h.code(ROAM, without(base.clone(), "MaxCnt")), 90001);
    assert_eq!(h.code(ROAM, with(base.clone(), "MaxCnt", json!(0))), 90001);
    assert_eq!(
        h.code(ROAM, with(base.clone(), "MinTime", json!("x"))),
        90001
    );
    assert_eq!(
        h.code(ROAM, with(base, "LastMsgKey", json!("01_2_3"))),
        90001
    );
}

#[test]
fn msgwithdraw_errors_follow_tencents_precedence() {
    let h = harness();
    h.import(&["vinson", "dramon"]);
    let k = h.call(SEND, json!({"From_Account": "vinson", "To_Account": "dramon", "MsgRandom": 1, "MsgBody": text("x")}))["MsgKey"].clone();
    let cases = [
        (json!({"To_Account": "dramon", "MsgKey": k}), 90008),
        (
            json!({"From_Account": 5, "To_Account": "dramon", "MsgKey": k}),
            90008,
        ),
        (
            json!({"From_Account": "ghost", "To_Account": "ghost", "MsgKey": "x"}),
            90008,
        ),
        (json!({"From_Account": "vinson", "MsgKey": k}), 90003),
        // To_Account missing: a From_Account naming no account is said first.
        (json!({"From_Account": "ghost", "MsgKey": "1_2_3"}), 90008),
        (
            json!({"From_Account": "ghost", "To_Account": 5, "MsgKey": k}),
            90008,
        ),
        (
            json!({"From_Account": "vinson", "To_Account": "ghost", "MsgKey": "x"}),
            90003,
        ),
        (
            json!({"From_Account": "vinson", "To_Account": "dramon"}),
            90054,
        ),
        (
            json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": 5}),
            90054,
        ),
        (
            json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": "1_2"}),
            90054,
        ),
        (
            json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": "1_2_3"}),
            20022,
        ),
        (
            json!({"From_Account": "dramon", "To_Account": "vinson", "MsgKey": k}),
            20022,
        ),
    ];
    for (body, code) in cases {
        assert_eq!(h.code(WITHDRAW, body.clone()), code, "{body}");
    }
    let body = json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": k});
    assert_eq!(h.code(WITHDRAW, body.clone()), 0);
    assert_eq!(h.code(WITHDRAW, body), 20023);
}

#[test]
fn set_msg_read_and_unread_counts() {
    let h = harness();
    h.import(&["a", "b", "c"]);
    for i in 0..3 {
        h.call(
            SEND,
            json!({"From_Account": "b", "To_Account": "a", "MsgRandom": i, "MsgBody": text("x")}),
        );
    }
    h.call(
        SEND,
        json!({"From_Account": "c", "To_Account": "a", "MsgRandom": 9, "MsgBody": text("x")}),
    );
    let v = h.call(UNREAD, json!({"To_Account": "a"}));
    assert_eq!(v["AllC2CUnreadMsgNum"], 4);
    assert_eq!(
        v["C2CUnreadMsgNumList"],
        json!([{"Peer_Account": "b", "C2CUnreadMsgNum": 3}, {"Peer_Account": "c", "C2CUnreadMsgNum": 1}])
    );
    let v = h.call(
        UNREAD,
        json!({"To_Account": "a", "Peer_Account": ["b", "ghost"]}),
    );
    assert_eq!(
        v["C2CUnreadMsgNumList"],
        json!([{"Peer_Account": "b", "C2CUnreadMsgNum": 3}])
    );
    assert_eq!(
        v["ErrorList"],
        json!([{"Peer_Account": "ghost", "ErrorCode": 70107}])
    );
    // At most ten peers a request (Tencent's limit).
    let ten: Vec<&str> = ["b"; 10].to_vec();
    let v = h.call(UNREAD, json!({"To_Account": "a", "Peer_Account": ten}));
    assert_eq!(v["C2CUnreadMsgNumList"].as_array().unwrap().len(), 10);
    assert_eq!(
        h.code(
            UNREAD,
            json!({"To_Account": "a", "Peer_Account": vec!["b"; 11]})
        ),
        90001
    );
    assert_eq!(
        h.code(READ, json!({"Report_Account": "a", "Peer_Account": "b"})),
        0
    );
    assert_eq!(
        h.call(UNREAD, json!({"To_Account": "a"}))["AllC2CUnreadMsgNum"],
        1
    );
    let page = h.call(ROAM, json!({"Operator_Account": "b", "Peer_Account": "a", "MaxCnt": 10, "MinTime": 0, "MaxTime": 4294967295u32}));
    assert!(
        page["MsgList"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["IsPeerRead"] == 1)
    );
}

/// `MsgReadTime` (Unix seconds, a string as documented, or a number): only what was sent at
/// or before it is read; a bad one is 90001 and marks nothing.
#[test]
fn set_msg_read_honours_msg_read_time() {
    let h = harness();
    h.import(&["a", "b"]);
    let now = 1_584_669_000u32;
    for (i, time) in [now - 100, now - 10].into_iter().enumerate() {
        let body = json!({"From_Account": "b", "To_Account": "a", "MsgRandom": i,
            "MsgTimeStamp": time, "MsgBody": text("x")});
        assert_eq!(h.code(SEND, body), 0);
    }
    let unread = || h.call(UNREAD, json!({"To_Account": "a"}))["AllC2CUnreadMsgNum"].clone();
    let read = |time: Value| {
        h.code(
            READ,
            json!({"Report_Account": "a", "Peer_Account": "b", "MsgReadTime": time}),
        )
    };
    assert_eq!(read(json!("soon")), 90001);
    assert_eq!(read(json!(-5)), 90001);
    assert_eq!(unread(), 2, "a refused mark marks nothing");
    assert_eq!(read(json!((now - 50).to_string())), 0);
    assert_eq!(
        unread(),
        1,
        "the message sent after MsgReadTime stays unread"
    );
    assert_eq!(read(json!(now - 10)), 0);
    assert_eq!(unread(), 0);
}

/// SendMsgControl over REST: `NoUnread` is not counted; flags imstore does not keep, or does
/// not know, change nothing; anything but an array of strings is 90001.
#[test]
fn sendmsg_honours_send_msg_control() {
    let h = harness();
    h.import(&["a", "b"]);
    let unread = || h.call(UNREAD, json!({"To_Account": "b"}))["AllC2CUnreadMsgNum"].clone();
    let control = |random: u32, v: Value| {
        h.code(
            SEND,
            with(
                with(send_body(), "MsgRandom", json!(random)),
                "SendMsgControl",
                v,
            ),
        )
    };
    assert_eq!(control(1, json!(["NoUnread"])), 0);
    assert_eq!(unread(), 0);
    assert_eq!(
        control(2, json!(["WithMuteNotifications", "SomethingNewer"])),
        0
    );
    assert_eq!(unread(), 1);
    assert_eq!(control(3, json!("NoUnread")), 90001);
    assert_eq!(control(4, json!([1])), 90001);
    assert_eq!(unread(), 1, "a refused send stores nothing");
}

#[test]
fn set_msg_read_and_unread_errors_carry_their_codes() {
    let h = harness();
    h.import(&["a"]);
    assert_eq!(
        h.code(
            READ,
            json!({"Report_Account": "ghost", "Peer_Account": "a"})
        ),
        90008
    );
    assert_eq!(
        h.code(
            READ,
            json!({"Report_Account": "a", "Peer_Account": "ghost"})
        ),
        90003
    );
    assert_eq!(h.code(READ, json!({"Peer_Account": "a"})), 90008);
    assert_eq!(h.code(UNREAD, json!({"To_Account": "ghost"})), 90003);
    assert_eq!(h.code(UNREAD, json!({})), 90003);
    assert_eq!(
        h.code(UNREAD, json!({"To_Account": "a", "Peer_Account": "b"})),
        90001
    );
}

#[test]
fn modify_c2c_msg_replaces_content_and_answers_its_codes() {
    let h = harness();
    h.import(&["a", "b"]);
    let k = h.call(SEND, send_body())["MsgKey"].clone();
    let ok = json!({"From_Account": "a", "To_Account": "b", "MsgKey": k, "MsgBody": text("edited"), "CloudCustomData": "new"});
    assert_eq!(h.code(MODIFY, ok.clone()), 0);
    let page = h.call(ROAM, json!({"Operator_Account": "b", "Peer_Account": "a", "MaxCnt": 10, "MinTime": 0, "MaxTime": 4294967295u32}));
    assert_eq!(
        (
            page["MsgList"][0]["MsgBody"].clone(),
            page["MsgList"][0]["CloudCustomData"].clone()
        ),
        (text("edited"), json!("new"))
    );
    assert_eq!(
        h.code(MODIFY, with(ok.clone(), "From_Account", json!("ghost"))),
        90008
    );
    assert_eq!(
        h.code(MODIFY, with(ok.clone(), "To_Account", json!("ghost"))),
        90003
    );
    assert_eq!(
        h.code(MODIFY, with(ok.clone(), "MsgKey", json!("bad"))),
        90054
    );
    assert_eq!(
        h.code(MODIFY, with(ok.clone(), "MsgKey", json!("1_2_3"))),
        20022
    );
    assert_eq!(
        h.code(MODIFY, with(ok.clone(), "MsgBody", json!("x"))),
        90007
    );
    assert_eq!(
        h.code(
            MODIFY,
            without(without(ok.clone(), "MsgBody"), "CloudCustomData")
        ),
        90002
    );
    h.call(
        WITHDRAW,
        json!({"From_Account": "a", "To_Account": "b", "MsgKey": k}),
    );
    assert_eq!(h.code(MODIFY, ok), 20023);
}

#[test]
fn compact_answers_91000_on_an_in_memory_store_and_ok_on_a_durable_one() {
    let h = harness();
    assert_eq!(h.code("/v4/imstore/compact", json!({})), 91000);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    let api = Api::new(store.clone(), ApiConfig::new(APP, KEY));
    let sig = usersig::generate(APP, KEY, ADMIN, 86400, store.config().clock.now());
    let reply = api.handle(
        "/v4/imstore/compact",
        &format!("sdkappid={APP}&identifier={ADMIN}&usersig={sig}"),
        b"{}",
    );
    assert_eq!(reply.code, 0, "{}", reply.json);
}

// ----- events -----

/// A query string is form-encoded as Python's `urlencode`, Go's `url.Values` and Java's
/// `URLEncoder` write it: `+` is a space, in the identifier as in the device's name.
#[test]
fn a_plus_in_the_query_string_is_a_space() {
    let h = harness();
    h.import(&["john doe"]);
    let sig = usersig::generate(APP, KEY, "john doe", 86400, h.clock.now());
    let query = format!("sdkappid={APP}&identifier=john+doe&usersig={sig}&device=my+phone");
    let req = h.api.authorize_device(&query).unwrap();
    assert_eq!(
        (req.account.as_str(), req.device.as_str()),
        ("john doe", "my phone")
    );
    // `%2B` stays a plus, and is another identifier than the UserSig's.
    let plus = format!("sdkappid={APP}&identifier=john%2Bdoe&usersig={sig}&device=d");
    assert_eq!(h.api.authorize_device(&plus).unwrap_err().code(), 70013);
}

#[test]
fn a_device_may_only_read_its_own_accounts_events() {
    let h = harness();
    h.import(&["vinson", "dramon"]);
    let own = h.query_as("vinson") + "&device=phone";
    let req = h.api.authorize_device(&own).unwrap();
    assert_eq!(
        (req.account.as_str(), req.device.as_str()),
        ("vinson", "phone")
    );
    // Claiming another account with one's own UserSig fails.
    let sig = usersig::generate(APP, KEY, "vinson", 86400, h.clock.now());
    let forged = format!("sdkappid={APP}&identifier=dramon&usersig={sig}&device=phone");
    assert_eq!(h.api.authorize_device(&forged).unwrap_err().code(), 70013);
    assert_eq!(
        h.api
            .authorize_device(&h.query_as("vinson"))
            .unwrap_err()
            .code(),
        90001
    );
    // platform is one of Tencent's OptPlatform values; after a sequence number.
    let ok = h
        .api
        .authorize_device(&format!("{own}&platform=iOS&after=7"))
        .unwrap();
    assert_eq!((ok.platform, ok.after), ("iOS", Some(7)));
    assert_eq!(
        h.api
            .authorize_device(&format!("{own}&platform=macOS"))
            .unwrap()
            .platform,
        "Mac"
    );
    assert_eq!(h.api.authorize_device(&own).unwrap().platform, "Unknown");
    for bad in ["&platform=Amiga", "&after=x", "&after=-1"] {
        assert_eq!(
            h.api
                .authorize_device(&format!("{own}{bad}"))
                .unwrap_err()
                .code(),
            90001,
            "{bad}"
        );
    }
}

#[test]
fn event_payloads_use_tencents_field_names() {
    let h = harness();
    h.import(&["vinson", "dramon"]);
    let sub = h.store.connect("dramon", "phone").unwrap();
    let k = h.call(SEND, json!({"From_Account": "vinson", "To_Account": "dramon", "MsgRandom": 5, "MsgSeq": 6, "MsgBody": text("hi"), "CloudCustomData": "c"}))["MsgKey"].clone();
    let (kind, data) = event_payload(&sub.recv().unwrap());
    assert_eq!(kind, "message");
    let v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        v,
        json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": k, "MsgSeq": 6, "MsgRandom": 5,
        "MsgTimeStamp": 1584669000u32, "MsgBody": text("hi"), "CloudCustomData": "c"})
    );
    h.call(MODIFY, json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": k, "MsgBody": text("ho")}));
    let (kind, data) = event_payload(&sub.recv().unwrap());
    assert_eq!(kind, "modify");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["MsgBody"],
        text("ho")
    );
    h.call(
        WITHDRAW,
        json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": k}),
    );
    let (kind, data) = event_payload(&sub.recv().unwrap());
    assert_eq!(kind, "recall");
    assert!(!data.contains('\n'));
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap(),
        json!({"From_Account": "vinson", "To_Account": "dramon",
        "MsgKey": k, "Operator_Account": ADMIN, "RecallTime": 1584669000u32})
    );
}

#[test]
fn the_usersig_cache_is_sized_by_the_api_config() {
    for (capacity, after_two_calls) in [(4096, (1, 1)), (0, (0, 0))] {
        let h = harness_with(
            |c| c,
            |a| ApiConfig {
                usersig_cache: capacity,
                ..a
            },
        );
        for _ in 0..2 {
            let reply = h.call(
                "v4/im_open_login_svc/account_check",
                json!({"CheckItem": []}),
            );
            assert_eq!(reply["ErrorCode"], 0, "{reply}");
        }
        let (cap, hits, misses) = h.api.usersig_cache();
        assert_eq!(cap == 0, capacity == 0, "{cap}");
        assert_eq!((hits, misses), after_two_calls);
    }
    assert_eq!(ApiConfig::new(APP, KEY).usersig_cache, 4096);
}

/// An `admin_getroammsg` answer stays within the byte cap (13 KB) as a whole, envelope and
/// all, when every number in it is ten digits long and every message carries
/// CloudCustomData. Before, fields were counted short and the envelope not at all: ~14 KB.
#[test]
fn a_history_answer_stays_within_its_byte_cap() {
    let h = harness();
    h.import(&["u1", "u2"]);
    let n = 120u32;
    for i in 0..n {
        let v = h.call(
            SEND,
            json!({"From_Account": "u1", "To_Account": "u2",
            "MsgSeq": 4_294_967_295u32 - i, "MsgRandom": 4_294_967_295u32 - i,
            "MsgTimeStamp": 1_584_668_000u32 + i, "MsgBody": text(&"x".repeat(30)),
            "CloudCustomData": "c"}),
        );
        assert_eq!(v["ErrorCode"], 0, "{v}");
    }
    let query = h.query_as(ADMIN);
    let mut seen = 0;
    let mut last: Option<(Value, Value)> = None;
    for _ in 0..n {
        let mut body = json!({"Operator_Account": "u2", "Peer_Account": "u1", "MaxCnt": 1000,
            "MinTime": 0, "MaxTime": 4_294_967_295u32});
        if let Some((time, key)) = &last {
            body["MaxTime"] = time.clone();
            body["LastMsgKey"] = key.clone();
        }
        let reply = h.api.handle(ROAM, &query, body.to_string().as_bytes());
        assert!(
            reply.json.len() <= 13 * 1024,
            "{} bytes in an answer",
            reply.json.len()
        );
        let page: Value = serde_json::from_str(&reply.json).unwrap();
        seen += page["MsgCnt"].as_u64().unwrap();
        if page["Complete"] == 1 {
            break;
        }
        last = Some((page["LastMsgTime"].clone(), page["LastMsgKey"].clone()));
    }
    assert_eq!(seen, u64::from(n), "every message on some page");
}
