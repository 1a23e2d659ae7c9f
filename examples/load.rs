//! A load client for `imstore-server`: starts the server in this process (port 0, a temporary
//! data directory, group commit, the same allocator as the binary), then drives `sendmsg` and
//! `admin_msgwithdraw` over HTTP/1.1 keep-alive connections on loopback and reports calls per
//! second. The client is one event-loop thread with many connections, as wrk is, and shares
//! this machine's cores with the server.
//!
//! Run: `cargo run --release --features server --example load -- [CONNECTIONS] [MESSAGES]`
//! (defaults 64 and 50000).

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

    let sends: Vec<(String, String)> = (0..messages)
        .map(|i| {
            let p = i % PAIRS;
            let body = format!(
                r#"{{"From_Account":"s{p}","To_Account":"r{p}","MsgSeq":{i},"MsgRandom":{i},"MsgTimeStamp":{now},"MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"load test message {i}"}}}}]}}"#
            );
            ("openim/sendmsg".to_owned(), body)
        })
        .collect();
    let send_rate = drive(addr, &query, connections, &Arc::new(sends));

    let recalls: Vec<(String, String)> = (0..messages)
        .map(|i| {
            let p = i % PAIRS;
            let body = format!(
                r#"{{"From_Account":"s{p}","To_Account":"r{p}","MsgKey":"{i}_{i}_{now}"}}"#
            );
            ("openim/admin_msgwithdraw".to_owned(), body)
        })
        .collect();
    let recall_rate = drive(addr, &query, connections, &Arc::new(recalls));

    println!(
        "{messages} sendmsg over {connections} keep-alive connections: {send_rate:.0} calls/s"
    );
    println!(
        "{messages} admin_msgwithdraw over {connections} keep-alive connections: {recall_rate:.0} calls/s"
    );
    println!("(every call acknowledged after group commit's fsync; Tencent allows 200 calls/s)");
    stop_tx.send(()).unwrap();
    server.join().unwrap();
}
