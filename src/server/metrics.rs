//! What operators scrape and probe: `GET /metrics` (the Prometheus text format, from the
//! `prometheus` crate) and `GET /healthz` (200 while serving, 503 while stopping; while the
//! store is still recovering, `server::starting` answers 503 in its place).
//!
//! Cost on the hot path: a REST call adds one latency observation on a histogram resolved when
//! the server started (atomic adds) and one counter increment found in a short per-API list of
//! the error codes seen so far (a read lock, a linear scan of a few entries). The journal's
//! figures come from [`JournalObserver`], once per written batch, not per operation. What has
//! a source of truth elsewhere (outbox depth, open connections) is read at scrape time only.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `imstore_api_calls_total` | counter | `api`, `code` (ErrorCode) |
//! | `imstore_api_latency_seconds` | histogram | `api` |
//! | `imstore_devices_connected` | gauge | `transport` (`ws`, `sse`) |
//! | `imstore_connections_open` | gauge | |
//! | `imstore_journal_bytes_total` | counter | |
//! | `imstore_journal_fsync_seconds` | histogram | |
//! | `imstore_journal_batch_records` | histogram (group-commit batch sizes) | |
//! | `imstore_recovery_seconds` | gauge | |
//! | `imstore_recovery_records_replayed` | gauge | |
//! | `imstore_webhook_outbox_depth` | gauge | |
//! | `imstore_webhook_outbox_dropped_total` | counter | |
//! | `imstore_erasures_pending` | gauge | |
//! | `imstore_erasure_overdue_seconds` | gauge | |
//! | `imstore_webhook_deliveries_total` | counter | `result` (`ok`, `failed`) |
//! | `imstore_shards_owned` | gauge (1 on a single node: the whole store; a cluster node: its shards) | |
//! | `process_*` | the Prometheus client's process metrics (CPU, RSS, descriptors, threads) | |

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::RwLock;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::App;
use crate::JournalObserver;

/// Latency buckets, seconds: from a 100 µs in-memory answer to a multi-second stall.
const LATENCY: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Records per group-commit batch.
const BATCH: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// One REST API's series, resolved once.
struct ApiSeries {
    path: &'static str,
    latency: Histogram,
    /// (ErrorCode, its counter), in the order first seen.
    codes: RwLock<Vec<(u32, IntCounter)>>,
}

pub struct Metrics {
    registry: Registry,
    calls: IntCounterVec,
    apis: Vec<ApiSeries>,
    /// Calls to paths that are not APIs (answered 60010), under one label.
    other: ApiSeries,
    devices: IntGaugeVec,
    connections: IntGauge,
    journal_bytes: IntCounter,
    fsync: Histogram,
    batch: Histogram,
    recovery_seconds: Gauge,
    recovery_records: IntGauge,
    outbox_depth: IntGauge,
    outbox_dropped: IntCounter,
    erasures_pending: IntGauge,
    erasure_overdue: Gauge,
    deliveries: IntCounterVec,
    shards_owned: IntGauge,
    stopping: AtomicBool,
    /// Held while a scrape brings the counters read from elsewhere up to date, so that two
    /// concurrent scrapes do not both add the same difference. It holds, for each store served
    /// (a cluster node's shards come and go), the outbox drops already counted.
    scrape: parking_lot::Mutex<std::collections::HashMap<usize, u64>>,
}

fn registered<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let r = &registry;
        let calls = registered(
            r,
            IntCounterVec::new(
                Opts::new(
                    "imstore_api_calls_total",
                    "REST calls answered, by API and ErrorCode",
                ),
                &["api", "code"],
            )
            .expect("valid"),
        );
        let latency = registered(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "imstore_api_latency_seconds",
                    "REST call latency, from the request's arrival to its durable answer",
                )
                .buckets(LATENCY.to_vec()),
                &["api"],
            )
            .expect("valid"),
        );
        let series = |path: &'static str| ApiSeries {
            path,
            latency: latency.with_label_values(&[path]),
            codes: RwLock::new(Vec::new()),
        };
        let apis = crate::api::route_paths().map(series).collect();
        let other = series("other");
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            registered(
                r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                    .expect("valid"),
            )
        };
        let int_gauge =
            |name: &str, help: &str| registered(r, IntGauge::new(name, help).expect("valid"));
        let metrics = Metrics {
            calls,
            apis,
            other,
            devices: registered(
                r,
                IntGaugeVec::new(
                    Opts::new("imstore_devices_connected", "Devices connected now"),
                    &["transport"],
                )
                .expect("valid"),
            ),
            connections: int_gauge(
                "imstore_connections_open",
                "HTTP connections open now (REST and devices)",
            ),
            journal_bytes: registered(
                r,
                IntCounter::new(
                    "imstore_journal_bytes_total",
                    "Bytes written to the journal",
                )
                .expect("valid"),
            ),
            fsync: histogram(
                "imstore_journal_fsync_seconds",
                "How long each journal fsync took",
                LATENCY,
            ),
            batch: histogram(
                "imstore_journal_batch_records",
                "Records per journal write (group commit's batch size)",
                BATCH,
            ),
            recovery_seconds: registered(
                r,
                Gauge::new(
                    "imstore_recovery_seconds",
                    "How long opening the store (snapshot and journal replay) took",
                )
                .expect("valid"),
            ),
            recovery_records: int_gauge(
                "imstore_recovery_records_replayed",
                "Journal records replayed after the snapshot when the store opened",
            ),
            outbox_depth: int_gauge(
                "imstore_webhook_outbox_depth",
                "After-callbacks durable in the outbox and not yet delivered",
            ),
            erasures_pending: int_gauge(
                "imstore_erasures_pending",
                "Stores (1 on a single node; a cluster node's owned shards) holding on disk a \
                 body erased since their last snapshot, which one is due to take off",
            ),
            erasure_overdue: registered(
                r,
                Gauge::new(
                    "imstore_erasure_overdue_seconds",
                    "How far past its deadline (--erase-within-secs) the most overdue erasure \
                     snapshot is; 0 when none is",
                )
                .expect("valid"),
            ),
            outbox_dropped: registered(
                r,
                IntCounter::new(
                    "imstore_webhook_outbox_dropped_total",
                    "After-callbacks dropped because the outbox was full",
                )
                .expect("valid"),
            ),
            deliveries: registered(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "imstore_webhook_deliveries_total",
                        "After-callback attempts, by result (failed ones are retried)",
                    ),
                    &["result"],
                )
                .expect("valid"),
            ),
            shards_owned: int_gauge(
                "imstore_shards_owned",
                "Shards this node owns (a single node owns its whole store: 1)",
            ),
            stopping: AtomicBool::new(false),
            scrape: parking_lot::Mutex::new(Default::default()),
            registry: registry.clone(),
        };
        metrics.shards_owned.set(1);
        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics register once");
        Arc::new(metrics)
    }

    /// Counts a REST call: `path` is `/v4/service/command`.
    pub fn call(&self, path: &str, code: u32, took: Duration) {
        let series = self
            .apis
            .iter()
            .find(|s| path.strip_prefix("/v4/") == Some(s.path))
            .unwrap_or(&self.other);
        series.latency.observe(took.as_secs_f64());
        let found = series
            .codes
            .read()
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, counter)| counter.clone());
        let counter = found.unwrap_or_else(|| {
            let mut codes = series.codes.write();
            match codes.iter().find(|(c, _)| *c == code) {
                Some((_, counter)) => counter.clone(),
                None => {
                    let counter = self
                        .calls
                        .with_label_values(&[series.path, &code.to_string()]);
                    codes.push((code, counter.clone()));
                    counter
                }
            }
        });
        counter.inc();
    }

    /// A device connected over `transport`; it counts until the guard is dropped.
    pub fn device(&self, transport: &'static str) -> DeviceGauge {
        let gauge = self.devices.with_label_values(&[transport]);
        gauge.inc();
        DeviceGauge(gauge)
    }

    pub fn delivered(&self, ok: bool) {
        self.deliveries
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    pub fn opened(&self, took: Duration, records_replayed: u64) {
        self.recovery_seconds.set(took.as_secs_f64());
        self.recovery_records
            .set(i64::try_from(records_replayed).unwrap_or(i64::MAX));
    }

    /// From now on `/healthz` answers 503: the server is shutting down.
    /// A cluster node's count of the shards it owns now.
    #[cfg(feature = "cluster")]
    pub fn set_shards_owned(&self, n: usize) {
        self.shards_owned.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The text format, with what is read at scrape time brought up to date.
    fn render(&self, app: &App) -> String {
        let mut counted = self.scrape.lock();
        let now = std::time::Instant::now();
        let stores = app.stores();
        let dues = stores.iter().filter_map(|s| s.erasure_due());
        let (pending, overdue) = dues.fold((0i64, 0f64), |(n, worst), due| {
            let late = now.saturating_duration_since(due).as_secs_f64();
            (n + 1, worst.max(late))
        });
        self.erasures_pending.set(pending);
        self.erasure_overdue.set(overdue);
        // Every store's outbox: a cluster node's are its shards' (its front store queues
        // nothing). Drops are counted per store: a single node's since it opened; a shard's
        // from when this node first saw it (what it replayed was counted by the node that
        // owned it then). A shard that left is forgotten, and one that comes back is new.
        let shards = app.is_cluster_node();
        let mut depth = 0usize;
        let mut seen = std::collections::HashMap::with_capacity(stores.len());
        for store in &stores {
            let (queued, dropped) = store.outbox_len();
            depth += queued;
            let first_sight = if shards { dropped } else { 0 };
            let before = counted.get(&store.id()).copied().unwrap_or(first_sight);
            self.outbox_dropped.inc_by(dropped.saturating_sub(before));
            seen.insert(store.id(), dropped.max(before));
        }
        *counted = seen;
        self.outbox_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.connections
            .set(i64::try_from(app.register.open()).unwrap_or(i64::MAX));
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// Counts one connected device while it lives.
pub struct DeviceGauge(IntGauge);

impl Drop for DeviceGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The journal's batches, into the histograms.
pub struct JournalMetrics(pub Arc<Metrics>);

impl JournalObserver for JournalMetrics {
    fn batch_written(&self, records: usize, bytes: usize, fsync: Option<Duration>) {
        let m = &self.0;
        m.journal_bytes.inc_by(bytes as u64);
        m.batch.observe(records as f64);
        if let Some(took) = fsync {
            m.fsync.observe(took.as_secs_f64());
        }
    }
}

/// `GET /metrics`.
pub async fn metrics(State(app): State<App>) -> Response {
    let text = app.metrics.render(&app);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /healthz`: 200 while serving, 503 once shutdown has begun.
pub async fn healthz(State(app): State<App>) -> Response {
    health_response(!app.metrics.stopping(), "stopping")
}

/// The health answer: `{"status":"serving"}` with 200, or `{"status":why}` with 503.
pub fn health_response(serving: bool, why: &str) -> Response {
    let (status, body) = if serving {
        (StatusCode::OK, "{\"status\":\"serving\"}".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{{\"status\":\"{why}\"}}"),
        )
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
