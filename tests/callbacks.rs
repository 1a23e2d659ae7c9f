//! After-callbacks and what fires them (SPEC §3, §8): the durable outbox (written with the
//! operation, in order, acknowledged, kept across reopen and snapshots), imports (SyncFromOldSystem
//! 2 and 5, idempotent in both directions, no callbacks), a client's recall of its own message,
//! and the webhook wire formats.
mod common;

use common::*;
use imstore::api::{before_send_body, before_send_decision, callback_body, callback_query};
use imstore::{
    BatchSendRequest, BeforeSend, CallbackEvent, Config, HistoryQuery, ImportRequest, MsgElement,
    Origin, Platform, SenderCopy, Store,
};
use serde_json::{Value, json};

fn ios() -> Origin {
    Origin {
        platform: Platform::Ios,
        client_ip: "10.1.2.3".into(),
    }
}

fn commands(store: &Store) -> Vec<String> {
    store
        .outbox_after(0, 100)
        .unwrap()
        .iter()
        .map(|e| callback_body(e).0.to_owned())
        .collect()
}

#[test]
fn operations_with_an_origin_queue_their_callbacks_in_order() {
    let (store, _) = store_with(&["vinson", "dramon", "third"]);
    let k = store
        .with_origin(Some(ios()), || {
            send_text(&store, "vinson", "dramon", 1, "hello")
        })
        .msg_key;
    send_text(&store, "vinson", "dramon", 2, "no origin, no callback");
    store.with_origin(Some(Origin::rest("127.0.0.1")), || {
        store
            .recall(ADMIN, "vinson", "dramon", &k.to_string())
            .unwrap();
        store.mark_read("dramon", "vinson").unwrap();
    });
    assert_eq!(
        commands(&store),
        vec![
            "C2C.CallbackAfterSendMsg",
            "C2C.CallbackAfterMsgWithDraw",
            "C2C.CallbackAfterMsgReport"
        ]
    );
    let entries = store.outbox_after(0, 10).unwrap();
    assert_eq!(entries[0].origin, ios());
    assert_eq!(entries[1].origin.platform, Platform::RestApi);
    assert!(entries.windows(2).all(|w| w[0].id < w[1].id));
    // UnreadMsgNum is the recipient's total after each operation: 1 after the send; after the
    // recall, the second (unread) message remains; after the read mark, none.
    let unread: Vec<u32> = entries
        .iter()
        .map(|e| match &e.event {
            CallbackEvent::AfterSend { unread, .. }
            | CallbackEvent::AfterRecall { unread, .. }
            | CallbackEvent::AfterRead { unread, .. } => *unread,
        })
        .collect();
    assert_eq!(unread, vec![1, 1, 0]);
    // Acknowledged: gone; the rest stays.
    store.outbox_ack(entries[1].id).unwrap();
    assert_eq!(commands(&store), vec!["C2C.CallbackAfterMsgReport"]);
    assert_eq!(store.outbox_after(entries[1].id, 10).unwrap().len(), 1);
}

#[test]
fn batch_sends_and_imports_queue_no_callbacks() {
    let (store, clock) = store_with(&["a", "b", "c"]);
    store.with_origin(Some(Origin::rest("1.2.3.4")), || {
        store
            .batch_send(BatchSendRequest {
                from: Some("a".into()),
                to: vec!["b".into(), "c".into()],
                msg_random: 1,
                msg_seq: None,
                msg_time: None,
                body: vec![MsgElement::text("all")],
                cloud_custom_data: None,
                sender_copy: SenderCopy::Roaming,
                lifetime: None,
                control: Default::default(),
            })
            .unwrap();
        store.import(import("a", "b", 9, &clock, false)).unwrap();
    });
    assert!(commands(&store).is_empty());
}

#[test]
fn a_message_recalled_before_its_callback_went_out_is_reported_without_its_body() {
    let (store, _) = store_with(&["a", "b"]);
    let k = store
        .with_origin(Some(ios()), || send_text(&store, "a", "b", 1, "secret"))
        .msg_key;
    store.recall(ADMIN, "a", "b", &k.to_string()).unwrap();
    let entry = &store.outbox_after(0, 1).unwrap()[0];
    let (_, body) = callback_body(entry);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["MsgKey"], k.to_string());
    assert_eq!(body["MsgBody"], json!([]));
    assert!(!body.to_string().contains("secret"));
}

/// The outbox's callbacks, all after-sends here: (number, MsgKey), in order.
fn queued_sends(store: &Store) -> Vec<(u64, String)> {
    store
        .outbox_after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| match e.event {
            CallbackEvent::AfterSend { message, .. } => (e.id, message.key.to_string()),
            other => panic!("only sends here: {other:?}"),
        })
        .collect()
}

#[test]
fn the_outbox_survives_reopen_and_snapshots_with_its_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Store::open(dir.path(), Config::default()).unwrap();
    let store = open();
    store.import_accounts(&["a", "b"]).unwrap();
    store.with_origin(Some(ios()), || {
        for i in 0..5 {
            send_text(&store, "a", "b", i, &format!("m{i}"));
        }
    });
    let ids: Vec<u64> = store
        .outbox_after(0, 10)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    store.outbox_ack(ids[1]).unwrap();
    drop(store);
    // Replayed from the journal: the acknowledgement too.
    let store = open();
    let after: Vec<u64> = store
        .outbox_after(0, 10)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(after, ids[2..]);
    // And from a snapshot; numbering goes on after the last.
    store.compact().unwrap();
    drop(store);
    let store = open();
    assert!(store.recovery_report().snapshot_lsn.is_some());
    let entries = store.outbox_after(0, 10).unwrap();
    assert_eq!(entries.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..]);
    assert_eq!(entries[0].origin, ios());
    store.with_origin(Some(ios()), || send_text(&store, "b", "a", 9, "next"));
    assert_eq!(
        store.outbox_after(0, 10).unwrap().last().unwrap().id,
        ids[4] + 1
    );
}

/// The outbox's numbers do not depend on its limit: an operator who lowers `outbox_max` and
/// restarts gets, from the replay, the same numbers for the callbacks kept — so a journaled
/// acknowledgement removes what it removed live, and no undelivered callback with it.
#[test]
fn a_lower_outbox_limit_on_replay_keeps_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let open = |max: usize| {
        let config = Config {
            outbox_max: max,
            ..Config::default()
        };
        Store::open(dir.path(), config).unwrap()
    };
    let store = open(10);
    store.import_accounts(&["a", "b"]).unwrap();
    let send = |store: &Store, i: u32| {
        store.with_origin(Some(ios()), || {
            send_text(store, "a", "b", i, &format!("m{i}"))
        })
    };
    for i in 1..=3 {
        send(&store, i);
    }
    store.outbox_ack(2).unwrap();
    let keys: Vec<String> = (4..=5)
        .map(|i| send(&store, i).msg_key.to_string())
        .collect();
    // Delivered: m3 and m4. Left: m5, number 5.
    store.outbox_ack(4).unwrap();
    assert_eq!(queued_sends(&store), [(5, keys[1].clone())]);
    drop(store);
    // Replayed under a limit of 2: m3 is dropped on the way (the outbox held m1 and m2 then),
    // yet m4 and m5 keep their numbers; the acknowledgement of 4 leaves m5.
    let store = open(2);
    assert_eq!(queued_sends(&store), [(5, keys[1].clone())]);
    assert_eq!(store.outbox_len(), (1, 1));
}

/// An outbox larger than one snapshot frame holds (they are written 256 entries a frame, so
/// that a full outbox never passes the frame limit every reader applies) comes back whole and
/// in order from the snapshot.
#[test]
fn an_outbox_of_many_frames_comes_back_from_a_snapshot_whole() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Store::open(dir.path(), Config::default()).unwrap();
    let store = open();
    store.import_accounts(&["a", "b"]).unwrap();
    store.with_origin(Some(ios()), || {
        for i in 0..600 {
            send_text(&store, "a", "b", i, &format!("m{i}"));
        }
    });
    let live = queued_sends(&store);
    assert_eq!(live.len(), 600);
    store.outbox_ack(live[99].0).unwrap();
    store.compact().unwrap();
    drop(store);
    let store = open();
    assert!(store.recovery_report().snapshot_lsn.is_some());
    assert_eq!(store.recovery_report().records_replayed, 0);
    assert_eq!(queued_sends(&store), live[100..]);
}

/// Operations of different accounts at once, each queueing a callback: the outbox numbers
/// them in journal order — the order a replay numbers them in — so that a journaled
/// acknowledgement names the same callbacks live and after a crash. (Numbered as their
/// threads happened to reach the outbox, a replay swapped some: an acknowledgement would then
/// remove a callback never delivered.)
#[test]
fn callbacks_of_concurrent_operations_are_numbered_as_a_replay_numbers_them() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Store::open(
            dir.path(),
            Config::default().with_sync(imstore::SyncPolicy::None),
        )
        .unwrap()
    };
    let store = open();
    const THREADS: u32 = 4;
    const SENDS: u32 = 3_000;
    let names: Vec<String> = (0..2 * THREADS).map(|i| format!("u{i}")).collect();
    store.import_accounts(&names).unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (store, names) = (&store, &names);
            s.spawn(move || {
                let (from, to) = (&names[2 * t as usize], &names[2 * t as usize + 1]);
                store.with_origin(Some(ios()), || {
                    for i in 0..SENDS {
                        send_text(store, from, to, t * SENDS + i, "m");
                    }
                });
            });
        }
    });
    let live = queued_sends(&store);
    assert_eq!(live.len(), (THREADS * SENDS) as usize);
    assert!(live.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    drop(store);
    let replayed = queued_sends(&open());
    let swapped = live.iter().zip(&replayed).filter(|(a, b)| a != b).count();
    assert_eq!(swapped, 0, "callbacks numbered otherwise by the replay");
}

fn import(
    from: &str,
    to: &str,
    seq: u32,
    clock: &imstore::ManualClock,
    realtime: bool,
) -> ImportRequest {
    use imstore::Clock;
    ImportRequest {
        from: from.into(),
        to: to.into(),
        msg_seq: seq,
        msg_random: 77,
        msg_time: clock.now() as u32 - 100,
        body: vec![MsgElement::text(format!("imported {seq}"))],
        cloud_custom_data: None,
        realtime,
    }
}

#[test]
fn import_as_history_is_stored_read_and_not_pushed() {
    let (store, clock) = store_with(&["a", "b"]);
    let phone = store.connect("b", "phone").unwrap();
    let r = store.import(import("a", "b", 1, &clock, false)).unwrap();
    assert!(drain(&phone).is_empty(), "history is not pushed");
    assert_eq!(store.unread("b", "a").unwrap(), 0);
    let page = store.history(&HistoryQuery::new("b", "a", 10)).unwrap();
    assert_eq!(page.messages.len(), 1);
    assert!(page.messages[0].is_peer_read, "counted read");
    assert_eq!(page.messages[0].message.key, r.msg_key);
}

#[test]
fn import_in_real_time_is_unread_and_pushed() {
    let (store, clock) = store_with(&["a", "b"]);
    let phone = store.connect("b", "phone").unwrap();
    store.import(import("a", "b", 1, &clock, true)).unwrap();
    assert_eq!(texts(&drain(&phone)), vec!["msg:imported 1"]);
    assert_eq!(store.unread("b", "a").unwrap(), 1);
    let page = store.history(&HistoryQuery::new("b", "a", 10)).unwrap();
    assert!(!page.messages[0].is_peer_read);
}

#[test]
fn an_import_is_stored_once_even_in_the_other_direction() {
    let (store, clock) = store_with(&["a", "b"]);
    let first = store.import(import("a", "b", 1, &clock, true)).unwrap();
    let mut again = import("a", "b", 1, &clock, true);
    again.body = vec![MsgElement::text("a different body")];
    assert_eq!(
        store.import(again).unwrap(),
        first,
        "same key: the same message"
    );
    let swapped = import("b", "a", 1, &clock, false);
    assert_eq!(
        store.import(swapped).unwrap(),
        first,
        "swapped: still a duplicate"
    );
    let page = store.history(&HistoryQuery::new("b", "a", 10)).unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(body_text(&page.messages[0].message), "imported 1");
    assert_eq!(store.unread("b", "a").unwrap(), 1);
}

#[test]
fn import_errors_carry_their_codes() {
    let (store, clock) = store_with(&["a", "b"]);
    assert_eq!(
        store
            .import(import("x", "b", 1, &clock, true))
            .unwrap_err()
            .code(),
        90008
    );
    assert_eq!(
        store
            .import(import("a", "x", 1, &clock, true))
            .unwrap_err()
            .code(),
        90012
    );
    let mut empty = import("a", "b", 1, &clock, true);
    empty.body.clear();
    assert_eq!(store.import(empty).unwrap_err().code(), 90002);
    let mut big = import("a", "b", 1, &clock, true);
    big.body = vec![MsgElement::text("x".repeat(13_000))];
    assert_eq!(store.import(big).unwrap_err().code(), 93000);
}

#[test]
fn a_client_recalls_its_own_message_within_the_window() {
    let (store, clock) = store_with_config(&["vinson", "dramon"], |c| {
        c.with_client_recall_window_secs(120)
    });
    let phone = store.connect("dramon", "phone").unwrap();
    let mine = send_text(&store, "vinson", "dramon", 1, "oops")
        .msg_key
        .to_string();
    let theirs = send_text(&store, "dramon", "vinson", 2, "theirs")
        .msg_key
        .to_string();
    assert_eq!(texts(&drain(&phone)), vec!["msg:oops"]);
    clock.advance(60);
    // A peer's message is not one's own: there is no such message from vinson.
    assert_eq!(
        store
            .recall_own("vinson", "dramon", &theirs)
            .unwrap_err()
            .code(),
        20022
    );
    let notice = store.recall_own("vinson", "dramon", &mine).unwrap();
    assert_eq!(&*notice.recalled_by, "vinson");
    assert_eq!(texts(&drain(&phone)), vec![format!("recall:{mine}")]);
    assert_eq!(
        store
            .recall_own("vinson", "dramon", &mine)
            .unwrap_err()
            .code(),
        20023
    );
    // Past the window: 20016, and the message stays.
    let late = send_text(&store, "vinson", "dramon", 3, "too late")
        .msg_key
        .to_string();
    clock.advance(121);
    assert_eq!(
        store
            .recall_own("vinson", "dramon", &late)
            .unwrap_err()
            .code(),
        20016
    );
    assert_eq!(
        store
            .recall_own("vinson", "dramon", "1_2_3")
            .unwrap_err()
            .code(),
        20022
    );
    assert_eq!(
        store
            .recall_own("vinson", "dramon", "bad")
            .unwrap_err()
            .code(),
        90054
    );
    assert_eq!(
        store
            .recall_own("ghost", "dramon", &late)
            .unwrap_err()
            .code(),
        90008
    );
    let page = store
        .history(&HistoryQuery::new("dramon", "vinson", 10))
        .unwrap();
    assert!(
        page.messages
            .iter()
            .any(|m| body_text(&m.message) == "too late")
    );
    // An administrator has no window.
    store.recall(ADMIN, "vinson", "dramon", &late).unwrap();
}

#[test]
fn webhook_bodies_have_tencents_fields() {
    let (store, _) = store_with(&["jared", "jonh"]);
    let mut req = text_req("jared", "jonh", 2837546, "red packet");
    req.msg_seq = Some(48374);
    req.msg_time = Some(T0 as u32 - 10); // within retention
    req.cloud_custom_data = Some("cd".into());
    // The origin is taken when the send is prepared.
    let prepared = store.with_origin(Some(ios()), || store.prepare_send(req).unwrap());
    let before: Value = serde_json::from_str(&before_send_body(&prepared.outgoing())).unwrap();
    assert_eq!(
        before,
        json!({"CallbackCommand": "C2C.CallbackBeforeSendMsg", "From_Account": "jared",
            "To_Account": "jonh", "MsgSeq": 48374, "MsgRandom": 2837546, "MsgTime": T0 - 10,
            "MsgKey": format!("48374_2837546_{}", T0 - 10), "OnlineOnlyFlag": 0,
            "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "red packet"}}],
            "CloudCustomData": "cd"})
    );
    store.with_origin(Some(ios()), || {
        store
            .finish_send(prepared, BeforeSend::Allow)
            .unwrap()
            .wait()
            .unwrap();
        store
            .recall(
                ADMIN,
                "jared",
                "jonh",
                &format!("48374_2837546_{}", T0 - 10),
            )
            .unwrap();
        store.mark_read("jonh", "jared").unwrap();
        store
            .mark_read_until("jonh", "jared", T0 as u32 - 30)
            .unwrap();
    });
    let entries = store.outbox_after(0, 10).unwrap();
    let bodies: Vec<Value> = entries
        .iter()
        .map(|e| serde_json::from_str(&callback_body(e).1).unwrap())
        .collect();
    assert_eq!(bodies[0]["CallbackCommand"], "C2C.CallbackAfterSendMsg");
    assert_eq!(bodies[0]["SendMsgResult"], 0);
    assert_eq!(bodies[0]["ErrorInfo"], "send msg succeed");
    assert_eq!(bodies[0]["UnreadMsgNum"], 1);
    assert_eq!(bodies[0]["MsgKey"], format!("48374_2837546_{}", T0 - 10));
    let recall = &bodies[1];
    assert_eq!(recall["CallbackCommand"], "C2C.CallbackAfterMsgWithDraw");
    assert_eq!(
        (
            recall["From_Account"].as_str(),
            recall["To_Account"].as_str()
        ),
        (Some("jared"), Some("jonh"))
    );
    assert_eq!(recall["UnreadMsgNum"], 0);
    assert_eq!(recall["EventTime"], json!(T0 * 1000));
    let read = &bodies[2];
    assert_eq!(read["CallbackCommand"], "C2C.CallbackAfterMsgReport");
    assert_eq!(
        (
            read["Report_Account"].as_str(),
            read["Peer_Account"].as_str()
        ),
        (Some("jonh"), Some("jared"))
    );
    assert_eq!(read["LastReadTime"], T0);
    // With MsgReadTime, LastReadTime is that time.
    assert_eq!(bodies[3]["CallbackCommand"], "C2C.CallbackAfterMsgReport");
    assert_eq!(bodies[3]["LastReadTime"], T0 - 30);
    let q = callback_query(
        1400000000,
        "C2C.CallbackAfterMsgReport",
        &ios(),
        Some(("xxxxyyyy", 1669872112)),
    );
    assert_eq!(
        q,
        "SdkAppid=1400000000&CallbackCommand=C2C.CallbackAfterMsgReport&contenttype=json\
         &ClientIP=10.1.2.3&OptPlatform=iOS\
         &Sign=17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061&RequestTime=1669872112"
    );
}

#[test]
fn before_send_answers_map_to_decisions() {
    let d = |v: Value| before_send_decision(v.to_string().as_bytes());
    assert_eq!(
        d(json!({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""})),
        Ok(BeforeSend::Allow)
    );
    assert_eq!(d(json!({"ErrorCode": 1})), Ok(BeforeSend::Block));
    assert_eq!(d(json!({"ErrorCode": 2})), Ok(BeforeSend::Drop));
    assert_eq!(
        d(json!({"ErrorCode": 120001, "ErrorInfo": "not now"})),
        Ok(BeforeSend::BlockWithCode {
            code: 120001,
            info: Some("not now".into())
        })
    );
    assert_eq!(
        d(json!({"ErrorCode": 7})),
        Ok(BeforeSend::Block),
        "undocumented codes refuse"
    );
    assert_eq!(
        d(
            json!({"ErrorCode": 0, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "**"}}]})
        ),
        Ok(BeforeSend::Replace {
            body: Some(vec![MsgElement::text("**")]),
            cloud_custom_data: None
        })
    );
    assert_eq!(
        d(json!({"ErrorCode": 0, "CloudCustomData": "x"})),
        Ok(BeforeSend::Replace {
            body: None,
            cloud_custom_data: Some("x".into())
        })
    );
    // Empty replacements replace nothing (an answer model that always writes its fields).
    assert_eq!(
        d(json!({"ErrorCode": 0, "MsgBody": [], "CloudCustomData": ""})),
        Ok(BeforeSend::Allow)
    );
    // A negative code is a refusal, not a failed call (which fail-open would let through).
    assert_eq!(
        d(json!({"ActionStatus": "FAIL", "ErrorCode": -1, "ErrorInfo": "risk service error"})),
        Ok(BeforeSend::Block)
    );
    assert!(before_send_decision(b"not json").is_err());
    assert!(d(json!({"ActionStatus": "OK"})).is_err());
    assert!(d(json!({"ErrorCode": "1"})).is_err(), "not an integer");
    // A replacement that cannot be stored refuses: the app answered, and fail-open would
    // deliver the very body it asked to replace.
    assert_eq!(
        d(json!({"ErrorCode": 0, "MsgBody": "not a body"})),
        Ok(BeforeSend::Block)
    );
    assert_eq!(
        d(
            json!({"ErrorCode": 0, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": 1}}]})
        ),
        Ok(BeforeSend::Block)
    );
    assert_eq!(
        d(json!({"ErrorCode": 0, "CloudCustomData": {}})),
        Ok(BeforeSend::Block)
    );
}
