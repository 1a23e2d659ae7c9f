//! The payload codec: the only module that knows bincode. It defines the on-disk shapes of
//! journal operations and snapshot images and turns them into bytes and back.
//!
//! bincode is pinned at 2.0.1 (upstream is unmaintained, RUSTSEC-2025-0141), so everything it
//! touches is here: swapping the codec means rewriting this file and bumping
//! `PAYLOAD_VERSION`. Every decode carries a size limit, so a hostile or corrupt length prefix
//! cannot make it allocate more than `MAX_PAYLOAD` bytes.

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
        Op::DeleteAccount { user } => OpRecord::DeleteAccount { user },
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
        OpRecord::DeleteAccount { user } => Op::DeleteAccount { user: name(user)? },
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

// ----- snapshot images -----
//
// Images borrow their strings: encoding borrows from the live store, decoding from the file's
// bytes.

/// A message in a snapshot. A recalled message has no body here: that is how compaction
/// erases it from disk.
#[derive(Encode, BorrowDecode, Debug, PartialEq)]
pub(crate) struct MsgImage<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub key: (u32, u32, u32),
    pub arrival: u64,
    pub sender_copy: u8,
    pub origin_device: Option<&'a str>,
    pub state: StateImage<'a>,
}

#[derive(Encode, BorrowDecode, Debug, PartialEq)]
pub(crate) enum StateImage<'a> {
    Live {
        body_json: std::borrow::Cow<'a, str>,
        custom: Option<&'a str>,
    },
    Recalled {
        by: &'a str,
        at: u64,
    },
}

#[derive(Encode, BorrowDecode, Debug, PartialEq)]
pub(crate) struct ConvImage<'a> {
    pub a: &'a str,
    pub b: &'a str,
    pub next_arrival: u64,
    pub read_mark: [u64; 2],
    pub messages: Vec<MsgImage<'a>>,
}

/// How an inbox entry names its message: by its place in roaming, or (when retention already
/// dropped it from roaming) carrying it.
#[derive(Encode, BorrowDecode, Debug, PartialEq)]
pub(crate) enum MsgRef<'a> {
    Roaming {
        from: &'a str,
        to: &'a str,
        key: (u32, u32, u32),
    },
    Orphan(MsgImage<'a>),
}

#[derive(Encode, BorrowDecode, Debug, PartialEq)]
pub(crate) struct EntryImage<'a> {
    pub seq: u64,
    pub expires_at: u64,
    /// 0 message, 1 recalled, 2 modified, 3 message for online devices only (MsgLifeTime 0).
    pub kind: u8,
    pub modified_at: u64,
    pub msg: MsgRef<'a>,
}

/// An account in a snapshot (record kind `SNAP_ACCOUNT2`): devices carry (name, cursor, last
/// seen).
#[derive(Encode, BorrowDecode, Debug, PartialEq)]
pub(crate) struct AccountImage<'a> {
    pub user: &'a str,
    pub next_seq: u64,
    pub entries: Vec<EntryImage<'a>>,
    pub devices: Vec<(&'a str, u64, u64)>,
    pub unread: Vec<(&'a str, u32)>,
}

/// An account as format 1 wrote it (record kind `SNAP_ACCOUNT`): devices without last seen.
#[derive(Encode, BorrowDecode, Debug, PartialEq)]
pub(crate) struct AccountImageV1<'a> {
    pub user: &'a str,
    pub next_seq: u64,
    pub entries: Vec<EntryImage<'a>>,
    pub devices: Vec<(&'a str, u64)>,
    pub unread: Vec<(&'a str, u32)>,
}

impl<'a> AccountImageV1<'a> {
    /// The same account, its devices seen at `now`.
    pub fn upgrade(self, now: u64) -> AccountImage<'a> {
        AccountImage {
            user: self.user,
            next_seq: self.next_seq,
            entries: self.entries,
            devices: self.devices.into_iter().map(|(d, c)| (d, c, now)).collect(),
            unread: self.unread,
        }
    }
}

/// The outbox of after-callbacks (record kind `SNAP_OUTBOX`).
#[derive(Encode, BorrowDecode, Debug, PartialEq)]
pub(crate) struct OutboxImage<'a> {
    pub next_id: u64,
    pub dropped: u64,
    pub entries: Vec<OutboxEntryImage<'a>>,
}

#[derive(Encode, BorrowDecode, Debug, PartialEq)]
pub(crate) struct OutboxEntryImage<'a> {
    pub id: u64,
    pub platform: u8,
    pub client_ip: &'a str,
    /// 0 after send, 1 after recall, 2 after read.
    pub kind: u8,
    /// The message (after send or recall).
    pub msg: Option<MsgRef<'a>>,
    /// Report_Account and Peer_Account (after read).
    pub report: &'a str,
    pub peer: &'a str,
    pub at: u64,
    pub unread: u32,
    pub online_only: bool,
}

/// Deleted accounts and the sequence number each would continue from if imported again
/// (record kind `SNAP_RETIRED`).
#[derive(Encode, BorrowDecode, Debug, PartialEq)]
pub(crate) struct RetiredImage<'a> {
    pub accounts: Vec<(&'a str, u64)>,
}

/// The closing record of a snapshot: without it the snapshot is incomplete.
#[derive(Encode, Decode, Clone, Copy, Debug, PartialEq)]
pub(crate) struct SnapshotEnd {
    pub accounts: u64,
    pub conversations: u64,
}

pub(crate) fn encode<T: Encode>(value: &T, out: &mut Vec<u8>) {
    bincode::encode_into_std_write(value, out, cfg()).expect("writing to a Vec cannot fail");
}

/// Decodes a snapshot record (at most [`MAX_IMAGE_CLAIM`] of memory).
pub(crate) fn decode<'a, T: BorrowDecode<'a, ()>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::borrow_decode_from_slice(bytes, image_cfg())?;
    if used != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes in a snapshot record",
            bytes.len() - used
        )));
    }
    Ok(value)
}

pub(crate) fn sender_copy_code(c: SenderCopy) -> u8 {
    copy_code(c)
}

pub(crate) fn sender_copy_from_code(c: u8) -> Result<SenderCopy, DecodeError> {
    copy_from_code(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inbox of 500,000 entries is one record of ~23 MB, under the frame limit, and
    /// decodes although it claims ~3 times that in memory (`MAX_IMAGE_CLAIM`): a snapshot
    /// holding one could not be read back, and the store could not open.
    #[test]
    fn an_image_larger_in_memory_than_the_payload_limit_is_read_back() {
        let entries: Vec<EntryImage<'_>> = (0..500_000u64)
            .map(|i| EntryImage {
                seq: 100_000 + i,
                expires_at: 1_700_604_800,
                kind: 0,
                modified_at: 0,
                msg: MsgRef::Roaming {
                    from: "sender01",
                    to: "receiver",
                    key: (i as u32, 3_000_000_000, 1_700_000_000),
                },
            })
            .collect();
        let claim = entries.len() * std::mem::size_of::<EntryImage<'_>>();
        assert!(claim > MAX_PAYLOAD, "{claim}: the case this test is about");
        let img = AccountImage {
            user: "receiver",
            next_seq: 700_000,
            entries,
            devices: vec![],
            unread: vec![],
        };
        let mut bytes = Vec::new();
        encode(&img, &mut bytes);
        assert!(bytes.len() < MAX_PAYLOAD, "{}", bytes.len());
        let back: AccountImage<'_> = decode(&bytes).unwrap();
        assert_eq!(back.entries.len(), 500_000);
        assert_eq!(back.entries[499_999].seq, 599_999);
    }

    #[test]
    fn a_hostile_length_prefix_is_refused_without_allocating() {
        // A string claiming 2^60 bytes.
        let mut bytes = vec![1u8]; // variant DeleteAccount
        bytes.push(253); // varint u64 marker
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode_op(&bytes, UserId::new).is_err());
        assert!(decode::<AccountImage>(&[3, 253, 0, 0, 0, 0, 0, 0, 0, 16]).is_err());
        assert!(decode::<AccountImageV1>(&[3, 253, 0, 0, 0, 0, 0, 0, 0, 16]).is_err());
    }

    #[test]
    fn operations_round_trip() {
        let u = |s: &str| UserId::new(s).unwrap();
        let ops = vec![
            Op::ImportAccount { user: u("a") },
            Op::Send(SendOp {
                from: u("a"),
                to: u("b"),
                key: MsgKey::new(1, 2, 3),
                content: Content::new(&[crate::MsgElement::text("hi")], Some("cd")).unwrap(),
                sender_copy: SenderCopy::RoamingAndDevices,
                lifetime: 60,
                origin_device: Some("phone".into()),
                at: 99,
                kind: SendKind::ImportRealtime,
                origin: Some(Origin {
                    platform: Platform::Ios,
                    client_ip: "10.0.0.7".into(),
                }),
                retention: Some(3600),
                control: SendControl::default(),
                retry_dedup: false,
            }),
            Op::Recall {
                from: u("a"),
                to: u("b"),
                key: MsgKey::new(1, 2, 3),
                by: u("admin"),
                at: 100,
                origin: Some(Origin::rest("127.0.0.1")),
                notice: Some(86_400),
            },
            Op::Modify(Box::new(ModifyOp {
                from: u("a"),
                to: u("b"),
                key: MsgKey::new(1, 2, 3),
                body: Some(Content::new(&[crate::MsgElement::text("new")], None).unwrap()),
                cloud_custom_data: Some("cd".into()),
                at: 100,
                notice: Some(7200),
            })),
            // As records from before a send's retention and a notice's lifetime were kept
            // decode.
            Op::Send(SendOp {
                from: u("a"),
                to: u("b"),
                key: MsgKey::new(4, 5, 6),
                content: Content::new(&[crate::MsgElement::text("old")], None).unwrap(),
                sender_copy: SenderCopy::Roaming,
                lifetime: 60,
                origin_device: None,
                at: 99,
                kind: SendKind::Send,
                origin: None,
                retention: None,
                control: SendControl::default(),
                retry_dedup: false,
            }),
            Op::Recall {
                from: u("a"),
                to: u("b"),
                key: MsgKey::new(4, 5, 6),
                by: u("admin"),
                at: 100,
                origin: None,
                notice: None,
            },
            Op::Modify(Box::new(ModifyOp {
                from: u("a"),
                to: u("b"),
                key: MsgKey::new(4, 5, 6),
                body: None,
                cloud_custom_data: Some("cd".into()),
                at: 100,
                notice: None,
            })),
            Op::SetRead {
                reader: u("b"),
                peer: u("a"),
                at: 101,
                origin: None,
                until: None,
            },
            Op::OutboxAck { upto: 7 },
            Op::ForgetDevices {
                account: u("b"),
                devices: vec!["phone".into(), "pad".into()],
                at: 102,
                idle: Some(3600),
            },
            Op::PurgeInbox {
                account: u("b"),
                at: 103,
                retention: Some(604_800),
            },
            // As records from before the settings were kept decode.
            Op::ForgetDevices {
                account: u("b"),
                devices: vec!["phone".into()],
                at: 104,
                idle: None,
            },
            Op::PurgeInbox {
                account: u("b"),
                at: 105,
                retention: None,
            },
            Op::SetRead {
                reader: u("b"),
                peer: u("a"),
                at: 106,
                origin: None,
                until: Some(1_700_000_000),
            },
            Op::Send(SendOp {
                from: u("a"),
                to: u("b"),
                key: MsgKey::new(7, 8, 9),
                content: Content::new(&[crate::MsgElement::text("quiet")], None).unwrap(),
                sender_copy: SenderCopy::Roaming,
                lifetime: 60,
                origin_device: None,
                at: 107,
                kind: SendKind::Send,
                origin: None,
                retention: Some(3600),
                control: SendControl {
                    no_unread: true,
                    no_last_msg: true,
                },
                retry_dedup: false,
            }),
        ];
        // Each record's bytes, as journals and streams hold them: a change to the record types
        // that changes them breaks every journal written before.
        let bytes = [
            "000161",
            "1301610162010203365b7b224d736754797065223a2254494d54657874456c656d222c224d7367436f6e74656e74223a7b2254657874223a226869227d7d5d01026364013c010570686f6e65630501030831302e302e302e37fb100e",
            "14016101620102030561646d696e640100093132372e302e302e31fc80510100",
            "150161016201020301375b7b224d736754797065223a2254494d54657874456c656d222c224d7367436f6e74656e74223a7b2254657874223a226e6577227d7d5d0102636464fb201c",
            "0d01610162040506375b7b224d736754797065223a2254494d54657874456c656d222c224d7367436f6e74656e74223a7b2254657874223a226f6c64227d7d5d00003c00630000",
            "0e016101620405060561646d696e6400",
            "0401610162040506000102636464",
            "0f016201616500",
            "1007",
            "110162020570686f6e650370616466fb100e",
            "12016267fc803a0900",
            "0c0162010570686f6e6568",
            "09016269",
            "16016201616a00fc00f15365",
            "1701610162070809395b7b224d736754797065223a2254494d54657874456c656d222c224d7367436f6e74656e74223a7b2254657874223a227175696574227d7d5d00003c006b000001fb100e03",
        ];
        assert_eq!(ops.len(), bytes.len());
        for (op, want) in ops.into_iter().zip(bytes) {
            let mut buf = Vec::new();
            encode_op(&op, &mut buf);
            let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, want, "{op:?}");
            assert_eq!(decode_op(&buf, UserId::new).unwrap(), op);
        }
    }
}
