//! `imstore-server --cluster` measured over HTTP on this machine: acknowledged recalls per
//! second and their latency through 1, 2 and 3 imstore-server nodes on a local 3-node NATS
//! cluster, beside one single-node imstore-server (`--sync group`) in the same run; then how
//! long after a SIGKILL of a node its shards take writes again.
//!
//! ```text
//! cargo build --release --features cluster --bin imstore-server
//! cargo run --release --features cluster --example cluster_http [-- RECALLS CLIENTS SHARDS DEVICES]
//! ```
//!
//! Defaults: 6000 recalls per configuration, 48 concurrent clients (one keep-alive connection
//! each, spread over the nodes under test), 16 shards; then 300 idle WebSocket devices on one
//! node (the 4th argument): connect time, memory per device on each node, idle CPU. Every process listens on 127.0.0.1;
//! NATS uses ports from 32222 (`scripts/nats-cluster.sh`); everything started is stopped by
//! PID at the end. Needs `nats-server`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use imstore::cluster::{Cluster, ClusterConfig};
use serde_json::{Value, json};

const APP: u64 = 1_400_000_000;
const KEY: &str = "cluster-http-bench";
const PAIRS: usize = 256;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct Nats(tempfile::TempDir);

impl Nats {
    fn script(&self, args: &[&str]) -> String {
        let out = Command::new("bash")
            .arg(root().join("scripts/nats-cluster.sh"))
            .arg(args[0])
            .arg(self.0.path())
            .args(&args[1..])
            .env("NATS_PORT_BASE", "32222")
            .output()
            .expect("running scripts/nats-cluster.sh");
        assert!(
            out.status.success(),
            "nats-cluster.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.script(&["down"]);
    }
}

/// An imstore-server process, killed on drop.
struct Node {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    let path = std::env::var_os("IMSTORE_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release/imstore-server"));
    assert!(
        path.exists(),
        "{} is missing: cargo build --release --features cluster --bin imstore-server",
        path.display()
    );
    path
}

fn start(extra: &[&str]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary())
        .args(["--listen", "127.0.0.1:0", "--secret-key", KEY])
        .arg("--data-dir")
        .arg(dir.path())
        .args(extra)
        .env("IMSTORE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("listening on ") {
                let _ = tx.send(a.to_owned());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server starts");
    Node {
        child,
        base,
        _dir: dir,
    }
}

fn cluster_node(urls: &str, id: &str, shards: u32) -> Node {
    let shards = shards.to_string();
    start(&["--cluster", urls, "--node-id", id, "--shards", &shards])
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn query() -> String {
    let sig = imstore::usersig::generate(APP, KEY, "administrator", 86400, now());
    format!("sdkappid={APP}&identifier=administrator&usersig={sig}&random=1&contenttype=json")
}

fn post(agent: &ureq::Agent, base: &str, api: &str, q: &str, body: &Value) -> Value {
    let mut r = agent
        .post(format!("{base}/v4/{api}?{q}"))
        .send(body.to_string())
        .expect("the call is answered");
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

fn shards_owned(base: &str) -> u32 {
    let Ok(mut r) = ureq::get(format!("{base}/metrics")).call() else {
        return 0;
    };
    r.body_mut()
        .read_to_string()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("imstore_shards_owned "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u32)
}

fn wait_owned(nodes: &[&Node], shards: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let owned: Vec<u32> = nodes.iter().map(|n| shards_owned(&n.base)).collect();
        if owned.iter().sum::<u32>() == shards && owned.iter().all(|n| *n > 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the nodes did not take the shards");
}

/// One client's latencies and the MsgKeys its answers carried (by call number).
type ClientResult = (Vec<Duration>, Vec<(usize, String)>);

/// Runs `total` calls from `clients` threads over `bases` (client i uses bases[i % len]);
/// `body(i)` is call i's (api, body). Returns (calls/s, p50, p99) and the answers' MsgKeys.
fn load(
    bases: &[String],
    clients: usize,
    total: usize,
    body: impl Fn(usize) -> (&'static str, Value) + Sync,
) -> (f64, Duration, Duration, Vec<(usize, String)>) {
    let next = AtomicUsize::new(0);
    let q = query();
    let started = Instant::now();
    let results: Vec<ClientResult> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (next, q, body) = (&next, &q, &body);
                let base = bases[c % bases.len()].clone();
                s.spawn(move || {
                    let agent = agent();
                    let (mut lat, mut keys) = (Vec::new(), Vec::new());
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return (lat, keys);
                        }
                        let (api, b) = body(i);
                        let t = Instant::now();
                        let r = post(&agent, &base, api, q, &b);
                        lat.push(t.elapsed());
                        assert_eq!(r["ErrorCode"], 0, "{api}: {r}");
                        if let Some(k) = r["MsgKey"].as_str() {
                            keys.push((i, k.to_owned()));
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let mut lat: Vec<Duration> = results.iter().flat_map(|r| r.0.clone()).collect();
    lat.sort();
    let mut keys: Vec<(usize, String)> = results.into_iter().flat_map(|r| r.1).collect();
    keys.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (total as f64 / secs, pct(0.50), pct(0.99), keys)
}

fn pair(i: usize) -> (String, String) {
    (format!("s{}", i % PAIRS), format!("r{}", i % PAIRS))
}

fn send_body(i: usize) -> (&'static str, Value) {
    let (from, to) = pair(i);
    (
        "openim/sendmsg",
        json!({"From_Account": from, "To_Account": to, "MsgRandom": i as u32,
            "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "a 32-character text message here"}}]}),
    )
}

/// Imports the accounts, sends `n` messages and recalls them all; (sends/s, recalls/s, p50, p99).
fn measure(bases: &[String], clients: usize, n: usize) -> (f64, f64, Duration, Duration) {
    let agent = agent();
    let q = query();
    let accounts: Vec<String> = (0..PAIRS)
        .flat_map(|p| [format!("s{p}"), format!("r{p}")])
        .collect();
    for chunk in accounts.chunks(100) {
        let r = post(
            &agent,
            &bases[0],
            "im_open_login_svc/multiaccount_import",
            &q,
            &json!({ "Accounts": chunk }),
        );
        assert_eq!(r["ErrorCode"], 0, "{r}");
    }
    let (sends, _, _, keys) = load(bases, clients, n, send_body);
    let keys: Vec<String> = keys.into_iter().map(|(_, k)| k).collect();
    let (recalls, p50, p99, _) = load(bases, clients, n, |i| {
        let (from, to) = pair(i);
        (
            "openim/admin_msgwithdraw",
            json!({"From_Account": from, "To_Account": to, "MsgKey": keys[i]}),
        )
    });
    (sends, recalls, p50, p99)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(6000);
    let clients = args.get(1).copied().unwrap_or(48);
    let shards = args.get(2).copied().unwrap_or(16) as u32;
    println!("{n} sends then {n} recalls per configuration, {clients} clients, {shards} shards\n");
    println!("| configuration | sends/s | acknowledged recalls/s | recall p50 | recall p99 |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, (s, r, p50, p99): (f64, f64, Duration, Duration)| {
        println!(
            "| {name} | {s:.0} | {r:.0} | {:.1} ms | {:.1} ms |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    };
    {
        let single = start(&["--sync", "group"]);
        row(
            "single node, `--sync group`",
            measure(std::slice::from_ref(&single.base), clients, n),
        );
    }
    let nats = Nats(tempfile::tempdir().unwrap());
    let urls = nats.script(&["up"]);
    let mut nodes = vec![cluster_node(&urls, "n1", shards)];
    for k in 1..=3 {
        if k > 1 {
            nodes.push(cluster_node(&urls, &format!("n{k}"), shards));
        }
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_owned(&refs, shards);
        let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
        row(
            &format!(
                "cluster, {k} node{} (R3 streams)",
                if k > 1 { "s" } else { "" }
            ),
            measure(&bases, clients, n),
        );
    }

    // Idle devices: DEVICES WebSocket connections to n1 (each connected in every shard, with
    // one pull waiting per shard on its owner): the time to connect them and what they cost
    // each node in memory and, idle for 10 s, in CPU.
    let devices = args.get(3).copied().unwrap_or(300);
    let rss = |n: &Node| -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", n.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let cpu = |n: &Node| -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", n.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        fields
            .get(11)
            .and_then(|u| u.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
    };
    let before: Vec<u64> = nodes.iter().map(rss).collect();
    let addr = nodes[0].base.trim_start_matches("http://").to_owned();
    let started = Instant::now();
    let sockets: Vec<_> = (0..devices)
        .map(|i| {
            let account = format!("r{}", i % PAIRS);
            let sig = imstore::usersig::generate(APP, KEY, &account, 86400, now());
            let url = format!(
                "ws://{addr}/v4/imstore/ws?sdkappid={APP}&identifier={account}&usersig={sig}&device=idle{i}"
            );
            tungstenite::connect(url).expect("a device connects").0
        })
        .collect();
    let connect = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let cpu_before: Vec<u64> = nodes.iter().map(cpu).collect();
    std::thread::sleep(Duration::from_secs(10));
    let cpu_after: Vec<u64> = nodes.iter().map(cpu).collect();
    let after: Vec<u64> = nodes.iter().map(rss).collect();
    let tick = 100.0; // USER_HZ
    println!(
        "\n{devices} idle WebSocket devices on n1 ({shards} shards): connected in {:.1} s ({:.1} ms each, one after another)",
        connect.as_secs_f64(),
        connect.as_secs_f64() * 1e3 / devices as f64
    );
    for (i, n) in nodes.iter().enumerate() {
        let _ = n;
        println!(
            "  n{}: RSS +{:.1} KB per device, idle CPU {:.1}% of a core",
            i + 1,
            (after[i] as f64 - before[i] as f64) / devices as f64 / 1024.0,
            (cpu_after[i] - cpu_before[i]) as f64 / tick / 10.0 * 100.0
        );
    }
    drop(sockets);

    // SIGKILL the third node; from then on, one send a conversation of each of its shards
    // through the first node: the time until each is answered.
    let mut cfg = ClusterConfig::new(&urls, "observer");
    cfg.shards = shards;
    let observer = Cluster::connect(cfg).unwrap();
    let victim: Vec<u32> = (0..shards)
        .filter(|s| {
            observer
                .lease_holder(*s)
                .ok()
                .flatten()
                .is_some_and(|(node, _, _)| node == "n3")
        })
        .collect();
    let convs: Vec<(String, String)> = victim
        .iter()
        .filter_map(|s| {
            (0..PAIRS)
                .map(pair_of)
                .find(|(a, b)| imstore::cluster::shard_of(a, b, shards) == *s)
        })
        .collect();
    let mut killed = nodes.pop().unwrap();
    let _ = killed.child.kill();
    let at = Instant::now();
    let _ = killed.child.wait();
    let base = nodes[0].base.clone();
    let q = query();
    let times: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = convs
            .iter()
            .enumerate()
            .map(|(i, (from, to))| {
                let (base, q) = (&base, &q);
                s.spawn(move || {
                    let agent = agent();
                    loop {
                        let r = post(
                            &agent,
                            base,
                            "openim/sendmsg",
                            q,
                            &json!({"From_Account": from, "To_Account": to, "MsgRandom": 900_000 + i,
                                "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "after the kill"}}]}),
                        );
                        if r["ErrorCode"] == 0 {
                            return at.elapsed();
                        }
                        assert!(at.elapsed() < Duration::from_secs(60), "{r}");
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let worst = times.iter().max().copied().unwrap_or_default();
    println!(
        "\nSIGKILL of n3 (owner of shards {victim:?}) → every one of its shards took a write through n1 within {:.2} s (each: {:?})",
        worst.as_secs_f64(),
        times
            .iter()
            .map(|t| format!("{:.2} s", t.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    drop(nodes);
    drop(nats);
}

fn pair_of(p: usize) -> (String, String) {
    (format!("s{p}"), format!("r{p}"))
}
