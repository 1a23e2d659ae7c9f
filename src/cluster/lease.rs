//! Shard ownership leases in the KV bucket `imstore_leases` (history 1): key `shard.<n>`, value
//! `{"node":..,"epoch":..,"expires_ms":..}`. Taken with `create` (no key yet) or with
//! compare-and-swap on the revision (the holder's lease has expired, or the holder is this
//! node), which raises the epoch; renewed by the holder with compare-and-swap every
//! `renew_every`, each renewal moving `expires_ms` to now + `lease_ttl`.
//!
//! Expiry is a deadline in the value, checked by the taker against its own clock, rather than
//! the bucket's `max_age`: the key (and with it the epoch) never disappears, so epochs only
//! grow, and a lease's holder, deadline and epoch are one atomic value. Clocks decide only
//! liveness — when a taker may try. Safety does not rest on them: a new owner first appends
//! an ownership marker, after which no append of an earlier owner (each carries
//! `Nats-Expected-Last-Sequence`) is acknowledged, whatever its clock says (see `journal.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

pub(crate) const BUCKET: &str = "imstore_leases";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Value {
    pub node: String,
    pub epoch: u64,
    pub expires_ms: u64,
}

pub(crate) fn key(shard: u32) -> String {
    format!("shard.{shard}")
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A lease this node holds: its epoch and the bucket revision of its last write.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub epoch: u64,
    pub revision: u64,
    pub expires_ms: u64,
}

/// Why a lease could not be taken.
#[derive(Debug)]
pub(crate) enum TakeError {
    /// Another node holds it until `expires_ms`.
    Held {
        node: String,
        expires_ms: u64,
    },
    /// Written by someone else between reading and writing: read again.
    Conflict,
    Nats(String),
}

/// Reads a lease: its value and revision, `None` when there is none.
pub(crate) async fn read(kv: &kv::Store, shard: u32) -> Result<Option<(Value, u64)>, String> {
    let entry = kv.entry(key(shard)).await.map_err(|e| e.to_string())?;
    match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            let v: Value = serde_json::from_slice(&e.value)
                .map_err(|err| format!("lease of shard {shard} unreadable: {err}"))?;
            Ok(Some((v, e.revision)))
        }
        _ => Ok(None),
    }
}

/// Takes the lease of `shard` for `node` if nobody else holds it.
pub(crate) async fn take(
    kv: &kv::Store,
    shard: u32,
    node: &str,
    ttl: Duration,
) -> Result<Held, TakeError> {
    // A conflict means another node wrote the lease between our read and our write: read it
    // again (it now names that node, unexpired).
    let mut tries = 0;
    loop {
        tries += 1;
        match take_once(kv, shard, node, ttl).await {
            Err(TakeError::Conflict) if tries < 3 => continue,
            Err(TakeError::Conflict) => {
                return Err(TakeError::Nats(format!(
                    "the lease of shard {shard} keeps changing"
                )));
            }
            other => return other,
        }
    }
}

async fn take_once(
    kv: &kv::Store,
    shard: u32,
    node: &str,
    ttl: Duration,
) -> Result<Held, TakeError> {
    let nats = |e: String| TakeError::Nats(e);
    let current = read(kv, shard).await.map_err(nats)?;
    let now = now_ms();
    let expires_ms = now + ttl.as_millis() as u64;
    match current {
        None => {
            let v = Value {
                node: node.to_owned(),
                epoch: 1,
                expires_ms,
            };
            let rev = kv
                .create(
                    key(shard),
                    serde_json::to_vec(&v).expect("plain JSON").into(),
                )
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => TakeError::Conflict,
                    _ => TakeError::Nats(format!("taking the lease of shard {shard}: {e}")),
                })?;
            Ok(Held {
                epoch: 1,
                revision: rev,
                expires_ms,
            })
        }
        Some((v, rev)) => {
            if v.node != node && v.expires_ms > now {
                return Err(TakeError::Held {
                    node: v.node,
                    expires_ms: v.expires_ms,
                });
            }
            let epoch = v.epoch + 1;
            let v = Value {
                node: node.to_owned(),
                epoch,
                expires_ms,
            };
            let rev = kv
                .update(
                    key(shard),
                    serde_json::to_vec(&v).expect("plain JSON").into(),
                    rev,
                )
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => TakeError::Conflict,
                    _ => TakeError::Nats(format!("taking the lease of shard {shard}: {e}")),
                })?;
            Ok(Held {
                epoch,
                revision: rev,
                expires_ms,
            })
        }
    }
}

/// Why a renewal failed.
pub(crate) enum RenewError {
    /// Another node took the lease.
    Lost(String),
    /// The bucket did not answer; the lease may still be ours.
    Nats(String),
}

/// Renews a held lease by compare-and-swap; on success `held` has the new revision and
/// deadline. A renewal whose answer was lost but which was written is recognised.
pub(crate) async fn renew(
    kv: &kv::Store,
    shard: u32,
    node: &str,
    held: &mut Held,
    ttl: Duration,
) -> Result<(), RenewError> {
    let expires_ms = now_ms() + ttl.as_millis() as u64;
    write(kv, shard, node, held, expires_ms).await
}

/// Gives a held lease up at once (its deadline set to 0), so that another node may take the
/// shard without waiting for it to expire.
pub(crate) async fn release(
    kv: &kv::Store,
    shard: u32,
    node: &str,
    held: &mut Held,
) -> Result<(), RenewError> {
    write(kv, shard, node, held, 0).await
}

async fn write(
    kv: &kv::Store,
    shard: u32,
    node: &str,
    held: &mut Held,
    expires_ms: u64,
) -> Result<(), RenewError> {
    let v = Value {
        node: node.to_owned(),
        epoch: held.epoch,
        expires_ms,
    };
    let value: bytes::Bytes = serde_json::to_vec(&v).expect("plain JSON").into();
    for _ in 0..3 {
        match kv.update(key(shard), value.clone(), held.revision).await {
            Ok(rev) => {
                held.revision = rev;
                held.expires_ms = expires_ms;
                return Ok(());
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Still ours — written by an attempt whose answer was lost, or by a renewal
                // racing this write — or someone else's?
                match read(kv, shard).await {
                    // Released (by this holder's close or failed open): a renewal still under
                    // way does not take it back. A new owner, this node too, takes a new epoch.
                    Ok(Some((cur, _)))
                        if cur.node == node
                            && cur.epoch == held.epoch
                            && cur.expires_ms == 0
                            && expires_ms != 0 =>
                    {
                        return Err(RenewError::Lost("the lease was released".into()));
                    }
                    Ok(Some((cur, rev))) if cur.node == node && cur.epoch == held.epoch => {
                        held.revision = rev;
                        held.expires_ms = cur.expires_ms;
                        if cur.expires_ms == expires_ms {
                            return Ok(());
                        }
                        // Write ours over it, at its revision.
                    }
                    Ok(Some((cur, _))) => {
                        return Err(RenewError::Lost(format!(
                            "node {} took the lease (epoch {})",
                            cur.node, cur.epoch
                        )));
                    }
                    Ok(None) => return Err(RenewError::Lost("the lease was deleted".into())),
                    Err(e) => return Err(RenewError::Nats(e)),
                }
            }
            Err(e) => return Err(RenewError::Nats(e.to_string())),
        }
    }
    Err(RenewError::Nats(format!(
        "the lease of shard {shard} keeps changing under its holder"
    )))
}
