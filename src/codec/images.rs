//! The snapshot's record images (`store/snapshot.rs` fills and reads them) and their
//! encoding: each decoded within [`MAX_IMAGE_CLAIM`](super::MAX_IMAGE_CLAIM) of memory.

use bincode::{BorrowDecode, Decode, Encode};

use super::{DecodeError, cfg, copy_code, copy_from_code, image_cfg};
use crate::message::SenderCopy;

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
