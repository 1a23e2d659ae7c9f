//! The payload codec: the only module that knows bincode. It defines the on-disk shapes of
//! journal operations and snapshot images and turns them into bytes and back.
//!
//! bincode is pinned at 2.0.1 (upstream is unmaintained, RUSTSEC-2025-0141), so everything it
//! touches is here: swapping the codec means rewriting this module (this file, the journal's
//! operation records; `codec/images.rs`, the snapshot's images) and bumping
//! `PAYLOAD_VERSION`. Every decode carries a size limit, so a hostile or corrupt length prefix
//! cannot make it allocate more than `MAX_PAYLOAD` bytes (an operation) or
//! `MAX_IMAGE_CLAIM` (a snapshot record).

use bincode::config::{self, Config};
use bincode::{BorrowDecode, Decode, Encode};

use crate::account::UserId;
use crate::callback::{Origin, Platform};
use crate::error::Error;
use crate::key::MsgKey;
use crate::message::{Content, SendControl, SenderCopy};
use crate::op::{ModifyOp, Op, SendKind, SendOp};

/// Version of the payload encoding, stored in every record frame.
pub(crate) const PAYLOAD_VERSION: u8 = 1;
/// The largest payload a record may carry (a message is at most 12 KB; a snapshot record holds
/// one account or one conversation).
pub(crate) const MAX_PAYLOAD: usize = 64 << 20;

/// What decoding one snapshot record may claim. bincode's limit counts the memory a decode
/// builds — a container's length times its items' in-memory size, every integer at its full
/// width — not the bytes it reads, and an image is several times larger in memory than on
/// disk (an inbox entry ~45 bytes encoded, ~150 in memory). A record's payload is at most
/// `MAX_PAYLOAD` bytes, and the writer keeps the items of each record under half of
/// `MAX_PAYLOAD` in memory (`store::snapshot::split_record`), so a record it writes claims
/// under 1.5 × `MAX_PAYLOAD`; this bound also reads back the records of snapshots written
/// before it did that (one inbox of 500,000 entries claimed ~72 MiB in 23 MiB of bytes, and
/// could not be read).
pub(crate) const MAX_IMAGE_CLAIM: usize = 8 * MAX_PAYLOAD;

fn cfg() -> impl Config {
    config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_PAYLOAD>()
}

/// [`cfg`] for snapshot records, with their own limit ([`MAX_IMAGE_CLAIM`]).
fn image_cfg() -> impl Config {
    config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_IMAGE_CLAIM>()
}

/// A malformed payload: the frame's checksum was right, so this is a bug or a codec mismatch.
#[derive(Debug)]
pub(crate) struct DecodeError(pub String);

impl From<bincode::error::DecodeError> for DecodeError {
    fn from(e: bincode::error::DecodeError) -> Self {
        DecodeError(e.to_string())
    }
}

impl From<Error> for DecodeError {
    fn from(e: Error) -> Self {
        DecodeError(e.to_string())
    }
}

#[derive(Encode, Decode, Clone, Copy)]
struct KeyRec(u32, u32, u32);

impl From<MsgKey> for KeyRec {
    fn from(k: MsgKey) -> Self {
        KeyRec(k.seq(), k.random(), k.time())
    }
}

impl From<KeyRec> for MsgKey {
    fn from(k: KeyRec) -> Self {
        MsgKey::new(k.0, k.1, k.2)
    }
}

/// An operation as it is journaled. Strings are borrowed on decode: replay copies nothing it
/// does not keep.
#[derive(Encode, BorrowDecode)]
enum OpRecord<'a> {
    ImportAccount {
        user: &'a str,
    },
    DeleteAccount {
        user: &'a str,
    },
    Send {
        from: &'a str,
        to: &'a str,
        key: KeyRec,
        body_json: &'a str,
        custom: Option<&'a str>,
        sender_copy: u8,
        lifetime: u64,
        origin_device: Option<&'a str>,
        at: u64,
    },
    Recall {
        from: &'a str,
        to: &'a str,
        key: KeyRec,
        by: &'a str,
        at: u64,
    },
    Modify(ModifyRec<'a>),
    SetRead {
        reader: &'a str,
        peer: &'a str,
        at: u64,
    },
    AddDevice {
        account: &'a str,
        device: &'a str,
    },
    Cursor {
        account: &'a str,
        device: &'a str,
        cursor: u64,
    },
    PurgeConversation {
        a: &'a str,
        b: &'a str,
        cutoff: u64,
    },
    PurgeInbox {
        account: &'a str,
        at: u64,
    },
    // Added with format 2; the variants above keep their numbers so older journals decode.
    Connect {
        account: &'a str,
        device: &'a str,
        resume: Option<u64>,
        at: u64,
    },
    CursorAt {
        account: &'a str,
        device: &'a str,
        cursor: u64,
        at: u64,
    },
    ForgetDevices {
        account: &'a str,
        devices: Vec<&'a str>,
        at: u64,
    },
    // Added with the webhooks: the origin of an operation that fires an after-callback, and
    // imports. The variants above still decode (no origin, a plain send).
    SendV2(SendRec<'a>),
    RecallV2(RecallRec<'a>),
    SetReadV2 {
        reader: &'a str,
        peer: &'a str,
        at: u64,
        origin: Option<OriginRec<'a>>,
    },
    OutboxAck {
        upto: u64,
    },
    // Added with the settings a purge ran under, so that replay under another config removes
    // what the live purge removed. `ForgetDevices` and `PurgeInbox` above still decode (their
    // settings then come from the config at replay).
    ForgetDevicesIdle {
        account: &'a str,
        devices: Vec<&'a str>,
        at: u64,
        idle: u64,
    },
    PurgeInboxRetention {
        account: &'a str,
        at: u64,
        retention: u64,
    },
    // Added with the settings a send, recall or modification ran under: the retention a send
    // trimmed its conversation to, the lifetime of a recall's or modification's notices. The
    // V2 send and recall and the first modify above still decode (the config at replay then
    // stands in).
    SendV3(SendRec<'a>, u64),
    RecallV3(RecallRec<'a>, u64),
    ModifyV2(ModifyRec<'a>, u64),
    // Added with MsgReadTime: a read mark up to a time. A mark of everything is still
    // `SetReadV2`.
    SetReadUntil {
        reader: &'a str,
        peer: &'a str,
        at: u64,
        origin: Option<OriginRec<'a>>,
        until: u32,
    },
    // Added with SendMsgControl: a send with its control bits (`SendControl::bits`) besides
    // the retention. A plain send is still `SendV3`.
    SendV4(SendRec<'a>, Option<u64>, u8),
    // Added when a delete began to mark the account's conversations read (`Op::DeleteAccount`
    // `read_all`). A `DeleteAccount` record replays as it ran: marks left where they were.
    DeleteAccountReadAll {
        user: &'a str,
    },
    // Added when reopened stores began to number above their past (`Op::SeqFloor`).
    SeqFloor {
        floor: u64,
    },
}

/// A send as journaled (`SendV2`; `SendV3` adds the retention it trimmed to). A struct's
/// fields encode as a struct variant's would: the records keep their bytes.
#[derive(Encode, BorrowDecode)]
struct SendRec<'a> {
    from: &'a str,
    to: &'a str,
    key: KeyRec,
    body_json: &'a str,
    custom: Option<&'a str>,
    sender_copy: u8,
    lifetime: u64,
    origin_device: Option<&'a str>,
    at: u64,
    /// 0 send, 2 import as history, 5 import in real time (SyncFromOldSystem).
    kind: u8,
    origin: Option<OriginRec<'a>>,
}

/// A recall as journaled (`RecallV2`; `RecallV3` adds its notices' lifetime).
#[derive(Encode, BorrowDecode)]
struct RecallRec<'a> {
    from: &'a str,
    to: &'a str,
    key: KeyRec,
    by: &'a str,
    at: u64,
    origin: Option<OriginRec<'a>>,
}

/// A modification as journaled (`Modify`; `ModifyV2` adds its notices' lifetime).
#[derive(Encode, BorrowDecode)]
struct ModifyRec<'a> {
    from: &'a str,
    to: &'a str,
    key: KeyRec,
    body_json: Option<&'a str>,
    custom: Option<&'a str>,
    at: u64,
}

/// An operation's origin: (OptPlatform code, ClientIP).
#[derive(Encode, BorrowDecode)]
struct OriginRec<'a>(u8, &'a str);

fn origin_rec(o: &Option<Origin>) -> Option<OriginRec<'_>> {
    o.as_ref()
        .map(|o| OriginRec(o.platform.code(), &o.client_ip))
}

fn origin_from(o: Option<OriginRec<'_>>) -> Result<Option<Origin>, DecodeError> {
    o.map(|OriginRec(code, ip)| {
        Ok(Origin {
            platform: Platform::from_code(code)
                .ok_or_else(|| DecodeError(format!("unknown platform code {code}")))?,
            client_ip: ip.to_owned(),
        })
    })
    .transpose()
}

fn kind_code(k: SendKind) -> u8 {
    match k {
        SendKind::Send => 0,
        SendKind::ImportHistory => 2,
        SendKind::ImportRealtime => 5,
    }
}

fn kind_from(k: u8) -> Result<SendKind, DecodeError> {
    match k {
        0 => Ok(SendKind::Send),
        2 => Ok(SendKind::ImportHistory),
        5 => Ok(SendKind::ImportRealtime),
        _ => Err(DecodeError(format!("unknown send kind {k}"))),
    }
}

fn copy_code(c: SenderCopy) -> u8 {
    match c {
        SenderCopy::Roaming => 0,
        SenderCopy::RoamingAndDevices => 1,
        SenderCopy::Nothing => 2,
    }
}

fn copy_from_code(c: u8) -> Result<SenderCopy, DecodeError> {
    match c {
        0 => Ok(SenderCopy::Roaming),
        1 => Ok(SenderCopy::RoamingAndDevices),
        2 => Ok(SenderCopy::Nothing),
        _ => Err(DecodeError(format!("unknown SyncOtherMachine code {c}"))),
    }
}

/// Appends the encoding of `op` to `out`.
pub(crate) fn encode_op(op: &Op, out: &mut Vec<u8>) {
    // A body kept as its text is journaled as its JSON, built here.
    let body = match op {
        Op::Send(s) => Some(s.content.body_json()),
        Op::Modify(m) => m.body.as_ref().map(|c| c.body_json()),
        _ => None,
    };
    let rec = match op {
        Op::ImportAccount { user } => OpRecord::ImportAccount { user },
        Op::DeleteAccount {
            user,
            read_all: false,
        } => OpRecord::DeleteAccount { user },
        Op::DeleteAccount {
            user,
            read_all: true,
        } => OpRecord::DeleteAccountReadAll { user },
        Op::Send(s) => {
            let rec = SendRec {
                from: &s.from,
                to: &s.to,
                key: s.key.into(),
                body_json: body.as_deref().expect("a send's body"),
                custom: s.content.cloud_custom_data(),
                sender_copy: copy_code(s.sender_copy),
                lifetime: s.lifetime,
                origin_device: s.origin_device.as_deref(),
                at: s.at,
                kind: kind_code(s.kind),
                origin: origin_rec(&s.origin),
            };
            match (s.retention, s.control.bits()) {
                (Some(retention), 0) => OpRecord::SendV3(rec, retention),
                (None, 0) => OpRecord::SendV2(rec),
                (retention, control) => OpRecord::SendV4(rec, retention, control),
            }
        }
        Op::Recall {
            from,
            to,
            key,
            by,
            at,
            origin,
            notice,
        } => {
            let rec = RecallRec {
                from,
                to,
                key: (*key).into(),
                by,
                at: *at,
                origin: origin_rec(origin),
            };
            match *notice {
                Some(notice) => OpRecord::RecallV3(rec, notice),
                None => OpRecord::RecallV2(rec),
            }
        }
        Op::Modify(m) => {
            let rec = ModifyRec {
                from: &m.from,
                to: &m.to,
                key: m.key.into(),
                body_json: body.as_deref(),
                custom: m.cloud_custom_data.as_deref(),
                at: m.at,
            };
            match m.notice {
                Some(notice) => OpRecord::ModifyV2(rec, notice),
                None => OpRecord::Modify(rec),
            }
        }
        Op::SetRead {
            reader,
            peer,
            at,
            origin,
            until: None,
        } => OpRecord::SetReadV2 {
            reader,
            peer,
            at: *at,
            origin: origin_rec(origin),
        },
        Op::SetRead {
            reader,
            peer,
            at,
            origin,
            until: Some(until),
        } => OpRecord::SetReadUntil {
            reader,
            peer,
            at: *at,
            origin: origin_rec(origin),
            until: *until,
        },
        Op::OutboxAck { upto } => OpRecord::OutboxAck { upto: *upto },
        Op::Connect {
            account,
            device,
            resume,
            at,
        } => OpRecord::Connect {
            account,
            device,
            resume: *resume,
            at: *at,
        },
        Op::Cursor {
            account,
            device,
            cursor,
            at,
        } => OpRecord::CursorAt {
            account,
            device,
            cursor: *cursor,
            at: *at,
        },
        Op::ForgetDevices {
            account,
            devices,
            at,
            idle,
        } => {
            let (devices, at) = (devices.iter().map(|d| &**d).collect(), *at);
            match *idle {
                Some(idle) => OpRecord::ForgetDevicesIdle {
                    account,
                    devices,
                    at,
                    idle,
                },
                None => OpRecord::ForgetDevices {
                    account,
                    devices,
                    at,
                },
            }
        }
        Op::PurgeConversation { a, b, cutoff } => OpRecord::PurgeConversation {
            a,
            b,
            cutoff: *cutoff,
        },
        Op::PurgeInbox {
            account,
            at,
            retention,
        } => match *retention {
            Some(retention) => OpRecord::PurgeInboxRetention {
                account,
                at: *at,
                retention,
            },
            None => OpRecord::PurgeInbox { account, at: *at },
        },
        Op::SeqFloor { floor } => OpRecord::SeqFloor { floor: *floor },
    };
    bincode::encode_into_std_write(rec, out, cfg()).expect("writing to a Vec cannot fail");
}

/// Decodes an operation; `name` turns an account name into the store's shared `UserId`.
pub(crate) fn decode_op(
    bytes: &[u8],
    mut name: impl FnMut(&str) -> Result<UserId, Error>,
) -> Result<Op, DecodeError> {
    let (rec, used): (OpRecord<'_>, usize) = bincode::borrow_decode_from_slice(bytes, cfg())?;
    if used != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes after an operation",
            bytes.len() - used
        )));
    }
    Ok(match rec {
        OpRecord::ImportAccount { user } => Op::ImportAccount { user: name(user)? },
        OpRecord::DeleteAccount { user } => Op::DeleteAccount {
            user: name(user)?,
            read_all: false,
        },
        OpRecord::DeleteAccountReadAll { user } => Op::DeleteAccount {
            user: name(user)?,
            read_all: true,
        },
        OpRecord::Send {
            from,
            to,
            key,
            body_json,
            custom,
            sender_copy,
            lifetime,
            origin_device,
            at,
        } => Op::Send(SendOp {
            from: name(from)?,
            to: name(to)?,
            key: key.into(),
            content: Content::from_trusted_json(body_json, custom),
            sender_copy: copy_from_code(sender_copy)?,
            lifetime,
            origin_device: origin_device.map(Into::into),
            at,
            kind: SendKind::Send,
            origin: None,
            retention: None,
            control: SendControl::default(),
            retry_dedup: false,
        }),
        OpRecord::SendV2(rec) => send_op(rec, None, 0, &mut name)?,
        OpRecord::Recall {
            from,
            to,
            key,
            by,
            at,
        } => Op::Recall {
            from: name(from)?,
            to: name(to)?,
            key: key.into(),
            by: name(by)?,
            at,
            origin: None,
            notice: None,
        },
        OpRecord::RecallV2(rec) => recall_op(rec, None, &mut name)?,
        OpRecord::Modify(rec) => modify_op(rec, None, &mut name)?,
        OpRecord::SetRead { reader, peer, at } => Op::SetRead {
            reader: name(reader)?,
            peer: name(peer)?,
            at,
            origin: None,
            until: None,
        },
        OpRecord::SetReadV2 {
            reader,
            peer,
            at,
            origin,
        } => Op::SetRead {
            reader: name(reader)?,
            peer: name(peer)?,
            at,
            origin: origin_from(origin)?,
            until: None,
        },
        OpRecord::SetReadUntil {
            reader,
            peer,
            at,
            origin,
            until,
        } => Op::SetRead {
            reader: name(reader)?,
            peer: name(peer)?,
            at,
            origin: origin_from(origin)?,
            until: Some(until),
        },
        OpRecord::OutboxAck { upto } => Op::OutboxAck { upto },
        // Format 1: a device added, or a cursor recorded at disconnect, with no time.
        OpRecord::AddDevice { account, device } => Op::Connect {
            account: name(account)?,
            device: device.into(),
            resume: None,
            at: 0,
        },
        OpRecord::Cursor {
            account,
            device,
            cursor,
        } => Op::Cursor {
            account: name(account)?,
            device: device.into(),
            cursor,
            at: 0,
        },
        OpRecord::Connect {
            account,
            device,
            resume,
            at,
        } => Op::Connect {
            account: name(account)?,
            device: device.into(),
            resume,
            at,
        },
        OpRecord::CursorAt {
            account,
            device,
            cursor,
            at,
        } => Op::Cursor {
            account: name(account)?,
            device: device.into(),
            cursor,
            at,
        },
        OpRecord::ForgetDevices {
            account,
            devices,
            at,
        } => forget_devices(name(account)?, devices, at, None),
        OpRecord::ForgetDevicesIdle {
            account,
            devices,
            at,
            idle,
        } => forget_devices(name(account)?, devices, at, Some(idle)),
        OpRecord::PurgeConversation { a, b, cutoff } => Op::PurgeConversation {
            a: name(a)?,
            b: name(b)?,
            cutoff,
        },
        OpRecord::PurgeInbox { account, at } => Op::PurgeInbox {
            account: name(account)?,
            at,
            retention: None,
        },
        OpRecord::PurgeInboxRetention {
            account,
            at,
            retention,
        } => Op::PurgeInbox {
            account: name(account)?,
            at,
            retention: Some(retention),
        },
        OpRecord::SendV3(rec, retention) => send_op(rec, Some(retention), 0, &mut name)?,
        OpRecord::SendV4(rec, retention, control) => send_op(rec, retention, control, &mut name)?,
        OpRecord::RecallV3(rec, notice) => recall_op(rec, Some(notice), &mut name)?,
        OpRecord::ModifyV2(rec, notice) => modify_op(rec, Some(notice), &mut name)?,
        OpRecord::SeqFloor { floor } => Op::SeqFloor { floor },
    })
}

/// A journaled send, with the retention it trimmed to (`None`: a record from before it was
/// kept).
fn send_op(
    r: SendRec<'_>,
    retention: Option<u64>,
    control: u8,
    name: &mut impl FnMut(&str) -> Result<UserId, Error>,
) -> Result<Op, DecodeError> {
    let control = SendControl::from_bits(control)
        .ok_or_else(|| DecodeError(format!("unknown SendMsgControl bits {control:#x}")))?;
    Ok(Op::Send(SendOp {
        from: name(r.from)?,
        to: name(r.to)?,
        key: r.key.into(),
        content: Content::from_trusted_json(r.body_json, r.custom),
        sender_copy: copy_from_code(r.sender_copy)?,
        lifetime: r.lifetime,
        origin_device: r.origin_device.map(Into::into),
        at: r.at,
        kind: kind_from(r.kind)?,
        origin: origin_from(r.origin)?,
        retention,
        control,
        retry_dedup: false,
    }))
}

/// A journaled recall, with its notices' lifetime (`None`: a record from before it was kept).
fn recall_op(
    r: RecallRec<'_>,
    notice: Option<u64>,
    name: &mut impl FnMut(&str) -> Result<UserId, Error>,
) -> Result<Op, DecodeError> {
    Ok(Op::Recall {
        from: name(r.from)?,
        to: name(r.to)?,
        key: r.key.into(),
        by: name(r.by)?,
        at: r.at,
        origin: origin_from(r.origin)?,
        notice,
    })
}

/// A journaled modification, with its notices' lifetime (`None`: a record from before it was
/// kept).
fn modify_op(
    r: ModifyRec<'_>,
    notice: Option<u64>,
    name: &mut impl FnMut(&str) -> Result<UserId, Error>,
) -> Result<Op, DecodeError> {
    Ok(Op::Modify(Box::new(ModifyOp {
        from: name(r.from)?,
        to: name(r.to)?,
        key: r.key.into(),
        body: r.body_json.map(|b| Content::from_trusted_json(b, None)),
        cloud_custom_data: r.custom.map(str::to_owned),
        at: r.at,
        notice,
    })))
}

/// `Op::ForgetDevices` from either of its records (`idle`: `None` from the one written before
/// the setting was kept).
fn forget_devices(account: UserId, devices: Vec<&str>, at: u64, idle: Option<u64>) -> Op {
    Op::ForgetDevices {
        account,
        devices: devices.into_iter().map(Into::into).collect(),
        at,
        idle,
    }
}

mod images;
pub(crate) use images::*;

#[cfg(test)]
mod tests;
