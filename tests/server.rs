//! End to end over real HTTP (SPEC §6): start `imstore-server` on port 0 with a temporary data
//! directory; import accounts, send, watch a device's SSE stream receive the message and then
//! its recall notice, see MsgFlagBits 8 in history, resume with Last-Event-ID, stop with
//! SIGTERM (exit 0), restart on the same directory and find all of it again.
#![cfg(feature = "server")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imstore::usersig;
use serde_json::{Value, json};

const APP: u64 = 1400000000;
const KEY: &str = "e2e-secret-key";
const WAIT: Duration = Duration::from_secs(20);

struct Server {
    child: Child,
    base: String,
}

fn start(dir: &std::path::Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_imstore-server"))
        .args([
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
        .args(extra)
        .env("IMSTORE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
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
    let base = rx
        .recv_timeout(WAIT)
        .expect("the server prints its address");
    Server { child, base }
}

impl Server {
    fn query(&self, identifier: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let sig = usersig::generate(APP, KEY, identifier, 3600, now);
        format!("sdkappid={APP}&identifier={identifier}&usersig={sig}&random=7&contenttype=json")
    }

    fn post_as(&self, identifier: &str, api: &str, body: &str) -> Value {
        let url = format!("{}/v4/{api}?{}", self.base, self.query(identifier));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body)
            .unwrap();
        assert_eq!(resp.status(), 200, "always HTTP 200");
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
    }

    fn post(&self, api: &str, body: Value) -> Value {
        self.post_as("administrator", api, &body.to_string())
    }

    /// Opens a device's event stream; events arrive on the returned channel as
    /// (id, event, data).
    fn events(
        &self,
        account: &str,
        device: &str,
        last_event_id: Option<&str>,
    ) -> mpsc::Receiver<(String, String, Value)> {
        let url = format!(
            "{}/v4/imstore/events?{}&device={device}",
            self.base,
            self.query(account)
        );
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

    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(self.child.wait().unwrap());
        });
        rx.recv_timeout(WAIT)
            .expect("the server exits after SIGTERM")
    }
}

fn history(s: &Server) -> Value {
    s.post("openim/admin_getroammsg", json!({"Operator_Account": "dramon", "Peer_Account": "vinson", "MaxCnt": 100, "MinTime": 0, "MaxTime": 4294967295u32}))
}

#[test]
fn the_server_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]);
    assert_eq!(
        s.post(
            "im_open_login_svc/multiaccount_import",
            json!({"Accounts": ["vinson", "dramon"]})
        )["FailAccounts"],
        json!([])
    );

    let phone = s.events("dramon", "phone", None);
    let sent = s.post("openim/sendmsg", json!({"From_Account": "vinson", "To_Account": "dramon", "MsgRandom": 833502, "MsgSeq": 31906,
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hello over http"}}]}));
    assert_eq!(sent["ErrorCode"], 0, "{sent}");
    let key = sent["MsgKey"].as_str().unwrap().to_owned();
    let (id1, kind, data) = phone
        .recv_timeout(WAIT)
        .expect("the device receives the message");
    assert_eq!(
        (kind.as_str(), data["MsgKey"].as_str()),
        ("message", Some(key.as_str()))
    );
    assert_eq!(data["MsgBody"][0]["MsgContent"]["Text"], "hello over http");

    let withdraw = s.post(
        "openim/admin_msgwithdraw",
        json!({"From_Account": "vinson", "To_Account": "dramon", "MsgKey": key}),
    );
    assert_eq!(
        withdraw,
        json!({"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0})
    );
    let (id2, kind, data) = phone
        .recv_timeout(WAIT)
        .expect("the device receives the recall");
    assert_eq!(
        (
            kind.as_str(),
            data["MsgKey"].as_str(),
            data["Operator_Account"].as_str()
        ),
        ("recall", Some(key.as_str()), Some("administrator"))
    );
    assert!(id2.parse::<u64>().unwrap() > id1.parse::<u64>().unwrap());

    let page = history(&s);
    assert_eq!(
        (
            page["MsgList"][0]["MsgFlagBits"].as_u64(),
            page["MsgList"][0]["MsgBody"].clone()
        ),
        (Some(8), json!([]))
    );

    // Resuming after the first event delivers only what followed it.
    let tablet = s.events("dramon", "phone", Some(&id1));
    let (id, kind, _) = tablet.recv_timeout(WAIT).unwrap();
    assert_eq!((id, kind.as_str()), (id2.clone(), "recall"));

    // Only an administrator may call the REST API; a device reads only its own inbox.
    assert_eq!(
        s.post_as("vinson", "openim/admin_msgwithdraw", "{}")["ErrorCode"],
        90009
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let vinson_sig = usersig::generate(APP, KEY, "vinson", 3600, now);
    let forged = format!(
        "{}/v4/imstore/events?sdkappid={APP}&identifier=dramon&usersig={vinson_sig}&device=x",
        s.base
    );
    let body: Value = serde_json::from_str(
        &ureq::get(&forged)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["ErrorCode"], 70013);

    // Unknown paths and methods, and a body over the limit, still answer an envelope.
    assert_eq!(s.post("openim/nothing", json!({}))["ErrorCode"], 60010);
    let big = json!({"UserID": "x".repeat(70_000)}).to_string();
    assert_eq!(
        s.post_as("administrator", "im_open_login_svc/account_import", &big)["ErrorCode"],
        93000
    );

    let before = history(&s);
    assert!(s.stop().success(), "SIGTERM exits 0");

    let s = start(dir.path(), &[]);
    assert_eq!(
        history(&s),
        before,
        "a restart keeps history, recalled flag included"
    );
    let check = s.post(
        "im_open_login_svc/account_check",
        json!({"CheckItem": [{"UserID": "vinson"}, {"UserID": "dramon"}]}),
    );
    assert!(
        check["ResultItem"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["AccountStatus"] == "Imported")
    );
    assert_eq!(
        s.post(
            "openim/get_c2c_unread_msg_num",
            json!({"To_Account": "dramon"})
        )["AllC2CUnreadMsgNum"],
        0
    );
    // The device's cursor survived: reconnecting it replays nothing it already received.
    let phone = s.events("dramon", "phone", None);
    s.post("openim/sendmsg", json!({"From_Account": "vinson", "To_Account": "dramon", "MsgRandom": 1, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "after restart"}}]}));
    let (_, kind, data) = phone.recv_timeout(WAIT).unwrap();
    assert_eq!(
        (
            kind.as_str(),
            data["MsgBody"][0]["MsgContent"]["Text"].as_str()
        ),
        ("message", Some("after restart"))
    );
    assert_eq!(s.post("imstore/compact", json!({}))["ErrorCode"], 0);
    assert!(s.stop().success());
}
