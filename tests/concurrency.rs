//! Threads (R1, R3, R4): senders, a recaller, device readers and history pagers share
//! conversations. No live copy of a message is seen after its recall was acknowledged, nothing
//! deadlocks, and every device receives each notice exactly once.
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use imstore::{EventKind, HistoryQuery, MsgKey, Subscription};

const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const PER_SENDER: u32 = 1500;

type Id = (String, String, MsgKey);

/// When each recall was acknowledged, on a shared logical clock.
struct Acks {
    clock: AtomicU64,
    recalled_at: Mutex<HashMap<Id, u64>>,
}

impl Acks {
    fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }
    /// Panics if `id` was acknowledged as recalled before `started`.
    fn assert_live_allowed(&self, id: &Id, started: u64, what: &str) {
        if let Some(&at) = self.recalled_at.lock().unwrap().get(id) {
            assert!(
                at >= started,
                "{what} showed {id:?} live after its recall was acknowledged"
            );
        }
    }
}

#[test]
fn concurrent_send_recall_sync_and_history_keep_r1_r3_r4() {
    let (store, _) = store_with(&USERS);
    let acks = Acks {
        clock: AtomicU64::new(1),
        recalled_at: Mutex::new(HashMap::new()),
    };
    let done = AtomicBool::new(false);
    let (sent_tx, sent_rx) = crossbeam_channel::unbounded::<Id>();
    let subs: Vec<(usize, Subscription)> = (0..USERS.len())
        .flat_map(|u| ["a", "b"].map(|d| (u, store.connect(USERS[u], d).unwrap())))
        .collect();
    let (subs_left, subs_right) = subs.split_at(subs.len() / 2);

    let logs = std::thread::scope(|s| {
        for t in 0..2u32 {
            let (store, sent_tx) = (&store, sent_tx.clone());
            s.spawn(move || {
                for i in 0..PER_SENDER {
                    let from = USERS[((i + t) % 4) as usize];
                    let to = USERS[((i + t + 1 + i % 2) % 4) as usize];
                    let r = store
                        .send(text_req(from, to, i * 2 + t, &format!("{t}:{i}")))
                        .unwrap();
                    sent_tx.send((from.into(), to.into(), r.msg_key)).unwrap();
                }
            });
        }
        drop(sent_tx);
        let recaller = s.spawn(|| {
            let mut recalled = HashSet::new();
            for (n, id) in sent_rx.iter().enumerate() {
                if n % 3 == 0 {
                    store
                        .recall(ADMIN, &id.0, &id.1, &id.2.to_string())
                        .unwrap();
                    let at = acks.clock.fetch_add(1, Ordering::SeqCst);
                    acks.recalled_at.lock().unwrap().insert(id.clone(), at);
                    recalled.insert(id);
                }
            }
            recalled
        });
        let pager = s.spawn(|| {
            let mut pages = 0;
            while !done.load(Ordering::SeqCst) {
                for (a, b) in [(0, 1), (1, 2), (2, 3), (3, 0)] {
                    let started = acks.now();
                    let mut q = HistoryQuery::new(USERS[a], USERS[b], 50);
                    loop {
                        let page = store.history(&q).unwrap();
                        pages += 1;
                        for item in page.messages.iter().filter(|i| !i.message.is_recalled()) {
                            let m = &item.message;
                            acks.assert_live_allowed(
                                &(m.from.to_string(), m.to.to_string(), m.key),
                                started,
                                "history",
                            );
                        }
                        match q.next_page(&page) {
                            Some(next) if pages % 7 != 0 => q = next,
                            _ => break,
                        }
                    }
                }
            }
        });
        let readers: Vec<_> = [subs_left, subs_right]
            .into_iter()
            .map(|mine| {
                let (acks, done) = (&acks, &done);
                s.spawn(move || {
                    let mut logs: Vec<Vec<EventKind>> = vec![Vec::new(); mine.len()];
                    loop {
                        let finished = done.load(Ordering::SeqCst);
                        let mut got_any = false;
                        for (i, (_, sub)) in mine.iter().enumerate() {
                            let started = acks.now();
                            while let Some(e) =
                                sub.recv_timeout(Duration::from_micros(200)).unwrap()
                            {
                                got_any = true;
                                if let EventKind::Message(m) = &e.kind {
                                    acks.assert_live_allowed(
                                        &(m.from.to_string(), m.to.to_string(), m.key),
                                        started,
                                        "a device",
                                    );
                                }
                                logs[i].push(e.kind);
                            }
                        }
                        if finished && !got_any {
                            return logs;
                        }
                    }
                })
            })
            .collect();
        let recalled = recaller.join().unwrap();
        done.store(true, Ordering::SeqCst);
        pager.join().unwrap();
        let logs: Vec<Vec<EventKind>> = readers
            .into_iter()
            .flat_map(|r| r.join().unwrap())
            .collect();
        (logs, recalled)
    });
    let (logs, recalled) = logs;
    assert_eq!(recalled.len() as u32, (2 * PER_SENDER).div_ceil(3));

    // R1: history shows every recalled message flagged and bodiless.
    for (from, to, key) in &recalled {
        let mut q = HistoryQuery::new(to, from, 1);
        q.max_time = key.time();
        let mut found = false;
        'pages: loop {
            let page = store.history(&q).unwrap();
            for item in &page.messages {
                if item.message.key == *key && &*item.message.from == from {
                    assert!(item.message.is_recalled() && item.message.content.is_none());
                    found = true;
                    break 'pages;
                }
            }
            match q.next_page(&page) {
                Some(next) => q = next,
                None => break,
            }
        }
        assert!(found, "{from}->{to} {key} is still in history");
    }

    // R3: each device got exactly one notice per recalled message of its account, none for
    // others, and never the message after its notice.
    for ((u, _), log) in subs.iter().zip(&logs) {
        let me = USERS[*u];
        let mut notices: HashMap<Id, u32> = HashMap::new();
        let mut messages = HashSet::new();
        for kind in log {
            match kind {
                EventKind::Message(m) => {
                    let id = (m.from.to_string(), m.to.to_string(), m.key);
                    assert!(!notices.contains_key(&id), "message after its notice");
                    assert!(messages.insert(id), "message delivered twice");
                }
                EventKind::Recalled(n) => {
                    *notices
                        .entry((n.from.to_string(), n.to.to_string(), n.key))
                        .or_default() += 1
                }
                EventKind::Modified { .. } => unreachable!("nobody modifies here"),
            }
        }
        for id in &recalled {
            let want = u32::from(id.0 == me || id.1 == me);
            assert_eq!(
                notices.get(id).copied().unwrap_or(0),
                want,
                "{me} notices for {id:?}"
            );
        }
        assert!(notices.keys().all(|id| recalled.contains(id)));
    }
}
