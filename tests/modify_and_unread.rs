//! Modify (`modify_c2c_msg`), unread counts and read marks (SPEC §3), purging (SPEC §1).
mod common;
use common::*;
use imstore::{EventKind, HistoryQuery, MsgElement};

#[test]
fn modify_replaces_content_in_every_layer_and_notifies_both_parties() {
    let (store, _) = store_with(&["a", "b"]);
    let da = store.connect("a", "pa").unwrap();
    let db = store.connect("b", "pb").unwrap();
    let k = send_text(&store, "a", "b", 1, "typo").msg_key.to_string();
    drain(&db);
    store
        .modify("a", "b", &k, Some(vec![MsgElement::text("fixed")]), None)
        .unwrap();
    let page = store.history(&HistoryQuery::new("a", "b", 10)).unwrap();
    assert_eq!(body_text(&page.messages[0].message), "fixed");
    assert_eq!(
        body_text(&store.device_cache("b", "pb").unwrap()[0]),
        "fixed"
    );
    assert_eq!(texts(&drain(&da)), vec!["modify:fixed"]);
    assert_eq!(texts(&drain(&db)), vec!["modify:fixed"]);
}

#[test]
fn modify_of_custom_data_keeps_the_body() {
    let (store, _) = store_with(&["a", "b"]);
    let k = send_text(&store, "a", "b", 1, "body").msg_key.to_string();
    store.modify("a", "b", &k, None, Some("cd".into())).unwrap();
    let page = store.history(&HistoryQuery::new("a", "b", 10)).unwrap();
    let c = page.messages[0].message.content.clone().unwrap();
    assert_eq!(
        (
            body_text(&page.messages[0].message).as_str(),
            c.cloud_custom_data()
        ),
        ("body", Some("cd"))
    );
}

#[test]
fn a_recalled_message_cannot_be_modified() {
    let (store, _) = store_with(&["a", "b"]);
    let k = send_text(&store, "a", "b", 1, "x").msg_key.to_string();
    store.recall(ADMIN, "a", "b", &k).unwrap();
    let err = store
        .modify("a", "b", &k, Some(vec![MsgElement::text("y")]), None)
        .unwrap_err();
    assert_eq!(err.code(), 20023);
    assert!(
        store
            .history(&HistoryQuery::new("a", "b", 10))
            .unwrap()
            .messages[0]
            .message
            .is_recalled()
    );
}

#[test]
fn modify_errors_carry_their_codes() {
    let (store, _) = store_with(&["a", "b"]);
    let body = Some(vec![MsgElement::text("y")]);
    assert_eq!(
        store
            .modify("ghost", "b", "1_2_3", body.clone(), None)
            .unwrap_err()
            .code(),
        90008
    );
    assert_eq!(
        store
            .modify("a", "ghost", "1_2_3", body.clone(), None)
            .unwrap_err()
            .code(),
        90003
    );
    assert_eq!(
        store
            .modify("a", "b", "x", body.clone(), None)
            .unwrap_err()
            .code(),
        90054
    );
    assert_eq!(
        store
            .modify("a", "b", "1_2_3", body, None)
            .unwrap_err()
            .code(),
        20022
    );
    assert_eq!(
        store
            .modify("a", "b", "1_2_3", Some(vec![]), None)
            .unwrap_err()
            .code(),
        90002
    );
}

#[test]
fn a_modify_notice_for_a_later_recalled_message_carries_no_body() {
    let (store, _) = store_with(&["a", "b"]);
    let k = send_text(&store, "a", "b", 1, "x").msg_key.to_string();
    store
        .modify("a", "b", &k, Some(vec![MsgElement::text("y")]), None)
        .unwrap();
    store.recall(ADMIN, "a", "b", &k).unwrap();
    let sub = store.connect("b", "late").unwrap();
    let events = drain(&sub);
    assert!(
        events
            .iter()
            .all(|e| matches!(e.kind, EventKind::Recalled(_))),
        "{events:?}"
    );
}

#[test]
fn unread_counts_per_peer_and_read_marks() {
    let (store, _) = store_with(&["a", "b", "c"]);
    send_text(&store, "a", "c", 1, "x");
    send_text(&store, "a", "c", 2, "y");
    send_text(&store, "b", "c", 3, "z");
    assert_eq!(store.unread("c", "a").unwrap(), 2);
    let all = store.unread_all("c").unwrap();
    assert_eq!(
        all.iter()
            .map(|(p, n)| (p.to_string(), *n))
            .collect::<Vec<_>>(),
        vec![("a".into(), 2), ("b".into(), 1)]
    );
    store.mark_read("c", "a").unwrap();
    assert_eq!(store.unread("c", "a").unwrap(), 0);
    assert_eq!(store.unread("c", "b").unwrap(), 1);
    assert_eq!(
        store.unread("a", "c").unwrap(),
        0,
        "your own messages are never unread"
    );
}

/// MsgReadTime: what was sent at or before it is read, what was sent after it is not. The
/// mark is a place in arrival order: a message sent earlier that arrived after a later one
/// stays unread until the mark passes the later one. Never moves back; the counts, the
/// history's IsPeerRead and a replay of the journal agree.
#[test]
fn a_read_mark_up_to_a_time_reads_what_was_sent_by_then() {
    let (disk, store) = on_disk(&["a", "b"]);
    let t = T0 as u32;
    let send_at = |random: u32, time: u32, text: &str| {
        let mut req = text_req("a", "b", random, text);
        req.msg_time = Some(time);
        store.send(req).unwrap().msg_key
    };
    send_at(1, t - 100, "first");
    send_at(2, t - 10, "third, sent last");
    send_at(3, t - 50, "second, arrives last");
    send_text(&store, "b", "a", 4, "b's own");
    assert_eq!(store.unread("b", "a").unwrap(), 3);

    store.mark_read_until("b", "a", t - 60).unwrap();
    assert_eq!(
        store.unread("b", "a").unwrap(),
        2,
        "only the first was sent by then"
    );
    let read = |store: &imstore::Store| -> Vec<bool> {
        let page = store.history(&HistoryQuery::new("a", "b", 10)).unwrap();
        page.messages.iter().map(|i| i.is_peer_read).collect()
    };
    // Oldest first: first (read), second (t-50), third (t-10), b's own.
    assert_eq!(read(&store)[..3], [true, false, false]);
    // Up to t-20: the second was sent by then but arrived after the third, which was not.
    store.mark_read_until("b", "a", t - 20).unwrap();
    assert_eq!(store.unread("b", "a").unwrap(), 2);
    store.mark_read_until("b", "a", t).unwrap();
    assert_eq!(store.unread("b", "a").unwrap(), 0);
    assert_eq!(read(&store)[..3], [true, true, true]);
    // An earlier time later does not take it back.
    store.mark_read_until("b", "a", t - 1000).unwrap();
    assert_eq!(store.unread("b", "a").unwrap(), 0);
    send_at(5, t - 5, "new");
    assert_eq!(store.unread("b", "a").unwrap(), 1);
    assert_eq!(store.unread_all("b").unwrap().len(), 1);
    assert_eq!(
        store.unread("a", "b").unwrap(),
        1,
        "a's own count is untouched"
    );
    let before = observe(&store, &["a", "b"]);
    drop(store);
    let store = disk.reopen();
    assert_eq!(observe(&store, &["a", "b"]), before, "replayed the same");
}

#[test]
fn mark_read_errors_carry_their_codes() {
    let (store, _) = store_with(&["a"]);
    assert_eq!(store.mark_read("ghost", "a").unwrap_err().code(), 90008);
    assert_eq!(store.mark_read("a", "ghost").unwrap_err().code(), 90003);
    assert_eq!(store.unread("ghost", "a").unwrap_err().code(), 90003);
}

#[test]
fn purge_drops_expired_inbox_entries() {
    let (store, clock) = store_with(&["a", "b"]);
    send_text(&store, "a", "b", 2, "keeps");
    let mut req = text_req("a", "b", 1, "x");
    req.lifetime = Some(10);
    store.send(req).unwrap();
    clock.advance(11);
    // The long-lived entry sits behind the expired one; purge drops only expired entries.
    let report = store.purge_expired().unwrap();
    assert_eq!(report.inbox_entries, 1);
    let sub = store.connect("b", "phone").unwrap();
    assert_eq!(texts(&drain(&sub)), vec!["msg:keeps"]);
}

/// SendMsgControl: a `NoUnread` message counts in no unread count (a recall or a read mark
/// takes nothing back for it), a `NoLastMsg` one does not become the conversation's last
/// message; both stay so through a replay of the journal and a snapshot.
#[test]
fn send_msg_control_no_unread_and_no_last_msg() {
    let (disk, store) = on_disk(&["a", "b"]);
    let send = |random: u32, text: &str, no_unread: bool, no_last_msg: bool| {
        let mut req = text_req("a", "b", random, text);
        // In history order (one second, MsgSeq after MsgSeq).
        req.msg_seq = Some(random);
        req.control = imstore::SendControl {
            no_unread,
            no_last_msg,
        };
        store.send(req).unwrap().msg_key
    };
    send(1, "counted", false, false);
    let quiet = send(2, "quiet", true, false);
    assert_eq!(
        store.unread("b", "a").unwrap(),
        1,
        "NoUnread is not counted"
    );
    send(3, "typing...", false, true);
    assert_eq!(store.unread("b", "a").unwrap(), 2);
    let last = |store: &imstore::Store| {
        let item = store.last_message("b", "a").unwrap().unwrap();
        body_text(&item.message)
    };
    assert_eq!(last(&store), "quiet", "NoLastMsg passes over itself");
    store.recall(ADMIN, "a", "b", &quiet.to_string()).unwrap();
    assert_eq!(
        store.unread("b", "a").unwrap(),
        2,
        "its recall takes nothing back"
    );
    assert_eq!(last(&store), "<recalled>");
    let before = (observe(&store, &["a", "b"]), last(&store));
    drop(store);
    let store = disk.reopen();
    assert_eq!(
        (observe(&store, &["a", "b"]), last(&store)),
        before,
        "replayed"
    );
    store.compact().unwrap();
    drop(store);
    let store = disk.reopen();
    assert_eq!(
        (observe(&store, &["a", "b"]), last(&store)),
        before,
        "restored"
    );
    store.mark_read_until("b", "a", T0 as u32).unwrap();
    assert_eq!(store.unread("b", "a").unwrap(), 0);
    send_text(&store, "a", "b", 4, "more");
    assert_eq!(store.unread("b", "a").unwrap(), 1);
}
