//! imstore at a realistic scale, one thread, the system allocator (glibc): ACCOUNTS accounts
//! (100,000), each talking with PEERS fixed peers (20), ~32-character text messages. For each
//! store size it reports sends/s, recalls/s of random keys (half one at a time with `recall`,
//! half in batches with `recall_many`), history pages/s, device sync (events/s of a device
//! catching up) and resident memory per stored message (all layers).
//!
//! ```sh
//! cargo bench --bench workload                        # 10k, 1M and 4M messages
//! IMSTORE_WORKLOAD_SIZES=10000000 cargo bench --bench workload
//! IMSTORE_WORKLOAD_ACCOUNTS=10000 cargo bench --bench workload
//! IMSTORE_WORKLOAD_RUNS=5 cargo bench --bench workload  # five rounds, then medians
//! ```
//!
//! On a shared machine one run's rates move by ±20% from run to run. `IMSTORE_WORKLOAD_RUNS=N`
//! measures every size N times, in rounds (each round every size once, so a round's rows are
//! close in time), then prints each column's median per size, and the slowdown from the first
//! size to the last taken within each round (the ratio of two rows of one round, not of two
//! medians) with its median.
//!
//! Each store size runs in a fresh process, so that resident memory per message is not
//! flattered by pages an earlier, freed store left in the allocator. A store under 20,000
//! messages is built and measured 20 times (each fresh; resident memory from the first), so
//! that its sends and recalls last long enough for a steady rate: the row says so.
//!
//! Message `i` is sent by account `a(i)` to its `k(i)`-th peer with MsgSeq `i`: every message's
//! parties and key are computed from its number, so the benchmark itself keeps nothing per
//! message and the memory measured is the store's.

use std::hint::black_box;
use std::time::{Duration, Instant};

use imstore::{Config, HistoryQuery, MsgElement, MsgKey, RecallItem, SendRequest, Store};

const TIME: u32 = 1_700_000_000;
/// Recalls per `recall_many` call: what a server would have queued (the store walks them in
/// waves of `imstore::RECALL_WAVE`).
const BATCH: usize = 64;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Workload {
    accounts: usize,
    peers: usize,
    names: Vec<String>,
}

impl Workload {
    /// (sender, recipient) of message `i`.
    fn parties(&self, i: u64) -> (usize, usize) {
        let h = mix(i);
        let a = (h % self.accounts as u64) as usize;
        let k = ((h >> 32) % self.peers as u64) as usize + 1;
        // Fixed peers: account a talks with a+1 ... a+PEERS (and is talked to by a-1 ...).
        let b = (a + k * 7919) % self.accounts;
        if a == b {
            (a, (b + 1) % self.accounts)
        } else {
            (a, b)
        }
    }

    fn key(i: u64) -> MsgKey {
        MsgKey::new(i as u32, msg_random(i), TIME)
    }

    fn send(&self, store: &Store, i: u64) {
        let (a, b) = self.parties(i);
        // The names are written out here, as a server has them fresh from the request it just
        // parsed — not read from `names`, whose 100,000 strings (and the vector's entries) are
        // two cache misses a name that only this harness would pay.
        let (from, to) = (Name::of(a), Name::of(b));
        let mut req = SendRequest::new(
            from.as_str(),
            to.as_str(),
            msg_random(i),
            vec![MsgElement::text(text(i))],
        );
        req.msg_seq = Some(i as u32);
        req.msg_time = Some(TIME);
        black_box(store.send(req).unwrap());
    }
}

include!("shared/text.rs");

include!("shared/name.rs");
include!("shared/random.rs");

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else {
        format!("{:.0} k/s", r / 1e3)
    }
}

/// How many times a store of `messages` is built and its sends and recalls measured: a small
/// store's recalls are over in a few milliseconds (5,000 at 10k, 78 `recall_many` calls), too
/// few for a steady rate, and a message cannot be recalled twice — so a store under 20,000
/// messages is built 20 times, each fresh, and the rates are over all of them. (Larger ones
/// once: their runs last long enough, and callgrind's per-operation counts in the README divide
/// by one store's operations.)
fn repeats(messages: u64) -> u32 {
    if messages < 20_000 { 20 } else { 1 }
}

/// What one size measured: operations a second, and bytes per message.
struct Rates {
    send: f64,
    recall: f64,
    recall_many: f64,
    history: f64,
    sync: f64,
    rss: f64,
}

impl Rates {
    const COLUMNS: usize = 6;

    fn values(&self) -> [f64; Self::COLUMNS] {
        [
            self.send,
            self.recall,
            self.recall_many,
            self.history,
            self.sync,
            self.rss,
        ]
    }

    fn from_values(v: [f64; Self::COLUMNS]) -> Rates {
        let [send, recall, recall_many, history, sync, rss] = v;
        Rates {
            send,
            recall,
            recall_many,
            history,
            sync,
            rss,
        }
    }

    /// The line a child process hands its parent (`IMSTORE_WORKLOAD_RAW`).
    fn raw(&self) -> String {
        let v = self.values().map(|x| x.to_string());
        format!("raw {}", v.join(" "))
    }

    fn parse_raw(line: &str) -> Option<Rates> {
        let mut it = line.strip_prefix("raw ")?.split(' ').map(str::parse::<f64>);
        let mut v = [0.0; Self::COLUMNS];
        for x in &mut v {
            *x = it.next()?.ok()?;
        }
        Some(Rates::from_values(v))
    }
}

fn run(w: &Workload, messages: u64) -> (String, Rates) {
    // Recalls of random, distinct messages.
    let recalls = messages.min(500_000);
    let stride = (2_654_435_761 % messages.max(2)) | 1;
    let picks: Vec<(String, String, String)> = (0..recalls)
        .map(|j| {
            let i = (j * stride) % messages;
            let (a, b) = w.parties(i);
            (
                w.names[a].clone(),
                w.names[b].clone(),
                Workload::key(i).to_string(),
            )
        })
        .collect();
    // The first half one at a time (`recall`), the second in batches (`recall_many`).
    let (singles, batched) = picks.split_at(picks.len() / 2);
    let items: Vec<RecallItem<'_>> = batched
        .iter()
        .map(|(from, to, key)| RecallItem { from, to, key })
        .collect();

    let reps = repeats(messages);
    let (mut send, mut recall, mut recall_many) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut done, mut done_many, mut per_msg) = (0u64, 0u64, 0.0);
    let mut last = None;
    for rep in 0..reps {
        // The store before is dropped first: one at a time in memory.
        drop(last.take());
        // Retention is counted from MsgTimeStamp: a clock just after TIME keeps everything.
        let clock = imstore::ManualClock::new(u64::from(TIME) + 60);
        let store = Store::in_memory(Config::default().with_clock(clock)).unwrap();
        for chunk in w.names.chunks(100) {
            store.import_accounts(chunk).unwrap();
        }
        let base = rss();
        let t = Instant::now();
        for i in 0..messages {
            w.send(&store, i);
        }
        send += t.elapsed();
        if rep == 0 {
            // The first store only: later ones reuse pages the ones before them freed.
            per_msg = (rss() - base) as f64 / messages as f64;
        }

        let t = Instant::now();
        for (a, b, k) in singles {
            // A stride that revisits a message (messages not coprime) answers 20023: skip those.
            if store.recall("administrator", a, b, k).is_ok() {
                done += 1;
            }
        }
        recall += t.elapsed();
        let t = Instant::now();
        for batch in items.chunks(BATCH) {
            done_many += store
                .recall_many("administrator", batch)
                .iter()
                .filter(|r| r.is_ok())
                .count() as u64;
        }
        recall_many += t.elapsed();
        last = Some(store);
    }
    let store = last.expect("at least one store");
    drop(items);
    drop(picks);

    // History: the newest page (MaxCnt 20) of random conversations, from the recipient's side.
    let pages = 200_000u64;
    let queries: Vec<HistoryQuery> = (0..pages)
        .map(|j| {
            let (a, b) = w.parties(mix(j ^ 0xABCD) % messages);
            HistoryQuery::new(&w.names[b], &w.names[a], 20)
        })
        .collect();
    let t = Instant::now();
    for q in &queries {
        black_box(store.history(q).unwrap());
    }
    let history = t.elapsed();

    // Device sync: new devices of random accounts catching up on their inboxes.
    let t = Instant::now();
    let mut events = 0u64;
    for j in 0..2_000u64 {
        let a = (mix(j ^ 0x5EED) % w.accounts as u64) as usize;
        let sub = store.connect(&w.names[a], &format!("sync{j}")).unwrap();
        events += sub.drain().unwrap().len() as u64;
    }
    let sync = t.elapsed();
    let stores = if reps > 1 {
        format!(" ({reps} stores)")
    } else {
        String::new()
    };
    let per_second = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    let rates = Rates {
        send: per_second(messages * u64::from(reps), send),
        recall: per_second(done, recall),
        recall_many: per_second(done_many, recall_many),
        history: per_second(pages, history),
        sync: per_second(events, sync),
        rss: per_msg,
    };
    let row = format!(
        "| {messages}{stores} | {} | {} ({done} recalls) | {} ({done_many}) | {} | {} ({events} events) | {per_msg:.0} B |",
        rate(rates.send),
        rate(rates.recall),
        rate(rates.recall_many),
        rate(rates.history),
        rate(rates.sync),
    );
    (row, rates)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nanoseconds per load from a 128 MiB buffer in random order (a pointer chase over one cycle
/// through every slot), with `chains` chases through it interleaved: one chain is what one
/// cache miss to memory costs on this machine, TLB miss included (a recall of a random
/// message in a large store is a chain of such misses); 16 say how many misses the core keeps
/// in flight at once — what overlapping the misses of several operations (`recall_many`'s
/// waves) can win at best.
fn memory_latency_ns(next: &[u64], chains: usize) -> f64 {
    let n = next.len() as u64;
    let loads = 4_000_000;
    let mut at: Vec<u64> = (0..chains as u64).map(|c| mix(c ^ 0xC4A1) % n).collect();
    let t = Instant::now();
    for _ in 0..loads / chains {
        for a in at.iter_mut() {
            *a = next[*a as usize];
        }
    }
    black_box(&at);
    t.elapsed().as_nanos() as f64 / loads as f64
}

/// The buffer `memory_latency_ns` chases through: 16 Mi slots, one cycle (Sattolo's shuffle).
fn one_cycle() -> Vec<u64> {
    let n: usize = 16 << 20;
    let mut next: Vec<u64> = (0..n as u64).collect();
    for i in (1..n).rev() {
        let j = (mix(i as u64) % i as u64) as usize;
        next.swap(i, j);
    }
    next
}

fn main() {
    check_text();
    let accounts: usize = env("IMSTORE_WORKLOAD_ACCOUNTS", "100000").parse().unwrap();
    let peers: usize = env("IMSTORE_WORKLOAD_PEERS", "20").parse().unwrap();
    let sizes: Vec<u64> = env("IMSTORE_WORKLOAD_SIZES", "10000,1000000,4000000")
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let w = Workload {
        accounts,
        peers,
        names: (0..accounts).map(|i| format!("user{i}")).collect(),
    };
    check_names(&w.names);
    if let Ok(one) = std::env::var("IMSTORE_WORKLOAD_ONE") {
        let (row, rates) = run(&w, one.parse().unwrap());
        println!("{row}");
        if std::env::var_os("IMSTORE_WORKLOAD_RAW").is_some() {
            println!("{}", rates.raw());
        }
        return;
    }
    let runs: usize = env("IMSTORE_WORKLOAD_RUNS", "1").parse().unwrap();
    assert!(runs >= 1, "IMSTORE_WORKLOAD_RUNS must be at least 1");
    println!(
        "{accounts} accounts x {peers} peers, 32-character text messages, one thread, system allocator"
    );
    let cycle = one_cycle();
    println!(
        "memory latency here: {:.0} ns per dependent load (128 MiB, random order); {:.0} ns a load with 16 chains interleaved",
        memory_latency_ns(&cycle, 1),
        memory_latency_ns(&cycle, 16)
    );
    drop(cycle);
    println!(
        "| messages | send | recall (random keys) | recall_many ({BATCH} a call) | history page | device sync | RSS per message |"
    );
    println!("|---|---|---|---|---|---|---|");
    // Each size in a process of its own: memory a previous store freed stays in the
    // allocator's free lists (resident), and a later store reusing it would seem to cost
    // nothing — an earlier version measured 163 B per message at 4M that way, 250 B alone.
    let exe = std::env::current_exe().unwrap();
    // measured[round][size]
    let mut measured: Vec<Vec<Rates>> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut round = Vec::with_capacity(sizes.len());
        for &n in &sizes {
            let out = std::process::Command::new(&exe)
                .env("IMSTORE_WORKLOAD_ONE", n.to_string())
                .env("IMSTORE_WORKLOAD_RAW", "1")
                .stderr(std::process::Stdio::inherit())
                .output()
                .unwrap();
            assert!(out.status.success(), "the run of {n} messages failed");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let mut lines = stdout.lines();
            println!("{}", lines.next().expect("a row"));
            round.push(
                lines
                    .find_map(Rates::parse_raw)
                    .expect("the child's measurements"),
            );
        }
        measured.push(round);
    }
    if runs > 1 {
        summarize(&sizes, &measured);
    }
}

/// Medians over the rounds, and the slowdown from the first size to the last within each.
fn summarize(sizes: &[u64], measured: &[Vec<Rates>]) {
    let runs = measured.len();
    println!();
    println!("Median of {runs} runs:");
    println!();
    println!(
        "| messages | send | recall | recall_many | history page | device sync | RSS per message |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, n) in sizes.iter().enumerate() {
        let m = Rates::from_values(std::array::from_fn(|c| {
            median(measured.iter().map(|round| round[i].values()[c]).collect())
        }));
        println!(
            "| {n} | {} | {} | {} | {} | {} | {:.0} B |",
            rate(m.send),
            rate(m.recall),
            rate(m.recall_many),
            rate(m.history),
            rate(m.sync),
            m.rss
        );
    }
    if sizes.len() < 2 {
        return;
    }
    let (first, last) = (sizes[0], sizes[sizes.len() - 1]);
    println!();
    println!("Slowdown from {first} to {last} messages, each round's own two rows:");
    let slowdown = |name: &str, pick: fn(&Rates) -> f64| {
        let ratios: Vec<f64> = measured
            .iter()
            .map(|round| pick(&round[0]) / pick(&round[round.len() - 1]))
            .collect();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "- {name}: {} (median {:.2}x)",
            each.join(", "),
            median(ratios)
        );
    };
    slowdown("send", |r| r.send);
    slowdown("recall one at a time", |r| r.recall);
    slowdown("recall_many", |r| r.recall_many);
}
