//! A device's requests over its WebSocket channel (SPEC §7): `sendmsg`, `recall`, `read` and
//! `history`, each acting as the device's own account, with the same fields, error codes and
//! answers as its REST twin.
//!
//! A client's send goes to the recipient's devices, the sender's other devices and both sides'
//! roaming (SyncOtherMachine 1), and sits in the sending device's cache; its MsgTimeStamp is the
//! server's clock (a client cannot date its messages back, which the recall window relies on).

use serde_json::{Map, Value};

use super::fields::Fields;
use super::wire::ok_reply;
use super::{Api, CallContext, DeviceRequest, Outcome, Step, error_reply};
use crate::error::Error;
use crate::message::{SendRequest, SenderCopy};

impl Api {
    /// Serves one client request (`frame` is the whole frame; `Op` names the request).
    pub fn client_step(
        &self,
        device: &DeviceRequest,
        frame: &Map<String, Value>,
        ctx: &CallContext,
    ) -> Step {
        match self.client_request(device, &Fields(frame), ctx) {
            Ok(Outcome::Answer(fields)) => Step::Done(ok_reply(fields)),
            Ok(Outcome::BeforeSend(p)) => Step::BeforeSend(p),
            Err(e) => Step::Done(error_reply(&e)),
        }
    }

    fn client_request(
        &self,
        device: &DeviceRequest,
        f: &Fields<'_>,
        ctx: &CallContext,
    ) -> Result<Outcome, Error> {
        let account = device.account.as_str();
        match f.get("Op").and_then(Value::as_str) {
            Some("sendmsg") => {
                let to = f.string(&["To_Account"], 90003)?;
                // The fields, their errors and their precedence as REST `sendmsg`'s; a client
                // does not date its messages (MsgTimeStamp: the server's) and its send
                // reaches its other devices (SyncOtherMachine 1).
                let m = f.message()?;
                let req = SendRequest {
                    // Owned: the send may wait for an app's before-send decision.
                    from: Some(account.to_owned().into()),
                    to: to.to_owned().into(),
                    msg_random: m.random,
                    msg_seq: m.seq,
                    msg_time: ctx.client_msg_time,
                    body: m.body,
                    cloud_custom_data: m.custom,
                    sender_copy: SenderCopy::RoamingAndDevices,
                    lifetime: m.lifetime,
                    from_device: Some(device.device.clone()),
                    control: m.control,
                };
                let prepared = self.store.prepare_send(req)?;
                self.decide(prepared, ctx)
            }
            Some("recall") => {
                let to = f.string(&["To_Account"], 90003)?;
                let key = f.get("MsgKey").and_then(Value::as_str).unwrap_or("");
                self.store.recall_own_deferred(account, to, key)?.wait()?;
                Ok(Outcome::Answer(Map::new()))
            }
            Some("read") => {
                let peer = f.string(&["Peer_Account"], 90003)?;
                self.store.mark_read(account, peer)?;
                Ok(Outcome::Answer(Map::new()))
            }
            Some("history") => self.history_answer(account, f).map(Outcome::Answer),
            Some("ack") => Err(Error::InvalidRequest(
                "ack needs Seq, the last sequence number received".into(),
            )),
            Some(other) => Err(Error::InvalidRequest(format!(
                "unknown Op {other:?}: use ack, sendmsg, recall, read or history"
            ))),
            None => Err(Error::InvalidRequest("the frame has no Op".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::ApiConfig;
    use crate::{Config, HistoryQuery, ManualClock, Store};

    fn answer(step: Step) -> Value {
        match step {
            Step::Done(reply) => serde_json::from_str(&reply.json).unwrap(),
            Step::BeforeSend(_) => panic!("no before-send decision is asked for here"),
        }
    }

    /// A send whose MsgKey a cluster node fixed (`CallContext::client_msg_time`, and a MsgSeq),
    /// sent again — the node's retry — finds the message: one message, one MsgKey. A client's
    /// own MsgTimeStamp counts for nothing.
    #[test]
    fn a_client_send_with_a_fixed_key_is_stored_once() {
        let clock = ManualClock::new(1_700_000_100);
        let store = Store::in_memory(Config::default().with_clock(clock.clone())).unwrap();
        store.import_accounts(&["a", "b"]).unwrap();
        let api = Api::new(store.clone(), ApiConfig::new(1_400_000_000, "k"));
        let device = DeviceRequest {
            account: "a".into(),
            device: "phone".into(),
            platform: "iOS",
            after: None,
            sig_expires_at: None,
        };
        let frame = json!({
            "Op": "sendmsg", "To_Account": "b", "MsgRandom": 5, "MsgSeq": 77,
            "MsgTimeStamp": 1_600_000_000u32,
            "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "once"}}],
        });
        let Value::Object(frame) = frame else {
            unreachable!()
        };
        let fixed = CallContext {
            client_msg_time: Some(1_700_000_050),
            ..CallContext::default()
        };
        let first = answer(api.client_step(&device, &frame, &fixed));
        let again = answer(api.client_step(&device, &frame, &fixed));
        assert_eq!(first["ErrorCode"], 0, "{first}");
        assert_eq!(first["MsgKey"], "77_5_1700000050");
        assert_eq!(again["MsgKey"], first["MsgKey"], "{again}");
        // Without a fixed time the store's clock dates it (the frame's MsgTimeStamp is
        // ignored): 50 s later, the same MsgSeq, MsgRandom and content are a retry — the
        // first message's answer, as Tencent deduplicates for 120 s.
        let retry = answer(api.client_step(&device, &frame, &CallContext::default()));
        assert_eq!(retry["MsgKey"], first["MsgKey"], "{retry}");
        let page = store.history(&HistoryQuery::new("a", "b", 10)).unwrap();
        assert_eq!(page.messages.len(), 1);
        clock.advance(200);
        let later = answer(api.client_step(&device, &frame, &CallContext::default()));
        assert_eq!(later["MsgKey"], "77_5_1700000300", "{later}");
        let page = store.history(&HistoryQuery::new("a", "b", 10)).unwrap();
        assert_eq!(page.messages.len(), 2);
    }
}
