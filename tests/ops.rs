//! Operating the server: `/healthz` while starting, serving and stopping, and `/metrics` in
//! the Prometheus text format, against the real binary.
#![cfg(feature = "server")]

mod common;

use std::collections::HashMap;
#[cfg(feature = "fault-injection")]
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
#[cfg(feature = "fault-injection")]
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[cfg(feature = "fault-injection")]
use common::server::APP;
use common::server::{KEY, WAIT, start};
use serde_json::json;

/// GET `url`: (status, body).
fn get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut resp = agent.get(url).call().unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

/// Polls `f` every 20 ms until it is true or `within` passes.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The samples of a Prometheus text exposition: `name{labels}` → value. Checks the format on
/// the way: every family has HELP and TYPE, every sample line is `series value`.
fn samples(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name} has no # TYPE line");
        out.insert(series.to_owned(), value);
    }
    out
}

fn metric(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// A server started with its recovery held (test-only `hold-open` file, feature
/// `fault-injection`), its stdout lines on a channel; killed when dropped, so a failing test
/// leaves no process behind.
#[cfg(feature = "fault-injection")]
struct Held {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    hold: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

#[cfg(feature = "fault-injection")]
impl Held {
    fn start() -> Held {
        let dir = tempfile::tempdir().unwrap();
        // The server waits for this file to go before it opens the store.
        let hold = dir.path().join("hold-open");
        std::fs::write(&hold, b"").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_imstore-server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--sdkappid",
                &APP.to_string(),
                "--secret-key",
                KEY,
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .env("IMSTORE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Held {
            child,
            lines,
            hold,
            _dir: dir,
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("a line from the server")
    }

    /// The address of `starting on ADDR`, the first line.
    fn starting(&self) -> String {
        let first = self.line();
        first
            .strip_prefix("starting on ")
            .unwrap_or_else(|| panic!("first line: {first}"))
            .to_owned()
    }
}

#[cfg(feature = "fault-injection")]
impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(feature = "fault-injection")]
#[test]
fn healthz_answers_503_while_the_store_recovers_then_200() {
    let server = Held::start();
    let base = server.starting();

    let (status, body) = get(&format!("{base}/healthz"));
    assert_eq!((status, body.as_str()), (503, r#"{"status":"starting"}"#));
    let (status, body) = get(&format!("{base}/v4/openim/sendmsg"));
    assert_eq!(status, 503);
    let envelope: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(envelope["ErrorCode"], 91000, "{body}");
    assert_eq!(envelope["ActionStatus"], "FAIL");

    std::fs::remove_file(&server.hold).unwrap();
    let listening = loop {
        let l = server.line();
        if let Some(addr) = l.strip_prefix("listening on ") {
            break addr.to_owned();
        }
    };
    assert_eq!(listening, base, "the same address before and after");
    let (status, body) = get(&format!("{base}/healthz"));
    assert_eq!((status, body.as_str()), (200, r#"{"status":"serving"}"#));
}

#[cfg(feature = "fault-injection")]
#[test]
fn sigterm_during_recovery_stops_the_server() {
    let mut server = Held::start();
    server.starting();
    assert!(
        Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    // The recovery is still held (the file is there): the server stops anyway.
    assert!(
        eventually(WAIT, || server.child.try_wait().unwrap().is_some()),
        "the server did not stop while recovering"
    );
    assert!(server.child.wait().unwrap().success());
    assert!(server.hold.exists());
}

#[test]
fn healthz_answers_503_during_the_drain_while_calls_are_still_served() {
    // The drain lasts 2 s (the most the server allows); a machine that stalls for that long
    // leaves the call below after it. Such a run says nothing either way: it is run again.
    for attempt in 1..=3 {
        match drain_once() {
            Ok(()) => return,
            Err(late) if attempt < 3 => eprintln!("attempt {attempt}: {late}; once more"),
            Err(late) => panic!("{late}"),
        }
    }
}

/// One server through SIGTERM: `Err` only when the call made during the drain was not
/// answered and was made late in the drain's 2 s (a stalled machine); any other failure
/// panics.
fn drain_once() -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &["--drain-ms", "2000"]);
    assert_eq!(get(&format!("{}/healthz", s.base)).0, 200);
    let killed = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &s.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        eventually(Duration::from_millis(1500), || get(&format!(
            "{}/healthz",
            s.base
        ))
        .0 == 503),
        "/healthz did not turn 503 after SIGTERM"
    );
    let (status, body) = get(&format!("{}/healthz", s.base));
    if status != 503 && killed.elapsed() >= Duration::from_millis(1900) {
        return Err(format!(
            "/healthz read {:?} after the drain",
            killed.elapsed()
        ));
    }
    assert_eq!(body, r#"{"status":"stopping"}"#);
    // Still serving during the drain. Whether the call came late is judged by when it was
    // made, not by when it failed.
    let made = killed.elapsed();
    let r = s.post_within(
        "im_open_login_svc/account_import",
        json!({"UserID": "late"}),
        WAIT,
    );
    match r {
        Some(r) => assert_eq!(r["ErrorCode"], 0, "{r}"),
        None if made >= Duration::from_millis(1500) => {
            return Err(format!("the call was made {made:?} after SIGTERM"));
        }
        None => panic!("a call made {made:?} into the 2 s drain was refused"),
    }
    let status = s.stop();
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[test]
fn metrics_count_calls_by_code_devices_the_journal_and_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    // A callback URL where nothing listens: after-callbacks stay in the outbox, failing.
    let closed = common::webhook::HeldPort::new();
    let url = format!("http://{}/callback", closed.addr);
    let s = start(dir.path(), &["--callback-url", &url]);
    let r = s.post(
        "im_open_login_svc/multiaccount_import",
        json!({"Accounts": ["alice", "bob"]}),
    );
    assert_eq!(r["ErrorCode"], 0, "{r}");
    let ws = s.ws("bob", "phone", "");
    let sse = s.events("alice", "laptop", None);
    for i in 0..2 {
        let r = s.post(
            "openim/sendmsg",
            json!({"From_Account": "alice", "To_Account": "bob", "MsgRandom": i,
                   "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}]}),
        );
        assert_eq!(r["ErrorCode"], 0, "{r}");
    }
    let refused = s.post(
        "openim/sendmsg",
        json!({"From_Account": "alice", "To_Account": "nobody", "MsgRandom": 9,
               "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}]}),
    );
    let code = refused["ErrorCode"].as_u64().unwrap();
    assert_ne!(code, 0, "{refused}");

    // Paths that are no API: 60010, counted under api="other".
    for path in ["/v4/openim", "/v4/a/b/c", "/nothing"] {
        let (_, body) = get(&format!("{}{path}", s.base));
        assert!(body.contains("60010"), "{path}: {body}");
    }

    let scrape = || samples(&get(&format!("{}/metrics", s.base)).1);
    // The outbox dispatcher fails against the closed port at least once.
    assert!(
        eventually(WAIT, || scrape()
            .get(r#"imstore_webhook_deliveries_total{result="failed"}"#)
            .is_some_and(|n| *n >= 1.0)),
        "no failed delivery counted"
    );
    let m = scrape();
    assert_eq!(
        metric(
            &m,
            r#"imstore_api_calls_total{api="openim/sendmsg",code="0"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            &format!(r#"imstore_api_calls_total{{api="openim/sendmsg",code="{code}"}}"#)
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"imstore_api_latency_seconds_count{api="openim/sendmsg"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            r#"imstore_api_latency_seconds_bucket{api="openim/sendmsg",le="+Inf"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(&m, r#"imstore_devices_connected{transport="ws"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"imstore_devices_connected{transport="sse"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"imstore_api_calls_total{api="other",code="60010"}"#),
        3.0
    );
    assert!(metric(&m, "imstore_connections_open") >= 2.0);
    assert!(metric(&m, "imstore_journal_bytes_total") > 0.0);
    assert!(metric(&m, "imstore_journal_fsync_seconds_count") >= 1.0);
    assert!(metric(&m, "imstore_journal_batch_records_count") >= 1.0);
    assert!(metric(&m, "imstore_journal_batch_records_sum") >= 3.0);
    assert!(metric(&m, "imstore_recovery_seconds") > 0.0);
    assert_eq!(metric(&m, "imstore_recovery_records_replayed"), 0.0);
    // Two sends: two after-send callbacks waiting (the first keeps failing).
    assert_eq!(metric(&m, "imstore_webhook_outbox_depth"), 2.0);
    assert_eq!(metric(&m, "imstore_webhook_outbox_dropped_total"), 0.0);
    assert_eq!(metric(&m, "imstore_shards_owned"), 1.0);
    assert!(metric(&m, "process_resident_memory_bytes") > 0.0);

    drop(ws);
    assert!(
        eventually(WAIT, || metric(
            &scrape(),
            r#"imstore_devices_connected{transport="ws"}"#
        ) == 0.0),
        "a WebSocket device still counted after it closed"
    );
    // The SSE client's reader stops at its next event (its channel is gone) and closes the
    // connection; the server notices when it writes to it again.
    drop(sse);
    let mut n = 100;
    assert!(
        eventually(WAIT, || {
            n += 1;
            s.post(
                "openim/sendmsg",
                json!({"From_Account": "bob", "To_Account": "alice", "MsgRandom": n,
                       "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}]}),
            );
            metric(&scrape(), r#"imstore_devices_connected{transport="sse"}"#) == 0.0
        }),
        "an SSE device still counted after it closed"
    );
    drop(s);
}

/// `imstore_erasures_pending` and `imstore_erasure_overdue_seconds`: a recall leaves its body
/// on disk until a snapshot (within `--erase-within-secs`, 600 s here) — one pending, none
/// overdue; `imstore/compact` takes it off — none pending.
#[test]
fn metrics_show_an_erasure_pending_until_a_snapshot_takes_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]);
    let scrape = || samples(&get(&format!("{}/metrics", s.base)).1);
    s.post(
        "im_open_login_svc/multiaccount_import",
        json!({"Accounts": ["alice", "bob"]}),
    );
    let sent = s.post(
        "openim/sendmsg",
        json!({"From_Account": "alice", "To_Account": "bob", "MsgRandom": 1,
               "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}]}),
    );
    let m = scrape();
    assert_eq!(metric(&m, "imstore_erasures_pending"), 0.0);
    assert_eq!(metric(&m, "imstore_erasure_overdue_seconds"), 0.0);
    let r = s.post(
        "openim/admin_msgwithdraw",
        json!({"From_Account": "alice", "To_Account": "bob", "MsgKey": sent["MsgKey"]}),
    );
    assert_eq!(r["ErrorCode"], 0, "{r}");
    let m = scrape();
    assert_eq!(metric(&m, "imstore_erasures_pending"), 1.0);
    assert_eq!(metric(&m, "imstore_erasure_overdue_seconds"), 0.0);
    let r = s.post("imstore/compact", json!({}));
    assert_eq!(r["ErrorCode"], 0, "{r}");
    assert_eq!(metric(&scrape(), "imstore_erasures_pending"), 0.0);
    assert!(s.stop().success());
}

/// Runs the server binary with `args` until it exits (at most `WAIT`): its status, stdout and
/// stderr. For starts that must be refused.
fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_imstore-server"))
        .args(args)
        .env("IMSTORE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not exit: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    (
        status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Mistakes an operator can make are refused at start, with a message that says what to fix,
/// before anything listens: a cluster node without --node-id (a default from the process id
/// is the same for every node in containers), a callback URL that is not one (every call
/// would fail, and fail-open before-send would let every message through unchecked), an
/// empty secret key.
#[test]
fn a_start_with_a_mistaken_setting_is_refused_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let base = ["--listen", "127.0.0.1:0", "--data-dir", d];
    let cases: [(&[&str], &str); 5] = [
        (&["--cluster", "nats://127.0.0.1:1"], "--node-id"),
        (
            &["--secret-key", KEY, "--callback-url", "cb.example.com/im"],
            "--callback-url",
        ),
        (
            &[
                "--secret-key",
                KEY,
                "--callback-url",
                "ftp://cb.example.com/im",
            ],
            "http",
        ),
        (&["--secret-key", ""], "secret key is empty"),
        (
            &[
                "--secret-key",
                KEY,
                "--callback-url",
                "https://cb.example.com/im#x",
            ],
            "#fragment",
        ),
    ];
    for (extra, says) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (status, stdout, stderr) = run_to_exit(&args);
        assert!(!status.success(), "{extra:?} started");
        assert!(!stdout.contains("starting on"), "{extra:?}: {stdout}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
}

/// A journal damaged before its end (not a torn tail) stops the start and says where; with
/// `--repair` the server cuts it at the damage, says what it removed, and serves what was
/// before it.
#[test]
fn a_damaged_journal_stops_the_start_and_repair_cuts_it_there() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = imstore::Store::open(dir.path(), imstore::Config::default()).unwrap();
        store.import_accounts(&["a", "b"]).unwrap();
        for i in 0..5 {
            let body = vec![imstore::MsgElement::text(format!(
                "message number {i} of five"
            ))];
            store
                .send(imstore::SendRequest::new("a", "b", i, body))
                .unwrap();
        }
    }
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a journal segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    // The third send's text, in the middle of the journal: a damaged record, batches after it.
    let third = b"message number 2 of five";
    let at = bytes
        .windows(third.len())
        .position(|w| w == third)
        .expect("the third message in the journal");
    bytes[at] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let d = dir.path().to_str().unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        d,
        "--secret-key",
        KEY,
    ];
    let (status, _, stderr) = run_to_exit(&args);
    assert!(!status.success());
    assert!(
        stderr.contains("corrupt") && stderr.contains("--repair"),
        "{stderr}"
    );
    let s = start(dir.path(), &["--repair"]);
    let page = s.post(
        "openim/admin_getroammsg",
        json!({"Operator_Account": "b", "Peer_Account": "a", "MaxCnt": 100,
               "MinTime": 0, "MaxTime": 4294967295u32}),
    );
    assert_eq!(page["ErrorCode"], 0, "{page}");
    assert_eq!(page["MsgCnt"], 2, "the two sends before the damage: {page}");
    assert!(
        s.stderr().contains("--repair cut it"),
        "the cut is not reported"
    );
}
