//! Recall (SPEC §4): error precedence, one atomic step across all layers, notices, hooks.
mod common;
use std::sync::{Arc, Mutex};

use common::*;
use imstore::{EventKind, HistoryQuery, Hooks, RecallNotice};

fn key_of(store: &imstore::Store, from: &str, to: &str, text: &str) -> String {
    send_text(store, from, to, 1, text).msg_key.to_string()
}

#[test]
fn recall_by_a_non_admin_answers_90009_before_anything_else() {
    let (store, _) = store_with(&["vinson", "dramon"]);
    // Even a request that is wrong in every other way answers 90009 first.
    assert_eq!(
        store
            .recall("vinson", "ghost", "ghost", "bad")
            .unwrap_err()
            .code(),
        90009
    );
}

#[test]
fn recall_error_precedence_is_90008_90003_90054_20022_20023() {
    let (store, _) = store_with(&["vinson", "dramon"]);
    let k = key_of(&store, "vinson", "dramon", "hi");
    assert_eq!(
        store
            .recall(ADMIN, "ghost", "ghost", "bad")
            .unwrap_err()
            .code(),
        90008
    );
    assert_eq!(
        store
            .recall(ADMIN, "vinson", "ghost", "bad")
            .unwrap_err()
            .code(),
        90003
    );
    assert_eq!(
        store
            .recall(ADMIN, "vinson", "dramon", "bad")
            .unwrap_err()
            .code(),
        90054
    );
    assert_eq!(
        store
            .recall(ADMIN, "vinson", "dramon", "1_2_3")
            .unwrap_err()
            .code(),
        20022
    );
    store.recall(ADMIN, "vinson", "dramon", &k).unwrap();
    assert_eq!(
        store
            .recall(ADMIN, "vinson", "dramon", &k)
            .unwrap_err()
            .code(),
        20023
    );
}

#[test]
fn recall_with_a_non_canonical_key_answers_90054() {
    let (store, _) = store_with(&["vinson", "dramon"]);
    for bad in [
        "",
        "01_2_3",
        "1_2_3_",
        "1 _2_3",
        "1_2_4294967296",
        &"1".repeat(51),
    ] {
        assert_eq!(
            store
                .recall(ADMIN, "vinson", "dramon", bad)
                .unwrap_err()
                .code(),
            90054,
            "{bad:?}"
        );
    }
}

#[test]
fn recall_of_the_wrong_direction_answers_20022() {
    let (store, _) = store_with(&["vinson", "dramon"]);
    let k = key_of(&store, "vinson", "dramon", "hi");
    assert_eq!(
        store
            .recall(ADMIN, "dramon", "vinson", &k)
            .unwrap_err()
            .code(),
        20022
    );
}

#[test]
fn recall_twice_answers_20023() {
    let (store, _) = store_with(&["vinson", "dramon"]);
    let k = key_of(&store, "vinson", "dramon", "hi");
    store.recall(ADMIN, "vinson", "dramon", &k).unwrap();
    assert_eq!(
        store
            .recall(ADMIN, "vinson", "dramon", &k)
            .unwrap_err()
            .code(),
        20023
    );
}

#[test]
fn recalled_message_stays_in_history_with_flag_8_and_no_body() {
    let (store, _) = store_with(&["vinson", "dramon"]);
    let k = key_of(&store, "vinson", "dramon", "secret");
    store.recall(ADMIN, "vinson", "dramon", &k).unwrap();
    for side in [("vinson", "dramon"), ("dramon", "vinson")] {
        let page = store
            .history(&HistoryQuery::new(side.0, side.1, 10))
            .unwrap();
        assert_eq!(page.messages.len(), 1);
        let m = &page.messages[0].message;
        assert_eq!(m.msg_flag_bits(), 8);
        assert!(m.content.is_none(), "body and CloudCustomData are erased");
        assert_eq!(m.key.to_string(), k);
    }
}

#[test]
fn a_device_that_has_not_received_the_message_never_will() {
    let (store, _) = store_with(&["vinson", "dramon"]);
    let queued = store.connect("dramon", "queued").unwrap(); // connected: the message is queued for it
    let k = key_of(&store, "vinson", "dramon", "secret");
    store.recall(ADMIN, "vinson", "dramon", &k).unwrap();
    let offline = store.connect("dramon", "offline").unwrap(); // connects after the recall
    for sub in [&queued, &offline] {
        assert_eq!(texts(&drain(sub)), vec![format!("recall:{k}")]);
    }
}

#[test]
fn every_device_of_both_parties_gets_exactly_one_notice_after_the_message() {
    let (store, _) = store_with(&["vinson", "dramon", "third"]);
    let devices = [
        store.connect("vinson", "v1").unwrap(),
        store.connect("vinson", "v2").unwrap(),
        store.connect("dramon", "d1").unwrap(),
        store.connect("dramon", "d2").unwrap(),
    ];
    let outsider = store.connect("third", "t1").unwrap();
    let mut req = text_req("vinson", "dramon", 1, "hi");
    req.sender_copy = imstore::SenderCopy::RoamingAndDevices;
    let k = store.send(req).unwrap().msg_key.to_string();
    // d1 receives the message before the recall; the others do not look until after.
    assert_eq!(texts(&drain(&devices[2])), vec!["msg:hi"]);
    store.recall(ADMIN, "vinson", "dramon", &k).unwrap();
    for d in &devices {
        let got = texts(&drain(d));
        assert_eq!(
            got.iter().filter(|t| **t == format!("recall:{k}")).count(),
            1,
            "{got:?}"
        );
        assert_eq!(got.last(), Some(&format!("recall:{k}")));
        assert!(
            !got.contains(&"msg:hi".to_string()),
            "nobody receives the body after the recall"
        );
    }
    assert!(
        drain(&outsider).is_empty(),
        "a third account hears nothing about it"
    );
}

#[test]
fn device_caches_hold_a_tombstone_after_recall() {
    let (store, _) = store_with(&["vinson", "dramon"]);
    let d = store.connect("dramon", "phone").unwrap();
    let _laptop = store.connect("vinson", "laptop").unwrap(); // the sending device, online
    let mut req = text_req("vinson", "dramon", 1, "secret");
    req.from_device = Some("laptop".into());
    let k = store.send(req).unwrap().msg_key.to_string();
    drain(&d);
    assert!(!store.device_cache("dramon", "phone").unwrap()[0].is_recalled());
    store.recall(ADMIN, "vinson", "dramon", &k).unwrap();
    for (acct, dev) in [("dramon", "phone"), ("vinson", "laptop")] {
        let cache = store.device_cache(acct, dev).unwrap();
        assert_eq!(cache.len(), 1);
        assert!(cache[0].is_recalled() && cache[0].content.is_none());
    }
}

#[test]
fn recall_lowers_the_recipients_unread_count_only_when_unread() {
    let (store, _) = store_with(&["vinson", "dramon"]);
    let k1 = key_of(&store, "vinson", "dramon", "one");
    let k2 = key_of(&store, "vinson", "dramon", "two");
    assert_eq!(store.unread("dramon", "vinson").unwrap(), 2);
    store.recall(ADMIN, "vinson", "dramon", &k1).unwrap();
    assert_eq!(store.unread("dramon", "vinson").unwrap(), 1);
    store.mark_read("dramon", "vinson").unwrap();
    store.recall(ADMIN, "vinson", "dramon", &k2).unwrap();
    assert_eq!(store.unread("dramon", "vinson").unwrap(), 0);
    let k3 = key_of(&store, "vinson", "dramon", "three");
    assert_eq!(
        store.unread("dramon", "vinson").unwrap(),
        1,
        "a read message's recall did not eat a new one"
    );
    store.recall(ADMIN, "vinson", "dramon", &k3).unwrap();
    assert_eq!(store.unread("dramon", "vinson").unwrap(), 0);
}

#[test]
fn recall_corrects_the_conversations_last_message() {
    let (store, _) = store_with(&["vinson", "dramon"]);
    let k = key_of(&store, "vinson", "dramon", "last");
    assert!(
        !store
            .last_message("dramon", "vinson")
            .unwrap()
            .unwrap()
            .message
            .is_recalled()
    );
    store.recall(ADMIN, "vinson", "dramon", &k).unwrap();
    let last = store.last_message("dramon", "vinson").unwrap().unwrap();
    assert!(last.message.is_recalled());
    assert_eq!(last.message.msg_flag_bits(), 8);
}

#[test]
fn recall_changes_nothing_about_other_messages() {
    let (store, _) = store_with(&["vinson", "dramon"]);
    let k = key_of(&store, "vinson", "dramon", "goes");
    key_of(&store, "vinson", "dramon", "stays");
    key_of(&store, "dramon", "vinson", "reply");
    let before = store
        .history(&HistoryQuery::new("vinson", "dramon", 10))
        .unwrap();
    store.recall(ADMIN, "vinson", "dramon", &k).unwrap();
    let after = store
        .history(&HistoryQuery::new("vinson", "dramon", 10))
        .unwrap();
    for (b, a) in before.messages.iter().zip(&after.messages) {
        if b.message.key.to_string() != k {
            assert_eq!(b, a);
        }
    }
}

#[test]
fn recall_has_no_time_limit_within_retention() {
    let (store, clock) = store_with(&["vinson", "dramon"]);
    let k = key_of(&store, "vinson", "dramon", "old");
    clock.advance(6 * 86_400);
    store.recall(ADMIN, "vinson", "dramon", &k).unwrap();
}

#[derive(Default)]
struct Recorder(Mutex<Vec<RecallNotice>>);
impl Hooks for Recorder {
    fn after_recall(&self, n: &RecallNotice) {
        self.0.lock().unwrap().push(n.clone());
    }
}

#[test]
fn recall_runs_the_after_recall_hook_once() {
    let hooks = Arc::new(Recorder::default());
    let (store, _) = store_with_config(&["vinson", "dramon"], |c| c.with_hooks(hooks.clone()));
    let k = key_of(&store, "vinson", "dramon", "x");
    store.recall(ADMIN, "vinson", "dramon", &k).unwrap();
    let _ = store.recall(ADMIN, "vinson", "dramon", &k);
    let seen = hooks.0.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].key.to_string(), k);
    assert_eq!(&*seen[0].recalled_by, ADMIN);
    assert_eq!(seen[0].recalled_at, T0);
}

#[test]
fn recall_notice_names_conversation_recaller_and_time() {
    let (store, clock) = store_with(&["vinson", "dramon"]);
    let d = store.connect("vinson", "phone").unwrap();
    let k = key_of(&store, "vinson", "dramon", "x");
    clock.advance(5);
    store.recall(ADMIN, "vinson", "dramon", &k).unwrap();
    let events = drain(&d);
    let EventKind::Recalled(n) = &events[0].kind else {
        panic!("{events:?}")
    };
    assert_eq!(
        (&*n.from, &*n.to, &*n.recalled_by, n.recalled_at),
        ("vinson", "dramon", ADMIN, T0 + 5)
    );
}

/// Two stores given the same sends: `recall_many` on one, `recall` item by item on the other.
fn twin_stores(users: &[&str]) -> [imstore::Store; 2] {
    [0, 1].map(|_| {
        let (store, _) = store_with(users);
        for i in 0..90u32 {
            let (a, b) = (users[i as usize % 6], users[(i as usize * 7 + 1) % 6]);
            let b = if a == b {
                users[(i as usize + 1) % 6]
            } else {
                b
            };
            let mut req = text_req(a, b, i, &format!("m{i}"));
            req.msg_seq = Some(1000 + i);
            store.send(req).unwrap();
        }
        store
    })
}

#[test]
fn recall_many_answers_and_does_exactly_what_recalls_one_by_one_do() {
    let users = ["ua", "ub", "uc", "ud", "ue", "uf"];
    let stores = twin_stores(&users);
    let devices = stores
        .each_ref()
        .map(|s| users.map(|u| s.connect(u, "phone").unwrap()));
    // Every message of the store, from history, with its parties.
    let mut sent = Vec::new();
    for (i, a) in users.iter().enumerate() {
        for b in &users[i + 1..] {
            let page = stores[0].history(&HistoryQuery::new(a, b, 100)).unwrap();
            for m in page.messages {
                let m = m.message;
                sent.push((m.from.to_string(), m.to.to_string(), m.key.to_string()));
            }
        }
    }
    assert_eq!(sent.len(), 90);
    // A batch of 150 over several waves: each message in a scrambled order, some twice (20023),
    // some the wrong way round (20022), unknown accounts (90008, 90003), bad keys (90054),
    // a key no message has (20022).
    let mut items: Vec<(String, String, String)> = Vec::new();
    for j in 0..150usize {
        let (f, t, k) = sent[(j * 37) % sent.len()].clone();
        items.push(match j % 10 {
            3 => (t, f, k),
            5 => ("ghost".into(), t, k),
            6 => (f, "ghost".into(), k),
            7 => (f, t, "01_2_3".into()),
            8 => (f, t, "1_2_3".into()),
            _ => (f, t, k),
        });
    }
    let batch: Vec<imstore::RecallItem<'_>> = items
        .iter()
        .map(|(from, to, key)| imstore::RecallItem { from, to, key })
        .collect();
    assert!(batch.len() > 3 * imstore::RECALL_WAVE);
    let answer = |r: imstore::Result<RecallNotice>| r.map_err(|e| e.code());
    let many: Vec<_> = stores[0]
        .recall_many(ADMIN, &batch)
        .into_iter()
        .map(answer)
        .collect();
    let one_by_one: Vec<_> = items
        .iter()
        .map(|(f, t, k)| answer(stores[1].recall(ADMIN, f, t, k)))
        .collect();
    assert_eq!(many, one_by_one);
    let codes = |code| many.iter().filter(|r| **r == Err(code)).count();
    let ok = many.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        ok, 45,
        "each message once, the plain items among the first 90"
    );
    for code in [20022, 20023, 90008, 90003, 90054] {
        assert!(codes(code) > 0, "the batch exercises {code}");
    }
    // Every layer says the same: history, unread counts, inboxes, and what each device hears
    // (each recall's notice exactly once, as the one-by-one store's devices hear it).
    assert_eq!(observe(&stores[0], &users), observe(&stores[1], &users));
    for (d0, d1) in devices[0].iter().zip(&devices[1]) {
        let (e0, e1) = (texts(&drain(d0)), texts(&drain(d1)));
        assert_eq!(e0, e1);
        let mut recalls: Vec<_> = e0.iter().filter(|t| t.starts_with("recall:")).collect();
        let n = recalls.len();
        recalls.dedup();
        assert_eq!(recalls.len(), n, "one notice per recall");
    }
    // A batch by someone who is not an administrator recalls nothing.
    let refused = stores[0].recall_many("ua", &batch[..3]);
    assert!(
        refused
            .iter()
            .all(|r| r.as_ref().unwrap_err().code() == 90009)
    );
    assert!(stores[0].recall_many(ADMIN, &[]).is_empty());
}

#[test]
fn recall_many_is_durable_when_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = imstore::ManualClock::new(T0);
    let config = || {
        imstore::Config::default()
            .with_clock(clock.clone())
            .with_sync(imstore::SyncPolicy::Every)
    };
    let mut keys = Vec::new();
    {
        let store = imstore::Store::open(dir.path(), config()).unwrap();
        store.import_accounts(&["vinson", "dramon"]).unwrap();
        for i in 0..40 {
            let (from, to) = [("vinson", "dramon"), ("dramon", "vinson")][i as usize % 2];
            let key = send_text(&store, from, to, i, &format!("m{i}"))
                .msg_key
                .to_string();
            if i % 2 == 0 {
                keys.push(key);
            }
        }
        let batch: Vec<_> = keys[..15]
            .iter()
            .map(|key| imstore::RecallItem {
                from: "vinson",
                to: "dramon",
                key,
            })
            .collect();
        assert!(store.recall_many(ADMIN, &batch).iter().all(Result::is_ok));
    }
    let store = imstore::Store::open(dir.path(), config()).unwrap();
    let page = store
        .history(&HistoryQuery::new("dramon", "vinson", 100))
        .unwrap();
    let recalled: Vec<_> = page
        .messages
        .iter()
        .filter(|m| m.message.is_recalled())
        .map(|m| m.message.key.to_string())
        .collect();
    assert_eq!(
        page.messages.len(),
        40,
        "every message of send_many is there"
    );
    let mut want = keys[..15].to_vec();
    want.sort();
    let mut got = recalled;
    got.sort();
    assert_eq!(got, want);
}
