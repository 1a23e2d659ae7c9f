//! What webhooks cost: durable `sendmsg` throughput with webhooks off and with after-send
//! callbacks on (the durable outbox and its dispatcher, to a local receiver), in one run; and
//! clients sending over WebSocket with both the before-send and the after-send callback to a
//! receiver that answers "allow". The server, the receiver and the clients share this machine's
//! cores, as in `load`.
//!
//! Run: `cargo run --release --features server --example webhook_load -- [CONNECTIONS] [MESSAGES]`
//! (defaults 64 and 30000).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use imstore::server::{ServerConfig, WebhookConfig, run_until};
use imstore::usersig;

#[path = "shared/http.rs"]
mod http;
use http::drive;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const APP: u64 = 1400000000;
const KEY: &str = "webhook-load-key";
const PAIRS: usize = 50;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The app's webhook receiver: answers every call "OK, allow", counts the after-sends.
fn receiver(after_sends: Arc<AtomicUsize>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
                let after_sends = after_sends.clone();
                async move {
                    if uri
                        .query()
                        .is_some_and(|q| q.contains("C2C.CallbackAfterSendMsg"))
                    {
                        after_sends.fetch_add(1, Ordering::Relaxed);
                    }
                    r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#
                }
            });
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{addr}/im-callback")
}

struct Running {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn server(webhooks: Option<WebhookConfig>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        sdkappid: APP,
        secret_key: Some(KEY.into()),
        webhooks,
        ..ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path())
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
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
    Running {
        addr,
        stop,
        thread,
        _dir: dir,
    }
}

fn admin_query() -> String {
    let sig = usersig::generate(APP, KEY, "administrator", 86400, now());
    format!("sdkappid={APP}&identifier=administrator&usersig={sig}&random=1&contenttype=json")
}

fn import_accounts(addr: std::net::SocketAddr) {
    let users: Vec<(String, String)> = (0..PAIRS)
        .flat_map(|p| [format!("s{p}"), format!("r{p}")])
        .map(|u| {
            (
                "im_open_login_svc/account_import".to_owned(),
                format!(r#"{{"UserID":"{u}"}}"#),
            )
        })
        .collect();
    drive(addr, &admin_query(), 4, &Arc::new(users));
}

/// Durable REST sends per second; `forbid_before`: no before-send callback.
fn rest_sends(
    addr: std::net::SocketAddr,
    connections: usize,
    messages: usize,
    round: usize,
    forbid_before: bool,
) -> f64 {
    let forbid = if forbid_before {
        r#","ForbidCallbackControl":["ForbidBeforeSendMsgCallback"]"#
    } else {
        ""
    };
    let sends: Vec<(String, String)> = (0..messages)
        .map(|i| {
            let p = i % PAIRS;
            let seq = round * messages + i;
            let body = format!(
                r#"{{"From_Account":"s{p}","To_Account":"r{p}","MsgSeq":{seq},"MsgRandom":{seq},"MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"webhook load message {i}"}}}}]{forbid}}}"#
            );
            ("openim/sendmsg".to_owned(), body)
        })
        .collect();
    drive(addr, &admin_query(), connections, &Arc::new(sends))
}

/// Client sends over WebSocket per second: `connections` devices of the senders, each with one
/// request in flight.
fn ws_sends(addr: std::net::SocketAddr, connections: usize, messages: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let per = messages / connections;
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|c| {
                tokio::spawn(async move {
                    let p = c % PAIRS;
                    let account = format!("s{p}");
                    let sig = usersig::generate(APP, KEY, &account, 86400, now());
                    let url = format!(
                        "ws://{addr}/v4/imstore/ws?sdkappid={APP}&identifier={account}&usersig={sig}&device=d{c}&platform=Android"
                    );
                    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                    for i in 0..per {
                        let frame = format!(
                            r#"{{"Op":"sendmsg","ReqId":{i},"To_Account":"r{p}","MsgRandom":{},"MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"from a client {i}"}}}}]}}"#,
                            c * per + i
                        );
                        ws.send(tokio_tungstenite::tungstenite::Message::Text(frame.into()))
                            .await
                            .unwrap();
                        loop {
                            let msg = ws.next().await.unwrap().unwrap();
                            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg
                                && t.contains(r#""Event":"reply""#)
                            {
                                assert!(t.contains(r#""ErrorCode":0"#), "{t}");
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    (per * connections) as f64 / start.elapsed().as_secs_f64()
}

/// Waits until the receiver has `n` after-sends; returns how long that took.
fn drained(after_sends: &AtomicUsize, n: usize) -> Duration {
    let t = Instant::now();
    while after_sends.load(Ordering::Relaxed) < n {
        assert!(t.elapsed() < Duration::from_secs(600), "callbacks stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    t.elapsed()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let connections: usize = args.next().map_or(64, |a| a.parse().unwrap());
    let messages: usize = args.next().map_or(30_000, |a| a.parse().unwrap());
    let after_sends = Arc::new(AtomicUsize::new(0));
    let url = receiver(after_sends.clone());
    let hooks = WebhookConfig {
        url,
        token: Some("load-token".into()),
        timeout: Duration::from_secs(2),
        fail_closed: false,
    };

    println!("{messages} durable sendmsg over {connections} keep-alive connections, group commit:");
    let mut off = Vec::new();
    let mut on = Vec::new();
    for round in 0..2 {
        let plain = server(None);
        import_accounts(plain.addr);
        off.push(rest_sends(plain.addr, connections, messages, round, true));
        plain.stop.send(()).unwrap();
        plain.thread.join().unwrap();

        let with = server(Some(hooks.clone()));
        import_accounts(with.addr);
        let before = after_sends.load(Ordering::Relaxed);
        let t = Instant::now();
        on.push(rest_sends(with.addr, connections, messages, round, true));
        let sending = t.elapsed();
        let lag = drained(&after_sends, before + messages);
        println!(
            "  round {}: webhooks off {:.0}/s, after-send callbacks on {:.0}/s ({:.0}% of off); \
             all {messages} callbacks delivered {:.1?} after the last send ({:.0} callbacks/s overall)",
            round + 1,
            off[round],
            on[round],
            on[round] / off[round] * 100.0,
            lag,
            messages as f64 / (sending + lag).as_secs_f64()
        );
        with.stop.send(()).unwrap();
        with.thread.join().unwrap();
    }
    let with = server(Some(hooks));
    import_accounts(with.addr);
    let before = after_sends.load(Ordering::Relaxed);
    let ws = ws_sends(with.addr, connections, messages);
    let lag = drained(&after_sends, before + messages / connections * connections);
    println!(
        "clients over WebSocket, {connections} devices, before-send (allow) and after-send callbacks: \
         {ws:.0} sends/s; after-sends all delivered {lag:.1?} after the last"
    );
    with.stop.send(()).unwrap();
    with.thread.join().unwrap();
}
