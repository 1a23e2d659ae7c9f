//! Devices and live delivery (SPEC §1): replay on (re)connect, cursors, lagging subscribers,
//! bounded caches.
mod common;
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
fn reconnect_resumes_after_the_last_received_entry_without_repeats() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "phone").unwrap();
    send_text(&store, "a", "b", 1, "one");
    send_text(&store, "a", "b", 2, "two");
    assert_eq!(texts(&[sub.try_recv().unwrap().unwrap()]), vec!["msg:one"]);
    store.disconnect(sub).unwrap(); // "two" was queued but never received
    send_text(&store, "a", "b", 3, "three");
    let sub = store.connect("b", "phone").unwrap();
    assert_eq!(texts(&drain(&sub)), vec!["msg:two", "msg:three"]);
}

#[test]
fn connect_after_resumes_from_a_client_supplied_sequence_number() {
    let (store, _) = store_with(&["a", "b"]);
    for i in 0..4 {
        send_text(&store, "a", "b", i, &format!("m{i}"));
    }
    let sub = store.connect_after("b", "sse", 2).unwrap();
    assert_eq!(
        drain(&sub).iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3, 4]
    );
}

#[test]
fn a_slow_subscriber_never_blocks_writers_and_loses_nothing() {
    let (store, _) = store_with_config(&["a", "b"], |c| c.with_channel_capacity(2));
    let sub = store.connect("b", "slow").unwrap();
    // 100 sends with nobody reading: the writer must not block on the 2-slot channel.
    for i in 0..100 {
        send_text(&store, "a", "b", i, &format!("m{i}"));
    }
    let got = texts(&drain(&sub));
    let want: Vec<String> = (0..100).map(|i| format!("msg:m{i}")).collect();
    assert_eq!(got, want);
    // And it is live again afterwards.
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
    assert_eq!(devices[0].0, "laptop");
    drop(sub);
}
