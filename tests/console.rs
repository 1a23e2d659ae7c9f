//! `GET /console` (SPEC §10) in a real headless Chromium, driven over the DevTools protocol:
//! the page lists every REST API, signs calls with the admin UserSig typed into it, logs two
//! devices in over the WebSocket channel, shows a message arrive on both, takes it away on
//! both when its Recall button is pressed, and shows it in history with MsgFlagBits 8 — while
//! fetching nothing from anywhere but the server, confirming what it displayed (R7), and
//! fitting a 390 px wide phone screen.
//!
//! Chromium is required: without it the test fails (it is never skipped). The DevTools client
//! is the test's own — tungstenite over a `TcpStream` whose read timeout bounds every wait.
#![cfg(feature = "server")]

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::server::{self, APP, KEY, WAIT};
use imstore::usersig;
use serde_json::{Value, json};
use tungstenite::Message;

/// How long the page itself polls for a condition (`until` below), under the test's `WAIT`.
const PAGE_WAIT_MS: u64 = 15_000;

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return p.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let in_path = std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser", "google-chrome"].map(|name| d.join(name)));
    ["/usr/bin/chromium".into()]
        .into_iter()
        .chain(in_path)
        .find(|p: &PathBuf| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium not found: `apt-get install chromium` (.ci/run does), or set CHROMIUM \
                 to a Chromium or Chrome binary; this test drives the console in a real browser"
            )
        })
}

/// A headless Chromium in a process group of its own, with a throwaway profile; killed (the
/// whole group, by its id) when dropped, also when the test panics.
struct Browser {
    child: Child,
    /// host:port of its DevTools endpoint.
    devtools: String,
    /// The browser-wide DevTools socket path.
    browser_path: String,
    dir: tempfile::TempDir,
}

impl Browser {
    fn launch() -> Browser {
        use std::os::unix::process::CommandExt;
        let bin = chromium();
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profile");
        let log = std::fs::File::create(dir.path().join("chromium.log")).unwrap();
        let child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-proxy-server",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("chromium ({}) did not start: {e}", bin.display()));
        let mut browser = Browser {
            child,
            devtools: String::new(),
            browser_path: String::new(),
            dir,
        };
        // Chromium writes the port it picked and the browser socket's path once it listens.
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Some((port, path)) = text.split_once('\n')
                && path.starts_with("/devtools/browser/")
            {
                browser.devtools = format!("127.0.0.1:{}", port.trim());
                browser.browser_path = path.trim().to_owned();
                return browser;
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!("chromium exited ({status}):\n{}", browser.log());
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort within {WAIT:?}:\n{}",
                browser.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("chromium.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// A new tab, and a DevTools connection to it.
    fn new_page(&self) -> Cdp {
        let mut browser = Cdp::connect(&self.devtools, &self.browser_path);
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let id = target["targetId"].as_str().expect("a targetId");
        Cdp::connect(&self.devtools, &format!("/devtools/page/{id}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on the process group this test created (its leader is our child).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol connection: numbered commands, each answer awaited within a deadline,
/// the events in between recorded.
struct Cdp {
    socket: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    /// Every URL the page requested: `Network.requestWillBeSent` and `Network.webSocketCreated`.
    requests: Vec<String>,
    /// Uncaught exceptions, `console.error` and error log entries (CSP violations among them).
    problems: Vec<String>,
    /// The method of every event seen.
    events: Vec<String>,
}

impl Cdp {
    fn connect(host_port: &str, path: &str) -> Cdp {
        let stream = TcpStream::connect(host_port).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        let (socket, _) = tungstenite::client(format!("ws://{host_port}{path}"), stream)
            .unwrap_or_else(|e| panic!("DevTools socket {path}: {e}"));
        Cdp {
            socket,
            next_id: 0,
            requests: Vec::new(),
            problems: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The next message, or `None` once `deadline` passes.
    fn read(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.socket
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.socket.read() {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("DevTools connection failed: {e}"),
            }
        }
    }

    fn record(&mut self, event: &Value) {
        let method = event["method"].as_str().unwrap_or_default();
        let p = &event["params"];
        match method {
            "Network.requestWillBeSent" => {
                self.requests
                    .push(p["request"]["url"].as_str().unwrap_or("?").to_owned());
            }
            "Network.webSocketCreated" => {
                self.requests
                    .push(p["url"].as_str().unwrap_or("?").to_owned());
            }
            "Runtime.exceptionThrown" => self.problems.push(format!(
                "exception: {}",
                p["exceptionDetails"]["exception"]["description"]
                    .as_str()
                    .unwrap_or_else(|| p["exceptionDetails"]["text"].as_str().unwrap_or("?"))
            )),
            "Runtime.consoleAPICalled" if p["type"] == "error" => {
                self.problems.push(format!("console.error: {}", p["args"]));
            }
            "Log.entryAdded" if p["entry"]["level"] == "error" => self.problems.push(format!(
                "log: {} ({})",
                p["entry"]["text"].as_str().unwrap_or("?"),
                p["entry"]["url"].as_str().unwrap_or("")
            )),
            _ => {}
        }
        self.events.push(method.to_owned());
    }

    /// Sends a command and returns its result; waits at most `within`.
    fn call_within(&mut self, method: &str, params: Value, within: Duration) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let frame = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::Text(frame.into())).unwrap();
        let deadline = Instant::now() + within;
        loop {
            let msg = self
                .read(deadline)
                .unwrap_or_else(|| panic!("DevTools: no answer to {method} within {within:?}"));
            if msg["id"] == id {
                if let Some(e) = msg.get("error") {
                    panic!("DevTools: {method} failed: {e}");
                }
                return msg["result"].clone();
            }
            self.record(&msg);
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.call_within(method, params, WAIT)
    }

    /// Waits for an event (seen already, or arriving within `WAIT`).
    fn wait_event(&mut self, method: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.events.iter().any(|m| m == method) {
            let msg = self
                .read(deadline)
                .unwrap_or_else(|| panic!("DevTools: no {method} within {WAIT:?}"));
            self.record(&msg);
        }
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call_within(
            "Runtime.evaluate",
            json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            WAIT + Duration::from_secs(5),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("the page threw evaluating {expr}: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Waits (the page polls, at most `PAGE_WAIT_MS`) until `expr` is truthy; returns its value.
    fn until(&mut self, what: &str, expr: &str) -> Value {
        let v = self.eval(&format!("t.until(() => ({expr}), {PAGE_WAIT_MS})"));
        if v.is_null() {
            let page = self
                .eval("t.dump()")
                .as_str()
                .unwrap_or_default()
                .to_owned();
            panic!("timed out waiting until {what}; the page shows:\n{page}");
        }
        v
    }

    /// The request body the page shows, parsed.
    fn body(&mut self) -> Value {
        let text = self.eval("t.value('body')");
        serde_json::from_str(text.as_str().expect("a string")).expect("the body is JSON")
    }

    /// Sends `body` with its text replaced, as the operator edits it and presses Send; returns
    /// the MsgKey the envelope answers.
    fn send_text(&mut self, mut body: Value, text: &str) -> String {
        body["MsgBody"][0]["MsgContent"]["Text"] = json!(text);
        let pretty = serde_json::to_string_pretty(&body).unwrap();
        self.eval(&format!(
            "t.fill('body', {}) && t.click('#send')",
            js(&pretty)
        ));
        let random = body["MsgRandom"].as_u64().unwrap();
        let key = self.until(
            "sendmsg answers OK",
            &format!(
                "t.ok() && t.envelope().MsgKey?.includes('_{random}_') && t.envelope().MsgKey"
            ),
        );
        key.as_str().unwrap().to_owned()
    }

    fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("image data"))
            .unwrap();
        std::fs::write(path, png).unwrap();
        println!("screenshot: {}", path.display());
    }
}

/// What a test does in the page: type into a field the way a user does (value, then input and
/// change events), click, read what is shown, wait for a condition, describe the page when a
/// wait fails.
const HELPERS: &str = r##"
window.t = {
  fill(id, value) {
    const e = document.getElementById(id);
    if (!e) throw new Error("no #" + id);
    e.focus();
    e.value = value;
    e.dispatchEvent(new Event("input", { bubbles: true }));
    e.dispatchEvent(new Event("change", { bubbles: true }));
    return true;
  },
  click(selector) {
    const e = document.querySelector(selector);
    if (!e) throw new Error("nothing matches " + selector);
    e.focus();
    e.click();
    return true;
  },
  value(id) { return document.getElementById(id).value; },
  text(id) { return document.getElementById(id).textContent; },
  // The last call answered OK, and its envelope.
  ok() { return document.getElementById("response-status").className.includes("ok"); },
  envelope() { return JSON.parse(t.text("response")); },
  live(n) { return document.getElementById("dev" + n + "-status").className.includes("live"); },
  loggedOut(n) { return t.text("dev" + n + "-status").startsWith("Logged out"); },
  // Device n's view of a message, and history's row of it.
  item(n, key) {
    return document.querySelector("#dev" + n + "-messages li[data-msgkey='" + key + "']");
  },
  row(key) { return document.querySelector("#hist-body tr[data-msgkey='" + key + "']"); },
  until(f, ms) {
    const t0 = Date.now();
    return new Promise((resolve) => {
      (function poll() {
        let v = null;
        try { v = f(); } catch (e) { v = null; }
        if (v) resolve(v);
        else if (Date.now() - t0 > ms) resolve(null);
        else setTimeout(poll, 25);
      })();
    });
  },
  dump() {
    return ["response-status", "request-line", "response", "dev1-status", "dev1-messages",
      "dev2-status", "dev2-messages", "events", "hist-status", "hist-body"]
      .map((id) => id + ": " + document.getElementById(id).innerText).join("\n");
  },
};
true
"##;

/// The route table of `src/api.rs` (`ROUTES`), without the fault-injection route.
fn routes_in_api_rs() -> Vec<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api.rs")).unwrap();
    let table = &src[src.find("const ROUTES").expect("ROUTES in src/api.rs")..];
    let table = &table[..table.find("];").unwrap()];
    let mut routes = Vec::new();
    let mut test_only = false;
    for line in table.lines().map(str::trim) {
        if line.starts_with("#[cfg(") {
            test_only = line.contains("fault-injection");
            continue;
        }
        let Some(literal) = line.split('"').nth(1).filter(|s| s.contains('/')) else {
            continue;
        };
        if !std::mem::take(&mut test_only) {
            routes.push(literal.to_owned());
        }
    }
    assert!(routes.len() >= 12, "parsed ROUTES: {routes:?}");
    routes
}

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[test]
fn console_sends_shows_recalls_and_pages_history_in_a_real_browser() {
    let started = Instant::now();
    let browser = Browser::launch();
    let dir = tempfile::tempdir().unwrap();
    let server = server::start(dir.path(), &[]);
    let sig = |who: &str| usersig::generate(APP, KEY, who, 3600, server::now());

    // The page comes with its headers: nothing but this server may be reached from it.
    let resp = ureq::get(&format!("{}/console", server.base))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert!(header("content-type").starts_with("text/html"));
    let csp = header("content-security-policy");
    for directive in ["default-src 'none'", "connect-src 'self'", "img-src data:"] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive}");
    }

    let mut page = browser.new_page();
    for domain in ["Page", "Network", "Runtime", "Log"] {
        page.call(&format!("{domain}.enable"), json!({}));
    }
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1200, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
    );
    let url = format!("{}/console", server.base);
    page.call("Page.navigate", json!({ "url": url }));
    page.wait_event("Page.loadEventFired");
    page.eval(HELPERS);

    // Every REST API of the server, and nothing else, in the picker.
    let listed = page.eval("[...document.querySelectorAll('#api option')].map(o => o.value)");
    assert_eq!(listed, json!(routes_in_api_rs()), "the console's API list");
    // Every control has a label; the events are announced.
    let unlabelled = page.eval(
        "[...document.querySelectorAll('input, select, textarea')]
            .filter(e => !e.labels || !e.labels.length).map(e => e.id)",
    );
    assert_eq!(unlabelled, json!([]), "controls without a <label for>");
    let live = page.eval("document.getElementById('events').getAttribute('aria-live')");
    assert_eq!(live, "polite");

    // The operator fills in the administrator and the two devices.
    for (id, value) in [
        ("sdkappid", APP.to_string()),
        ("admin-identifier", "administrator".to_owned()),
        ("admin-usersig", sig("administrator")),
        ("dev1-account", "alice".to_owned()),
        ("dev1-device", "laptop".to_owned()),
        ("dev1-usersig", sig("alice")),
        ("dev2-account", "bob".to_owned()),
        ("dev2-device", "phone".to_owned()),
        ("dev2-usersig", sig("bob")),
        ("dev2-platform", "Android".to_owned()),
    ] {
        page.eval(&format!("t.fill({}, {})", js(id), js(&value)));
    }

    // multiaccount_import, its sample naming the devices' accounts, imports them.
    page.eval("t.fill('api', 'im_open_login_svc/multiaccount_import')");
    assert_eq!(page.body(), json!({"Accounts": ["alice", "bob"]}));
    page.eval("t.click('#send')");
    let imported = page.until("the import answers", "t.ok() && t.envelope().FailAccounts");
    assert_eq!(imported, json!([]));

    // alice logs in with the button; bob from the keyboard (Enter in his UserSig field).
    page.eval("t.click('#dev1-connect')");
    page.eval("document.getElementById('dev2-usersig').focus()");
    for kind in ["keyDown", "keyUp"] {
        let key = json!({"type": kind, "key": "Enter", "code": "Enter",
                         "windowsVirtualKeyCode": 13, "text": "\r"});
        page.call("Input.dispatchKeyEvent", key);
    }
    page.until("both devices are logged in", "t.live(1) && t.live(2)");

    // sendmsg, Tencent's sample: alice → bob, SyncOtherMachine 1; the operator edits the text.
    page.eval("t.fill('api', 'openim/sendmsg')");
    let sample = page.body();
    assert_eq!(sample["From_Account"], "alice");
    assert_eq!(sample["To_Account"], "bob");
    assert_eq!(sample["SyncOtherMachine"], 1);
    assert_eq!(sample["MsgBody"][0]["MsgType"], "TIMTextElem");
    assert!(sample["MsgRandom"].is_u64());
    let text = "hello bob, from the console";
    let key = page.send_text(sample.clone(), text);
    let envelope = page.eval("t.envelope()");
    assert_eq!(
        (
            &envelope["ActionStatus"],
            &envelope["ErrorCode"],
            &envelope["ErrorInfo"]
        ),
        (&json!("OK"), &json!(0), &json!("")),
        "{envelope}"
    );

    // bob's phone receives it; so does alice's laptop (SyncOtherMachine 1 reaches the
    // sender's devices).
    let shown = |n: u8, key: &str, text: &str| {
        format!(
            "t.item({n}, {})?.querySelector('.text')?.textContent === {}",
            js(key),
            js(text)
        )
    };
    for n in [1, 2] {
        page.until(
            &format!("device {n} shows the message"),
            &shown(n, &key, text),
        );
    }

    // A second message, from a fresh sample (the Sample body button); it stays.
    page.eval("t.click('#sample')");
    let fresh = page.body();
    assert_ne!(fresh["MsgRandom"], sample["MsgRandom"], "a fresh MsgRandom");
    let other = "this one stays";
    let other_key = page.send_text(fresh, other);
    assert_ne!(other_key, key);
    for n in [1, 2] {
        let what = format!("device {n} shows the second message");
        page.until(&what, &shown(n, &other_key, other));
    }

    // bob answers with the same MsgKey (the other direction: another message). Recalling
    // alice's must not touch bob's, which both devices show under the same MsgKey.
    let parts: Vec<u64> = key.split('_').map(|p| p.parse().unwrap()).collect();
    let twin = server.post(
        "openim/sendmsg",
        json!({"SyncOtherMachine": 1, "From_Account": "bob", "To_Account": "alice",
            "MsgSeq": parts[0], "MsgRandom": parts[1], "MsgTimeStamp": parts[2],
            "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "same key, bob's"}}]}),
    );
    assert_eq!(twin["MsgKey"], json!(key), "{twin}");
    let bobs = |n: u8| {
        format!(
            "document.querySelector(\"#dev{n}-messages li[data-msgkey='{key}'][data-from='bob']\")"
        )
    };
    for n in [1, 2] {
        page.until(
            &format!("device {n} shows bob's message with the same key"),
            &format!(
                "{}?.querySelector('.text')?.textContent === \"same key, bob's\"",
                bobs(n)
            ),
        );
    }
    // Recalling bob's (shown after alice's) tombstones bob's, not the first with its key.
    let withdrawn = server.post(
        "openim/admin_msgwithdraw",
        json!({"From_Account": "bob", "To_Account": "alice", "MsgKey": key}),
    );
    assert_eq!(withdrawn["ErrorCode"], 0, "{withdrawn}");
    for n in [1, 2] {
        page.until(
            &format!("device {n} shows bob's message recalled"),
            &format!("{}.classList.contains('recalled')", bobs(n)),
        );
        let alices = page.eval(&format!(
            "t.item({n}, {})?.querySelector('.text')?.textContent",
            js(&key)
        ));
        assert_eq!(
            alices,
            json!(text),
            "alice's message under the same key, on device {n}"
        );
    }

    // Recall from bob's panel: the message leaves both devices' views.
    page.eval(&format!(
        "t.item(2, {}).querySelector('button').click()",
        js(&key)
    ));
    page.until(
        "admin_msgwithdraw answers OK",
        &format!("t.text('response-status').startsWith('Recall {key}: OK')"),
    );
    for n in [1, 2] {
        page.until(
            &format!("device {n} shows the message recalled"),
            &format!(
                "t.item({n}, {0}).classList.contains('recalled')
                 && !t.item({n}, {0}).querySelector('.text, button')
                 && !t.text('dev{n}-messages').includes({1})",
                js(&key),
                js(text)
            ),
        );
        let untouched = page.eval(&format!("t.item({n}, {}).className", js(&other_key)));
        assert_eq!(untouched, "msg", "the other message on device {n}");
    }
    let log = page.eval("t.text('events')");
    let recalls = log
        .as_str()
        .unwrap()
        .matches(&format!("recall {key}"))
        .count();
    // One per device for bob's message and one per device for alice's (the same key).
    assert_eq!(recalls, 4, "one recall per device in the event log: {log}");

    // History, bob's side with alice (filled in from the devices): MsgFlagBits 8, no body.
    let pair = page.eval("[t.value('hist-operator'), t.value('hist-peer')]");
    assert_eq!(pair, json!(["bob", "alice"]));
    page.eval("t.click('#hist-load')");
    let cells = |key: &str| {
        format!(
            "[...t.row({}).querySelectorAll('td.flag, td:last-child')].map(td => td.textContent)",
            js(key)
        )
    };
    let recalled = page.until(
        "history lists the message with MsgFlagBits 8",
        &format!("t.row({}) && {}", js(&key), cells(&key)),
    );
    assert_eq!(
        recalled,
        json!(["8 (recalled)", ""]),
        "a recalled message has no body"
    );
    assert_eq!(page.eval(&cells(&other_key)), json!(["0", other]));

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    page.eval("document.activeElement.blur(); window.scrollTo(0, 0); true");
    page.screenshot(&artifacts.join("console.png"));

    // A phone-width screen: one column, nothing wider than the screen.
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": true}),
    );
    let widths = page.eval(
        "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() =>
            r([document.documentElement.clientWidth, document.documentElement.scrollWidth]))))",
    );
    assert_eq!(widths[0], 390, "the emulated viewport");
    assert!(
        widths[1].as_u64().unwrap() <= 390,
        "horizontal overflow at 390 px: scrollWidth {}",
        widths[1]
    );
    page.screenshot(&artifacts.join("console-390.png"));

    // Both devices log out; the page confirmed everything it showed (R7), so a device that
    // logs in again is sent only what is new.
    page.eval("t.click('#dev1-disconnect') && t.click('#dev2-disconnect')");
    page.until(
        "both devices are logged out",
        "t.loggedOut(1) && t.loggedOut(2)",
    );
    let mut alice = server.ws("alice", "laptop", "");
    let mut bob = server.ws("bob", "phone", "");
    let body = json!({"SyncOtherMachine": 1, "From_Account": "alice", "To_Account": "bob",
        "MsgRandom": 2, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "later"}}]});
    let next = server.post("openim/sendmsg", body);
    assert_eq!(next["ErrorCode"], 0, "{next}");
    for (who, ws) in [("alice/laptop", &mut alice), ("bob/phone", &mut bob)] {
        let frame = ws.expect_from(&server);
        assert_eq!(
            (frame["Event"].as_str(), frame["Data"]["MsgKey"].as_str()),
            (Some("message"), next["MsgKey"].as_str()),
            "{who} was sent again something the console had shown: {frame}"
        );
    }

    // Nothing was fetched from anywhere but this server; nothing failed in the page.
    page.eval("true");
    let ws_origin = format!("ws://{}/", server.addr);
    let http_origin = format!("{}/", server.base);
    let outside: Vec<&String> = page
        .requests
        .iter()
        .filter(|u| !u.starts_with(&http_origin) && !u.starts_with(&ws_origin))
        .collect();
    assert!(
        outside.is_empty(),
        "requests outside the server: {outside:?}"
    );
    for expected in [
        "console",
        "v4/im_open_login_svc/multiaccount_import?",
        "v4/openim/sendmsg?",
        "v4/openim/admin_msgwithdraw?",
        "v4/openim/admin_getroammsg?",
    ] {
        let url = format!("{http_origin}{expected}");
        assert!(
            page.requests.iter().any(|u| u.starts_with(&url)),
            "no request to {expected}: {:?}",
            page.requests
        );
    }
    let sockets = format!("{ws_origin}v4/imstore/ws?");
    let sockets = page.requests.iter().filter(|u| u.starts_with(&sockets));
    assert_eq!(
        sockets.count(),
        2,
        "one WebSocket per device: {:?}",
        page.requests
    );
    assert!(
        page.problems.is_empty(),
        "the page reported: {:?}",
        page.problems
    );

    // alice logs in with a UserSig valid for 8 s: when it expires the server ends the session
    // (1008, 70001), and the page says so and stays logged out rather than retrying for good.
    let short = usersig::generate(APP, KEY, "alice", 8, server::now());
    page.eval(&format!("t.fill('dev1-usersig', {})", js(&short)));
    page.eval("t.click('#dev1-connect')");
    page.until("alice is logged in again", "t.live(1)");
    page.until(
        "the page says alice's UserSig expired",
        "t.text('dev1-status').includes('UserSig expired') && !document.getElementById('dev1-connect').disabled",
    );

    // alice's page believes it has seen far more than the server holds (as after the
    // operator went back to a backup): the server resets its position, and a message sent
    // now, under a number below the page's, is shown rather than dropped as a repeat.
    page.eval(
        "window.imstoreDevices[0].lastSeq = 1000; window.imstoreDevices[0].acked = 1000; true",
    );
    page.eval(&format!("t.fill('dev1-usersig', {})", js(&sig("alice"))));
    page.eval("t.click('#dev1-connect')");
    page.until("alice is logged in again", "t.live(1)");
    page.until(
        "the page logs the reset",
        "t.text('events').includes('numbering again')",
    );
    let body = json!({"From_Account": "bob", "To_Account": "alice", "MsgRandom": 9,
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "after the reset"}}]});
    let reset_key = server.post("openim/sendmsg", body)["MsgKey"]
        .as_str()
        .unwrap()
        .to_owned();
    page.until(
        "alice's page shows the message sent after the reset",
        &shown(1, &reset_key, "after the reset"),
    );
    println!(
        "console test: {} requests, all to {}; {:.1} s",
        page.requests.len(),
        server.base,
        started.elapsed().as_secs_f64()
    );
}
