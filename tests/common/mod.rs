//! Helpers shared by the integration tests.
#![allow(dead_code)]

#[cfg(feature = "cluster")]
pub mod nats;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod webhook;

use std::sync::Arc;

use imstore::{
    Config, Event, EventKind, ManualClock, MsgElement, SendReceipt, SendRequest, Store,
    Subscription,
};

/// Polls `f` every 20 ms until it holds; panics naming `what` once `within` has passed.
pub fn wait_until(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub const T0: u64 = 1_700_000_000;
pub const ADMIN: &str = "administrator";

/// A store on a manual clock standing at `T0`, with `users` imported.
pub fn store_with(users: &[&str]) -> (Store, Arc<ManualClock>) {
    store_with_config(users, |c| c)
}

pub fn store_with_config(
    users: &[&str],
    tweak: impl FnOnce(Config) -> Config,
) -> (Store, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let store = Store::in_memory(tweak(Config::default().with_clock(clock.clone()))).unwrap();
    for u in users {
        store.import_account(u).unwrap();
    }
    (store, clock)
}

/// A store in a temporary directory on a manual clock standing at `T0`, with `users`
/// imported: what a test of replay needs. [`OnDisk::reopen`] opens it again, replaying its
/// journal under the same config.
pub struct OnDisk {
    pub dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    config: Config,
}

pub fn on_disk(users: &[&str]) -> (OnDisk, Store) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let config = Config::default().with_clock(clock.clone());
    let disk = OnDisk { dir, clock, config };
    let store = disk.reopen();
    store.import_accounts(users).unwrap();
    (disk, store)
}

impl OnDisk {
    pub fn reopen(&self) -> Store {
        Store::open(self.dir.path(), self.config.clone()).unwrap()
    }
}

pub fn text_req<'a>(from: &'a str, to: &'a str, random: u32, text: &str) -> SendRequest<'a> {
    SendRequest::new(from, to, random, vec![MsgElement::text(text)])
}

pub fn send_text(store: &Store, from: &str, to: &str, random: u32, text: &str) -> SendReceipt {
    store.send(text_req(from, to, random, text)).unwrap()
}

pub fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.kind {
            EventKind::Message(m) => format!("msg:{}", body_text(m)),
            EventKind::Recalled(n) => format!("recall:{}", n.key),
            EventKind::Modified { message, .. } => format!("modify:{}", body_text(message)),
        })
        .collect()
}

pub fn body_text(m: &imstore::MessageView) -> String {
    match m.content.as_ref().map(|c| c.body()).as_deref() {
        Some([MsgElement::TIMTextElem(t), ..]) => t.text.clone(),
        Some(_) => "<non-text>".into(),
        None => "<recalled>".into(),
    }
}

pub fn drain(sub: &Subscription) -> Vec<Event> {
    sub.drain().unwrap()
}

/// Everything a reader can see of `users`, as text: history of every pair from both sides,
/// unread counts, what each device would be sent, device cursors. Reads only; moves nothing.
pub fn observe(store: &Store, users: &[&str]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for a in users {
        if !store.account_exists(a).unwrap() {
            writeln!(out, "{a}: absent").unwrap();
            continue;
        }
        for b in users {
            if a == b || !store.account_exists(b).unwrap() {
                continue;
            }
            let mut q = imstore::HistoryQuery::new(a, b, 100);
            loop {
                let page = store.history(&q).unwrap();
                for i in &page.messages {
                    let m = &i.message;
                    let body = m
                        .content
                        .as_ref()
                        .map(|c| format!("{}|{:?}", c.body_json(), c.cloud_custom_data()));
                    writeln!(
                        out,
                        "{a}<>{b} {}->{} {} flag={} read={} {body:?}",
                        m.from,
                        m.to,
                        m.key,
                        m.msg_flag_bits(),
                        i.is_peer_read
                    )
                    .unwrap();
                }
                match q.next_page(&page) {
                    Some(n) => q = n,
                    None => break,
                }
            }
            writeln!(out, "unread {a}<-{b} {}", store.unread(a, b).unwrap()).unwrap();
        }
        for e in store.inbox(a, 0).unwrap() {
            writeln!(
                out,
                "inbox {a} #{} {:?}",
                e.seq,
                texts(std::slice::from_ref(&e))
            )
            .unwrap();
        }
        for (d, _) in store.devices(a).unwrap() {
            writeln!(
                out,
                "device {a}/{d} cursor {}",
                store.device_cursor(a, &d).unwrap()
            )
            .unwrap();
        }
    }
    out
}
