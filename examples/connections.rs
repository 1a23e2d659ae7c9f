//! How many device connections one server holds, and what they cost.
//!
//! ```sh
//! cargo run --release --features server --example connections -- --connections 19000
//! ```
//!
//! Starts `imstore` as a server in a process of its own (this program, in the role `server`),
//! imports one account per 10 devices, then starts client processes (the role `client`; a
//! process may hold at most 20,000 open files here, so the connections are spread over several,
//! each from its own source address 127.0.0.2, 127.0.0.3, ...) that open the connections and
//! wait. It reports, from `/proc` of the server process: resident memory per idle connection,
//! threads, CPU while idle; then sends one message to every account (`batchsendmsg`, 500
//! recipients per call) and reports the time from the first call until the last device has it.
//! `--transport sse` uses Server-Sent Events instead of WebSocket; `--idle-secs` sets how long
//! the idle CPU is measured (default 31, to include a round of the server's pings).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use imstore::usersig;

// As in imstore-server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const APP: u64 = 1400000000;
const KEY: &str = "connections-example-key";
const DEVICES_PER_ACCOUNT: usize = 10;
const PER_CLIENT: usize = 5000;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn main() {
    match arg("--role").as_deref() {
        Some("server") => server(),
        Some("client") => client(),
        _ => orchestrate(),
    }
}

// ----- the server -----

fn server() {
    let dir = arg("--data-dir").expect("--data-dir");
    let mut config = imstore::server::ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir);
    config.sdkappid = APP;
    config.secret_key = Some(KEY.into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .unwrap();
    runtime
        .block_on(imstore::server::run(config))
        .expect("server");
}

// ----- a client process -----

fn client() {
    let addr = arg("--addr").unwrap();
    let source: std::net::IpAddr = arg("--source").unwrap().parse().unwrap();
    let first: usize = arg("--first").unwrap().parse().unwrap();
    let count: usize = arg("--count").unwrap().parse().unwrap();
    let sse = arg("--transport").as_deref() == Some("sse");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
        for n in first..first + count {
            let account = format!("acct{}", n / DEVICES_PER_ACCOUNT);
            let device = format!("d{}", n % DEVICES_PER_ACCOUNT);
            let sig = usersig::generate(APP, KEY, &account, 86400, now);
            let query = format!(
                "sdkappid={APP}&identifier={account}&usersig={sig}&device={device}&platform=Android"
            );
            let (addr, done, ready, gate) = (
                addr.clone(),
                done_tx.clone(),
                ready_tx.clone(),
                gate.clone(),
            );
            tokio::spawn(async move {
                let permit = gate.acquire_owned().await.unwrap();
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind((source, 0).into()).unwrap();
                let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
                if sse {
                    sse_device(stream, &addr, &query, ready, done, permit).await;
                } else {
                    ws_device(stream, &addr, &query, ready, done, permit).await;
                }
            });
        }
        drop((done_tx, ready_tx));
        for _ in 0..count {
            ready_rx.recv().await.expect("a device failed to connect");
        }
        println!("READY {count}");
        std::io::stdout().flush().unwrap();
        let mut last = 0;
        for _ in 0..count {
            last = last.max(done_rx.recv().await.expect("a device lost its connection"));
        }
        println!("DONE {last}");
        std::io::stdout().flush().unwrap();
        // Hold the connections until the orchestrator closes our stdin.
        tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().lines().count();
        })
        .await
        .unwrap();
    });
}

async fn ws_device(
    stream: tokio::net::TcpStream,
    addr: &str,
    query: &str,
    ready: tokio::sync::mpsc::UnboundedSender<()>,
    done: tokio::sync::mpsc::UnboundedSender<u64>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    use futures_util::{SinkExt, StreamExt};
    let url = format!("ws://{addr}/v4/imstore/ws?{query}");
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .expect("WebSocket upgrade");
    drop(permit);
    ready.send(()).unwrap();
    while let Some(frame) = ws.next().await {
        if let Ok(tokio_tungstenite::tungstenite::Message::Text(t)) = frame
            && t.contains("\"Event\":\"message\"")
        {
            done.send(unix_micros()).unwrap();
            // Confirm it, as a client does (R7), so that a reconnect does not replay it.
            let frame: serde_json::Value = serde_json::from_str(&t).unwrap();
            let ack = serde_json::json!({"Op": "ack", "Seq": frame["Seq"]}).to_string();
            let _ = ws
                .send(tokio_tungstenite::tungstenite::Message::Text(ack.into()))
                .await;
        }
    }
}

async fn sse_device(
    mut stream: tokio::net::TcpStream,
    addr: &str,
    query: &str,
    ready: tokio::sync::mpsc::UnboundedSender<()>,
    done: tokio::sync::mpsc::UnboundedSender<u64>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let req = format!("GET /v4/imstore/events?{query} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut lines = tokio::io::BufReader::with_capacity(1024, stream).lines();
    let status = lines.next_line().await.unwrap().unwrap();
    assert!(status.contains(" 200 "), "{status}");
    drop(permit);
    ready.send(()).unwrap();
    while let Ok(Some(line)) = lines.next_line().await {
        if line == "event: message" {
            done.send(unix_micros()).unwrap();
        }
    }
}

// ----- the orchestrator -----

struct Proc {
    pid: u32,
}

impl Proc {
    fn status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Resident memory, KB.
    fn rss_kb(&self) -> u64 {
        self.status("VmRSS:")
    }

    fn threads(&self) -> u64 {
        self.status("Threads:")
    }

    /// CPU time used so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15; `after` starts at field 3.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

fn post(addr: &str, api: &str, body: &str) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sig = usersig::generate(APP, KEY, "administrator", 86400, now);
    let url = format!(
        "http://{addr}/v4/{api}?sdkappid={APP}&identifier=administrator&usersig={sig}&random=1&contenttype=json"
    );
    let mut resp = ureq::post(&url).send(body).unwrap();
    serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
}

fn orchestrate() {
    let n: usize = arg("--connections")
        .map(|v| v.parse().unwrap())
        .unwrap_or(19_000);
    let transport = arg("--transport").unwrap_or_else(|| "ws".into());
    let accounts = n.div_ceil(DEVICES_PER_ACCOUNT);
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut server = Command::new(&exe)
        .args(["--role", "server", "--data-dir"])
        .arg(dir.path())
        .env("IMSTORE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = BufReader::new(server.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening on http://").map(str::to_owned))
        .expect("the server's address");
    let srv = Proc { pid: server.id() };
    let names: Vec<String> = (0..accounts).map(|i| format!("acct{i}")).collect();
    for chunk in names.chunks(100) {
        let r = post(
            &addr,
            "im_open_login_svc/multiaccount_import",
            &serde_json::json!({ "Accounts": chunk }).to_string(),
        );
        assert_eq!(r["ErrorCode"], 0, "{r}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let (rss0, threads0) = (srv.rss_kb(), srv.threads());
    let mut server = Some(server);

    let rounds: usize = arg("--rounds").map(|v| v.parse().unwrap()).unwrap_or(1);
    let mut after_rounds = Vec::new();
    for round in 1..=rounds {
        let t = Instant::now();
        let mut clients: Vec<(Child, BufReader<std::process::ChildStdout>)> = Vec::new();
        for (k, first) in (0..n).step_by(PER_CLIENT).enumerate() {
            let count = PER_CLIENT.min(n - first);
            let mut c = Command::new(&exe)
                .args([
                    "--role",
                    "client",
                    "--addr",
                    &addr,
                    "--transport",
                    &transport,
                ])
                .args(["--source", &format!("127.0.0.{}", k + 2)])
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let out = BufReader::new(c.stdout.take().unwrap());
            clients.push((c, out));
        }
        for (_, out) in &mut clients {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert!(line.starts_with("READY"), "client said {line:?}");
        }
        let connect_time = t.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let (rss1, threads1) = (srv.rss_kb(), srv.threads());
        let ticks0 = srv.cpu_ticks();
        // Long enough to include a round of the server's 30-second pings.
        let idle_window =
            Duration::from_secs(arg("--idle-secs").map(|v| v.parse().unwrap()).unwrap_or(31));
        std::thread::sleep(idle_window);
        let ticks1 = srv.cpu_ticks();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let idle_cpu = (ticks1 - ticks0) as f64 / hz / idle_window.as_secs_f64() * 100.0;

        // One message to every account: batchsendmsg, 500 recipients a call.
        let start = unix_micros();
        for chunk in names.chunks(500) {
            let body = serde_json::json!({"From_Account": "administrator", "To_Account": chunk, "MsgRandom": 77 + round,
            "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "to everyone"}}]});
            let r = post(&addr, "openim/batchsendmsg", &body.to_string());
            assert_eq!(r["ErrorCode"], 0, "{r}");
        }
        let mut last = 0u64;
        for (_, out) in &mut clients {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            let at: u64 = line
                .strip_prefix("DONE ")
                .unwrap_or_else(|| panic!("client said {line:?}"))
                .trim()
                .parse()
                .unwrap();
            last = last.max(at);
        }
        let delivery = Duration::from_micros(last.saturating_sub(start));
        let rss2 = srv.rss_kb();

        for (mut c, _) in clients {
            drop(c.stdin.take());
            let _ = c.kill();
            let _ = c.wait();
        }
        std::thread::sleep(Duration::from_secs(3));
        let rss3 = srv.rss_kb();
        after_rounds.push(rss3);
        if round < rounds {
            continue;
        }
        let t = Instant::now();
        Command::new("kill")
            .args(["-TERM", &srv.pid.to_string()])
            .status()
            .unwrap();
        let status = server.take().unwrap().wait().unwrap();
        let stop = t.elapsed();

        println!(
            "transport: {transport}, {n} device connections over {accounts} accounts, 1 server process, {} client processes",
            n.div_ceil(PER_CLIENT)
        );
        println!("| what | figure |\n|---|---|");
        println!("| connections held | {n} (all connected in {connect_time:.1?}) |");
        println!(
            "| server RSS | {} MB before, {} MB with the connections idle: **{:.1} KB per connection** |",
            rss0 / 1024,
            rss1 / 1024,
            (rss1 - rss0) as f64 / n as f64
        );
        println!("| server threads | {threads0} before, {threads1} with the connections |");
        println!(
            "| server CPU while the connections idle ({idle_window:?}) | {idle_cpu:.1}% of one core |"
        );
        println!(
            "| one message to every device | last device had it **{delivery:.0?}** after the first batchsendmsg call |"
        );
        println!(
            "| server RSS after delivery / after the clients left | {} MB / {} MB |",
            rss2 / 1024,
            rss3 / 1024
        );
        println!("| SIGTERM to exit | {stop:.0?} ({status}) |");
        if rounds > 1 {
            let mb: Vec<String> = after_rounds
                .iter()
                .map(|kb| format!("{} MB", kb / 1024))
                .collect();
            println!(
                "| server RSS after each of {rounds} rounds of connect / deliver / disconnect | {} |",
                mb.join(", ")
            );
        }
    }
}
