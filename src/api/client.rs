//! A device's requests over its WebSocket channel (SPEC §7): `sendmsg`, `recall`, `read` and
//! `history`, each acting as the device's own account, with the same fields, error codes and
//! answers as its REST twin.
//!
//! A client's send goes to the recipient's devices, the sender's other devices and both sides'
//! roaming (SyncOtherMachine 1), and sits in the sending device's cache; its MsgTimeStamp is the
//! server's clock (a client cannot date its messages back, which the recall window relies on).

use serde_json::{Map, Value};

use super::fields::{Fields, bad};
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
                let req = SendRequest {
                    // Owned: the send may wait for an app's before-send decision.
                    from: Some(account.to_owned().into()),
                    to: to.to_owned().into(),
                    msg_random: f.u32("MsgRandom", 90005)?,
                    msg_seq: f.opt_u32("MsgSeq", 90001)?,
                    msg_time: ctx.client_msg_time,
                    body: f
                        .msg_body()?
                        .ok_or_else(|| bad(90007, "MsgBody", "is missing"))?,
                    cloud_custom_data: f
                        .opt_string(&["CloudCustomData"], 90001)?
                        .map(str::to_owned),
                    sender_copy: SenderCopy::RoamingAndDevices,
                    lifetime: f.opt_u64("MsgLifeTime", 90026)?,
                    from_device: Some(device.device.clone()),
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
        let store = Store::in_memory(Config::default().with_clock(clock)).unwrap();
        store.import_accounts(&["a", "b"]).unwrap();
        let api = Api::new(store.clone(), ApiConfig::new(1_400_000_000, "k"));
        let device = DeviceRequest {
            account: "a".into(),
            device: "phone".into(),
            platform: "iOS",
            after: None,
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
        // Without a fixed time the store's clock dates it; the frame's MsgTimeStamp is ignored.
        let plain = answer(api.client_step(&device, &frame, &CallContext::default()));
        assert_eq!(plain["MsgKey"], "77_5_1700000100", "{plain}");
        let page = store.history(&HistoryQuery::new("a", "b", 10)).unwrap();
        assert_eq!(page.messages.len(), 2);
    }
}
