// The recall benchmark's body, shared by `recall` (system allocator) and `recall_mimalloc`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imstore::{Config, MsgElement, SendRequest, Store, Subscription};


const MESSAGES: usize = 100_000;
const PAIRS: usize = 10;

struct Loaded {
    store: Store,
    _devices: Vec<Subscription>,
    /// (from, to, key) still to recall, last first.
    keys: Vec<(String, String, String)>,
}

fn loaded() -> Loaded {
    let store = Store::in_memory(Config::default()).unwrap();
    let mut devices = Vec::new();
    for p in 0..PAIRS {
        for who in ["s", "r"] {
            let user = format!("{who}{p}");
            store.import_account(&user).unwrap();
            for d in ["phone", "laptop"] {
                devices.push(store.connect(&user, d).unwrap());
            }
        }
    }
    let mut keys = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let (from, to) = (format!("s{}", i % PAIRS), format!("r{}", i % PAIRS));
        let mut req = SendRequest::new(&from, &to, i as u32, vec![MsgElement::text("a message of ordinary length")]);
        req.msg_seq = Some(i as u32);
        let key = store.send(req).unwrap().msg_key.to_string();
        keys.push((from, to, key));
    }
    keys.reverse();
    Loaded { store, _devices: devices, keys }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("recall");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(8));
    let mut state = loaded();
    g.bench_function("recall_100k_store_4_devices_per_pair", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                if state.keys.is_empty() {
                    state = loaded(); // not timed
                }
                let n = left.min(state.keys.len() as u64);
                let batch: Vec<_> = (0..n).map(|_| state.keys.pop().unwrap()).collect();
                let start = Instant::now();
                for (from, to, key) in &batch {
                    black_box(state.store.recall("administrator", from, to, key).unwrap());
                }
                spent += start.elapsed();
                left -= n;
            }
            spent
        })
    });
    let sender = loaded();
    let mut seq = 0u32;
    g.bench_function("send_beside_100k", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let p = seq as usize % PAIRS;
            let (from, to) = (format!("s{p}"), format!("r{p}"));
            let mut req = SendRequest::new(&from, &to, seq, vec![MsgElement::text("hello")]);
            req.msg_seq = Some(seq.wrapping_add(1 << 31));
            black_box(sender.store.send(req).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
