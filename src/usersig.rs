//! UserSig: Tencent's TLSSigAPIv2 credentials. A UserSig is the JSON document
//! `{"TLS.ver":"2.0","TLS.identifier",…,"TLS.sdkappid",…,"TLS.time",…,"TLS.expire",…,"TLS.sig",…}`,
//! zlib-compressed and base64-encoded with `+`→`*`, `/`→`-`, `=`→`_`, where `TLS.sig` is the
//! base64 HMAC-SHA256, keyed with the app's secret key, of
//! `TLS.identifier:…\nTLS.sdkappid:…\nTLS.time:…\nTLS.expire:…\n` (and `TLS.userbuf:…\n` when
//! the document carries one).

use std::hash::BuildHasher;
use std::io::Read;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use parking_lot::Mutex;
use serde_json::Value;

use crate::error::Error;
use crate::hash::{HashMap, RandomState};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The most a UserSig may inflate to; a real one is a few hundred bytes.
const MAX_DOC_BYTES: u64 = 4096;

/// The longest UserSig read: the largest document, compressed (zlib adds a few bytes to what
/// does not compress), in base64. A longer one is refused (70003) before it is decoded or
/// cached, so that the cache's bound on entries is a bound on bytes too.
const MAX_SIG_CHARS: usize = 6144;

/// What a valid UserSig says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// TLS.identifier.
    pub identifier: String,
    /// TLS.time: when it was issued, Unix seconds.
    pub issued_at: u64,
    /// TLS.expire: seconds it is valid for after `issued_at`.
    pub expire: u64,
}

fn content_to_sign(
    identifier: &str,
    sdkappid: u64,
    time: u64,
    expire: i64,
    userbuf: Option<&str>,
) -> String {
    let mut s = format!(
        "TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{time}\nTLS.expire:{expire}\n"
    );
    if let Some(u) = userbuf {
        s.push_str(&format!("TLS.userbuf:{u}\n"));
    }
    s
}

fn mac(key: &str, content: &str) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(content.as_bytes());
    mac
}

/// Issues a UserSig for `identifier`, valid for `expire` seconds from `now`.
///
/// ```
/// let sig = imstore::usersig::generate(1400000000, "secret", "administrator", 86400, 1_700_000_000);
/// let ok = imstore::usersig::verify(1400000000, "secret", "administrator", &sig, 1_700_000_001).unwrap();
/// assert_eq!(ok.identifier, "administrator");
/// ```
pub fn generate(sdkappid: u64, key: &str, identifier: &str, expire: u64, now: u64) -> String {
    let sig = STANDARD.encode(
        mac(
            key,
            &content_to_sign(
                identifier,
                sdkappid,
                now,
                i64::try_from(expire).unwrap_or(i64::MAX),
                None,
            ),
        )
        .finalize()
        .into_bytes(),
    );
    let doc = serde_json::json!({
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdkappid,
        "TLS.expire": expire,
        "TLS.time": now,
        "TLS.sig": sig,
    });
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, doc.to_string().as_bytes())
        .expect("writing to a Vec cannot fail");
    let compressed = z.finish().expect("writing to a Vec cannot fail");
    STANDARD
        .encode(compressed)
        .replace('+', "*")
        .replace('/', "-")
        .replace('=', "_")
}

/// Checks `usersig` for the request's `identifier` against the app's id and key at `now`.
///
/// Errors: 70003 malformed, 70014 issued for another SDKAppID, 70013 issued for another
/// identifier, 70009 wrong signature, 70001 expired — checked in that order, so that an
/// expired signature is reported as expired only when it is genuine.
pub fn verify(
    sdkappid: u64,
    key: &str,
    identifier: &str,
    usersig: &str,
    now: u64,
) -> Result<Verified, Error> {
    let malformed = |why: &str| Error::SigMalformed(why.to_owned());
    if usersig.len() > MAX_SIG_CHARS {
        return Err(malformed("too long"));
    }
    let b64 = usersig
        .replace('*', "+")
        .replace('-', "/")
        .replace('_', "=");
    let compressed = STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| malformed("not base64"))?;
    let mut doc = Vec::new();
    let mut inflate = flate2::read::ZlibDecoder::new(&compressed[..]);
    (&mut inflate)
        .take(MAX_DOC_BYTES + 1)
        .read_to_end(&mut doc)
        .map_err(|_| malformed("not zlib data"))?;
    if doc.len() as u64 > MAX_DOC_BYTES {
        return Err(malformed("too large"));
    }
    // Bytes after the zlib stream are not signed: accepted, any UserSig could be padded into
    // as many different strings as one likes, each verified and cached on its own.
    if inflate.total_in() != compressed.len() as u64 {
        return Err(malformed("data after the zlib stream"));
    }
    let doc: Value = serde_json::from_slice(&doc).map_err(|_| malformed("not JSON"))?;
    let field = |name: &str| {
        doc.get(name)
            .ok_or_else(|| malformed(&format!("no {name}")))
    };
    let number = |name: &str| {
        field(name)?
            .as_u64()
            .ok_or_else(|| malformed(&format!("{name} is not a number")))
    };
    let sig_identifier = field("TLS.identifier")?
        .as_str()
        .ok_or_else(|| malformed("TLS.identifier is not a string"))?;
    let sig_app = number("TLS.sdkappid")?;
    let time = number("TLS.time")?;
    // Tencent's generator accepts a negative expire (it signs the negative number): such a
    // UserSig is expired from the start.
    let expire = field("TLS.expire")?
        .as_i64()
        .ok_or_else(|| malformed("TLS.expire is not a number"))?;
    let sig = field("TLS.sig")?
        .as_str()
        .ok_or_else(|| malformed("TLS.sig is not a string"))?;
    let userbuf = match doc.get("TLS.userbuf") {
        None => None,
        Some(u) => Some(
            u.as_str()
                .ok_or_else(|| malformed("TLS.userbuf is not a string"))?,
        ),
    };
    let sig = STANDARD
        .decode(sig)
        .map_err(|_| malformed("TLS.sig is not base64"))?;
    if sig_app != sdkappid {
        return Err(Error::SigAppIdMismatch {
            expected: sdkappid,
            found: sig_app,
        });
    }
    if sig_identifier != identifier {
        return Err(Error::SigIdentifierMismatch {
            identifier: identifier.to_owned(),
            signed: sig_identifier.to_owned(),
        });
    }
    // An empty key signs nothing: anybody could compute its signatures (a server refuses to
    // start with one; a library caller may not have checked).
    if key.is_empty() {
        return Err(Error::SigBadSignature);
    }
    mac(
        key,
        &content_to_sign(sig_identifier, sig_app, time, expire, userbuf),
    )
    .verify_slice(&sig)
    .map_err(|_| Error::SigBadSignature)?;
    let expires_at = time.saturating_add_signed(expire);
    if expire < 0 || expires_at < now {
        return Err(Error::SigExpired {
            expired_at: expires_at,
        });
    }
    Ok(Verified {
        identifier: sig_identifier.to_owned(),
        issued_at: time,
        expire: expire.unsigned_abs(),
    })
}

/// UserSigs already verified, for one app (its SDKAppID and secret key), at most `capacity` of
/// them. Clients reuse one UserSig for many calls, and [`verify`] base64-decodes, inflates,
/// parses and HMACs it every time; a hit costs a hash and a string comparison.
///
/// An entry is the exact UserSig string that verified, with the identifier it verified for and
/// its TLS.time and TLS.expire. A call hits only with the same string *and* the same
/// identifier, and only while `now` ≤ TLS.time + TLS.expire — the instant up to which
/// [`verify`] itself accepts it — so a hit answers exactly what [`verify`] would: any other
/// string (a forged one, another signature for the same identifier) is verified in full, and
/// an expired UserSig is verified in full and refused with 70001. Failures are not cached; a
/// negative TLS.expire never verifies, so it is never cached.
///
/// Nothing is ever invalidated but by expiry: the cache belongs to one SDKAppID and secret
/// key, fixed for the life of a server (a new key means a new server process, and a new
/// cache).
///
/// Bounded: `capacity` entries at most, in shards (one lock each) chosen by the UserSig's hash;
/// a full shard evicts by CLOCK (second chance for an entry hit since the hand last passed),
/// O(1) amortized.
pub struct VerifyCache {
    sdkappid: u64,
    key: String,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    pick: RandomState,
}

/// Shards when the capacity allows at least this many entries per shard.
const SHARDS: usize = 8;
const MIN_PER_SHARD: usize = 16;

#[derive(Default)]
struct Shard {
    map: HashMap<Arc<str>, Entry>,
    /// The keys of `map`, in the order the clock hand visits them.
    ring: Vec<Arc<str>>,
    hand: usize,
    hits: u64,
    misses: u64,
}

struct Entry {
    identifier: Box<str>,
    issued_at: u64,
    expire: u64,
    /// Hit since the clock hand last passed.
    referenced: bool,
}

impl Shard {
    fn insert(&mut self, usersig: &str, v: &Verified, per_shard: usize) {
        let entry = Entry {
            identifier: v.identifier.as_str().into(),
            issued_at: v.issued_at,
            expire: v.expire,
            referenced: false,
        };
        if let Some(e) = self.map.get_mut(usersig) {
            // Verified twice at once by two calls; the same answer.
            *e = entry;
            return;
        }
        let key: Arc<str> = usersig.into();
        if self.ring.len() < per_shard {
            self.ring.push(key.clone());
        } else {
            loop {
                let e = self
                    .map
                    .get_mut(&*self.ring[self.hand])
                    .expect("the ring holds the map's keys");
                if !std::mem::take(&mut e.referenced) {
                    break;
                }
                self.hand = (self.hand + 1) % per_shard;
            }
            let old = std::mem::replace(&mut self.ring[self.hand], key.clone());
            self.map.remove(&*old);
            self.hand = (self.hand + 1) % per_shard;
        }
        self.map.insert(key, entry);
    }
}

impl VerifyCache {
    /// A cache for the app `sdkappid` whose UserSigs `key` signs, holding at most `capacity`
    /// verified UserSigs; 0 caches nothing (every call is a full [`verify`]).
    pub fn new(sdkappid: u64, key: &str, capacity: usize) -> Self {
        let shards = if capacity >= SHARDS * MIN_PER_SHARD {
            SHARDS
        } else {
            1
        };
        VerifyCache {
            sdkappid,
            key: key.to_owned(),
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity / shards,
            pick: RandomState::default(),
        }
    }

    /// [`verify`] with this cache's app id and key: the same answer, from the cache when
    /// `usersig` already verified for `identifier` and has not expired at `now`.
    pub fn verify(&self, identifier: &str, usersig: &str, now: u64) -> Result<Verified, Error> {
        if self.per_shard == 0 {
            return verify(self.sdkappid, &self.key, identifier, usersig, now);
        }
        let shard = &self.shards[self.pick.hash_one(usersig) as usize % self.shards.len()];
        {
            let mut s = shard.lock();
            if let Some(e) = s.map.get_mut(usersig)
                && *e.identifier == *identifier
                && now <= e.issued_at.saturating_add(e.expire)
            {
                e.referenced = true;
                let v = Verified {
                    identifier: identifier.to_owned(),
                    issued_at: e.issued_at,
                    expire: e.expire,
                };
                s.hits += 1;
                return Ok(v);
            }
            s.misses += 1;
        }
        let v = verify(self.sdkappid, &self.key, identifier, usersig, now)?;
        shard.lock().insert(usersig, &v, self.per_shard);
        Ok(v)
    }

    /// How many UserSigs it holds.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most it holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Calls answered from the cache, and calls verified in full (when the capacity is not 0).
    pub fn hits_and_misses(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(h, m), s| {
            let s = s.lock();
            (h + s.hits, m + s.misses)
        })
    }
}

impl std::fmt::Debug for VerifyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("VerifyCache")
            .field("sdkappid", &self.sdkappid)
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: u64 = 1400000000;
    const KEY: &str = "secret";
    const T0: u64 = 1_700_000_000;

    /// A UserSig as Tencent's generator makes it, with any expire (negative included).
    fn signed(key: &str, identifier: &str, time: u64, expire: i64) -> String {
        let sig = STANDARD.encode(
            mac(key, &content_to_sign(identifier, APP, time, expire, None))
                .finalize()
                .into_bytes(),
        );
        let doc = serde_json::json!({
            "TLS.ver": "2.0", "TLS.identifier": identifier, "TLS.sdkappid": APP,
            "TLS.expire": expire, "TLS.time": time, "TLS.sig": sig,
        });
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, doc.to_string().as_bytes()).unwrap();
        STANDARD
            .encode(z.finish().unwrap())
            .replace('+', "*")
            .replace('/', "-")
            .replace('=', "_")
    }

    /// A genuine UserSig with bytes after its zlib stream, or grown past any real one's
    /// length, is refused (70003) and not cached: unsigned padding would let one UserSig
    /// become any number of distinct, large cache entries.
    #[test]
    fn a_padded_usersig_is_refused_and_not_cached() {
        let cache = VerifyCache::new(APP, KEY, 4096);
        let sig = generate(APP, KEY, "vinson", 86400, T0);
        let b64 = sig.replace('*', "+").replace('-', "/").replace('_', "=");
        let mut compressed = STANDARD.decode(b64.as_bytes()).unwrap();
        for pad in [vec![0u8; 3], vec![7u8; 30_000]] {
            compressed.extend_from_slice(&pad);
            let padded = STANDARD
                .encode(&compressed)
                .replace('+', "*")
                .replace('/', "-")
                .replace('=', "_");
            let e = cache.verify("vinson", &padded, T0 + 1).unwrap_err();
            assert_eq!(e.code(), 70003, "{e}");
        }
        assert_eq!(cache.len(), 0);
        assert!(cache.verify("vinson", &sig, T0 + 1).is_ok());
    }

    /// With an empty key, anybody could compute a UserSig's signature: none verifies, with or
    /// without the cache.
    #[test]
    fn an_empty_key_verifies_nothing() {
        let sig = generate(APP, "", "administrator", 86400, T0);
        let e = verify(APP, "", "administrator", &sig, T0 + 1).unwrap_err();
        assert_eq!(e.code(), 70009, "{e}");
        let cache = VerifyCache::new(APP, "", 4096);
        let e = cache.verify("administrator", &sig, T0 + 1).unwrap_err();
        assert_eq!(e.code(), 70009, "{e}");
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_second_call_hits_and_answers_as_verify() {
        let cache = VerifyCache::new(APP, KEY, 4096);
        let sig = generate(APP, KEY, "administrator", 86400, T0);
        let first = cache.verify("administrator", &sig, T0 + 1).unwrap();
        assert_eq!(cache.hits_and_misses(), (0, 1));
        let second = cache.verify("administrator", &sig, T0 + 2).unwrap();
        assert_eq!(cache.hits_and_misses(), (1, 1));
        assert_eq!(first, second);
        assert_eq!(
            second,
            verify(APP, KEY, "administrator", &sig, T0 + 2).unwrap()
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_cached_usersig_expires_when_verify_says_so() {
        let cache = VerifyCache::new(APP, KEY, 4096);
        let sig = generate(APP, KEY, "vinson", 100, T0);
        cache.verify("vinson", &sig, T0).unwrap();
        // The last instant verify accepts, from the cache...
        assert!(cache.verify("vinson", &sig, T0 + 100).is_ok());
        assert!(verify(APP, KEY, "vinson", &sig, T0 + 100).is_ok());
        assert_eq!(cache.hits_and_misses(), (1, 1));
        // ...and one second later, refused as verify refuses it.
        let e = cache.verify("vinson", &sig, T0 + 101).unwrap_err();
        assert_eq!(e.code(), 70001);
        assert!(matches!(e, Error::SigExpired { expired_at } if expired_at == T0 + 100));
        assert_eq!(cache.hits_and_misses(), (1, 2));
        assert!(cache.verify("vinson", &sig, u64::MAX).is_err());
    }

    #[test]
    fn a_negative_expire_is_never_cached() {
        let cache = VerifyCache::new(APP, KEY, 4096);
        let sig = signed(KEY, "vinson", T0, -1);
        for now in [0, T0 - 2, T0 - 1, T0] {
            assert_eq!(cache.verify("vinson", &sig, now).unwrap_err().code(), 70001);
        }
        assert!(cache.is_empty());
        // The same signer's positive expire verifies (the helper signs as Tencent does).
        let ok = signed(KEY, "vinson", T0, 10);
        assert!(cache.verify("vinson", &ok, T0).is_ok());
    }

    #[test]
    fn another_usersig_or_identifier_does_not_hit() {
        let cache = VerifyCache::new(APP, KEY, 4096);
        let sig = generate(APP, KEY, "vinson", 86400, T0);
        cache.verify("vinson", &sig, T0).unwrap();
        // The same signed fields under another key: a forgery, verified in full.
        let forged = signed("not the key", "vinson", T0, 86400);
        assert_ne!(forged, sig);
        assert_eq!(
            cache.verify("vinson", &forged, T0).unwrap_err().code(),
            70009
        );
        // The cached string presented for another identifier.
        assert_eq!(cache.verify("dramon", &sig, T0).unwrap_err().code(), 70013);
        // Another valid UserSig for the same identifier: a miss, then cached too.
        let other = generate(APP, KEY, "vinson", 86400, T0 + 1);
        cache.verify("vinson", &other, T0 + 1).unwrap();
        assert_eq!(cache.hits_and_misses(), (0, 4));
        assert_eq!(cache.len(), 2);
        // A cache for another app's key verifies nothing of this one.
        let theirs = VerifyCache::new(APP, "another key", 4096);
        assert_eq!(theirs.verify("vinson", &sig, T0).unwrap_err().code(), 70009);
    }

    #[test]
    fn the_bound_holds_and_evicted_usersigs_still_verify() {
        for capacity in [1, 5, 128, 1000] {
            let cache = VerifyCache::new(APP, KEY, capacity);
            assert!(cache.capacity() <= capacity && cache.capacity() > 0);
            let sigs: Vec<String> = (0..600)
                .map(|i| generate(APP, KEY, &format!("u{i}"), 86400, T0))
                .collect();
            for (i, sig) in sigs.iter().enumerate() {
                cache.verify(&format!("u{i}"), sig, T0).unwrap();
                assert!(cache.len() <= capacity, "{capacity}: {}", cache.len());
            }
            for (i, sig) in sigs.iter().enumerate() {
                cache.verify(&format!("u{i}"), sig, T0).unwrap();
            }
            assert!(cache.len() <= capacity);
        }
    }

    #[test]
    fn a_usersig_in_use_survives_eviction() {
        // One shard of 16: the admin's UserSig, hit between every insertion, keeps its place.
        let cache = VerifyCache::new(APP, KEY, 16);
        let admin = generate(APP, KEY, "administrator", 86400, T0);
        cache.verify("administrator", &admin, T0).unwrap();
        for i in 0..100 {
            let sig = generate(APP, KEY, &format!("u{i}"), 86400, T0);
            cache.verify(&format!("u{i}"), &sig, T0).unwrap();
            cache.verify("administrator", &admin, T0).unwrap();
        }
        assert_eq!(cache.hits_and_misses(), (100, 101));
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = VerifyCache::new(APP, KEY, 0);
        let sig = generate(APP, KEY, "vinson", 86400, T0);
        for _ in 0..3 {
            cache.verify("vinson", &sig, T0).unwrap();
        }
        assert!(cache.is_empty());
        assert_eq!(cache.capacity(), 0);
        assert_eq!(
            cache.verify("vinson", &sig, T0 + 86401).unwrap_err().code(),
            70001
        );
    }
}
