//! State-machine property test: random sequences of import / send / batch send / connect /
//! disconnect / read events / read marks / history / recall / modify against a small reference
//! model, checking R1, R2 and R3 (SPEC §4) after every step and exactly-once notices at the end.
//! The model's clients behave as real ones: they drop repeats by sequence number (delivery is at
//! least once, R7) and confirm what they received only sometimes.
#![allow(clippy::needless_range_loop)] // the model indexes accounts and devices by number

mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use imstore::{
    BatchSendRequest, Event, EventKind, HistoryQuery, MsgElement, SenderCopy, Store, Subscription,
};
use proptest::prelude::*;

const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const DEVICES: [&str; 2] = ["d0", "d1"];
const TIME: u32 = T0 as u32;

#[derive(Clone, Debug)]
enum Action {
    Import(usize),
    Send {
        from: usize,
        to: usize,
        seq: u32,
        copy: u8,
        text: u8,
    },
    Batch {
        from: usize,
        to: Vec<usize>,
        seq: u32,
    },
    Connect(usize, usize),
    Disconnect(usize, usize),
    /// Read what is ready; `true`: then confirm it (ack).
    Read(usize, usize, bool),
    MarkRead(usize, usize),
    History(usize, usize, u32),
    Recall {
        from: usize,
        to: usize,
        seq: u32,
    },
    /// `recall_many` of these (from, to, seq), over more than one wave when long.
    RecallMany(Vec<(usize, usize, u32)>),
    Modify {
        from: usize,
        to: usize,
        seq: u32,
        text: u8,
    },
}

fn action() -> impl Strategy<Value = Action> {
    let u = 0..USERS.len();
    let d = 0..DEVICES.len();
    prop_oneof![
        1 => u.clone().prop_map(Action::Import),
        6 => (u.clone(), u.clone(), 0..6u32, 0..3u8, any::<u8>())
            .prop_map(|(from, to, seq, copy, text)| Action::Send { from, to, seq, copy, text }),
        1 => (u.clone(), proptest::collection::vec(u.clone(), 1..4), 0..6u32)
            .prop_map(|(from, to, seq)| Action::Batch { from, to, seq }),
        2 => (u.clone(), d.clone()).prop_map(|(a, b)| Action::Connect(a, b)),
        1 => (u.clone(), d.clone()).prop_map(|(a, b)| Action::Disconnect(a, b)),
        3 => (u.clone(), d, any::<bool>()).prop_map(|(a, b, ack)| Action::Read(a, b, ack)),
        1 => (u.clone(), u.clone()).prop_map(|(a, b)| Action::MarkRead(a, b)),
        2 => (u.clone(), u.clone(), 1..5u32).prop_map(|(a, b, n)| Action::History(a, b, n)),
        3 => (u.clone(), u.clone(), 0..6u32).prop_map(|(from, to, seq)| Action::Recall { from, to, seq }),
        1 => proptest::collection::vec((u.clone(), u.clone(), 0..6u32), 1..40)
            .prop_map(Action::RecallMany),
        1 => (u.clone(), u, 0..6u32, any::<u8>())
            .prop_map(|(from, to, seq, text)| Action::Modify { from, to, seq, text }),
    ]
}

/// What the model knows of one message.
#[derive(Clone, Debug)]
struct ModelMsg {
    text: String,
    recalled: bool,
    in_sender_view: bool,
}

type MsgId = (usize, usize, u32); // (from, to, seq); random and time are fixed

#[derive(Default)]
struct Model {
    imported: [bool; 4],
    msgs: BTreeMap<MsgId, ModelMsg>,
    unread: HashMap<(usize, usize), u32>,      // (account, peer)
    read_upto: HashMap<(usize, usize), usize>, // messages received before the mark are read
    arrivals: Vec<MsgId>,
}

struct Harness {
    store: Store,
    model: Model,
    subs: HashMap<(usize, usize), Subscription>,
    /// Everything each (account, device) has received, in order, repeats dropped.
    received: HashMap<(usize, usize), Vec<Event>>,
    /// The highest sequence number each (account, device) has received: what a client keeps to
    /// drop repeats.
    last_seen: HashMap<(usize, usize), u64>,
}

fn key(id: &MsgId) -> String {
    format!("{}_{}_{}", id.2, 1, TIME)
}

fn random_of(_id: &MsgId) -> u32 {
    1
}

impl Harness {
    fn new() -> Self {
        let (store, _) = store_with(&[]);
        Harness {
            store,
            model: Model::default(),
            subs: HashMap::new(),
            received: HashMap::new(),
            last_seen: HashMap::new(),
        }
    }

    fn step(&mut self, a: &Action) {
        match a.clone() {
            Action::Import(u) => {
                self.store.import_account(USERS[u]).unwrap();
                self.model.imported[u] = true;
            }
            Action::Send {
                from,
                to,
                seq,
                copy,
                text,
            } => {
                let copy = [
                    SenderCopy::Roaming,
                    SenderCopy::RoamingAndDevices,
                    SenderCopy::Nothing,
                ][copy as usize];
                let text = format!("t{text}");
                let mut req = text_req(USERS[from], USERS[to], random_of(&(from, to, seq)), &text);
                req.msg_seq = Some(seq);
                req.msg_time = Some(TIME);
                req.sender_copy = copy;
                let got = self.store.send(req).map(|r| r.msg_key.to_string());
                let want = self.model_send(from, to, seq, text, copy != SenderCopy::Nothing, false);
                assert_eq!(got.map_err(|e| e.code()), want, "{a:?}");
            }
            Action::Batch { from, to, seq } => {
                let req = BatchSendRequest {
                    from: Some(USERS[from].into()),
                    to: to.iter().map(|&t| USERS[t].to_string()).collect(),
                    msg_random: 1,
                    msg_seq: Some(seq),
                    msg_time: Some(TIME),
                    body: vec![MsgElement::text("batch")],
                    cloud_custom_data: None,
                    sender_copy: SenderCopy::Roaming,
                    lifetime: None,
                    control: Default::default(),
                };
                let got = self.store.batch_send(req);
                if !self.model.imported[from] {
                    assert_eq!(got.unwrap_err().code(), 90008);
                    return;
                }
                let got = got.unwrap();
                let mut want_errors = Vec::new();
                for &t in &to {
                    if let Err(code) = self.model_send(from, t, seq, "batch".into(), true, true) {
                        want_errors.push((USERS[t].to_string(), code));
                    }
                }
                let got_errors: Vec<_> = got
                    .errors
                    .iter()
                    .map(|(u, e)| (u.clone(), e.code()))
                    .collect();
                assert_eq!(got_errors, want_errors, "{a:?}");
            }
            Action::Connect(u, d) => {
                let got = self.store.connect(USERS[u], DEVICES[d]);
                if self.model.imported[u] {
                    self.subs.insert((u, d), got.unwrap());
                } else {
                    assert_eq!(got.unwrap_err().code(), 70107);
                }
            }
            Action::Disconnect(u, d) => {
                if let Some(sub) = self.subs.remove(&(u, d)) {
                    self.store.disconnect(sub).unwrap();
                }
            }
            Action::Read(u, d, ack) => self.read(u, d, ack),
            Action::MarkRead(r, p) => {
                let got = self
                    .store
                    .mark_read(USERS[r], USERS[p])
                    .map_err(|e| e.code());
                let want = self.accounts_ok(r, p);
                assert_eq!(got, want);
                if want.is_ok() {
                    self.model.unread.remove(&(r, p));
                    self.model
                        .read_upto
                        .insert((r, p), self.model.arrivals.len());
                }
            }
            Action::History(op, peer, n) => self.check_history(op, peer, n),
            Action::Recall { from, to, seq } => {
                let got = self
                    .store
                    .recall(ADMIN, USERS[from], USERS[to], &key(&(from, to, seq)));
                let want = self.model_recall(from, to, seq);
                assert_eq!(
                    got.as_ref().map(|_| ()).map_err(|e| e.code()),
                    want,
                    "{a:?}"
                );
            }
            Action::RecallMany(items) => {
                let keys: Vec<String> = items.iter().map(key).collect();
                let batch: Vec<imstore::RecallItem<'_>> = items
                    .iter()
                    .zip(&keys)
                    .map(|(&(from, to, _), key)| imstore::RecallItem {
                        from: USERS[from],
                        to: USERS[to],
                        key,
                    })
                    .collect();
                let got = self.store.recall_many(ADMIN, &batch);
                assert_eq!(got.len(), items.len());
                // Each answers as `recall` would have, in order: the model recalls them one
                // after another.
                for (got, (from, to, seq)) in got.iter().zip(items) {
                    let want = self.model_recall(from, to, seq);
                    assert_eq!(
                        got.as_ref().map(|_| ()).map_err(|e| e.code()),
                        want,
                        "{a:?}, item {:?}",
                        (from, to, seq)
                    );
                }
            }
            Action::Modify {
                from,
                to,
                seq,
                text,
            } => {
                let text = format!("m{text}");
                let got = self.store.modify(
                    USERS[from],
                    USERS[to],
                    &key(&(from, to, seq)),
                    Some(vec![MsgElement::text(&text)]),
                    None,
                );
                let want = self.accounts_ok(from, to).and_then(|()| {
                    match self.model.msgs.get(&(from, to, seq)) {
                        None => Err(20022),
                        Some(m) if m.recalled => Err(20023),
                        Some(_) => Ok(()),
                    }
                });
                assert_eq!(got.map_err(|e| e.code()), want, "{a:?}");
                if want.is_ok() {
                    self.model.msgs.get_mut(&(from, to, seq)).unwrap().text = text;
                }
            }
        }
    }

    fn accounts_ok(&self, acting: usize, other: usize) -> Result<(), u32> {
        if !self.model.imported[acting] {
            Err(90008)
        } else if !self.model.imported[other] {
            Err(90003)
        } else {
            Ok(())
        }
    }

    fn is_read(&self, id: &MsgId) -> bool {
        let pos = self.model.arrivals.iter().position(|x| x == id).unwrap();
        self.model
            .read_upto
            .get(&(id.1, id.0))
            .is_some_and(|&upto| pos < upto)
    }

    /// What a recall of (from, to, seq) answers, by the model; applies it when it succeeds.
    fn model_recall(&mut self, from: usize, to: usize, seq: u32) -> Result<(), u32> {
        let want =
            self.accounts_ok(from, to)
                .and_then(|()| match self.model.msgs.get(&(from, to, seq)) {
                    None => Err(20022),
                    Some(m) if m.recalled => Err(20023),
                    Some(_) => Ok(()),
                });
        if want.is_ok() {
            let id = (from, to, seq);
            self.model.msgs.get_mut(&id).unwrap().recalled = true;
            if !self.is_read(&id) {
                *self.model.unread.get_mut(&(to, from)).unwrap() -= 1;
            }
        }
        want
    }

    fn model_send(
        &mut self,
        from: usize,
        to: usize,
        seq: u32,
        text: String,
        in_sender_view: bool,
        batch: bool,
    ) -> Result<String, u32> {
        if !self.model.imported[from] {
            return Err(90008);
        }
        if !self.model.imported[to] {
            return Err(if batch { 70107 } else { 90012 });
        }
        if from == to {
            return Err(90003);
        }
        let id = (from, to, seq);
        if let std::collections::btree_map::Entry::Vacant(v) = self.model.msgs.entry(id) {
            v.insert(ModelMsg {
                text,
                recalled: false,
                in_sender_view,
            });
            self.model.arrivals.push(id);
            *self.model.unread.entry((to, from)).or_default() += 1;
        }
        Ok(key(&id))
    }

    fn read(&mut self, u: usize, d: usize, ack: bool) {
        let Some(sub) = self.subs.get(&(u, d)) else {
            return;
        };
        let seen = self.last_seen.entry((u, d)).or_default();
        let mut events = sub.drain().unwrap();
        // R7: what was not confirmed comes again; the client drops repeats by number.
        events.retain(|e| e.seq > *seen);
        for w in events.windows(2) {
            assert!(w[0].seq < w[1].seq, "events in inbox order");
        }
        if let Some(last) = events.last() {
            *seen = last.seq;
        }
        if ack {
            sub.ack(*seen).unwrap();
        }
        for e in &events {
            let (from, to, k) = match &e.kind {
                EventKind::Message(m) | EventKind::Modified { message: m, .. } => {
                    let id = self.id_of(&m.from, &m.to, m.key.seq());
                    let mm = &self.model.msgs[&id];
                    // R1: nothing recalled is delivered with a body.
                    assert!(!mm.recalled, "recalled {id:?} delivered to {u}/{d}");
                    assert_eq!(body_text(m), mm.text, "a delivered body is the current one");
                    (id.0, id.1, m.key.seq())
                }
                EventKind::Recalled(n) => {
                    let id = self.id_of(&n.from, &n.to, n.key.seq());
                    assert!(self.model.msgs[&id].recalled);
                    (id.0, id.1, n.key.seq())
                }
            };
            // R3: only the parties hear about a message.
            assert!(u == from || u == to, "{u} heard about {from}->{to} #{k}");
        }
        self.received.entry((u, d)).or_default().extend(events);
        // R3: at most one notice per message, after the message if it was delivered.
        let mut seen: HashMap<MsgId, (bool, u32)> = HashMap::new();
        for e in &self.received[&(u, d)] {
            match &e.kind {
                EventKind::Message(m) => {
                    let s = seen
                        .entry(self.id_of(&m.from, &m.to, m.key.seq()))
                        .or_default();
                    assert_eq!(s.1, 0, "message after its recall notice");
                    assert!(!s.0, "message delivered twice to {u}/{d}");
                    s.0 = true;
                }
                EventKind::Recalled(n) => {
                    let s = seen
                        .entry(self.id_of(&n.from, &n.to, n.key.seq()))
                        .or_default();
                    s.1 += 1;
                    assert_eq!(s.1, 1, "two notices to {u}/{d}");
                }
                EventKind::Modified { .. } => {}
            }
        }
    }

    fn id_of(&self, from: &str, to: &str, seq: u32) -> MsgId {
        let f = USERS.iter().position(|u| *u == from).unwrap();
        let t = USERS.iter().position(|u| *u == to).unwrap();
        (f, t, seq)
    }

    /// R1/R2: history of every pair equals the model, page by page.
    fn check_history(&self, op: usize, peer: usize, n: u32) {
        let mut q = HistoryQuery::new(USERS[op], USERS[peer], n);
        let got = self.store.history(&q);
        if let Err(code) = self.accounts_ok(op, peer) {
            assert_eq!(got.unwrap_err().code(), code);
            return;
        }
        let mut all = Vec::new();
        let mut page = got.unwrap();
        loop {
            all.extend(page.messages.clone());
            match q.next_page(&page) {
                Some(next) => {
                    q = next;
                    page = self.store.history(&q).unwrap();
                }
                None => break,
            }
        }
        let want: Vec<_> = self
            .model
            .msgs
            .iter()
            .filter(|((f, t, _), m)| {
                (*f == peer && *t == op) || (*f == op && *t == peer && m.in_sender_view)
            })
            .collect();
        assert_eq!(all.len(), want.len(), "history {op}<->{peer}: {all:?}");
        for item in &all {
            let id = self.id_of(&item.message.from, &item.message.to, item.message.key.seq());
            let m = &self.model.msgs[&id];
            assert_eq!(item.message.is_recalled(), m.recalled, "{id:?}");
            assert_eq!(item.message.msg_flag_bits(), if m.recalled { 8 } else { 0 });
            if !m.recalled {
                assert_eq!(body_text(&item.message), m.text);
            }
            assert_eq!(item.is_peer_read, self.is_read(&id), "IsPeerRead of {id:?}");
        }
    }

    fn check_invariants(&self) {
        for op in 0..USERS.len() {
            for peer in 0..USERS.len() {
                if op != peer {
                    self.check_history(op, peer, 3);
                }
            }
            if !self.model.imported[op] {
                continue;
            }
            for peer in 0..USERS.len() {
                let want = self.model.unread.get(&(op, peer)).copied().unwrap_or(0);
                if self.model.imported[peer] {
                    assert_eq!(
                        self.store.unread(USERS[op], USERS[peer]).unwrap(),
                        want,
                        "unread {op}<-{peer}"
                    );
                }
            }
            // R1 in caches: recalled messages are tombstones.
            for d in DEVICES {
                if let Ok(cache) = self.store.device_cache(USERS[op], d) {
                    for m in cache {
                        let id = self.id_of(&m.from, &m.to, m.key.seq());
                        assert_eq!(m.is_recalled(), self.model.msgs[&id].recalled);
                    }
                }
            }
        }
    }

    /// R3 at the end: every device of both parties got exactly one notice per recalled message.
    fn finish(mut self) {
        for u in 0..USERS.len() {
            if !self.model.imported[u] {
                continue;
            }
            for d in 0..DEVICES.len() {
                if !self.subs.contains_key(&(u, d)) {
                    self.subs
                        .insert((u, d), self.store.connect(USERS[u], DEVICES[d]).unwrap());
                }
                self.read(u, d, true);
            }
        }
        for (id, m) in &self.model.msgs {
            if !m.recalled {
                continue;
            }
            for party in [id.0, id.1] {
                for d in 0..DEVICES.len() {
                    let n = self.received[&(party, d)]
                        .iter()
                        .filter(|e| matches!(&e.kind, EventKind::Recalled(n) if self.id_of(&n.from, &n.to, n.key.seq()) == *id))
                        .count();
                    assert_eq!(n, 1, "device {party}/{d} notices for {id:?}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_keep_r1_r2_r3(actions in proptest::collection::vec(action(), 1..60)) {
        let mut h = Harness::new();
        // Start with most accounts present so sequences reach the interesting paths.
        for u in 0..3 {
            h.step(&Action::Import(u));
        }
        for a in &actions {
            h.step(a);
            h.check_invariants();
        }
        h.finish();
    }
}
