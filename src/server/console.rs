//! `GET /console`: one self-contained page (SPEC §10) in the spirit of Tencent's API debugging
//! tool — pick an API, fill its body, see the envelope; log two devices in over the WebSocket
//! channel and watch a recall take a message away. HTML, CSS and script are inline and the
//! page is compiled into the binary; its Content-Security-Policy lets it reach this server
//! (REST calls and the device WebSocket) and nothing else.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("console.html");

/// Same-origin `fetch` and WebSocket only (`connect-src 'self'` covers `ws:` to this host);
/// no outside script, style, font, image or frame.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
    connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /console`.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}
