//! UserSig: Tencent's TLSSigAPIv2 credentials. A UserSig is the JSON document
//! `{"TLS.ver":"2.0","TLS.identifier",…,"TLS.sdkappid",…,"TLS.time",…,"TLS.expire",…,"TLS.sig",…}`,
//! zlib-compressed and base64-encoded with `+`→`*`, `/`→`-`, `=`→`_`, where `TLS.sig` is the
//! base64 HMAC-SHA256, keyed with the app's secret key, of
//! `TLS.identifier:…\nTLS.sdkappid:…\nTLS.time:…\nTLS.expire:…\n` (and `TLS.userbuf:…\n` when
//! the document carries one).

use std::io::Read;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use serde_json::Value;

use crate::error::Error;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The most a UserSig may inflate to; a real one is a few hundred bytes.
const MAX_DOC_BYTES: u64 = 4096;

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
    let b64 = usersig
        .replace('*', "+")
        .replace('-', "/")
        .replace('_', "=");
    let compressed = STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| malformed("not base64"))?;
    let mut doc = Vec::new();
    flate2::read::ZlibDecoder::new(&compressed[..])
        .take(MAX_DOC_BYTES + 1)
        .read_to_end(&mut doc)
        .map_err(|_| malformed("not zlib data"))?;
    if doc.len() as u64 > MAX_DOC_BYTES {
        return Err(malformed("too large"));
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
