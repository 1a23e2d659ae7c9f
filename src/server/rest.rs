//! Tencent's REST paths: `/v4/{service}/{command}`, answered with the envelope and HTTP 200.
//!
//! A call runs on the async worker that received it with durability deferred
//! ([`Store::deferring`](crate::Store::deferring)): it takes only in-memory locks. Its answer —
//! a write's acknowledgement or a read's result — is sent only once the journal is durable up
//! to what the call did or read ([`Store::commit_async`](crate::Store::commit_async)), which the
//! store's committer thread does for every waiting call with one fsync. Compaction, which
//! writes a whole snapshot, runs on the blocking pool.

use std::time::Instant;

use axum::body::{Body, Bytes};
use std::net::IpAddr;

use axum::extract::{ConnectInfo, Extension, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::App;
use super::conn::READ_TIMEOUT;
use crate::Origin;
use crate::api::{Reply, error_reply};
use crate::error::Error;

pub fn json_response(reply: Reply) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        reply.json,
    )
        .into_response()
}

/// Reads a request body, within the size limit and the read timeout.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    match tokio::time::timeout(READ_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_over_limit(&e) => {
            let e = Error::InvalidField {
                field: "body",
                code: 93000,
                why: format!("is larger than {limit} bytes"),
            };
            Err(json_response(error_reply(&e)))
        }
        Ok(Err(e)) => {
            // Cut short, or a malformed chunked encoding: the body is not whole.
            let e = Error::InvalidRequest(format!("the request body could not be read: {e}"));
            Err(closing(StatusCode::BAD_REQUEST, &e))
        }
        Err(_) => {
            // The transport failed: the body did not arrive. Say so and close.
            let e = Error::InvalidRequest(format!(
                "the request body did not arrive within {} s",
                READ_TIMEOUT.as_secs()
            ));
            Err(closing(StatusCode::REQUEST_TIMEOUT, &e))
        }
    }
}

/// A REST call, POST or — as some of Tencent's SDKs send them — GET with a JSON body.
pub async fn rest(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Extension(conn): Extension<super::conn::ConnHandle>,
    uri: axum::http::Uri,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let started = Instant::now();
    // The path as sent (`/v4/{service}/{command}`, which routed here), not percent-decoded:
    // no API's name needs decoding, and a name that does not decode (not UTF-8) must get the
    // envelope's 60010 like any unknown API, not a plain-text 400 from an extractor.
    let path = uri.path().to_owned();
    // Who calls, before the body is read: a caller that would be refused holds no body (up to
    // `body_limit` per connection) meanwhile.
    if let Err(e) = app
        .api
        .identify_caller(&path, query.as_deref().unwrap_or(""))
    {
        let reply = error_reply(&e);
        app.metrics.call(&path, reply.code, started.elapsed());
        tracing::debug!(api = %path, code = reply.code, "call refused before its body");
        return json_response(reply);
    }
    let bytes = match conn.reading_body(read_body(body, app.body_limit)).await {
        Ok(b) => b,
        Err(response) => {
            tracing::info!(api = %path, "request body refused");
            app.metrics
                .call(&path, body_refusal_code(&response), started.elapsed());
            return response;
        }
    };
    let reply = app
        // An IPv4 client of a dual-stack listener in dotted form (ClientIP), not `::ffff:a.b.c.d`.
        .answer(
            path.clone(),
            query.unwrap_or_default(),
            bytes,
            peer.ip().to_canonical(),
        )
        .await;
    app.metrics.call(&path, reply.code, started.elapsed());
    if reply.code == 91000 {
        tracing::warn!(api = %path, code = reply.code, body = %reply.json, "internal error");
    } else {
        tracing::debug!(api = %path, code = reply.code, micros = started.elapsed().as_micros() as u64, "call");
    }
    json_response(reply)
}

/// Whether reading a body failed on its size limit (rather than on the transport).
fn is_over_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// An error answer after which the connection closes: what is left of the body on it cannot
/// be told from the next request.
fn closing(status: StatusCode, e: &Error) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CONNECTION, "close"),
        ],
        error_reply(e).json,
    )
        .into_response()
}

/// The ErrorCode of a refused body, for the metrics: 93000 (too large) or, when it did not
/// arrive whole or in time, 90001 (an invalid request).
fn body_refusal_code(response: &Response) -> u32 {
    if response.status() == StatusCode::OK {
        93000
    } else {
        90001
    }
}

impl App {
    /// Answers a REST call once everything it did or read is durable; a send first waits for
    /// its before-send decision when webhooks are on.
    async fn answer(&self, path: String, query: String, body: Bytes, ip: IpAddr) -> Reply {
        #[cfg(feature = "cluster")]
        if let Some(node) = &self.node {
            return super::cluster::front::rest(node, path, query, body, ip.to_string()).await;
        }
        let api = self.api.clone();
        if path == "/v4/imstore/compact" {
            return tokio::task::spawn_blocking(move || api.handle(&path, &query, &body))
                .await
                .unwrap_or_else(|e| error_reply(&Error::Internal(format!("handler failed: {e}"))));
        }
        let store = api.store();
        if let Err(e) = super::refuse_if_stalled(store) {
            return error_reply(&e);
        }
        let ctx = self.call_context();
        let (step, ticket) = store.deferring(|| {
            self.with_origin(Origin::rest(ip.to_string()), || {
                api.step(&path, &query, &body, &ctx)
            })
        });
        if let Err(e) = crate::server::durable(store, ticket).await {
            return error_reply(&e);
        }
        self.finish(step).await
    }
}

/// Anything else: 60010 in the envelope, counted as a call to no API (`api="other"`).
pub async fn unknown(State(app): State<App>, uri: axum::http::Uri) -> Response {
    let started = Instant::now();
    let reply = error_reply(&Error::UnknownApi(uri.path().to_owned()));
    app.metrics.call(uri.path(), reply.code, started.elapsed());
    json_response(reply)
}
