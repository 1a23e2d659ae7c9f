//! Tencent's wire shapes: the envelope, a message as history and events list it, SSE and
//! WebSocket frames, and the webhook calls (their bodies, query string and signature).

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::Reply;
use crate::callback::{CallbackEvent, Origin, OutboxEntry};
use crate::device::{Event, EventKind};
use crate::error::Error;
use crate::hooks::{BeforeSend, OutgoingMessage};
use crate::message::{MessageView, MsgElement};

/// The envelope for an error.
pub fn error_reply(e: &Error) -> Reply {
    let json = json!({"ActionStatus": "FAIL", "ErrorInfo": e.to_string(), "ErrorCode": e.code()})
        .to_string();
    Reply {
        json,
        code: e.code(),
    }
}

/// A successful answer with `fields` (an `ActionStatus`, `ErrorCode` or `ErrorInfo` among them
/// replaces the envelope's).
pub fn ok_reply(mut fields: Map<String, Value>) -> Reply {
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

/// A message as Tencent lists it (history and events).
#[derive(Serialize)]
pub(super) struct WireMessage<'a> {
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
    pub flag_bits: Option<u32>,
    #[serde(rename = "IsPeerRead", skip_serializing_if = "Option::is_none")]
    pub is_peer_read: Option<u8>,
    #[serde(rename = "MsgKey")]
    key: String,
    #[serde(rename = "MsgBody")]
    body: Box<RawValue>,
    #[serde(rename = "CloudCustomData", skip_serializing_if = "Option::is_none")]
    custom: Option<&'a str>,
    #[serde(rename = "ModifyTime", skip_serializing_if = "Option::is_none")]
    pub modify_time: Option<u64>,
}

impl<'a> WireMessage<'a> {
    pub(super) fn new(m: &'a MessageView) -> Self {
        WireMessage {
            from: &m.from,
            to: &m.to,
            seq: m.key.seq(),
            random: m.key.random(),
            time: m.key.time(),
            flag_bits: None,
            is_peer_read: None,
            key: m.key.to_string(),
            body: RawValue::from_string(
                m.content
                    .as_ref()
                    .map_or_else(|| "[]".to_owned(), |c| c.body_json().into_owned()),
            )
            .expect("the store keeps valid JSON"),
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

/// The frame a device's session starts with when the position it resumed after was past
/// the server's inbox ([`Subscription::reset`](crate::Subscription::reset): the server's
/// data is older than the client's — a backup restored, a power loss under `--sync none`):
/// `{"Event":"reset","Seq":S,"Data":{}}`. `S` is the position the session starts from now;
/// the client takes it as its own and takes what follows as new even where a sequence number
/// is one it saw before (on another entry) — dropping such "repeats" would lose them. Over
/// SSE: `event: reset`, `id: S`, `data: {}` (so a browser's `EventSource` resumes from `S`).
pub fn ws_reset_frame(seq: &Value) -> String {
    json!({"Event": RESET_EVENT, "Seq": seq, "Data": {}}).to_string()
}

/// The event name of [`ws_reset_frame`]'s frame, and of its SSE event.
pub const RESET_EVENT: &str = "reset";

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

// ----- webhooks (Tencent's third-party callbacks) -----

/// `Sign`: lowercase hex SHA-256 of the token followed by `RequestTime`.
///
/// ```
/// // Tencent's example: token `xxxxyyyy` at 1669872112.
/// assert_eq!(
///     imstore::api::callback_sign("xxxxyyyy", 1669872112),
///     "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"
/// );
/// ```
pub fn callback_sign(token: &str, request_time: u64) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{token}{request_time}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The query string of a webhook call: `SdkAppid`, `CallbackCommand`, `contenttype=json`,
/// `ClientIP`, `OptPlatform`, and with a token `Sign` and `RequestTime`.
pub fn callback_query(
    sdkappid: u64,
    command: &str,
    origin: &Origin,
    token: Option<(&str, u64)>,
) -> String {
    let mut q = format!(
        "SdkAppid={sdkappid}&CallbackCommand={command}&contenttype=json&ClientIP={}&OptPlatform={}",
        percent_encode(&origin.client_ip),
        origin.platform.as_str()
    );
    if let Some((token, time)) = token {
        q.push_str(&format!(
            "&Sign={}&RequestTime={time}",
            callback_sign(token, time)
        ));
    }
    q
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The message fields the send callbacks share.
fn send_fields(m: &OutgoingMessage<'_>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("From_Account".into(), m.from.into());
    out.insert("To_Account".into(), m.to.into());
    out.insert("MsgSeq".into(), m.key.seq().into());
    out.insert("MsgRandom".into(), m.key.random().into());
    out.insert("MsgTime".into(), m.key.time().into());
    out.insert("MsgKey".into(), m.key.to_string().into());
    out.insert("OnlineOnlyFlag".into(), u8::from(m.online_only).into());
    out.insert(
        "MsgBody".into(),
        serde_json::to_value(m.body).expect("elements serialize"),
    );
    if let Some(c) = m.cloud_custom_data {
        out.insert("CloudCustomData".into(), c.into());
    }
    out
}

/// `C2C.CallbackBeforeSendMsg`: the command and the JSON body.
pub fn before_send_body(m: &OutgoingMessage<'_>) -> String {
    let mut body = Map::new();
    body.insert("CallbackCommand".into(), "C2C.CallbackBeforeSendMsg".into());
    body.extend(send_fields(m));
    Value::Object(body).to_string()
}

/// The app's answer to `C2C.CallbackBeforeSendMsg` as a decision: `ErrorCode` 0 allows (with
/// `MsgBody` / `CloudCustomData` replacing the original when given), 1 refuses (20006), 2 drops
/// silently, 120001..=130000 refuses with that code and `ErrorInfo`; any other integer code —
/// a negative one too, as a backend's "-1: service error", and any other number (a fraction,
/// one past i64) — refuses with 20006. `Err` when the answer is not a JSON object with a
/// numeric ErrorCode: the call failed.
/// An empty `MsgBody` (`[]`) and an empty `CloudCustomData` (`""`) replace nothing, as missing
/// ones: an app's answer model that always writes its fields (Go's `string` without
/// `omitempty`) would otherwise wipe every sender's CloudCustomData. A replacement that is no
/// MsgBody (or a `CloudCustomData` that is no string) refuses with 20006: the app answered, so
/// the call did not fail, and the original — which the app asked to replace — must not go
/// out, as fail-open would let it.
pub fn before_send_decision(answer: &[u8]) -> Result<BeforeSend, String> {
    let v: Value =
        serde_json::from_slice(answer).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let code = match v.get("ErrorCode") {
        Some(c) if c.is_number() => c.as_i64().unwrap_or(-1),
        _ => return Err("the answer has no numeric ErrorCode".into()),
    };
    Ok(match code {
        0 => {
            // An empty MsgBody replaces nothing, as a missing one (an app's answer model that
            // always writes its fields): no message has an empty body.
            let body = match v.get("MsgBody") {
                None | Some(Value::Null) => None,
                Some(Value::Array(items)) if items.is_empty() => None,
                Some(b) => match serde_json::from_value::<Vec<MsgElement>>(b.clone()) {
                    Ok(body) => Some(body),
                    Err(_) => return Ok(BeforeSend::Block),
                },
            };
            let cloud_custom_data = match v.get("CloudCustomData") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Ok(BeforeSend::Block),
            };
            if body.is_none() && cloud_custom_data.is_none() {
                BeforeSend::Allow
            } else {
                BeforeSend::Replace {
                    body,
                    cloud_custom_data,
                }
            }
        }
        2 => BeforeSend::Drop,
        c @ 120_001..=130_000 => BeforeSend::BlockWithCode {
            code: c as u32,
            info: v
                .get("ErrorInfo")
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
        _ => BeforeSend::Block,
    })
}

/// An outbox entry as its webhook call: the command and the JSON body.
pub fn callback_body(entry: &OutboxEntry) -> (&'static str, String) {
    match &entry.event {
        CallbackEvent::AfterSend {
            message,
            online_only,
            unread,
        } => {
            let body = message
                .content
                .as_ref()
                .map(|c| c.body())
                .unwrap_or_default();
            let m = OutgoingMessage {
                from: &message.from,
                to: &message.to,
                key: message.key,
                online_only: *online_only,
                body: &body,
                cloud_custom_data: message.content.as_ref().and_then(|c| c.cloud_custom_data()),
            };
            let mut out = Map::new();
            out.insert("CallbackCommand".into(), "C2C.CallbackAfterSendMsg".into());
            out.extend(send_fields(&m));
            out.insert("SendMsgResult".into(), 0.into());
            out.insert("ErrorInfo".into(), "send msg succeed".into());
            out.insert("UnreadMsgNum".into(), (*unread).into());
            ("C2C.CallbackAfterSendMsg", Value::Object(out).to_string())
        }
        CallbackEvent::AfterRecall {
            from,
            to,
            key,
            unread,
            at,
        } => (
            "C2C.CallbackAfterMsgWithDraw",
            json!({
                "CallbackCommand": "C2C.CallbackAfterMsgWithDraw",
                "From_Account": &**from,
                "To_Account": &**to,
                "MsgKey": key.to_string(),
                "UnreadMsgNum": unread,
                "EventTime": at.saturating_mul(1000),
            })
            .to_string(),
        ),
        CallbackEvent::AfterRead {
            report,
            peer,
            at,
            unread,
        } => (
            "C2C.CallbackAfterMsgReport",
            json!({
                "CallbackCommand": "C2C.CallbackAfterMsgReport",
                "Report_Account": &**report,
                "Peer_Account": &**peer,
                "LastReadTime": at,
                "UnreadMsgNum": unread,
            })
            .to_string(),
        ),
    }
}

/// Whether an app's answer to a webhook counts as received: HTTP 200 with a JSON body.
pub fn callback_accepted(status: u16, body: &[u8]) -> bool {
    status == 200 && serde_json::from_slice::<Value>(body).is_ok()
}
