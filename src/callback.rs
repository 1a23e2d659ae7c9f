//! After-callbacks (Tencent's `C2C.CallbackAfterSendMsg`, `C2C.CallbackAfterMsgWithDraw`,
//! `C2C.CallbackAfterMsgReport`): where an operation came from ([`Origin`]), and the store's
//! durable **outbox** of callbacks not yet delivered.
//!
//! An operation that should fire an after-callback carries its origin in its `Op`, and
//! `Store::apply` queues the callback in the outbox under the operation's own locks. So the
//! outbox is written with the operation — journaled in the same record, replayed after a crash,
//! kept in snapshots — and a callback exists exactly when its operation does. The outbox shows
//! an entry only once it is durable (R6), in operation order; whoever delivers it (the
//! server's webhook dispatcher) acknowledges it with `Store::outbox_ack`, itself an operation.
//! Delivery is at least once: an entry delivered but not yet acknowledged at a crash is
//! delivered again (its MsgKey and EventTime identify repeats).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::account::UserId;
use crate::device::Signal;
use crate::key::MsgKey;
use crate::message::{MessageView, MsgArc};

/// Tencent's OptPlatform: the platform an operation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// A REST call.
    RestApi,
    Web,
    Android,
    Ios,
    Windows,
    Mac,
    IPad,
    Unknown,
}

const PLATFORMS: [(Platform, &str); 8] = [
    (Platform::RestApi, "RESTAPI"),
    (Platform::Web, "Web"),
    (Platform::Android, "Android"),
    (Platform::Ios, "iOS"),
    (Platform::Windows, "Windows"),
    (Platform::Mac, "Mac"),
    (Platform::IPad, "iPad"),
    (Platform::Unknown, "Unknown"),
];

impl Platform {
    /// The OptPlatform value.
    pub fn as_str(self) -> &'static str {
        PLATFORMS[self.code() as usize].1
    }

    /// A device's `platform` parameter (`macOS` is accepted for `Mac`; `RESTAPI` is not a
    /// device's).
    pub fn of_device(s: &str) -> Option<Platform> {
        match s {
            "" => Some(Platform::Unknown),
            "macOS" => Some(Platform::Mac),
            "RESTAPI" => None,
            _ => PLATFORMS.iter().find(|(_, n)| *n == s).map(|(p, _)| *p),
        }
    }

    pub(crate) fn code(self) -> u8 {
        PLATFORMS.iter().position(|(p, _)| *p == self).unwrap() as u8
    }

    pub(crate) fn from_code(code: u8) -> Option<Platform> {
        PLATFORMS.get(code as usize).map(|(p, _)| *p)
    }
}

/// Where an operation came from: what its after-callback reports as OptPlatform and ClientIP.
/// An operation without an origin fires no after-callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub platform: Platform,
    pub client_ip: String,
}

impl Origin {
    /// A REST call from `client_ip`.
    pub fn rest(client_ip: impl Into<String>) -> Origin {
        Origin {
            platform: Platform::RestApi,
            client_ip: client_ip.into(),
        }
    }
}

/// A callback waiting in the outbox.
#[derive(Clone, Debug)]
pub struct OutboxEntry {
    /// Position in the outbox: acknowledge up to it with `Store::outbox_ack`.
    pub id: u64,
    pub origin: Origin,
    pub event: CallbackEvent,
}

/// What a callback reports.
#[derive(Clone, Debug)]
pub enum CallbackEvent {
    /// `C2C.CallbackAfterSendMsg`. The message as it is when the callback is read: a message
    /// recalled before its callback went out is reported without its body.
    AfterSend {
        message: MessageView,
        online_only: bool,
        /// The recipient's unread messages over all conversations, after the send.
        unread: u32,
    },
    /// `C2C.CallbackAfterMsgWithDraw`.
    AfterRecall {
        from: UserId,
        to: UserId,
        key: MsgKey,
        /// The recipient's unread messages over all conversations, after the recall.
        unread: u32,
        /// When the recall happened, Unix seconds.
        at: u64,
    },
    /// `C2C.CallbackAfterMsgReport`.
    AfterRead {
        report: UserId,
        peer: UserId,
        /// LastReadTime, Unix seconds.
        at: u64,
        /// The reporter's unread messages over all conversations, after marking this read.
        unread: u32,
    },
}

/// An outbox entry as the store keeps it (messages by reference: rendered when read). The
/// variants are named after Tencent's commands.
#[derive(Clone)]
#[allow(clippy::enum_variant_names)]
pub(crate) enum Queued {
    AfterSend {
        msg: MsgArc,
        online_only: bool,
        unread: u32,
    },
    AfterRecall {
        msg: MsgArc,
        unread: u32,
        at: u64,
    },
    AfterRead {
        report: UserId,
        peer: UserId,
        at: u64,
        unread: u32,
    },
}

impl Queued {
    pub fn event(&self) -> CallbackEvent {
        match self {
            Queued::AfterSend {
                msg,
                online_only,
                unread,
            } => CallbackEvent::AfterSend {
                message: msg.view(),
                online_only: *online_only,
                unread: *unread,
            },
            Queued::AfterRecall { msg, unread, at } => CallbackEvent::AfterRecall {
                from: msg.from.clone(),
                to: msg.to.clone(),
                key: msg.key,
                unread: *unread,
                at: *at,
            },
            Queued::AfterRead {
                report,
                peer,
                at,
                unread,
            } => CallbackEvent::AfterRead {
                report: report.clone(),
                peer: peer.clone(),
                at: *at,
                unread: *unread,
            },
        }
    }
}

/// The outbox: callbacks in operation order, numbered in that order (a dropped callback's
/// number is skipped).
pub(crate) struct Outbox {
    /// The id the next entry gets.
    pub next_id: u64,
    pub entries: VecDeque<(u64, Origin, Queued)>,
    /// Most entries kept; beyond, new callbacks are dropped (and counted).
    pub max: usize,
    pub dropped: u64,
    /// The journal ticket of the last change (R6: entries are shown once it is durable).
    pub ticket: u64,
    /// Raised when an entry is queued.
    pub signal: Arc<Signal>,
}

impl Outbox {
    pub fn new(max: usize) -> Self {
        Outbox {
            next_id: 1,
            entries: VecDeque::new(),
            max,
            dropped: 0,
            ticket: 0,
            signal: Arc::new(Signal::default()),
        }
    }

    /// Queues a callback (or counts it dropped when the outbox is full).
    pub fn push(&mut self, origin: &Origin, queued: Queued, ticket: u64) {
        // Pushed in journal order (`Store::record_queueing`): never moves back.
        self.ticket = self.ticket.max(ticket);
        // A number even when dropped: the numbers of the callbacks kept do not depend on
        // `outbox_max`, so a journaled `OutboxAck{upto}` names the same callbacks on a replay
        // under another limit (an operator changed it) as it did live.
        let id = self.next_id;
        self.next_id += 1;
        if self.entries.len() >= self.max {
            self.dropped += 1;
            return;
        }
        self.entries.push_back((id, origin.clone(), queued));
        self.signal.notify();
    }

    /// Removes the entries up to `upto`.
    pub fn ack(&mut self, upto: u64, ticket: u64) -> usize {
        self.ticket = self.ticket.max(ticket);
        let before = self.entries.len();
        while self.entries.front().is_some_and(|(id, _, _)| *id <= upto) {
            self.entries.pop_front();
        }
        before - self.entries.len()
    }
}
