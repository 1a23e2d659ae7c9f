use crate::message::ARRIVAL_LIMIT;
use crate::{Config, HistoryQuery, ManualClock, MsgElement, SendRequest, Store, UserId};

/// Every change that moves a conversation's messages — its first, its buffer made and
/// grown, a purge down to one and to none — leaves where they now are in its table slot
/// (`Store::rehint`), for requests to start loading them with the conversation.
#[test]
fn the_conversations_slot_says_where_its_messages_are() {
    let clock = ManualClock::new(1_700_000_000);
    let store = Store::in_memory(Config::default().with_clock(clock.clone())).unwrap();
    store.import_accounts(&["where-a", "where-b"]).unwrap();
    let (a, b) = (
        UserId::new("where-a").unwrap(),
        UserId::new("where-b").unwrap(),
    );
    let hints = || {
        let (key, conv) = store.conversation_keyed(&a, &b).unwrap();
        let slot = store.inner.conversations.get_hinted(&key).unwrap().1;
        (slot, conv.lock().hint())
    };
    let send = |seq: u32, time: u32| {
        let mut req = SendRequest::new("where-a", "where-b", 1, vec![MsgElement::text("x")]);
        (req.msg_seq, req.msg_time) = (Some(seq), Some(time));
        store.send(req).unwrap();
    };
    let mut seen = Vec::new();
    // One message (its record), then buffers of 2, 4 and 8 (each a new one).
    for seq in 1..=5 {
        send(seq, 1_700_000_000 - 100 + seq);
        let (slot, now) = hints();
        assert_ne!(now, 0);
        assert_eq!(slot, now, "after message {seq}");
        seen.push(now);
    }
    seen.dedup();
    assert_eq!(
        seen.len(),
        4,
        "the record, then buffers of 2, 4 and 8: {seen:x?}"
    );
    // Purged down to the newest message, kept in place; then to none.
    // Retention: the default 7 days.
    clock.set(1_700_000_000 + 604_800 - 96 + 1);
    store.purge_expired().unwrap();
    let (slot, now) = hints();
    assert!(now != 0 && !seen.contains(&now), "{now:x}");
    assert_eq!(slot, now);
    clock.advance(100);
    store.purge_expired().unwrap();
    assert_eq!(hints(), (0, 0));
}

#[test]
fn a_conversation_out_of_arrival_numbers_refuses_sends_with_91000_and_loses_nothing() {
    let clock = ManualClock::new(1_700_000_000);
    let store = Store::in_memory(Config::default().with_clock(clock)).unwrap();
    store.import_accounts(&["arrival-a", "arrival-b"]).unwrap();
    let send = |seq: u32| {
        let mut req = SendRequest::new("arrival-a", "arrival-b", 1, vec![MsgElement::text("x")]);
        req.msg_seq = Some(seq);
        store.send(req)
    };
    send(1).unwrap();
    let (a, b) = (
        UserId::new("arrival-a").unwrap(),
        UserId::new("arrival-b").unwrap(),
    );
    store
        .conversation(&a, &b)
        .unwrap()
        .lock()
        .set_next_arrival(ARRIVAL_LIMIT - 1);
    // The last number is taken, and kept whole in the record (history orders by it).
    send(2).unwrap();
    let err = send(3).unwrap_err();
    assert_eq!(err.code(), 91000, "{err}");
    let page = store
        .history(&HistoryQuery::new("arrival-b", "arrival-a", 10))
        .unwrap();
    let seqs: Vec<u32> = page.messages.iter().map(|m| m.message.key.seq()).collect();
    assert_eq!(seqs.len(), 2, "the refused send stored nothing");
    assert!(seqs.contains(&1) && seqs.contains(&2));
    assert_eq!(store.unread("arrival-b", "arrival-a").unwrap(), 2);
}

/// A purge (of an inbox, of idle devices) chooses a live account, then waits for its lock,
/// which a delete may hold; a read mark does not lock its peer, whom a delete may take
/// meanwhile. Their records then follow the delete's. Such a journal — versions before the
/// purges checked under the lock wrote them — must replay: the purges changed nothing live (a
/// deleted account's state is empty), and the read mark applied to the conversation, which
/// stays. Before, the open failed ("account not found") and so did every checkpoint.
#[test]
fn purges_and_a_read_mark_recorded_after_a_delete_replay() {
    use crate::op::Op;
    use crate::store::Mode;
    let clock = ManualClock::new(1_700_000_000);
    let dir = tempfile::tempdir().unwrap();
    let config = || Config::default().with_clock(clock.clone());
    let store = Store::open(dir.path(), config()).unwrap();
    store.import_accounts(&["gone-a", "gone-b"]).unwrap();
    let phone = store.connect("gone-a", "phone").unwrap();
    store.disconnect(phone).unwrap();
    for seq in 1..=2 {
        let mut req = SendRequest::new("gone-a", "gone-b", seq, vec![MsgElement::text("x")]);
        req.msg_seq = Some(seq);
        store.send(req).unwrap();
    }
    assert_eq!(store.unread("gone-b", "gone-a").unwrap(), 2);
    store.delete_account("gone-a").unwrap();
    let (a, b) = (
        UserId::new("gone-a").unwrap(),
        UserId::new("gone-b").unwrap(),
    );
    // Live, each would now be refused; recorded as the races recorded them.
    let at = 1_700_000_000 + 10 * 86_400;
    let ops = [
        Op::PurgeInbox {
            account: a.clone(),
            at,
            retention: Some(86_400),
        },
        Op::ForgetDevices {
            account: a.clone(),
            devices: vec!["phone".into()],
            at,
            idle: Some(60),
        },
        Op::SetRead {
            reader: b.clone(),
            peer: a.clone(),
            at: 1_700_000_000,
            origin: None,
            until: None,
        },
    ];
    // Live, the purges are refused now (the account is gone). A read mark naming it is
    // accepted (their conversation stays, and b's unread count with it must be clearable).
    for op in &ops[..2] {
        assert!(store.apply(op, Mode::Live).is_err(), "{op:?}");
    }
    let mut ticket = 0;
    for op in &ops {
        ticket = store.record(op, Mode::Live).unwrap();
    }
    store.durable(ticket).unwrap();
    drop(store);
    let store = Store::open(dir.path(), config()).expect("the journal replays");
    assert!(!store.account_exists("gone-a").unwrap());
    assert_eq!(
        store.unread("gone-b", "gone-a").unwrap(),
        0,
        "the read mark"
    );
    store.compact().expect("a checkpoint replays it too");
}

/// A read mark that raced its peer's delete is recorded after it; when the two never wrote
/// to each other, a snapshot taken between the two records holds the peer only as deleted.
/// The mark must replay on that snapshot as it does from the start of the journal: before,
/// the snapshot kept no cell for a deleted account, the replay refused the mark ("account
/// not found"), and every later checkpoint and open failed.
#[test]
fn a_read_mark_after_its_peers_delete_replays_on_a_snapshot() {
    use crate::op::Op;
    use crate::store::Mode;
    let clock = ManualClock::new(1_700_000_000);
    let dir = tempfile::tempdir().unwrap();
    let config = || Config::default().with_clock(clock.clone());
    let store = Store::open(dir.path(), config()).unwrap();
    store.import_accounts(&["lone-r", "lone-p"]).unwrap();
    store.delete_account("lone-p").unwrap();
    store.compact().unwrap();
    let op = Op::SetRead {
        reader: UserId::new("lone-r").unwrap(),
        peer: UserId::new("lone-p").unwrap(),
        at: 1_700_000_000,
        origin: None,
        until: None,
    };
    // Live it is refused now (no conversation is left to read); recorded as the race did.
    assert!(store.apply(&op, Mode::Live).is_err());
    let ticket = store.record(&op, Mode::Live).unwrap();
    store.durable(ticket).unwrap();
    store.compact().expect("a checkpoint replays the mark");
    send_between(&store, "lone-r");
    drop(store);
    let store = Store::open(dir.path(), config()).expect("the store opens");
    assert!(!store.account_exists("lone-p").unwrap());
    assert!(store.account_exists("lone-r").unwrap());
    // And with the mark in the journal after a snapshot that holds the peer only as deleted.
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    let ticket = store.record(&op, Mode::Live).unwrap();
    store.durable(ticket).unwrap();
    drop(store);
    Store::open(dir.path(), config()).expect("the store opens again");
}

/// Something after the mark, so that the next open replays past it.
fn send_between(store: &Store, account: &str) {
    store.import_account("lone-x").unwrap();
    store
        .send(SendRequest::new(
            account,
            "lone-x",
            1,
            vec![MsgElement::text("after")],
        ))
        .unwrap();
}
