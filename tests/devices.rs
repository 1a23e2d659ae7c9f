//! Devices and delivery (SPEC §1, R7): replay on (re)connect from the confirmed cursor, acks,
//! slow subscribers, bounded and forgotten devices, bounded caches, async reading.
mod common;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::*;

#[test]
fn a_new_device_starts_at_the_oldest_retained_entry() {
    let (store, _) = store_with(&["a", "b"]);
    send_text(&store, "a", "b", 1, "one");
    send_text(&store, "a", "b", 2, "two");
    let sub = store.connect("b", "new").unwrap();
    assert_eq!(texts(&drain(&sub)), vec!["msg:one", "msg:two"]);
}

#[test]
fn a_connected_device_receives_new_entries_live_in_order() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "phone").unwrap();
    for i in 0..5 {
        send_text(&store, "a", "b", i, &format!("m{i}"));
    }
    let seqs: Vec<u64> = drain(&sub).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
}

#[test]
fn reconnect_resends_everything_not_acknowledged() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "phone").unwrap();
    send_text(&store, "a", "b", 1, "one");
    send_text(&store, "a", "b", 2, "two");
    assert_eq!(texts(&drain(&sub)), vec!["msg:one", "msg:two"]);
    sub.ack(1).unwrap(); // the client confirmed "one" only
    store.disconnect(sub).unwrap();
    send_text(&store, "a", "b", 3, "three");
    let sub = store.connect("b", "phone").unwrap();
    assert_eq!(texts(&drain(&sub)), vec!["msg:two", "msg:three"]);
}

#[test]
fn reconnect_without_a_resume_position_after_reading_nothing_receives_everything() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "phone").unwrap();
    for i in 0..5000 {
        send_text(&store, "a", "b", i, &format!("m{i}"));
    }
    drop(sub); // read nothing, confirmed nothing
    let sub = store.connect("b", "phone").unwrap();
    assert_eq!(drain(&sub).len(), 5000);
    assert_eq!(store.device_cursor("b", "phone").unwrap(), 0);
}

#[test]
fn receiving_does_not_move_the_cursor_only_acks_do() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "phone").unwrap();
    for i in 0..3 {
        send_text(&store, "a", "b", i, &format!("m{i}"));
    }
    assert_eq!(drain(&sub).len(), 3);
    assert_eq!(store.device_cursor("b", "phone").unwrap(), 0);
    sub.ack(2).unwrap();
    assert_eq!(store.device_cursor("b", "phone").unwrap(), 2);
    sub.ack(1).unwrap(); // cumulative: never moves back
    assert_eq!(store.device_cursor("b", "phone").unwrap(), 2);
    sub.ack(99).unwrap(); // no further than the inbox goes
    assert_eq!(store.device_cursor("b", "phone").unwrap(), 3);
}

/// A session's ack confirms no further than the session handed out: an entry appended after
/// is still sent after a reconnect, whatever number the client confirmed.
#[test]
fn an_ack_past_what_the_session_handed_out_confirms_only_what_it_did() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "phone").unwrap();
    send_text(&store, "a", "b", 1, "one");
    send_text(&store, "a", "b", 2, "two");
    assert_eq!(drain(&sub).len(), 2);
    send_text(&store, "a", "b", 3, "three"); // not handed out yet
    sub.ack(3).unwrap();
    assert_eq!(store.device_cursor("b", "phone").unwrap(), 2);
    drop(sub);
    let sub = store.connect("b", "phone").unwrap();
    assert_eq!(texts(&drain(&sub)), vec!["msg:three"]);
    sub.ack(3).unwrap();
    assert_eq!(store.device_cursor("b", "phone").unwrap(), 3);
}

#[test]
fn connect_after_resumes_from_a_client_supplied_sequence_number_and_confirms_it() {
    let (store, _) = store_with(&["a", "b"]);
    for i in 0..4 {
        send_text(&store, "a", "b", i, &format!("m{i}"));
    }
    let sub = store.connect_after("b", "sse", 2).unwrap();
    assert_eq!(
        drain(&sub).iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(store.device_cursor("b", "sse").unwrap(), 2);
}

/// A resume position past the inbox's end — the store's data is older than the client's (a
/// backup restored) — confirms nothing: the subscription starts from the device's cursor and
/// says so (`reset`), so that the entries after it, numbered since under numbers the client
/// may have seen, are not lost. Replayed alike. A position within the inbox is no reset.
#[test]
fn a_resume_position_past_the_inbox_confirms_nothing_and_resets() {
    let (disk, store) = on_disk(&["a", "b"]);
    for i in 0..3 {
        send_text(&store, "a", "b", i, &format!("m{i}"));
    }
    let sub = store.connect("b", "phone").unwrap();
    assert_eq!(drain(&sub).len(), 3);
    sub.ack(1).unwrap();
    assert_eq!(sub.reset(), None);
    drop(sub);

    let sub = store.connect_after("b", "phone", 10).unwrap();
    assert_eq!(sub.reset(), Some(1));
    let seqs = |sub: &imstore::Subscription| drain(sub).iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&sub), [2, 3]);
    assert_eq!(store.device_cursor("b", "phone").unwrap(), 1);
    drop(sub);
    // A device never seen here starts at the oldest.
    let sub = store.connect_after("b", "tablet", 10).unwrap();
    assert_eq!(sub.reset(), Some(0));
    assert_eq!(seqs(&sub), [1, 2, 3]);
    drop(sub);
    // An ack past the inbox's end (over REST, say) confirms nothing either.
    store.ack("b", "phone", 10).unwrap();
    assert_eq!(store.device_cursor("b", "phone").unwrap(), 1);
    store.close().unwrap();

    let store = disk.reopen();
    assert_eq!(
        store.device_cursor("b", "phone").unwrap(),
        1,
        "replayed alike"
    );
    assert_eq!(store.device_cursor("b", "tablet").unwrap(), 0);
    let sub = store.connect_after("b", "phone", 3).unwrap();
    assert_eq!(sub.reset(), None);
    assert!(seqs(&sub).is_empty());
    assert_eq!(store.device_cursor("b", "phone").unwrap(), 3);
}

#[test]
fn a_store_level_ack_moves_the_cursor_like_post_ack() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "sse").unwrap();
    send_text(&store, "a", "b", 1, "one");
    drain(&sub);
    store.ack("b", "sse", 1).unwrap();
    assert_eq!(store.device_cursor("b", "sse").unwrap(), 1);
    assert_eq!(store.ack("b", "nope", 1).unwrap_err().code(), 90001);
}

#[test]
fn a_slow_subscriber_never_blocks_writers_and_loses_nothing() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "slow").unwrap();
    // 100 sends with nobody reading: nothing is queued per device, the writer never waits.
    for i in 0..100 {
        send_text(&store, "a", "b", i, &format!("m{i}"));
    }
    let got = texts(&drain(&sub));
    let want: Vec<String> = (0..100).map(|i| format!("msg:m{i}")).collect();
    assert_eq!(got, want);
    send_text(&store, "a", "b", 100, "m100");
    assert_eq!(texts(&drain(&sub)), vec!["msg:m100"]);
}

#[test]
fn a_blocked_receiver_is_woken_by_a_send_from_another_thread() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "phone").unwrap();
    std::thread::scope(|s| {
        let reader = s.spawn(|| sub.recv().unwrap());
        send_text(&store, "a", "b", 1, "wake");
        assert_eq!(texts(&[reader.join().unwrap()]), vec!["msg:wake"]);
    });
    assert_eq!(sub.recv_timeout(Duration::from_millis(1)).unwrap(), None);
}

/// A waker that counts its wake-ups: enough to drive a future by hand.
struct Count(std::sync::atomic::AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn next_batch_is_a_future_woken_by_a_send() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "phone").unwrap();
    let count = Arc::new(Count(Default::default()));
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(sub.next_batch());
    assert!(
        fut.as_mut().poll(&mut cx).is_pending(),
        "nothing to read yet"
    );
    send_text(&store, "a", "b", 1, "async");
    assert!(
        count.0.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the send woke it"
    );
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(events)) => assert_eq!(texts(&events), vec!["msg:async"]),
        other => panic!("expected the message, got {other:?}"),
    }
}

#[test]
fn connecting_again_ends_the_older_subscription() {
    let (store, _) = store_with(&["a", "b"]);
    let old = store.connect("b", "phone").unwrap();
    let new = store.connect("b", "phone").unwrap();
    send_text(&store, "a", "b", 1, "x");
    assert!(old.try_recv().is_err());
    assert_eq!(texts(&drain(&new)), vec!["msg:x"]);
}

#[test]
fn the_device_cache_is_bounded_and_keeps_the_newest() {
    let (store, _) = store_with_config(&["a", "b"], |c| c.with_cache_capacity(3));
    let sub = store.connect("b", "phone").unwrap();
    for i in 0..5 {
        send_text(&store, "a", "b", i, &format!("m{i}"));
    }
    drain(&sub);
    let cache: Vec<String> = store
        .device_cache("b", "phone")
        .unwrap()
        .iter()
        .map(body_text)
        .collect();
    assert_eq!(cache, vec!["m2", "m3", "m4"]);
    drop(sub);
    assert!(
        store.device_cache("b", "phone").unwrap().is_empty(),
        "a disconnected device holds no cache here"
    );
}

#[test]
fn invalid_device_ids_are_refused_with_90001() {
    let (store, _) = store_with(&["a"]);
    assert_eq!(store.connect("a", "").unwrap_err().code(), 90001);
    assert_eq!(
        store.connect("a", &"d".repeat(65)).unwrap_err().code(),
        90001
    );
    assert_eq!(store.connect("ghost", "d").unwrap_err().code(), 70107);
}

#[test]
fn devices_lists_known_devices_and_their_connection() {
    let (store, _) = store_with(&["a"]);
    let sub = store.connect("a", "phone").unwrap();
    store
        .disconnect(store.connect("a", "laptop").unwrap())
        .unwrap();
    let devices = store.devices("a").unwrap();
    assert_eq!(devices[1], ("phone".to_string(), true));
    assert_eq!(devices[0], ("laptop".to_string(), false));
    drop(sub);
}

#[test]
fn a_new_device_beyond_the_limit_is_refused_with_90001() {
    let (store, _) = store_with_config(&["a"], |c| c.with_max_devices_per_account(3));
    for d in ["d1", "d2", "d3"] {
        drop(store.connect("a", d).unwrap());
    }
    let err = store.connect("a", "d4").unwrap_err();
    assert_eq!(err.code(), 90001);
    assert!(err.to_string().contains("3 devices"), "{err}");
    // A known device still connects.
    drop(store.connect("a", "d2").unwrap());
}

/// An operator lowers the limit and restarts: the store opens (the journal's connects were
/// accepted under the limit of then), the devices it has keep connecting, a new one is refused.
#[test]
fn a_store_opens_under_a_lower_device_limit() {
    let dir = tempfile::tempdir().unwrap();
    let open = |max: usize| {
        imstore::Store::open(
            dir.path(),
            imstore::Config::default().with_max_devices_per_account(max),
        )
    };
    let store = open(3).unwrap();
    store.import_account("a").unwrap();
    for d in ["d1", "d2", "d3"] {
        drop(store.connect("a", d).unwrap());
    }
    drop(store);
    let store = open(2).expect("opens under the lower limit");
    assert_eq!(store.devices("a").unwrap().len(), 3);
    drop(store.connect("a", "d3").unwrap());
    assert_eq!(store.connect("a", "d4").unwrap_err().code(), 90001);
}

#[test]
fn idle_devices_are_forgotten_and_start_again_from_the_oldest_entry() {
    let (store, clock) = store_with_config(&["a", "b"], |c| {
        c.with_device_idle_secs(3600)
            .with_max_devices_per_account(1)
    });
    let old = store.connect("b", "old").unwrap();
    send_text(&store, "a", "b", 1, "one");
    drain(&old);
    old.ack(1).unwrap();
    drop(old);
    clock.advance(1800);
    assert_eq!(
        store.purge_expired().unwrap().devices,
        0,
        "not idle long enough"
    );
    assert_eq!(store.connect("b", "new").unwrap_err().code(), 90001);
    clock.advance(1801);
    assert_eq!(store.purge_expired().unwrap().devices, 1);
    assert!(store.devices("b").unwrap().is_empty());
    // Its slot is free, and if it comes back it starts from the oldest retained entry.
    let back = store.connect("b", "old").unwrap();
    assert_eq!(texts(&drain(&back)), vec!["msg:one"]);
}

/// R3 for every device the store still remembers: a device away longer than the notice
/// lifetime it was configured with, but not long enough to be forgotten, still gets the
/// notice of a message it holds that was recalled while it was away.
#[test]
fn a_device_away_for_weeks_but_not_forgotten_still_gets_the_recall_notice() {
    let (store, clock) = store_with_config(&["a", "b"], |c| {
        let mut c = c.with_device_idle_secs(30 * 86_400);
        c.notice_lifetime_secs = 86_400; // shorter than devices are remembered
        c
    });
    let phone = store.connect("b", "phone").unwrap();
    let sent = send_text(&store, "a", "b", 1, "soon regretted");
    assert_eq!(texts(&drain(&phone)), vec!["msg:soon regretted"]);
    phone.ack(1).unwrap();
    store.disconnect(phone).unwrap();
    clock.advance(3600);
    let key = sent.msg_key.to_string();
    store.recall(ADMIN, "a", "b", &key).unwrap();
    clock.advance(20 * 86_400); // away 20 days: past a day's notices, not yet forgotten
    let purged = store.purge_expired().unwrap();
    assert_eq!(purged.devices, 0, "still remembered");
    let phone = store.connect("b", "phone").unwrap();
    assert_eq!(texts(&drain(&phone)), vec![format!("recall:{key}")]);
    // Once the device would be forgotten anyway, the notice may go.
    drop(phone);
    clock.advance(31 * 86_400);
    store.purge_expired().unwrap();
    assert!(store.inbox("b", 0).unwrap().is_empty());
}

/// A device connected when the recall came, whose connection ended an hour later before it
/// read the notice, is remembered 30 days from then: the notice is still there for it.
#[test]
fn a_device_that_left_without_reading_the_notice_gets_it_while_remembered() {
    let (store, clock) = store_with_config(&["a", "b"], |c| c.with_device_idle_secs(30 * 86_400));
    let sent = send_text(&store, "a", "b", 1, "hello");
    let key = sent.msg_key.to_string();
    let phone = store.connect("b", "phone").unwrap();
    store.recall(ADMIN, "a", "b", &key).unwrap();
    clock.advance(3600);
    store.disconnect(phone).unwrap(); // read nothing
    clock.advance(30 * 86_400 - 60); // 30 days after the recall; 59 minutes short of idle
    assert_eq!(store.purge_expired().unwrap().devices, 0);
    let phone = store.connect("b", "phone").unwrap();
    assert_eq!(texts(&drain(&phone)), vec![format!("recall:{key}")]);
}

/// Devices never forgotten: notices never expire (their expiry saturates, not wraps).
#[test]
fn with_devices_never_forgotten_a_recall_notice_never_expires() {
    let (store, clock) = store_with_config(&["a", "b"], |c| c.with_device_idle_secs(u64::MAX));
    let sent = send_text(&store, "a", "b", 1, "hello");
    let key = sent.msg_key.to_string();
    store.recall(ADMIN, "a", "b", &key).unwrap();
    clock.advance(400 * 86_400);
    store.purge_expired().unwrap();
    let phone = store.connect("b", "phone").unwrap();
    assert_eq!(texts(&drain(&phone)), vec![format!("recall:{key}")]);
}

#[test]
fn a_connected_device_is_never_forgotten() {
    let (store, clock) = store_with_config(&["a"], |c| c.with_device_idle_secs(10));
    let sub = store.connect("a", "phone").unwrap();
    clock.advance(1000);
    assert_eq!(store.purge_expired().unwrap().devices, 0);
    assert_eq!(store.devices("a").unwrap().len(), 1);
    drop(sub);
}

#[test]
fn a_sending_device_is_not_sent_its_message_but_a_namesake_of_another_account_is() {
    let (store, _) = store_with(&["a", "b"]);
    let a_phone = store.connect("a", "phone").unwrap();
    let a_laptop = store.connect("a", "laptop").unwrap();
    let b_phone = store.connect("b", "phone").unwrap();
    let mut req = text_req("a", "b", 1, "from a's phone");
    req.from_device = Some("phone".into());
    req.sender_copy = imstore::SenderCopy::RoamingAndDevices;
    store.send(req).unwrap();
    assert!(
        drain(&a_phone).is_empty(),
        "not sent back to the sending device"
    );
    assert_eq!(texts(&drain(&a_laptop)), vec!["msg:from a's phone"]);
    assert_eq!(texts(&drain(&b_phone)), vec!["msg:from a's phone"]);
}

/// A purge's settings travel with its journal record: reopened under another config, the
/// store has forgotten the devices and dropped the inbox entries the live purge did — no
/// more, no fewer — rather than what its own settings would have chosen.
#[test]
fn replay_purges_what_the_live_purge_did_under_another_config() {
    let dir = tempfile::tempdir().unwrap();
    let clock = imstore::ManualClock::new(T0);
    let config = |idle: u64, retention: u64| {
        imstore::Config::default()
            .with_clock(clock.clone())
            .with_device_idle_secs(idle)
            .with_retention_secs(retention)
    };
    let store = imstore::Store::open(dir.path(), config(3600, 7 * 86_400)).unwrap();
    store.import_accounts(&["a", "b"]).unwrap();
    drop(store.connect("b", "old").unwrap()); // idle from now
    let mut short = text_req("a", "b", 1, "short");
    short.lifetime = Some(60); // leaves the inbox after a minute
    store.send(short).unwrap();
    send_text(&store, "a", "b", 2, "kept");
    clock.advance(7200);
    let purged = store.purge_expired().unwrap();
    assert_eq!((purged.devices, purged.inbox_entries), (1, 1));
    assert!(store.devices("b").unwrap().is_empty());
    assert_eq!(texts(&store.inbox("b", 0).unwrap()), vec!["msg:kept"]);
    drop(store);
    // Devices remembered 30 days and messages kept an hour: under these settings the purge
    // would have kept the device and dropped "kept" too.
    let store = imstore::Store::open(dir.path(), config(30 * 86_400, 3600)).unwrap();
    assert!(
        store.devices("b").unwrap().is_empty(),
        "the device comes back"
    );
    // Read within this config's hour of retention ("kept" is past it now, so a reader would
    // not be shown it): the entry the live purge kept is still there.
    clock.set(T0 + 1800);
    assert_eq!(
        texts(&store.inbox("b", 0).unwrap()),
        vec!["msg:kept"],
        "replay dropped what a reader had seen"
    );
}

/// A store's config on `clock`, with `retention` seconds of roaming retention.
fn with_retention(clock: &Arc<imstore::ManualClock>, retention: u64) -> imstore::Config {
    imstore::Config::default()
        .with_clock(clock.clone())
        .with_retention_secs(retention)
}

/// A recall accepted within retention replays under a shorter one: the store opens (a replay
/// that checked the retention at hand answered 20022 and refused to open), with the recall
/// in place.
#[test]
fn a_recall_replays_under_a_shorter_retention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = imstore::ManualClock::new(T0);
    let config = |retention: u64| with_retention(&clock, retention);
    let store = imstore::Store::open(dir.path(), config(7 * 86_400)).unwrap();
    store.import_accounts(&["a", "b"]).unwrap();
    let sent = send_text(&store, "a", "b", 1, "five days");
    clock.advance(5 * 86_400);
    store
        .recall(ADMIN, "a", "b", &sent.msg_key.to_string())
        .unwrap();
    let before = texts(&store.inbox("b", 0).unwrap());
    assert_eq!(before, vec![format!("recall:{}", sent.msg_key)]);
    drop(store);
    let store = imstore::Store::open(dir.path(), config(3 * 86_400))
        .expect("a recall accepted live must replay under a shorter retention");
    assert_eq!(texts(&store.inbox("b", 0).unwrap()), before);
}

/// A send trims its conversation to the retention it ran under, on replay too: reopened with
/// a longer retention, the replay must not keep a message the live send trimmed — or the
/// same MsgKey sent again afterwards (new, since it was gone) would replay as a repeat,
/// taking its inbox entry and unread count away.
#[test]
fn a_send_trims_on_replay_to_the_retention_it_ran_under() {
    let dir = tempfile::tempdir().unwrap();
    let clock = imstore::ManualClock::new(T0);
    let config = |retention: u64| with_retention(&clock, retention);
    let again = |seq: u32, time: u32| {
        let mut r = text_req("a", "b", 1, "once more");
        (r.msg_seq, r.msg_time) = (Some(seq), Some(time));
        r
    };
    let store = imstore::Store::open(dir.path(), config(3600)).unwrap();
    store.import_accounts(&["a", "b"]).unwrap();
    let first = send_text(&store, "a", "b", 1, "first");
    clock.advance(7200);
    send_text(&store, "a", "b", 2, "trims the first");
    drop(store);
    // A week of retention: the first message's key is within it again, and it is gone.
    let store = imstore::Store::open(dir.path(), config(7 * 86_400)).unwrap();
    let key = first.msg_key;
    store.send(again(key.seq(), key.time())).unwrap();
    let inbox = texts(&store.inbox("b", 0).unwrap());
    assert_eq!(inbox.last().map(String::as_str), Some("msg:once more"));
    let (seen, unread) = (
        observe(&store, &["a", "b"]),
        store.unread("b", "a").unwrap(),
    );
    drop(store);
    let store = imstore::Store::open(dir.path(), config(7 * 86_400)).unwrap();
    assert_eq!(texts(&store.inbox("b", 0).unwrap()), inbox);
    assert_eq!(store.unread("b", "a").unwrap(), unread);
    assert_eq!(observe(&store, &["a", "b"]), seen);
}

/// A recall's notices stay in the inboxes as long as the store said when it accepted the
/// recall, after a replay under settings that would give them less: a device yet to read
/// them still gets them.
#[test]
fn a_recall_notice_keeps_its_lifetime_through_a_replay_under_another_config() {
    let dir = tempfile::tempdir().unwrap();
    let clock = imstore::ManualClock::new(T0);
    let config = |idle: u64, notices: u64| {
        let mut c = imstore::Config::default()
            .with_clock(clock.clone())
            .with_device_idle_secs(idle);
        c.notice_lifetime_secs = notices;
        c
    };
    let store = imstore::Store::open(dir.path(), config(30 * 86_400, 30 * 86_400)).unwrap();
    store.import_accounts(&["a", "b"]).unwrap();
    let sent = send_text(&store, "a", "b", 1, "recalled");
    store
        .recall(ADMIN, "a", "b", &sent.msg_key.to_string())
        .unwrap();
    drop(store);
    // Notices kept a day and an hour under these settings; two days on, the purge would drop
    // one dated by them.
    let store = imstore::Store::open(dir.path(), config(3600, 3600)).unwrap();
    clock.advance(2 * 86_400);
    store.purge_expired().unwrap();
    assert_eq!(
        texts(&store.inbox("b", 0).unwrap()),
        vec![format!("recall:{}", sent.msg_key)],
        "the recall notice left before its time"
    );
}

/// A message whose MsgTimeStamp is already past roaming retention is refused (90006): it
/// would be trimmed as it is stored — delivered, yet in no history and beyond recall, and
/// stored anew by every retry.
#[test]
fn a_send_already_past_retention_is_refused() {
    let clock = imstore::ManualClock::new(T0);
    let store = imstore::Store::in_memory(
        imstore::Config::default()
            .with_clock(clock.clone())
            .with_retention_secs(3600),
    )
    .unwrap();
    store.import_accounts(&["a", "b"]).unwrap();
    let mut old = text_req("a", "b", 1, "yesterday");
    old.msg_time = Some((T0 - 86_400) as u32);
    let e = store.send(old).unwrap_err();
    assert_eq!(e.code(), 90006, "{e}");
    assert!(e.to_string().contains("retention"), "{e}");
    assert!(store.inbox("b", 0).unwrap().is_empty());
    assert_eq!(store.unread("b", "a").unwrap(), 0);
    // Within retention it is stored.
    let mut recent = text_req("a", "b", 2, "a minute ago");
    recent.msg_time = Some((T0 - 60) as u32);
    store.send(recent).unwrap();
    assert_eq!(store.unread("b", "a").unwrap(), 1);
    // A history import from an older system is not refused: it delivers nothing, and what is
    // past retention is only dropped from history, as a migration expects.
    let old_history = imstore::ImportRequest {
        from: "a".into(),
        to: "b".into(),
        msg_seq: 3,
        msg_random: 3,
        msg_time: (T0 - 86_400) as u32,
        body: vec![imstore::MsgElement::text("last year")],
        cloud_custom_data: None,
        realtime: false,
    };
    store.import(old_history).unwrap();
    assert_eq!(store.unread("b", "a").unwrap(), 1);
}

/// A session handed out a message, then the message was recalled and another modified:
/// handing out again after a lost answer (`Subscription::rewind`, what a cluster owner does
/// for a node that pulls again from before its last answer) collects from the inbox anew —
/// the recalled message is not sent again with its body, the modified one goes with its new
/// content — and the client cache does not take them twice.
#[test]
fn events_handed_out_again_are_collected_anew_not_resent_as_they_were() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "phone").unwrap();
    let k1 = send_text(&store, "a", "b", 1, "secret").msg_key.to_string();
    let k2 = send_text(&store, "a", "b", 2, "typo").msg_key.to_string();
    assert_eq!(texts(&drain(&sub)), vec!["msg:secret", "msg:typo"]);
    store.recall("administrator", "a", "b", &k1).unwrap();
    let fixed = vec![imstore::MsgElement::text("fixed")];
    store.modify("a", "b", &k2, Some(fixed), None).unwrap();
    sub.rewind(0);
    let again = drain(&sub);
    let shown = texts(&again);
    assert!(
        !shown.iter().any(|t| t.contains("secret")),
        "the recalled body went out again: {shown:?}"
    );
    assert_eq!(again.first().map(|e| e.seq), Some(2), "{shown:?}");
    assert_eq!(shown[0], "msg:fixed");
    assert_eq!(
        again.len(),
        3,
        "message 2, then the recall and the modify: {shown:?}"
    );
    let cache = store.device_cache("b", "phone").unwrap();
    assert_eq!(cache.len(), 2, "each message once in the cache: {cache:?}");
    assert!(cache[0].is_recalled());
    assert_eq!(body_text(&cache[1]), "fixed");
    // Rewinding never moves past what was handed out, nor drops what was not yet taken.
    sub.rewind(99);
    assert!(drain(&sub).is_empty());
    assert_eq!(
        store.device_cursor("b", "phone").unwrap(),
        0,
        "acks alone move it"
    );
}

/// An ack that moves no cursor, from a device seen moments ago, writes no journal record
/// (a client re-acking in a loop wrote one each time); one that moves it, or that comes
/// after a while, does, and both replay.
#[test]
fn a_repeated_ack_is_not_journaled() {
    let (disk, store) = on_disk(&["a", "b"]);
    let clock = &disk.clock;
    let sub = store.connect("b", "phone").unwrap();
    send_text(&store, "a", "b", 1, "one");
    send_text(&store, "a", "b", 2, "two");
    drain(&sub);
    sub.ack(1).unwrap();
    for _ in 0..100 {
        sub.ack(1).unwrap();
        store.ack("b", "phone", 0).unwrap();
    }
    clock.advance(30);
    sub.ack(1).unwrap(); // seen again after a while: recorded
    sub.ack(2).unwrap();
    std::mem::forget(sub); // no disconnect record either
    drop(store);
    let store = disk.reopen();
    // The admin's and the accounts' imports, the connect, two sends, three acks (9 when
    // written): not the 200 repeats.
    let replayed = store.recovery_report().records_replayed;
    assert!(replayed < 20, "{replayed} records");
    assert_eq!(store.device_cursor("b", "phone").unwrap(), 2);
}

/// A message whose MsgTimeStamp falls past retention is gone from history and a recall of it
/// answers 20022 — and a device that had not received it is not handed it either (before, it
/// was, until the next purge).
#[test]
fn a_message_past_retention_is_not_handed_to_a_device() {
    let clock = imstore::ManualClock::new(T0);
    let store = imstore::Store::in_memory(with_retention(&clock, 100)).unwrap();
    store.import_accounts(&["a", "b"]).unwrap();
    let mut req = text_req("a", "b", 1, "backdated");
    req.msg_time = Some((T0 - 90) as u32);
    let key = store.send(req).unwrap().msg_key.to_string();
    send_text(&store, "a", "b", 2, "recent");
    clock.advance(20);
    assert_eq!(
        store.recall(ADMIN, "a", "b", &key).unwrap_err().code(),
        20022
    );
    let sub = store.connect("b", "phone").unwrap();
    assert_eq!(texts(&drain(&sub)), vec!["msg:recent"]);
}

/// The blocking API collects a batch and hands it out one event at a time: a message recalled
/// after it was collected, before the application took it, is not handed out — its recall
/// notice comes instead (R1: a device that has not received a message never will).
#[test]
fn a_message_recalled_while_waiting_to_be_taken_is_not_handed_out() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "phone").unwrap();
    send_text(&store, "a", "b", 1, "one");
    let two = send_text(&store, "a", "b", 2, "two").msg_key.to_string();
    let first = sub.try_recv().unwrap().expect("the first message");
    assert_eq!(texts(&[first]), vec!["msg:one"]);
    store.recall(ADMIN, "a", "b", &two).unwrap();
    let rest = texts(&drain(&sub));
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(rest[0].starts_with("recall"), "{rest:?}");
}

struct NoWake;
impl Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

/// Dropping the last store handle ends every session: a thread blocked in `recv` returns
/// `Disconnected`, and a pending `next_batch` does not keep the store alive (its directory
/// can be opened again) and then ends `Disconnected`. Before, `recv` waited for good and the
/// pending future held the whole store open.
#[test]
fn dropping_the_store_ends_its_subscriptions() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "phone").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(sub.recv().map(|e| e.seq));
    });
    std::thread::sleep(Duration::from_millis(100));
    drop(store);
    let got = rx.recv_timeout(Duration::from_secs(10));
    assert!(matches!(got, Ok(Err(_))), "recv ended with {got:?}");
    waiter.join().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = imstore::Store::open(dir.path(), imstore::Config::default()).unwrap();
    store.import_accounts(&["a", "b"]).unwrap();
    let sub = store.connect("b", "phone").unwrap();
    let waker = Waker::from(Arc::new(NoWake));
    let mut fut = std::pin::pin!(sub.next_batch());
    assert!(
        fut.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    drop(store);
    let again = imstore::Store::open(dir.path(), imstore::Config::default());
    assert!(
        again.is_ok(),
        "the directory is still held: {:?}",
        again.err()
    );
    let polled = fut.as_mut().poll(&mut Context::from_waker(&waker));
    assert!(matches!(polled, Poll::Ready(Err(_))), "{polled:?}");
}

/// The blocking API collects events ahead of the application: `sent()` and `ack` count only
/// what the application took. Acking `sent()` after taking one event of three confirms that
/// one; the next session gets the other two. Before, the two collected but not taken were
/// confirmed too, and lost.
#[test]
fn an_ack_of_sent_confirms_only_the_events_taken() {
    let (store, _) = store_with(&["a", "b"]);
    for i in 1..=3 {
        send_text(&store, "a", "b", i, &format!("m{i}"));
    }
    let sub = store.connect("b", "phone").unwrap();
    let first = sub.try_recv().unwrap().expect("an event");
    assert_eq!(sub.sent(), first.seq);
    sub.ack(sub.sent()).unwrap();
    assert_eq!(store.device_cursor("b", "phone").unwrap(), first.seq);
    // A position past what was taken (a client's mistake) confirms no more either.
    sub.ack(first.seq + 2).unwrap();
    assert_eq!(store.device_cursor("b", "phone").unwrap(), first.seq);
    store.disconnect(sub).unwrap();
    let sub = store.connect("b", "phone").unwrap();
    assert_eq!(texts(&drain(&sub)), vec!["msg:m2", "msg:m3"]);
}

/// A device connected for longer than `device_idle_secs` without a cursor move is not
/// forgotten after a crash: the purge notes, while it is connected, that it is still there.
/// Before, its last sight stayed its connect's; after a crash (no disconnect recorded) the
/// first purge forgot it, and it started again from the oldest retained entry.
#[test]
fn a_long_quiet_session_is_not_forgotten_after_a_crash() {
    let (disk, store) = on_disk(&["a", "b"]);
    send_text(&store, "a", "b", 1, "one");
    let phone = store.connect("b", "phone").unwrap();
    let first = phone.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    phone.ack(first.seq).unwrap();
    let idle = store.config().device_idle_secs;
    // Quiet for a whole idle period, the purge running now and then.
    for _ in 0..4 {
        disk.clock.advance(idle / 4 + 1);
        assert_eq!(store.purge_expired().unwrap().devices, 0);
    }
    // A crash: the session is not ended by a disconnect.
    drop(store);
    drop(phone);
    let store = disk.reopen();
    assert_eq!(store.purge_expired().unwrap().devices, 0, "forgotten");
    assert_eq!(store.device_cursor("b", "phone").unwrap(), first.seq);
    let phone = store.connect("b", "phone").unwrap();
    assert!(drain(&phone).is_empty(), "nothing is sent again");
}
