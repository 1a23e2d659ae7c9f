//! The real `imstore-server` binary for integration tests: start it on 127.0.0.1 port 0 with a
//! temporary data directory, call its REST API, read devices over SSE and WebSocket, stop it
//! with SIGTERM or kill it with SIGKILL. A `Server` dropped while running is killed, so a
//! failing test leaves no process behind.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use imstore::usersig;
use serde_json::Value;

pub const APP: u64 = 1400000000;
pub const KEY: &str = "e2e-secret-key";
/// The longest any step waits for the server.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub addr: String,
    /// Everything the server wrote to stderr, line by line.
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_lines: mpsc::Receiver<String>,
}

/// How to start a server.
pub struct Launch<'a> {
    pub extra: Vec<&'a str>,
    pub log: &'a str,
    /// Limit the server's open files (RLIMIT_NOFILE) to this many.
    pub nofile: Option<u64>,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            extra: Vec::new(),
            log: "warn",
            nofile: None,
        }
    }
}

pub fn start(dir: &std::path::Path, extra: &[&str]) -> Server {
    start_with(
        dir,
        Launch {
            extra: extra.to_vec(),
            ..Launch::default()
        },
    )
}

pub fn start_with(dir: &std::path::Path, launch: Launch<'_>) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imstore-server"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--sdkappid",
        &APP.to_string(),
        "--secret-key",
        KEY,
        "--body-limit",
        "65536",
    ])
    .arg("--data-dir")
    .arg(dir)
    .args(&launch.extra)
    .env(
        "IMSTORE_LOG",
        std::env::var("IMSTORE_TEST_LOG").unwrap_or_else(|_| launch.log.to_owned()),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(n) = launch.nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (line_tx, stderr_lines) = mpsc::channel();
    {
        let stderr = stderr.clone();
        let reader = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                stderr.lock().unwrap().push(line.clone());
                let _ = line_tx.send(line);
            }
        });
    }
    let base = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("the server did not print its address")
    });
    let addr = base.trim_start_matches("http://").to_owned();
    Server {
        child: Some(child),
        base,
        addr,
        stderr,
        stderr_lines,
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .into()
}

/// A REST call's JSON answer (always HTTP 200).
fn post_url(url: &str, body: &str) -> Value {
    let mut resp = agent()
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    assert_eq!(resp.status(), 200, "always HTTP 200");
    serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn query(&self, identifier: &str) -> String {
        self.query_valid_for(identifier, 3600)
    }

    /// [`query`](Server::query) with a UserSig valid for `secs` seconds from now.
    pub fn query_valid_for(&self, identifier: &str, secs: u64) -> String {
        let sig = usersig::generate(APP, KEY, identifier, secs, now());
        format!("sdkappid={APP}&identifier={identifier}&usersig={sig}&random=7&contenttype=json")
    }

    pub fn post_as(&self, identifier: &str, api: &str, body: &str) -> Value {
        post_url(
            &format!("{}/v4/{api}?{}", self.base, self.query(identifier)),
            body,
        )
    }

    pub fn post(&self, api: &str, body: Value) -> Value {
        self.post_as("administrator", api, &body.to_string())
    }

    /// [`post`](Server::post) from another thread, so that this one can go on reading (a
    /// WebSocket client that stops reading stops answering pings).
    pub fn post_in_background(&self, api: &str, body: Value) -> std::thread::JoinHandle<Value> {
        let url = format!("{}/v4/{api}?{}", self.base, self.query("administrator"));
        std::thread::spawn(move || post_url(&url, &body.to_string()))
    }

    /// A REST call that may not be answered within `timeout`: `None` if it was not.
    pub fn post_within(&self, api: &str, body: Value, timeout: Duration) -> Option<Value> {
        let url = format!("{}/v4/{api}?{}", self.base, self.query("administrator"));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        let mut resp = agent.post(&url).send(body.to_string()).ok()?;
        serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()
    }

    /// Opens a device's event stream; events arrive on the returned channel as
    /// (id, event, data).
    pub fn events(
        &self,
        account: &str,
        device: &str,
        last_event_id: Option<&str>,
    ) -> mpsc::Receiver<(String, String, Value)> {
        self.events_with(&self.query(account), device, last_event_id)
    }

    /// [`events`](Server::events) with the query given (its UserSig, say).
    pub fn events_with(
        &self,
        query: &str,
        device: &str,
        last_event_id: Option<&str>,
    ) -> mpsc::Receiver<(String, String, Value)> {
        let url = format!("{}/v4/imstore/events?{query}&device={device}", self.base);
        let mut req = ureq::get(&url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.call().unwrap();
        assert!(
            resp.headers()
                .get("content-type")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let reader = BufReader::new(resp.into_body().into_reader());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut id, mut event) = (String::new(), String::new());
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let Some((field, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => id = value.to_owned(),
                    "event" => event = value.to_owned(),
                    "data" => {
                        let data = serde_json::from_str(value).unwrap();
                        if tx.send((id.clone(), event.clone(), data)).is_err() {
                            break;
                        }
                    }
                    _ => {}
                }
            }
        });
        rx
    }

    /// Connects a device over WebSocket with its own UserSig; `extra` is appended to the query
    /// (`&platform=iOS&after=3`, say).
    pub fn ws(&self, account: &str, device: &str, extra: &str) -> Ws {
        self.try_ws(account, device, extra)
            .unwrap_or_else(|e| panic!("WebSocket connect of {account}/{device}: {e}"))
    }

    pub fn try_ws(&self, account: &str, device: &str, extra: &str) -> Result<Ws, String> {
        self.try_ws_with(&self.query(account), device, extra)
    }

    /// [`try_ws`](Server::try_ws) with the query given (its UserSig, say).
    pub fn try_ws_with(&self, query: &str, device: &str, extra: &str) -> Result<Ws, String> {
        let url = format!(
            "ws://{}/v4/imstore/ws?{query}&device={device}{extra}",
            self.addr
        );
        match tungstenite::connect(url) {
            Ok((socket, _)) => Ok(Ws { socket }),
            Err(tungstenite::Error::Http(resp)) => Err(format!(
                "HTTP {} {}",
                resp.status(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Waits until the server writes a stderr line containing `needle` (or `WAIT` passes).
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// Forgets the log lines received so far: a later [`wait_for_log`](Server::wait_for_log)
    /// waits for a line not yet received (one already written but still in the pipe may
    /// count).
    pub fn drain_log(&self) {
        while self.stderr_lines.try_recv().is_ok() {}
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn signal(&self, sig: &str) {
        assert!(
            Command::new("kill")
                .args([sig, &self.pid().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// SIGTERM, then waits (at most `WAIT`) for the exit.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("-TERM");
        let mut child = self.child.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait().unwrap());
        });
        rx.recv_timeout(WAIT)
            .expect("the server exits after SIGTERM")
    }

    /// SIGTERM and the time until the process exited.
    pub fn stop_timed(self) -> (ExitStatus, Duration) {
        let t = Instant::now();
        let status = self.stop();
        (status, t.elapsed())
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A device's WebSocket.
pub struct Ws {
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
}

impl Ws {
    fn stream(&self) -> &TcpStream {
        match self.socket.get_ref() {
            tungstenite::stream::MaybeTlsStream::Plain(s) => s,
            _ => unreachable!("plain ws"),
        }
    }

    /// Reads frames for at most `timeout` until `pick` takes one; `None` at the deadline, or
    /// once the connection fails or closes.
    fn read_within<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(tungstenite::Message) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            if let Some(t) = pick(self.socket.read().ok()?) {
                return Some(t);
            }
        }
    }

    /// The next JSON frame, if one arrives within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<Value> {
        self.read_within(timeout, |m| match m {
            tungstenite::Message::Text(t) => Some(serde_json::from_str(&t).unwrap()),
            _ => None,
        })
    }

    /// The next frame, which must arrive within `WAIT`.
    pub fn expect(&mut self) -> Value {
        self.next(WAIT).expect("a frame within the wait")
    }

    /// Like `expect`, showing the server's log on failure.
    pub fn expect_from(&mut self, s: &Server) -> Value {
        self.next(WAIT)
            .unwrap_or_else(|| panic!("no frame within the wait; server log:\n{}", s.stderr()))
    }

    /// Sends one text frame.
    pub fn send(&mut self, frame: Value) {
        self.socket
            .send(tungstenite::Message::Text(frame.to_string().into()))
            .unwrap();
    }

    pub fn send_raw(&mut self, text: &str) {
        self.socket
            .send(tungstenite::Message::Text(text.to_owned().into()))
            .unwrap();
    }

    /// The close frame the server sends within `timeout` (its code and reason), skipping
    /// other frames; `None` if none came.
    pub fn close_frame(&mut self, timeout: Duration) -> Option<(u16, String)> {
        self.read_within(timeout, |m| match m {
            tungstenite::Message::Close(frame) => {
                Some(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
            }
            _ => None,
        })
        .flatten()
    }

    /// Closes from this side; whether the server answered with its Close frame (a clean
    /// close) within `timeout`, rather than dropping the connection.
    pub fn close_is_answered(&mut self, timeout: Duration) -> bool {
        self.socket.close(None).unwrap();
        self.stream().set_read_timeout(Some(timeout)).unwrap();
        loop {
            match self.socket.read() {
                Ok(tungstenite::Message::Close(_)) => return true,
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Whether the server closed the connection (reads until the close or `timeout`).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            self.stream()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.socket.read() {
                Ok(tungstenite::Message::Close(_)) => return true,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }
}
