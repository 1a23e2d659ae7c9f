//! History (`admin_getroammsg`, SPEC §3): ranges, paging without repeats or skips, the size cap,
//! per-side views, recalled messages, read receipts and retention.
mod common;
use std::collections::HashSet;

use common::*;
use imstore::{HistoryQuery, MsgKey, SenderCopy};

fn send_at(
    store: &imstore::Store,
    from: &str,
    to: &str,
    seq: u32,
    time: u32,
    text: &str,
) -> MsgKey {
    send_rand(store, from, to, seq, seq.wrapping_mul(7), time, text)
}

fn send_rand(
    store: &imstore::Store,
    from: &str,
    to: &str,
    seq: u32,
    random: u32,
    time: u32,
    text: &str,
) -> MsgKey {
    let mut req = text_req(from, to, random, text);
    req.msg_seq = Some(seq);
    req.msg_time = Some(time);
    store.send(req).unwrap().msg_key
}

fn all_pages(store: &imstore::Store, mut q: HistoryQuery) -> Vec<Vec<MsgKey>> {
    let mut pages = Vec::new();
    loop {
        let page = store.history(&q).unwrap();
        pages.push(page.messages.iter().map(|i| i.message.key).collect());
        match q.next_page(&page) {
            Some(next) => q = next,
            None => return pages,
        }
    }
}

#[test]
fn pages_are_newest_first_across_and_oldest_first_within() {
    let (store, _) = store_with(&["a", "b"]);
    let keys: Vec<_> = (0..10)
        .map(|i| send_at(&store, "a", "b", 100 + i, 1_700_000_000 + i, "m"))
        .collect();
    let pages = all_pages(&store, HistoryQuery::new("b", "a", 4));
    assert_eq!(
        pages,
        vec![
            keys[6..10].to_vec(),
            keys[2..6].to_vec(),
            keys[0..2].to_vec()
        ]
    );
}

#[test]
fn paging_neither_repeats_nor_skips_when_many_messages_share_one_second() {
    let (store, _) = store_with(&["a", "b"]);
    let mut sent = HashSet::new();
    // 40 messages in one second, in both directions, some with equal MsgSeq.
    for i in 0..40u32 {
        let (from, to) = if i % 3 == 0 { ("b", "a") } else { ("a", "b") };
        sent.insert(send_rand(
            &store,
            from,
            to,
            i % 7,
            i,
            1_700_000_000,
            &format!("m{i}"),
        ));
    }
    assert_eq!(sent.len(), 40);
    for max_cnt in [1, 3, 7, 40] {
        let pages = all_pages(&store, HistoryQuery::new("a", "b", max_cnt));
        let seen: Vec<MsgKey> = pages.concat();
        assert_eq!(seen.len(), 40, "no repeats (MaxCnt {max_cnt})");
        assert_eq!(
            seen.iter().copied().collect::<HashSet<_>>(),
            sent,
            "no skips (MaxCnt {max_cnt})"
        );
    }
}

#[test]
fn last_msg_time_and_key_name_the_oldest_returned_and_complete_marks_the_end() {
    let (store, _) = store_with(&["a", "b"]);
    let k1 = send_at(&store, "a", "b", 1, 1_700_000_001, "x");
    let k2 = send_at(&store, "a", "b", 2, 1_700_000_002, "y");
    let page = store.history(&HistoryQuery::new("a", "b", 1)).unwrap();
    assert_eq!(
        (page.last_msg_time, page.last_msg_key, page.complete),
        (1_700_000_002, Some(k2), false)
    );
    let page = store
        .history(&HistoryQuery::new("a", "b", 1).next_page(&page).unwrap())
        .unwrap();
    assert_eq!(
        (page.last_msg_time, page.last_msg_key, page.complete),
        (1_700_000_001, Some(k1), true)
    );
}

#[test]
fn min_and_max_time_are_inclusive() {
    let (store, _) = store_with(&["a", "b"]);
    for t in 0..5u32 {
        send_at(&store, "a", "b", t, 1_700_000_000 + t, "x");
    }
    let mut q = HistoryQuery::new("a", "b", 100);
    q.min_time = 1_700_000_001;
    q.max_time = 1_700_000_003;
    let page = store.history(&q).unwrap();
    let times: Vec<u32> = page.messages.iter().map(|i| i.message.key.time()).collect();
    assert_eq!(times, vec![1_700_000_001, 1_700_000_002, 1_700_000_003]);
    assert!(page.complete);
}

#[test]
fn the_response_size_cap_splits_pages() {
    let (store, _) = store_with(&["a", "b"]);
    let big = "z".repeat(5000);
    for i in 0..6 {
        send_at(&store, "a", "b", i, 1_700_000_000 + i, &big);
    }
    let page = store.history(&HistoryQuery::new("a", "b", 100)).unwrap();
    assert_eq!(
        page.messages.len(),
        2,
        "two 5 KB messages fit in 13 KB, three do not"
    );
    assert!(!page.complete);
    assert_eq!(
        all_pages(&store, HistoryQuery::new("a", "b", 100))
            .concat()
            .len(),
        6
    );
}

/// The cap counts CloudCustomData as it goes out, escaped: 6,000 quotes are 12,000 bytes
/// on the wire, so two such messages do not fit in 13 KB (counted raw, they did).
#[test]
fn the_response_size_cap_counts_custom_data_escaped() {
    let (store, _) = store_with(&["a", "b"]);
    for i in 0..3 {
        let mut req = text_req("a", "b", i, "q");
        (req.msg_seq, req.msg_time) = (Some(i), Some(1_700_000_000 + i));
        req.cloud_custom_data = Some("\"".repeat(6000));
        store.send(req).unwrap();
    }
    let page = store.history(&HistoryQuery::new("a", "b", 100)).unwrap();
    assert_eq!(
        page.messages.len(),
        1,
        "one escaped 12 KB item fits, two do not"
    );
    assert!(!page.complete);
    assert_eq!(
        all_pages(&store, HistoryQuery::new("a", "b", 100))
            .concat()
            .len(),
        3
    );
}

#[test]
fn sync_other_machine_2_is_missing_from_the_senders_view_only() {
    let (store, _) = store_with(&["a", "b"]);
    let mut req = text_req("a", "b", 1, "x");
    req.sender_copy = SenderCopy::Nothing;
    store.send(req).unwrap();
    assert!(
        store
            .history(&HistoryQuery::new("a", "b", 10))
            .unwrap()
            .messages
            .is_empty()
    );
    assert_eq!(
        store
            .history(&HistoryQuery::new("b", "a", 10))
            .unwrap()
            .messages
            .len(),
        1
    );
}

#[test]
fn is_peer_read_reflects_read_receipts() {
    let (store, _) = store_with(&["a", "b"]);
    send_at(&store, "a", "b", 1, 1_700_000_000, "x");
    assert!(
        !store
            .history(&HistoryQuery::new("a", "b", 10))
            .unwrap()
            .messages[0]
            .is_peer_read
    );
    store.mark_read("b", "a").unwrap();
    assert!(
        store
            .history(&HistoryQuery::new("a", "b", 10))
            .unwrap()
            .messages[0]
            .is_peer_read
    );
    send_at(&store, "a", "b", 2, 1_700_000_001, "y");
    let page = store.history(&HistoryQuery::new("a", "b", 10)).unwrap();
    assert_eq!(
        page.messages
            .iter()
            .map(|i| i.is_peer_read)
            .collect::<Vec<_>>(),
        vec![true, false]
    );
}

#[test]
fn messages_past_retention_leave_history() {
    let (store, clock) = store_with_config(&["a", "b"], |c| c.with_retention_secs(3600));
    send_text(&store, "a", "b", 1, "old");
    clock.advance(1800);
    send_text(&store, "a", "b", 2, "new");
    clock.advance(1801);
    let page = store.history(&HistoryQuery::new("a", "b", 10)).unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(body_text(&page.messages[0].message), "new");
    let report = store.purge_expired().unwrap();
    assert_eq!(report.messages, 1);
    assert_eq!(
        store
            .recall(ADMIN, "a", "b", &page.messages[0].message.key.to_string())
            .map(|_| ()),
        Ok(())
    );
}

#[test]
fn unknown_operator_answers_90008_and_unknown_peer_90003() {
    let (store, _) = store_with(&["a"]);
    assert_eq!(
        store
            .history(&HistoryQuery::new("ghost", "a", 1))
            .unwrap_err()
            .code(),
        90008
    );
    assert_eq!(
        store
            .history(&HistoryQuery::new("a", "ghost", 1))
            .unwrap_err()
            .code(),
        90003
    );
}

#[test]
fn max_cnt_zero_answers_90001() {
    let (store, _) = store_with(&["a", "b"]);
    assert_eq!(
        store
            .history(&HistoryQuery::new("a", "b", 0))
            .unwrap_err()
            .code(),
        90001
    );
}

#[test]
fn paging_never_splits_two_directions_sharing_one_msgkey() {
    // The same MsgKey in both directions, then a third message with the same second and seq.
    let (store, _) = store_with(&["a", "b"]);
    let k = send_rand(&store, "b", "a", 3, 1, 1_700_000_000, "ba");
    send_rand(&store, "a", "b", 3, 9, 1_700_000_000, "between");
    assert_eq!(send_rand(&store, "a", "b", 3, 1, 1_700_000_000, "ab"), k);
    for max_cnt in [1, 2] {
        let pages = all_pages(&store, HistoryQuery::new("a", "b", max_cnt));
        assert_eq!(pages.concat().len(), 3, "MaxCnt {max_cnt}: {pages:?}");
    }
}

#[test]
fn paging_continues_past_a_twin_the_operator_cannot_see() {
    // a → b with SyncOtherMachine 2 (not in a's view), then a → b "between", then b → a
    // with the first one's MsgKey: a's pages must not end at the hidden twin and skip
    // "between".
    let (store, _) = store_with(&["a", "b"]);
    let mut req = text_req("a", "b", 1, "hidden");
    (req.msg_seq, req.msg_time) = (Some(3), Some(1_700_000_000));
    req.sender_copy = SenderCopy::Nothing;
    let k = store.send(req).unwrap().msg_key;
    send_rand(&store, "a", "b", 3, 9, 1_700_000_000, "between");
    assert_eq!(send_rand(&store, "b", "a", 3, 1, 1_700_000_000, "ba"), k);
    for max_cnt in [1, 2] {
        let pages = all_pages(&store, HistoryQuery::new("a", "b", max_cnt));
        assert_eq!(pages.concat().len(), 2, "MaxCnt {max_cnt}: {pages:?}");
    }
    // b sees all three.
    let pages = all_pages(&store, HistoryQuery::new("b", "a", 1));
    assert_eq!(pages.concat().len(), 3, "{pages:?}");
}
