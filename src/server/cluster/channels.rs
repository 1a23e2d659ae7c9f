//! The device channels on a cluster node: `GET /v4/imstore/ws`, `GET /v4/imstore/events` and
//! `POST /v4/imstore/ack`, as on a single node (`server/devices.rs`), over a merged
//! [`Feed`](super::feed::Feed) — except that every sequence number the device sees or sends
//! (`Seq`, `Last-Event-ID`, `after`) is a position token (a string; `feed.rs`). A client
//! request over the WebSocket is forwarded to its conversation's shard.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::Node;
use super::feed::{self, Feed, Token};
use super::rpc::{self, Call};
use crate::api::{DeviceRequest, Reply, error_reply, ok_reply, ws_reply};
use crate::error::Error;
use crate::server::App;
use crate::server::conn::ConnHandle;
use crate::server::devices::{
    MAX_CLIENT_FRAME, WsChannel, at_capacity, auth_status, envelope, expired_event,
    no_device_place, run_ws, sig_expiry, sse_refusal,
};
use crate::server::rest::json_response;

/// Splits the `after` parameter (a token here) off a device's query string.
fn split_after(query: &str) -> (String, Option<String>) {
    let mut after = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("after=") {
            Some(v) => {
                after = Some(v.to_owned());
                false
            }
            None => true,
        })
        .collect();
    (rest.join("&"), after.filter(|a| !a.is_empty()))
}

/// Authenticates a device on this node; its resume token if it gave one.
pub(in crate::server) fn authorize(
    node: &Node,
    query: &str,
) -> Result<(DeviceRequest, Option<Token>), Error> {
    let (query, after) = split_after(query);
    let req = node.front.authorize_device(&query)?;
    let after = after.map(|a| Token::parse(&a, node.shards())).transpose()?;
    Ok((req, after))
}

pub async fn ws(
    app: App,
    node: Arc<Node>,
    peer: SocketAddr,
    conn: ConnHandle,
    query: String,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let (req, after) = match authorize(&node, &query) {
        Ok(r) => r,
        Err(e) => return envelope(auth_status(&e), &e),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return envelope(
                axum::http::StatusCode::BAD_REQUEST,
                &Error::InvalidRequest(format!("not a WebSocket upgrade: {e}")),
            );
        }
    };
    let Some(place) = conn.device_place() else {
        return at_capacity();
    };
    let feed = match feed::open(&node, req, after).await {
        Ok(f) => f,
        Err(e) => return envelope(auth_status(&e), &e),
    };
    let counted = app.metrics.device("ws");
    upgrade
        .read_buffer_size(4 << 10)
        .write_buffer_size(0)
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| async move {
            let req = feed.request().clone();
            let mut session = ClusterWs { node, feed, peer };
            run_ws(&app, &req, socket, None, &mut session).await;
            drop(session);
            drop(counted);
            drop(place);
        })
}

/// A device's WebSocket session on a cluster node: its merged feed, and its requests, which go
/// to their conversations' shards.
struct ClusterWs {
    node: Arc<Node>,
    feed: Feed,
    peer: SocketAddr,
}

impl WsChannel for ClusterWs {
    async fn events(&mut self) -> Option<Vec<String>> {
        let events = self.feed.next().await?;
        Some(
            events
                .iter()
                .map(|(token, e)| feed::ws_frame(token, e))
                .collect(),
        )
    }

    async fn request(&mut self, text: &str) -> Option<String> {
        client_frame(&self.node, &self.feed, self.peer, text).await
    }
}

/// One client frame: an ack confirms a token here; a request goes to its conversation's shard.
async fn client_frame(node: &Node, feed: &Feed, peer: SocketAddr, text: &str) -> Option<String> {
    let mut frame = match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        _ => {
            let e = Error::InvalidRequest(
                "a frame must be one JSON object with an Op (ack, sendmsg, recall, read, history)"
                    .into(),
            );
            return Some(ws_reply(&Value::Null, &error_reply(&e)));
        }
    };
    let req_id = frame.get("ReqId").cloned().unwrap_or(Value::Null);
    if frame.get("Op").and_then(Value::as_str) == Some("ack") {
        let result = match frame.get("Seq") {
            Some(Value::String(token)) => feed.confirm(token).await,
            _ => Err(Error::InvalidRequest(
                "ack needs Seq, the position token of the last event received".into(),
            )),
        };
        return result.err().map(|e| ws_reply(&req_id, &error_reply(&e)));
    }
    // A send's MsgKey is fixed here, the time always by the node (a client does not choose
    // it), so that a retry of the forwarded call — to a shard's new owner, say — finds the
    // message instead of storing it again.
    let mut msg_time = None;
    let fixed = (frame.get("Op").and_then(Value::as_str) == Some("sendmsg")).then(|| {
        msg_time = Some(super::front::fix_client_send(node, &mut frame));
        serde_json::to_vec(&frame).unwrap_or_default()
    });
    let bytes = fixed.as_deref().unwrap_or(text.as_bytes());
    let req = feed.request();
    let peer_account = ["To_Account", "Peer_Account"]
        .iter()
        .find_map(|f| frame.get(*f).and_then(Value::as_str))
        .unwrap_or("")
        .to_owned();
    let n = if peer_account.is_empty() {
        0
    } else {
        node.shard_of(&req.account, &peer_account)
    };
    let call = Call::Client {
        account: req.account.clone(),
        device: req.device.clone(),
        platform: req.platform.to_owned(),
        ip: peer.ip().to_canonical().to_string(),
        peer: peer_account,
        msg_time,
    };
    let recall = frame.get("Op").and_then(Value::as_str) == Some("recall");
    let reply = match node.call(n, &call, bytes, rpc::REST_TIMEOUT).await {
        // The recall of an attempt that went unanswered landed: its answer was OK (as REST's,
        // `front::forward`).
        Ok((answer, _)) if answer.after_doubt && answer.code == 20023 && recall => {
            ok_reply(Map::new())
        }
        Ok((answer, bytes)) => Reply {
            json: String::from_utf8_lossy(&bytes).into_owned(),
            code: answer.code,
        },
        Err(e) => error_reply(&e.into_error()),
    };
    Some(ws_reply(&req_id, &reply))
}

pub async fn events(
    app: App,
    node: Arc<Node>,
    conn: ConnHandle,
    query: String,
    headers: HeaderMap,
) -> Response {
    let (req, mut after) = match authorize(&node, &query) {
        Ok(r) => r,
        Err(e) => return json_response(error_reply(&e)),
    };
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        match Token::parse(last, node.shards()) {
            Ok(t) => after = Some(t),
            Err(e) => return json_response(error_reply(&e)),
        }
    }
    let Some(place) = conn.device_place() else {
        return sse_refusal(&no_device_place());
    };
    let feed = match feed::open(&node, req, after).await {
        Ok(f) => f,
        Err(e) => return sse_refusal(&e),
    };
    // The device's place goes with the stream: given back when it ends.
    let clock = app.api.store().config().clock.clone();
    let expiry = Box::pin(sig_expiry(clock, feed.request().sig_expires_at));
    let state = (
        Some((feed, expiry)),
        app.shutdown.clone(),
        (place, app.metrics.device("sse")),
    );
    let batches = futures_util::stream::unfold(state, |(live, mut shutdown, conn)| async move {
        let (mut feed, mut expiry) = live?;
        let events = tokio::select! {
            _ = shutdown.changed() => return None,
            // The stream's last event, then its end.
            e = &mut expiry => return Some((vec![expired_event(&e)], (None, shutdown, conn))),
            batch = feed.next() => batch?,
        };
        let events = events
            .into_iter()
            .map(|(token, e)| SseEvent::default().id(token).event(e.kind).data(e.data))
            .collect();
        Some((events, (Some((feed, expiry)), shutdown, conn)))
    });
    let stream = batches
        .flat_map(futures_util::stream::iter)
        .map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `POST /v4/imstore/ack` with `{"Seq": TOKEN}`.
pub async fn ack(node: Arc<Node>, query: String, body: &[u8]) -> Response {
    let result = async {
        let (req, _) = authorize(&node, &query)?;
        let seq = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => match map.get("Seq") {
                Some(Value::String(t)) => t.clone(),
                _ => {
                    return Err(Error::InvalidField {
                        field: "Seq",
                        code: 90001,
                        why: "must be the position token of the last event received".into(),
                    });
                }
            },
            _ => {
                return Err(Error::InvalidRequest(
                    "the body must be a JSON object".into(),
                ));
            }
        };
        let token = Token::parse(&seq, node.shards())?;
        let moved: Vec<(u32, u64)> = token
            .0
            .iter()
            .enumerate()
            .filter(|(_, s)| **s > 0)
            .map(|(n, s)| (n as u32, *s))
            .collect();
        feed::ack(&node, &req, &moved).await
    }
    .await;
    json_response(match result {
        Ok(()) => ok_reply(serde_json::Map::new()),
        Err(e) => error_reply(&e),
    })
}
