//! Devices over HTTP: the WebSocket client channel (`GET /v4/imstore/ws`, SPEC §7), Server-Sent
//! Events (`GET /v4/imstore/events`, SPEC §6) and `POST /v4/imstore/ack`.
//!
//! A device connection is a task, not a thread: it awaits its [`Subscription`]'s next batch
//! (which is handed out only once durable, R6), the client's next frame, the ping timer and
//! shutdown, whichever comes first. Nothing is queued per connection: a client that reads
//! slowly holds back only its own socket, and a writer never waits for it. The cursor moves
//! only on the client's confirmation (R7): a WebSocket `ack`, an SSE reconnect's
//! `Last-Event-ID`, or `POST /v4/imstore/ack`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;

use super::App;
use super::conn::ConnHandle;
use super::rest::{json_response, read_body};
use crate::Subscription;
use crate::api::{
    DeviceRequest, Reply, error_reply, event_payload, ws_event_frame, ws_reply, ws_reset_frame,
};
use crate::clock::Clock;
use crate::error::Error;

/// A WebSocket client silent for this many ping intervals (`ServerConfig::ws_ping`, 30 s by
/// default) is dropped.
const SILENT_PINGS: u32 = 3;
/// A client frame budget: more than this many frames a second are slowed, not dropped.
const FRAMES_PER_SEC: f64 = 100.0;
/// How long one frame may take to reach a client before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest frame a client may send.
pub(super) const MAX_CLIENT_FRAME: usize = 64 << 10;

/// The budget of client frames on one WebSocket: a token bucket full at `FRAMES_PER_SEC`.
/// Frames over it are slowed, in order — never skipped or reordered.
struct FrameBudget {
    tokens: f64,
    refilled: Instant,
}

impl FrameBudget {
    fn new() -> Self {
        FrameBudget {
            tokens: FRAMES_PER_SEC,
            refilled: Instant::now(),
        }
    }

    /// Waits until the next frame may be handled.
    async fn take(&mut self) {
        self.tokens = (self.tokens + self.refilled.elapsed().as_secs_f64() * FRAMES_PER_SEC)
            .min(FRAMES_PER_SEC);
        self.refilled = Instant::now();
        if self.tokens < 1.0 {
            tokio::time::sleep(Duration::from_secs_f64(
                (1.0 - self.tokens) / FRAMES_PER_SEC,
            ))
            .await;
            self.tokens = 1.0;
            self.refilled = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

pub(super) fn envelope(status: StatusCode, e: &Error) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        error_reply(e).json,
    )
        .into_response()
}

/// The HTTP status of a device connection refused before its upgrade or stream: 401 for a
/// UserSig's or the app id's failure, 503 for the server's own (91000: the journal cannot be written, say —
/// a client retries that later, where it takes a 400 as final), 400 otherwise.
pub(super) fn auth_status(e: &Error) -> StatusCode {
    match e.code() {
        // The app id is what a UserSig is checked against: a missing (60012) or malformed
        // (60006) one fails the authentication too.
        70001..=70020 | 60006 | 60012 => StatusCode::UNAUTHORIZED,
        91000 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

pub(super) fn at_capacity() -> Response {
    envelope(StatusCode::SERVICE_UNAVAILABLE, &no_device_place())
}

pub(super) fn no_device_place() -> Error {
    Error::Internal("the server holds as many device connections as it can; retry".into())
}

/// How an event stream refuses a device. The server's own failure (91000: no device place
/// left, the journal cannot be written) is an event stream that says so and asks to be tried
/// again in a few seconds (`retry:`): a browser's `EventSource` gives up for good on any
/// answer that is not `text/event-stream`, but reconnects after a stream that ends. Any
/// other refusal (a bad UserSig, an unknown account) is the JSON envelope, which it should
/// not retry.
pub(super) fn sse_refusal(e: &Error) -> Response {
    let reply = error_reply(e);
    if reply.code != 91000 {
        return json_response(reply);
    }
    let body = format!(
        "retry: {SSE_RETRY_MS}\nevent: error\ndata: {}\n\n",
        reply.json
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(body))
        .expect("a valid response")
}

/// The reconnection delay an event stream refused for the server's own failure asks for.
const SSE_RETRY_MS: u64 = 5_000;

/// Resolves when the UserSig a device connected with has expired (`expires_at`, by the
/// store's clock), with the error its session ends on (70001): Tencent's server ends the
/// session of a client whose UserSig expires while it is online (its SDK is told
/// `onUserSigExpired` and logs in again with a new one), so a UserSig's lifetime bounds a
/// connection's too. Never resolves for `None`. It wakes at least once a minute and reads the
/// clock again, so a clock set forward is followed within a minute.
pub(super) async fn sig_expiry(clock: Arc<dyn Clock>, expires_at: Option<u64>) -> Error {
    let Some(expires_at) = expires_at else {
        return std::future::pending().await;
    };
    loop {
        let now = clock.now();
        // Valid while now <= expires_at (`usersig::verify`).
        if now > expires_at {
            return Error::SigExpired {
                expired_at: expires_at,
            };
        }
        let wait = (expires_at - now).saturating_add(1).min(60);
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

/// The close frame of a session whose UserSig expired: 1008 (policy violation) with the
/// error's code first, as every close frame that gives a reason (`93000: ...` for a frame too
/// large), so that a client tells it from a dropped connection and gets a new UserSig before
/// connecting again.
fn expired_close(e: &Error) -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: 1008,
        reason: format!("{}: {e}", e.code()).into(),
    }))
}

/// Ends a session with `close`: sends it, then reads (at most 2 s, dropping what comes) until
/// the client's close frame. A socket dropped right after its close frame, with client data
/// still unread, may be reset, and the client would see 1006 rather than the reason.
async fn close_with(
    tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    rx: &mut futures_util::stream::SplitStream<WebSocket>,
    close: Message,
) {
    if !matches!(
        tokio::time::timeout(WRITE_TIMEOUT, tx.send(close)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let answered = async {
        while let Some(Ok(frame)) = rx.next().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), answered).await;
}

/// The last event of an event stream whose UserSig expired: `event: error` with the JSON
/// envelope (70001). The stream ends after it; a browser's `EventSource` reconnects with the
/// same URL, whose UserSig is now refused with the envelope, and stops.
pub(super) fn expired_event(e: &Error) -> SseEvent {
    SseEvent::default().event("error").data(error_reply(e).json)
}

/// Connects the device, once its connection record is durable.
async fn connect(app: &App, req: &DeviceRequest) -> Result<Subscription, Error> {
    let store = app.api.store();
    crate::server::refuse_if_stalled(store)?;
    let (sub, ticket) = store.deferring(|| match req.after {
        Some(after) => store.connect_after(&req.account, &req.device, after),
        None => store.connect(&req.account, &req.device),
    });
    crate::server::durable(store, ticket).await?;
    sub
}

/// `GET /v4/imstore/ws`: authenticates (HTTP 401 with the envelope before the upgrade), connects
/// the device, and runs its session.
pub async fn ws(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(conn): Extension<ConnHandle>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    #[cfg(feature = "cluster")]
    if let Some(node) = app.node.clone() {
        let query = query.unwrap_or_default();
        return super::cluster::channels::ws(app, node, peer, conn, query, upgrade).await;
    }
    let req = match app.api.authorize_device(query.as_deref().unwrap_or("")) {
        Ok(r) => r,
        Err(e) => return envelope(auth_status(&e), &e),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return envelope(
                StatusCode::BAD_REQUEST,
                &Error::InvalidRequest(format!("not a WebSocket upgrade: {e}")),
            );
        }
    };
    let Some(place) = conn.device_place() else {
        return at_capacity();
    };
    let sub = match connect(&app, &req).await {
        Ok(s) => s,
        Err(e) => return envelope(auth_status(&e), &e),
    };
    tracing::debug!(account = %req.account, device = %req.device, platform = req.platform, %peer, "device connected (ws)");
    let counted = app.metrics.device("ws");
    upgrade
        .read_buffer_size(4 << 10)
        .write_buffer_size(0)
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| async move {
            // A resume position past the inbox: the session starts by saying where from.
            let first = sub.reset().map(|start| ws_reset_frame(&start.into()));
            let mut session = Session {
                app,
                sub,
                req,
                peer,
            };
            run_ws(
                &session.app.clone(),
                &session.req.clone(),
                socket,
                first,
                &mut session,
            )
            .await;
            drop(session);
            drop(counted);
            drop(place);
        })
}

struct Session {
    app: App,
    sub: Subscription,
    req: DeviceRequest,
    peer: SocketAddr,
}

/// What a session does with a frame it could not read: `Some` of the close frame to send
/// when it was larger than [`MAX_CLIENT_FRAME`] — 1009 (message too big), with the code REST
/// answers a body too large with, so a client can tell it from a dropped connection and not
/// send it again for good; the connection cannot read on (the rest of the frame is still on
/// the wire). `None` for any other failure: the connection is gone.
fn unreadable(e: &axum::Error) -> Option<Message> {
    // tungstenite's CapacityError::MessageTooLong, for a frame or a message past the limit.
    e.to_string().contains("Message too long").then(|| {
        Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1009,
            reason: format!(
                "93000: a client frame is at most {} KiB",
                MAX_CLIENT_FRAME >> 10
            )
            .into(),
        }))
    })
}

/// A session's frame that could not be read: says why, if it can ([`unreadable`]). The
/// session ends after it.
async fn frame_failed(
    tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    e: &axum::Error,
) {
    if let Some(close) = unreadable(e) {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, tx.send(close)).await;
    }
}

/// Sends one text frame, giving up after `WRITE_TIMEOUT`.
async fn send(
    tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    text: String,
) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, tx.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// What a device's WebSocket session serves: the device's events, and its requests. One loop
/// ([`run_ws`]) serves a single node's [`Subscription`] ([`Session`]) and a cluster node's
/// merged feed (`cluster::channels`).
pub(super) trait WsChannel {
    /// The next events, as frames; `None` once the session has ended (the device connected
    /// again, its account was deleted, the store closed).
    async fn events(&mut self) -> Option<Vec<String>>;
    /// Handles one client frame; returns the reply frame, if it needs one.
    async fn request(&mut self, text: &str) -> Option<String>;
    /// After `events` ended: whether a newer session of the same device took over.
    async fn superseded(&self) -> bool {
        false
    }
}

/// The close code of a session a newer connection of the same device replaced (private use
/// range): a client tells it from a dropped connection and does not connect again by itself
/// — two clients sharing a device name would otherwise replace each other for good, each
/// round journaling a connect and sending everything unconfirmed again. (Tencent's SDK is
/// told `onKickedOffline` and does not log in again either.)
pub(super) const REPLACED_CLOSE_CODE: u16 = 4001;

/// Whether the device of a session that just ended is connected again: a newer session
/// replaced it (rather than the account's delete or the store's close ending it). Said once
/// that connect is durable (R6), waited for without blocking the runtime.
async fn replaced(store: &crate::Store, req: &DeviceRequest) -> bool {
    let (devices, ticket) = store.deferring(|| store.devices(&req.account));
    devices.is_ok_and(|d| d.iter().any(|(n, on)| *n == req.device && *on))
        && store.commit_async(ticket).await.is_ok()
}

/// An event stream's last event when a newer connection of its device replaced it: a
/// browser's `EventSource` reconnects by itself when a stream ends, so a client closes it on
/// this event rather than replace the newer one in turn (the WebSocket's close code 4001).
fn replaced_event() -> SseEvent {
    SseEvent::default()
        .event("replaced")
        .data(r#"{"Reason":"the device connected again elsewhere"}"#)
}

fn replaced_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: REPLACED_CLOSE_CODE,
        reason: "the device connected again elsewhere".into(),
    }))
}

/// Runs a device's WebSocket session until it ends: events as they become durable, the
/// client's frames (slowed past [`FRAMES_PER_SEC`], answered in order), a ping every
/// `ServerConfig::ws_ping` (a client silent for [`SILENT_PINGS`] of them is dropped), the
/// server's shutdown, and the expiry of the UserSig the device connected with. `first` is sent
/// before anything else (a `reset`).
pub(super) async fn run_ws(
    app: &App,
    req: &DeviceRequest,
    socket: WebSocket,
    first: Option<String>,
    channel: &mut impl WsChannel,
) {
    let (mut tx, mut rx) = socket.split();
    let mut shutdown = app.shutdown.clone();
    // A zero interval (a `ServerConfig` built by hand) would make `interval` panic.
    let ping_every = app.ws_ping.max(Duration::from_millis(100));
    let mut ping = tokio::time::interval(ping_every);
    ping.reset();
    let mut last_heard = Instant::now();
    // Silence is counted from the last frame heard, to the moment — not to the next ping's
    // tick, which would let a client that answered a ping and died stay a fourth interval.
    // A handler that kept the session from listening for a ping interval or more (writing a
    // long batch to a slow reader, a request waiting for the app's webhook) ends as if a
    // frame was heard: the client's frames wait unread in the socket meanwhile. (A dead
    // client's writes time out instead: `WRITE_TIMEOUT`, `TCP_USER_TIMEOUT`.)
    let silent = tokio::time::sleep(ping_every * SILENT_PINGS);
    tokio::pin!(silent);
    let heard = |last_heard: &mut Instant,
                 since: Instant,
                 silent: &mut std::pin::Pin<&mut tokio::time::Sleep>| {
        *last_heard = (*last_heard).max(since);
        silent
            .as_mut()
            .reset((*last_heard + ping_every * SILENT_PINGS).into());
    };
    let mut budget = FrameBudget::new();
    let clock = app.api.store().config().clock.clone();
    let expiry = sig_expiry(clock, req.sig_expires_at);
    tokio::pin!(expiry);
    if let Some(first) = first
        && send(&mut tx, first).await.is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Message::Close(None))).await;
                break;
            }
            e = &mut expiry => {
                tracing::debug!(account = %req.account, device = %req.device, "UserSig expired; session ended");
                close_with(&mut tx, &mut rx, expired_close(&e)).await;
                break;
            }
            frame = rx.next() => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => {
                        frame_failed(&mut tx, &e).await;
                        break;
                    }
                    None => break,
                };
                let now = Instant::now();
                heard(&mut last_heard, now, &mut silent);
                // Every frame counts against the budget, pings too: a ping flood is slowed like
                // any other (tungstenite answers pings itself, one pending pong at most).
                budget.take().await;
                let text = match frame {
                    Message::Text(t) => t,
                    Message::Binary(_) => "binary frame".into(),
                    Message::Close(_) => {
                        // Completes the client's closing handshake: tungstenite queued the
                        // reply, which only a write or a close puts on the wire.
                        let _ = tokio::time::timeout(Duration::from_secs(1), tx.close()).await;
                        break;
                    }
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if let Some(reply) = channel.request(text.as_str()).await
                    && send(&mut tx, reply).await.is_err()
                {
                    break;
                }
                if now.elapsed() >= ping_every {
                    heard(&mut last_heard, Instant::now(), &mut silent);
                }
            }
            frames = channel.events() => {
                let Some(frames) = frames else {
                    if channel.superseded().await {
                        close_with(&mut tx, &mut rx, replaced_close()).await;
                    }
                    break;
                };
                let started = Instant::now();
                let mut failed = false;
                for f in frames {
                    if send(&mut tx, f).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed {
                    break;
                }
                if started.elapsed() >= ping_every {
                    heard(&mut last_heard, Instant::now(), &mut silent);
                }
            }
            _ = &mut silent => {
                tracing::debug!(account = %req.account, device = %req.device, "silent for three pings; dropped");
                break;
            }
            _ = ping.tick() => {
                let ping = tx.send(Message::Ping(Default::default()));
                if !matches!(tokio::time::timeout(WRITE_TIMEOUT, ping).await, Ok(Ok(()))) {
                    break;
                }
            }
        }
    }
    tracing::debug!(account = %req.account, device = %req.device, "device disconnected (ws)");
}

impl WsChannel for Session {
    async fn events(&mut self) -> Option<Vec<String>> {
        let events = self.sub.next_batch().await.ok()?;
        Some(events.iter().map(ws_event_frame).collect())
    }

    async fn request(&mut self, text: &str) -> Option<String> {
        self.client_frame(text).await
    }

    async fn superseded(&self) -> bool {
        replaced(self.app.api.store(), &self.req).await
    }
}

impl Session {
    /// Handles one client frame; returns the reply frame, if it needs one. A request is
    /// answered once everything it did or read is durable (a send first waits for its
    /// before-send decision when webhooks are on).
    async fn client_frame(&self, text: &str) -> Option<String> {
        let frame = match serde_json::from_str(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) | Err(_) => {
                let e = Error::InvalidRequest(
                    "a frame must be one JSON object with an Op (ack, sendmsg, recall, read, history)".into(),
                );
                return Some(ws_reply(&Value::Null, &error_reply(&e)));
            }
        };
        let req_id = frame.get("ReqId").cloned().unwrap_or(Value::Null);
        if frame.get("Op").and_then(Value::as_str) == Some("ack")
            && let Some(seq) = frame.get("Seq").and_then(Value::as_u64)
        {
            return match self.sub.ack(seq) {
                Ok(()) => None,
                Err(e) => Some(ws_reply(&req_id, &error_reply(&e))),
            };
        }
        let store = self.app.api.store();
        if let Err(e) = crate::server::refuse_if_stalled(store) {
            return Some(ws_reply(&req_id, &error_reply(&e)));
        }
        let ctx = self.app.call_context();
        let origin =
            super::webhook::device_origin(self.req.platform, self.peer.ip().to_canonical());
        let (step, ticket) = store.deferring(|| {
            self.app
                .with_origin(origin, || self.app.api.client_step(&self.req, &frame, &ctx))
        });
        let reply: Reply = match crate::server::durable(store, ticket).await {
            Ok(()) => self.app.finish(step).await,
            Err(e) => error_reply(&e),
        };
        Some(ws_reply(&req_id, &reply))
    }
}

/// `GET /v4/imstore/events`: the device's inbox as Server-Sent Events, resumable with
/// `Last-Event-ID` (which also confirms receipt up to it).
pub async fn events(
    State(app): State<App>,
    Extension(conn): Extension<ConnHandle>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    #[cfg(feature = "cluster")]
    if let Some(node) = app.node.clone() {
        let query = query.unwrap_or_default();
        return super::cluster::channels::events(app, node, conn, query, headers).await;
    }
    let mut req = match app.api.authorize_device(query.as_deref().unwrap_or("")) {
        Ok(r) => r,
        Err(e) => return json_response(error_reply(&e)),
    };
    if let Some(last) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        req.after = Some(last);
    }
    let Some(place) = conn.device_place() else {
        return sse_refusal(&no_device_place());
    };
    let sub = match connect(&app, &req).await {
        Ok(s) => s,
        Err(e) => return sse_refusal(&e),
    };
    tracing::debug!(account = %req.account, device = %req.device, resume = ?req.after, "device connected (sse)");
    // The device's place goes with the stream: given back when it ends.
    let clock = app.api.store().config().clock.clone();
    let expiry = Box::pin(sig_expiry(clock, req.sig_expires_at));
    // A resume position past the server's inbox: the stream starts by saying where from.
    let reset = sub.reset().map(reset_event);
    let store = app.api.store().clone();
    let state = (
        Some((sub, expiry)),
        app.shutdown.clone(),
        (place, app.metrics.device("sse"), store, req),
    );
    let batches = futures_util::stream::unfold(state, |(live, mut shutdown, conn)| async move {
        let (sub, mut expiry) = live?;
        let events = tokio::select! {
            _ = shutdown.changed() => return None,
            // The stream's last event, then its end.
            e = &mut expiry => return Some((vec![expired_event(&e)], (None, shutdown, conn))),
            batch = sub.next_batch() => match batch {
                Ok(events) => events,
                Err(_) => {
                    let last = replaced(&conn.2, &conn.3).await.then(replaced_event)?;
                    return Some((vec![last], (None, shutdown, conn)));
                }
            },
        };
        let events = events
            .iter()
            .map(|event| {
                let (kind, data) = event_payload(event);
                SseEvent::default()
                    .id(event.seq.to_string())
                    .event(kind)
                    .data(data)
            })
            .collect();
        Some((events, (Some((sub, expiry)), shutdown, conn)))
    });
    let stream = futures_util::stream::iter(reset)
        .chain(batches.flat_map(futures_util::stream::iter))
        .map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The SSE form of [`ws_reset_frame`]: `event: reset`, `id:` the position the stream starts
/// from, which a browser's `EventSource` then resumes from.
pub(super) fn reset_event(start: impl std::fmt::Display) -> SseEvent {
    SseEvent::default()
        .id(start.to_string())
        .event(crate::api::RESET_EVENT)
        .data("{}")
}

/// The largest body `POST /v4/imstore/ack` reads: `{"Seq":...}` with a cluster's position
/// token (about 16 bytes a shard).
const ACK_BODY_LIMIT: usize = 64 << 10;

/// `POST /v4/imstore/ack`: a device confirms receipt (for SSE clients).
pub async fn ack(
    State(app): State<App>,
    Extension(conn): Extension<ConnHandle>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let query = query.unwrap_or_default();
    // The device is identified before its body is read, and the body is small: a caller that
    // would be refused makes the server hold nothing.
    #[cfg(feature = "cluster")]
    let identified = match &app.node {
        Some(node) => super::cluster::channels::authorize(node, &query).map(|_| ()),
        None => app.api.authorize_device(&query).map(|_| ()),
    };
    #[cfg(not(feature = "cluster"))]
    let identified = app.api.authorize_device(&query).map(|_| ());
    if let Err(e) = identified {
        return json_response(error_reply(&e));
    }
    let limit = app.body_limit.min(ACK_BODY_LIMIT);
    let bytes = match conn.reading_body(read_body(body, limit)).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    #[cfg(feature = "cluster")]
    if let Some(node) = app.node.clone() {
        return super::cluster::channels::ack(node, query, &bytes).await;
    }
    let api = app.api.clone();
    let store = api.store().clone();
    if let Err(e) = crate::server::refuse_if_stalled(&store) {
        return json_response(error_reply(&e));
    }
    let (reply, ticket) = store.deferring(|| api.device_ack(&query, &bytes));
    json_response(match crate::server::durable(&store, ticket).await {
        Ok(()) => reply,
        Err(e) => error_reply(&e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal the client may retry (the server's own failure) is 503; a UserSig's 401;
    /// the request's own 400.
    #[test]
    fn a_connect_refused_by_the_servers_own_failure_is_503() {
        let status = |e: Error| auth_status(&e);
        assert_eq!(
            status(Error::Internal("the journal cannot be written".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(Error::AccountNotFound("x".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(Error::InvalidField {
                field: "usersig",
                code: 70003,
                why: "bad".into()
            }),
            StatusCode::UNAUTHORIZED
        );
        // The app id's own failures (missing, malformed) fail the authentication too.
        for code in [60012, 60006] {
            let e = Error::InvalidField {
                field: "sdkappid",
                code,
                why: "bad".into(),
            };
            assert_eq!(status(e), StatusCode::UNAUTHORIZED);
        }
    }
}
