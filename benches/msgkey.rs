//! MsgKey parse and format beside a naive `split('_')` + `str::parse::<u32>` baseline.
//!
//! Run: `cargo bench --bench msgkey`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imstore::MsgKey;

/// What most code would write: allocate nothing, but walk the string three times and accept
/// non-canonical input ("+1", "01").
fn naive_parse(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.split('_');
    let seq = it.next()?.parse::<u32>().ok()?;
    let random = it.next()?.parse::<u32>().ok()?;
    let time = it.next()?.parse::<u32>().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((seq, random, time))
}

fn keys() -> Vec<String> {
    (0..1024u32)
        .map(|i| {
            let x = i.wrapping_mul(2_654_435_761);
            format!(
                "{}_{}_{}",
                x % 100_000_000,
                x.rotate_left(7),
                1_572_869_830 + i
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    let mut g = c.benchmark_group("msgkey_parse");
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("imstore", |b| {
        b.iter(|| {
            // Both parsers' results are consumed the same way: folded into a checksum, as a
            // caller uses a key, rather than each stored through memory by `black_box` (which
            // costs a store-forwarding stall per 12-byte result, for either parser).
            let mut sum = 0u32;
            for k in &keys {
                let k = MsgKey::parse(black_box(k)).unwrap();
                sum = sum.wrapping_add(k.seq() ^ k.random() ^ k.time());
            }
            black_box(sum)
        })
    });
    g.bench_function("naive_split_parse", |b| {
        b.iter(|| {
            let mut sum = 0u32;
            for k in &keys {
                let (seq, random, time) = naive_parse(black_box(k)).unwrap();
                sum = sum.wrapping_add(seq ^ random ^ time);
            }
            black_box(sum)
        })
    });
    g.finish();

    let parsed: Vec<MsgKey> = keys.iter().map(|k| k.parse().unwrap()).collect();
    let mut g = c.benchmark_group("msgkey_format");
    g.throughput(Throughput::Elements(parsed.len() as u64));
    g.bench_function("imstore_to_string", |b| {
        b.iter(|| {
            for k in &parsed {
                black_box(black_box(k).to_string());
            }
        })
    });
    g.bench_function("naive_format", |b| {
        b.iter(|| {
            for k in &parsed {
                black_box(format!("{}_{}_{}", k.seq(), k.random(), k.time()));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
