//! Durability (SPEC §5): reopen reproduces the state, snapshots and compaction, erasure from
//! disk, the lock file, torn tails and bit flips.
mod common;

use std::fs;
use std::path::Path;

use common::*;
use imstore::{
    Config, HistoryQuery, ManualClock, MsgElement, OpenError, SenderCopy, Store, SyncPolicy,
};

const USERS: [&str; 4] = ["vinson", "dramon", "third", ADMIN];

fn config(clock: &std::sync::Arc<ManualClock>) -> Config {
    Config::default().with_clock(clock.clone())
}

/// A store with a bit of everything: accounts, sends in both directions, a recall, a modify,
/// read marks, devices with cursors.
fn populate(store: &Store, clock: &ManualClock) {
    store
        .import_accounts(&["vinson", "dramon", "third"])
        .unwrap();
    let phone = store.connect("dramon", "phone").unwrap();
    for i in 0..10u32 {
        let (from, to) = if i % 3 == 0 {
            ("dramon", "vinson")
        } else {
            ("vinson", "dramon")
        };
        let mut req = text_req(from, to, i, &format!("message {i}"));
        req.cloud_custom_data = (i % 2 == 0).then(|| format!("cd{i}"));
        req.sender_copy = [
            SenderCopy::Roaming,
            SenderCopy::RoamingAndDevices,
            SenderCopy::Nothing,
        ][i as usize % 3];
        store.send(req).unwrap();
        clock.advance(1);
    }
    send_text(store, "third", "vinson", 77, "from third");
    let page = store
        .history(&HistoryQuery::new("vinson", "dramon", 100))
        .unwrap();
    let k = page.messages[1].message.key.to_string();
    let from = page.messages[1].message.from.to_string();
    let to = page.messages[1].message.to.to_string();
    store.recall(ADMIN, &from, &to, &k).unwrap();
    let m = &page.messages[3].message;
    store
        .modify(
            &m.from,
            &m.to,
            &m.key.to_string(),
            Some(vec![MsgElement::text("edited")]),
            None,
        )
        .unwrap();
    store.mark_read("dramon", "vinson").unwrap();
    phone.recv().unwrap();
    phone.recv().unwrap();
    store.disconnect(phone).unwrap();
}

#[test]
fn reopen_after_a_clean_close_reproduces_exactly_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = Store::open(dir.path(), config(&clock)).unwrap();
    populate(&store, &clock);
    let before = observe(&store, &USERS);
    store.close().unwrap();
    let store = Store::open(dir.path(), config(&clock)).unwrap();
    assert_eq!(observe(&store, &USERS), before);
    assert!(store.recovery_report().records_replayed >= 15);
}

#[test]
fn reopen_after_compaction_reproduces_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = Store::open(dir.path(), config(&clock)).unwrap();
    populate(&store, &clock);
    store.compact().unwrap();
    send_text(&store, "vinson", "third", 5, "after the snapshot");
    let before = observe(&store, &USERS);
    drop(store);
    let store = Store::open(dir.path(), config(&clock)).unwrap();
    let report = store.recovery_report().clone();
    assert!(report.snapshot_lsn.is_some());
    assert_eq!(
        report.records_replayed, 1,
        "only the send after the snapshot is replayed"
    );
    assert_eq!(observe(&store, &USERS), before);
}

#[test]
fn automatic_snapshots_bound_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = Store::open(dir.path(), config(&clock).with_snapshot_after_bytes(4096)).unwrap();
    store.import_accounts(&["a", "b"]).unwrap();
    for i in 0..200 {
        send_text(&store, "a", "b", i, &format!("message number {i}"));
    }
    let before = observe(&store, &["a", "b"]);
    drop(store);
    let bytes_of = |prefix: &str| -> u64 {
        fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    let (journal_bytes, snapshot_bytes) = (bytes_of("journal-"), bytes_of("snapshot-"));
    // A snapshot is due after 4096 bytes of journal, or after as much journal as the last
    // snapshot holds when that is more (so rewriting snapshots costs in proportion to what
    // is written); one due at close is written then.
    assert!(snapshot_bytes > 0);
    assert!(
        journal_bytes <= 4096.max(snapshot_bytes) + 24,
        "journal kept at {journal_bytes} bytes, snapshot {snapshot_bytes}"
    );
    assert!(journal_bytes < 200 * 60, "the journal was bounded at all");
    let store = Store::open(dir.path(), config(&clock)).unwrap();
    assert!(store.recovery_report().snapshot_lsn.is_some());
    assert_eq!(observe(&store, &["a", "b"]), before);
}

fn files_contain(dir: &Path, needle: &[u8]) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        // A file may be deleted between the listing and its read (a snapshot replacing it):
        // read as empty.
        .filter(|p| {
            fs::read(p)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle)
        })
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn after_compaction_no_file_holds_a_recalled_or_expired_body() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cfg = config(&clock).with_retention_secs(3600);
    let store = Store::open(dir.path(), cfg.clone()).unwrap();
    store.import_accounts(&["vinson", "dramon"]).unwrap();
    let mut req = text_req("vinson", "dramon", 1, "RECALLED-BODY-7f3a");
    req.cloud_custom_data = Some("RECALLED-CUSTOM-91c2".into());
    let k = store.send(req).unwrap().msg_key.to_string();
    send_text(&store, "vinson", "dramon", 2, "EXPIRED-BODY-44d1");
    clock.advance(3000);
    send_text(&store, "vinson", "dramon", 3, "KEPT-BODY-0b9e");
    store.recall(ADMIN, "vinson", "dramon", &k).unwrap();
    clock.advance(700); // the first two are past retention now; the third is not
    store.flush().unwrap();
    assert!(
        !files_contain(dir.path(), b"RECALLED-BODY-7f3a").is_empty(),
        "the journal held it before"
    );
    store.compact().unwrap();
    for secret in [
        "RECALLED-BODY-7f3a",
        "RECALLED-CUSTOM-91c2",
        "EXPIRED-BODY-44d1",
    ] {
        assert_eq!(
            files_contain(dir.path(), secret.as_bytes()),
            Vec::<String>::new(),
            "{secret}"
        );
    }
    assert!(!files_contain(dir.path(), b"KEPT-BODY-0b9e").is_empty());
    drop(store);
    let store = Store::open(dir.path(), cfg).unwrap();
    let page = store
        .history(&HistoryQuery::new("dramon", "vinson", 10))
        .unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(body_text(&page.messages[0].message), "KEPT-BODY-0b9e");
}

fn snapshots_in(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("snapshot-") && !name.ends_with(".tmp")
        })
        .count()
}

/// SPEC §4.3: a recalled body is erased "from what is persisted" — without anyone calling
/// `compact`, within `Config::erase_within_secs`. The old body of a modification too; an
/// ordinary message stays, and the store reopens to the same state.
#[test]
fn a_recalled_body_leaves_the_disk_on_its_own_within_the_erasure_bound() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cfg = config(&clock).with_erase_within_secs(2);
    let store = Store::open(dir.path(), cfg.clone()).unwrap();
    store.import_accounts(&["vinson", "dramon"]).unwrap();
    let mut req = text_req("vinson", "dramon", 1, "RECALLED-BODY-5e0c");
    req.cloud_custom_data = Some("RECALLED-CUSTOM-a771".into());
    let recalled = store.send(req).unwrap().msg_key.to_string();
    let modified = send_text(&store, "vinson", "dramon", 2, "OLD-BODY-9d2f").msg_key;
    send_text(&store, "dramon", "vinson", 3, "KEPT-BODY-61b8");
    // Sends alone erase nothing: no snapshot is due.
    assert_eq!(store.erasure_due(), None);
    store.recall(ADMIN, "vinson", "dramon", &recalled).unwrap();
    assert!(
        store.erasure_due().is_some(),
        "a recall makes a snapshot due"
    );
    store
        .modify(
            "vinson",
            "dramon",
            &modified.to_string(),
            Some(vec![MsgElement::text("NEW-BODY-3c44")]),
            None,
        )
        .unwrap();
    let before = observe(&store, &USERS[..3]);
    wait_until(
        "the erased bodies off the disk",
        std::time::Duration::from_secs(30),
        || {
            [
                "RECALLED-BODY-5e0c",
                "RECALLED-CUSTOM-a771",
                "OLD-BODY-9d2f",
            ]
            .iter()
            .all(|secret| files_contain(dir.path(), secret.as_bytes()).is_empty())
                && store.erasure_due().is_none()
        },
    );
    assert!(!files_contain(dir.path(), b"KEPT-BODY-61b8").is_empty());
    assert!(!files_contain(dir.path(), b"NEW-BODY-3c44").is_empty());
    assert_eq!(snapshots_in(dir.path()), 1);
    drop(store);
    let store = Store::open(dir.path(), cfg).unwrap();
    assert_eq!(observe(&store, &USERS[..3]), before);
    assert!(store.recovery_report().snapshot_lsn.is_some());
    // Nothing erased since: no snapshot is due after the reopen either.
    assert_eq!(store.erasure_due(), None);
}

/// A journal that still holds an erased body when the store opens (it was closed, or
/// killed, before its snapshot) gets one within the bound after the open.
#[test]
fn an_erased_body_found_by_replay_leaves_the_disk_after_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = Store::open(dir.path(), config(&clock).with_erase_within_secs(0)).unwrap();
    store.import_accounts(&["vinson", "dramon"]).unwrap();
    let k = send_text(&store, "vinson", "dramon", 1, "REPLAYED-BODY-0f5a").msg_key;
    store
        .recall(ADMIN, "vinson", "dramon", &k.to_string())
        .unwrap();
    assert_eq!(store.erasure_due(), None, "0 turns the bound off");
    drop(store);
    assert!(!files_contain(dir.path(), b"REPLAYED-BODY-0f5a").is_empty());
    let store = Store::open(dir.path(), config(&clock).with_erase_within_secs(2)).unwrap();
    assert!(store.erasure_due().is_some(), "replay met the recall");
    wait_until(
        "the replayed recall's body off the disk",
        std::time::Duration::from_secs(30),
        || files_contain(dir.path(), b"REPLAYED-BODY-0f5a").is_empty(),
    );
    let page = store
        .history(&HistoryQuery::new("dramon", "vinson", 10))
        .unwrap();
    assert!(page.messages[0].message.is_recalled());
}

/// A crash after a snapshot was written but before the files it replaces were deleted leaves
/// them behind, holding bodies erased before the snapshot: the next open makes a snapshot due,
/// which deletes them.
#[test]
fn files_a_crash_left_behind_a_snapshot_are_deleted_within_the_bound_after_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = Store::open(dir.path(), config(&clock).with_erase_within_secs(0)).unwrap();
    store.import_accounts(&["vinson", "dramon"]).unwrap();
    let k = send_text(&store, "vinson", "dramon", 1, "LEFT-BEHIND-BODY-c3d0").msg_key;
    store
        .recall(ADMIN, "vinson", "dramon", &k.to_string())
        .unwrap();
    store.flush().unwrap();
    let held = files_contain(dir.path(), b"LEFT-BEHIND-BODY-c3d0");
    assert_eq!(held.len(), 1, "{held:?}");
    let saved = fs::read(&held[0]).unwrap();
    store.compact().unwrap();
    assert!(files_contain(dir.path(), b"LEFT-BEHIND-BODY-c3d0").is_empty());
    drop(store);
    // As if the crash came before the deletion.
    fs::write(&held[0], saved).unwrap();
    let store = Store::open(dir.path(), config(&clock).with_erase_within_secs(2)).unwrap();
    assert_eq!(store.recovery_report().records_replayed, 0);
    assert!(
        store.erasure_due().is_some(),
        "the replaced segment holds an erased body"
    );
    wait_until(
        "the replaced segment deleted",
        std::time::Duration::from_secs(30),
        || files_contain(dir.path(), b"LEFT-BEHIND-BODY-c3d0").is_empty(),
    );
}

/// A message trimmed from its history past retention can still be held by an inbox entry,
/// and a snapshot then keeps its body; the inbox purge that drops that entry erases it, and
/// makes a snapshot due of its own.
#[test]
fn an_inbox_purge_past_retention_takes_the_last_copy_of_a_body_off_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cfg = config(&clock)
        .with_retention_secs(3600)
        .with_erase_within_secs(2);
    let store = Store::open(dir.path(), cfg).unwrap();
    store.import_accounts(&["vinson", "dramon"]).unwrap();
    send_text(&store, "vinson", "dramon", 1, "INBOX-HELD-BODY-77aa");
    clock.advance(3700);
    // This send trims the first from the history; dramon's inbox still holds it.
    send_text(&store, "vinson", "dramon", 2, "later");
    wait_until(
        "the trim's snapshot",
        std::time::Duration::from_secs(30),
        || store.erasure_due().is_none() && snapshots_in(dir.path()) == 1,
    );
    assert!(
        !files_contain(dir.path(), b"INBOX-HELD-BODY-77aa").is_empty(),
        "the snapshot keeps the body the inbox holds"
    );
    let purged = store.purge_expired().unwrap();
    assert_eq!(
        (purged.messages, purged.inbox_entries),
        (0, 1),
        "{purged:?}"
    );
    assert!(
        store.erasure_due().is_some(),
        "the inbox purge erased the last copy"
    );
    wait_until(
        "the inbox-held body off the disk",
        std::time::Duration::from_secs(30),
        || files_contain(dir.path(), b"INBOX-HELD-BODY-77aa").is_empty(),
    );
}

/// Retention erases too: a send that trims its conversation past retention, and the purge.
/// Neither the bound nor an idle store writes a snapshot when nothing was erased.
#[test]
fn trims_and_purges_past_retention_make_a_snapshot_due_and_sends_alone_none() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cfg = config(&clock)
        .with_retention_secs(3600)
        .with_erase_within_secs(3600);
    let store = Store::open(dir.path(), cfg).unwrap();
    store
        .import_accounts(&["vinson", "dramon", "third"])
        .unwrap();
    // An inbox entry that only expires erases nothing: its history keeps the message. (The
    // server purges every minute; counting these would snapshot the store every interval.)
    let mut short = text_req("dramon", "third", 9, "SHORT-LIVED-KEPT");
    short.lifetime = Some(60);
    store.send(short).unwrap();
    clock.advance(120);
    let purged = store.purge_expired().unwrap();
    assert_eq!(
        (purged.messages, purged.inbox_entries),
        (0, 1),
        "{purged:?}"
    );
    assert_eq!(store.erasure_due(), None);
    send_text(&store, "vinson", "third", 1, "PURGED-BODY-1a6d");
    assert_eq!(store.erasure_due(), None);
    clock.advance(3700);
    // The purge erases the messages past retention (both of third's): due.
    let purged = store.purge_expired().unwrap();
    assert_eq!(purged.messages, 2, "{purged:?}");
    let due = store.erasure_due().expect("the purge erased a body");
    assert!(due <= std::time::Instant::now() + std::time::Duration::from_secs(3600));
    store.compact().unwrap();
    assert_eq!(store.erasure_due(), None, "the snapshot covered the purge");
    assert!(files_contain(dir.path(), b"PURGED-BODY-1a6d").is_empty());
    // A send that trims its conversation as it is stored erases the message it trims.
    send_text(&store, "vinson", "dramon", 2, "TRIMMED-BODY-8e21");
    assert_eq!(store.erasure_due(), None);
    clock.advance(3700);
    send_text(&store, "vinson", "dramon", 3, "later");
    assert!(store.erasure_due().is_some(), "the trim erased a body");
    store.compact().unwrap();
    assert_eq!(store.erasure_due(), None);
    assert!(files_contain(dir.path(), b"TRIMMED-BODY-8e21").is_empty());
    drop(store);
    // A store with a short bound that erased nothing has no snapshot due (its snapshot
    // thread waits without a deadline) and has written none.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(&clock).with_erase_within_secs(2)).unwrap();
    store.import_accounts(&["vinson", "dramon"]).unwrap();
    send_text(&store, "vinson", "dramon", 1, "hello");
    assert_eq!(store.erasure_due(), None);
    assert_eq!(snapshots_in(dir.path()), 0);
}

#[test]
fn a_second_open_of_a_locked_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    let err = Store::open(dir.path(), Config::default()).unwrap_err();
    assert!(matches!(err, OpenError::Locked(_)), "{err}");
    assert!(err.to_string().contains("in use"));
    drop(store);
    Store::open(dir.path(), Config::default()).unwrap();
}

#[test]
fn a_failed_open_leaves_the_directory_usable() {
    let dir = tempfile::tempdir().unwrap();
    let bad = Config::default().with_admins(["bad\nadmin"]);
    assert!(matches!(
        Store::open(dir.path(), bad),
        Err(OpenError::Config(_))
    ));
    Store::open(dir.path(), Config::default()).unwrap();
}

// ----- torn tails and bit flips -----

/// Builds a journal of more than 200 operations, one record each, remembering what a reader
/// saw after each. Returns (journal bytes, states), states[r] = state after r records.
fn journal_with_history() -> (tempfile::TempDir, Vec<u8>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let users = ["a", "b", "c", ADMIN];
    let store = Store::open(dir.path(), config(&clock).with_sync(SyncPolicy::None)).unwrap();
    let mut states = vec![observe(&store, &users), observe(&store, &users)]; // 0 records; 1: admin import
    let mut keys = Vec::new();
    for u in ["a", "b", "c"] {
        store.import_account(u).unwrap();
        states.push(observe(&store, &users));
    }
    for i in 0..220u32 {
        let pair = [("a", "b"), ("b", "a"), ("a", "c"), ("c", "b")][i as usize % 4];
        match i % 7 {
            3 if !keys.is_empty() => {
                let (f, t, k): &(String, String, String) = &keys[(i as usize * 5) % keys.len()];
                if store.recall(ADMIN, f, t, k).is_err() {
                    // Already recalled: no record; send instead to keep one record per step.
                    send_text(&store, pair.0, pair.1, i, &format!("m{i}"));
                }
            }
            5 if !keys.is_empty() => {
                let (f, t, k) = &keys[(i as usize * 3) % keys.len()];
                if store
                    .modify(f, t, k, Some(vec![MsgElement::text(format!("e{i}"))]), None)
                    .is_err()
                {
                    send_text(&store, pair.0, pair.1, i, &format!("m{i}"));
                }
            }
            6 => store.mark_read(pair.1, pair.0).unwrap(),
            _ => {
                let k = send_text(&store, pair.0, pair.1, i, &format!("m{i}"))
                    .msg_key
                    .to_string();
                keys.push((pair.0.to_string(), pair.1.to_string(), k));
            }
        }
        clock.advance(1);
        states.push(observe(&store, &users));
    }
    store.close().unwrap();
    let (_, bytes) = only_segment(dir.path());
    (dir, bytes, states)
}

fn reopen_with(bytes: &[u8], at: u64) -> Result<(Store, tempfile::TempDir), OpenError> {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("journal-00000000000000000000.log"), bytes).unwrap();
    Store::open(
        dir.path(),
        Config::default().with_clock(ManualClock::new(at)),
    )
    .map(|s| (s, dir))
}

#[test]
fn truncation_at_every_byte_reopens_to_a_prefix_of_the_operations() {
    let (_dir, bytes, states) = journal_with_history();
    assert!(states.len() > 200);
    let users = ["a", "b", "c", ADMIN];
    let now = T0 + 10_000;
    for cut in 0..=bytes.len() {
        let (store, _d) =
            reopen_with(&bytes[..cut], now).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let r = store.recovery_report().records_replayed as usize;
        // Records replayed = a prefix; the admin import at open may add one more record.
        let want = &states[r.max(1)];
        let got = observe(&store, &users);
        assert_eq!(&got, want, "cut at byte {cut} replayed {r} records");
    }
}

#[test]
fn single_bit_flips_are_detected_never_silently_applied() {
    let (_dir, bytes, states) = journal_with_history();
    let users = ["a", "b", "c", ADMIN];
    let full = states.last().unwrap();
    let mut detected = 0;
    let step = (bytes.len() / 400).max(1);
    for offset in (0..bytes.len()).step_by(step).chain([bytes.len() - 1]) {
        for bit in [0, 3, 7] {
            let mut flipped = bytes.clone();
            flipped[offset] ^= 1 << bit;
            match reopen_with(&flipped, T0 + 10_000) {
                Err(OpenError::Corrupt { offset: at, .. }) => {
                    assert!(
                        at <= offset as u64 + 12,
                        "reported at {at}, flipped at {offset}"
                    );
                    detected += 1;
                }
                Err(e) => panic!("flip at {offset}: unexpected {e}"),
                Ok((store, _d)) => {
                    // The store was closed cleanly, so the segment ends with a close's batch
                    // marker (16 bytes), which says the records before it were acknowledged:
                    // only damage to that marker looks like a torn write. It is cut off and
                    // said so, and no record is lost.
                    assert!(
                        offset >= bytes.len() - 16,
                        "flip at {offset} was not refused"
                    );
                    let report = store.recovery_report();
                    let (_, cut_at, _) = report
                        .truncated_tail
                        .clone()
                        .unwrap_or_else(|| panic!("flip at {offset} went unnoticed"));
                    assert_eq!(cut_at as usize, bytes.len() - 16);
                    assert_eq!(&observe(&store, &users), full);
                }
            }
        }
    }
    assert!(detected > 300);
}

#[test]
fn repair_truncates_at_the_damage_and_says_what_it_dropped() {
    let (_dir, mut bytes, states) = journal_with_history();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("journal-00000000000000000000.log"), &bytes).unwrap();
    let cfg = Config::default().with_clock(ManualClock::new(T0 + 10_000));
    assert!(matches!(
        Store::open(dir.path(), cfg.clone()),
        Err(OpenError::Corrupt { .. })
    ));
    let store = Store::open(dir.path(), cfg.with_repair(true)).unwrap();
    let report = store.recovery_report().clone();
    assert!(
        report
            .repaired
            .as_deref()
            .is_some_and(|r| r.contains("truncated at byte")),
        "{report:?}"
    );
    let r = report.records_replayed as usize;
    assert_eq!(observe(&store, &["a", "b", "c", ADMIN]), states[r]);
}

#[test]
fn a_deferred_recall_is_acknowledged_by_wait_and_survives_reopen() {
    use std::sync::{Arc, Mutex};
    #[derive(Default)]
    struct Seen(Mutex<u32>);
    impl imstore::Hooks for Seen {
        fn after_recall(&self, _: &imstore::RecallNotice) {
            *self.0.lock().unwrap() += 1;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let hooks = Arc::new(Seen::default());
    let store = Store::open(dir.path(), Config::default().with_hooks(hooks.clone())).unwrap();
    store.import_accounts(&["a", "b"]).unwrap();
    let keys: Vec<String> = (0..8)
        .map(|i| send_text(&store, "a", "b", i, "x").msg_key.to_string())
        .collect();
    let pending: Vec<_> = keys
        .iter()
        .map(|k| store.recall_deferred(ADMIN, "a", "b", k).unwrap())
        .collect();
    assert_eq!(
        *hooks.0.lock().unwrap(),
        0,
        "nothing is acknowledged before wait"
    );
    assert!(
        store
            .history(&HistoryQuery::new("a", "b", 10))
            .unwrap()
            .messages
            .iter()
            .all(|i| i.message.is_recalled())
    );
    for d in pending {
        d.wait().unwrap();
    }
    assert_eq!(*hooks.0.lock().unwrap(), 8);
    drop(store);
    let store = Store::open(dir.path(), Config::default()).unwrap();
    assert!(
        store
            .history(&HistoryQuery::new("a", "b", 10))
            .unwrap()
            .messages
            .iter()
            .all(|i| i.message.is_recalled())
    );
}

#[test]
fn concurrent_writers_under_every_policy_reopen_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let users = ["a", "b", "c", "d", ADMIN];
    let store = Store::open(dir.path(), Config::default().with_sync(SyncPolicy::Every)).unwrap();
    store.import_accounts(&["a", "b", "c", "d"]).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let store = &store;
            s.spawn(move || {
                let (from, to) = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")][t as usize];
                for i in 0..40u32 {
                    let k = send_text(store, from, to, t * 1000 + i, &format!("{t}/{i}"))
                        .msg_key
                        .to_string();
                    if i % 4 == 0 {
                        store.recall(ADMIN, from, to, &k).unwrap();
                    }
                }
            });
        }
    });
    let before = observe(&store, &users);
    drop(store);
    let store = Store::open(dir.path(), Config::default()).unwrap();
    assert_eq!(observe(&store, &users), before);
}

/// The segment files of `dir`, by name.
fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("journal-"))
        .collect();
    names.sort();
    names
}

/// A switch of journal segments that failed after creating the new file (a full disk, say)
/// leaves a file that starts inside the records the journal then went on writing to the
/// segment before. Neither a checkpoint nor an open may stumble over it: before, a file whose
/// header never landed stopped every compaction (and then every open), and one with its
/// header became the current segment at the next open, its new records numbered wrong.
#[test]
fn a_segment_left_by_a_failed_switch_is_passed_over_and_removed() {
    let clock = ManualClock::new(T0);
    // A real segment header for LSN `cut`: a scratch store's compaction after the same
    // records starts a segment there.
    let scratch = tempfile::tempdir().unwrap();
    let store = Store::open(scratch.path(), config(&clock)).unwrap();
    populate(&store, &clock);
    store.compact().unwrap();
    drop(store);
    let names = segments(scratch.path());
    let with_header = fs::read(scratch.path().join(names.last().unwrap())).unwrap();
    let cut_name = names.last().unwrap().clone();
    assert_ne!(cut_name, "journal-00000000000000000000.log");

    for header_landed in [false, true] {
        let clock = ManualClock::new(T0);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(&clock)).unwrap();
        populate(&store, &clock);
        // The failed switch's file; the journal goes on in segment 0.
        let leftover = dir.path().join(&cut_name);
        fs::write(
            &leftover,
            if header_landed { &with_header[..] } else { &[] },
        )
        .unwrap();
        for i in 0..5 {
            send_text(&store, "vinson", "third", 100 + i, &format!("after {i}"));
        }
        if !header_landed {
            // A checkpoint reads past it.
            store
                .compact()
                .expect("a compaction stopped at the leftover");
            send_text(&store, "third", "vinson", 200, "after the snapshot");
        }
        let before = observe(&store, &USERS);
        drop(store);
        let store = Store::open(dir.path(), config(&clock)).expect("the leftover stopped the open");
        assert_eq!(observe(&store, &USERS), before);
        assert!(!leftover.exists(), "the leftover is still there");
        // Writing goes on where it should: the next open sees it all.
        send_text(&store, "dramon", "third", 300, "after the open");
        let before = observe(&store, &USERS);
        drop(store);
        let store = Store::open(dir.path(), config(&clock)).unwrap();
        assert_eq!(
            observe(&store, &USERS),
            before,
            "header landed: {header_landed}"
        );
    }
}

/// A compaction with nothing written since the last one goes on in the segment that already
/// starts at its cut. Before, it made "the cut's segment" by opening that very file again,
/// truncating it, and a failure there (a full disk, an I/O error) removed the live segment:
/// every record acknowledged after it was gone at the next open.
#[cfg(feature = "fault-injection")]
#[test]
fn a_compaction_with_nothing_new_keeps_the_live_segment_when_a_new_one_cannot_start() {
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(&clock)).unwrap();
    populate(&store, &clock);
    store.compact().unwrap();
    let faults = store.faults().unwrap();
    faults.set_no_new_segment(true);
    // Nothing new: no segment to start, so nothing to fail.
    store.compact().expect("a compaction with nothing new");
    send_text(&store, "vinson", "third", 100, "after the compactions");
    // With records, the new segment cannot start: the compaction fails, the journal goes on.
    assert!(store.compact().is_err());
    send_text(&store, "third", "vinson", 101, "after the failure");
    faults.set_no_new_segment(false);
    let before = observe(&store, &USERS);
    drop(store);
    let store = Store::open(dir.path(), config(&clock)).expect("reopen");
    assert_eq!(observe(&store, &USERS), before);
    store.compact().expect("compaction works again");
}

/// The journal's only segment in `dir`, and its bytes.
fn only_segment(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a journal segment");
    let bytes = fs::read(&path).unwrap();
    (path, bytes)
}

/// A frame of a segment (FORMAT.md): where it starts, its kind, its payload's length.
#[derive(Clone, Copy, Debug)]
struct At {
    offset: usize,
    kind: u8,
    len: usize,
}

const OP: u8 = 1;
const BATCH: u8 = 10;

/// Every frame of a segment's written part, in order; it ends at the first zero header (space
/// reserved ahead and never written) or at the end of the file.
fn walk_frames(bytes: &[u8]) -> Vec<At> {
    let mut at = 24;
    let mut frames = Vec::new();
    while at + 12 <= bytes.len() && bytes[at..at + 12] != [0; 12] {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        frames.push(At {
            offset: at,
            kind: bytes[at + 4],
            len,
        });
        at += 12 + len;
    }
    frames
}

/// The batches of a segment: each a marker and the operation records after it, checked
/// against the length the marker declares.
fn batches(bytes: &[u8]) -> Vec<(At, Vec<At>)> {
    let mut out: Vec<(At, Vec<At>)> = Vec::new();
    for f in walk_frames(bytes) {
        match f.kind {
            BATCH => out.push((f, Vec::new())),
            OP => out
                .last_mut()
                .expect("a batch starts with its marker")
                .1
                .push(f),
            other => panic!("kind {other} in a segment"),
        }
    }
    for (m, records) in &out {
        let declared = u32::from_le_bytes(bytes[m.offset + 12..m.offset + 16].try_into().unwrap());
        let len: usize = records.iter().map(|r| 12 + r.len).sum();
        assert_eq!(
            declared as usize, len,
            "the marker at {} declares its batch",
            m.offset
        );
    }
    out
}

fn texts_between(store: &Store, a: &str, b: &str) -> Vec<String> {
    let page = store.history(&HistoryQuery::new(a, b, 100)).unwrap();
    let mut texts: Vec<String> = page
        .messages
        .iter()
        .map(|m| body_text(&m.message))
        .collect();
    texts.sort();
    texts
}

/// Five sends (MsgRandom `random` on, texts by `text`) acknowledged by one commit: one batch,
/// unless the committer thread's once-a-second write splits them (callers check).
fn five_in_one_commit(
    store: &Store,
    (from, to): (&str, &str),
    random: u32,
    text: impl Fn(u32) -> String,
) {
    let (_, ticket) = store.deferring(|| {
        for i in 0..5u32 {
            store
                .send(text_req(from, to, random + i, &text(i)))
                .unwrap();
        }
    });
    store.commit(ticket).unwrap();
}

/// A store in `dir` with three sends acknowledged one at a time, then five sent together
/// and acknowledged by one commit — one batch, unless the committer thread's once-a-second
/// write split them (then `None`: the caller tries again). The store is left open.
fn five_in_a_batch(dir: &Path, clock: &std::sync::Arc<ManualClock>) -> Option<Store> {
    let store = Store::open(dir, config(clock)).unwrap();
    store.import_accounts(&["a", "b"]).unwrap();
    for i in 0..3u32 {
        send_text(&store, "a", "b", i, &format!("acked-{i}"));
    }
    five_in_one_commit(&store, ("a", "b"), 100, |i| format!("batch-{i}"));
    let (_, bytes) = only_segment(dir);
    (batches(&bytes).last().unwrap().1.len() == 5).then_some(store)
}

/// A power loss while the last batch was being written: the disk kept some of its later
/// records and lost an earlier one (disks persist a write's blocks in any order). Its fsync
/// never returned, so none of it was acknowledged: the open cuts the journal at the damage,
/// as it cuts a torn tail, and serves what was acknowledged, instead of refusing to start until
/// an operator runs `repair`. (Here the batch's commit did return; the power loss is played
/// by copying the segment while the store is open — a crash — and damaging the copy as such a
/// write would have been.)
#[test]
fn a_last_batch_torn_out_of_order_by_a_power_loss_is_cut_at_the_open() {
    let clock = ManualClock::new(T0);
    let store = (0..5)
        .find_map(|_| {
            let dir = tempfile::tempdir().unwrap();
            five_in_a_batch(dir.path(), &clock).map(|store| (store, dir))
        })
        .expect("the five sends never made one batch");
    let (_, mut bytes) = only_segment(store.1.path());
    drop(store);
    let records = batches(&bytes).last().unwrap().1.clone();
    let end = records[4].offset + 12 + records[4].len;
    // The second record of the batch lost; the three after it kept.
    bytes[records[1].offset + 14] ^= 0x5a;
    let (store, live) = reopen_with(&bytes, T0).unwrap();
    let report = store.recovery_report();
    let (_, at, len) = report.truncated_tail.clone().expect("cut as a torn tail");
    assert_eq!(at as usize, records[1].offset);
    assert!((at + len) as usize >= end);
    assert!(report.repaired.is_none());
    assert_eq!(
        texts_between(&store, "a", "b"),
        ["acked-0", "acked-1", "acked-2", "batch-0"],
        "what was before the damage, nothing after it"
    );
    // The cut fell inside the batch: its marker now says how much of it is left, so the
    // next batch, written where the cut was, can itself be torn and cut. (Played again: a
    // crash image of the store just opened, five sends in one batch, and that batch's
    // marker lost with its records kept.)
    let (_, cut) = only_segment(live.path());
    drop(store);
    let torn_again = (0..5)
        .find_map(|_| {
            let (store, dir) = reopen_with(&cut, T0).unwrap();
            five_in_one_commit(&store, ("b", "a"), 200, |i| format!("again-{i}"));
            let (_, bytes) = only_segment(dir.path());
            drop(store);
            let b = batches(&bytes);
            let n = b.len();
            (b[n - 1].1.len() == 5).then(|| (b[n - 2].clone(), b[n - 1].0, bytes))
        })
        .expect("the five sends never made one batch");
    let (first, marker, mut bytes) = torn_again;
    // The first batch after the cut is the open's sequence floor (`Op::SeqFloor`: the store
    // had numbered entries), alone; the five sends come next.
    assert_eq!(
        (first.0.offset, first.1.len()),
        (at as usize, 1),
        "the next batch starts at the cut"
    );
    bytes[marker.offset + 14] ^= 0x5a;
    let (store, dir) = reopen_with(&bytes, T0).expect("a torn last batch, cut");
    let (_, again, _) = store.recovery_report().truncated_tail.clone().unwrap();
    assert_eq!(again as usize, marker.offset);
    assert_eq!(
        texts_between(&store, "b", "a"),
        ["acked-0", "acked-1", "acked-2", "batch-0"]
    );

    // The journal goes on after the cut, and a reopen reads it whole.
    send_text(&store, "b", "a", 9, "after");
    store.close().unwrap();
    let store = Store::open(dir.path(), config(&clock)).unwrap();
    assert!(store.recovery_report().truncated_tail.is_none());
    assert_eq!(
        texts_between(&store, "b", "a"),
        ["acked-0", "acked-1", "acked-2", "after", "batch-0"]
    );
}

/// Damage that is not in a torn last batch is refused, naming where, as before:
/// - in a batch another batch follows (a batch is written only once the one before it is
///   fsynced, so it was acknowledged);
/// - in the last batch of a cleanly closed store (the close ends the segment with a marker);
/// - from inside an earlier batch up to and over the last batch's marker, so that no whole
///   marker follows the damage (a garbled block holding the tails of small batches): the
///   batch the damage starts in says where it ends, and a record starts after that.
#[test]
fn damage_outside_a_torn_last_batch_is_refused() {
    let clock = ManualClock::new(T0);
    let refused = |bytes: &[u8], at: usize| match reopen_with(bytes, T0) {
        Err(OpenError::Corrupt { offset, .. }) => assert_eq!(offset as usize, at),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("acknowledged records behind the damage at {at} were dropped"),
    };
    let store = (0..5)
        .find_map(|_| {
            let dir = tempfile::tempdir().unwrap();
            five_in_a_batch(dir.path(), &clock).map(|store| (store, dir))
        })
        .expect("the five sends never made one batch");
    send_text(&store.0, "a", "b", 10, "later");
    let (_, crashed) = only_segment(store.1.path());
    store.0.close().unwrap();
    let (_, closed) = only_segment(store.1.path());

    // A batch follows.
    let b = batches(&crashed);
    let five = &b[b.len() - 2].1;
    let mut bytes = crashed.clone();
    bytes[five[1].offset + 14] ^= 0x5a;
    refused(&bytes, five[1].offset);

    // The last batch of a clean close.
    let b = batches(&closed);
    let (marker, records) = &b[b.len() - 2];
    assert!(
        b.last().unwrap().1.is_empty(),
        "a clean close's marker ends the segment"
    );
    assert_eq!(records.len(), 1, "the last send's batch: {marker:?}");
    let mut bytes = closed.clone();
    bytes[records[0].offset + 14] ^= 0x5a;
    refused(&bytes, records[0].offset);

    // The last batch of a store opened after a crash and closed without a write: the close
    // marks it too.
    let (store, dir) = reopen_with(&crashed, T0).unwrap();
    store.close().unwrap();
    let (_, reclosed) = only_segment(dir.path());
    let b = batches(&reclosed);
    assert!(b.last().unwrap().1.is_empty(), "the close's marker");
    let record = b[b.len() - 2].1[0];
    let mut bytes = reclosed.clone();
    bytes[record.offset + 14] ^= 0x5a;
    refused(&bytes, record.offset);

    // From inside the batch of five over the last batch's marker, its record kept.
    let b = batches(&crashed);
    let (five, last) = (&b[b.len() - 2].1, &b[b.len() - 1].0);
    let mut bytes = crashed.clone();
    for byte in &mut bytes[five[3].offset + 14..last.offset + 16] {
        *byte ^= 0x5a;
    }
    refused(&bytes, five[3].offset);
}

/// Under `every`, a writer that commits only its own records leaves the later ones pending:
/// they become the next batch, with a marker of their own, and every record keeps its place.
#[test]
fn every_batch_under_the_every_policy_starts_with_a_marker() {
    let clock = ManualClock::new(T0);
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(&clock).with_sync(SyncPolicy::Every)).unwrap();
        store.import_accounts(&["a", "b"]).unwrap();
        let ops = |bytes: &[u8]| walk_frames(bytes).iter().filter(|f| f.kind == OP).count();
        let before = ops(&only_segment(dir.path()).1);
        let markers = |bytes: &[u8]| {
            walk_frames(bytes)
                .iter()
                .filter(|f| f.kind == BATCH)
                .count()
        };
        let batches_before = markers(&only_segment(dir.path()).1);
        let first = store.send_deferred(text_req("a", "b", 1, "one")).unwrap();
        let second = store.send_deferred(text_req("a", "b", 2, "two")).unwrap();
        let third = store.send_deferred(text_req("b", "a", 3, "three")).unwrap();
        // The first alone (`every` writes up to what it waits for), then the other two —
        // unless the committer thread wrote all three meanwhile (it does once a second).
        first.wait().unwrap();
        let alone = ops(&only_segment(dir.path()).1) == before + 1;
        third.wait().unwrap();
        second.wait().unwrap();
        store.close().unwrap();
        if !alone {
            continue;
        }
        let (_, bytes) = only_segment(dir.path());
        let b = batches(&bytes);
        // The first send's batch, the other two's, the close's.
        let sizes: Vec<usize> = b[batches_before..].iter().map(|(_, r)| r.len()).collect();
        assert_eq!(sizes, [1, 2, 0]);
        let store = Store::open(dir.path(), config(&clock)).unwrap();
        assert!(store.recovery_report().truncated_tail.is_none());
        assert_eq!(texts_between(&store, "a", "b"), ["one", "three", "two"]);
        return;
    }
    panic!("the first send was never written alone");
}

/// The newest journal segment in `dir`, and its bytes.
fn newest_segment(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join(segments(dir).last().expect("a journal segment"));
    let bytes = fs::read(&path).unwrap();
    (path, bytes)
}

/// What a crash leaves of `dir` while its store is open: a copy of its files but the lock.
fn crash_image(dir: &Path) -> tempfile::TempDir {
    let image = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n != "LOCK") {
            fs::copy(&path, image.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    image
}

/// A power loss during the first write into a new segment (after a compaction's switch) that
/// lost the batch's marker and kept records after it. The segment's header, fsynced before any
/// batch, says (format version 2) that every batch in it starts with a marker, so the damage
/// at the first frame is the first batch's own marker: with no marker after it, that batch
/// is the last, never acknowledged, and the open cuts it. Before, this was refused until an
/// operator ran `repair`. Still refused: a later batch follows (it was acknowledged), or the
/// segment is version 1 (written before markers: nothing says its first frame began a batch).
#[test]
fn a_segments_first_batch_torn_from_its_start_is_cut_at_the_open() {
    let clock = ManualClock::new(T0);
    let (store, dir) = (0..5)
        .find_map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), config(&clock)).unwrap();
            store.import_accounts(&["a", "b"]).unwrap();
            for i in 0..3u32 {
                send_text(&store, "a", "b", i, &format!("acked-{i}"));
            }
            store.compact().unwrap();
            // Long enough that the batch runs past the segment's first 512-byte sector.
            let long = "x".repeat(200);
            five_in_one_commit(&store, ("a", "b"), 100, |i| format!("batch-{i}-{long}"));
            let (_, bytes) = newest_segment(dir.path());
            let b = batches(&bytes);
            // One batch of five, unless the committer's once-a-second write split them.
            (b.len() == 1 && b[0].1.len() == 5).then_some((store, dir))
        })
        .expect("the five sends never made a new segment's one batch");
    let crashed = crash_image(dir.path());
    send_text(&store, "b", "a", 9, "later");
    let followed = crash_image(dir.path());
    drop(store);

    let (path, bytes) = newest_segment(crashed.path());
    assert_ne!(
        path.file_name().unwrap(),
        "journal-00000000000000000000.log"
    );
    assert_eq!(&bytes[8..12], &2u32.to_le_bytes(), "a version 2 segment");
    let first = 24;
    let (marker, records) = batches(&bytes)[0].clone();
    assert_eq!(marker.offset, first);
    assert!(
        records[4].offset > 512,
        "the batch runs past the first sector"
    );
    let torn = |image: &tempfile::TempDir, version: u32| {
        let (path, mut bytes) = newest_segment(image.path());
        bytes[first + 14] ^= 0x5a;
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..20]);
        bytes[20..24].copy_from_slice(&crc.to_le_bytes());
        fs::write(path, bytes).unwrap();
    };
    let refused = |image: &tempfile::TempDir| match Store::open(image.path(), config(&clock)) {
        Err(OpenError::Corrupt { offset, .. }) => assert_eq!(offset as usize, first),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("acknowledged records behind the damage were dropped"),
    };

    // A later batch follows: refused.
    torn(&followed, 2);
    refused(&followed);

    // Version 1: refused.
    let old = crash_image(crashed.path());
    torn(&old, 1);
    refused(&old);

    // The last batch, in a version 2 segment: cut. Also as a power loss leaves it when the
    // disk kept the batch's later sectors and not its first: header, then zeros to 512.
    let cut = |image: &tempfile::TempDir| {
        let len = newest_segment(image.path()).1.len();
        let store = Store::open(image.path(), config(&clock)).expect("a torn first batch, cut");
        let report = store.recovery_report();
        let (_, at, cut) = report.truncated_tail.clone().expect("cut as a torn tail");
        assert_eq!((at as usize, (at + cut) as usize), (first, len));
        assert!(report.repaired.is_none());
        assert_eq!(
            texts_between(&store, "a", "b"),
            ["acked-0", "acked-1", "acked-2"]
        );
        store
    };
    let sector = crash_image(crashed.path());
    let (path, mut bytes) = newest_segment(sector.path());
    bytes[first..512].fill(0);
    fs::write(path, bytes).unwrap();
    drop(cut(&sector));
    torn(&crashed, 2);
    let store = cut(&crashed);
    // The journal goes on at the cut, and a reopen reads it whole.
    send_text(&store, "b", "a", 10, "after");
    store.close().unwrap();
    let store = Store::open(crashed.path(), config(&clock)).unwrap();
    assert!(store.recovery_report().truncated_tail.is_none());
    assert_eq!(
        texts_between(&store, "b", "a"),
        ["acked-0", "acked-1", "acked-2", "after"]
    );
}

/// Races that once left records replay could not apply, or applied otherwise than live: a
/// purge of idle devices and expired inbox entries that chose an account a delete then took;
/// a read mark whose peer a delete took meanwhile; a read mark made while the peer's first
/// message made their conversation. Each round sets them up, then starts them together; the
/// store reopened from its journal must open and be the store that was live.
#[test]
fn deletes_purges_and_read_marks_racing_reopen_to_the_same_state() {
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    const ROUNDS: usize = 150;
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        config(&clock)
            .with_sync(SyncPolicy::None)
            .with_retention_secs(3_600)
            .with_device_idle_secs(60)
    };
    let store = Store::open(dir.path(), cfg()).unwrap();
    store.import_accounts(&["p0", "p1"]).unwrap();
    let gone: Vec<String> = (0..ROUNDS).map(|i| format!("gone{i}")).collect();
    let read: Vec<String> = (0..ROUNDS).map(|i| format!("read{i}")).collect();
    // The five racing threads and this one, which sets each round up.
    let (go, done) = (Barrier::new(6), Barrier::new(6));
    let stop = AtomicBool::new(false);
    let rounds = |op: &(dyn Fn(usize) + Sync)| {
        for i in 0..ROUNDS {
            go.wait();
            if !stop.load(Ordering::Relaxed) {
                op(i);
            }
            done.wait();
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| rounds(&|i| drop(store.delete_account(&gone[i]))));
        s.spawn(|| rounds(&|_| drop(store.purge_expired())));
        s.spawn(|| rounds(&|i| drop(store.mark_read("p0", &gone[i]))));
        s.spawn(|| rounds(&|i| drop(store.mark_read(&read[i], "p1"))));
        s.spawn(|| rounds(&|i| drop(store.send(text_req("p1", &read[i], 1, "first")))));
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..ROUNDS {
            if Instant::now() > deadline {
                stop.store(true, Ordering::Relaxed);
            } else {
                // An account with an idle device and an expired inbox entry, in a
                // conversation with p0; one that p1 has not yet written to.
                store.import_accounts(&[&gone[i], &read[i]]).unwrap();
                let phone = store.connect(&gone[i], "phone").unwrap();
                store.disconnect(phone).unwrap();
                send_text(&store, "p0", &gone[i], 1, "expires");
                clock.advance(3_601);
            }
            go.wait();
            done.wait();
        }
    });
    let users: Vec<&str> = ["p0", "p1"]
        .into_iter()
        .chain(gone.iter().map(String::as_str))
        .chain(read.iter().map(String::as_str))
        .collect();
    let live = observe(&store, &users);
    drop(store);
    let store = Store::open(dir.path(), cfg()).expect("the journal replays");
    assert_eq!(observe(&store, &users), live);
}

/// A full disk while a checkpoint switches segments. The records appended meanwhile were
/// accepted with room reserved in the old segment: the switch must neither give that room back
/// nor move them into a new segment that has none for them. It fails instead, and they are
/// written where their room is. Before, their write failed (the fault injection fails a write
/// past the reserved space, as a full disk does), and the journal with it: every later
/// operation answered 91000 until a restart.
#[cfg(feature = "fault-injection")]
#[test]
fn a_full_disk_during_a_switch_of_segments_fails_the_switch_not_the_journal() {
    use std::time::Duration;
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(&clock)).unwrap();
    store.import_accounts(&["a", "b"]).unwrap();
    send_text(&store, "a", "b", 1, "before");
    let faults = store.faults().unwrap();
    faults.hold_write.close();
    std::thread::scope(|s| {
        let compact = s.spawn(|| store.compact());
        assert!(
            faults.hold_write.wait_for_held(1, Duration::from_secs(10)),
            "the switch writes the old segment's last batch"
        );
        let during: Vec<_> = (0..5u32)
            .map(|i| {
                store
                    .send_deferred(text_req("a", "b", 10 + i, &format!("during-{i}")))
                    .unwrap()
            })
            .collect();
        faults.set_no_space(true);
        faults.hold_write.open();
        let switched = compact.join().unwrap();
        assert!(switched.is_err(), "no room in a new segment: {switched:?}");
        for d in during {
            d.wait().expect("accepted with room reserved: written");
        }
    });
    faults.set_no_space(false);
    send_text(&store, "a", "b", 20, "after");
    store.compact().expect("the switch works again");
    drop(store);
    let store = Store::open(dir.path(), config(&clock)).unwrap();
    let mut want = vec!["after", "before"];
    want.extend(["during-0", "during-1", "during-2", "during-3", "during-4"]);
    assert_eq!(texts_between(&store, "a", "b"), want);
}

/// A copy of the (closed) store's directory: a backup to restore later.
fn backup_of(dir: &Path) -> tempfile::TempDir {
    let backup = tempfile::tempdir().unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir.join("."))
        .arg(backup.path())
        .status()
        .unwrap();
    assert!(copied.success());
    backup
}

/// Sequence numbers are never reused (R6), even where the journal lost records a device saw:
/// a backup restored, or a power loss under `none`. Each open of a store that numbered
/// anything raises every inbox's numbering to the clock in microseconds (`Op::SeqFloor`), so
/// a later open numbers above everything an earlier one gave. Before, the restored store
/// numbered its next entry 2, a number the phone had seen and confirmed: resuming after 3,
/// the phone never got the message, and a client dropping repeats by number would drop it.
#[test]
fn a_restored_backup_numbers_above_every_number_given_after_it() {
    let (disk, store) = on_disk(&["a", "b"]);
    send_text(&store, "a", "b", 1, "one");
    store.close().unwrap();
    let backup = backup_of(disk.dir.path());

    // The live store goes on: the phone receives two more and confirms all three.
    disk.clock.advance(60);
    let store = disk.reopen();
    let phone = store.connect("b", "phone").unwrap();
    send_text(&store, "a", "b", 2, "two");
    send_text(&store, "a", "b", 3, "three");
    let seen: Vec<u64> = drain(&phone).iter().map(|e| e.seq).collect();
    assert_eq!(seen[0], 1, "{seen:?}");
    assert_eq!(
        seen[1..],
        [(T0 + 60) * 1_000_000, (T0 + 60) * 1_000_000 + 1]
    );
    let last = seen[2];
    phone.ack(last).unwrap();
    store.disconnect(phone).unwrap();
    store.close().unwrap();

    // Back to the backup, later: what is sent now is numbered above all the phone saw.
    disk.clock.advance(60);
    let config = Config::default().with_clock(disk.clock.clone());
    let restored = Store::open(backup.path(), config.clone()).unwrap();
    send_text(&restored, "a", "b", 4, "after the restore");
    let phone = restored.connect_after("b", "phone", last).unwrap();
    let got = drain(&phone);
    assert_eq!(texts(&got), ["msg:after the restore"]);
    assert_eq!(got[0].seq, (T0 + 120) * 1_000_000);
    assert_eq!(phone.reset(), None, "not ahead: nothing to start over");
    drop(phone);
    // An account imported now, and one deleted and imported again, number above it too.
    restored.import_accounts(&["c", "d"]).unwrap();
    send_text(&restored, "a", "c", 5, "to c");
    assert_eq!(
        restored.inbox("c", 0).unwrap()[0].seq,
        (T0 + 120) * 1_000_000
    );
    restored.close().unwrap();
    // A clock set back leaves the floor where it was: nothing goes below it.
    disk.clock.set(T0);
    let restored = Store::open(backup.path(), config).unwrap();
    restored.delete_account("d").unwrap();
    restored.import_account("d").unwrap();
    send_text(&restored, "a", "d", 6, "to d");
    assert_eq!(
        restored.inbox("d", 0).unwrap()[0].seq,
        (T0 + 120) * 1_000_000
    );
    send_text(&restored, "a", "b", 7, "to b again");
    let b = restored.inbox("b", 0).unwrap();
    assert_eq!(b.last().unwrap().seq, (T0 + 120) * 1_000_000 + 1);
}

/// The floor is in the snapshot: an account imported after a snapshot's cut numbers from it
/// on replay as it did live. (Without it, the replay numbered that account's entries from 1.)
/// A new directory numbers from 1; every open after the first raises a floor.
#[test]
fn the_sequence_floor_survives_a_snapshot_and_a_new_store_numbers_from_one() {
    let (disk, store) = on_disk(&["a", "b"]);
    send_text(&store, "a", "b", 1, "one");
    assert_eq!(store.inbox("b", 0).unwrap()[0].seq, 1, "a new store");
    store.close().unwrap();

    disk.clock.advance(20);
    let store = disk.reopen();
    store.compact().unwrap();
    store.import_account("c").unwrap();
    send_text(&store, "a", "c", 2, "to c");
    send_text(&store, "a", "b", 3, "to b");
    let floor = (T0 + 20) * 1_000_000;
    assert_eq!(store.inbox("c", 0).unwrap()[0].seq, floor);
    assert_eq!(store.inbox("b", 1).unwrap()[0].seq, floor);
    store.close().unwrap();
    // The same clock: the floor stands (no new record); the replay numbers as the store did.
    let store = disk.reopen();
    assert_eq!(store.inbox("c", 0).unwrap()[0].seq, floor);
    assert_eq!(store.inbox("b", 1).unwrap()[0].seq, floor);
}

/// A backup of a store that had numbered nothing yet — accounts and history imported before
/// going live (`importmsg` as history reaches no inbox) — restored after the store went live:
/// the restored store numbers above what the live one gave too. (A floor raised only by
/// stores that had numbered something left this one numbering from 1 again, and the phone,
/// resuming after 3, missed three messages.)
#[test]
fn a_backup_taken_before_anything_was_numbered_numbers_above_the_live_store() {
    let (disk, store) = on_disk(&["a", "b"]);
    store.close().unwrap();
    let backup = backup_of(disk.dir.path());

    disk.clock.advance(60);
    let store = disk.reopen();
    let phone = store.connect("b", "phone").unwrap();
    for i in 0..3 {
        send_text(&store, "a", "b", i, &format!("live {i}"));
    }
    let seen = drain(&phone);
    let last = seen.last().unwrap().seq;
    phone.ack(last).unwrap();
    store.disconnect(phone).unwrap();
    store.close().unwrap();

    disk.clock.advance(60);
    let config = Config::default().with_clock(disk.clock.clone());
    let restored = Store::open(backup.path(), config).unwrap();
    for i in 10..14 {
        send_text(&restored, "a", "b", i, &format!("restored {i}"));
    }
    let phone = restored.connect_after("b", "phone", last).unwrap();
    let got = drain(&phone);
    assert_eq!(got.len(), 4, "{:?}", texts(&got));
    assert!(got.iter().all(|e| e.seq > last));
}

/// Every open replays the floors journaled since the last snapshot, each a walk over every
/// account: once a replay met `FLOORS_BEFORE_CHECKPOINT` (8) of them, the open makes a
/// snapshot due, which folds them into one record.
#[test]
fn many_restarts_without_writes_make_a_snapshot_due() {
    let (disk, store) = on_disk(&["a", "b"]);
    send_text(&store, "a", "b", 1, "one");
    store.close().unwrap();
    let before = snapshots_in(disk.dir.path());
    for _ in 0..9 {
        disk.clock.advance(1);
        disk.reopen().close().unwrap();
    }
    wait_until(
        "a snapshot after the ninth open",
        std::time::Duration::from_secs(20),
        || snapshots_in(disk.dir.path()) > before,
    );
    // The snapshot holds the floor: an account imported now numbers above it.
    disk.clock.advance(1);
    let store = disk.reopen();
    store.import_account("c").unwrap();
    send_text(&store, "a", "c", 2, "to c");
    assert_eq!(store.inbox("c", 0).unwrap()[0].seq, (T0 + 10) * 1_000_000);
}
