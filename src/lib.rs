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
//! ## Design
//!
//! - One shared record per message: roaming, inboxes, caches and live channels all point at it,
//!   so recall flips every layer at once and the body is gone from memory.
//! - Every mutation is an operation value applied by one function, shared by the live path and
//!   journal replay.
//! - Lock order: account locks (two at once in UserId order) → conversation → device → message
//!   state. Writers never block on a slow device: a full channel marks the device lagging and it
//!   catches up from its cursor.
//!
//! ## Decisions where the spec is silent
//!
//! - Sending to yourself is refused (90003): a conversation has two sides.
//! - Deleting an account drops its inbox, devices and unread counts; the history it shares with
//!   others stays in their view.
//! - A missing acting account (From/Operator/Report) answers 90008, a missing peer (To/Peer)
//!   90003, the account APIs and batch-send ErrorList 70107.
//! - Messages with MsgLifeTime 0 reach only devices that are connected and caught up when they
//!   are sent.
//! - Unread counts are not lowered when roaming retention drops a message.
//! - A device's cursor advances when the application receives an entry; a message recalled
//!   while still queued is skipped (the Recalled notice follows).

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
