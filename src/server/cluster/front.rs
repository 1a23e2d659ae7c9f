//! A REST call on any node of a cluster: admitted here (UserSig, administrator, this node's
//! share of the rate limit), then run where its data is.
//!
//! - Account APIs: the accounts bucket ([`NodeDirectory`](super::NodeDirectory)).
//! - A call about one conversation (`sendmsg`, `admin_msgwithdraw`, `admin_getroammsg`,
//!   `admin_set_msg_read`, `modify_c2c_msg`, `importmsg`): forwarded to its shard's owner.
//!   A body whose accounts cannot be read is forwarded to shard 0, which answers it with the
//!   error a single node gives.
//! - `batchsendmsg`: split by shard, one MsgKey for all; the answers merged.
//! - `get_c2c_unread_msg_num`: asked of every shard (an account's conversations are spread
//!   over them); totals summed.
//! - `imstore/compact`: every shard snapshots into the object store.
//!
//! A `sendmsg` or `batchsendmsg` without `MsgSeq`/`MsgTimeStamp` gets them here, before it is
//! forwarded: its MsgKey is then fixed, so a call retried after its owner died (see `rpc.rs`)
//! finds the message the first attempt stored and answers the same MsgKey instead of storing
//! it twice. A client that retries a send itself gets the same guarantee by sending `MsgSeq`
//! and `MsgTimeStamp`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::rpc::{self, Call};
use super::{Node, NodeDirectory};
use crate::api::{Api, Reply, error_reply, ok_reply};
use crate::error::Error;

/// Answers a REST call through the cluster.
pub(in crate::server) async fn rest(
    node: &std::sync::Arc<Node>,
    path: String,
    query: String,
    body: Bytes,
    ip: String,
) -> Reply {
    let route = match node.front.admit(&path, &query) {
        Ok(r) => r,
        Err(e) => return error_reply(&e),
    };
    if Api::is_account_api(route) {
        let node = node.clone();
        return tokio::task::spawn_blocking(move || {
            node.front
                .directory_call(route, &body, &NodeDirectory(&node))
        })
        .await
        .unwrap_or_else(|e| error_reply(&Error::Internal(format!("handler failed: {e}"))));
    }
    let parsed = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    };
    let Some(mut map) = parsed else {
        // Not a JSON object: any shard answers the single node's error.
        return forward(node, 0, &path, &query, &ip, Vec::new(), &body).await;
    };
    let s = |m: &Map<String, Value>, names: &[&str]| -> String {
        names
            .iter()
            .find_map(|n| m.get(*n).and_then(Value::as_str))
            .unwrap_or("")
            .to_owned()
    };
    match route {
        "openim/batchsendmsg" => batch(node, &path, &query, &ip, map, &body).await,
        "openim/get_c2c_unread_msg_num" => unread(node, &path, &query, &ip, map, &body).await,
        "imstore/compact" => compact(node, &path, &query, &ip).await,
        _ => {
            let mut fixed = false;
            let (a, b) = match route {
                "openim/sendmsg" => {
                    fixed = fix_key(node, &mut map);
                    (sender(node, &map), s(&map, &["To_Account"]))
                }
                "openim/admin_getroammsg" => (
                    s(&map, &["Operator_Account", "From_Account"]),
                    s(&map, &["Peer_Account", "To_Account"]),
                ),
                "openim/admin_set_msg_read" => {
                    (s(&map, &["Report_Account"]), s(&map, &["Peer_Account"]))
                }
                _ => (s(&map, &["From_Account"]), s(&map, &["To_Account"])),
            };
            let n = if a.is_empty() || b.is_empty() {
                0
            } else {
                node.shard_of(&a, &b)
            };
            // The caller's bytes go on as they are, unless the send got its MsgKey here.
            let body = if fixed {
                Bytes::from(serde_json::to_vec(&map).expect("serializable"))
            } else {
                body
            };
            forward(node, n, &path, &query, &ip, vec![a, b], &body).await
        }
    }
}

/// Gives a send without them a MsgSeq and MsgTimeStamp, fixing its MsgKey; whether it added
/// either.
pub(super) fn fix_key(node: &Node, map: &mut Map<String, Value>) -> bool {
    // A MsgTimeStamp of 0 is absent too, as the API reads it (`Fields::message`).
    let no_time = absent(map, "MsgTimeStamp") || map.get("MsgTimeStamp") == Some(&json!(0));
    let fixed = absent(map, "MsgSeq") || no_time;
    if absent(map, "MsgSeq") {
        map.insert("MsgSeq".into(), json!(random_u32()));
    }
    if no_time {
        map.insert("MsgTimeStamp".into(), json!(node_time(node)));
    }
    fixed
}

/// A send's sender as the owner will read it: From_Account, or — absent or `""` — the
/// first administrator.
fn sender(node: &Node, map: &Map<String, Value>) -> String {
    map.get("From_Account")
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty())
        .map_or_else(|| node.first_admin.clone(), str::to_owned)
}

/// Whether a field is missing, as the API reads it (null counts as missing).
fn absent(map: &Map<String, Value>, field: &str) -> bool {
    map.get(field).is_none_or(Value::is_null)
}

fn node_time(node: &Node) -> u32 {
    u32::try_from(node.front.store().config().clock.now()).unwrap_or(u32::MAX)
}

/// Fixes a client's `sendmsg` frame's MsgKey: a MsgSeq if it has none, and the time, which
/// the node gives (a client does not date its messages) in the call's header.
pub(super) fn fix_client_send(node: &Node, frame: &mut Map<String, Value>) -> u32 {
    if absent(frame, "MsgSeq") {
        frame.insert("MsgSeq".into(), json!(random_u32()));
    }
    node_time(node)
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

async fn forward(
    node: &Node,
    n: u32,
    path: &str,
    query: &str,
    ip: &str,
    accounts: Vec<String>,
    body: &[u8],
) -> Reply {
    let call = Call::Rest {
        path: path.to_owned(),
        query: query.to_owned(),
        ip: ip.to_owned(),
        accounts,
    };
    // A compaction snapshots every shard of its owner one at a time: it may take minutes.
    let timeout = if path.ends_with("/compact") {
        compact_timeout(node.shards())
    } else {
        rpc::REST_TIMEOUT
    };
    match node.call(n, &call, body, timeout).await {
        // The recall of an attempt that went unanswered landed: its answer was OK.
        Ok((answer, _))
            if answer.after_doubt
                && answer.code == 20023
                && path.ends_with("/admin_msgwithdraw") =>
        {
            ok_reply(Map::new())
        }
        Ok((answer, bytes)) => Reply {
            json: String::from_utf8_lossy(&bytes).into_owned(),
            code: answer.code,
        },
        Err(e) => error_reply(&e.into_error()),
    }
}

/// The fields of an answer's JSON.
fn fields(reply: &Reply) -> Map<String, Value> {
    match serde_json::from_str(&reply.json) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// `batchsendmsg`: one call per shard with its recipients, under one MsgKey.
async fn batch(
    node: &Node,
    path: &str,
    query: &str,
    ip: &str,
    mut map: Map<String, Value>,
    body: &[u8],
) -> Reply {
    let to: Vec<String> = match map.get("To_Account") {
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        }
        // Missing, empty or mistyped: one shard answers the single node's error.
        _ => return forward(node, 0, path, query, ip, Vec::new(), body).await,
    };
    if to.len() > crate::store::MAX_BATCH_RECIPIENTS {
        return error_reply(&Error::TooManyRecipients(to.len()));
    }
    fix_key(node, &mut map);
    let from = sender(node, &map);
    let mut by_shard: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for t in &to {
        by_shard
            .entry(node.shard_of(&from, t))
            .or_default()
            .push(t.clone());
    }
    let calls = by_shard.into_iter().map(|(n, recipients)| {
        let mut part = map.clone();
        part.insert("To_Account".into(), json!(recipients));
        let mut accounts = recipients.clone();
        accounts.push(from.clone());
        let body = serde_json::to_vec(&part).expect("serializable");
        async move {
            let reply = forward(node, n, path, query, ip, accounts, &body).await;
            (recipients, reply)
        }
    });
    let replies = futures_util::future::join_all(calls).await;
    merge_batch(&replies, to.len(), batch_key(&map))
}

/// The batch's MsgKey, as `fix_key` fixed it: every shard's messages carry it.
fn batch_key(map: &Map<String, Value>) -> Value {
    let part = |f: &str| map.get(f).and_then(Value::as_u64);
    match (part("MsgSeq"), part("MsgRandom"), part("MsgTimeStamp")) {
        (Some(seq), Some(random), Some(time)) => json!(format!("{seq}_{random}_{time}")),
        _ => Value::Null,
    }
}

/// One `batchsendmsg` answer from its shards' (recipients, reply): their ErrorLists
/// together. A shard that failed as a whole with 91000 (its owner out of reach, its journal
/// failing) failed for its recipients only — the others have their message, so the answer
/// is SomeError with the MsgKey, and that shard's recipients are in the ErrorList. Any other
/// whole failure (the sender, the body) is every shard's: that answer, as the single node's.
fn merge_batch(replies: &[(Vec<String>, Reply)], recipients: usize, key: Value) -> Reply {
    let mut key = key;
    let mut errors = Vec::new();
    for (to, reply) in replies {
        let f = fields(reply);
        match f.get("ErrorList") {
            Some(Value::Array(list)) => {
                errors.extend(list.iter().cloned());
                if let Some(k) = f.get("MsgKey") {
                    key = k.clone();
                }
            }
            _ if reply.code == 91000 => errors.extend(
                to.iter()
                    .map(|t| json!({"To_Account": t, "ErrorCode": 91000})),
            ),
            _ => return reply.clone(),
        }
    }
    let mut out = Map::new();
    out.insert("MsgKey".into(), key);
    if let Some(first) = errors.first() {
        let all = errors.len() == recipients;
        let code = first.get("ErrorCode").cloned().unwrap_or(json!(91000));
        out.insert(
            "ActionStatus".into(),
            json!(if all { "FAIL" } else { "SomeError" }),
        );
        out.insert("ErrorCode".into(), if all { code } else { json!(0) });
        out.insert(
            "ErrorInfo".into(),
            json!(format!(
                "{} of {} recipients failed; see ErrorList",
                errors.len(),
                recipients
            )),
        );
    }
    out.insert("ErrorList".into(), Value::Array(errors));
    ok_reply(out)
}

/// `get_c2c_unread_msg_num`: every shard's counts for the account, summed; the peers asked for
/// picked out (70107 for those that do not exist).
async fn unread(
    node: &Node,
    path: &str,
    query: &str,
    ip: &str,
    map: Map<String, Value>,
    body: &[u8],
) -> Reply {
    let Some(account) = map
        .get("To_Account")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return forward(node, 0, path, query, ip, Vec::new(), body).await;
    };
    let peers = match map.get("Peer_Account") {
        None => None,
        Some(Value::Array(items)) => {
            let mut peers = Vec::new();
            for item in items {
                match item
                    .as_str()
                    .or_else(|| item.get("UserID").and_then(Value::as_str))
                {
                    Some(p) => peers.push(p.to_owned()),
                    None => return forward(node, 0, path, query, ip, Vec::new(), body).await,
                }
            }
            Some(peers)
        }
        Some(_) => return forward(node, 0, path, query, ip, Vec::new(), body).await,
    };
    // Too many: a shard says so, as a single node would.
    if peers
        .as_ref()
        .is_some_and(|p| p.len() > crate::api::MAX_UNREAD_PEERS)
    {
        return forward(node, 0, path, query, ip, Vec::new(), body).await;
    }
    let asked = serde_json::to_vec(&json!({ "To_Account": account })).expect("serializable");
    let calls = (0..node.shards()).map(|n| {
        let (body, accounts) = (&asked, vec![account.clone()]);
        async move { forward(node, n, path, query, ip, accounts, body).await }
    });
    let replies = futures_util::future::join_all(calls).await;
    let mut total = 0u64;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for reply in &replies {
        if reply.code != 0 {
            return reply.clone();
        }
        let f = fields(reply);
        total += f
            .get("AllC2CUnreadMsgNum")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        for item in f
            .get("C2CUnreadMsgNumList")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(p), Some(c)) = (
                item.get("Peer_Account").and_then(Value::as_str),
                item.get("C2CUnreadMsgNum").and_then(Value::as_u64),
            ) {
                *counts.entry(p.to_owned()).or_default() += c;
            }
        }
    }
    let mut out = Map::new();
    out.insert("AllC2CUnreadMsgNum".into(), json!(total));
    let list: Vec<Value> = match peers {
        None => counts
            .iter()
            .map(|(p, n)| json!({"Peer_Account": p, "C2CUnreadMsgNum": n}))
            .collect(),
        Some(peers) => {
            let mut list = Vec::new();
            let mut errors = Vec::new();
            // At most MAX_UNREAD_PEERS (checked above), looked up at once.
            let lookups = peers.iter().map(|p| {
                let (cluster, p) = (node.cluster().clone(), p.clone());
                tokio::task::spawn_blocking(move || cluster.account_exists(&p))
            });
            let found = futures_util::future::join_all(lookups).await;
            for (p, exists) in peers.into_iter().zip(found) {
                match exists {
                    Ok(Ok(true)) => list.push(json!({"Peer_Account": p, "C2CUnreadMsgNum": counts.get(&p).copied().unwrap_or(0)})),
                    Ok(Ok(false)) => errors.push(json!({"Peer_Account": p, "ErrorCode": 70107})),
                    Ok(Err(e)) => return error_reply(&e),
                    Err(e) => return error_reply(&Error::Internal(e.to_string())),
                }
            }
            if !errors.is_empty() {
                out.insert("ErrorList".into(), Value::Array(errors));
            }
            list
        }
    };
    out.insert("C2CUnreadMsgNumList".into(), Value::Array(list));
    ok_reply(out)
}

/// How long `imstore/compact` waits for its shards' snapshots: 120 s for each shard there is
/// (a node takes its shards' snapshots one after another, and every call starts waiting at
/// once), and at least 10 minutes (one shard's snapshot may itself take minutes).
fn compact_timeout(shards: u32) -> std::time::Duration {
    (std::time::Duration::from_secs(120) * shards).max(std::time::Duration::from_secs(600))
}

/// `imstore/compact`: every shard snapshots itself into the object store.
async fn compact(node: &Node, path: &str, query: &str, ip: &str) -> Reply {
    let calls = (0..node.shards())
        .map(|n| async move { forward(node, n, path, query, ip, Vec::new(), b"{}").await });
    let replies = futures_util::future::join_all(calls).await;
    let mut shards = Vec::new();
    for reply in &replies {
        if reply.code != 0 {
            return reply.clone();
        }
        let f = fields(reply);
        shards.push(json!({"Shard": f.get("Shard"), "SnapshotSeq": f.get("SnapshotSeq")}));
    }
    let mut out = Map::new();
    out.insert("Shards".into(), Value::Array(shards));
    ok_reply(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(v: Value) -> Reply {
        Reply {
            code: v["ErrorCode"].as_u64().unwrap_or(0) as u32,
            json: v.to_string(),
        }
    }

    fn to(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// One shard's owner out of reach: its recipients fail, the others' messages stand.
    #[test]
    fn a_shard_out_of_reach_fails_its_recipients_only() {
        let replies = vec![
            (
                to(&["b", "c"]),
                reply(
                    json!({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": "",
                    "MsgKey": "7_8_9", "ErrorList": [{"To_Account": "c", "ErrorCode": 70107}]}),
                ),
            ),
            (
                to(&["d", "e"]),
                reply(json!({"ActionStatus": "FAIL", "ErrorCode": 91000,
                    "ErrorInfo": "the shard's owner could not be reached; retry"})),
            ),
        ];
        let merged: Value =
            serde_json::from_str(&merge_batch(&replies, 4, json!("7_8_9")).json).unwrap();
        assert_eq!(merged["ActionStatus"], "SomeError", "{merged}");
        assert_eq!(merged["ErrorCode"], 0);
        assert_eq!(merged["MsgKey"], "7_8_9");
        assert_eq!(
            merged["ErrorList"],
            json!([{"To_Account": "c", "ErrorCode": 70107},
                {"To_Account": "d", "ErrorCode": 91000}, {"To_Account": "e", "ErrorCode": 91000}])
        );
        // Every shard out of reach: FAIL with 91000, and the MsgKey a retry reuses.
        let down = vec![replies[1].clone()];
        let merged: Value =
            serde_json::from_str(&merge_batch(&down, 2, json!("7_8_9")).json).unwrap();
        assert_eq!(merged["ActionStatus"], "FAIL", "{merged}");
        assert_eq!(merged["ErrorCode"], 91000);
        assert_eq!(merged["MsgKey"], "7_8_9");
    }

    /// A failure of the request itself (the sender) is every shard's: answered as it is.
    #[test]
    fn a_whole_request_failure_is_answered_as_is() {
        let bad = reply(json!({"ActionStatus": "FAIL", "ErrorCode": 90008,
            "ErrorInfo": "From_Account ghost does not exist"}));
        let replies = vec![(to(&["b"]), bad.clone()), (to(&["d"]), bad.clone())];
        assert_eq!(merge_batch(&replies, 2, Value::Null), bad);
    }

    #[test]
    fn compaction_waits_minutes_for_a_few_shards_and_more_for_many() {
        assert!(compact_timeout(1) >= std::time::Duration::from_secs(600));
        assert!(compact_timeout(64) >= std::time::Duration::from_secs(64 * 120));
    }

    #[test]
    fn the_batch_key_is_made_of_the_fixed_fields() {
        let map = json!({"MsgSeq": 7, "MsgRandom": 8, "MsgTimeStamp": 9});
        assert_eq!(batch_key(map.as_object().unwrap()), json!("7_8_9"));
        let map = json!({"MsgSeq": 7, "MsgRandom": "x", "MsgTimeStamp": 9});
        assert_eq!(batch_key(map.as_object().unwrap()), Value::Null);
    }
}
