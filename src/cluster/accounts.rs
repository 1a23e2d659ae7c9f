//! Accounts of a cluster: the replicated KV bucket `imstore_accounts`, which every node reads.
//! Key `u.` + the UserID's UTF-8 bytes in lowercase hex (KV keys allow only a few characters;
//! a UserID may be any UTF-8 without control characters), value the UserID itself.
//!
//! A shard's `Store` keeps its own account records (inboxes, devices, unread counts of the
//! conversations in that shard). `Shard::ensure_accounts` imports an account into a shard —
//! an `ImportAccount` operation in the shard's stream — the first time the shard needs it and
//! the bucket has it.

use std::fmt::Write;

use async_nats::jetstream::kv;

use crate::account::check_user_id;
use crate::error::{Error, Result};

pub(crate) const BUCKET: &str = "imstore_accounts";

pub(crate) fn key(user: &str) -> String {
    let mut k = String::with_capacity(2 + 2 * user.len());
    k.push_str("u.");
    for b in user.as_bytes() {
        let _ = write!(k, "{b:02x}");
    }
    k
}

fn nats(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("the accounts bucket: {e}"))
}

pub(crate) async fn import(kv: &kv::Store, user: &str) -> Result<()> {
    check_user_id(user)?;
    kv.put(key(user), user.as_bytes().to_vec().into())
        .await
        .map_err(nats)?;
    Ok(())
}

pub(crate) async fn exists(kv: &kv::Store, user: &str) -> Result<bool> {
    if check_user_id(user).is_err() {
        return Ok(false);
    }
    Ok(kv.get(key(user)).await.map_err(nats)?.is_some())
}

pub(crate) async fn delete(kv: &kv::Store, user: &str) -> Result<()> {
    if !exists(kv, user).await? {
        return Err(Error::AccountNotFound(user.to_owned()));
    }
    kv.delete(key(user)).await.map_err(nats)
}

pub(crate) async fn list(kv: &kv::Store) -> Result<Vec<String>> {
    // Every account as of this call, also one imported through another node a moment ago.
    let mut users: Vec<String> = super::nats::current_entries(kv)
        .await
        .map_err(nats)?
        .into_keys()
        .filter_map(|k| k.strip_prefix("u.").and_then(unhex))
        .collect();
    users.sort();
    Ok(users)
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_valid_kv_keys_and_round_trip() {
        for name in ["vinson", "a.b c", "用户", "x-_=/"] {
            let k = super::key(name);
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
            );
            assert_eq!(super::unhex(&k[2..]).as_deref(), Some(name));
        }
    }
}
