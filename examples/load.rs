//! A load client for `imstore-server`: starts the server in this process (port 0, a temporary
//! data directory, group commit, the same allocator as the binary), then drives `sendmsg` and
//! `admin_msgwithdraw` over HTTP/1.1 keep-alive connections on loopback and reports calls per
//! second. The client is one event-loop thread with many connections, as wrk is, and shares
//! this machine's cores with the server.
//!
//! Run: `cargo run --release --features server --example load -- [CONNECTIONS] [MESSAGES]`
//! (defaults 64 and 50000).
//!
//! With a third argument `scrape`, it measures what reading `/metrics` costs the hot path:
//! four rounds of MESSAGES sends and recalls each, without, with, with and without a client
//! scraping `/metrics` every 100 ms (150 times Prometheus' usual 15 s), in the same run.

use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imstore::SyncPolicy;
use imstore::server::{ServerConfig, run_until};
use imstore::usersig;

#[path = "shared/http.rs"]
mod http;
use http::drive;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const APP: u64 = 1400000000;
const KEY: &str = "load-test-key";
const PAIRS: usize = 50;

fn main() {
    let mut args = std::env::args().skip(1);
    let connections: usize = args.next().map_or(64, |a| a.parse().unwrap());
    let messages: usize = args.next().map_or(50_000, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        sdkappid: APP,
        secret_key: Some(KEY.into()),
        sync: match std::env::var("IMSTORE_SYNC").as_deref() {
            Ok("none") => SyncPolicy::None,
            Ok("every") => SyncPolicy::Every,
            _ => SyncPolicy::Group,
        },
        ..ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path())
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_until(
            config,
            async {
                let _ = stop_rx.await;
            },
            move |addr| ready_tx.send(addr).unwrap(),
        ))
        .unwrap();
    });
    let addr = ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sig = usersig::generate(APP, KEY, "administrator", 86400, now);
    let query =
        format!("sdkappid={APP}&identifier=administrator&usersig={sig}&random=1&contenttype=json");

    let users: Vec<(String, String)> = (0..PAIRS)
        .flat_map(|p| [format!("s{p}"), format!("r{p}")])
        .map(|u| {
            (
                "im_open_login_svc/account_import".to_owned(),
                format!(r#"{{"UserID":"{u}"}}"#),
            )
        })
        .collect();
    drive(addr, &query, 4, &Arc::new(users));

    let scrape = args.next().as_deref() == Some("scrape");
    let round = |r: usize| {
        let (sends, recalls): (Vec<_>, Vec<_>) = (r * messages..(r + 1) * messages)
            .map(|i| {
                let p = i % PAIRS;
                let send = format!(
                    r#"{{"From_Account":"s{p}","To_Account":"r{p}","MsgSeq":{i},"MsgRandom":{i},"MsgTimeStamp":{now},"MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"load test message {i}"}}}}]}}"#
                );
                let recall = format!(
                    r#"{{"From_Account":"s{p}","To_Account":"r{p}","MsgKey":"{i}_{i}_{now}"}}"#
                );
                (
                    ("openim/sendmsg".to_owned(), send),
                    ("openim/admin_msgwithdraw".to_owned(), recall),
                )
            })
            .unzip();
        let send_rate = drive(addr, &query, connections, &Arc::new(sends));
        let recall_rate = drive(addr, &query, connections, &Arc::new(recalls));
        (send_rate, recall_rate)
    };
    if !scrape {
        let (send_rate, recall_rate) = round(0);
        println!(
            "{messages} sendmsg over {connections} keep-alive connections: {send_rate:.0} calls/s"
        );
        println!(
            "{messages} admin_msgwithdraw over {connections} keep-alive connections: {recall_rate:.0} calls/s"
        );
        println!(
            "(every call acknowledged after group commit's fsync; Tencent allows 200 calls/s)"
        );
    } else {
        let mut with = (0.0, 0.0);
        let mut without = (0.0, 0.0);
        let mut scrapes = 0;
        for r in 0..4 {
            // ABBA order: a drift over the run (the store grows) weighs on both alike.
            let on = r == 1 || r == 2;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let scraper = on.then(|| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let text = http::get(addr, "/metrics");
                        assert!(text.contains("imstore_api_calls_total"), "{text}");
                        n += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    n
                })
            });
            let (s, c) = round(r);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(t) = scraper {
                scrapes += t.join().unwrap();
            }
            let total = if on { &mut with } else { &mut without };
            total.0 += s / 2.0;
            total.1 += c / 2.0;
            println!(
                "round {r} ({}): sendmsg {s:.0}/s, admin_msgwithdraw {c:.0}/s",
                if on {
                    "scraping /metrics every 100 ms"
                } else {
                    "no scraping"
                }
            );
        }
        println!(
            "mean of 2 rounds each: sendmsg {:.0}/s without, {:.0}/s with ({:+.1}%); admin_msgwithdraw {:.0}/s without, {:.0}/s with ({:+.1}%); {scrapes} scrapes",
            without.0,
            with.0,
            (with.0 / without.0 - 1.0) * 100.0,
            without.1,
            with.1,
            (with.1 / without.1 - 1.0) * 100.0,
        );
    }
    stop_tx.send(()).unwrap();
    server.join().unwrap();
}
