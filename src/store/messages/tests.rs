use crate::hooks::BeforeSend;
use crate::{Config, HistoryQuery, MsgElement, MsgKey, SendRequest, Store, UserId};

/// Every conversation filed in one place (the conversations' table's last key word the
/// same for all, `table::with_one_place`): only the accounts' numbers tell conversations
/// apart. Messages both ways between every pair of eight accounts, some recalled: each
/// conversation's history and unread counts are its own — live, after a replay of the
/// journal, and after a restore from a snapshot, where a later send finds its
/// conversation rather than making another.
#[test]
fn conversations_filed_in_one_place_are_still_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..8).map(|i| format!("one-place-{i}")).collect();
    let open =
        || crate::table::with_one_place(|| Store::open(dir.path(), Config::default()).unwrap());
    let store = open();
    store.import_accounts(&names).unwrap();
    let send = |store: &Store, x: usize, y: usize, seq: u32| {
        let mut req = SendRequest::new(&names[x], &names[y], 7, vec![MsgElement::text("m")]);
        req.msg_seq = Some(seq);
        store.send(req).unwrap().msg_key
    };
    // (sender, recipient, MsgSeq, recalled): one to three messages each way of each pair.
    let mut sent = Vec::new();
    for x in 0..8 {
        for y in (0..8).filter(|&y| y != x) {
            for _ in 0..=(x + 2 * y) % 3 {
                let seq = sent.len() as u32 + 1;
                let key = send(&store, x, y, seq);
                let recalled = seq.is_multiple_of(5);
                if recalled {
                    store
                        .recall("administrator", &names[x], &names[y], &key.to_string())
                        .unwrap();
                }
                sent.push((x, y, seq, recalled));
            }
        }
    }
    let check = |store: &Store, sent: &[(usize, usize, u32, bool)]| {
        assert_eq!(store.inner.conversation_list.len(), 28, "one per pair");
        for x in 0..8 {
            for y in (0..8).filter(|&y| y != x) {
                let page = store
                    .history(&HistoryQuery::new(&names[x], &names[y], 100))
                    .unwrap();
                let mut got: Vec<(u32, bool)> = page
                    .messages
                    .iter()
                    .map(|m| (m.message.key.seq(), m.message.is_recalled()))
                    .collect();
                got.sort();
                let pair = |&&(a, b, ..): &&(usize, usize, u32, bool)| {
                    (a, b) == (x, y) || (a, b) == (y, x)
                };
                let want: Vec<(u32, bool)> = sent
                    .iter()
                    .filter(pair)
                    .map(|&(_, _, s, r)| (s, r))
                    .collect();
                assert_eq!(got, want, "{x} and {y}");
                let unread = sent
                    .iter()
                    .filter(|&&(a, b, _, r)| (a, b) == (y, x) && !r)
                    .count();
                assert_eq!(store.unread(&names[x], &names[y]).unwrap() as usize, unread);
            }
        }
    };
    check(&store, &sent);
    store.close().unwrap();
    let store = open();
    check(&store, &sent);
    store.compact().unwrap();
    store.close().unwrap();
    let store = open();
    check(&store, &sent);
    let seq = sent.len() as u32 + 1;
    send(&store, 3, 6, seq);
    sent.push((3, 6, seq, false));
    check(&store, &sent);
}

/// Sends a text from `from` to `to` with MsgSeq `seq` (and MsgTimeStamp `time`, if given)
/// as a request that found `found` would: the hint `apply` is handed.
fn send_hinted(
    store: &Store,
    (from, to): (&str, &str),
    seq: u32,
    time: Option<u32>,
    found: crate::store::Found,
) {
    let mut req = SendRequest::new(from, to, 7, vec![MsgElement::text("m")]);
    req.msg_seq = Some(seq);
    req.msg_time = time;
    let mut prepared = store.prepare_send(req).unwrap();
    prepared.found = found;
    store
        .finish_send(prepared, BeforeSend::Allow)
        .unwrap()
        .wait()
        .unwrap();
}

/// A send whose request found no conversation for its two (right) cells is not looked
/// up again before `conversation_or_new`: when the pair has one all the same (made since
/// the request looked), the send goes into it — no second conversation, one history.
#[test]
fn a_send_told_there_is_no_conversation_finds_the_one_there_is() {
    let store = Store::in_memory(Config::default()).unwrap();
    store.import_accounts(&["none-a", "none-b"]).unwrap();
    let number = |name: &str| store.inner.accounts.by_name_numbered(name).unwrap().0;
    let (na, nb) = (number("none-a"), number("none-b"));
    let time = Some(store.now() as u32);
    // What a request that looked before the first send made the conversation saw.
    let none = Some((na, nb, None));
    for seq in 1..=3 {
        send_hinted(&store, ("none-a", "none-b"), seq, time, none);
    }
    assert_eq!(store.inner.conversation_list.len(), 1);
    let page = store
        .history(&HistoryQuery::new("none-b", "none-a", 10))
        .unwrap();
    let mut seqs: Vec<u32> = page.messages.iter().map(|m| m.message.key.seq()).collect();
    seqs.sort();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(store.unread("none-b", "none-a").unwrap(), 3);
    // A duplicate (same MsgKey) told the same is still found a duplicate in it.
    send_hinted(&store, ("none-a", "none-b"), 2, time, none);
    let page = store
        .history(&HistoryQuery::new("none-b", "none-a", 10))
        .unwrap();
    assert_eq!(page.messages.len(), 3, "a duplicate adds nothing");
    assert_eq!(store.unread("none-b", "none-a").unwrap(), 3);
}

/// The cells' and conversation's numbers a request hands `apply` are a hint: wrong ones —
/// another pair's, a deleted account's, numbers no cell has — change nothing but the
/// lookup taken.
#[test]
fn a_wrong_hint_of_cells_changes_nothing() {
    let store = Store::in_memory(Config::default()).unwrap();
    store
        .import_accounts(&["hint-a", "hint-b", "hint-c", "hint-d"])
        .unwrap();
    let number = |name: &str| store.inner.accounts.by_name_numbered(name).unwrap().0;
    let (nc, nd) = (number("hint-c"), number("hint-d"));
    let id = |name: &str| UserId::new(name).unwrap();
    // c and d have a conversation: its number is in the wrong hints below.
    store
        .send(SendRequest::new(
            "hint-c",
            "hint-d",
            7,
            vec![MsgElement::text("cd")],
        ))
        .unwrap();
    let cell = |name: &str| store.inner.accounts.by_name_numbered(name).unwrap().1;
    let ncd = store
        .inner
        .conversations
        .get(&store.conv_key_of(cell("hint-c"), cell("hint-d")));
    assert!(ncd.is_some());
    let history = |x: &str, y: &str| {
        let page = store.history(&HistoryQuery::new(x, y, 10)).unwrap();
        page.messages
            .iter()
            .map(|m| (m.message.key.seq(), m.message.is_recalled()))
            .collect::<Vec<_>>()
    };
    // A send whose request found c and d: it is a's to b all the same.
    for seq in 1..=3 {
        send_hinted(&store, ("hint-a", "hint-b"), seq, None, Some((nc, nd, ncd)));
    }
    assert_eq!(history("hint-b", "hint-a").len(), 3);
    assert_eq!(history("hint-c", "hint-d").len(), 1);
    assert_eq!(store.unread("hint-b", "hint-a").unwrap(), 3);
    assert_eq!(store.unread("hint-d", "hint-c").unwrap(), 1);
    // Recalls with the wrong pair's cells, and with numbers no cell has.
    let admin = id("administrator");
    let sent = |seq: u32| {
        let page = store
            .history(&HistoryQuery::new("hint-a", "hint-b", 10))
            .unwrap();
        page.messages
            .iter()
            .map(|m| m.message.key)
            .find(|k: &MsgKey| k.seq() == seq)
            .unwrap()
    };
    let recall = |seq: u32, found| {
        store
            .recall_op(id("hint-a"), id("hint-b"), sent(seq), admin.clone(), found)
            .and_then(|d| d.wait())
    };
    recall(1, Some((nc, nd, ncd))).unwrap();
    recall(2, Some((u32::MAX, u32::MAX - 1, Some(u32::MAX)))).unwrap();
    let mut seen = history("hint-b", "hint-a");
    seen.sort();
    assert_eq!(seen, [(1, true), (2, true), (3, false)]);
    assert_eq!(store.unread("hint-b", "hint-a").unwrap(), 1);
    // A modify with the wrong pair's cells changes a's message to b.
    let op = crate::op::Op::Modify(Box::new(crate::op::ModifyOp {
        from: id("hint-a"),
        to: id("hint-b"),
        key: sent(3),
        body: None,
        cloud_custom_data: Some("changed".into()),
        at: store.now(),
        notice: None,
    }));
    store.run_found(&op, Some((nc, nd, ncd))).unwrap();
    let page = store
        .history(&HistoryQuery::new("hint-b", "hint-a", 10))
        .unwrap();
    let modified = page.messages.iter().find(|m| m.message.key.seq() == 3);
    let custom = modified.and_then(|m| m.message.content.as_ref()?.cloud_custom_data());
    assert_eq!(custom, Some("changed"));
    // A hint naming a deleted account's cell answers as the lookup does: 90003 (their
    // conversation's number in the hint, right as it is, changes nothing).
    let nb = number("hint-b");
    let na = number("hint-a");
    let nab = store
        .inner
        .conversations
        .get(&store.conv_key_of(cell("hint-a"), cell("hint-b")));
    assert!(nab.is_some() && nab != ncd);
    let key = sent(3);
    store.delete_account("hint-b").unwrap();
    let err = store
        .recall_op(
            id("hint-a"),
            id("hint-b"),
            key,
            admin.clone(),
            Some((na, nb, nab)),
        )
        .unwrap_err();
    assert_eq!(err.code(), 90003, "{err}");
}

/// Both names of a request are looked up together (`Store::pair`); what is missing is
/// still said in the request's order: the acting account (90008) before its peer (90003),
/// a deleted account as one never imported, a name no account could have as unknown.
#[test]
fn a_pair_of_names_reports_the_acting_one_first() {
    let store = Store::in_memory(Config::default()).unwrap();
    store
        .import_accounts(&["pair-a", "pair-b", "pair-gone"])
        .unwrap();
    store.delete_account("pair-gone").unwrap();
    let long = "x".repeat(40);
    let send = |from: &str, to: &str| {
        store
            .send(SendRequest::new(from, to, 1, vec![MsgElement::text("m")]))
            .map(|_| ())
            .map_err(|e| e.code())
    };
    let history = |op: &str, peer: &str| {
        store
            .history(&HistoryQuery::new(op, peer, 10))
            .map(|_| ())
            .map_err(|e| e.code())
    };
    let recall = |from: &str, to: &str| {
        store
            .recall("administrator", from, to, "1_1_1700000000")
            .map(|_| ())
            .map_err(|e| e.code())
    };
    type Call<'a> = &'a dyn Fn(&str, &str) -> Result<(), u32>;
    // A send's recipient that names no account: 90012 (Tencent's sendmsg); other peers 90003.
    let calls: [(Call<'_>, u32); 3] = [(&send, 90012), (&history, 90003), (&recall, 90003)];
    for (f, peer_code) in calls {
        assert_eq!(f("pair-none", "pair-none2"), Err(90008));
        assert_eq!(f("pair-none", "pair-b"), Err(90008));
        assert_eq!(f("pair-gone", "pair-b"), Err(90008));
        assert_eq!(f(&long, "pair-none"), Err(90008));
        assert_eq!(f("pair-a", "pair-none"), Err(peer_code));
        assert_eq!(f("pair-a", "pair-gone"), Err(peer_code));
        assert_eq!(f("pair-a", &long), Err(peer_code));
    }
    assert_eq!(send("pair-a", "pair-b"), Ok(()));
    assert_eq!(history("pair-b", "pair-a"), Ok(()));
    assert_eq!(
        store
            .last_message("pair-gone", "pair-a")
            .unwrap_err()
            .code(),
        90008
    );
    assert_eq!(
        store
            .last_message("pair-b", "pair-gone")
            .unwrap_err()
            .code(),
        90003
    );
    assert!(store.last_message("pair-b", "pair-a").unwrap().is_some());
}
