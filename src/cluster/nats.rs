//! The JetStream side of a node: the buckets it uses, a shard's stream, its last sequence,
//! and reading a stream in order for a replay (consumers replaced when one stalls).

use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, object_store, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{
    ClusterConfig, ClusterError, ClusterInner, META_BUCKET, SNAPSHOT_BUCKET, accounts, journal,
    lease, nats, stream_name, subjects,
};
use crate::error::Error;
use crate::journal::OpenError;

/// A stream message being replayed: sequence, Msg-Id, the framed record.
pub(super) type Record = (u64, Option<String>, Bytes);

pub(super) fn open_nats(e: impl fmt::Display) -> OpenError {
    OpenError::Config(Error::Internal(format!("NATS: {e}")))
}

/// An ownership marker: `node epoch`, framed like any record.
pub(super) fn marker(node: &str, epoch: u64) -> Bytes {
    let mut frame = Vec::new();
    crate::journal::push_frame(&mut frame, journal::KIND_OWNER, |b| {
        b.extend_from_slice(format!("{node} {epoch}").as_bytes())
    });
    Bytes::from(frame)
}

/// The buckets a node uses, created if missing, and the shard count checked.
pub(super) async fn setup(
    js: &jetstream::Context,
    cfg: &ClusterConfig,
) -> Result<(kv::Store, kv::Store, object_store::ObjectStore, kv::Store), ClusterError> {
    let leases = bucket(js, lease::BUCKET, cfg.replicas).await?;
    let accounts = bucket(js, accounts::BUCKET, cfg.replicas).await?;
    let meta = bucket(js, META_BUCKET, cfg.replicas).await?;
    if js.get_object_store(SNAPSHOT_BUCKET).await.is_err() {
        js.create_object_store(object_store::Config {
            bucket: SNAPSHOT_BUCKET.to_owned(),
            num_replicas: cfg.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| nats(format!("creating bucket {SNAPSHOT_BUCKET}: {e}")))?;
    }
    // An object's description is read by a direct get where the stream allows it (the
    // client makes the bucket so): answered by a replica that may not have the snapshot
    // another node just stored. Leader reads, as for the key-value buckets.
    let objects = js
        .get_stream(format!("OBJ_{SNAPSHOT_BUCKET}"))
        .await
        .map_err(|e| nats(format!("opening bucket {SNAPSHOT_BUCKET}: {e}")))?;
    leader_reads(js, objects.cached_info()).await?;
    let snapshots = js
        .get_object_store(SNAPSHOT_BUCKET)
        .await
        .map_err(|e| nats(format!("opening bucket {SNAPSHOT_BUCKET}: {e}")))?;
    let shards = cfg.shards.to_string();
    match meta.create("shards", shards.clone().into()).await {
        Ok(_) => {}
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let have = meta.get("shards").await.map_err(nats)?.unwrap_or_default();
            if have != shards.as_bytes() {
                return Err(ClusterError::Config(format!(
                    "the cluster was created with {} shards, not {shards}",
                    String::from_utf8_lossy(&have)
                )));
            }
        }
        Err(e) => return Err(nats(e)),
    }
    Ok((leases, accounts, snapshots, meta))
}

/// Runs `f` until it succeeds, fails for another reason than NATS, or `within` has passed.
pub(super) async fn with_retry<T, Fut>(
    within: Duration,
    mut f: impl FnMut() -> Fut,
) -> Result<T, ClusterError>
where
    Fut: Future<Output = Result<T, ClusterError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Err(ClusterError::Nats(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

/// Opens KV bucket `name`, creating its stream if missing. The stream is created here, with the
/// configuration a KV bucket has (ADR-8), rather than by `create_key_value`, which first asks
/// for the account's information in a form nats-server 2.9 does not answer.
///
/// **Reads follow writes.** A bucket's stream has `allow_direct` off, so every read is answered
/// by the stream's leader, which has applied every acknowledged write. With it on (the ADR-8
/// default), any replica answers a read, and one that lags does not yet have an account another
/// node has just imported, or still shows a released lease as held. A bucket created by an older
/// version with it on is switched off here.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    if let Ok(kv) = js.get_key_value(name).await {
        if !leader_reads(js, kv.stream.cached_info()).await? {
            return Ok(kv);
        }
        return js
            .get_key_value(name)
            .await
            .map_err(|e| ClusterError::Nats(format!("opening bucket {name}: {e}")));
    }
    let created = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: false,
            max_bytes: -1,
            max_messages: -1,
            max_message_size: -1,
            duplicate_window: super::DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await;
    if let Err(e) = created {
        return Err(ClusterError::Nats(format!("creating bucket {name}: {e}")));
    }
    js.get_key_value(name)
        .await
        .map_err(|e| ClusterError::Nats(format!("opening bucket {name}: {e}")))
}

/// Every live key of a bucket with its value, each as of a moment during the call — so after
/// any write acknowledged before it, made on any node.
///
/// A listing reads the bucket from a consumer, which nats-server places on any replica (an
/// ephemeral consumer of a limits stream is R1 on a random peer); `kv::Store::keys` stops
/// once that replica has nothing pending, so a lagging replica answers a stale list. Here:
/// 1. the stream's leader says how far the bucket goes (its last sequence), and the consumer
///    is read until it has passed that sequence, however far behind its replica started;
/// 2. a key written again while it was read lost its earlier message (a bucket keeps one a
///    key) and may have gone unseen: the leader's list of the keys it holds names them, and
///    each is read from the leader.
///
/// (Reading on until the replica has nothing pending is no answer: under steady writes it
/// may never happen, and nats-server 2.9 counts a last-per-subject consumer's pending short,
/// so the listing missed keys being rewritten in a test.) A reading that fails or takes
/// longer than [`LISTING_TRY`] is begun again, [`LISTING_TRIES`] times at most.
pub(super) async fn current_entries(
    kv: &kv::Store,
) -> Result<std::collections::BTreeMap<String, Bytes>, String> {
    tries(LISTING_TRIES, LISTING_TRY, || read_entries(kv))
        .await
        .map_err(|e| format!("listing {}: {e}", kv.name))
}

/// Runs `f` up to `n` times, each bounded by `within`, until it succeeds (a quarter second
/// between tries): for reads that a lagging replica can fail, which a new try may not meet.
/// The last failure when none succeeds.
pub(super) async fn tries<T, Fut>(
    n: usize,
    within: Duration,
    mut f: impl FnMut() -> Fut,
) -> Result<T, String>
where
    Fut: Future<Output = Result<T, String>>,
{
    let mut failed = String::from("not tried");
    for i in 0..n {
        if i > 0 {
            tracing::debug!(error = %failed, "reading again");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        match tokio::time::timeout(within, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => failed = e,
            Err(_) => failed = format!("no end within {within:?}"),
        }
    }
    Err(failed)
}

/// How long one reading of [`current_entries`] may take.
const LISTING_TRY: Duration = Duration::from_secs(30);
/// How many readings [`current_entries`] makes at most.
const LISTING_TRIES: usize = 3;

async fn read_entries(kv: &kv::Store) -> Result<std::collections::BTreeMap<String, Bytes>, String> {
    let mut stream = kv.stream.clone();
    let last = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let mut entries = std::collections::BTreeMap::new();
    if last == 0 {
        return Ok(entries);
    }
    // 1. The last value of every key, in stream order, then every later write as it lands.
    let mut seen = std::collections::HashSet::new();
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let Some(entry) = watch.next().await else {
            return Err("the consumer ended".into());
        };
        let entry = entry.map_err(|e| e.to_string())?;
        let seq = entry.revision;
        seen.insert(entry.key.clone());
        match entry.operation {
            kv::Operation::Put => entries.insert(entry.key, entry.value),
            kv::Operation::Delete | kv::Operation::Purge => entries.remove(&entry.key),
        };
        if seq >= last {
            break;
        }
    }
    drop(watch);
    // 2. Keys the leader holds that the reading did not see: written again meanwhile.
    let prefix = format!("$KV.{}.", kv.name);
    let mut subjects = stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(|e| e.to_string())?;
    let mut unseen = Vec::new();
    while let Some(subject) = subjects.next().await {
        let (subject, _) = subject.map_err(|e| e.to_string())?;
        if let Some(key) = subject.strip_prefix(&prefix)
            && !seen.contains(key)
        {
            unseen.push(key.to_owned());
        }
    }
    for key in unseen {
        if let Some(e) = kv.entry(&key).await.map_err(|e| e.to_string())?
            && e.operation == kv::Operation::Put
        {
            entries.insert(key, e.value);
        }
    }
    Ok(entries)
}

/// Switches the stream of a bucket made with direct reads (`info`) to reads answered by its
/// leader (see [`bucket`]); whether it did, so that the caller opens the bucket again (a
/// bucket's handle decides how to read from the configuration it was opened with).
async fn leader_reads(js: &jetstream::Context, info: &stream::Info) -> Result<bool, ClusterError> {
    if !info.config.allow_direct {
        return Ok(false);
    }
    let config = stream::Config {
        allow_direct: false,
        ..info.config.clone()
    };
    js.update_stream(&config)
        .await
        .map_err(|e| ClusterError::Nats(format!("updating stream {}: {e}", config.name)))?;
    Ok(true)
}

pub(super) async fn shard_stream(
    js: &jetstream::Context,
    n: u32,
    replicas: usize,
) -> Result<(), ClusterError> {
    js.get_or_create_stream(stream::Config {
        name: stream_name(n),
        subjects: vec![subjects(n)],
        num_replicas: replicas,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        deny_delete: true,
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::Nats(format!("stream {}: {e}", stream_name(n))))?;
    Ok(())
}

pub(super) async fn stream_last(js: &jetstream::Context, n: u32) -> Result<(u64, u64), String> {
    let mut s = js
        .get_stream(stream_name(n))
        .await
        .map_err(|e| e.to_string())?;
    let state = &s.info().await.map_err(|e| e.to_string())?.state;
    Ok((state.first_sequence, state.last_sequence))
}

/// Sends the messages of shard `n`'s stream after `from` up to `to` down `tx`, in order, with
/// an ordered consumer.
///
/// A consumer that hands over nothing for a quarter of `idle` is replaced by a new one that
/// starts at the next sequence not yet sent. (The ordered consumer mends a stalled pull by
/// itself only after missing two of its 15-second idle heartbeats, past `idle`: a replay
/// once failed that way in CI, its stream whole and its server up.) A consumer that cannot be
/// made (the stream between leaders) is asked for again. The read fails only when no message
/// at all came for `idle`, through however many consumers.
///
/// `stall_after` (fault injection; 0: off): the first consumer hands over nothing after that
/// many records.
pub(super) async fn read_stream(
    inner: &ClusterInner,
    n: u32,
    (from, to): (u64, u64),
    stall_after: u64,
    tx: &mpsc::SyncSender<Result<Record, String>>,
) -> Result<(), String> {
    let (mut stall_at, mut sent) = ((stall_after > 0).then_some(stall_after), 0u64);
    let s = inner
        .js
        .get_stream_no_info(stream_name(n))
        .await
        .map_err(|e| e.to_string())?;
    let idle = inner.config.publish_retry;
    let stall = idle / 4;
    let mut next = from + 1;
    let mut progress = Instant::now();
    // Bounded: each round either sends a message (and `next` moves towards `to`) or spends
    // `stall` of the `idle` that ends the read.
    loop {
        let open = async {
            let consumer = s
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: next,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            consumer.messages().await.map_err(|e| e.to_string())
        };
        let left = idle.saturating_sub(progress.elapsed());
        let mut messages = match tokio::time::timeout(left, open).await {
            Ok(Ok(messages)) => messages,
            // The stream may be between leaders, say: try again while `idle` lasts.
            Ok(Err(e)) if progress.elapsed() < idle => {
                tracing::warn!("stream {}: a consumer at {next}: {e}", stream_name(n));
                tokio::time::sleep(Duration::from_millis(250).min(left)).await;
                continue;
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(format!(
                    "no consumer of stream {} for {idle:?}",
                    stream_name(n)
                ));
            }
        };
        loop {
            let left = idle.saturating_sub(progress.elapsed());
            if left.is_zero() {
                return Err(format!(
                    "no message from stream {} for {idle:?}",
                    stream_name(n)
                ));
            }
            let got = if stall_at == Some(sent) {
                // The injected stall: this consumer's next message never comes.
                stall_at = None;
                tokio::time::sleep(left.min(stall)).await;
                None
            } else {
                tokio::time::timeout(left.min(stall), messages.next())
                    .await
                    .ok()
            };
            // No message for `stall`, or the consumer failed (then after a pause, so that a
            // consumer failing at once is not made again and again): read on with a new one.
            let why = match got {
                None => format!("no message for {stall:?}"),
                Some(None) => {
                    tokio::time::sleep(Duration::from_millis(250).min(left)).await;
                    "the consumer ended".to_owned()
                }
                Some(Some(Err(e))) => {
                    tokio::time::sleep(Duration::from_millis(250).min(left)).await;
                    e.to_string()
                }
                Some(Some(Ok(m))) => {
                    let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
                    // Sent already, by this consumer before it recreated itself or by the one
                    // before.
                    if seq < next {
                        continue;
                    }
                    if seq > to {
                        return Ok(());
                    }
                    let msg_id = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                        .map(|v| v.as_str().to_owned());
                    match tx.try_send(Ok((seq, msg_id, m.payload.clone()))) {
                        Ok(()) => {}
                        // The replaying thread is behind: wait for it without stalling the
                        // runtime.
                        Err(mpsc::TrySendError::Full(item)) => {
                            if tokio::task::block_in_place(|| tx.send(item)).is_err() {
                                return Ok(());
                            }
                        }
                        Err(mpsc::TrySendError::Disconnected(_)) => return Ok(()),
                    }
                    if seq == to {
                        return Ok(());
                    }
                    (next, progress, sent) = (seq + 1, Instant::now(), sent + 1);
                    continue;
                }
            };
            inner
                .replay_consumers_replaced
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "stream {}: {why} at sequence {next} of {to}: reading on with a new consumer",
                stream_name(n)
            );
            break;
        }
    }
}
