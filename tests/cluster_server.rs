//! `imstore-server --cluster` end to end: three real `nats-server` processes and three real
//! `imstore-server` processes on loopback (SPEC §9). Calls go to any node; devices connect to
//! any node; nodes are killed with SIGKILL.
#![cfg(feature = "cluster")]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::nats::{Nats, serial};
use common::server::{Server, Ws, now, start};
use imstore::cluster::{Cluster, ClusterConfig};
use serde_json::{Value, json};

const SHARDS: u32 = 4;

/// Starts node `id` of the cluster on `nats`.
fn node(nats: &Nats, id: &str) -> (Server, tempfile::TempDir) {
    node_with(nats, id, &[])
}

/// The value of the unlabelled metric `name` in `s`'s `/metrics`, if it answers.
fn metric_of(s: &Server, name: &str) -> Option<f64> {
    let mut resp = ureq::get(format!("{}/metrics", s.base)).call().ok()?;
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

/// The shards `s` says it owns (its `/metrics`).
fn shards_owned(s: &Server) -> u32 {
    metric_of(s, "imstore_shards_owned").map_or(0, |v| v as u32)
}

/// Waits (at most 30 s) until the nodes own every shard between them, each at least one.
fn wait_balanced(nodes: &[&Server]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let owned: Vec<u32> = nodes.iter().map(|s| shards_owned(s)).collect();
        if owned.iter().sum::<u32>() == SHARDS && owned.iter().all(|n| *n >= 1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes did not share the shards: {owned:?}\n{}",
            nodes
                .iter()
                .map(|s| s.stderr())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Nodes a and b of the cluster on `nats`, once they share the shards.
fn two_nodes(nats: &Nats) -> ((Server, tempfile::TempDir), (Server, tempfile::TempDir)) {
    let (a, da) = node(nats, "a");
    let (b, db) = node(nats, "b");
    wait_balanced(&[&a, &b]);
    ((a, da), (b, db))
}

fn text(from: &str, to: &str, random: u32, body: &str) -> Value {
    json!({
        "From_Account": from, "To_Account": to, "MsgRandom": random,
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": body}}]
    })
}

fn ok(v: &Value) -> &Value {
    assert_eq!(v["ErrorCode"], 0, "{v}");
    v
}

/// The frames a device receives within `quiet` of each other (at most `WAIT`), acking each.
fn drain(ws: &mut Ws, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = Instant::now() + common::server::WAIT;
    while Instant::now() < deadline {
        let Some(frame) = ws.next(quiet) else { break };
        if frame["Event"] != "reply"
            && let Some(token) = frame["Seq"].as_str()
        {
            ws.send(json!({"Op": "ack", "Seq": token}));
        }
        out.push(frame);
    }
    out
}

/// The frames a device gets until one satisfies `seen` (waited for up to `WAIT`), then until
/// it is quiet for `quiet` (each acknowledged): a check for repeats that does not take a late
/// first arrival for none.
fn drain_past(ws: &mut Ws, seen: impl Fn(&Value) -> bool, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = Instant::now() + common::server::WAIT;
    while !out.iter().any(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frame) = ws.next(left) else { break };
        if frame["Event"] != "reply"
            && let Some(token) = frame["Seq"].as_str()
        {
            ws.send(json!({"Op": "ack", "Seq": token}));
        }
        out.push(frame);
    }
    out.extend(drain(ws, quiet));
    out
}

/// The whole history of a conversation, page after page (newest first).
fn history(s: &Server, a: &str, b: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let (mut max_time, mut last_key) = (now() + 100, String::new());
    for _ in 0..100 {
        let page = s.post(
            "openim/admin_getroammsg",
            json!({"Operator_Account": a, "Peer_Account": b, "MaxCnt": 100, "MinTime": 0,
                "MaxTime": max_time, "LastMsgKey": last_key}),
        );
        ok(&page);
        out.extend(page["MsgList"].as_array().cloned().unwrap_or_default());
        if page["Complete"] == 1 {
            return out;
        }
        max_time = page["LastMsgTime"].as_u64().unwrap();
        last_key = page["LastMsgKey"].as_str().unwrap().to_owned();
    }
    panic!("more than 100 pages of history")
}

#[test]
fn any_node_answers_and_devices_on_a_third_get_exactly_one_recall() {
    let _serial = serial();
    let nats = Nats::up();
    let (a, _da) = node(&nats, "a");
    let (b, _db) = node(&nats, "b");
    let (c, _dc) = node(&nats, "c");
    wait_balanced(&[&a, &b, &c]);

    // Accounts imported on A are usable on B and C.
    let imported = a.post(
        "im_open_login_svc/multiaccount_import",
        json!({"Accounts": ["alice", "bob", "carol", "dave"]}),
    );
    assert_eq!(ok(&imported)["FailAccounts"], json!([]));
    let check = c.post(
        "im_open_login_svc/account_check",
        json!({"CheckItem": [{"UserID": "bob"}, {"UserID": "zed"}]}),
    );
    let statuses: Vec<&str> = ok(&check)["ResultItem"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["AccountStatus"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["Imported", "NotImported"]);
    // An unknown account is refused wherever the call lands, with the single node's code.
    assert_eq!(
        b.post("openim/sendmsg", text("alice", "zed", 1, "x"))["ErrorCode"],
        90012
    );

    // Devices on C: bob's phone (recipient) and alice's laptop (sender).
    let mut bob = c.ws("bob", "phone", "");
    let mut alice = c.ws("alice", "laptop", "");

    // Sent through A, recalled through B.
    let sent = a.post("openim/sendmsg", text("alice", "bob", 11, "hello"));
    let key = ok(&sent)["MsgKey"].as_str().unwrap().to_owned();
    let got = bob.expect_from(&c);
    assert_eq!(got["Event"], "message", "{got}");
    assert_eq!(got["Data"]["MsgKey"], key.as_str());
    let token = got["Seq"].as_str().expect("a position token").to_owned();
    assert!(token.starts_with('c'), "{token}");
    bob.send(json!({"Op": "ack", "Seq": token}));
    ok(&b.post(
        "openim/admin_msgwithdraw",
        json!({"From_Account": "alice", "To_Account": "bob", "MsgKey": key}),
    ));
    // Recalled in history, seen through any node.
    for s in [&a, &b, &c] {
        let h = history(s, "alice", "bob");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0]["MsgFlagBits"], 8);
        assert_eq!(h[0]["MsgBody"], json!([]));
    }
    // Each device: exactly one recall notice.
    let is_recall = |f: &Value| f["Event"] == "recall" && f["Data"]["MsgKey"] == key.as_str();
    for (who, ws) in [("bob", &mut bob), ("alice", &mut alice)] {
        let frames = drain_past(ws, is_recall, Duration::from_millis(1500));
        let recalls: Vec<_> = frames.iter().filter(|f| is_recall(f)).collect();
        assert_eq!(recalls.len(), 1, "{who}'s device: {frames:?}");
    }

    // A client request over C's WebSocket runs on the conversation's shard.
    bob.send(
        json!({"Op": "sendmsg", "ReqId": 1, "To_Account": "carol", "MsgRandom": 5,
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "from bob's phone"}}]}),
    );
    let reply = loop {
        let f = bob.expect_from(&c);
        if f["Event"] == "reply" {
            break f;
        }
    };
    assert_eq!(reply["ErrorCode"], 0, "{reply}");
    assert_eq!(reply["ReqId"], 1);
    let h = history(&a, "carol", "bob");
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["MsgBody"][0]["MsgContent"]["Text"], "from bob's phone");

    // Unread counts are summed over the shards.
    for (i, peer) in ["alice", "carol", "dave"].iter().enumerate() {
        ok(&b.post(
            "openim/sendmsg",
            text(peer, "bob", 100 + i as u32, "unread"),
        ));
    }
    let unread = c.post(
        "openim/get_c2c_unread_msg_num",
        json!({"To_Account": "bob"}),
    );
    assert_eq!(ok(&unread)["AllC2CUnreadMsgNum"], 3, "{unread}");
    let picked = a.post(
        "openim/get_c2c_unread_msg_num",
        json!({"To_Account": "bob", "Peer_Account": ["dave", "zed"]}),
    );
    assert_eq!(
        picked["C2CUnreadMsgNumList"],
        json!([{"Peer_Account": "dave", "C2CUnreadMsgNum": 1}])
    );
    assert_eq!(picked["ErrorList"][0]["ErrorCode"], 70107);
    // Ten peers at most, as Tencent documents; their lookups run at once.
    let ten: Vec<String> = (0..10).map(|i| format!("nobody{i}")).collect();
    let many = a.post(
        "openim/get_c2c_unread_msg_num",
        json!({"To_Account": "bob", "Peer_Account": ten}),
    );
    assert_eq!(
        ok(&many)["ErrorList"].as_array().unwrap().len(),
        10,
        "{many}"
    );
    let eleven: Vec<String> = (0..11).map(|i| format!("nobody{i}")).collect();
    let too_many = a.post(
        "openim/get_c2c_unread_msg_num",
        json!({"To_Account": "bob", "Peer_Account": eleven}),
    );
    assert_eq!(too_many["ErrorCode"], 90001, "{too_many}");

    // A batch send spans shards under one MsgKey.
    let batch = a.post(
        "openim/batchsendmsg",
        json!({"From_Account": "dave", "To_Account": ["alice", "bob", "carol", "zed"], "MsgRandom": 9,
            "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "to all"}}]}),
    );
    assert_eq!(batch["ActionStatus"], "SomeError", "{batch}");
    assert_eq!(
        batch["ErrorList"],
        json!([{"To_Account": "zed", "ErrorCode": 70107}])
    );
    let batch_key = batch["MsgKey"].as_str().unwrap();
    for to in ["alice", "bob", "carol"] {
        let h = history(&c, "dave", to);
        assert!(h.iter().any(|m| m["MsgKey"] == batch_key), "{to}: {h:?}");
    }

    // A device resumes on another node from the token it confirmed: nothing confirmed comes
    // again, and what arrived since does.
    let is_batch = |f: &Value| f["Event"] == "message" && f["Data"]["MsgKey"] == batch_key;
    let frames = drain_past(&mut bob, is_batch, Duration::from_millis(800));
    let last = frames
        .iter()
        .rev()
        .find_map(|f| f["Seq"].as_str())
        .unwrap()
        .to_owned();
    drop(bob);
    let later = b.post("openim/sendmsg", text("carol", "bob", 77, "while away"));
    let later_key = ok(&later)["MsgKey"].as_str().unwrap().to_owned();
    let mut bob = a.ws("bob", "phone", &format!("&after={last}"));
    let is_later = |f: &Value| f["Event"] == "message" && f["Data"]["MsgKey"] == later_key.as_str();
    let frames = drain_past(&mut bob, is_later, Duration::from_millis(1500));
    let keys: Vec<&str> = frames
        .iter()
        .filter(|f| f["Event"] == "message")
        .map(|f| f["Data"]["MsgKey"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [later_key.as_str()], "{frames:?}");
    // A token from elsewhere is refused.
    let Err(refused) = c.try_ws("bob", "phone", "&after=7") else {
        panic!("a number is not a position token in a cluster")
    };
    assert!(refused.contains("90001"), "{refused}");

    // Server-Sent Events on any node: ids are tokens; `Last-Event-ID` resumes after one, and
    // `POST /v4/imstore/ack {"Seq": TOKEN}` confirms it.
    ok(&c.post("openim/sendmsg", text("carol", "dave", 54, "hello dave")));
    let events = b.events("dave", "tablet", None);
    let first = events
        .recv_timeout(Duration::from_secs(20))
        .expect("an event");
    assert!(first.0.starts_with('c'), "{first:?}");
    let mut last = first.0.clone();
    while let Ok(e) = events.recv_timeout(Duration::from_millis(800)) {
        last = e.0;
    }
    // `events`' connection stays open (as a client that went away without closing would
    // leave it) while the tablet connects again through another node below.
    let url = format!(
        "{}/v4/imstore/ack?{}&device=tablet",
        c.base,
        c.query("dave")
    );
    let mut acked = ureq::post(&url)
        .send(json!({ "Seq": last }).to_string())
        .unwrap();
    let acked: Value = serde_json::from_str(&acked.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(acked["ErrorCode"], 0, "{acked}");
    let fresh = ok(&a.post(
        "openim/sendmsg",
        text("alice", "dave", 55, "for the tablet"),
    ))["MsgKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let resumed = a.events("dave", "tablet", Some(&last));
    let (id, kind, data) = resumed
        .recv_timeout(Duration::from_secs(20))
        .expect("the event after the token");
    assert_eq!(
        (kind.as_str(), data["MsgKey"].as_str()),
        ("message", Some(fresh.as_str())),
        "{id}"
    );
    assert!(
        resumed.recv_timeout(Duration::from_millis(800)).is_err(),
        "nothing confirmed comes again"
    );
    // The connection it replaced, still open on B, was superseded: it ends, gets nothing sent
    // after, and never takes the device back (which would end the new one).
    let still = ok(&b.post(
        "openim/sendmsg",
        text("carol", "dave", 56, "still on the new connection"),
    ))["MsgKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, _, data) = resumed
        .recv_timeout(Duration::from_secs(20))
        .expect("the new connection still gets events");
    assert_eq!(data["MsgKey"].as_str(), Some(still.as_str()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the superseded stream did not end"),
            // What it was handed before the new connection (`fresh`) it may still pass on.
            Ok((_, _, data)) => assert_ne!(data["MsgKey"].as_str(), Some(still.as_str())),
        }
    }
    drop(resumed);

    // Deleting an account removes it from every shard: sends to it fail everywhere.
    let deleted = b.post(
        "im_open_login_svc/account_delete",
        json!({"DeleteItem": [{"UserID": "carol"}]}),
    );
    assert_eq!(ok(&deleted)["ResultItem"][0]["ResultCode"], 0, "{deleted}");
    for s in [&a, &b, &c] {
        let r = s.post("openim/sendmsg", text("alice", "carol", 3, "gone?"));
        assert_eq!(r["ErrorCode"], 90012, "{r}");
    }
    let again = c.post(
        "im_open_login_svc/account_delete",
        json!({"DeleteItem": [{"UserID": "carol"}]}),
    );
    assert_eq!(again["ResultItem"][0]["ResultCode"], 70107, "{again}");

    // Compaction: every shard snapshots into the object store.
    let compacted = a
        .post_within("imstore/compact", json!({}), Duration::from_secs(90))
        .unwrap_or_else(|| {
            panic!(
                "compaction was not answered\n{}\n----\n{}\n----\n{}",
                a.stderr(),
                b.stderr(),
                c.stderr()
            )
        });
    assert_eq!(
        compacted["ErrorCode"],
        0,
        "{compacted}\n{}\n----\n{}\n----\n{}",
        a.stderr(),
        b.stderr(),
        c.stderr()
    );
    let shards = compacted["Shards"].as_array().unwrap();
    assert_eq!(shards.len(), SHARDS as usize, "{compacted}");
    assert!(
        shards.iter().all(|s| s["SnapshotSeq"].as_u64().is_some()),
        "{compacted}"
    );
}

/// Where each node listens (base URL, host:port); `None` while it is down.
type Addrs = Arc<Mutex<Vec<Option<(String, String)>>>>;

/// What the load and the devices of the chaos test saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged sends: MsgKey → (from, to).
    sent: BTreeMap<String, (String, String)>,
    /// Acknowledged recalls.
    recalled: BTreeSet<String>,
}

/// One device of the chaos test: connects to the first live node in `order`, acks every
/// event, and on a dropped connection resumes on the next node from its last confirmed
/// token. Records every recall notice per connection.
struct Device {
    account: String,
    /// Recall notices, per MsgKey, counted over the device's whole life.
    recalls: HashMap<String, usize>,
    /// Notices repeated within one connection (never allowed).
    repeated_in_connection: Vec<String>,
    messages: BTreeSet<String>,
    reconnects: usize,
    /// Connections made (the first, and one per reconnect).
    connections: usize,
}

fn run_device(
    account: &str,
    name: &str,
    nodes: Addrs,
    first: usize,
    stop: Arc<AtomicBool>,
    d: Arc<Mutex<Device>>,
) {
    let mut token: Option<String> = None;
    let mut at = first;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
        let target = nodes.lock().unwrap()[at % 3].clone();
        let Some((_, addr)) = target else {
            at += 1;
            continue;
        };
        let sig = imstore::usersig::generate(
            common::server::APP,
            common::server::KEY,
            account,
            3600,
            now(),
        );
        let after = token
            .as_ref()
            .map(|t| format!("&after={t}"))
            .unwrap_or_default();
        let url = format!(
            "ws://{addr}/v4/imstore/ws?sdkappid={}&identifier={account}&usersig={sig}&device={name}{after}",
            common::server::APP
        );
        let Ok((mut socket, _)) = tungstenite::connect(url) else {
            at += 1;
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = socket.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
        }
        d.lock().unwrap().connections += 1;
        let mut this_connection = BTreeSet::new();
        loop {
            match socket.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    let f: Value = serde_json::from_str(&t).unwrap();
                    let key = f["Data"]["MsgKey"].as_str().unwrap_or("").to_owned();
                    match f["Event"].as_str() {
                        Some("recall") => {
                            let mut d = d.lock().unwrap();
                            if !this_connection.insert(key.clone()) {
                                d.repeated_in_connection.push(key.clone());
                            }
                            *d.recalls.entry(key).or_default() += 1;
                        }
                        Some("message") => {
                            d.lock().unwrap().messages.insert(key);
                        }
                        _ => {}
                    }
                    if let Some(t) = f["Seq"].as_str() {
                        let _ = socket.send(tungstenite::Message::Text(
                            json!({"Op": "ack", "Seq": t}).to_string().into(),
                        ));
                        token = Some(t.to_owned());
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        d.lock().unwrap().reconnects += 1;
        at += 1;
    }
}

#[test]
fn chaos_kill_an_imstore_node_then_a_nats_node_and_restart_both() {
    let _serial = serial();
    let nats = Nats::up();
    let mut servers: Vec<Option<(Server, tempfile::TempDir)>> = ["a", "b", "c"]
        .iter()
        .map(|id| Some(node(&nats, id)))
        .collect();
    {
        let live: Vec<&Server> = servers.iter().flatten().map(|(s, _)| s).collect();
        wait_balanced(&live);
    }
    let users: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    let first = &servers[0].as_ref().unwrap().0;
    ok(&first.post(
        "im_open_login_svc/multiaccount_import",
        json!({ "Accounts": users }),
    ));
    // Where each node listens, for the devices and the load: None while it is down.
    let addrs: Addrs = Arc::new(Mutex::new(
        servers
            .iter()
            .map(|s| s.as_ref().map(|(s, _)| (s.base.clone(), s.addr.clone())))
            .collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));

    // One device per account, spread over the three nodes (those on A will move).
    let devices: Vec<Arc<Mutex<Device>>> = users
        .iter()
        .map(|u| {
            Arc::new(Mutex::new(Device {
                account: u.clone(),
                recalls: HashMap::new(),
                repeated_in_connection: Vec::new(),
                messages: BTreeSet::new(),
                reconnects: 0,
                connections: 0,
            }))
        })
        .collect();
    let device_stop = Arc::new(AtomicBool::new(false));
    let device_threads: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let (u, addrs, stop, d) = (
                u.clone(),
                addrs.clone(),
                device_stop.clone(),
                devices[i].clone(),
            );
            std::thread::spawn(move || run_device(&u, "dev", addrs, i, stop, d))
        })
        .collect();
    // Every device connected before the load starts (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    while devices.iter().any(|d| d.lock().unwrap().connections == 0) {
        assert!(Instant::now() < deadline, "the devices did not connect");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The load: three clients, one per node to start with, sending and recalling; a call
    // that fails at the transport or with 91000 is sent again, the same body, to the next node.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let loads: Vec<_> = (0..3)
        .map(|w| {
            let (addrs, stop, seen, users) =
                (addrs.clone(), stop.clone(), seen.clone(), users.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(40)))
                    .build()
                    .into();
                let mut at = w;
                let mut call = |api: &str, body: &Value| -> Option<Value> {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while Instant::now() < deadline {
                        let target = addrs.lock().unwrap()[at % 3].clone();
                        let Some((base, _)) = target else {
                            at += 1;
                            continue;
                        };
                        let sig = imstore::usersig::generate(
                            common::server::APP,
                            common::server::KEY,
                            "administrator",
                            3600,
                            now(),
                        );
                        let url = format!(
                            "{base}/v4/{api}?sdkappid={}&identifier=administrator&usersig={sig}&random=1&contenttype=json",
                            common::server::APP
                        );
                        let answer = agent
                            .post(&url)
                            .send(body.to_string())
                            .ok()
                            .and_then(|mut r| r.body_mut().read_to_string().ok())
                            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
                        match answer {
                            Some(v) if v["ErrorCode"] != 91000 => return Some(v),
                            _ => {
                                at += 1;
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                    None
                };
                let mut i = 0u32;
                while !stop.load(Ordering::Acquire) {
                    i += 1;
                    let from = &users[(i as usize * 3 + w) % users.len()];
                    let to = &users[(i as usize * 5 + w + 1) % users.len()];
                    if from == to {
                        continue;
                    }
                    // MsgSeq and MsgTimeStamp fix the MsgKey: a retry is the same message.
                    let mut body = text(from, to, i * 10 + w as u32, "chaos");
                    body["MsgSeq"] = json!(i);
                    body["MsgTimeStamp"] = json!(now());
                    let Some(r) = call("openim/sendmsg", &body) else {
                        continue;
                    };
                    assert_eq!(r["ErrorCode"], 0, "{r}");
                    let key = r["MsgKey"].as_str().unwrap().to_owned();
                    seen.lock()
                        .unwrap()
                        .sent
                        .insert(key.clone(), (from.clone(), to.clone()));
                    if i.is_multiple_of(2) {
                        let body = json!({"From_Account": from, "To_Account": to, "MsgKey": key});
                        if let Some(r) = call("openim/admin_msgwithdraw", &body) {
                            // 20023: an earlier attempt, cut off by a kill, had recalled it.
                            assert!(
                                r["ErrorCode"] == 0 || r["ErrorCode"] == 20023,
                                "{r}"
                            );
                            seen.lock().unwrap().recalled.insert(key);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();

    let phase = |secs: u64| std::thread::sleep(Duration::from_secs(secs));
    phase(3);
    // SIGKILL imstore node A.
    addrs.lock().unwrap()[0] = None;
    let (a, dir_a) = servers[0].take().unwrap();
    a.kill();
    let killed_at = Instant::now();
    phase(6);
    // SIGKILL one NATS node.
    nats.kill(1);
    phase(6);
    // Restart both.
    nats.start(1);
    let a = node(&nats, "a");
    drop(dir_a);
    addrs.lock().unwrap()[0] = Some((a.0.base.clone(), a.0.addr.clone()));
    servers[0] = Some(a);
    phase(4);
    stop.store(true, Ordering::Release);
    let stopped_at = Instant::now();
    for l in loads {
        l.join().expect("a load thread failed");
    }
    let live: Vec<&Server> = servers.iter().flatten().map(|(s, _)| s).collect();
    wait_balanced(&live);
    let seen = seen.lock().unwrap();
    assert!(
        seen.sent.len() > 20 && seen.recalled.len() > 10,
        "the load ran: {} sends, {} recalls",
        seen.sent.len(),
        seen.recalled.len()
    );
    eprintln!(
        "{} sends, {} recalls acknowledged; A was killed {:.1} s before the load stopped",
        seen.sent.len(),
        seen.recalled.len(),
        (stopped_at - killed_at).as_secs_f64()
    );

    // Every acknowledged operation is present; no recalled message is live in history.
    let mut pairs: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (key, (from, to)) in &seen.sent {
        pairs
            .entry((from.clone(), to.clone()))
            .or_default()
            .push(key.clone());
    }
    let mut missing = Vec::new();
    for (i, ((from, to), keys)) in pairs.iter().enumerate() {
        let s = live[i % live.len()];
        let h = history(s, from, to);
        let by_key: HashMap<&str, &Value> = h
            .iter()
            .map(|m| (m["MsgKey"].as_str().unwrap(), m))
            .collect();
        for key in keys {
            let Some(m) = by_key.get(key.as_str()) else {
                missing.push((
                    imstore::cluster::shard_of(from, to, SHARDS),
                    key.clone(),
                    from.clone(),
                    to.clone(),
                    h.len(),
                ));
                continue;
            };
            if seen.recalled.contains(key) {
                assert_eq!(m["MsgFlagBits"], 8, "recalled {key} is live: {m}");
                assert_eq!(m["MsgBody"], json!([]));
            }
        }
    }
    if !missing.is_empty() {
        let mut cfg = ClusterConfig::new(&nats.urls, "auditor");
        cfg.shards = SHARDS;
        let auditor = Cluster::connect(cfg).unwrap();
        let mut writers = String::new();
        for n in 0..SHARDS {
            let mut runs: Vec<(String, u64, usize)> = Vec::new();
            for (_, node, epoch) in auditor.writers(n).unwrap() {
                match runs.last_mut() {
                    Some(r) if r.0 == node && r.1 == epoch => r.2 += 1,
                    _ => runs.push((node, epoch, 1)),
                }
            }
            writers.push_str(&format!("shard {n}: {runs:?}\n"));
        }
        panic!(
            "{} acknowledged sends missing (shard, key, from, to, history length): {:?}\n{writers}\nlogs:\n{}",
            missing.len(),
            &missing[..missing.len().min(20)],
            live.iter()
                .map(|s| s.stderr())
                .collect::<Vec<_>>()
                .join("\n-----\n")
        );
    }

    // A fresh device of every account gets no recalled message.
    for (i, u) in users.iter().enumerate() {
        let mut fresh = live[i % live.len()].ws(u, "fresh", "");
        for f in drain(&mut fresh, Duration::from_millis(700)) {
            if f["Event"] == "message" {
                let key = f["Data"]["MsgKey"].as_str().unwrap();
                assert!(
                    !seen.recalled.contains(key),
                    "a fresh device of {u} got recalled {key}"
                );
            }
        }
    }

    // Every device that was connected: exactly one notice per recall of its account's
    // messages (never twice on one connection; at least once over its life). Delivery is at
    // least once, not at once: wait (bounded) until every notice has arrived.
    let expected = |d: &Device| -> Vec<String> {
        seen.recalled
            .iter()
            .filter(|key| {
                let (from, to) = &seen.sent[*key];
                (from == &d.account || to == &d.account) && !d.recalls.contains_key(*key)
            })
            .cloned()
            .collect()
    };
    let waiting = Instant::now();
    let deadline = waiting + Duration::from_secs(30);
    let mut reported = false;
    while Instant::now() < deadline
        && devices
            .iter()
            .any(|d| !expected(&d.lock().unwrap()).is_empty())
    {
        if !reported && waiting.elapsed() > Duration::from_secs(3) {
            reported = true;
            for d in &devices {
                let d = d.lock().unwrap();
                let missing: Vec<(String, u32)> = expected(&d)
                    .into_iter()
                    .map(|k| {
                        let (from, to) = &seen.sent[&k];
                        (k.clone(), imstore::cluster::shard_of(from, to, SHARDS))
                    })
                    .collect();
                if !missing.is_empty() {
                    eprintln!(
                        "after 3 s, {} (reconnects {}) still lacks {} notices: {:?}",
                        d.account,
                        d.reconnects,
                        missing.len(),
                        &missing[..missing.len().min(5)]
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "devices had every recall notice {:.1} s after the load stopped (waited {:.1} s after the checks)",
        stopped_at.elapsed().as_secs_f64(),
        waiting.elapsed().as_secs_f64()
    );
    device_stop.store(true, Ordering::Release);
    for t in device_threads {
        t.join().expect("a device thread failed");
    }
    let devices: Vec<Device> = devices
        .into_iter()
        .map(|d| {
            std::mem::replace(
                &mut *d.lock().unwrap(),
                Device {
                    account: String::new(),
                    recalls: HashMap::new(),
                    repeated_in_connection: Vec::new(),
                    messages: BTreeSet::new(),
                    reconnects: 0,
                    connections: 0,
                },
            )
        })
        .collect();
    for d in &devices {
        assert!(
            d.repeated_in_connection.is_empty(),
            "{}: notices repeated on one connection: {:?}",
            d.account,
            d.repeated_in_connection
        );
        let never = expected(d);
        assert!(
            never.is_empty(),
            "{} never got the recalls of {never:?} (reconnects: {})",
            d.account,
            d.reconnects
        );
    }
    // Devices that never moved got each notice exactly once.
    for d in devices.iter().filter(|d| d.reconnects == 0) {
        for (key, n) in &d.recalls {
            assert_eq!(*n, 1, "{}: {n} notices of {key}", d.account);
        }
    }

    // No two owners ever wrote to a shard: each epoch is one node's, epochs only grow, and a
    // record of an older epoch after a newer one is a fenced-out zombie — a stale owner's
    // pipelined append, at most a publishing window after the newer owner's first record
    // (replay skips it; it was never acknowledged).
    let mut cfg = ClusterConfig::new(&nats.urls, "auditor");
    cfg.shards = SHARDS;
    let auditor = Cluster::connect(cfg).unwrap();
    for n in 0..SHARDS {
        let writers = auditor.writers(n).unwrap();
        let mut owner_of: HashMap<u64, &str> = HashMap::new();
        let (mut newest, mut since, mut zombies) = (0u64, 0u64, 0usize);
        for (seq, node, epoch) in &writers {
            let prev = owner_of.insert(*epoch, node.as_str());
            assert!(
                prev.is_none_or(|p| p == node),
                "shard {n}: epoch {epoch} written by {prev:?} and {node} (seq {seq})"
            );
            if *epoch > newest {
                (newest, since) = (*epoch, *seq);
            } else if *epoch < newest {
                zombies += 1;
                assert!(
                    seq - since <= 4096,
                    "shard {n}: a record of epoch {epoch} at {seq}, long after epoch {newest} began at {since}"
                );
            }
        }
        assert!(!owner_of.is_empty(), "shard {n} has no records");
        eprintln!(
            "shard {n}: {} records, owners by epoch {:?}, {zombies} fenced-out zombies",
            writers.len(),
            {
                let mut o: Vec<_> = owner_of.into_iter().collect();
                o.sort();
                o
            }
        );
    }
}

/// Starts node `id` with `extra` arguments.
fn node_with(nats: &Nats, id: &str, extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let shards = SHARDS.to_string();
    let mut args = vec![
        "--cluster",
        &nats.urls,
        "--node-id",
        id,
        "--shards",
        &shards,
    ];
    args.extend_from_slice(extra);
    let server = start(dir.path(), &args);
    (server, dir)
}

#[test]
fn webhooks_and_the_rate_limit_work_across_nodes() {
    use common::webhook::{Answer, Call, Receiver, ok as answered_ok};
    let _serial = serial();
    let nats = Nats::up();
    let receiver = Receiver::start();
    receiver.answer_with(|c: &Call| {
        if c.command() == "C2C.CallbackBeforeSendMsg"
            && c.body["MsgBody"][0]["MsgContent"]["Text"] == "blocked"
        {
            Answer::ok(json!({"ActionStatus": "OK", "ErrorCode": 1, "ErrorInfo": ""}))
        } else {
            answered_ok()
        }
    });
    // 6 calls a second per API for the app: 3 for each of the two nodes.
    let hooks = [
        "--callback-url",
        receiver.url.as_str(),
        "--callback-token",
        "t",
        "--rate-limit",
        "6",
    ];
    let (a, _da) = node_with(&nats, "a", &hooks);
    let (b, _db) = node_with(&nats, "b", &hooks);
    wait_balanced(&[&a, &b]);
    // Calls wait out the limit (60007) in this test, except where it is the point.
    let call = |s: &Server, api: &str, body: Value| -> Value {
        for _ in 0..50 {
            let r = s.post(api, body.clone());
            if r["ErrorCode"] != 60007 {
                return r;
            }
            std::thread::sleep(Duration::from_millis(400));
        }
        panic!("{api} was refused 50 times by the rate limit")
    };
    ok(&call(
        &a,
        "im_open_login_svc/multiaccount_import",
        json!({"Accounts": ["alice", "bob"]}),
    ));

    // The before-send callback decides wherever the shard is owned: refused is refused.
    let refused = call(&b, "openim/sendmsg", text("alice", "bob", 1, "blocked"));
    assert_eq!(refused["ErrorCode"], 20006, "{refused}");
    // An accepted send: the after-send callback carries the MsgKey the caller got, once.
    let sent = call(&a, "openim/sendmsg", text("alice", "bob", 2, "fine"));
    let key = ok(&sent)["MsgKey"].as_str().unwrap().to_owned();
    let after = receiver
        .next_of("C2C.CallbackAfterSendMsg", Duration::from_secs(20))
        .expect("an after-send callback");
    assert_eq!(after.body["MsgKey"], key.as_str());
    assert_eq!(after.body["From_Account"], "alice");
    ok(&call(
        &b,
        "openim/admin_msgwithdraw",
        json!({"From_Account": "alice", "To_Account": "bob", "MsgKey": key}),
    ));
    let withdrawn = receiver
        .next_of("C2C.CallbackAfterMsgWithDraw", Duration::from_secs(20))
        .expect("an after-recall callback");
    assert_eq!(withdrawn.body["MsgKey"], key.as_str());
    std::thread::sleep(Duration::from_millis(500));
    let repeated = receiver
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.command() == "C2C.CallbackAfterSendMsg" && c.body["MsgKey"] == key.as_str())
        .count();
    assert_eq!(repeated, 1, "one after-send callback per message");

    // The rate limit: each node admits its share, 3 a second per API. A burst of 30 checks
    // to one node: at most its bucket (3) plus what refills while the burst runs.
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let mut admitted = 0;
    for _ in 0..30 {
        let r = a.post(
            "im_open_login_svc/account_check",
            json!({"CheckItem": [{"UserID": "alice"}]}),
        );
        match r["ErrorCode"].as_u64() {
            Some(0) => admitted += 1,
            Some(60007) => {}
            _ => panic!("{r}"),
        }
    }
    let refill = (started.elapsed().as_secs_f64() * 3.0).ceil() as usize;
    assert!(
        admitted >= 3 && admitted <= 3 + refill,
        "{admitted} of 30 admitted in {:?} (bucket 3, refill {refill})",
        started.elapsed()
    );
    assert!(admitted < 30, "the limit applies");
}

/// A node purges the shards it owns as a single server purges its store: an inbox entry past
/// its MsgLifeTime is removed (and so are idle devices and history past retention).
#[test]
fn a_node_purges_the_shards_it_owns() {
    let _serial = serial();
    let nats = Nats::up();
    let dir = tempfile::tempdir().unwrap();
    let shards = SHARDS.to_string();
    let args = [
        "--cluster",
        &nats.urls,
        "--node-id",
        "a",
        "--shards",
        &shards,
        "--purge-interval-secs",
        "1",
    ];
    let a = common::server::start_with(
        dir.path(),
        common::server::Launch {
            extra: args.to_vec(),
            log: "imstore=debug",
            ..Default::default()
        },
    );
    wait_balanced(&[&a]);
    ok(&a.post(
        "im_open_login_svc/multiaccount_import",
        json!({"Accounts": ["alice", "bob"]}),
    ));
    let mut msg = text("alice", "bob", 1, "gone in a second");
    msg["MsgLifeTime"] = json!(1);
    ok(&a.post("openim/sendmsg", msg));
    // Its shard's next purge after the second has passed drops bob's inbox entry.
    assert!(a.wait_for_log("inbox_entries=1"), "{}", a.stderr());
}

/// A REST call to `url` answered within `timeout`, or `None`.
fn post_url_within(url: &str, body: &Value, timeout: Duration) -> Option<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut resp = agent.post(url).send(body.to_string()).ok()?;
    serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()
}

/// Every NATS node is SIGKILLed while 16 callers send through both imstore nodes, and started
/// again seconds later. Every call is answered within a bound (nothing waits for ever on a
/// client whose command queue fills while it has no server), the nodes share the shards
/// again, every send answered OK is in the history, and sends work as before.
#[test]
fn the_whole_nats_cluster_restarts_under_sends() {
    let _serial = serial();
    let nats = Nats::up();
    let ((a, _da), (b, _db)) = two_nodes(&nats);
    let users: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    ok(&a.post(
        "im_open_login_svc/multiaccount_import",
        json!({ "Accounts": users }),
    ));
    let urls: Vec<String> = [&a, &b]
        .iter()
        .map(|s| format!("{}/v4/openim/sendmsg?{}", s.base, s.query("administrator")))
        .collect();
    // (from, to, MsgKey) of every send answered OK.
    let sent: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let unanswered = Arc::new(Mutex::new(Vec::new()));
    let codes: Arc<Mutex<BTreeMap<i64, u32>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // A call unanswered this long is a wait without a bound (a forwarded call's is its
    // answer's timeout plus a second; a local send's, the journal's publish retry, 30 s).
    let bound = Duration::from_secs(120);
    let callers: Vec<_> = (0..16u32)
        .map(|t| {
            let (urls, users) = (urls.clone(), users.clone());
            let (sent, unanswered, codes, stop) = (
                sent.clone(),
                unanswered.clone(),
                codes.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                // Until told to stop (bounded in count and time): calls answered at once
                // with 91000 must not use up a fixed count before NATS is back.
                let deadline = Instant::now() + Duration::from_secs(300);
                for i in 0..100_000u32 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        return;
                    }
                    let (from, to) = (&users[(t % 8) as usize], &users[((t + 1 + i) % 8) as usize]);
                    if from == to {
                        continue;
                    }
                    let random = t * 1_000_000 + i;
                    let body = text(from, to, random, &format!("t{t} i{i}"));
                    match post_url_within(&urls[(i % 2) as usize], &body, bound) {
                        None => unanswered.lock().unwrap().push(random),
                        Some(r) => {
                            let code = r["ErrorCode"].as_i64().unwrap_or(-1);
                            *codes.lock().unwrap().entry(code).or_default() += 1;
                            if code == 0 {
                                let key = r["MsgKey"].as_str().unwrap().to_owned();
                                sent.lock().unwrap().push((from.clone(), to.clone(), key));
                            } else {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                }
            })
        })
        .collect();

    let wait_sent = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while sent.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} sends answered OK"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_sent(100);
    for n in 1..=3 {
        nats.kill(n);
    }
    let at_outage = sent.lock().unwrap().len();
    std::thread::sleep(Duration::from_secs(6));
    for n in 1..=3 {
        nats.run(&["start", &n.to_string()]);
    }
    // The nodes carry on: sends are answered OK again, and the shards are shared.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sent.lock().unwrap().len() < at_outage + 200 {
        assert!(
            Instant::now() < deadline,
            "sends did not succeed again after NATS came back: {:?}\n{}\n----\n{}",
            codes.lock().unwrap(),
            a.stderr(),
            b.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.join().unwrap();
    }
    assert!(
        unanswered.lock().unwrap().is_empty(),
        "calls unanswered within {bound:?}: {:?}",
        unanswered.lock().unwrap()
    );
    wait_balanced(&[&a, &b]);

    // Every send answered OK is kept, read from either node.
    let sent = sent.lock().unwrap().clone();
    let mut want: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (from, to, key) in &sent {
        want.entry((from.clone(), to.clone()))
            .or_default()
            .insert(key.clone());
    }
    for (i, ((from, to), keys)) in want.iter().enumerate() {
        let reader = if i % 2 == 0 { &a } else { &b };
        let have: BTreeSet<String> = history(reader, from, to)
            .iter()
            .filter(|m| m["From_Account"] == from.as_str())
            .map(|m| m["MsgKey"].as_str().unwrap().to_owned())
            .collect();
        let lost: Vec<_> = keys.difference(&have).collect();
        assert!(
            lost.is_empty(),
            "{from} → {to}: sends answered OK are gone: {lost:?} (codes {:?})",
            codes.lock().unwrap()
        );
    }
    ok(&b.post("openim/sendmsg", text("u1", "u2", 999_999, "after")));
    eprintln!("answers by code: {:?}", codes.lock().unwrap());
}

/// A cluster of one node owning every shard, with `accounts` imported: what a test of one
/// node's behaviour needs (held together, dropped in this order after the node: NATS, the
/// node's directory, then the guard that lets the next cluster test start).
struct OneNode(
    #[allow(dead_code)] Nats,
    #[allow(dead_code)] tempfile::TempDir,
    #[allow(dead_code)] common::nats::Serial,
);

fn one_node_with(accounts: &[&str]) -> (OneNode, Server) {
    let serial = serial();
    let nats = Nats::up();
    let (a, dir) = node(&nats, "a");
    wait_balanced(&[&a]);
    ok(&a.post(
        "im_open_login_svc/multiaccount_import",
        json!({ "Accounts": accounts }),
    ));
    (OneNode(nats, dir, serial), a)
}

/// dave sends carol "hello"; `ws`, carol's device, receives it (and confirms it).
fn hello_reaches(a: &Server, ws: &mut Ws) {
    ok(&a.post("openim/sendmsg", text("dave", "carol", 1, "hello")));
    let got = drain_past(ws, |f| f["Event"] == "message", Duration::from_millis(300));
    assert!(got.iter().any(|f| f["Event"] == "message"), "{got:?}");
}

/// A device of an account deleted while it is connected is disconnected, as on a single
/// node — not left open while its node asks every shard to connect it again, for good.
#[test]
fn a_device_of_a_deleted_account_is_disconnected() {
    let (_cluster, a) = one_node_with(&["carol", "dave"]);
    let mut ws = a.ws("carol", "phone", "");
    hello_reaches(&a, &mut ws);
    ok(&a.post(
        "im_open_login_svc/account_delete",
        json!({"DeleteItem": [{"UserID": "carol"}]}),
    ));
    assert!(
        ws.closed_within(common::server::WAIT),
        "carol's device stayed connected\n{}",
        a.stderr()
    );
}

/// A device's session on a cluster node ends when its UserSig expires, as on a single node:
/// a close frame 1008 saying 70001, and an event stream's last event is the envelope.
#[test]
fn a_session_ends_with_70001_when_its_usersig_expires() {
    let (_cluster, a) = one_node_with(&["carol", "dave"]);
    // Long enough for a slow machine to connect in every shard and deliver one message first.
    let query = a.query_valid_for("carol", 10);
    let mut ws = a.try_ws_with(&query, "phone", "").unwrap();
    let sse = a.events_with(&query, "tablet", None);
    hello_reaches(&a, &mut ws);
    let (code, reason) = ws
        .close_frame(common::server::WAIT)
        .expect("a close frame at the expiry");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.starts_with("70001"), "{reason}");
    let deadline = std::time::Instant::now() + common::server::WAIT;
    let mut last = None;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match sse.recv_timeout(left) {
            Ok(e) => last = Some(e),
            Err(_) => break,
        }
    }
    let (_, kind, data) = last.expect("events on the stream");
    assert_eq!(
        (kind.as_str(), &data["ErrorCode"]),
        ("error", &json!(70001))
    );
}

/// A position token past the shards' inboxes (the cluster's data older than the client's: a
/// restore) confirms nothing: the session starts with a `reset` frame for each such shard,
/// its token holding the shard at the device's cursor, and the entries after it arrive —
/// before, the token was taken as confirmed and they never did.
#[test]
fn a_token_past_the_shards_inboxes_is_reset_and_loses_nothing() {
    let (_cluster, a) = one_node_with(&["carol", "dave"]);
    let before = ok(&a.post("openim/sendmsg", text("dave", "carol", 1, "before")))["MsgKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let ahead: Vec<String> = (0..SHARDS).map(|n| format!("{n}-1000")).collect();
    let ahead = format!("c{}", ahead.join("."));
    let mut ws = a.ws("carol", "phone", &format!("&after={ahead}"));
    let is_before = |f: &Value| f["Event"] == "message" && f["Data"]["MsgKey"] == before.as_str();
    let frames = drain_past(&mut ws, is_before, Duration::from_millis(300));
    let resets: Vec<&Value> = frames.iter().filter(|f| f["Event"] == "reset").collect();
    assert_eq!(resets.len(), SHARDS as usize, "{frames:?}");
    assert!(frames.iter().any(is_before), "{frames:?}");
    assert!(
        !frames
            .iter()
            .filter_map(|f| f["Seq"].as_str())
            .any(|t| t.contains("-1000")),
        "a token kept a position the shards do not have: {frames:?}"
    );
    // Confirmed as received (drain_past acks): a new connection gets only what is new.
    drop(ws);
    let mut ws = a.ws("carol", "phone", "");
    let after = ok(&a.post("openim/sendmsg", text("dave", "carol", 2, "after")))["MsgKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let is_after = |f: &Value| f["Event"] == "message" && f["Data"]["MsgKey"] == after.as_str();
    let frames = drain_past(&mut ws, is_after, Duration::from_millis(300));
    let keys: Vec<&str> = frames
        .iter()
        .filter(|f| f["Event"] == "message")
        .filter_map(|f| f["Data"]["MsgKey"].as_str())
        .collect();
    assert_eq!(keys, [after.as_str()], "{frames:?}");
}

/// A node's `/metrics` counts the owned shards holding an erased body on disk: a recall makes
/// its shard's one pending, `imstore/compact` (every shard snapshotted) none.
#[test]
fn metrics_show_a_shards_erasure_pending_until_its_snapshot() {
    let (_cluster, a) = one_node_with(&["carol", "dave"]);
    let sent = a.post("openim/sendmsg", text("dave", "carol", 1, "hello"));
    ok(&sent);
    assert_eq!(metric_of(&a, "imstore_erasures_pending"), Some(0.0));
    ok(&a.post(
        "openim/admin_msgwithdraw",
        json!({"From_Account": "dave", "To_Account": "carol", "MsgKey": sent["MsgKey"]}),
    ));
    assert_eq!(metric_of(&a, "imstore_erasures_pending"), Some(1.0));
    assert_eq!(metric_of(&a, "imstore_erasure_overdue_seconds"), Some(0.0));
    ok(&a.post("imstore/compact", json!({})));
    assert_eq!(metric_of(&a, "imstore_erasures_pending"), Some(0.0));
}

/// A shard's batch of events larger than one NATS message (1 MiB by default) reaches a
/// device on a node that does not own the shard, in several pulls: thirty messages sent before
/// it connected, of 11,000 quotes each, ~44 KB apiece once escaped twice in an owner's answer.
/// Before, NATS refused the owner's answer, and the device asked for the same batch again and
/// again, never getting it. (A device on each of two nodes: the shard's owner answers one of
/// them over NATS.)
#[test]
fn a_batch_larger_than_one_nats_message_reaches_the_device() {
    let _serial = serial();
    let nats = Nats::up();
    let ((a, _da), (b, _db)) = two_nodes(&nats);
    ok(&a.post(
        "im_open_login_svc/multiaccount_import",
        json!({ "Accounts": ["carol", "dave"] }),
    ));
    let ccd = "\"".repeat(11_000);
    let mut keys = BTreeSet::new();
    for i in 0..30 {
        let mut msg = text("dave", "carol", 100 + i, &format!("big {i}"));
        msg["CloudCustomData"] = json!(ccd);
        let sent = ok(&a.post("openim/sendmsg", msg)).clone();
        keys.insert(sent["MsgKey"].as_str().unwrap().to_owned());
    }
    let last = keys.iter().next_back().unwrap().clone();
    for (node, device) in [(&a, "tablet"), (&b, "laptop")] {
        // A device new to the shard: its first pull collects the whole inbox.
        let mut ws = node.ws("carol", device, "");
        let mut got = BTreeSet::new();
        let deadline = Instant::now() + common::server::WAIT;
        while got.len() < keys.len() && Instant::now() < deadline {
            let frames = drain_past(
                &mut ws,
                |f| f["Event"] == "message" && f["Data"]["MsgKey"] == last.as_str(),
                Duration::from_millis(300),
            );
            for f in frames.iter().filter(|f| f["Event"] == "message") {
                let key = f["Data"]["MsgKey"].as_str().unwrap().to_owned();
                assert!(
                    f["Data"]["CloudCustomData"] == ccd.as_str(),
                    "{key}: its data"
                );
                got.insert(key);
            }
        }
        assert_eq!(got, keys, "{device}\n{}\n----\n{}", a.stderr(), b.stderr());
    }
}

/// A node's `/metrics` counts the after-callbacks waiting in its shards' outboxes. Before, it
/// read its front store's, which never holds any: always 0.
#[test]
fn metrics_count_the_callbacks_waiting_in_the_shards_outboxes() {
    let _serial = serial();
    let nats = Nats::up();
    // A callback URL where nothing listens: after-callbacks stay in the outboxes, failing.
    let closed = common::webhook::HeldPort::new();
    let url = format!("http://{}/callback", closed.addr);
    let (a, _da) = node_with(&nats, "a", &["--callback-url", &url]);
    wait_balanced(&[&a]);
    ok(&a.post(
        "im_open_login_svc/multiaccount_import",
        json!({ "Accounts": ["carol", "dave", "erin"] }),
    ));
    ok(&a.post("openim/sendmsg", text("dave", "carol", 1, "one")));
    ok(&a.post("openim/sendmsg", text("erin", "carol", 2, "two")));
    assert_eq!(metric_of(&a, "imstore_webhook_outbox_depth"), Some(2.0));
    assert_eq!(
        metric_of(&a, "imstore_webhook_outbox_dropped_total"),
        Some(0.0)
    );
}
