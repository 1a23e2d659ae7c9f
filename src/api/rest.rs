//! The REST handlers: one function per Tencent API, from the body's fields to the store call
//! and the answer's fields.

use serde_json::{Map, Value, json};

use super::fields::{Fields, account_items, bad, import_list, user_list};
use super::wire::WireMessage;
use super::{Api, CallContext, MAX_UNREAD_PEERS, Outcome};
use crate::error::Error;
use crate::hooks::BeforeSend;
use crate::key::MsgKey;
use crate::message::SendRequest;
use crate::roaming::HistoryQuery;
use crate::store::BatchSendRequest;
use crate::store::ImportRequest;

impl Api {
    /// The other party's field (To_Account, Peer_Account: 90003 when missing or not a
    /// string). When it is, an acting account that does not exist is said first: Tencent's
    /// precedence puts 90008 (no such From_Account) before 90003 (SPEC §4).
    fn other_party<'a>(
        &self,
        f: &Fields<'a>,
        acting: Option<&str>,
        names: &[&'static str],
    ) -> Result<&'a str, Error> {
        f.string(names, 90003).map_err(|e| match acting {
            Some(a) if matches!(self.store.account_exists(a), Ok(false)) => {
                Error::FromAccountNotFound(a.to_owned())
            }
            _ => e,
        })
    }

    // ----- accounts -----

    pub(super) fn account_import(
        &self,
        _: &str,
        f: &Fields<'_>,
    ) -> Result<Map<String, Value>, Error> {
        let user = f.string(&["UserID", "Identifier"], 70402)?;
        self.store.import_account(user)?;
        Ok(Map::new())
    }

    pub(super) fn multiaccount_import(
        &self,
        _: &str,
        f: &Fields<'_>,
    ) -> Result<Map<String, Value>, Error> {
        let users = import_list(f)?;
        let failed = self.store.import_accounts(&users)?;
        Ok(answer([("FailAccounts", json!(failed))]))
    }

    pub(super) fn account_check(
        &self,
        _: &str,
        f: &Fields<'_>,
    ) -> Result<Map<String, Value>, Error> {
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
        Ok(answer([("ResultItem", Value::Array(items))]))
    }

    pub(super) fn account_delete(
        &self,
        _: &str,
        f: &Fields<'_>,
    ) -> Result<Map<String, Value>, Error> {
        let users = account_items(f, "DeleteItem")?;
        let items: Vec<Value> = users
            .iter()
            .map(|u| match self.store.delete_account(u) {
                Ok(()) => json!({"UserID": u, "ResultCode": 0, "ResultInfo": ""}),
                Err(e) => json!({"UserID": u, "ResultCode": e.code(), "ResultInfo": e.to_string()}),
            })
            .collect();
        Ok(answer([("ResultItem", Value::Array(items))]))
    }

    // ----- messages -----

    /// `sendmsg`: `ForbidCallbackControl` may hold `ForbidBeforeSendMsgCallback` (the message
    /// is stored without asking) and `ForbidAfterSendMsgCallback` (no after-send callback).
    pub(super) fn sendmsg(&self, f: &Fields<'_>, ctx: &CallContext) -> Result<Outcome, Error> {
        let from = f.opt_account(&["From_Account"], 90008)?;
        let to = self.other_party(f, from, &["To_Account"])?;
        let m = f.message()?;
        let (forbid_before, forbid_after) = forbid_callbacks(f)?;
        let req = SendRequest {
            // Owned: the send may wait for an app's before-send decision past this call.
            from: from.map(|s| s.to_owned().into()),
            to: to.to_owned().into(),
            msg_random: m.random,
            msg_seq: m.seq,
            msg_time: m.time,
            body: m.body,
            cloud_custom_data: m.custom,
            sender_copy: m.sender_copy,
            lifetime: m.lifetime,
            from_device: None,
            control: m.control,
        };
        let prepared = self.store.prepare_send(req)?;
        let prepared = if forbid_after {
            prepared.without_after_callback()
        } else {
            prepared
        };
        if forbid_before {
            return self
                .finish_send(prepared, BeforeSend::Allow)
                .map(Outcome::Answer);
        }
        self.decide(prepared, ctx)
    }

    /// `importmsg`: SyncFromOldSystem 2 (history) or 5 (real time); every identity field given.
    pub(super) fn importmsg(&self, _: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let realtime = match f.opt_u64("SyncFromOldSystem", 90030)? {
            Some(2) => false,
            Some(5) => true,
            Some(_) => return Err(bad(90030, "SyncFromOldSystem", "must be 2 or 5")),
            None => return Err(bad(90030, "SyncFromOldSystem", "is missing")),
        };
        let from = f.string(&["From_Account"], 90008)?;
        let to = f.string(&["To_Account"], 90003)?;
        let msg_seq = f.u32("MsgSeq", 90004)?;
        let msg_random = f.u32("MsgRandom", 90005)?;
        let msg_time = f.u32("MsgTimeStamp", 90006)?;
        let body = f
            .msg_body()?
            .ok_or_else(|| bad(90007, "MsgBody", "is missing"))?;
        let cloud_custom_data = f
            .opt_string(&["CloudCustomData"], 90001)?
            .map(str::to_owned);
        let r = self.store.import(ImportRequest {
            from: from.to_owned(),
            to: to.to_owned(),
            msg_seq,
            msg_random,
            msg_time,
            body,
            cloud_custom_data,
            realtime,
        })?;
        Ok(answer([
            ("MsgTime", json!(r.msg_time)),
            ("MsgKey", json!(r.msg_key.to_string())),
        ]))
    }

    pub(super) fn batchsendmsg(
        &self,
        _: &str,
        f: &Fields<'_>,
    ) -> Result<Map<String, Value>, Error> {
        let from = f.opt_account(&["From_Account"], 90008)?;
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
            control: m.control,
        })?;
        let errors: Vec<Value> = r
            .errors
            .iter()
            .map(|(u, e)| json!({"To_Account": u, "ErrorCode": e.code()}))
            .collect();
        let mut out = answer([
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

    pub(super) fn admin_getroammsg(
        &self,
        _: &str,
        f: &Fields<'_>,
    ) -> Result<Map<String, Value>, Error> {
        let operator = f.string(&["Operator_Account", "From_Account"], 90008)?;
        self.history_answer(operator, f)
    }

    /// One page of `operator`'s side of the conversation with the body's Peer_Account.
    pub(super) fn history_answer(
        &self,
        operator: &str,
        f: &Fields<'_>,
    ) -> Result<Map<String, Value>, Error> {
        let peer = self.other_party(f, Some(operator), &["Peer_Account", "To_Account"])?;
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
        Ok(answer([
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

    pub(super) fn admin_msgwithdraw(
        &self,
        caller: &str,
        f: &Fields<'_>,
    ) -> Result<Map<String, Value>, Error> {
        let from = f.string(&["From_Account"], 90008)?;
        let to = self.other_party(f, Some(from), &["To_Account"])?;
        let key = f.get("MsgKey").and_then(Value::as_str).unwrap_or("");
        // Missing or mistyped MsgKey parses as the empty string: 90054, after the accounts.
        self.store.recall(caller, from, to, key)?;
        Ok(Map::new())
    }

    pub(super) fn admin_set_msg_read(
        &self,
        _: &str,
        f: &Fields<'_>,
    ) -> Result<Map<String, Value>, Error> {
        let reader = f.string(&["Report_Account"], 90008)?;
        let peer = self.other_party(f, Some(reader), &["Peer_Account"])?;
        // MsgReadTime: Unix seconds, documented as a string; a number is taken too. Absent
        // (or "" / 0, as clients that serialize every field send it): now — everything.
        let until = match f.get("MsgReadTime") {
            None => None,
            Some(Value::String(t)) if t.is_empty() => None,
            Some(Value::String(t)) => Some(t.parse::<u32>().map_err(|_| {
                bad(
                    90001,
                    "MsgReadTime",
                    "must be Unix seconds (a u32, as a string)",
                )
            })?),
            Some(_) => f.opt_u32("MsgReadTime", 90001)?,
        }
        .filter(|&t| t != 0);
        match until {
            Some(time) => self.store.mark_read_until(reader, peer, time)?,
            None => self.store.mark_read(reader, peer)?,
        }
        Ok(Map::new())
    }

    pub(super) fn get_c2c_unread_msg_num(
        &self,
        _: &str,
        f: &Fields<'_>,
    ) -> Result<Map<String, Value>, Error> {
        let account = f.string(&["To_Account"], 90003)?;
        let all = self.store.unread_all(account)?;
        let total: u64 = all.iter().map(|(_, n)| u64::from(*n)).sum();
        let mut out = answer([("AllC2CUnreadMsgNum", json!(total))]);
        let (list, errors): (Vec<Value>, Vec<Value>) = match f.get("Peer_Account") {
            None => (
                all.iter()
                    .map(|(p, n)| json!({"Peer_Account": &**p, "C2CUnreadMsgNum": n}))
                    .collect(),
                Vec::new(),
            ),
            Some(_) => {
                let peers = user_list(f.array("Peer_Account", 90001)?, 90001, "Peer_Account")?;
                if peers.len() > MAX_UNREAD_PEERS {
                    return Err(bad(
                        90001,
                        "Peer_Account",
                        &format!(
                            "at most {MAX_UNREAD_PEERS} accounts a request, not {}",
                            peers.len()
                        ),
                    ));
                }
                let mut list = Vec::new();
                let mut errors = Vec::new();
                for p in peers {
                    // A deleted peer whose messages are still unread is counted in the total
                    // (its conversation stays on this side): listed too, so that the list adds
                    // up; 70107 otherwise.
                    let unread = self.store.unread(account, p)?;
                    if unread > 0 || self.store.account_exists(p)? {
                        list.push(json!({"Peer_Account": p, "C2CUnreadMsgNum": unread}));
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

    pub(super) fn modify_c2c_msg(
        &self,
        _: &str,
        f: &Fields<'_>,
    ) -> Result<Map<String, Value>, Error> {
        let from = f.string(&["From_Account"], 90008)?;
        let to = self.other_party(f, Some(from), &["To_Account"])?;
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
    pub(super) fn faults(&self, _: &str, f: &Fields<'_>) -> Result<Map<String, Value>, Error> {
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
        Ok(answer([
            ("WritesHeld", json!(faults.hold_write.held())),
            ("FsyncsHeld", json!(faults.hold_fsync.held())),
        ]))
    }

    pub(super) fn compact(&self, _: &str, _: &Fields<'_>) -> Result<Map<String, Value>, Error> {
        let r = self.store.compact()?;
        Ok(answer([
            ("Snapshot", json!(r.snapshot.display().to_string())),
            ("Lsn", json!(r.lsn)),
            ("PurgedMessages", json!(r.purged.messages)),
            ("PurgedInboxEntries", json!(r.purged.inbox_entries)),
        ]))
    }
}

pub(super) fn answer<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// `ForbidCallbackControl`: (no before-send callback, no after-send callback).
fn forbid_callbacks(f: &Fields<'_>) -> Result<(bool, bool), Error> {
    let Some(_) = f.get("ForbidCallbackControl") else {
        return Ok((false, false));
    };
    let mut out = (false, false);
    for item in f.array("ForbidCallbackControl", 90001)? {
        match item.as_str() {
            Some("ForbidBeforeSendMsgCallback") => out.0 = true,
            Some("ForbidAfterSendMsgCallback") => out.1 = true,
            _ => {
                return Err(bad(
                    90001,
                    "ForbidCallbackControl",
                    "items must be ForbidBeforeSendMsgCallback or ForbidAfterSendMsgCallback",
                ));
            }
        }
    }
    Ok(out)
}
