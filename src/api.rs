//! The REST API of Tencent Cloud IM over a [`Store`], with no HTTP framework attached: a
//! dispatcher from (path, query string, body bytes) to the JSON answer, so that any server can
//! embed it (`imstore-server` is one, behind the `server` feature).
//!
//! Every answer is the envelope `{"ActionStatus","ErrorInfo","ErrorCode", ...}`, sent with HTTP
//! 200. The order of checks: UserSig (700xx), the API exists (60010), the caller is an app
//! administrator (90009, before the body is read), the rate limit (60007), the body is a JSON
//! object (90001), then each field in the order Tencent documents, with its own code. Unknown
//! fields are ignored.
//!
//! ```
//! use imstore::api::{Api, ApiConfig};
//! use imstore::{Config, Store, usersig};
//!
//! let store = Store::in_memory(Config::default()).unwrap();
//! let api = Api::new(store.clone(), ApiConfig::new(1400000000, "secret"));
//! let now = store.config().clock.now();
//! let sig = usersig::generate(1400000000, "secret", "administrator", 3600, now);
//! let query = format!("sdkappid=1400000000&identifier=administrator&usersig={sig}&random=1&contenttype=json");
//! let reply = api.handle("/v4/im_open_login_svc/account_import", &query, br#"{"UserID":"vinson"}"#);
//! assert_eq!(reply.code, 0, "{}", reply.json);
//! assert!(store.account_exists("vinson").unwrap());
//! ```

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::hooks::{BeforeSend, OutgoingMessage};
use crate::store::{PreparedSend, Store};
use crate::usersig;

mod client;
mod directory;
mod fields;
mod rest;
mod wire;

pub use directory::Directory;
use fields::{Fields, bad, parse_query};
pub use wire::{
    RESET_EVENT, before_send_body, before_send_decision, callback_accepted, callback_body,
    callback_query, callback_sign, error_reply, event_payload, ok_reply, ws_event_frame, ws_reply,
    ws_reset_frame,
};

/// How the API authenticates and limits callers.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The app's SDKAppID; requests and UserSigs must name it.
    pub sdkappid: u64,
    /// The app's secret key, which signs UserSigs.
    pub secret_key: String,
    /// Calls per second allowed per API (a token bucket of that size); `None`: no limit.
    /// Tencent's default is 200.
    pub rate_limit: Option<u32>,
    /// How many verified UserSigs are remembered (bounded, each until its expiry; see
    /// [`usersig::VerifyCache`]); 0 turns the cache off. 4096 by default.
    pub usersig_cache: usize,
}

impl ApiConfig {
    /// An app with no rate limit.
    pub fn new(sdkappid: u64, secret_key: &str) -> Self {
        ApiConfig {
            sdkappid,
            secret_key: secret_key.to_owned(),
            rate_limit: None,
            usersig_cache: USERSIG_CACHE,
        }
    }
}

/// A JSON answer and its ErrorCode (0 for success), for logging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The whole JSON body.
    pub json: String,
    /// ErrorCode of the envelope.
    pub code: u32,
}

/// A device's authenticated connection request (SSE events, WebSocket, ack).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRequest {
    /// The account, from the UserSig's identifier: a device acts only as its own account.
    pub account: String,
    /// The `device` parameter (1 to 64 bytes).
    pub device: String,
    /// The `platform` parameter, as Tencent's OptPlatform names it (`Unknown` when absent).
    pub platform: &'static str,
    /// The `after` parameter: resume after this inbox sequence number.
    pub after: Option<u64>,
    /// When the UserSig the device connected with expires (TLS.time + TLS.expire, Unix
    /// seconds): its session ends then (70001), as Tencent's SDK is told `onUserSigExpired`
    /// and logs in again. `None` for a request that carried no UserSig of its own (a client
    /// frame a cluster node forwarded: the node's session holds the deadline).
    pub sig_expires_at: Option<u64>,
}

/// How many `Peer_Account`s one `get_c2c_unread_msg_num` may ask about (Tencent's limit;
/// more answer 90001).
pub const MAX_UNREAD_PEERS: usize = 10;

/// Tencent's OptPlatform values a device may name (`macOS` is accepted for `Mac`).
const PLATFORMS: [&str; 7] = ["Web", "Android", "iOS", "Windows", "Mac", "iPad", "Unknown"];

/// A handler: from the caller and the body's fields to the answer's fields.
type Answer = fn(&Api, &str, &Fields<'_>) -> Result<Map<String, Value>, Error>;

/// How a route is answered.
enum Handler {
    /// From the body's fields to the answer's.
    Answer(Answer),
    /// `sendmsg`: may have to wait for its before-send decision ([`Step::BeforeSend`]).
    Send,
}

/// (path after `v4/`, handler).
const ROUTES: &[(&str, Handler)] = &[
    (
        "im_open_login_svc/account_import",
        Handler::Answer(Api::account_import),
    ),
    (
        "im_open_login_svc/multiaccount_import",
        Handler::Answer(Api::multiaccount_import),
    ),
    (
        "im_open_login_svc/account_check",
        Handler::Answer(Api::account_check),
    ),
    (
        "im_open_login_svc/account_delete",
        Handler::Answer(Api::account_delete),
    ),
    ("openim/sendmsg", Handler::Send),
    ("openim/batchsendmsg", Handler::Answer(Api::batchsendmsg)),
    (
        "openim/admin_getroammsg",
        Handler::Answer(Api::admin_getroammsg),
    ),
    (
        "openim/admin_msgwithdraw",
        Handler::Answer(Api::admin_msgwithdraw),
    ),
    (
        "openim/admin_set_msg_read",
        Handler::Answer(Api::admin_set_msg_read),
    ),
    (
        "openim/get_c2c_unread_msg_num",
        Handler::Answer(Api::get_c2c_unread_msg_num),
    ),
    (
        "openim/modify_c2c_msg",
        Handler::Answer(Api::modify_c2c_msg),
    ),
    ("openim/importmsg", Handler::Answer(Api::importmsg)),
    ("imstore/compact", Handler::Answer(Api::compact)),
    #[cfg(feature = "fault-injection")]
    ("imstore/faults", Handler::Answer(Api::faults)),
];

/// A REST call's body: one JSON object (90001 otherwise, in Tencent's words).
fn body_object(body: &[u8]) -> Result<Map<String, Value>, Error> {
    let body: Value = serde_json::from_slice(body).map_err(|e| {
        Error::InvalidRequest(format!(
            "Fail to Parse json data of body, Please check it ({e})"
        ))
    })?;
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(Error::InvalidRequest(
            "the body must be a JSON object".into(),
        )),
    }
}

/// Every REST API's path after `v4/` (`openim/sendmsg`, ...).
pub fn route_paths() -> impl Iterator<Item = &'static str> {
    ROUTES.iter().map(|(path, _)| *path)
}

/// How a call is being served.
#[derive(Clone, Debug, Default)]
pub struct CallContext {
    /// A send's before-send decision comes from outside the store (the server's webhook):
    /// stop at [`Step::BeforeSend`] instead of asking the store's `Hooks`.
    pub before_send_elsewhere: bool,
    /// A client's send is given this MsgTimeStamp instead of the store's clock: a cluster
    /// node fixes a client send's MsgKey (MsgSeq and MsgTimeStamp) before forwarding it, so a
    /// retry of the forwarded call finds the message rather than storing it twice. Clients
    /// themselves cannot set it.
    pub client_msg_time: Option<u32>,
}

/// Where a call stands.
#[derive(Debug)]
pub enum Step {
    /// Answered.
    Done(Reply),
    /// A send waits for its before-send decision; nothing is stored yet.
    BeforeSend(PendingSend),
}

/// A send waiting for its before-send decision.
#[derive(Debug)]
pub struct PendingSend {
    prepared: PreparedSend<'static>,
}

impl PendingSend {
    /// What the decision is about.
    pub fn outgoing(&self) -> OutgoingMessage<'_> {
        self.prepared.outgoing()
    }

    /// Where the send came from (the webhook's OptPlatform and ClientIP).
    pub fn origin(&self) -> Option<&crate::Origin> {
        self.prepared.origin()
    }
}

enum Outcome {
    Answer(Map<String, Value>),
    BeforeSend(PendingSend),
}

/// The dispatcher. `Send + Sync`: share one per server.
pub struct Api {
    store: Store,
    config: ApiConfig,
    buckets: Mutex<HashMap<&'static str, Bucket>>,
    /// Calls per second per API now (0: no limit); starts as `config.rate_limit`.
    rate: std::sync::atomic::AtomicU32,
    /// UserSigs already verified (bounded, honouring expiry; see [`usersig::VerifyCache`]).
    verified: usersig::VerifyCache,
}

/// How many verified UserSigs are remembered by default (`ApiConfig::usersig_cache`).
pub const USERSIG_CACHE: usize = 4096;

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("sdkappid", &self.config.sdkappid)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// An API over `store`, remembering up to `config.usersig_cache` verified UserSigs.
    pub fn new(store: Store, config: ApiConfig) -> Self {
        let verified =
            usersig::VerifyCache::new(config.sdkappid, &config.secret_key, config.usersig_cache);
        Api {
            store,
            rate: std::sync::atomic::AtomicU32::new(config.rate_limit.unwrap_or(0)),
            config,
            buckets: Mutex::new(HashMap::new()),
            verified,
        }
    }

    /// The store behind the API.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The UserSig cache's capacity (`ApiConfig::usersig_cache`), and how many calls it has
    /// answered and how many it verified in full (both 0 when the capacity is 0).
    pub fn usersig_cache(&self) -> (usize, u64, u64) {
        let (hits, misses) = self.verified.hits_and_misses();
        (self.verified.capacity(), hits, misses)
    }

    /// Answers one REST call: `path` such as `/v4/openim/sendmsg`, the raw query string, the
    /// body bytes. A send's before-send decision is the store's `Hooks`.
    pub fn handle(&self, path: &str, query: &str, body: &[u8]) -> Reply {
        match self.step(path, query, body, &CallContext::default()) {
            Step::Done(reply) => reply,
            Step::BeforeSend(pending) => {
                let decision = self.store.config().hooks.before_send(&pending.outgoing());
                self.resume(pending, decision)
            }
        }
    }

    /// Like [`handle`](Api::handle), but a send whose before-send decision is to come from
    /// elsewhere (`ctx.before_send_elsewhere`: a webhook) stops at [`Step::BeforeSend`]; the
    /// caller gets the decision — holding no store lock — and passes it to
    /// [`resume`](Api::resume).
    pub fn step(&self, path: &str, query: &str, body: &[u8], ctx: &CallContext) -> Step {
        match self.dispatch(path, query, body, ctx) {
            Ok(Outcome::Answer(fields)) => Step::Done(ok_reply(fields)),
            Ok(Outcome::BeforeSend(p)) => Step::BeforeSend(p),
            Err(e) => Step::Done(error_reply(&e)),
        }
    }

    /// Finishes a send with its before-send decision: the answer its call gets.
    pub fn resume(&self, pending: PendingSend, decision: BeforeSend) -> Reply {
        match self.finish_send(pending.prepared, decision) {
            Ok(fields) => ok_reply(fields),
            Err(e) => error_reply(&e),
        }
    }

    /// Stores a prepared send under `decision`; the answer's MsgTime and MsgKey.
    fn finish_send(
        &self,
        prepared: PreparedSend<'_>,
        decision: BeforeSend,
    ) -> Result<Map<String, Value>, Error> {
        let r = self.store.finish_send(prepared, decision)?.wait()?;
        Ok(rest::answer([
            ("MsgTime", r.msg_time.into()),
            ("MsgKey", r.msg_key.to_string().into()),
        ]))
    }

    /// A send prepared by a REST call or a client: decided here by the store's hooks, or left
    /// to the caller when the decision comes from elsewhere.
    fn decide(&self, prepared: PreparedSend<'static>, ctx: &CallContext) -> Result<Outcome, Error> {
        // A repeat of a stored message (a retry whose answer was lost) is answered with it:
        // the app's before-send webhook is not called about it a second time.
        if ctx.before_send_elsewhere
            && let Some(stored) = self.store.repeat_of_stored(&prepared)
        {
            let r = stored.wait()?;
            return Ok(Outcome::Answer(rest::answer([
                ("MsgTime", r.msg_time.into()),
                ("MsgKey", r.msg_key.to_string().into()),
            ])));
        }
        if ctx.before_send_elsewhere {
            // The app's webhook learns that both accounts exist: once their imports are
            // durable (R6; the server waits for this call's ticket before it calls out).
            self.store.accounts_durable()?;
            return Ok(Outcome::BeforeSend(PendingSend { prepared }));
        }
        let decision = self.store.config().hooks.before_send(&prepared.outgoing());
        self.finish_send(prepared, decision).map(Outcome::Answer)
    }

    fn authenticate(&self, params: &HashMap<String, String>) -> Result<usersig::Verified, Error> {
        // Tencent's public codes: 60012 SDKAppID missing, 60006 invalid (another app's is
        // 70014, below and in the UserSig's check).
        let app = params.get("sdkappid").ok_or_else(|| Error::InvalidField {
            field: "sdkappid",
            code: 60012,
            why: "the sdkappid parameter is missing".into(),
        })?;
        let app: u64 = app.parse().map_err(|_| Error::InvalidField {
            field: "sdkappid",
            code: 60006,
            why: format!("{app:?} is not an SDKAppID"),
        })?;
        if app != self.config.sdkappid {
            return Err(Error::SigAppIdMismatch {
                expected: self.config.sdkappid,
                found: app,
            });
        }
        let identifier = params.get("identifier").map(String::as_str).unwrap_or("");
        let sig = params
            .get("usersig")
            .ok_or_else(|| Error::SigMalformed("the usersig parameter is missing".into()))?;
        let now = self.store.config().clock.now();
        self.verified.verify(identifier, sig, now)
    }

    /// The checks every REST call passes before its body is read — UserSig (700xx), the API
    /// exists (60010), the caller is an administrator (90009), the rate limit (60007) — and
    /// the caller and the route's index in `ROUTES`.
    fn admit_index(&self, path: &str, query: &str) -> Result<(String, usize), Error> {
        let (caller, index) = self.identify(path, query)?;
        self.take_token(ROUTES[index].0)?;
        Ok((caller, index))
    }

    /// The caller (UserSig, 700xx; an administrator, 90009) and the route's index (60010).
    fn identify(&self, path: &str, query: &str) -> Result<(String, usize), Error> {
        let params = parse_query(query);
        let caller = self.authenticate(&params)?.identifier;
        let route = path
            .trim_start_matches('/')
            .strip_prefix("v4/")
            .unwrap_or("");
        let index = ROUTES
            .iter()
            .position(|(r, _)| *r == route)
            .ok_or_else(|| Error::UnknownApi(path.to_owned()))?;
        if !self.store.is_admin(&caller) {
            return Err(Error::NotAdmin(caller));
        }
        Ok((caller, index))
    }

    /// The checks of [`admit`](Api::admit) but the rate limit, which takes nothing: a server
    /// runs them before it reads a body, so that no one it would refuse makes it hold one.
    pub fn identify_caller(&self, path: &str, query: &str) -> Result<(), Error> {
        self.identify(path, query).map(|_| ())
    }

    /// Runs the checks a REST call passes before its body is read (UserSig, the API exists,
    /// administrator, rate limit) without running it: the route (`openim/sendmsg`, ...). A
    /// cluster node admits a call before forwarding it to the shard that runs it.
    pub fn admit(&self, path: &str, query: &str) -> Result<&'static str, Error> {
        self.admit_index(path, query).map(|(_, i)| ROUTES[i].0)
    }

    fn dispatch(
        &self,
        path: &str,
        query: &str,
        body: &[u8],
        ctx: &CallContext,
    ) -> Result<Outcome, Error> {
        let (caller, index) = self.admit_index(path, query)?;
        let handler = &ROUTES[index].1;
        let map = body_object(body)?;
        match handler {
            Handler::Answer(answer) => answer(self, &caller, &Fields(&map)).map(Outcome::Answer),
            Handler::Send => self.sendmsg(&Fields(&map), ctx),
        }
    }

    /// Changes the per-API rate limit (`None`: none). A cluster node sets its share of the
    /// app's limit as nodes come and go.
    pub fn set_rate_limit(&self, rate: Option<u32>) {
        self.rate
            .store(rate.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    fn take_token(&self, api: &'static str) -> Result<(), Error> {
        let rate = self.rate.load(std::sync::atomic::Ordering::Relaxed);
        if rate == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock();
        let now = Instant::now();
        let b = buckets.entry(api).or_insert(Bucket {
            tokens: f64::from(rate),
            last: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * f64::from(rate))
            .min(f64::from(rate));
        b.last = now;
        if b.tokens < 1.0 {
            return Err(Error::RateLimited {
                api: api.to_owned(),
                per_second: rate,
            });
        }
        b.tokens -= 1.0;
        Ok(())
    }

    /// Authenticates a device (`GET /v4/imstore/events`, `GET /v4/imstore/ws`,
    /// `POST /v4/imstore/ack`): the UserSig must be the account's own (identifier = the
    /// account), `device` names the device, `platform` is one of Tencent's OptPlatform values,
    /// `after` (optional) a sequence number.
    pub fn authorize_device(&self, query: &str) -> Result<DeviceRequest, Error> {
        let params = parse_query(query);
        let signed = self.authenticate(&params)?;
        let account = signed.identifier;
        let device = params
            .get("device")
            .filter(|d| !d.is_empty())
            .ok_or_else(|| bad(90001, "device", "is missing"))?;
        crate::device::check_device_id(device)?;
        let platform = match params.get("platform").map(String::as_str) {
            None | Some("") => "Unknown",
            Some("macOS") => "Mac",
            Some(p) => PLATFORMS
                .iter()
                .find(|q| **q == p)
                .copied()
                .ok_or_else(|| {
                    bad(
                        90001,
                        "platform",
                        "must be one of Web, Android, iOS, Windows, Mac, iPad, Unknown",
                    )
                })?,
        };
        let after = match params.get("after").filter(|a| !a.is_empty()) {
            None => None,
            Some(a) => Some(
                a.parse::<u64>()
                    .map_err(|_| bad(90001, "after", "must be a sequence number"))?,
            ),
        };
        Ok(DeviceRequest {
            account,
            device: device.clone(),
            platform,
            after,
            sig_expires_at: Some(signed.issued_at.saturating_add(signed.expire)),
        })
    }

    /// `POST /v4/imstore/ack` with the device's own UserSig: `{"Seq": N}` confirms receipt of
    /// every inbox entry up to N for the `device` of the query (R7).
    pub fn device_ack(&self, query: &str, body: &[u8]) -> Reply {
        let answer = (|| {
            let req = self.authorize_device(query)?;
            let body: Value = serde_json::from_slice(body)
                .map_err(|e| Error::InvalidRequest(format!("the body is not JSON ({e})")))?;
            let Value::Object(map) = body else {
                return Err(Error::InvalidRequest(
                    "the body must be a JSON object".into(),
                ));
            };
            let seq = Fields(&map).u64("Seq", 90001)?;
            self.store.ack(&req.account, &req.device, seq)?;
            Ok(Map::new())
        })();
        match answer {
            Ok(fields) => ok_reply(fields),
            Err(e) => error_reply(&e),
        }
    }
}
