//! A request's query string and JSON body, with accessors that turn a missing or mistyped
//! field into the error code Tencent documents for that field.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::Error;
use crate::message::{MsgElement, SendControl, SenderCopy};

/// The query string's parameters (form-decoded: `%XX` escapes, and `+` for a space).
pub(super) fn parse_query(query: &str) -> HashMap<String, String> {
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
            // Form encoding (`application/x-www-form-urlencoded`, what Python's `urlencode`,
            // Go's `url.Values` and Java's `URLEncoder` send): `+` is a space. A Tencent UserSig
            // never holds a `+` (its alphabet has `*` in its place).
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request body's fields, with the accessors that turn a missing or mistyped field into its
/// documented error.
pub(super) struct Fields<'a>(pub &'a Map<String, Value>);

pub(super) fn bad(code: u32, field: &'static str, why: &str) -> Error {
    Error::InvalidField {
        field,
        code,
        why: why.to_owned(),
    }
}

impl<'a> Fields<'a> {
    pub(super) fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// The first present of `names` as a string.
    pub(super) fn string(&self, names: &[&'static str], code: u32) -> Result<&'a str, Error> {
        self.opt_string(names, code)?
            .ok_or_else(|| bad(code, names[0], "is missing"))
    }

    pub(super) fn opt_string(
        &self,
        names: &[&'static str],
        code: u32,
    ) -> Result<Option<&'a str>, Error> {
        match names.iter().find_map(|n| self.get(n)) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(code, names[0], "must be a string")),
        }
    }

    pub(super) fn u32(&self, name: &'static str, code: u32) -> Result<u32, Error> {
        self.opt_u32(name, code)?
            .ok_or_else(|| bad(code, name, "is missing"))
    }

    pub(super) fn opt_u32(&self, name: &'static str, code: u32) -> Result<Option<u32>, Error> {
        self.opt_u64(name, code)?
            .map(|v| {
                u32::try_from(v).map_err(|_| bad(code, name, "must be a 32-bit unsigned integer"))
            })
            .transpose()
    }

    pub(super) fn u64(&self, name: &'static str, code: u32) -> Result<u64, Error> {
        self.opt_u64(name, code)?
            .ok_or_else(|| bad(code, name, "is missing"))
    }

    pub(super) fn opt_u64(&self, name: &'static str, code: u32) -> Result<Option<u64>, Error> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad(code, name, "must be an unsigned integer")),
        }
    }

    pub(super) fn array(&self, name: &'static str, code: u32) -> Result<&'a Vec<Value>, Error> {
        match self.get(name) {
            None => Err(bad(code, name, "is missing")),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(bad(code, name, "must be an array")),
        }
    }

    /// MsgBody: 90007 when not an array, 90002 when an element is not a Tencent element.
    pub(super) fn msg_body(&self) -> Result<Option<Vec<MsgElement>>, Error> {
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
    /// A MsgTimeStamp of 0 is taken as absent (now), as is a SyncOtherMachine of 0: clients
    /// that serialize every field of their request type send 0 for the ones left unset.
    pub(super) fn message(&self) -> Result<MessageFields, Error> {
        Ok(MessageFields {
            random: self.u32("MsgRandom", 90005)?,
            time: self.opt_u32("MsgTimeStamp", 90006)?.filter(|&t| t != 0),
            body: self
                .msg_body()?
                .ok_or_else(|| bad(90007, "MsgBody", "is missing"))?,
            lifetime: self.opt_u64("MsgLifeTime", 90044)?,
            sender_copy: self.sender_copy()?,
            seq: self.opt_u32("MsgSeq", 90004)?,
            custom: self
                .opt_string(&["CloudCustomData"], 90001)?
                .map(str::to_owned),
            control: self.send_control()?,
        })
    }

    /// SendMsgControl: an array of strings. `NoUnread` and `NoLastMsg` are honoured;
    /// `WithMuteNotifications` (the recipient's mute setting, which imstore does not keep)
    /// and names it does not know are accepted and change nothing, as a newer Tencent flag
    /// must not make a send fail. Not an array of strings: 90001.
    pub(super) fn send_control(&self) -> Result<SendControl, Error> {
        let mut control = SendControl::default();
        let Some(v) = self.get("SendMsgControl") else {
            return Ok(control);
        };
        let items = v
            .as_array()
            .ok_or_else(|| bad(90001, "SendMsgControl", "must be an array of strings"))?;
        for item in items {
            match item.as_str() {
                Some("NoUnread") => control.no_unread = true,
                Some("NoLastMsg") => control.no_last_msg = true,
                Some(_) => {}
                None => return Err(bad(90001, "SendMsgControl", "items must be strings")),
            }
        }
        Ok(control)
    }

    /// SyncOtherMachine: 90031 unless 1, 2, absent or 0 (taken as absent).
    pub(super) fn sender_copy(&self) -> Result<SenderCopy, Error> {
        let v = self.opt_u64("SyncOtherMachine", 90031)?.filter(|&v| v != 0);
        SenderCopy::from_sync_other_machine(v)
            .ok_or_else(|| bad(90031, "SyncOtherMachine", "must be 1 or 2"))
    }

    /// An optional account field (From_Account of a send): the empty string is taken as
    /// absent, as clients that serialize every field send it.
    pub(super) fn opt_account(
        &self,
        names: &[&'static str],
        code: u32,
    ) -> Result<Option<&'a str>, Error> {
        Ok(self.opt_string(names, code)?.filter(|s| !s.is_empty()))
    }
}

pub(super) struct MessageFields {
    pub random: u32,
    pub time: Option<u32>,
    pub body: Vec<MsgElement>,
    pub lifetime: Option<u64>,
    pub sender_copy: SenderCopy,
    pub seq: Option<u32>,
    pub custom: Option<String>,
    pub control: SendControl,
}

/// `multiaccount_import`'s accounts: `Accounts: [...]`, or Tencent's newer `AccountList: [{"UserID":
/// ..., "Nick": ..., "FaceUrl": ...}]` (profile fields, which imstore does not keep, are
/// ignored); `Accounts` when both are given. 70402 when neither is a list of accounts.
pub(super) fn import_list<'a>(f: &Fields<'a>) -> Result<Vec<&'a str>, Error> {
    let field = match (f.get("Accounts"), f.get("AccountList")) {
        (None, Some(_)) => "AccountList",
        _ => "Accounts",
    };
    user_list(f.array(field, 70402)?, 70402, field)
}

pub(super) fn user_list<'a>(
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
pub(super) fn account_items<'a>(
    f: &Fields<'a>,
    field: &'static str,
) -> Result<Vec<&'a str>, Error> {
    let users = user_list(f.array(field, 70402)?, 70402, field)?;
    if users.len() > crate::store::MAX_IMPORT_BATCH {
        return Err(Error::TooManyAccounts { count: users.len() });
    }
    Ok(users)
}
