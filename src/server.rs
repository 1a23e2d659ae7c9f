//! The HTTP server (cargo feature `server`): Tencent's REST paths over [`Api`], client events
//! over Server-Sent Events, and the startup and shutdown `imstore-server` runs.
//!
//! Every REST answer is HTTP 200 with the JSON envelope, including an unknown path or method
//! (60010) and a body over the limit (93000). A REST call takes effect on the async worker that
//! received it, with durability deferred ([`Store::deferring`]); its answer waits, without a
//! thread, for a committer thread that makes every waiting call's journal records durable with
//! one fsync (group commit) and then releases them.
//!
//! Each SSE client gets a thread that receives from its device's [`Subscription`] and forwards
//! into the response stream; the device's cursor is journaled when the stream ends, and
//! `Last-Event-ID` resumes after the last event the client saw.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{Api, ApiConfig, Reply, error_reply, event_payload};
use crate::device::Subscription;
use crate::error::Error;
use crate::journal::SyncPolicy;
use crate::{CommitTicket, Config, Store, usersig};

/// How `imstore-server` is set up (its command line).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen; port 0 picks one.
    pub listen: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The app's SDKAppID.
    pub sdkappid: u64,
    /// The app's secret key; `None` loads `secret_key` from the data directory or generates it.
    pub secret_key: Option<String>,
    /// App administrators.
    pub admins: Vec<String>,
    /// Journal sync policy.
    pub sync: SyncPolicy,
    /// Per-API calls per second; `None` for no limit.
    pub rate_limit: Option<u32>,
    /// Largest request body, in bytes.
    pub body_limit: usize,
}

#[derive(Clone)]
struct App {
    api: Arc<Api>,
    body_limit: usize,
    shutting_down: Arc<AtomicBool>,
    /// Requests waiting for their journal records to be durable; `None` under
    /// `SyncPolicy::Every`, where each call fsyncs by itself on the blocking pool.
    committer: Option<std::sync::mpsc::Sender<Waiter>>,
}

/// A request's commit ticket and where to say it is durable.
type Waiter = (
    CommitTicket,
    tokio::sync::oneshot::Sender<Result<(), Error>>,
);

/// Group commit for the server: takes every waiting request's ticket, commits up to the
/// highest (one fsync for all of them) and releases them together.
fn committer(store: Arc<Store>, waiting: std::sync::mpsc::Receiver<Waiter>) {
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        batch.extend(waiting.try_iter());
        let upto = batch.iter().map(|(t, _)| *t).max().expect("one at least");
        let result = store.commit(upto);
        for (_, done) in batch {
            let _ = done.send(result.clone());
        }
    }
}

impl App {
    /// Answers a REST call. The call runs here, on the async worker, with durability deferred
    /// (it takes only in-memory locks), then waits without a thread for the committer.
    /// Compaction, which writes a snapshot, and the `Every` policy run on the blocking pool.
    async fn answer(&self, path: String, query: String, body: axum::body::Bytes) -> Reply {
        let api = self.api.clone();
        let committer = match &self.committer {
            Some(c) if path != "/v4/imstore/compact" => c,
            _ => {
                return tokio::task::spawn_blocking(move || api.handle(&path, &query, &body))
                    .await
                    .unwrap_or_else(|e| {
                        error_reply(&Error::Internal(format!("handler failed: {e}")))
                    });
            }
        };
        let store = api.store();
        let (reply, ticket) = store.deferring(|| api.handle(&path, &query, &body));
        if store.is_durable(ticket) {
            return reply;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if committer.send((ticket, tx)).is_err() {
            return error_reply(&Error::Internal("the committer has stopped".into()));
        }
        match rx.await {
            Ok(Ok(())) => reply,
            Ok(Err(e)) => error_reply(&e),
            Err(_) => error_reply(&Error::Internal("the committer has stopped".into())),
        }
    }
}

fn json_response(reply: Reply) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        reply.json,
    )
        .into_response()
}

async fn rest(
    State(app): State<App>,
    UrlPath((service, command)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let started = Instant::now();
    let path = format!("/v4/{service}/{command}");
    let bytes = match axum::body::to_bytes(body, app.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            let e = Error::InvalidField {
                field: "body",
                code: 93000,
                why: format!("is larger than {} bytes", app.body_limit),
            };
            tracing::info!(api = %path, code = 93000, "request body over the limit");
            return json_response(error_reply(&e));
        }
    };
    let reply = app
        .answer(path.clone(), query.unwrap_or_default(), bytes)
        .await;
    if reply.code == 91000 {
        tracing::warn!(api = %path, code = reply.code, body = %reply.json, "internal error");
    } else {
        tracing::debug!(api = %path, code = reply.code, micros = started.elapsed().as_micros() as u64, "call");
    }
    json_response(reply)
}

async fn unknown(uri: axum::http::Uri) -> Response {
    json_response(error_reply(&Error::UnknownApi(uri.path().to_owned())))
}

async fn events(State(app): State<App>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let req = match app.api.authorize_events(query.as_deref().unwrap_or("")) {
        Ok(r) => r,
        Err(e) => return json_response(error_reply(&e)),
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    let store = app.api.store().clone();
    let (account, device) = (req.account.clone(), req.device.clone());
    let connected = tokio::task::spawn_blocking(move || match resume {
        Some(seq) => store.connect_after(&account, &device, seq),
        None => store.connect(&account, &device),
    })
    .await
    .unwrap_or_else(|e| Err(Error::Internal(e.to_string())));
    let sub = match connected {
        Ok(sub) => sub,
        Err(e) => return json_response(error_reply(&e)),
    };
    tracing::info!(account = %req.account, device = %req.device, resume = ?resume, "device connected");
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let store = app.api.store().clone();
    let stop = app.shutting_down.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("sse-{}", req.device))
        .spawn(move || forward(store, sub, tx, stop));
    if let Err(e) = spawned {
        return json_response(error_reply(&Error::Internal(format!(
            "no thread for the event stream: {e}"
        ))));
    }
    let stream = ReceiverStream::new(rx).map(|event: crate::Event| {
        let (kind, data) = event_payload(&event);
        Ok::<_, Infallible>(
            SseEvent::default()
                .id(event.seq.to_string())
                .event(kind)
                .data(data),
        )
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Moves a device's events into its SSE stream until the client goes, the device connects
/// elsewhere, or the server shuts down; then records the device's cursor.
fn forward(
    store: Arc<Store>,
    sub: Subscription,
    tx: tokio::sync::mpsc::Sender<crate::Event>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Acquire) && !tx.is_closed() {
        match sub.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(event)) => {
                if tx.blocking_send(event).is_err() {
                    break;
                }
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }
    let (account, device) = (sub.account().to_owned(), sub.device().to_owned());
    if let Err(e) = store.disconnect(sub) {
        tracing::warn!(%account, %device, error = %e, "device cursor not recorded");
    }
    tracing::info!(%account, %device, "device disconnected");
}

/// The router: REST paths, the events stream, and 60010 for everything else.
fn router(app: App) -> Router {
    Router::new()
        .route("/v4/imstore/events", get(events))
        .route("/v4/{service}/{command}", post(rest))
        .fallback(unknown)
        .method_not_allowed_fallback(unknown)
        .with_state(app)
}

/// A UserSig for `identifier`, valid 180 days, made with the app's key: the configured one, or
/// the one saved in the data directory (generated there if there is none yet).
pub fn usersig_for(config: &ServerConfig, identifier: &str) -> std::io::Result<String> {
    let key = match &config.secret_key {
        Some(k) => k.clone(),
        None => {
            std::fs::create_dir_all(&config.data_dir)?;
            secret_key(&config.data_dir)?.0
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(usersig::generate(
        config.sdkappid,
        &key,
        identifier,
        180 * 86400,
        now,
    ))
}

/// Loads the secret key from `dir/secret_key`, or creates one (mode 0600). Returns the key and
/// whether it was just generated.
fn secret_key(dir: &Path) -> std::io::Result<(String, bool)> {
    let path = dir.join("secret_key");
    match std::fs::read_to_string(&path) {
        Ok(k) => return Ok((k.trim().to_owned(), false)),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(key.as_bytes())?;
    f.sync_all()?;
    Ok((key, true))
}

/// Runs the server until SIGINT or SIGTERM, then flushes the journal. Prints
/// `listening on http://HOST:PORT` on stdout once it accepts connections.
pub async fn run(config: ServerConfig) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    run_until(config, shutdown_signal(), |_| {}).await
}

/// [`run`] until `shutdown` completes; `ready` is told the address once it accepts connections.
pub async fn run_until(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let store_config = Config::default()
        .with_admins(config.admins.clone())
        .with_sync(config.sync);
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir, store_config)).await??;
    let store = Arc::new(store);
    let report = store.recovery_report();
    tracing::info!(dir = %config.data_dir.display(), snapshot = ?report.snapshot_lsn, replayed = report.records_replayed,
        truncated = ?report.truncated_tail, "store opened");
    let (key, generated) = match &config.secret_key {
        Some(k) => (k.clone(), false),
        None => secret_key(&config.data_dir)?,
    };
    let api = Arc::new(Api::new(
        store.clone(),
        ApiConfig {
            sdkappid: config.sdkappid,
            secret_key: key.clone(),
            rate_limit: config.rate_limit,
        },
    ));
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    if generated {
        let admin = config
            .admins
            .first()
            .map_or("administrator", String::as_str);
        let sig = usersig::generate(
            config.sdkappid,
            &key,
            admin,
            180 * 86400,
            store.config().clock.now(),
        );
        println!(
            "generated a secret key in {}",
            config.data_dir.join("secret_key").display()
        );
        println!("admin UserSig for {admin} (valid 180 days): {sig}");
        println!(
            "try: curl -s -X POST 'http://{addr}/v4/im_open_login_svc/account_import?sdkappid={}&identifier={admin}&usersig={sig}&random=1&contenttype=json' -d '{{\"UserID\":\"vinson\"}}'",
            config.sdkappid
        );
    }
    println!("listening on http://{addr}");
    use std::io::Write;
    std::io::stdout().flush()?;
    ready(addr);

    let shutting_down = Arc::new(AtomicBool::new(false));
    let purge = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                let store = store.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.purge_expired()).await
                {
                    tracing::warn!(error = %e, "purge failed");
                }
            }
        })
    };
    let committer = (config.sync != SyncPolicy::Every).then(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let store = store.clone();
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || committer(store, rx))
            .map(|_| tx)
    });
    let committer = committer.transpose()?;
    let app = App {
        api,
        body_limit: config.body_limit,
        shutting_down: shutting_down.clone(),
        committer,
    };
    let stop = shutting_down.clone();
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down");
            stop.store(true, Ordering::Release);
        })
        .await?;
    purge.abort();
    tokio::task::spawn_blocking(move || store.flush()).await??;
    tracing::info!("journal flushed");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
