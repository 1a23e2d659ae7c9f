//! Every mutation of the store as a value. The live path and journal replay both hand an `Op`
//! to `Store::apply`, so recovery cannot drift from behaviour. An `Op` is fully resolved: it
//! carries every default, random number and timestamp the live call chose, so applying it again
//! gives the same state.

use crate::account::UserId;
use crate::callback::Origin;
use crate::device::DeviceId;
use crate::key::MsgKey;
use crate::message::{Content, SenderCopy};

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    ImportAccount {
        user: UserId,
    },
    DeleteAccount {
        user: UserId,
        /// Its read marks move to the end of each conversation, so that what it was sent
        /// counts as read if the account comes back. Every delete since 2026-11-28; false for
        /// the records of earlier versions, which replay as they ran.
        read_all: bool,
    },
    Send(SendOp),
    Recall {
        from: UserId,
        to: UserId,
        key: MsgKey,
        by: UserId,
        at: u64,
        /// Where it came from, when it fires an after-callback.
        origin: Option<Origin>,
        /// How long its notices stay in the inboxes (`Config::notice_lifetime` when it was
        /// accepted), so that a replay under another config dates them as the live store did.
        /// `None` only in a record written before it was kept: the config at replay stands in.
        notice: Option<u64>,
    },
    Modify(Box<ModifyOp>),
    SetRead {
        reader: UserId,
        peer: UserId,
        at: u64,
        /// Where it came from, when it fires an after-callback.
        origin: Option<Origin>,
        /// MsgReadTime: what was sent at or before it is read; `None`: everything so far.
        until: Option<u32>,
    },
    /// The after-callbacks up to `upto` were delivered: they leave the outbox.
    OutboxAck {
        upto: u64,
    },
    /// A device connects: it is added if new (starting at the oldest retained inbox entry),
    /// `resume` (the last sequence number its client has, e.g. SSE `Last-Event-ID`) confirms
    /// what it names, and the device counts as seen at `at`.
    Connect {
        account: UserId,
        device: DeviceId,
        resume: Option<u64>,
        at: u64,
    },
    /// A device's client confirmed every entry up to `cursor` (R7), or disconnected at `at`.
    Cursor {
        account: UserId,
        device: DeviceId,
        cursor: u64,
        at: u64,
    },
    /// Devices not connected for `idle` seconds before `at` are forgotten.
    ForgetDevices {
        account: UserId,
        devices: Vec<DeviceId>,
        at: u64,
        /// `Config::device_idle_secs` when the purge chose them, so that a replay under another
        /// config forgets what the live store forgot. `None` only in a record written before it
        /// was kept: the config at replay then stands in.
        idle: Option<u64>,
    },
    /// Roaming retention: drop the conversation's messages older than `cutoff`.
    PurgeConversation {
        a: UserId,
        b: UserId,
        cutoff: u64,
    },
    /// Inbox lifetimes: drop the account's inbox entries expired at `at`, and those of messages
    /// past `retention` seconds of roaming retention there.
    PurgeInbox {
        account: UserId,
        at: u64,
        /// `Config::retention_secs` when the purge ran (see `ForgetDevices::idle`; `None` only
        /// in a record written before it was kept).
        retention: Option<u64>,
    },
    /// A durable store was opened again (`Store::open`, `Store::raise_seq_floor`): every inbox
    /// numbers its next entry at `floor` or above, as does an account imported later. `floor`
    /// is the clock at the open in microseconds, so a directory's later opens number above
    /// its earlier ones — a restored backup, or a journal a power loss under
    /// `SyncPolicy::None` cut short, never gives a number again that its lost future gave.
    SeqFloor {
        floor: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SendOp {
    pub from: UserId,
    pub to: UserId,
    pub key: MsgKey,
    pub content: Content,
    pub sender_copy: SenderCopy,
    pub lifetime: u64,
    pub origin_device: Option<DeviceId>,
    /// When the store accepted it (the clock, not MsgTimeStamp): lifetimes count from here.
    pub at: u64,
    /// A send, or an import (`importmsg`).
    pub kind: SendKind,
    /// Where it came from, when it fires an after-callback.
    pub origin: Option<Origin>,
    /// `Config::retention_secs` when it was accepted: the conversation is trimmed to it, live
    /// and on replay (under another config a replay would otherwise keep or drop other
    /// messages, and a later send of the same key be a repeat in one and new in the other).
    /// `None` only in a record written before it was kept: the config at replay stands in.
    pub retention: Option<u64>,
    /// SendMsgControl (journaled only when not plain).
    pub control: crate::message::SendControl,
    /// Whether a retry of an earlier send may answer for it (`Conversation::find_retry`):
    /// `sendmsg` and a client's send, not a batch's or an import's. Live only, never
    /// journaled: a send record is one that was not a retry when it was applied, so a replay
    /// never looks (and replays journals written before the rule as they were written).
    pub retry_dedup: bool,
}

impl Op {
    /// Whether the operation, once recorded, erases a body that the journal still holds
    /// (`journal/erasure.rs`): a recall, a modification (the old body), a purge of history
    /// past retention. A send that trims its conversation, and an inbox purge that drops an
    /// entry past retention, are noted when they do (`Store::note_erased`); an inbox purge of
    /// entries that only expired erases nothing (their history holds the messages), and the
    /// server purges every minute.
    pub(crate) fn erases(&self) -> bool {
        matches!(
            self,
            Op::Recall { .. } | Op::Modify(_) | Op::PurgeConversation { .. }
        )
    }
}

/// How a message enters the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendKind {
    /// `sendmsg`, `batchsendmsg`, a client's send.
    Send,
    /// `importmsg` with SyncFromOldSystem 2: history, counted read, not pushed to devices.
    ImportHistory,
    /// `importmsg` with SyncFromOldSystem 5: real time, counted unread, pushed.
    ImportRealtime,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ModifyOp {
    pub from: UserId,
    pub to: UserId,
    pub key: MsgKey,
    /// The new MsgBody (its CloudCustomData part unused), or `None` to keep the body.
    pub body: Option<Content>,
    pub cloud_custom_data: Option<String>,
    pub at: u64,
    /// How long its notices stay in the inboxes (see `Op::Recall::notice`).
    pub notice: Option<u64>,
}
