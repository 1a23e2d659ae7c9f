//! Acknowledged send and recall throughput on a durable store, for each sync policy with one
//! and two threads; and recovery time for a journal of 1,000,000 operations.
//!
//! Run: `cargo bench --bench durable`

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use imstore::{Config, MsgElement, SendRequest, Store, SyncPolicy};

const PAIRS: u32 = 8;

fn open(dir: &Path, sync: SyncPolicy) -> Store {
    // Large snapshots threshold: measure the journal, not compaction.
    Store::open(
        dir,
        Config::default()
            .with_sync(sync)
            .with_snapshot_after_bytes(1 << 40),
    )
    .unwrap()
}

fn send(store: &Store, seq: u32) -> String {
    let p = seq % PAIRS;
    let (from, to) = (format!("s{p}"), format!("r{p}"));
    let mut req = SendRequest::new(
        &from,
        &to,
        seq,
        vec![MsgElement::text("a message of ordinary length")],
    );
    req.msg_seq = Some(seq);
    store.send(req).unwrap().msg_key.to_string()
}

fn accounts(store: &Store) {
    for p in 0..PAIRS {
        store
            .import_accounts(&[format!("s{p}"), format!("r{p}")])
            .unwrap();
    }
}

/// Not timed: `iters` messages to recall, sent without fsync into the store at `dir` (closed
/// again before the policy under test reopens it). Returns (MsgSeq, MsgKey) of each.
fn to_recall(dir: &Path, next: u32, iters: u64) -> Vec<(u32, String)> {
    let store = open(dir, SyncPolicy::None);
    accounts(&store);
    (0..iters)
        .map(|i| (next + i as u32, send(&store, next + i as u32)))
        .collect()
}

/// Runs `iters` operations split over `threads` threads; returns the wall time.
fn parallel(threads: u32, iters: u64, op: impl Fn(u32, u64) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let op = &op;
            s.spawn(move || {
                for i in (t as u64..iters).step_by(threads as usize) {
                    op(t, i);
                }
            });
        }
    });
    start.elapsed()
}

fn policies(c: &mut Criterion) {
    let mut g = c.benchmark_group("durable");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_millis(500));
    for (name, sync) in [
        ("every", SyncPolicy::Every),
        ("group", SyncPolicy::Group),
        ("none", SyncPolicy::None),
    ] {
        for threads in [1u32, 2] {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path(), sync);
            accounts(&store);
            let mut next = 0u32;
            g.bench_function(
                BenchmarkId::new(format!("send_{name}"), format!("{threads}_threads")),
                |b| {
                    b.iter_custom(|iters| {
                        let base = next;
                        next += iters as u32;
                        parallel(threads, iters, |_, i| {
                            black_box(send(&store, base + i as u32));
                        })
                    })
                },
            );
            drop(store);

            let dir = tempfile::tempdir().unwrap();
            let mut next = 0u32;
            g.bench_function(
                BenchmarkId::new(format!("recall_{name}"), format!("{threads}_threads")),
                |b| {
                    b.iter_custom(|iters| {
                        let keys = to_recall(dir.path(), next, iters);
                        next += iters as u32;
                        let store = open(dir.path(), sync);
                        parallel(threads, iters, |_, i| {
                            let (seq, key) = &keys[i as usize];
                            let p = seq % PAIRS;
                            black_box(
                                store
                                    .recall(
                                        "administrator",
                                        &format!("s{p}"),
                                        &format!("r{p}"),
                                        key,
                                    )
                                    .unwrap(),
                            );
                        })
                    })
                },
            );
        }
    }
    // A server has many requests in flight; a thread here keeps 32 recalls in flight with
    // `recall_deferred` and acknowledges them with `wait`, so they share fsyncs.
    for threads in [1u32, 2] {
        let dir = tempfile::tempdir().unwrap();
        let mut next = 0u32;
        g.bench_function(
            BenchmarkId::new("recall_group_32_in_flight", format!("{threads}_threads")),
            |b| {
                b.iter_custom(|iters| {
                    let keys = to_recall(dir.path(), next, iters);
                    next += iters as u32;
                    let store = open(dir.path(), SyncPolicy::Group);
                    let per_thread: Vec<Vec<_>> = (0..threads)
                        .map(|t| {
                            keys.iter()
                                .skip(t as usize)
                                .step_by(threads as usize)
                                .collect()
                        })
                        .collect();
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for mine in &per_thread {
                            let store = &store;
                            s.spawn(move || {
                                for chunk in mine.chunks(32) {
                                    let pending: Vec<_> = chunk
                                        .iter()
                                        .map(|(seq, key)| {
                                            let p = seq % PAIRS;
                                            store
                                                .recall_deferred(
                                                    "administrator",
                                                    &format!("s{p}"),
                                                    &format!("r{p}"),
                                                    key,
                                                )
                                                .unwrap()
                                        })
                                        .collect();
                                    for d in pending {
                                        black_box(d.wait().unwrap());
                                    }
                                }
                            });
                        }
                    });
                    start.elapsed()
                })
            },
        );
    }
    g.finish();
}

fn recovery(c: &mut Criterion) {
    const OPS: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), SyncPolicy::None);
        accounts(&store);
        // Three sends for every recall: 750,000 sends and 250,000 recalls.
        let mut keys = Vec::new();
        for i in 0..(OPS as u32 / 4) * 3 {
            keys.push((i, send(&store, i)));
        }
        for (seq, key) in keys.iter().step_by(3) {
            let p = seq % PAIRS;
            store
                .recall("administrator", &format!("s{p}"), &format!("r{p}"), key)
                .unwrap();
        }
        store.close().unwrap();
    }
    let replayed = open(dir.path(), SyncPolicy::Group)
        .recovery_report()
        .records_replayed;
    assert!(replayed >= OPS, "journal holds {replayed} records");
    let mut g = c.benchmark_group("recovery");
    g.throughput(Throughput::Elements(replayed));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("open_1m_record_journal", |b| {
        // Recovery is the open; dropping the recovered store is not part of it.
        b.iter_with_large_drop(|| open(dir.path(), SyncPolicy::Group))
    });
    g.finish();
}

criterion_group!(benches, policies, recovery);
criterion_main!(benches);
