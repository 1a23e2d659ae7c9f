//! Send and batch send (SPEC §1, §3): fields, defaults, errors, SyncOtherMachine, lifetimes.
mod common;
use common::*;
use imstore::{
    BatchSendRequest, HistoryQuery, MAX_BODY_BYTES, MsgElement, SendRequest, SenderCopy,
};

#[test]
fn send_returns_msg_time_and_key_from_the_request() {
    let (store, _) = store_with(&["vinson", "dramon"]);
    let mut req = text_req("vinson", "dramon", 833502, "hi");
    req.msg_seq = Some(31906);
    // An hour before the store's clock (T0): within roaming retention.
    req.msg_time = Some(1_699_996_400);
    let r = store.send(req).unwrap();
    assert_eq!(r.msg_key.to_string(), "31906_833502_1699996400");
    assert_eq!(r.msg_time, 1_699_996_400);
}

#[test]
fn absent_msg_time_is_now_and_absent_msg_seq_is_random() {
    let (store, _) = store_with(&["a", "b"]);
    let r1 = send_text(&store, "a", "b", 7, "x");
    let r2 = send_text(&store, "a", "b", 7, "y");
    assert_eq!(r1.msg_time as u64, T0);
    assert_ne!(
        r1.msg_key.seq(),
        r2.msg_key.seq(),
        "two random MsgSeq differ"
    );
}

#[test]
fn absent_from_account_sends_as_the_administrator() {
    let (store, _) = store_with(&["dramon"]);
    let mut req = text_req("x", "dramon", 1, "notice");
    req.from = None;
    store.send(req).unwrap();
    let page = store
        .history(&HistoryQuery::new("dramon", ADMIN, 10))
        .unwrap();
    assert_eq!(&*page.messages[0].message.from, ADMIN);
}

#[test]
fn unknown_from_answers_90008_and_unknown_to_answers_90012() {
    let (store, _) = store_with(&["a"]);
    assert_eq!(
        store
            .send(text_req("ghost", "a", 1, "x"))
            .unwrap_err()
            .code(),
        90008
    );
    assert_eq!(
        store
            .send(text_req("a", "ghost", 1, "x"))
            .unwrap_err()
            .code(),
        // Tencent's sendmsg: 90012, To_Account not registered (90003: missing or not a string).
        90012
    );
}

#[test]
fn sending_to_yourself_answers_90003() {
    let (store, _) = store_with(&["a"]);
    assert_eq!(
        store.send(text_req("a", "a", 1, "x")).unwrap_err().code(),
        90003
    );
}

#[test]
fn empty_body_answers_90002() {
    let (store, _) = store_with(&["a", "b"]);
    assert_eq!(
        store
            .send(SendRequest::new("a", "b", 1, vec![]))
            .unwrap_err()
            .code(),
        90002
    );
}

#[test]
fn body_over_12kb_answers_93000_and_stores_nothing() {
    let (store, _) = store_with(&["a", "b"]);
    let big = "x".repeat(MAX_BODY_BYTES);
    assert_eq!(
        store.send(text_req("a", "b", 1, &big)).unwrap_err().code(),
        93000
    );
    let mut req = text_req("a", "b", 1, "small");
    req.cloud_custom_data = Some(big);
    assert_eq!(store.send(req).unwrap_err().code(), 93000);
    assert!(
        store
            .history(&HistoryQuery::new("a", "b", 10))
            .unwrap()
            .messages
            .is_empty()
    );
}

#[test]
fn lifetime_over_604800_answers_90026() {
    let (store, _) = store_with(&["a", "b"]);
    let mut req = text_req("a", "b", 1, "x");
    req.lifetime = Some(604_801);
    assert_eq!(store.send(req).unwrap_err().code(), 90026);
}

#[test]
fn repeated_send_is_idempotent() {
    let (store, _) = store_with(&["a", "b"]);
    let mut req = text_req("a", "b", 5, "once");
    req.msg_seq = Some(9);
    let r1 = store.send(req.clone()).unwrap();
    let r2 = store.send(req).unwrap();
    assert_eq!(r1, r2);
    assert_eq!(
        store
            .history(&HistoryQuery::new("b", "a", 10))
            .unwrap()
            .messages
            .len(),
        1
    );
    assert_eq!(store.unread("b", "a").unwrap(), 1);
    let sub = store.connect("b", "phone").unwrap();
    assert_eq!(drain(&sub).len(), 1);
}

/// A send repeated seconds later without a MsgTimeStamp (the server dates each attempt, so
/// the MsgKey differs): within 120 s, from the same sender with the same MsgSeq, MsgRandom
/// and content, it is a retry and answered as the first — Tencent's deduplication. Other
/// content, another sender, a recalled first, or past the window: a new message (a send
/// is never dropped for a retry of a message it no longer matches). A batch send is never
/// taken for a retry (its answer names one MsgKey for every recipient). The journal replays
/// to the same.
#[test]
fn a_send_retried_under_a_later_time_is_stored_once() {
    let (disk, store) = on_disk(&["a", "b"]);
    let clock = &disk.clock;
    let send = |store: &imstore::Store, from: &str, to: &str, text: &str| {
        let mut req = text_req(from, to, 5, text);
        req.msg_seq = Some(9);
        store.send(req).unwrap()
    };
    let first = send(&store, "a", "b", "once");
    clock.advance(30);
    assert_eq!(send(&store, "a", "b", "once"), first, "a retry 30 s later");
    let mut batch = batch("a", vec!["b".into()]);
    batch.msg_seq = Some(9);
    batch.msg_random = 5;
    batch.body = vec![imstore::MsgElement::text("once")];
    let batched = store.batch_send(batch).unwrap();
    assert!(batched.errors.is_empty());
    assert_ne!(
        batched.msg_key, first.msg_key,
        "a batch send is its own message"
    );
    clock.advance(1);
    let other = send(&store, "a", "b", "something else");
    assert_ne!(other.msg_key, first.msg_key, "other content: a new message");
    let reply = send(&store, "b", "a", "once");
    assert_ne!(
        reply.msg_key, first.msg_key,
        "another sender: a new message"
    );
    store
        .recall(ADMIN, "a", "b", &other.msg_key.to_string())
        .unwrap();
    clock.advance(1);
    let again = send(&store, "a", "b", "something else");
    assert_ne!(
        again.msg_key, other.msg_key,
        "its first recalled: a new message"
    );
    let history = |store: &imstore::Store| {
        store
            .history(&HistoryQuery::new("b", "a", 10))
            .unwrap()
            .messages
    };
    assert_eq!(history(&store).len(), 5);
    clock.advance(130); // 162 s after the first, 132 after the batch's copy
    let later = send(&store, "a", "b", "once");
    assert_ne!(
        later.msg_key, first.msg_key,
        "past the window: a new message"
    );
    assert_eq!(history(&store).len(), 6);
    let before = observe(&store, &["a", "b"]);
    drop(store);
    let store = disk.reopen();
    assert_eq!(observe(&store, &["a", "b"]), before);
}

/// Two sends alike within 120 s that were both stored (batch sends, or a journal written
/// before the retry rule) replay as both: a replay never takes a record for a retry, since
/// each record is a send that was applied as new. (Folding the second into the first would
/// shift every later inbox number, and a recall of the second would fail the open.)
#[test]
fn sends_alike_that_were_both_stored_replay_as_both() {
    let (disk, store) = on_disk(&["a", "b"]);
    let clock = &disk.clock;
    let alike = || {
        let mut req = batch("a", vec!["b".into()]);
        (req.msg_seq, req.msg_random) = (Some(9), 5);
        store.batch_send(req).unwrap().msg_key
    };
    alike();
    clock.advance(30);
    let second = alike();
    store.recall(ADMIN, "a", "b", &second.to_string()).unwrap();
    let before = observe(&store, &["a", "b"]);
    drop(store);
    let store = disk.reopen();
    assert_eq!(observe(&store, &["a", "b"]), before);
}

/// A retry dated a little before its first attempt (in a cluster each attempt is dated by the
/// node that took it, and their clocks differ) is still a retry; one dated much earlier is a
/// new message.
#[test]
fn a_retry_dated_a_little_earlier_is_still_a_retry() {
    let (store, _) = store_with(&["a", "b"]);
    let send = |time: u32| {
        let mut req = text_req("a", "b", 5, "skewed");
        (req.msg_seq, req.msg_time) = (Some(7), Some(time));
        store.send(req).unwrap().msg_key
    };
    let t = T0 as u32;
    let first = send(t);
    assert_eq!(send(t - 2), first, "2 s earlier: the same send");
    assert_ne!(send(t - 60), first, "a minute earlier: another message");
}

/// A conversation with many messages in a retry's window (a burst, all in one second) is
/// searched second by second: a retry among them is still found, others are not.
#[test]
fn a_retry_is_found_among_many_messages_of_its_window() {
    let (store, clock) = store_with(&["a", "b"]);
    let mut keys = Vec::new();
    for i in 0..300u32 {
        let mut req = text_req("a", "b", 1000 + i, &format!("burst {i}"));
        req.msg_seq = Some(i);
        keys.push(store.send(req).unwrap().msg_key);
    }
    clock.advance(5);
    let mut retry = text_req("a", "b", 1000 + 123, "burst 123");
    retry.msg_seq = Some(123);
    assert_eq!(store.send(retry).unwrap().msg_key, keys[123]);
    let mut new = text_req("a", "b", 1000 + 124, "not burst 124");
    new.msg_seq = Some(124);
    assert_ne!(store.send(new).unwrap().msg_key, keys[124]);
    assert_eq!(store.unread("b", "a").unwrap(), 301);
}

#[test]
fn same_key_in_the_other_direction_is_a_different_message() {
    let (store, _) = store_with(&["a", "b"]);
    let mut req = text_req("a", "b", 5, "ab");
    req.msg_seq = Some(9);
    store.send(req).unwrap();
    let mut req = text_req("b", "a", 5, "ba");
    req.msg_seq = Some(9);
    store.send(req).unwrap();
    assert_eq!(
        store
            .history(&HistoryQuery::new("a", "b", 10))
            .unwrap()
            .messages
            .len(),
        2
    );
}

fn sync_case(copy: SenderCopy) -> (usize, usize, usize) {
    let (store, _) = store_with(&["a", "b"]);
    let other = store.connect("a", "laptop").unwrap();
    let phone = store.connect("a", "phone").unwrap(); // the sending device, online
    let mut req = text_req("a", "b", 1, "x");
    req.sender_copy = copy;
    req.from_device = Some("phone".into());
    store.send(req).unwrap();
    let sender_roaming = store
        .history(&HistoryQuery::new("a", "b", 10))
        .unwrap()
        .messages
        .len();
    let recipient_roaming = store
        .history(&HistoryQuery::new("b", "a", 10))
        .unwrap()
        .messages
        .len();
    let phone_cache = store.device_cache("a", "phone").unwrap().len();
    assert_eq!(phone_cache, 1, "the sending device keeps its message");
    assert_eq!(recipient_roaming, 1);
    (sender_roaming, drain(&other).len(), drain(&phone).len())
}

#[test]
fn sync_other_machine_absent_keeps_the_sender_roaming_only() {
    assert_eq!(sync_case(SenderCopy::Roaming), (1, 0, 0));
}

#[test]
fn sync_other_machine_1_reaches_the_senders_other_devices() {
    // The laptop receives it; the phone that sent it is not sent it back.
    assert_eq!(sync_case(SenderCopy::RoamingAndDevices), (1, 1, 0));
}

#[test]
fn sync_other_machine_2_keeps_it_off_the_senders_side() {
    assert_eq!(sync_case(SenderCopy::Nothing), (0, 0, 0));
}

#[test]
fn lifetime_0_reaches_only_connected_devices() {
    let (store, _) = store_with(&["a", "b"]);
    let online = store.connect("b", "online").unwrap();
    drain(&online);
    let mut req = text_req("a", "b", 1, "ephemeral");
    req.lifetime = Some(0);
    store.send(req).unwrap();
    assert_eq!(texts(&drain(&online)), vec!["msg:ephemeral"]);
    let later = store.connect("b", "later").unwrap();
    assert!(
        drain(&later).is_empty(),
        "an offline device never gets an online-only message"
    );
    // It is still history.
    assert_eq!(
        store
            .history(&HistoryQuery::new("b", "a", 10))
            .unwrap()
            .messages
            .len(),
        1
    );
}

/// A device that was there when an online-only message arrived, received it and did not
/// confirm it, and came back within the grace online-only entries are kept for, is sent it
/// again (R7: everything not confirmed). One back later is not, nor is a new device.
#[test]
fn an_online_only_message_not_confirmed_is_sent_again_to_a_device_back_soon() {
    let (store, clock) = store_with(&["a", "b"]);
    let online = store.connect("b", "phone").unwrap();
    let away = store.connect("b", "tablet").unwrap();
    let mut req = text_req("a", "b", 1, "ring");
    req.lifetime = Some(0);
    store.send(req).unwrap();
    assert_eq!(texts(&drain(&online)), vec!["msg:ring"]);
    assert_eq!(texts(&drain(&away)), vec!["msg:ring"]);
    drop(online); // the network flapped before the client confirmed it
    drop(away);
    clock.advance(2);
    let back = store.connect("b", "phone").unwrap();
    assert_eq!(texts(&drain(&back)), vec!["msg:ring"], "sent again");
    back.ack(1).unwrap();
    drop(back);
    let back = store.connect("b", "phone").unwrap();
    assert!(drain(&back).is_empty(), "confirmed: not again");
    clock.advance(120);
    let later = store.connect("b", "tablet").unwrap();
    assert!(drain(&later).is_empty(), "past the grace: gone");
    assert!(drain(&store.connect("b", "new").unwrap()).is_empty());
}

#[test]
fn inbox_entries_expire_after_their_lifetime() {
    let (store, clock) = store_with(&["a", "b"]);
    let mut req = text_req("a", "b", 1, "short");
    req.lifetime = Some(60);
    store.send(req).unwrap();
    send_text(&store, "a", "b", 2, "long");
    clock.advance(61);
    let sub = store.connect("b", "phone").unwrap();
    assert_eq!(texts(&drain(&sub)), vec!["msg:long"]);
}

#[test]
fn batch_send_over_500_recipients_answers_90011() {
    let (store, _) = store_with(&["a"]);
    let req = batch("a", (0..501).map(|i| format!("u{i}")).collect());
    assert_eq!(store.batch_send(req).unwrap_err().code(), 90011);
}

fn batch(from: &str, to: Vec<String>) -> BatchSendRequest {
    BatchSendRequest {
        from: Some(from.into()),
        to,
        msg_random: 42,
        msg_seq: None,
        msg_time: None,
        body: vec![MsgElement::text("hello all")],
        cloud_custom_data: None,
        sender_copy: SenderCopy::Roaming,
        lifetime: None,
        control: Default::default(),
    }
}

#[test]
fn batch_send_uses_one_key_and_lists_unknown_recipients_with_70107() {
    let (store, _) = store_with(&["a", "b", "c"]);
    let r = store
        .batch_send(batch("a", vec!["b".into(), "ghost".into(), "c".into()]))
        .unwrap();
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].0, "ghost");
    assert_eq!(r.errors[0].1.code(), 70107);
    for peer in ["b", "c"] {
        let page = store.history(&HistoryQuery::new(peer, "a", 10)).unwrap();
        assert_eq!(page.messages[0].message.key, r.msg_key);
    }
}

#[test]
fn batch_send_with_unknown_sender_answers_90008() {
    let (store, _) = store_with(&["b"]);
    assert_eq!(
        store
            .batch_send(batch("ghost", vec!["b".into()]))
            .unwrap_err()
            .code(),
        90008
    );
}

#[test]
fn every_element_type_round_trips_tencent_json() {
    let json = r#"[
      {"MsgType":"TIMTextElem","MsgContent":{"Text":"hi"}},
      {"MsgType":"TIMLocationElem","MsgContent":{"Desc":"office","Latitude":22.5,"Longitude":113.9}},
      {"MsgType":"TIMFaceElem","MsgContent":{"Index":1,"Data":"content"}},
      {"MsgType":"TIMCustomElem","MsgContent":{"Data":"d","Desc":"notification","Ext":"url","Sound":"dingdong.aiff"}},
      {"MsgType":"TIMSoundElem","MsgContent":{"Url":"https://x/s","UUID":"u","Size":10,"Second":3,"Download_Flag":2}},
      {"MsgType":"TIMImageElem","MsgContent":{"UUID":"1853095_D61040894AC3DE44CDFFFB3EC7EB720F","ImageFormat":1,
        "ImageInfoArray":[{"Type":1,"Size":1853095,"Width":2448,"Height":3264,"URL":"http://x/1"}]}},
      {"MsgType":"TIMFileElem","MsgContent":{"Url":"https://x/f","UUID":"f","FileSize":1773552,"FileName":"file:///f.txt","Download_Flag":2}},
      {"MsgType":"TIMVideoFileElem","MsgContent":{"VideoUrl":"https://x/v","VideoUUID":"v","VideoSize":1,"VideoSecond":5,
        "VideoFormat":"mp4","VideoDownloadFlag":2,"ThumbUrl":"https://x/t","ThumbUUID":"t","ThumbSize":1,
        "ThumbWidth":2,"ThumbHeight":3,"ThumbFormat":"JPG","ThumbDownloadFlag":2}}
    ]"#;
    let body: Vec<MsgElement> = serde_json::from_str(json).unwrap();
    assert_eq!(body.len(), 8);
    let again: Vec<MsgElement> =
        serde_json::from_str(&serde_json::to_string(&body).unwrap()).unwrap();
    assert_eq!(body, again);
    let value: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&body).unwrap()).unwrap();
    let original: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(value, original, "field names and values survive exactly");
    let (store, _) = store_with(&["a", "b"]);
    store
        .send(imstore::SendRequest::new("a", "b", 1, body))
        .unwrap();
}

#[test]
fn malformed_elements_are_rejected_by_serde() {
    for bad in [
        r#"[{"MsgType":"TIMTextElem","MsgContent":{}}]"#,
        r#"[{"MsgType":"TIMNopeElem","MsgContent":{"Text":"x"}}]"#,
        r#"[{"MsgType":"TIMLocationElem","MsgContent":{"Latitude":"north","Longitude":1}}]"#,
    ] {
        assert!(
            serde_json::from_str::<Vec<MsgElement>>(bad).is_err(),
            "{bad}"
        );
    }
}
