//! The HTTP server (cargo feature `server`): Tencent's REST paths over [`Api`], the device
//! channels (WebSocket and Server-Sent Events), and the startup and shutdown `imstore-server`
//! runs.
//!
//! | module | owns |
//! |---|---|
//! | `conn` | the accept loop, header-read timeouts, the connection register (descriptor limit) |
//! | `rest` | `/v4/{service}/{command}`: the envelope, body limit and timeout, durable answers |
//! | `devices` | `/v4/imstore/ws` (events, acks, client requests), `/v4/imstore/events`, `/v4/imstore/ack` |
//! | `webhook` | the calls to the app's callback URL: before-send, and the outbox dispatcher |
//! | `metrics` | `/metrics` (Prometheus text format) and `/healthz` |
//! | `console` | `/console`: the self-contained API debugging page |
//! | `cluster` | `--cluster` (feature `cluster`): a node of a cluster on NATS JetStream — shards, forwarding, merged device streams |
//!
//! Startup: the listener is bound before the store opens, and while it recovers every request
//! is answered 503 (`/healthz`: `{"status":"starting"}`; REST paths: the envelope with 91000)
//! with `Connection: close`; `starting on http://ADDR` is printed then, and
//! `listening on http://ADDR` once the store is open and calls are served.
//!
//! Shutdown (SIGINT/SIGTERM), as tokio's mini-redis does it: one `watch` channel tells the
//! accept loop and every connection and device task to stop; each holds a clone of an `mpsc`
//! sender whose closing says they all have. Before that, for `drain` (default 500 ms),
//! `/healthz` answers 503 while everything else is still served, so that a load balancer
//! stops sending new clients first. The server then waits for its connections at most
//! 4 seconds less the drain, flushes and closes the journal (for what is left of 5 seconds:
//! `SHUTDOWN`) and returns, whatever its clients do and however long its disk stalls — so it
//! returns within 5 seconds of the signal (the binary then gives its runtime 0.2 s).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use tokio::sync::watch;

use crate::api::{Api, ApiConfig};
use crate::journal::SyncPolicy;
use crate::{Config, Store, usersig};

#[cfg(feature = "cluster")]
mod cluster;
mod conn;
mod console;
mod devices;
mod metrics;
mod rest;
mod webhook;

pub use webhook::WebhookConfig;

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
    /// Verified UserSigs remembered (`ApiConfig::usersig_cache`); 0: none.
    pub usersig_cache: usize,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// How often expired history, inbox entries and idle devices are purged.
    pub purge_interval: Duration,
    /// Disk space the journal reserves ahead of its writes (`Config::journal_prealloc_bytes`).
    pub journal_prealloc: u64,
    /// How often a WebSocket client is pinged; one silent for three intervals is dropped
    /// (default 30 s, so 90 s).
    pub ws_ping: Duration,
    /// How long data sent to a client may go unread — unacknowledged, or held behind its
    /// zero window — before the kernel ends its connection (`TCP_USER_TIMEOUT`, Linux; default
    /// 90 s, as long as a WebSocket client may be silent). Bounds what a client that stops
    /// reading holds, above all over SSE, which has no ping.
    pub unread_timeout: Duration,
    /// Tencent's C2C webhooks, when a callback URL is given.
    pub webhooks: Option<WebhookConfig>,
    /// How long a client may recall its own message (`Config::client_recall_window_secs`).
    pub client_recall_window_secs: u64,
    /// How soon an erased body (recalled, modified, expired) leaves the disk
    /// (`Config::erase_within_secs`; 0: only at the size threshold and `imstore/compact`).
    pub erase_within_secs: u64,
    /// At shutdown, how long `/healthz` answers 503 while calls are still served (at most
    /// 2 s).
    pub drain: Duration,
    /// Run as a node of a cluster on NATS JetStream instead of on `data_dir` (needs the cargo
    /// feature `cluster`).
    pub cluster: Option<ClusterServerConfig>,
    /// Open a journal damaged before its end by cutting it at the damage
    /// (`Config::with_repair`; `imstore-server --repair`).
    pub repair: bool,
}

/// How a server joins a cluster (`--cluster`, `--node-id`, `--shards`; SPEC §9).
#[derive(Clone, Debug)]
pub struct ClusterServerConfig {
    /// NATS servers, `nats://H:P[,nats://H:P...]`.
    pub urls: String,
    /// This node's name (letters, digits, `-`, `_`), unique in the cluster.
    pub node_id: String,
    /// Shards, fixed when the cluster is created (default 64).
    pub shards: u32,
    /// Replicas of each shard's stream and of the buckets (default 3).
    pub replicas: usize,
}

impl ServerConfig {
    /// The defaults of `imstore-server`, listening on `listen` with data in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen,
            data_dir: data_dir.into(),
            sdkappid: 1_400_000_000,
            secret_key: None,
            admins: vec!["administrator".into()],
            sync: SyncPolicy::Group,
            rate_limit: None,
            usersig_cache: crate::api::USERSIG_CACHE,
            body_limit: 1 << 20,
            purge_interval: Duration::from_secs(60),
            journal_prealloc: crate::journal::DEFAULT_PREALLOC,
            ws_ping: Duration::from_secs(30),
            unread_timeout: conn::UNREAD_TIMEOUT,
            webhooks: None,
            client_recall_window_secs: 120,
            erase_within_secs: crate::config::ERASE_WITHIN_SECS,
            drain: Duration::from_millis(500),
            repair: false,
            cluster: None,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
struct App {
    api: Arc<Api>,
    body_limit: usize,
    /// Turns true when the server shuts down.
    shutdown: watch::Receiver<bool>,
    ws_ping: Duration,
    webhooks: Option<Arc<webhook::Webhooks>>,
    metrics: Arc<metrics::Metrics>,
    register: Arc<conn::Register>,
    /// This server is a node of a cluster: calls and devices go through it.
    #[cfg(feature = "cluster")]
    node: Option<Arc<cluster::Node>>,
}

impl App {
    /// The stores this server holds: the one store, or a cluster node's owned shards'.
    /// Whether this server is a cluster node (its stores are the shards it owns now).
    fn is_cluster_node(&self) -> bool {
        #[cfg(feature = "cluster")]
        if self.node.is_some() {
            return true;
        }
        false
    }

    fn stores(&self) -> Vec<Store> {
        #[cfg(feature = "cluster")]
        if let Some(node) = &self.node {
            return node.stores();
        }
        vec![self.api.store().clone()]
    }

    /// How calls are served: a send's before-send decision comes from the webhook when there
    /// is one.
    fn call_context(&self) -> crate::api::CallContext {
        crate::api::CallContext {
            before_send_elsewhere: self.webhooks.is_some(),
            client_msg_time: None,
        }
    }

    /// Runs `f` with the store's operations coming from `origin` — when webhooks are on
    /// (without them, operations fire no callbacks and queue nothing).
    fn with_origin<R>(&self, origin: crate::Origin, f: impl FnOnce() -> R) -> R {
        let origin = self.webhooks.is_some().then_some(origin);
        self.api.store().with_origin(origin, f)
    }

    /// Finishes a call that stopped for its before-send decision: asks the webhook (holding no
    /// store lock), then stores or refuses the send, and answers once it is durable.
    async fn finish(&self, step: crate::api::Step) -> crate::api::Reply {
        finish_step(&self.api, self.webhooks.as_deref(), step).await
    }
}

/// [`App::finish`] for any API (a cluster node's shards each have their own).
async fn finish_step(
    api: &Api,
    webhooks: Option<&webhook::Webhooks>,
    step: crate::api::Step,
) -> crate::api::Reply {
    use crate::api::{Step, error_reply};
    let store = api.store();
    match step {
        Step::Done(reply) => reply,
        Step::BeforeSend(pending) => {
            let webhooks = webhooks.expect("only with webhooks");
            let decision = webhooks.before_send(&pending).await;
            let (reply, ticket) = store.deferring(|| api.resume(pending, decision));
            match crate::server::durable(store, ticket).await {
                Ok(()) => reply,
                Err(e) => error_reply(&e),
            }
        }
    }
}

/// The router: REST paths (POST, or GET with a JSON body as some SDKs send), the device
/// channels, and 60010 for everything else.
fn router(app: App) -> Router {
    Router::new()
        .route("/v4/imstore/ws", get(devices::ws))
        .route("/v4/imstore/events", get(devices::events))
        .route("/v4/imstore/ack", post(devices::ack))
        .route("/console", get(console::page))
        .route("/healthz", get(metrics::healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/v4/{service}/{command}", any(rest::rest))
        .fallback(rest::unknown)
        .method_not_allowed_fallback(rest::unknown)
        .with_state(app)
}

/// What answers while the store recovers: 503 for everything, and the connection closed so
/// that clients come back to the real server.
fn starting_router() -> Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    async fn starting() -> axum::response::Response {
        let mut r = metrics::health_response(false, "starting");
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        r
    }
    async fn busy() -> axum::response::Response {
        let body = r#"{"ActionStatus":"FAIL","ErrorInfo":"the server is starting (recovering its data); retry","ErrorCode":91000}"#;
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CONNECTION, "close"),
            ],
            body,
        )
            .into_response()
    }
    Router::new()
        .route("/healthz", get(starting))
        .fallback(busy)
}

/// The starting phase: the listener bound, `starting on http://ADDR` printed, and every
/// request answered 503 until [`end`](Starting::end).
struct Starting {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Starting {
    async fn listen(
        addr: SocketAddr,
    ) -> std::io::Result<(
        Arc<tokio::net::TcpListener>,
        SocketAddr,
        Arc<conn::Register>,
        Starting,
    )> {
        let listener = Arc::new(tokio::net::TcpListener::bind(addr).await?);
        let addr = listener.local_addr()?;
        let register = conn::Register::for_this_process();
        println!("starting on http://{addr}");
        {
            use std::io::Write;
            std::io::stdout().flush()?;
        }
        let (stop, stopped) = watch::channel(false);
        // The starting phase's connections are not waited for: each is closed after its 503.
        let (tasks, _) = tokio::sync::mpsc::channel::<()>(1);
        let task = tokio::spawn(conn::accept_loop(
            listener.clone(),
            starting_router(),
            register.clone(),
            stopped,
            tasks,
            conn::UNREAD_TIMEOUT,
        ));
        Ok((listener, addr, register, Starting { stop, task }))
    }

    /// Stops answering "starting" without waiting.
    fn stop(self) {
        let _ = self.stop.send(true);
    }

    /// Stops answering "starting", once its accept loop has returned.
    async fn end(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Test-only (feature `fault-injection`): opening the store waits while `path` exists (at
/// most 60 s), so that a test can watch the server start.
#[cfg(feature = "fault-injection")]
fn hold_while_exists(path: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A UserSig for `identifier`, valid 180 days, made with the app's key: the configured one, or
/// the one saved in the data directory (generated there if there is none yet).
///
/// Only reads a key, never makes one: a key made here (in the wrong directory, or beside a
/// server started with `--secret-key`) would sign UserSigs no server accepts.
pub fn usersig_for(config: &ServerConfig, identifier: &str) -> std::io::Result<String> {
    let refuse = |why: String| std::io::Error::new(std::io::ErrorKind::NotFound, why);
    if config.secret_key.is_none() {
        if config.cluster.is_some() {
            return Err(refuse(
                "a cluster's key is the one its nodes are given: pass --secret-key (or IMSTORE_SECRET_KEY)".into(),
            ));
        }
        let path = config.data_dir.join("secret_key");
        if !path.exists() {
            return Err(refuse(format!(
                "no secret key at {}: pass --secret-key (or IMSTORE_SECRET_KEY), or --data-dir of a server started once",
                path.display()
            )));
        }
    }
    let (key, _) = app_key(config.secret_key.as_deref(), &config.data_dir)?;
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

/// The app's secret key: the configured one, or the one saved in `dir/secret_key` (generated
/// there when there is none yet). Returns the key and whether it was just generated.
///
/// An empty key is refused wherever it comes from: HMAC takes a key of any length, and with
/// an empty one anybody can make an administrator's UserSig. (A `--secret-key "$UNSET"` or an
/// empty file in the data directory would otherwise start a server open to all.)
pub(crate) fn app_key(configured: Option<&str>, dir: &Path) -> std::io::Result<(String, bool)> {
    let (key, generated) = match configured {
        Some(k) => (k.to_owned(), false),
        None => {
            std::fs::create_dir_all(dir)?;
            secret_key(dir)?
        }
    };
    if key.trim().is_empty() {
        let whence = match configured {
            Some(_) => "the secret key given (--secret-key or IMSTORE_SECRET_KEY)".to_owned(),
            None => format!(
                "{} (delete it to have a new key generated; UserSigs made with the old one stop working)",
                dir.join("secret_key").display()
            ),
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the app's secret key is empty: {whence}"),
        ));
    }
    Ok((key, generated))
}

/// Loads the secret key from `dir/secret_key`, or creates one (mode 0600). Returns the key and
/// whether it was just generated. A new key is written to a temporary file, flushed and then
/// renamed into place, so that a crash or a full disk never leaves an empty or partial key
/// behind (an empty one is refused by [`app_key`]).
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
    // A file of this attempt's own: two starts at once (a server and `--usersig`, say) must
    // not write into each other's.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let attempt = ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        "secret_key.tmp.{}.{nanos}.{attempt}",
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(key.as_bytes())?;
        f.sync_all()?;
        // A link, not a rename: it fails when another start made the key meanwhile, and then
        // that key is the one.
        let linked = std::fs::hard_link(&tmp, &path);
        std::fs::remove_file(&tmp)?;
        linked?;
        std::fs::File::open(dir)?.sync_all()
    })();
    match written {
        Ok(()) => Ok((key, true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok((std::fs::read_to_string(&path)?.trim().to_owned(), false))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
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
    if config.cluster.is_some() {
        #[cfg(feature = "cluster")]
        return cluster::run_until(config, shutdown, ready).await;
        #[cfg(not(feature = "cluster"))]
        return Err(
            "--cluster needs an imstore-server built with the cargo feature `cluster`".into(),
        );
    }
    let metrics = metrics::Metrics::new();
    let store_config = Config::default()
        .with_admins(config.admins.clone())
        .with_sync(config.sync)
        .with_journal_prealloc_bytes(config.journal_prealloc)
        .with_client_recall_window_secs(config.client_recall_window_secs)
        .with_erase_within_secs(config.erase_within_secs)
        .with_repair(config.repair)
        .with_journal_observer(Arc::new(metrics::JournalMetrics(metrics.clone())));
    // Checked before anything starts: an empty key given, a bad callback URL, are the
    // operator's to fix. (A key file in the data directory is read under its lock, below.)
    if let Some(k) = &config.secret_key {
        app_key(Some(k), &config.data_dir)?;
    }
    let webhooks = match &config.webhooks {
        Some(w) => Some(Arc::new(webhook::Webhooks::new(
            w.clone(),
            config.sdkappid,
        )?)),
        None => None,
    };
    // Listen first: while the store recovers, every request is answered 503 ("starting").
    let (listener, addr, register, starting) = Starting::listen(config.listen).await?;
    let dir = config.data_dir.clone();
    let started = std::time::Instant::now();
    let opening = tokio::task::spawn_blocking(move || {
        #[cfg(feature = "fault-injection")]
        hold_while_exists(&dir.join("hold-open"));
        Store::open(&dir, store_config)
    });
    let mut shutdown = std::pin::pin!(shutdown);
    let store = tokio::select! {
        opened = opening => opened??,
        () = &mut shutdown => {
            // Stopped while recovering: nothing has been served or acknowledged, and
            // recovery is safe to abandon (it is what a crash would leave). The caller's
            // runtime must not wait for the recovery thread (imstore-server shuts its runtime
            // down with a timeout).
            tracing::info!("shutting down during recovery");
            starting.stop();
            return Ok(());
        }
    };
    starting.end().await;
    let report = store.recovery_report();
    metrics.opened(started.elapsed(), report.records_replayed);
    tracing::info!(dir = %config.data_dir.display(), snapshot = ?report.snapshot_lsn, replayed = report.records_replayed,
        truncated = ?report.truncated_tail, millis = started.elapsed().as_millis() as u64, "store opened");
    if let Some(what) = &report.repaired {
        tracing::warn!(repaired = %what, "the journal was damaged: --repair cut it at the damage");
        println!("repaired: {what}");
    }
    // Read (or made) with the data directory's lock held: one key per directory.
    let (key, generated) = app_key(config.secret_key.as_deref(), &config.data_dir)?;
    let api = Arc::new(Api::new(
        store.clone(),
        ApiConfig {
            sdkappid: config.sdkappid,
            secret_key: key.clone(),
            rate_limit: config.rate_limit,
            usersig_cache: config.usersig_cache,
        },
    ));
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

    let (stop_tx, stop_rx) = watch::channel(false);
    // Every task holds a sender; when all are gone, `all_done` yields None.
    let (tasks, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let purge = tokio::spawn(purge_loop(
        store.clone(),
        config.purge_interval,
        stop_rx.clone(),
    ));
    let dispatcher = webhooks.clone().map(|w| {
        let (store, stop, metrics) = (store.clone(), stop_rx.clone(), metrics.clone());
        tokio::spawn(async move { w.dispatch(store, stop, metrics).await })
    });
    let app = App {
        api,
        body_limit: config.body_limit,
        shutdown: stop_rx.clone(),
        ws_ping: config.ws_ping,
        webhooks,
        metrics: metrics.clone(),
        register: register.clone(),
        #[cfg(feature = "cluster")]
        node: None,
    };
    let accept = tokio::spawn(conn::accept_loop(
        listener,
        router(app),
        register,
        stop_rx,
        tasks,
        config.unread_timeout,
    ));
    shutdown.await;
    let stopping = tokio::time::Instant::now();
    let drain = config.drain.min(Duration::from_secs(2));
    tracing::info!(drain_ms = drain.as_millis() as u64, "shutting down");
    metrics.set_stopping();
    tokio::time::sleep(drain).await;
    let _ = stop_tx.send(true);
    let _ = accept.await;
    if tokio::time::timeout(Duration::from_secs(4) - drain, all_done.recv())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time; leaving them");
    }
    purge.abort();
    if let Some(d) = dispatcher {
        let _ = tokio::time::timeout(Duration::from_millis(500), d).await;
    }
    let left = (stopping + SHUTDOWN).saturating_duration_since(tokio::time::Instant::now());
    final_flush(store, left.max(FINAL_FLUSH_AT_LEAST)).await?;
    tracing::info!("journal flushed");
    Ok(())
}

/// How long shutdown takes at most, from the signal: the drain and the connections have 4 s
/// of it, the webhook dispatcher 0.5 s, the journal's final flush and close what is left —
/// at least [`FINAL_FLUSH_AT_LEAST`], which only counts if the steps before overran.
const SHUTDOWN: Duration = Duration::from_secs(5);

/// The least the journal's final flush is given at shutdown. Everything acknowledged is
/// already durable under the sync policy (on disk; under `none`, with the OS); the flush writes
/// what nobody waits for — cursors and last-seen times the devices confirmed since the last
/// commit — and fsyncs, which takes milliseconds on a working disk. Losing those on a stalled
/// disk means repeats, never loss (R7), so shutdown does not wait for it without bound.
const FINAL_FLUSH_AT_LEAST: Duration = Duration::from_millis(500);

/// The store's close ([`Store::close_in_place`]: flush, committer stopped, a due snapshot
/// finished) for at most `limit`, on a thread of its own: past that, an error says it was left
/// behind. The thread keeps its handle on the store until it is done, so no other handle's drop
/// starts a close of its own meanwhile; the process's exit ends it — unless the thread is
/// inside an fsync the kernel never returns from, which no process can leave. A plain thread,
/// not `spawn_blocking`: a runtime dropped the ordinary way waits for a blocking task without
/// bound.
async fn final_flush(
    store: Store,
    limit: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Dropping the thread's handle detaches it.
    let (_thread, closed) = close_on_thread(store)?;
    closed_within(closed, limit).await
}

/// Runs [`Store::close_in_place`] on a thread of its own, which drops its handle on the store
/// when done; the receiver gets the close's result.
fn close_on_thread(
    store: Store,
) -> std::io::Result<(
    std::thread::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<crate::Result<()>>,
)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("imstore-final-flush".into())
        .spawn(move || {
            let closed = store.close_in_place();
            let _ = tx.send(closed);
            drop(store);
        })?;
    Ok((thread, rx))
}

/// The close's result if it comes within `limit`; else an error saying it was left behind.
async fn closed_within(
    closed: tokio::sync::oneshot::Receiver<crate::Result<()>>,
    limit: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match tokio::time::timeout(limit, closed).await {
        Ok(Ok(closed)) => Ok(closed?),
        Ok(Err(_)) => Err("the journal's final flush panicked".into()),
        Err(_) => {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "the journal's final flush did not finish in time (a stalled disk?); \
                 leaving it: what was acknowledged is durable, cursors confirmed since may repeat"
            );
            Err(format!(
                "the journal's final flush did not finish within {} s (a stalled disk?); \
                 everything acknowledged is durable, cursors confirmed since may be delivered again",
                limit.as_secs_f32()
            )
            .into())
        }
    }
}

/// How long an answer waits for what its call did or read to become durable. Past that (a
/// stalled disk) it answers 91000 rather than hold its connection without bound; the
/// operation may still take effect once the journal is written (a send retried with the same
/// MsgSeq and MsgTimeStamp then finds it).
pub(crate) const DURABLE_WAIT: Duration = Duration::from_secs(30);

/// [`Store::commit_async`] for at most [`DURABLE_WAIT`].
pub(crate) async fn durable(store: &Store, ticket: crate::CommitTicket) -> crate::Result<()> {
    durable_within(store, ticket, DURABLE_WAIT).await
}

async fn durable_within(
    store: &Store,
    ticket: crate::CommitTicket,
    limit: Duration,
) -> crate::Result<()> {
    let mut wait = {
        let store = store.clone();
        Box::pin(async move { store.commit_async(ticket).await })
    };
    match tokio::time::timeout(limit, wait.as_mut()).await {
        Ok(done) => done,
        Err(_) => {
            // The wait goes on without the caller — what runs once the call is durable (the
            // store's after-hooks) still runs — and until it ends the store takes no new call.
            let stalled = Stalled::begin(store);
            tokio::spawn(async move {
                let _ = wait.await;
                drop(stalled);
            });
            Err(crate::Error::Internal(format!(
                "what the call did is not yet on disk after {} s (the disk is stalled); it may \
                 still take effect",
                limit.as_secs_f32()
            )))
        }
    }
}

/// Stores with an answer that waited out [`DURABLE_WAIT`] and is still not durable, and how
/// many such answers each has; `STALLED_ANY` counts them all, so that the common case — none —
/// costs one atomic load.
static STALLED: std::sync::LazyLock<parking_lot::Mutex<std::collections::HashMap<usize, usize>>> =
    std::sync::LazyLock::new(Default::default);
static STALLED_ANY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One answer of a store that waited out [`DURABLE_WAIT`], while its wait goes on. It holds
/// the store, so that no other store takes its address (its id) meanwhile.
struct Stalled(Store);

impl Stalled {
    fn begin(store: &Store) -> Stalled {
        use std::sync::atomic::Ordering;
        *STALLED.lock().entry(store.id()).or_insert(0) += 1;
        STALLED_ANY.fetch_add(1, Ordering::AcqRel);
        Stalled(store.clone())
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let mut stalled = STALLED.lock();
        if let Some(n) = stalled.get_mut(&self.0.id()) {
            *n -= 1;
            if *n == 0 {
                stalled.remove(&self.0.id());
            }
        }
        STALLED_ANY.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Refuses a call (91000, nothing applied) while an answer of `store` has waited out
/// [`DURABLE_WAIT`] and is still not durable: a stalled disk is not given more and more
/// operations to hold in memory by clients that retry.
pub(crate) fn refuse_if_stalled(store: &Store) -> crate::Result<()> {
    use std::sync::atomic::Ordering;
    if STALLED_ANY.load(Ordering::Acquire) == 0 || !STALLED.lock().contains_key(&store.id()) {
        return Ok(());
    }
    Err(crate::Error::Internal(format!(
        "the disk has not written what it was given for {} s; nothing was done",
        DURABLE_WAIT.as_secs()
    )))
}

/// Purges expired history and inbox entries and forgets idle devices, every `interval`. It
/// journals only what it removes: an idle server writes nothing.
async fn purge_loop(store: Store, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = every.tick() => {}
        }
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.purge_expired()).await {
            Ok(Ok(r)) => tracing::debug!(
                messages = r.messages,
                inbox_entries = r.inbox_entries,
                devices = r.devices,
                "purge ran"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "purge failed"),
            Err(e) => tracing::warn!(error = %e, "purge task failed"),
        }
    }
}

/// Resolves at SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// it is first polled: a signal that arrives before the server waits for it (right after
/// `listening on`, say) still shuts it down gracefully instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use super::*;
    use crate::{MsgElement, SendRequest};

    /// A stalled disk: an answer waits a bounded time, then says 91000, and the store takes no
    /// new call until the disk moves again — and the operation, applied in memory, takes
    /// effect once the journal is written after all.
    #[tokio::test]
    async fn an_answer_waits_a_bounded_time_for_a_stalled_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Config::default()).unwrap();
        store.import_accounts(&["a", "b"]).unwrap();
        let gate = &store.faults().unwrap().hold_fsync;
        gate.close();
        let req = SendRequest::new("a", "b", 1, vec![MsgElement::text("stalled")]);
        let (sent, ticket) = store.deferring(|| store.send(req));
        let sent = sent.unwrap();
        let waited = durable_within(&store, ticket, Duration::from_millis(200)).await;
        assert_eq!(waited.unwrap_err().code(), 91000);
        // Until that wait ends, the store takes no new call; another store does.
        assert_eq!(refuse_if_stalled(&store).unwrap_err().code(), 91000);
        let other = Store::in_memory(Config::default()).unwrap();
        refuse_if_stalled(&other).unwrap();
        gate.open();
        for _ in 0..1000 {
            if refuse_if_stalled(&store).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        refuse_if_stalled(&store).unwrap();
        let q = crate::HistoryQuery::new("a", "b", 10);
        let (page, ticket) = store.deferring(|| store.history(&q));
        durable(&store, ticket).await.unwrap();
        let page = page.unwrap();
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].message.key, sent.msg_key);
    }

    /// Shutdown's final flush on a stalled disk: given up after its limit with an error that
    /// says so, not waited for; once the disk moves the abandoned flush completes by itself.
    #[tokio::test]
    async fn the_final_flush_waits_a_bounded_time_for_a_stalled_disk() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::default().with_sync(SyncPolicy::Group);
        let store = Store::open(dir.path(), config.clone()).unwrap();
        store.import_accounts(&["a", "b"]).unwrap();
        let gate = &store.faults().unwrap().hold_fsync;
        gate.close();
        // Applied in memory, not yet durable: what the final flush has to write.
        let req = SendRequest::new("a", "b", 1, vec![MsgElement::text("pending")]);
        let (sent, _ticket) = store.deferring(|| store.send(req));
        let sent = sent.unwrap();
        let (thread, closed) = close_on_thread(store.clone()).unwrap();
        let err = closed_within(closed, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("did not finish within"), "{err}");
        assert!(
            gate.wait_for_held(1, Duration::from_secs(10)),
            "the flush waits at the fsync"
        );
        gate.open();
        drop(store);
        // The abandoned close finishes by itself once the disk moves, and its thread lets go
        // of the last handle: the store reopens, with the send.
        thread.join().unwrap();
        let reopened = Store::open(dir.path(), config).unwrap();
        let page = reopened
            .history(&crate::HistoryQuery::new("a", "b", 10))
            .unwrap();
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].message.key, sent.msg_key);
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    /// An empty key signs for anybody: refused from the flag and from the data directory
    /// (what a crash while writing a first key could leave, before keys were written whole).
    #[test]
    fn an_empty_secret_key_is_refused_wherever_it_comes_from() {
        let dir = tempfile::tempdir().unwrap();
        for empty in ["", "  \n"] {
            let e = app_key(Some(empty), dir.path()).unwrap_err();
            assert!(e.to_string().contains("secret key is empty"), "{e}");
            std::fs::write(dir.path().join("secret_key"), empty).unwrap();
            let e = app_key(None, dir.path()).unwrap_err();
            assert!(e.to_string().contains("secret_key"), "{e}");
        }
    }

    /// A first start generates a key, kept whole in the data directory with no temporary file
    /// left; every later start reads the same key.
    #[test]
    fn a_generated_key_is_saved_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (key, generated) = app_key(None, dir.path()).unwrap();
        assert!(generated);
        assert_eq!(key.len(), 64);
        assert_eq!(
            files(dir.path()),
            vec!["secret_key"],
            "no temporary file left"
        );
        let (again, generated) = app_key(None, dir.path()).unwrap();
        assert_eq!((again.as_str(), generated), (key.as_str(), false));
        // A configured key wins over the file.
        assert_eq!(app_key(Some("k1"), dir.path()).unwrap().0, "k1");
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Starts at once on a fresh directory (threads here, as processes would): all end with
    /// the one key the file holds, none fails. Before, they shared one temporary file, and
    /// one could write its key into the file another had just linked into place.
    #[test]
    fn starts_at_once_agree_on_one_key() {
        for _ in 0..50 {
            let dir = tempfile::tempdir().unwrap();
            let keys: Vec<String> = std::thread::scope(|s| {
                let starts: Vec<_> = (0..6)
                    .map(|_| s.spawn(|| app_key(None, dir.path()).unwrap().0))
                    .collect();
                starts.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let saved = std::fs::read_to_string(dir.path().join("secret_key")).unwrap();
            assert!(keys.iter().all(|k| *k == saved), "{keys:?} vs {saved}");
            assert_eq!(files(dir.path()), vec!["secret_key"]);
        }
    }

    /// `--usersig` reads the key; it never makes one (a key made in the wrong directory, or
    /// beside a server given --secret-key, signs UserSigs no server accepts).
    #[test]
    fn a_usersig_is_made_only_with_a_key_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
        let e = usersig_for(&config, "administrator").unwrap_err();
        assert!(e.to_string().contains("no secret key"), "{e}");
        assert!(files(dir.path()).is_empty(), "a key was made");
        let (key, _) = app_key(None, dir.path()).unwrap();
        let sig = usersig_for(&config, "administrator").unwrap();
        assert!(usersig::verify(config.sdkappid, &key, "administrator", &sig, now()).is_ok());
        let given = ServerConfig {
            secret_key: Some("given".into()),
            ..config.clone()
        };
        let sig = usersig_for(&given, "administrator").unwrap();
        assert!(usersig::verify(config.sdkappid, "given", "administrator", &sig, now()).is_ok());
        let node = ServerConfig {
            data_dir: tempfile::tempdir().unwrap().path().to_owned(),
            cluster: Some(ClusterServerConfig {
                urls: "nats://127.0.0.1:4222".into(),
                node_id: "a".into(),
                shards: 4,
                replicas: 1,
            }),
            ..config
        };
        assert!(usersig_for(&node, "administrator").is_err());
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }
}
