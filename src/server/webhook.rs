//! Tencent's C2C webhooks (SPEC §8): the calls to the app's callback URL.
//!
//! - **Before-send** (`C2C.CallbackBeforeSendMsg`) is the server's way of making the store's one
//!   before-send decision: the call is awaited between [`Store::prepare_send`] and
//!   [`Store::finish_send`], with no store lock held, for at most `--callback-timeout-ms`. A
//!   call that fails or times out delivers the message (fail open), or with
//!   `--callback-fail-closed` refuses it with 80003.
//! - **After-callbacks** (`C2C.CallbackAfterSendMsg`, `C2C.CallbackAfterMsgWithDraw`,
//!   `C2C.CallbackAfterMsgReport`) never delay the caller. Their operations queue them in the
//!   store's durable outbox (see `imstore::callback`); the dispatcher here sends them one at a
//!   time in operation order, once durable, retrying each with backoff (100 ms doubling to 30 s)
//!   until the app answers HTTP 200 with a JSON body, and then acknowledges it in the store.
//!   After a restart or a crash it resumes with the first one not acknowledged: at least once.
//!
//! [`Store::prepare_send`]: crate::Store::prepare_send
//! [`Store::finish_send`]: crate::Store::finish_send

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::api::{
    PendingSend, before_send_body, before_send_decision, callback_accepted, callback_body,
    callback_query,
};
use crate::hooks::BeforeSend;
use crate::{Origin, Platform, Store};

/// Where and how webhooks are called (`--callback-*`).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The app's callback URL.
    pub url: String,
    /// With a token, each call carries `Sign` and `RequestTime`.
    pub token: Option<String>,
    /// How long a before-send call may take (default 2 s, Tencent's).
    pub timeout: Duration,
    /// A before-send call that fails refuses the message (80003) instead of delivering it.
    pub fail_closed: bool,
}

/// The first wait before an after-callback is tried again; it doubles on each failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two tries of one after-callback.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long an after-callback waits for the app's answer (at least; `--callback-timeout-ms`
/// if longer). Before-send waits `--callback-timeout-ms` only: it holds up a send.
const AFTER_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from the app (Tencent's answers are a few fields of JSON); a
/// longer one is a failed call, read no further.
const MAX_ANSWER: usize = 64 << 10;

/// The webhook client of one server.
pub struct Webhooks {
    config: WebhookConfig,
    sdkappid: u64,
    http: reqwest::Client,
    /// Before-send calls in flight at once: each holds a socket, counted in the server's
    /// descriptor reserve (`conn::RESERVED_FDS`), so that the app's callbacks never compete
    /// with clients for the descriptors (a call that found none would fail open).
    before_send_calls: tokio::sync::Semaphore,
    /// After-callback calls in flight at once, over every outbox this node delivers (a
    /// cluster node delivers one per shard it owns): counted in the reserve as well.
    after_calls: tokio::sync::Semaphore,
}

/// How many before-send calls may be in flight at once; a send beyond them waits for one
/// (within its `--callback-timeout-ms`).
pub const MAX_BEFORE_SEND_CALLS: usize = 32;

/// How many after-callback calls may be in flight at once (each outbox sends one at a time).
pub const MAX_AFTER_CALLS: usize = 8;

/// Idle connections to the app kept for reuse.
pub const IDLE_CALLBACK_CONNECTIONS: usize = 4;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Webhooks {
    /// Refuses a URL that is not an absolute `http`/`https` one with a host, or that has a
    /// fragment: every call would fail (or reach the app without its query), and with
    /// fail-open before-send every message would go out unchecked.
    pub fn new(
        config: WebhookConfig,
        sdkappid: u64,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| format!("--callback-url {:?}: {e}", config.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "--callback-url {:?}: must be an http:// or https:// URL with a host",
                config.url
            )
            .into());
        }
        // Each call appends Tencent's query (SdkAppid, CallbackCommand, Sign, ...) to the URL:
        // after a fragment it would never be sent.
        if url.fragment().is_some() {
            return Err(format!(
                "--callback-url {:?}: must not have a #fragment (the callback's query would \
                 follow it and never be sent)",
                config.url
            )
            .into());
        }
        // Each call's bound: an after-callback's (the before-send's own, shorter one wraps
        // its call). An app that takes longer than before-send's timeout to answer an
        // after-callback still has it acknowledged, rather than sent again for ever.
        // Redirects are not followed: reqwest would send a POST's redirect on as a GET without
        // its body, and the app's answer to that — `{"ErrorCode":0}`, say — would acknowledge
        // a callback, or decide a send, it never saw. A redirect is a failed call.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout.max(AFTER_CALL_TIMEOUT))
            .pool_max_idle_per_host(IDLE_CALLBACK_CONNECTIONS)
            .build()?;
        Ok(Webhooks {
            config,
            sdkappid,
            http,
            before_send_calls: tokio::sync::Semaphore::new(MAX_BEFORE_SEND_CALLS),
            after_calls: tokio::sync::Semaphore::new(MAX_AFTER_CALLS),
        })
    }

    /// One call: POST the JSON body to the URL with Tencent's query parameters. `Ok` with the
    /// answer's status and body, or the transport's error.
    async fn call(
        &self,
        command: &str,
        origin: &Origin,
        body: String,
    ) -> Result<(u16, Vec<u8>), String> {
        let token = self.config.token.as_deref().map(|t| (t, unix_now()));
        let query = callback_query(self.sdkappid, command, origin, token);
        let sep = if self.config.url.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{sep}{query}", self.config.url);
        let mut resp = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let mut answer = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if answer.len() + chunk.len() > MAX_ANSWER {
                return Err(format!("an answer longer than {MAX_ANSWER} bytes"));
            }
            answer.extend_from_slice(&chunk);
        }
        Ok((status, answer))
    }

    /// The before-send decision for a pending send: the app's answer, or — when the call fails
    /// or times out — allow (fail open) or [`BeforeSend::Unavailable`] (fail closed).
    pub async fn before_send(&self, pending: &PendingSend) -> BeforeSend {
        let rest = Origin::rest("127.0.0.1");
        let origin = pending.origin().unwrap_or(&rest);
        let body = before_send_body(&pending.outgoing());
        let answer = tokio::time::timeout(self.config.timeout, async {
            let _call = self.before_send_calls.acquire().await;
            self.call("C2C.CallbackBeforeSendMsg", origin, body).await
        })
        .await;
        let failure = match answer {
            Ok(Ok((200, body))) => match before_send_decision(&body) {
                Ok(decision) => return decision,
                Err(why) => why,
            },
            Ok(Ok((status, _))) => format!("HTTP {status}"),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", self.config.timeout),
        };
        tracing::warn!(error = %failure, fail_closed = self.config.fail_closed, "before-send callback failed");
        if self.config.fail_closed {
            BeforeSend::Unavailable
        } else {
            BeforeSend::Allow
        }
    }

    /// Delivers the outbox's after-callbacks, in order, until `stop` turns true.
    ///
    /// One entry at a time, read anew for each attempt: an entry's view shows its message as
    /// it is when read, so a message recalled while its callback waits for the app goes out
    /// without its body — and no copy of the body is kept here across a retry.
    pub async fn dispatch(
        &self,
        store: Store,
        mut stop: watch::Receiver<bool>,
        metrics: std::sync::Arc<super::metrics::Metrics>,
    ) {
        let mut after = 0u64;
        let mut backoff = FIRST_BACKOFF;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = store.outbox_wait(after) => {}
            }
            let (entries, ticket) = store.deferring(|| store.outbox_after(after, 1));
            let entry = match entries {
                Ok(mut e) => match e.pop() {
                    Some(entry) => entry,
                    // Announced but gone (not expected): look again shortly.
                    None => {
                        tokio::select! {
                            _ = stop.changed() => return,
                            _ = tokio::time::sleep(FIRST_BACKOFF) => continue,
                        }
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "outbox unreadable");
                    return;
                }
            };
            // Only what is durable is sent (R6).
            if let Err(e) = store.commit_async(ticket).await {
                tracing::warn!(error = %e, "outbox not durable");
                return;
            }
            let (mut command, mut body) = callback_body(&entry);
            // Read again after the wait: a recall (or a modification) made meanwhile — perhaps
            // answered OK in the same fsync — must not see the body it took go out now. What
            // changed is sent once that change is durable too; unchanged, it goes at once.
            let (again, ticket) = store.deferring(|| store.outbox_after(after, 1));
            if let Some(newer) = again.ok().and_then(|mut e| e.pop()) {
                let (c, b) = callback_body(&newer);
                if newer.id == entry.id && b != body {
                    if let Err(e) = store.commit_async(ticket).await {
                        tracing::warn!(error = %e, "outbox not durable");
                        return;
                    }
                    (command, body) = (c, b);
                }
            }
            let id = entry.id;
            let outcome = tokio::select! {
                _ = stop.changed() => return,
                r = async {
                    let _call = self.after_calls.acquire().await;
                    self.call(command, &entry.origin, body).await
                } => r,
            };
            drop(entry);
            let accepted =
                matches!(&outcome, Ok((status, answer)) if callback_accepted(*status, answer));
            metrics.delivered(accepted);
            match outcome {
                Ok(_) if accepted => {
                    after = id;
                    backoff = FIRST_BACKOFF;
                    if let Err(e) = store.outbox_ack(after) {
                        tracing::warn!(error = %e, "outbox acknowledgement not recorded");
                    }
                    continue;
                }
                Ok((status, _)) => {
                    tracing::debug!(command, status, "after-callback refused; retrying")
                }
                Err(e) => {
                    tracing::debug!(command, error = %e, "after-callback failed; retrying")
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The origin of a device's requests: its platform and address.
pub fn device_origin(platform: &str, ip: std::net::IpAddr) -> Origin {
    Origin {
        platform: Platform::of_device(platform).unwrap_or(Platform::Unknown),
        client_ip: ip.to_string(),
    }
}
