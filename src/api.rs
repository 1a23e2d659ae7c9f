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
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::device::{Event, EventKind};
use crate::error::Error;
use crate::key::MsgKey;
use crate::message::{MessageView, MsgElement, SendRequest, SenderCopy};
use crate::roaming::HistoryQuery;
use crate::store::{BatchSendRequest, Store};
use crate::usersig;

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
}

impl ApiConfig {
    /// An app with no rate limit.
    pub fn new(sdkappid: u64, secret_key: &str) -> Self {
        ApiConfig {
            sdkappid,
            secret_key: secret_key.to_owned(),
            rate_limit: None,
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
}

/// Tencent's OptPlatform values a device may name (`macOS` is accepted for `Mac`).
const PLATFORMS: [&str; 7] = ["Web", "Android", "iOS", "Windows", "Mac", "iPad", "Unknown"];

type Handler = fn(&Api, &str, &Fields<'_>) -> Result<Map<String, Value>, Error>;

/// (path after `v4/`, handler).
const ROUTES: &[(&str, Handler)] = &[
    ("im_open_login_svc/account_import", Api::account_import),
    (
        "im_open_login_svc/multiaccount_import",
        Api::multiaccount_import,
    ),
    ("im_open_login_svc/account_check", Api::account_check),
    ("im_open_login_svc/account_delete", Api::account_delete),
    ("openim/sendmsg", Api::sendmsg),
    ("openim/batchsendmsg", Api::batchsendmsg),
    ("openim/admin_getroammsg", Api::admin_getroammsg),
    ("openim/admin_msgwithdraw", Api::admin_msgwithdraw),
    ("openim/admin_set_msg_read", Api::admin_set_msg_read),
    ("openim/get_c2c_unread_msg_num", Api::get_c2c_unread_msg_num),
    ("openim/modify_c2c_msg", Api::modify_c2c_msg),
    ("imstore/compact", Api::compact),
    #[cfg(feature = "fault-injection")]
    ("imstore/faults", Api::faults),
];

/// The dispatcher. `Send + Sync`: share one per server.
pub struct Api {
    store: Store,
    config: ApiConfig,
    buckets: Mutex<HashMap<&'static str, Bucket>>,
    /// UserSigs already verified: usersig → (identifier, expires at). Clients reuse one
    /// UserSig for many calls, and verifying inflates and HMACs it each time.
    verified: Mutex<HashMap<String, (String, u64)>>,
}

/// How many verified UserSigs are remembered; the cache is emptied when it fills.
const VERIFIED_CACHE: usize = 4096;

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

/// The query string's parameters (percent-decoded).
fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The envelope for an error.
pub fn error_reply(e: &Error) -> Reply {
    let json = json!({"ActionStatus": "FAIL", "ErrorInfo": e.to_string(), "ErrorCode": e.code()})
        .to_string();
    Reply {
        json,
        code: e.code(),
    }
}

fn ok_reply(mut fields: Map<String, Value>) -> Reply {
    let status = fields.remove("ActionStatus").unwrap_or_else(|| "OK".into());
    let code = fields.remove("ErrorCode").unwrap_or_else(|| 0.into());
    let info = fields.remove("ErrorInfo").unwrap_or_else(|| "".into());
    let mut out = Map::new();
    out.insert("ActionStatus".into(), status);
    out.insert("ErrorInfo".into(), info);
    out.insert("ErrorCode".into(), code.clone());
    out.extend(fields);
    Reply {
        json: Value::Object(out).to_string(),
        code: code.as_u64().unwrap_or(0) as u32,
    }
}

/// A request body's fields, with the accessors that turn a missing or mistyped field into its
/// documented error.
struct Fields<'a>(&'a Map<String, Value>);

fn bad(code: u32, field: &'static str, why: &str) -> Error {
    Error::InvalidField {
        field,
        code,
        why: why.to_owned(),
    }
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// The first present of `names` as a string.
    fn string(&self, names: &[&'static str], code: u32) -> Result<&'a str, Error> {
        self.opt_string(names, code)?
            .ok_or_else(|| bad(code, names[0], "is missing"))
    }

    fn opt_string(&self, names: &[&'static str], code: u32) -> Result<Option<&'a str>, Error> {
        match names.iter().find_map(|n| self.get(n)) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(code, names[0], "must be a string")),
        }
    }

    fn u32(&self, name: &'static str, code: u32) -> Result<u32, Error> {
        self.opt_u32(name, code)?
            .ok_or_else(|| bad(code, name, "is missing"))
    }

    fn opt_u32(&self, name: &'static str, code: u32) -> Result<Option<u32>, Error> {
        self.opt_u64(name, code)?
            .map(|v| {
                u32::try_from(v).map_err(|_| bad(code, name, "must be a 32-bit unsigned integer"))
            })
            .transpose()
    }

    fn u64(&self, name: &'static str, code: u32) -> Result<u64, Error> {
        self.opt_u64(name, code)?
            .ok_or_else(|| bad(code, name, "is missing"))
    }

    fn opt_u64(&self, name: &'static str, code: u32) -> Result<Option<u64>, Error> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad(code, name, "must be an unsigned integer")),
        }
    }

    fn array(&self, name: &'static str, code: u32) -> Result<&'a Vec<Value>, Error> {
        match self.get(name) {
            None => Err(bad(code, name, "is missing")),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(bad(code, name, "must be an array")),
        }
    }

    /// MsgBody: 90007 when not an array, 90002 when an element is not a Tencent element.
    fn msg_body(&self) -> Result<Option<Vec<MsgElement>>, Error> {
        if self.get("MsgBody").is_none() {
            return Ok(None);
        }
        self.array("MsgBody", 90007)?
            .iter()
            .map(|e| {
                serde_json::from_value(e.clone())
                    .map_err(|err| bad(90002, "MsgBody", &err.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The message fields of sendmsg and batchsendmsg, in Tencent's order after the accounts.
    fn message(&self) -> Result<MessageFields, Error> {
        Ok(MessageFields {
            random: self.u32("MsgRandom", 90005)?,
            time: self.opt_u32("MsgTimeStamp", 90006)?,
            body: self
                .msg_body()?
                .ok_or_else(|| bad(90007, "MsgBody", "is missing"))?,
            lifetime: self.opt_u64("MsgLifeTime", 90026)?,
            sender_copy: self.sender_copy()?,
            seq: self.opt_u32("MsgSeq", 90001)?,
            custom: self
                .opt_string(&["CloudCustomData"], 90001)?
                .map(str::to_owned),
        })
    }

    fn sender_copy(&self) -> Result<SenderCopy, Error> {
        let v = self.opt_u64("SyncOtherMachine", 90001)?;
        SenderCopy::from_sync_other_machine(v)
            .ok_or_else(|| bad(90001, "SyncOtherMachine", "must be 1 or 2"))
    }
}

struct MessageFields {
    random: u32,
    time: Option<u32>,
    body: Vec<MsgElement>,
    lifetime: Option<u64>,
    sender_copy: SenderCopy,
    seq: Option<u32>,
    custom: Option<String>,
}

fn user_list<'a>(
    items: &'a [Value],
    code: u32,
    field: &'static str,
) -> Result<Vec<&'a str>, Error> {
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.as_str()),
            Value::Object(o) => o
                .get("UserID")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(code, field, "items need a UserID string")),
            _ => Err(bad(code, field, "items must be strings")),
        })
        .collect()
}

/// An account API's list of at most 100 `{"UserID": ...}` items (70402 otherwise).
fn account_items<'a>(f: &Fields<'a>, field: &'static str) -> Result<Vec<&'a str>, Error> {
    let users = user_list(f.array(field, 70402)?, 70402, field)?;
    if users.len() > crate::store::MAX_IMPORT_BATCH {
        return Err(Error::TooManyAccounts { count: users.len() });
    }
    Ok(users)
}

fn raw_json(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("the store keeps valid JSON")
}

/// A message as Tencent lists it (history and events).
#[derive(Serialize)]
struct WireMessage<'a> {
    #[serde(rename = "From_Account")]
    from: &'a str,
    #[serde(rename = "To_Account")]
    to: &'a str,
    #[serde(rename = "MsgSeq")]
    seq: u32,
    #[serde(rename = "MsgRandom")]
    random: u32,
    #[serde(rename = "MsgTimeStamp")]
    time: u32,
    #[serde(rename = "MsgFlagBits", skip_serializing_if = "Option::is_none")]
    flag_bits: Option<u32>,
    #[serde(rename = "IsPeerRead", skip_serializing_if = "Option::is_none")]
    is_peer_read: Option<u8>,
    #[serde(rename = "MsgKey")]
    key: String,
    #[serde(rename = "MsgBody")]
    body: Box<RawValue>,
    #[serde(rename = "CloudCustomData", skip_serializing_if = "Option::is_none")]
    custom: Option<&'a str>,
    #[serde(rename = "ModifyTime", skip_serializing_if = "Option::is_none")]
    modify_time: Option<u64>,
}

impl<'a> WireMessage<'a> {
    fn new(m: &'a MessageView) -> Self {
        WireMessage {
            from: &m.from,
            to: &m.to,
            seq: m.key.seq(),
            random: m.key.random(),
            time: m.key.time(),
            flag_bits: None,
            is_peer_read: None,
            key: m.key.to_string(),
            body: raw_json(m.content.as_ref().map_or("[]", |c| c.body_json())),
            custom: m.content.as_ref().and_then(|c| c.cloud_custom_data()),
            modify_time: None,
        }
    }
}

/// The SSE event name (`message`, `recall`, `modify`) and one-line JSON data for an event.
pub fn event_payload(event: &Event) -> (&'static str, String) {
    match &event.kind {
        EventKind::Message(m) => (
            "message",
            serde_json::to_string(&WireMessage::new(m)).expect("serializable"),
        ),
        EventKind::Modified {
            message,
            modified_at,
        } => {
            let mut w = WireMessage::new(message);
            w.modify_time = Some(*modified_at);
            ("modify", serde_json::to_string(&w).expect("serializable"))
        }
        EventKind::Recalled(n) => (
            "recall",
            json!({
                "From_Account": &*n.from,
                "To_Account": &*n.to,
                "MsgKey": n.key.to_string(),
                "Operator_Account": &*n.recalled_by,
                "RecallTime": n.recalled_at,
            })
            .to_string(),
        ),
    }
}

/// A WebSocket event frame: `{"Event":"message"|"recall"|"modify","Seq":N,"Data":{...}}`, with
/// `Data` exactly the SSE `data:` of the same event.
pub fn ws_event_frame(event: &Event) -> String {
    let (kind, data) = event_payload(event);
    format!(r#"{{"Event":"{kind}","Seq":{},"Data":{data}}}"#, event.seq)
}

/// A WebSocket reply frame: `{"Event":"reply","ReqId":R, ...the envelope and its fields}`.
pub fn ws_reply(req_id: &Value, reply: &Reply) -> String {
    let mut out = Map::new();
    out.insert("Event".into(), "reply".into());
    out.insert("ReqId".into(), req_id.clone());
    if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&reply.json) {
        out.extend(fields);
    }
    Value::Object(out).to_string()
}

impl Api {
    /// An API over `store`.
    pub fn new(store: Store, config: ApiConfig) -> Self {
        Api {
            store,
            config,
            buckets: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// The store behind the API.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Answers one REST call: `path` such as `/v4/openim/sendmsg`, the raw query string, the
    /// body bytes.
    pub fn handle(&self, path: &str, query: &str, body: &[u8]) -> Reply {
        match self.dispatch(path, query, body) {
            Ok(fields) => ok_reply(fields),
            Err(e) => error_reply(&e),
        }
    }

    fn authenticate(&self, params: &HashMap<String, String>) -> Result<String, Error> {
        let app = params.get("sdkappid").map(String::as_str).unwrap_or("");
        let app: u64 = app.parse().map_err(|_| Error::SigAppIdMismatch {
            expected: self.config.sdkappid,
            found: 0,
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
        if let Some((who, expires_at)) = self.verified.lock().get(sig.as_str())
            && who == identifier
            && now <= *expires_at
        {
            return Ok(identifier.to_owned());
        }
        let v = usersig::verify(
            self.config.sdkappid,
            &self.config.secret_key,
            identifier,
            sig,
            now,
        )?;
        let mut verified = self.verified.lock();
        if verified.len() >= VERIFIED_CACHE {
            verified.clear();
        }
        verified.insert(
            sig.clone(),
            (v.identifier, v.issued_at.saturating_add(v.expire)),
        );
        Ok(identifier.to_owned())
    }

    fn dispatch(&self, path: &str, query: &str, body: &[u8]) -> Result<Map<String, Value>, Error> {
        let params = parse_query(query);
        let caller = self.authenticate(&params)?;
        let route = path
            .trim_start_matches('/')
            .strip_prefix("v4/")
            .unwrap_or("");
        let (name, handler) = ROUTES
            .iter()
            .find(|(r, _)| *r == route)
            .ok_or_else(|| Error::UnknownApi(path.to_owned()))?;
        if !self.store.is_admin(&caller) {
            return Err(Error::NotAdmin(caller));
        }
        self.take_token(name)?;
        let body: Value = serde_json::from_slice(body).map_err(|e| {
            Error::InvalidRequest(format!(
                "Fail to Parse json data of body, Please check it ({e})"
            ))
        })?;
        let Value::Object(map) = body else {
            return Err(Error::InvalidRequest(
                "the body must be a JSON object".into(),
            ));
        };
        handler(self, &caller, &Fields(&map))
    }

    fn take_token(&self, api: &'static str) -> Result<(), Error> {
        let Some(rate) = self.config.rate_limit else {
            return Ok(());
        };
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
        let account = self.authenticate(&params)?;
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

    // ----- accounts -----

    fn account_import(&self, _: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let user = f.string(&["UserID", "Identifier"], 70402)?;
        self.store.import_account(user)?;
        Ok(Map::new())
    }

    fn multiaccount_import(&self, _: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let users = user_list(f.array("Accounts", 70402)?, 70402, "Accounts")?;
        let failed = self.store.import_accounts(&users)?;
        Ok(fields([("FailAccounts", json!(failed))]))
    }

    fn account_check(&self, _: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let users = account_items(f, "CheckItem")?;
        let items: Vec<Value> = users
            .iter()
            .map(|u| {
                let status = if self.store.account_exists(u)? {
                    "Imported"
                } else {
                    "NotImported"
                };
                Ok(json!({"UserID": u, "ResultCode": 0, "ResultInfo": "", "AccountStatus": status}))
            })
            .collect::<Result<_, Error>>()?;
        Ok(fields([("ResultItem", Value::Array(items))]))
    }

    fn account_delete(&self, _: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let users = account_items(f, "DeleteItem")?;
        let items: Vec<Value> = users
            .iter()
            .map(|u| match self.store.delete_account(u) {
                Ok(()) => json!({"UserID": u, "ResultCode": 0, "ResultInfo": ""}),
                Err(e) => json!({"UserID": u, "ResultCode": e.code(), "ResultInfo": e.to_string()}),
            })
            .collect();
        Ok(fields([("ResultItem", Value::Array(items))]))
    }

    // ----- messages -----

    fn sendmsg(&self, _: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let from = f.opt_string(&["From_Account"], 90008)?;
        let to = f.string(&["To_Account"], 90003)?;
        let m = f.message()?;
        let r = self.store.send(SendRequest {
            from: from.map(str::to_owned),
            to: to.to_owned(),
            msg_random: m.random,
            msg_seq: m.seq,
            msg_time: m.time,
            body: m.body,
            cloud_custom_data: m.custom,
            sender_copy: m.sender_copy,
            lifetime: m.lifetime,
            from_device: None,
        })?;
        Ok(fields([
            ("MsgTime", json!(r.msg_time)),
            ("MsgKey", json!(r.msg_key.to_string())),
        ]))
    }

    fn batchsendmsg(&self, _: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let from = f.opt_string(&["From_Account"], 90008)?;
        let to = f.array("To_Account", 90003)?;
        if to.len() > crate::store::MAX_BATCH_RECIPIENTS {
            return Err(Error::TooManyRecipients(to.len()));
        }
        let to = to
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(90003, "To_Account", "items must be strings"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let m = f.message()?;
        let recipients = to.len();
        let r = self.store.batch_send(BatchSendRequest {
            from: from.map(str::to_owned),
            to,
            msg_random: m.random,
            msg_seq: m.seq,
            msg_time: m.time,
            body: m.body,
            cloud_custom_data: m.custom,
            sender_copy: m.sender_copy,
            lifetime: m.lifetime,
        })?;
        let errors: Vec<Value> = r
            .errors
            .iter()
            .map(|(u, e)| json!({"To_Account": u, "ErrorCode": e.code()}))
            .collect();
        let mut out = fields([
            ("MsgKey", json!(r.msg_key.to_string())),
            ("ErrorList", Value::Array(errors)),
        ]);
        if let Some((_, first)) = r.errors.first() {
            let all = r.errors.len() == recipients;
            out.insert(
                "ActionStatus".into(),
                json!(if all { "FAIL" } else { "SomeError" }),
            );
            out.insert(
                "ErrorCode".into(),
                json!(if all { first.code() } else { 0 }),
            );
            out.insert(
                "ErrorInfo".into(),
                json!(format!(
                    "{} of {recipients} recipients failed; see ErrorList",
                    r.errors.len()
                )),
            );
        }
        Ok(out)
    }

    fn admin_getroammsg(&self, _: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let operator = f.string(&["Operator_Account", "From_Account"], 90008)?;
        let peer = f.string(&["Peer_Account", "To_Account"], 90003)?;
        let max_cnt = f.u32("MaxCnt", 90001)?;
        let min_time = f.u32("MinTime", 90001)?;
        let max_time = f.u32("MaxTime", 90001)?;
        let last_key = f
            .opt_string(&["LastMsgKey"], 90001)?
            .filter(|k| !k.is_empty())
            .map(|k| MsgKey::parse(k).map_err(|e| bad(90001, "LastMsgKey", &e.to_string())))
            .transpose()?;
        let page = self.store.history(&HistoryQuery {
            operator: operator.to_owned(),
            peer: peer.to_owned(),
            max_cnt,
            min_time,
            max_time,
            last_msg_key: last_key,
        })?;
        let list: Vec<WireMessage<'_>> = page
            .messages
            .iter()
            .map(|item| {
                let mut w = WireMessage::new(&item.message);
                w.flag_bits = Some(item.message.msg_flag_bits());
                w.is_peer_read = Some(u8::from(item.is_peer_read));
                w
            })
            .collect();
        Ok(fields([
            ("Complete", json!(u8::from(page.complete))),
            ("MsgCnt", json!(list.len())),
            ("LastMsgTime", json!(page.last_msg_time)),
            (
                "LastMsgKey",
                json!(page.last_msg_key.map(|k| k.to_string()).unwrap_or_default()),
            ),
            (
                "MsgList",
                serde_json::to_value(&list).expect("serializable"),
            ),
        ]))
    }

    fn admin_msgwithdraw(&self, caller: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let from = f.string(&["From_Account"], 90008)?;
        let to = f.string(&["To_Account"], 90003)?;
        let key = f.get("MsgKey").and_then(Value::as_str).unwrap_or("");
        // Missing or mistyped MsgKey parses as the empty string: 90054, after the accounts.
        self.store.recall(caller, from, to, key)?;
        Ok(Map::new())
    }

    fn admin_set_msg_read(&self, _: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let reader = f.string(&["Report_Account"], 90008)?;
        let peer = f.string(&["Peer_Account"], 90003)?;
        self.store.mark_read(reader, peer)?;
        Ok(Map::new())
    }

    fn get_c2c_unread_msg_num(&self, _: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let account = f.string(&["To_Account"], 90003)?;
        let all = self.store.unread_all(account)?;
        let total: u64 = all.iter().map(|(_, n)| u64::from(*n)).sum();
        let mut out = fields([("AllC2CUnreadMsgNum", json!(total))]);
        let (list, errors): (Vec<Value>, Vec<Value>) = match f.get("Peer_Account") {
            None => (
                all.iter()
                    .map(|(p, n)| json!({"Peer_Account": &**p, "C2CUnreadMsgNum": n}))
                    .collect(),
                Vec::new(),
            ),
            Some(_) => {
                let peers = user_list(f.array("Peer_Account", 90001)?, 90001, "Peer_Account")?;
                let mut list = Vec::new();
                let mut errors = Vec::new();
                for p in peers {
                    if self.store.account_exists(p)? {
                        list.push(json!({"Peer_Account": p, "C2CUnreadMsgNum": self.store.unread(account, p)?}));
                    } else {
                        errors.push(json!({"Peer_Account": p, "ErrorCode": 70107}));
                    }
                }
                (list, errors)
            }
        };
        out.insert("C2CUnreadMsgNumList".into(), Value::Array(list));
        if !errors.is_empty() {
            out.insert("ErrorList".into(), Value::Array(errors));
        }
        Ok(out)
    }

    fn modify_c2c_msg(&self, _: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let from = f.string(&["From_Account"], 90008)?;
        let to = f.string(&["To_Account"], 90003)?;
        let key = f.get("MsgKey").and_then(Value::as_str).unwrap_or("");
        let body = f.msg_body()?;
        let custom = f.opt_string(&["CloudCustomData"], 90001)?;
        self.store
            .modify(from, to, key, body, custom.map(str::to_owned))?;
        Ok(Map::new())
    }

    /// Test-only (feature `fault-injection`): `{"HoldWrite":bool, "HoldFsync":bool,
    /// "NoSpace":bool}`, each optional, sets the journal's faults; answers how many writers are
    /// held at each gate.
    #[cfg(feature = "fault-injection")]
    fn faults(&self, _: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let faults = self
            .store
            .faults()
            .ok_or_else(|| Error::Internal("an in-memory store has no journal".into()))?;
        let flag = |name: &'static str| match f.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(bad(90001, name, "must be true or false")),
        };
        for (name, gate) in [
            ("HoldWrite", &faults.hold_write),
            ("HoldFsync", &faults.hold_fsync),
        ] {
            match flag(name)? {
                Some(true) => gate.close(),
                Some(false) => gate.open(),
                None => {}
            }
        }
        if let Some(on) = flag("NoSpace")? {
            faults.set_no_space(on);
        }
        Ok(fields([
            ("WritesHeld", json!(faults.hold_write.held())),
            ("FsyncsHeld", json!(faults.hold_fsync.held())),
        ]))
    }

    fn compact(&self, _: &str, _: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let r = self.store.compact()?;
        Ok(fields([
            ("Snapshot", json!(r.snapshot.display().to_string())),
            ("Lsn", json!(r.lsn)),
            ("PurgedMessages", json!(r.purged.messages)),
            ("PurgedInboxEntries", json!(r.purged.inbox_entries)),
        ]))
    }
}

fn fields<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
