//! How long a snapshot holds up writes: the latency of acknowledged sends (group commit, two
//! threads) while snapshots of a large store are written one after another (`compact`, the
//! same checkpoint the background snapshot thread runs), next to the same run without.
//!
//! ```sh
//! cargo run --release --example snapshot_stall            # 1,000,000 messages, 15 s per run
//! cargo run --release --example snapshot_stall -- 200000 5
//! ```

use std::time::{Duration, Instant};

use imstore::{Config, MsgElement, SendRequest, Store, SyncPolicy};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAIRS: u32 = 1000;

fn send(store: &Store, seq: u32) {
    let p = seq % PAIRS;
    let (from, to) = (format!("s{p}"), format!("r{p}"));
    let mut req = SendRequest::new(
        &from,
        &to,
        seq,
        vec![MsgElement::text("a message of ordinary length, 32b")],
    );
    req.msg_seq = Some(seq);
    store.send(req).unwrap();
}

fn run(messages: u32, secs: u64, snapshots: bool) -> (Vec<Duration>, usize) {
    let dir = tempfile::tempdir().unwrap();
    {
        // The store to snapshot: `messages` messages, written without fsync.
        let store = Store::open(
            dir.path(),
            Config::default()
                .with_sync(SyncPolicy::None)
                .with_snapshot_after_bytes(1 << 40),
        )
        .unwrap();
        for p in 0..PAIRS {
            store
                .import_accounts(&[format!("s{p}"), format!("r{p}")])
                .unwrap();
        }
        for seq in 0..messages {
            send(&store, seq);
        }
        store.compact().unwrap();
    }
    let store = Store::open(
        dir.path(),
        Config::default()
            .with_sync(SyncPolicy::Group)
            .with_snapshot_after_bytes(1 << 40),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|s| {
        // Snapshots of the whole store, one after another, while the writers run.
        let snapshotter = s.spawn(|| {
            let mut n = 0;
            while snapshots && Instant::now() < deadline {
                store.compact().unwrap();
                n += 1;
            }
            n
        });
        let workers: Vec<_> = (0..2u32)
            .map(|t| {
                let store = &store;
                s.spawn(move || {
                    let mut mine = Vec::new();
                    let mut seq = messages + t;
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        send(store, seq);
                        mine.push(started.elapsed());
                        seq += 2;
                    }
                    mine
                })
            })
            .collect();
        let mut latencies: Vec<Duration> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        latencies.sort();
        (latencies, snapshotter.join().unwrap())
    })
}

fn pct(l: &[Duration], p: f64) -> Duration {
    l[((l.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let messages: u32 = args.get(1).map_or(1_000_000, |a| a.parse().unwrap());
    let secs: u64 = args.get(2).map_or(15, |a| a.parse().unwrap());
    println!(
        "{messages} messages in the store, 2 threads sending (group commit), {secs} s per run"
    );
    println!(
        "| snapshots of the whole store | sends | p50 | p99 | p99.9 | max | snapshots written |"
    );
    println!("|---|---|---|---|---|---|---|");
    for snapshots in [false, true] {
        let (l, written) = run(messages, secs, snapshots);
        println!(
            "| {} | {} | {:.2?} | {:.2?} | {:.2?} | **{:.2?}** | {written} |",
            if snapshots { "back to back" } else { "none" },
            l.len(),
            pct(&l, 0.5),
            pct(&l, 0.99),
            pct(&l, 0.999),
            l.last().unwrap(),
        );
    }
}
