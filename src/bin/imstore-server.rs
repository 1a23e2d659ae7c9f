//! `imstore-server`: Tencent Cloud IM's server REST API and client events over HTTP, backed by
//! a durable imstore data directory. See `imstore::server`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use imstore::SyncPolicy;
use imstore::server::{ServerConfig, run};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Sync {
    Every,
    Group,
    None,
}

/// Serve Tencent Cloud IM's server REST API (v4/openim/...) from an imstore data directory.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Data directory (created if missing).
    #[arg(long, default_value = "./imstore-data")]
    data_dir: PathBuf,
    /// The app's SDKAppID.
    #[arg(long, default_value_t = 1400000000)]
    sdkappid: u64,
    /// The app's secret key. When absent, one is generated and saved in the data directory.
    #[arg(long, env = "IMSTORE_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// An app administrator (repeatable).
    #[arg(long = "admin", default_value = "administrator")]
    admins: Vec<String>,
    /// When acknowledged operations reach the disk.
    #[arg(long, value_enum, default_value = "group")]
    sync: Sync,
    /// Calls per second allowed per API (Tencent's default is 200); unlimited when absent.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// How many verified UserSigs are remembered, each until its expiry (0: none, every call
    /// verifies its HMAC).
    #[arg(long, env = "IMSTORE_USERSIG_CACHE", default_value_t = imstore::api::USERSIG_CACHE)]
    usersig_cache: usize,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    body_limit: usize,
    /// How often expired history, inbox entries and idle devices are purged, in seconds.
    #[arg(long, default_value_t = 60, hide = true)]
    purge_interval_secs: u64,
    /// The app's callback URL: turns on Tencent's C2C webhooks (before-send, after-send,
    /// after-recall, after-read).
    #[arg(long, value_name = "URL")]
    callback_url: Option<String>,
    /// Callback authentication: each call carries Sign = sha256(TOKEN + RequestTime).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "IMSTORE_CALLBACK_TOKEN",
        hide_env_values = true
    )]
    callback_token: Option<String>,
    /// How long a before-send callback may take, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    callback_timeout_ms: u64,
    /// When a before-send callback fails or times out, refuse the message (80003) instead of
    /// delivering it.
    #[arg(long)]
    callback_fail_closed: bool,
    /// How long after sending a client may recall its own message, in seconds (20016 after).
    #[arg(long, default_value_t = 120)]
    client_recall_window_secs: u64,
    /// How soon a recalled, modified or expired body leaves the disk too, in seconds: a
    /// snapshot is taken at most this long after the first such operation since the last one
    /// (0: only after 64 MiB of journal or imstore/compact).
    #[arg(long, default_value_t = imstore::ERASE_WITHIN_SECS)]
    erase_within_secs: u64,
    /// At SIGTERM, how long /healthz answers 503 while calls are still served, so a load
    /// balancer stops sending new clients first (milliseconds, at most 2000).
    #[arg(long, default_value_t = 500)]
    drain_ms: u64,
    /// How often WebSocket clients are pinged, in seconds (one silent for three is dropped).
    #[arg(long, default_value_t = 30, hide = true)]
    ws_ping_secs: u64,
    /// How long data sent to a client may go unread before its connection is dropped, in
    /// seconds.
    #[arg(long, default_value_t = 90, hide = true)]
    unread_timeout_secs: u64,
    /// Disk space the journal reserves ahead of its writes, in bytes.
    #[arg(long, default_value_t = 4 << 20, hide = true)]
    journal_prealloc: u64,
    /// Run as a node of a cluster on NATS JetStream (needs the `cluster` feature): the NATS
    /// servers, comma-separated. Every node needs the same --secret-key; --data-dir is unused.
    #[arg(long, value_name = "nats://H:P[,nats://H:P...]", requires = "node_id")]
    cluster: Option<String>,
    /// This node's name in the cluster (letters, digits, '-', '_'; unique, and the same
    /// across restarts: a restarted node takes back what it held). Required with --cluster: a
    /// default made from the process id would be the same on every node in containers (PID
    /// 1) and another after every restart.
    #[arg(long, value_name = "NAME", requires = "cluster")]
    node_id: Option<String>,
    /// Shards of the cluster, fixed when it is created.
    #[arg(long, default_value_t = 64, requires = "cluster")]
    shards: u32,
    /// Replicas of each shard's stream and of the buckets (at most the number of NATS nodes).
    #[arg(long, default_value_t = 3, requires = "cluster")]
    replicas: usize,
    /// Open the data directory even if its journal is damaged before its end: the journal is
    /// cut at the first damaged record (everything after it is lost) and the cut reported.
    /// Without it, such a journal stops the start with the place of the damage.
    #[arg(long)]
    repair: bool,
    /// Print a UserSig for IDENTIFIER (valid 180 days, made with the app's secret key) and exit,
    /// without starting the server.
    #[arg(long, value_name = "IDENTIFIER")]
    usersig: Option<String>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMSTORE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args_usersig = args.usersig.clone();
    let config = ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        sdkappid: args.sdkappid,
        secret_key: args.secret_key,
        admins: args.admins,
        sync: match args.sync {
            Sync::Every => SyncPolicy::Every,
            Sync::Group => SyncPolicy::Group,
            Sync::None => SyncPolicy::None,
        },
        rate_limit: args.rate_limit,
        usersig_cache: args.usersig_cache,
        body_limit: args.body_limit,
        purge_interval: std::time::Duration::from_secs(args.purge_interval_secs.max(1)),
        journal_prealloc: args.journal_prealloc,
        ws_ping: std::time::Duration::from_secs(args.ws_ping_secs.max(1)),
        unread_timeout: std::time::Duration::from_secs(args.unread_timeout_secs.max(1)),
        webhooks: args.callback_url.map(|url| imstore::server::WebhookConfig {
            url,
            token: args.callback_token,
            timeout: std::time::Duration::from_millis(args.callback_timeout_ms.max(1)),
            fail_closed: args.callback_fail_closed,
        }),
        client_recall_window_secs: args.client_recall_window_secs,
        erase_within_secs: args.erase_within_secs,
        repair: args.repair,
        drain: std::time::Duration::from_millis(args.drain_ms.min(2000)),
        cluster: args
            .cluster
            .map(|urls| imstore::server::ClusterServerConfig {
                urls,
                node_id: args.node_id.expect("clap: --cluster requires --node-id"),
                shards: args.shards,
                replicas: args.replicas,
            }),
    };
    if let Some(identifier) = &args_usersig {
        return match imstore::server::usersig_for(&config, identifier) {
            Ok(sig) => {
                println!("{sig}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("imstore-server: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // A fixed, small set of threads: one async worker per core, a few for blocking work
    // (compaction, purge, startup), plus the store's committer and snapshot threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(run(config));
    // Do not wait for a blocking task still running (a recovery abandoned at SIGTERM).
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imstore-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
