//! # imstore
//!
//! A concurrent, in-process store for one-to-one instant messages, with atomic administrator
//! recall across all three layers — roaming history, offline inboxes and per-device client
//! caches — following the semantics of Tencent Cloud IM's server REST API.
//!
//! ```
//! use imstore::{Config, EventKind, MsgElement, SendRequest, Store};
//!
//! let store = Store::in_memory(Config::default()).unwrap();
//! store.import_account("vinson").unwrap();
//! store.import_account("dramon").unwrap();
//! let phone = store.connect("dramon", "phone").unwrap();
//!
//! let receipt = store
//!     .send(SendRequest::new("vinson", "dramon", 833502, vec![MsgElement::text("hi")]))
//!     .unwrap();
//! let event = phone.try_recv().unwrap().unwrap();
//! assert!(matches!(event.kind, EventKind::Message(_)));
//!
//! let key = receipt.msg_key.to_string();
//! store.recall("administrator", "vinson", "dramon", &key).unwrap();
//! let event = phone.try_recv().unwrap().unwrap();
//! assert!(matches!(&event.kind, EventKind::Recalled(n) if n.key == receipt.msg_key));
//! ```
//!
//! ## Map of the crate
//!
//! | module | owns |
//! |---|---|
//! | `key` | [`MsgKey`]: parse, format |
//! | `account` | [`UserId`], each account's state and the lock order |
//! | `message` | MsgBody elements, [`Content`], the shared message record, views |
//! | `roaming` | conversations: history order, per-side views, paging, read marks |
//! | `inbox` | the per-account sequence-numbered inbox |
//! | `device` | devices, cursors, live delivery, [`Subscription`] |
//! | `cache` | the bounded per-device cache |
//! | `op` | every mutation as a value |
//! | `store` | the façade: validation, locking, [`Store::apply`](Store), snapshots |
//! | `journal`, `codec` | files, framing, commit protocol, recovery; the bincode payloads |
//! | [`api`], [`usersig`] | Tencent's REST API and UserSig, no async dependency |
//! | `server` (feature `server`) | the axum front, SSE, `imstore-server` |
//!
//! ## Design
//!
//! - One shared record per message: roaming, inboxes, caches and live channels all point at it,
//!   so recall flips every layer at once and the body is gone from memory (its bytes zeroed).
//! - Every mutation is an operation value applied by one function, shared by the live path and
//!   journal replay.
//! - Lock order: the gate (shared; a snapshot takes it exclusively) → account locks (two at once
//!   in UserId order) → conversation → device → message state → journal. Writers never block on
//!   a slow device: a full channel marks the device lagging and it catches up from its cursor.
//!
//! ## Decisions where the spec is silent
//!
//! - Sending to yourself is refused (90003): a conversation has two sides.
//! - Deleting an account drops its inbox, devices and unread counts; the history it shares with
//!   others stays in their view.
//! - A missing acting account (From/Operator/Report) answers 90008, a missing peer (To/Peer)
//!   90003, the account APIs and batch-send ErrorList 70107.
//! - Messages with MsgLifeTime 0 reach only devices that are connected and caught up when they
//!   are sent. A message past retention leaves the inboxes when they are purged.
//! - Unread counts are not lowered when roaming retention drops a message.
//! - A device's cursor advances when the application receives an entry; a message recalled
//!   while still queued is skipped (the Recalled notice follows). Cursors are journaled when a
//!   device disconnects, so after a crash a device may be sent again what it had received
//!   since it connected (SSE clients resume exactly with `Last-Event-ID`). Device caches are
//!   not persisted.
//! - A history page never ends between two messages that share one MsgKey (one per direction);
//!   when MaxCnt is 1 such a page holds both.
//! - Every REST API is for app administrators (90009), as in Tencent. An unknown API answers
//!   60010, an exceeded rate limit 60007, a body over the server's limit 93000. Invalid
//!   SyncOtherMachine, MsgSeq, CloudCustomData, MaxCnt, MinTime, MaxTime or LastMsgKey answer
//!   90001. A batch send with some failed recipients answers `"ActionStatus":"SomeError"` with
//!   ErrorCode 0; with all failed, FAIL and the first recipient's code.
//! - Inside [`Store::deferring`], hooks run when operations take effect, before they are
//!   durable.
//! - Replay applies retention with the configuration the store is opened with.

mod account;
pub mod api;
mod cache;
mod clock;
mod codec;
mod config;
mod device;
mod error;
mod hash;
mod hooks;
mod inbox;
mod journal;
mod key;
mod message;
mod op;
mod roaming;
#[cfg(feature = "server")]
pub mod server;
mod store;
pub mod usersig;

pub use account::{MAX_USER_ID_LEN, UserId};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::Config;
pub use device::{DeviceId, Disconnected, Event, EventKind, MAX_DEVICE_ID_LEN, Subscription};
pub use error::{Error, Result};
pub use hooks::{BeforeSend, Hooks, NoHooks, OutgoingMessage};
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub use journal::{Faults, Gate};
pub use journal::{OpenError, RecoveryReport, SyncPolicy};
pub use key::{MAX_MSG_KEY_LEN, MsgKey, ParseMsgKeyError};
pub use message::{
    Content, CustomElem, FLAG_RECALLED, FaceElem, FileElem, ImageElem, ImageInfo, LocationElem,
    MAX_BODY_BYTES, MAX_LIFETIME_SECS, MessageView, MsgElement, RecallNotice, SendReceipt,
    SendRequest, SenderCopy, SoundElem, TextElem, VideoFileElem,
};
pub use roaming::{HistoryItem, HistoryPage, HistoryQuery};
pub use store::{
    BatchReceipt, BatchSendRequest, CommitTicket, CompactReport, Deferred, MAX_BATCH_RECIPIENTS,
    MAX_IMPORT_BATCH, PurgeReport, Store,
};

/// The README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
