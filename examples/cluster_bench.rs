//! The cluster foundation measured on a local 3-node NATS cluster (started with
//! `scripts/nats-cluster.sh` in a temporary directory, ports from 31222; stopped at the end):
//! acknowledged recalls per second and their latency through one shard owner (an R3 stream),
//! beside a file store with group commit in the same run, one at a time and pipelined; and how
//! long a shard takes to be writable again on another node after its owner dies.
//!
//! `cargo run --release --features cluster --example cluster_bench [-- --recalls N]`
//! Needs `nats-server`. Library level: no imstore-server processes (not built for clusters yet).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use imstore::cluster::{Cluster, ClusterConfig};
use imstore::{Config, MsgElement, MsgKey, SendRequest, Store};

const PAIRS: u32 = 10;
const IN_FLIGHT: usize = 256;

struct Nats(tempfile::TempDir);

impl Nats {
    fn script(&self, cmd: &str) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nats-cluster.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(cmd)
            .arg(self.0.path())
            .env("NATS_PORT_BASE", "31222")
            .output()
            .expect("running scripts/nats-cluster.sh");
        assert!(
            out.status.success(),
            "nats-cluster.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.script("down");
    }
}

fn users(store: &Store) {
    for p in 0..PAIRS {
        store.import_account(&format!("s{p}")).unwrap();
        store.import_account(&format!("r{p}")).unwrap();
    }
}

/// Sends `n` messages, 256 in flight; returns their keys.
fn prepare(store: &Store, n: u32) -> Vec<MsgKey> {
    let mut keys = Vec::with_capacity(n as usize);
    for chunk in (0..n).collect::<Vec<_>>().chunks(IN_FLIGHT) {
        let pending: Vec<_> = chunk
            .iter()
            .map(|i| {
                let p = i % PAIRS;
                let (from, to) = (format!("s{p}"), format!("r{p}"));
                let req = SendRequest::new(
                    &from,
                    &to,
                    *i,
                    vec![MsgElement::text("a message to recall")],
                );
                store.send_deferred(req).unwrap()
            })
            .collect();
        keys.extend(pending.into_iter().map(|d| d.wait().unwrap().msg_key));
    }
    keys
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Recalls `keys[range]` one at a time, then the rest with `IN_FLIGHT` in flight on each of
/// two threads; prints rate and latency of each.
fn measure(name: &str, store: &Store, keys: &[MsgKey], sequential: usize) {
    let recall = |i: usize, key: &MsgKey| {
        let p = i as u32 % PAIRS;
        store.recall_deferred(
            "administrator",
            &format!("s{p}"),
            &format!("r{p}"),
            &key.to_string(),
        )
    };
    let mut lat = Vec::with_capacity(sequential);
    let t = Instant::now();
    for (i, key) in keys[..sequential].iter().enumerate() {
        let t0 = Instant::now();
        recall(i, key).unwrap().wait().unwrap();
        lat.push(t0.elapsed());
    }
    let secs = t.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "{name:<28} one at a time      {:>9.0} recalls/s  p50 {:>9.2?}  p99 {:>9.2?}",
        sequential as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    let rest = &keys[sequential..];
    let half = rest.len() / 2;
    let t = Instant::now();
    let lat: Vec<Duration> = std::thread::scope(|s| {
        let parts = [
            (sequential, &rest[..half]),
            (sequential + half, &rest[half..]),
        ];
        let handles: Vec<_> = parts
            .into_iter()
            .map(|(base, part)| {
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(part.len());
                    for (c, chunk) in part.chunks(IN_FLIGHT).enumerate() {
                        let pending: Vec<_> = chunk
                            .iter()
                            .enumerate()
                            .map(|(j, key)| {
                                let i = base + c * IN_FLIGHT + j;
                                (Instant::now(), recall(i, key).unwrap())
                            })
                            .collect();
                        for (t0, d) in pending {
                            d.wait().unwrap();
                            lat.push(t0.elapsed());
                        }
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    let mut lat = lat;
    lat.sort();
    println!(
        "{name:<28} 2 x {IN_FLIGHT} in flight    {:>9.0} recalls/s  p50 {:>9.2?}  p99 {:>9.2?}",
        rest.len() as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
}

fn main() {
    let mut recalls: u32 = 20_000;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--recalls") {
        recalls = args[i + 1].parse().expect("--recalls N");
    }
    let sequential = 1000.min(recalls as usize / 4);
    let nats = Nats(tempfile::tempdir().unwrap());
    let urls = nats.script("up");
    println!("{recalls} recalls over {PAIRS} conversations; NATS: 3 nodes on loopback ({urls})");

    // The file store, group commit.
    let dir = tempfile::tempdir().unwrap();
    let file = Store::open(dir.path(), Config::default()).unwrap();
    users(&file);
    let keys = prepare(&file, recalls);
    measure("file journal, group commit", &file, &keys, sequential);
    drop(file);

    // One shard owner on an R3 stream.
    let node = |id: &str| {
        let mut cfg = ClusterConfig::new(&urls, id);
        cfg.shards = 1;
        Cluster::connect(cfg).unwrap()
    };
    let a = node("A");
    let shard = a.open_shard(0).unwrap();
    users(shard.store());
    let keys = prepare(shard.store(), recalls);
    measure("shard on an R3 stream", shard.store(), &keys, sequential);

    // Takeover: the owner dies (its lease is not renewed); another node opens the shard and
    // writes. Once from the whole stream, once from a snapshot.
    let b = node("B");
    for snapshot in [false, true] {
        let (owner, next) = if snapshot { (&b, &a) } else { (&a, &b) };
        let shard = owner.open_shard_wait(0, Duration::from_secs(30)).unwrap();
        if snapshot {
            shard.snapshot().unwrap();
        }
        let records = shard.acknowledged();
        shard.abandon();
        let t = Instant::now();
        let taken = next.open_shard_wait(0, Duration::from_secs(30)).unwrap();
        let opened = t.elapsed();
        let req = SendRequest::new("s0", "r0", 7, vec![MsgElement::text("after")]);
        taken.store().send(req).unwrap();
        println!(
            "owner dies -> another node writes: {:>8.2?} (opened after {:.2?}; stream {records} records, {}; {} replayed)",
            t.elapsed(),
            opened,
            if snapshot {
                "from a snapshot"
            } else {
                "no snapshot"
            },
            taken.store().recovery_report().records_replayed
        );
        taken.close().unwrap();
    }
}
