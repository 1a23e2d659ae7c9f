//! Accounts: import, multi-import, check, delete (SPEC §3).
mod common;
use common::*;
use imstore::Store;

#[test]
fn import_is_idempotent() {
    let (store, _) = store_with(&[]);
    store.import_account("vinson").unwrap();
    store.import_account("vinson").unwrap();
    assert!(store.account_exists("vinson").unwrap());
}

#[test]
fn invalid_user_id_answers_70402() {
    let (store, _) = store_with(&[]);
    for bad in ["", "a\u{7}b", "line\nbreak", &"x".repeat(33)] {
        assert_eq!(
            store.import_account(bad).unwrap_err().code(),
            70402,
            "{bad:?}"
        );
    }
    // 32 bytes of multi-byte UTF-8 is fine, 33 is not.
    store.import_account(&"é".repeat(16)).unwrap();
    assert_eq!(
        store
            .import_account(&format!("{}a", "é".repeat(16)))
            .unwrap_err()
            .code(),
        70402
    );
}

#[test]
fn multi_import_over_100_answers_70402() {
    let (store, _) = store_with(&[]);
    let users: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    assert_eq!(store.import_accounts(&users).unwrap_err().code(), 70402);
    assert!(
        !store.account_exists("u0").unwrap(),
        "a refused batch imports nothing"
    );
}

#[test]
fn multi_import_lists_fail_accounts() {
    let (store, _) = store_with(&[]);
    let failed = store.import_accounts(&["a", "", "b"]).unwrap();
    assert_eq!(failed, vec![String::new()]);
    assert!(store.account_exists("a").unwrap() && store.account_exists("b").unwrap());
}

#[test]
fn check_reports_existence() {
    let (store, _) = store_with(&["a"]);
    assert!(store.account_exists("a").unwrap());
    assert!(!store.account_exists("nobody").unwrap());
    assert!(
        store.account_exists(ADMIN).unwrap(),
        "administrators are imported at open"
    );
}

#[test]
fn delete_unknown_account_answers_70107() {
    let (store, _) = store_with(&[]);
    assert_eq!(store.delete_account("ghost").unwrap_err().code(), 70107);
}

#[test]
fn operations_on_a_deleted_account_fail_with_the_accounts_code() {
    let (store, _) = store_with(&["a", "b"]);
    let sub = store.connect("b", "phone").unwrap();
    store.delete_account("b").unwrap();
    assert!(!store.account_exists("b").unwrap());
    assert_eq!(
        store.send(text_req("a", "b", 1, "hi")).unwrap_err().code(),
        90012
    );
    assert_eq!(
        store.send(text_req("b", "a", 1, "hi")).unwrap_err().code(),
        90008
    );
    assert!(
        sub.recv().is_err(),
        "a deleted account's devices are disconnected"
    );
    assert_eq!(store.connect("b", "phone").unwrap_err().code(), 70107);
}

#[test]
fn reimported_account_starts_with_an_empty_inbox() {
    let (store, _) = store_with(&["a", "b"]);
    send_text(&store, "a", "b", 1, "old");
    store.delete_account("b").unwrap();
    store.import_account("b").unwrap();
    let sub = store.connect("b", "phone").unwrap();
    assert!(drain(&sub).is_empty());
    assert_eq!(store.unread("b", "a").unwrap(), 0);
}

#[test]
fn a_reimported_account_continues_its_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Store::open(dir.path(), imstore::Config::default()).unwrap();
    let store = open();
    store.import_accounts(&["a", "b"]).unwrap();
    for i in 0..3 {
        send_text(&store, "a", "b", i, &format!("m{i}"));
    }
    store.delete_account("b").unwrap();
    store.import_account("b").unwrap();
    // A client of the old account resuming after the last number it saw still gets what is new.
    let phone = store.connect_after("b", "phone", 3).unwrap();
    send_text(&store, "a", "b", 9, "new");
    let got = drain(&phone);
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4]);
    drop(phone);
    store.delete_account("b").unwrap();
    // The numbers survive a snapshot and a reopen.
    store.compact().unwrap();
    drop(store);
    let store = open();
    store.import_account("b").unwrap();
    send_text(&store, "a", "b", 10, "newer");
    // Above every number it had (the reopen raised the numbering above its past, too).
    let seq = store.inbox("b", 0).unwrap()[0].seq;
    assert!(seq > 4, "{seq}");
}

/// A message sent before its recipient was deleted counts as read once the account is back:
/// recalling it takes nothing from the count of a message sent since (before, the count went
/// to 0 with the new message unread). Replayed alike.
#[test]
fn a_recall_of_a_message_from_before_a_delete_leaves_the_new_count_alone() {
    let (disk, store) = on_disk(&["a", "b"]);
    let old = send_text(&store, "a", "b", 1, "before").msg_key.to_string();
    store.delete_account("b").unwrap();
    store.import_account("b").unwrap();
    send_text(&store, "a", "b", 2, "after");
    assert_eq!(store.unread("b", "a").unwrap(), 1);
    store.recall(ADMIN, "a", "b", &old).unwrap();
    assert_eq!(store.unread("b", "a").unwrap(), 1);
    store.close().unwrap();
    let store = disk.reopen();
    assert_eq!(store.unread("b", "a").unwrap(), 1, "replayed alike");
}

#[test]
fn unread_counts_survive_delete_reimport_snapshot_and_replay() {
    // Unread counts live in conversations, listed per account: a delete must reach every
    // conversation of the account, and a snapshot must rebuild the lists.
    let dir = tempfile::tempdir().unwrap();
    let open = || Store::open(dir.path(), imstore::Config::default()).unwrap();
    let store = open();
    store.import_accounts(&["a", "b", "c"]).unwrap();
    send_text(&store, "a", "b", 1, "1");
    send_text(&store, "c", "b", 2, "2");
    send_text(&store, "c", "b", 3, "3");
    send_text(&store, "b", "a", 4, "4");
    store.delete_account("b").unwrap();
    store.import_account("b").unwrap();
    assert_eq!(store.unread_all("b").unwrap(), vec![]);
    assert_eq!(store.unread("a", "b").unwrap(), 1, "the peer's count stays");
    send_text(&store, "c", "b", 5, "5");
    let want = |store: &Store| {
        assert_eq!(store.unread("b", "c").unwrap(), 1);
        assert_eq!(store.unread("b", "a").unwrap(), 0);
        let all = store.unread_all("b").unwrap();
        assert_eq!(
            all.iter()
                .map(|(p, n)| (p.to_string(), *n))
                .collect::<Vec<_>>(),
            vec![("c".to_string(), 1)]
        );
        assert_eq!(store.unread("a", "b").unwrap(), 1);
    };
    want(&store);
    // Replayed from the journal alone.
    drop(store);
    let store = open();
    want(&store);
    // From a snapshot, then the records after it.
    store.compact().unwrap();
    send_text(&store, "a", "b", 6, "6");
    drop(store);
    let store = open();
    assert_eq!(store.unread("b", "a").unwrap(), 1);
    store.mark_read("b", "a").unwrap();
    assert_eq!(store.unread("b", "a").unwrap(), 0);
    assert_eq!(store.unread("b", "c").unwrap(), 1);
    store.compact().unwrap();
    drop(store);
    let store = open();
    assert_eq!(store.unread("b", "c").unwrap(), 1);
    assert_eq!(store.unread("b", "a").unwrap(), 0);
    assert_eq!(store.unread("a", "b").unwrap(), 1);
}

#[test]
fn every_account_lists_each_of_its_conversations_once_through_snapshots_and_deletes() {
    // Each account's conversations are a list linked through the conversations themselves,
    // two lists through each: made interleaved here (hub and spokes, spokes with each other),
    // read back by `unread_all` live, from a snapshot, and through a delete of the hub.
    let dir = tempfile::tempdir().unwrap();
    let open = || Store::open(dir.path(), imstore::Config::default()).unwrap();
    let store = open();
    let spokes: Vec<String> = (0..9).map(|i| format!("s{i}")).collect();
    store.import_account("hub").unwrap();
    for s in &spokes {
        store.import_account(s).unwrap();
    }
    let mut seq = 0;
    let mut send = |store: &Store, from: &str, to: &str| {
        seq += 1;
        send_text(store, from, to, seq, "x");
    };
    for (i, s) in spokes.iter().enumerate() {
        // s_i -> hub (i+1 times), and s_i -> s_{i-1}, s_i -> s_{i-2} (once each).
        for _ in 0..=i {
            send(&store, s, "hub");
        }
        for back in 1..=2 {
            if i >= back {
                send(&store, s, &spokes[i - back]);
            }
        }
    }
    let listed = |store: &Store, who: &str| -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = store
            .unread_all(who)
            .unwrap()
            .iter()
            .map(|(p, n)| (p.to_string(), *n))
            .collect();
        v.sort();
        v
    };
    let hub_want: Vec<(String, u32)> = spokes
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), i as u32 + 1))
        .collect();
    let spoke_want = |i: usize| -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = (1..=2)
            .filter(|d| i + d < spokes.len())
            .map(|d| (spokes[i + d].clone(), 1))
            .collect();
        v.sort();
        v
    };
    let check = |store: &Store| {
        assert_eq!(listed(store, "hub"), hub_want);
        for (i, s) in spokes.iter().enumerate() {
            assert_eq!(listed(store, s), spoke_want(i), "{s}");
        }
    };
    check(&store);
    store.compact().unwrap();
    drop(store);
    let store = open();
    check(&store);
    // A conversation made after the restore joins the restored lists.
    send(&store, "hub", "s0");
    send(&store, "s8", "s0");
    let mut s0 = spoke_want(0);
    s0.extend([("hub".to_string(), 1), ("s8".to_string(), 1)]);
    s0.sort();
    assert_eq!(listed(&store, "s0"), s0);
    // A delete reaches every conversation of the hub; the spokes' lists are untouched.
    store.delete_account("hub").unwrap();
    store.import_account("hub").unwrap();
    assert_eq!(listed(&store, "hub"), vec![]);
    for (i, s) in spokes.iter().enumerate().skip(1) {
        assert_eq!(listed(&store, s), spoke_want(i), "{s}");
    }
    send(&store, "s3", "hub");
    assert_eq!(listed(&store, "hub"), vec![("s3".to_string(), 1)]);
}

/// A deleted account's messages stay unread on its peer's side (its conversation stays): the
/// peer can still mark them read, and the count comes down. A deleted account with no
/// conversation with the reader, or a name never imported, is still refused.
#[test]
fn unread_messages_from_a_deleted_account_can_be_marked_read() {
    let (disk, store) = on_disk(&["a", "b", "c"]);
    send_text(&store, "b", "a", 1, "one");
    send_text(&store, "b", "a", 2, "two");
    store.delete_account("b").unwrap();
    store.delete_account("c").unwrap();
    assert_eq!(store.unread("a", "b").unwrap(), 2);
    store.mark_read_until("a", "b", (T0 - 1) as u32).unwrap();
    assert_eq!(store.unread("a", "b").unwrap(), 2, "nothing sent by then");
    store.mark_read("a", "b").unwrap();
    assert_eq!(store.unread("a", "b").unwrap(), 0);
    assert_eq!(store.unread_all("a").unwrap(), vec![]);
    assert!(store.mark_read("a", "c").is_err(), "no conversation with c");
    assert!(store.mark_read("a", "nobody").is_err());
    drop(store);
    let store = disk.reopen();
    assert_eq!(store.unread("a", "b").unwrap(), 0, "replayed");
    assert_eq!(store.unread_all("a").unwrap(), vec![]);
}
