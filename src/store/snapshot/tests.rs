use super::*;
use crate::journal::Recovered;
use crate::message::ARRIVAL_LIMIT;
use crate::{ManualClock, MsgElement, SendRequest};

fn snapshot_of(store: &Store, limit: usize) -> Vec<u8> {
    let capture = store.capture();
    crate::journal::snapshot_bytes(7, |w| capture.write_limited(w, limit)).unwrap()
}

fn restored(bytes: &[u8], config: &Config) -> Store {
    let store = Store::empty(config.clone()).unwrap();
    crate::journal::read_snapshot(bytes, &mut |rec| store.recover(rec)).unwrap();
    store
}

fn kinds(bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    let store = Store::empty(Config::default()).unwrap();
    crate::journal::read_snapshot(bytes, &mut |rec| {
        if let Recovered::Snapshot { kind, .. } = rec {
            kinds.push(kind);
        }
        store.recover(rec)
    })
    .unwrap();
    kinds
}

/// A conversation, an inbox, unread counts and deleted accounts too large for one record
/// are written in several and read back the same as when written whole.
#[test]
fn records_past_the_limit_are_split_and_read_back_whole() {
    let clock = ManualClock::new(1_700_000_000);
    let config = Config::default().with_clock(clock);
    let src = Store::in_memory(config.clone()).unwrap();
    let peers: Vec<String> = (0..60).map(|i| format!("peer-{i}")).collect();
    let gone: Vec<String> = (0..200).map(|i| format!("gone-{i}")).collect();
    src.import_accounts(&["big-a", "big-b"]).unwrap();
    src.import_accounts(&peers).unwrap();
    for chunk in gone.chunks(100) {
        src.import_accounts(chunk).unwrap();
    }
    let mut keys = Vec::new();
    for i in 0..400u32 {
        let text = format!("message number {i} of a long conversation");
        let mut req = SendRequest::new("big-a", "big-b", i, vec![MsgElement::text(&text)]);
        req.sender_copy = crate::SenderCopy::RoamingAndDevices;
        keys.push(src.send(req).unwrap().msg_key.to_string());
    }
    for key in keys.iter().step_by(7) {
        src.recall("administrator", "big-a", "big-b", key).unwrap();
    }
    for (i, p) in peers.iter().enumerate() {
        let req = SendRequest::new(p, "big-b", i as u32, vec![MsgElement::text("hi")]);
        src.send(req).unwrap();
    }
    for g in &gone {
        src.delete_account(g).unwrap();
    }
    drop(src.connect("big-b", "phone").unwrap());
    src.ack("big-b", "phone", 3).unwrap();

    let whole = snapshot_of(&src, codec::MAX_PAYLOAD);
    let split = snapshot_of(&src, 1024);
    let (k_whole, k_split) = (kinds(&whole), kinds(&split));
    assert!(!k_whole.contains(&kind::SNAP_CONVERSATION_MORE));
    let count = |k: &[u8], kind: u8| k.iter().filter(|&&x| x == kind).count();
    assert!(
        count(&k_split, kind::SNAP_CONVERSATION_MORE) > 5,
        "{k_split:?}"
    );
    assert!(count(&k_split, kind::SNAP_ACCOUNT_MORE) > 5, "{k_split:?}");
    assert!(count(&k_split, kind::SNAP_RETIRED) > 1, "{k_split:?}");
    // Each record of an inbox holds at most as many entries as take half the limit in
    // memory: its decode claims memory, not bytes (`codec::MAX_IMAGE_CLAIM`).
    let most = 1024 / 2 / std::mem::size_of::<codec::EntryImage<'_>>();
    let mut records = 0;
    crate::journal::read_snapshot(&split, &mut |rec| {
        if let Recovered::Snapshot { kind, payload } = rec
            && (kind == kind::SNAP_ACCOUNT2 || kind == kind::SNAP_ACCOUNT_MORE)
        {
            let img: AccountImage<'_> = codec::decode(payload).unwrap();
            assert!(img.entries.len() <= most, "{} > {most}", img.entries.len());
            records += 1;
        }
        Ok(())
    })
    .unwrap();
    assert!(records > 5, "{records}");

    // Both read back to the same store: captured again whole, the same bytes.
    let (a, b) = (restored(&whole, &config), restored(&split, &config));
    let again = snapshot_of(&a, codec::MAX_PAYLOAD);
    assert_eq!(again.len(), whole.len());
    assert!(again == snapshot_of(&b, codec::MAX_PAYLOAD));
    let history = |s: &Store| {
        let q = crate::HistoryQuery::new("big-a", "big-b", 20);
        s.history(&q).unwrap().messages.len()
    };
    assert_eq!(history(&b), 20);
    assert_eq!(b.inbox("big-b", 0).unwrap(), src.inbox("big-b", 0).unwrap());
    let unread = |s: &Store| {
        let mut all = s.unread_all("big-b").unwrap();
        all.sort();
        all.iter()
            .map(|(p, n)| format!("{p}:{n}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(unread(&b).len(), 61);
    assert_eq!(unread(&b), unread(&src));
    // Each restored conversation's slot says where its messages are (`Store::rehint`),
    // the long one's continued in records of their own too.
    for s in [&a, &b] {
        for (x, y) in [("big-a", "big-b"), ("peer-3", "big-b")] {
            let (x, y) = (UserId::new(x).unwrap(), UserId::new(y).unwrap());
            let (key, conv) = s.conversation_keyed(&x, &y).unwrap();
            let hint = conv.lock().hint();
            assert_ne!(hint, 0);
            assert_eq!(s.inner.conversations.get_hinted(&key).unwrap().1, hint);
        }
    }
}

/// A snapshot record past the frame limit is refused, not written: it could not be read
/// back. What came before it in the buffer stays.
#[test]
fn a_snapshot_record_past_the_frame_limit_is_refused() {
    let mut buf = Vec::new();
    snap_frame(&mut buf, kind::SNAP_END, codec::MAX_PAYLOAD, |b| {
        b.extend_from_slice(b"small")
    })
    .unwrap();
    let kept = buf.len();
    let big = snap_frame(&mut buf, kind::SNAP_OUTBOX, codec::MAX_PAYLOAD, |b| {
        b.resize(b.len() + codec::MAX_PAYLOAD + 1, 7)
    });
    assert!(big.unwrap_err().to_string().contains("limit"));
    // One item too large for a record on its own: the split cannot help.
    let mut w = |_: &[u8]| -> io::Result<()> { Ok(()) };
    let one = split_record(
        &mut buf,
        &mut w,
        100,
        ((kind::SNAP_CONVERSATION, 8), 1),
        3,
        |r, b| b.resize(b.len() + 160 * r.len(), 1),
    );
    assert!(one.unwrap_err().to_string().contains("limit"));
    assert_eq!(buf.len(), kept);
    snap_frame(&mut buf, kind::SNAP_OUTBOX, codec::MAX_PAYLOAD, |b| {
        b.resize(b.len() + codec::MAX_PAYLOAD, 7)
    })
    .unwrap();
}

#[test]
fn damaged_arrival_numbers_are_refused_on_restore() {
    assert_eq!(check_arrivals(1, [0, 0], 0), Ok(()));
    assert_eq!(check_arrivals(8, [7, 3], 7), Ok(()));
    assert_eq!(
        check_arrivals(ARRIVAL_LIMIT, [0, 0], ARRIVAL_LIMIT - 1),
        Ok(())
    );
    // Numbers would be handed out again, or read marks wrap below zero.
    assert!(check_arrivals(0, [0, 0], 0).is_err());
    assert!(check_arrivals(7, [0, 0], 7).is_err());
    assert!(check_arrivals(3, [0, 0], 7).is_err());
    assert!(check_arrivals(ARRIVAL_LIMIT + 1, [0, 0], 0).is_err());
    // A read mark at or past the next arrival marks messages to come as read.
    assert!(check_arrivals(8, [8, 0], 7).is_err());
    assert!(check_arrivals(8, [0, u64::MAX], 7).is_err());
}

/// An account record whose inbox would number an entry again, or whose device cursor is
/// past its last entry, is refused on restore.
#[test]
fn damaged_inbox_numbers_are_refused_on_restore() {
    let entry = |seq: u64| codec::EntryImage {
        seq,
        expires_at: 1,
        kind: 1,
        modified_at: 0,
        msg: codec::MsgRef::Roaming {
            from: "a",
            to: "b",
            key: (1, 2, 3),
        },
    };
    let account = |next_seq: u64, seqs: &[u64], cursor: u64| AccountImage {
        user: "b",
        next_seq,
        entries: seqs.iter().map(|&s| entry(s)).collect(),
        devices: vec![("phone", cursor, 0)],
        unread: vec![],
    };
    assert_eq!(check_account(&account(8, &[3, 5, 7], 7)), Ok(()));
    assert_eq!(check_account(&account(1, &[], 0)), Ok(()));
    assert!(check_account(&account(0, &[], 0)).is_err());
    assert!(
        check_account(&account(2, &[5], 1)).is_err(),
        "an entry past next"
    );
    assert!(
        check_account(&account(8, &[5, 3], 5)).is_err(),
        "out of order"
    );
    assert!(check_account(&account(8, &[5, 5], 5)).is_err(), "twice");
    assert!(
        check_account(&account(8, &[5], 8)).is_err(),
        "a cursor past the end"
    );
}
