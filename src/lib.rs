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
//! phone.ack(event.seq).unwrap(); // the client confirms: a reconnect resumes after it
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
//! | `registry`, `table` | interned account names; the lock-free append-only table (and `table/arena.rs`, the arena) that accounts, names and conversations are found in |
//! | `message` | MsgBody elements, [`Content`], views; `message/record.rs` the shared message record and `MsgArc`, its counted reference |
//! | `roaming` | conversations: history order, per-side views, paging, read marks |
//! | `inbox` | the per-account sequence-numbered inbox |
//! | `device` | devices, cursors, the delivery protocol, [`Subscription`] |
//! | `cache` | the bounded per-device cache (while connected) |
//! | `op` | every mutation as a value |
//! | `callback` | where an operation came from ([`Origin`]); the durable outbox of after-callbacks |
//! | `store` | the façade: validation, locking, tickets (R6); `store/apply.rs` the one `apply`; `store/devices.rs` connect, ack, the feed; `store/snapshot.rs` snapshots and checkpoints; `store/batch.rs` [`Store::recall_many`]; `store/commit.rs` waiting for durability, deferred acknowledgement; `store/history.rs` history pages and unread counts |
//! | `journal`, `codec` | files, framing, disk reservation, commit protocol (`journal/commit.rs`), recovery; the bincode payloads |
//! | [`api`], [`usersig`] | Tencent's REST API and UserSig, no async dependency |
//! | `server` (feature `server`) | the accept loop and connection register, REST, WebSocket and SSE, `imstore-server` |
//!
//! ## Design
//!
//! - One shared record per message: roaming, inboxes, caches and live channels all point at it,
//!   so recall flips every layer at once and the body is gone from memory (its bytes zeroed).
//! - Every mutation is an operation value applied by one function, shared by the live path and
//!   journal replay.
//! - Visible only when durable (R6): every object an operation changes carries the journal
//!   ticket of that change, and every reader — devices included — shows what it read only once
//!   the journal is durable up to the tickets it read (`store.rs` has the argument).
//! - At least once (R7): a device's cursor moves only when its client confirms.
//! - Lookups on the hot path (account by name or number, conversation by its two accounts) take
//!   no lock and no reference count (`table.rs`): a recall is a chain of cache misses, and
//!   locked instructions would order them one after another. Account cells and conversations
//!   are never freed while the store lives.
//! - Lock order: account locks (two at once in interned-number order, `lock_pair`) → conversation → message state →
//!   device signal → journal; no lock is held across I/O. Writers never block on a slow
//!   device: they raise its signal, and it reads the inbox when it is ready.
//!
//! ## Decisions where the spec is silent
//!
//! - Sending to yourself is refused (90003): a conversation has two sides.
//! - Deleting an account drops its inbox, devices and unread counts; the history it shares with
//!   others stays in their view. Imported again, the account's inbox continues the sequence
//!   numbers the deleted one used (sequence numbers are never reused; a client resuming with an
//!   old number misses nothing new).
//! - Inbox sequence numbers increase but are not contiguous: each time a durable store is
//!   opened on a directory that holds anything, it journals a sequence floor — its clock in
//!   microseconds — and numbers every inbox's next entry there or above. A restored backup,
//!   or a journal a power loss under `SyncPolicy::None` cut short, thus never gives again a
//!   number its lost records gave (R6), and a client resuming after a number the restored
//!   store never reached receives everything new. The floor stays below 2^52, so numbers
//!   are exact in JavaScript.
//! - A missing acting account (From/Operator/Report) answers 90008, a missing peer (To/Peer)
//!   90003 — a send's or an import's recipient 90012, as Tencent's sendmsg and importmsg —, the
//!   account APIs and batch-send ErrorList 70107.
//! - Messages with MsgLifeTime 0 reach only devices that are connected and caught up when they
//!   are sent. A message past retention leaves the inboxes when they are purged.
//! - Unread counts are not lowered when roaming retention drops a message.
//! - Expiry is the embedder's to run: `Store::purge_expired` (the server calls it every 60
//!   seconds; `compact` calls it first). Until it runs, a conversation nobody sends to keeps
//!   messages past retention (history never shows them), an inbox keeps expired entries that
//!   sit behind a longer-lived recall notice (devices are never sent them), and idle devices
//!   stay remembered: memory grows with traffic, not with what is visible.
//! - A device's cursor moves only when its client confirms (`Subscription::ack`, a resume
//!   position, `Store::ack`); a confirmation beyond the newest entry stops at it, and a lower one
//!   changes nothing. A resume position below the cursor replays from there (the client asked)
//!   without moving the cursor back. Confirmations are journaled without waiting: one lost in a
//!   crash costs repeats, never a loss. A message recalled before a device is handed it is
//!   skipped (its Recalled notice follows).
//! - Devices: at most `max_devices_per_account` (default 32) per account, a new one beyond that
//!   is refused with 90001 (there is no Tencent code for it); a device not connected for
//!   `device_idle_secs` (default 30 days) is forgotten by `purge_expired`. A connected device
//!   is never forgotten. The client cache is modelled only while a device is connected: a
//!   disconnected device costs its cursor and last-seen time, about 100 bytes.
//! - A message sent from a device (`SendRequest::from_device`) goes into that device's cache if
//!   it is connected; it is never sent back to it. A message with MsgLifeTime 0 reaches the
//!   devices that were connected when it was sent, if they read it within 60 seconds.
//! - `try_recv` never waits for a new event, but may wait for the commit (one fsync) that makes
//!   an event it found durable.
//! - A history page never ends between two messages that share one MsgKey (one per direction);
//!   when MaxCnt is 1 such a page holds both.
//! - Every REST API is for app administrators (90009), as in Tencent. An unknown API answers
//!   60010, an exceeded rate limit 60007, a body over the server's limit 93000. Invalid
//!   SyncOtherMachine, MsgSeq, CloudCustomData, MaxCnt, MinTime, MaxTime or LastMsgKey answer
//!   90001. A batch send with some failed recipients answers `"ActionStatus":"SomeError"` with
//!   ErrorCode 0; with all failed, FAIL and the first recipient's code.
//! - Hooks run only after their operation is durable; inside [`Store::deferring`] they run in
//!   [`Store::commit`] / [`Store::commit_async`].
//! - After-callbacks are at least once: one delivered but not yet acknowledged when the server
//!   stops is delivered again. An after-send callback whose message was recalled before it
//!   went out carries no body (the body is gone). After-callbacks an app never accepts are kept
//!   (up to `Config::outbox_max`) and retried, 30 s apart at most, for as long as it takes.
//! - A client's send goes where `SyncOtherMachine` 1 sends it: both sides' roaming, the
//!   recipient's devices and the sender's other devices. Its MsgTimeStamp is the server's clock
//!   (clients cannot date messages back; the recall window counts from it).
//! - An import (`importmsg`) is the same message as an existing one with the same MsgKey in
//!   either direction of the conversation (Tencent's rule); it keeps the first one. Imported
//!   history is counted read from the start; an import in real time is counted unread and
//!   pushed like a send.
//! - A durable store runs two threads of its own: a committer (for async waiters, and to write
//!   unawaited records within a second) and a snapshot writer. Snapshots are built by replaying
//!   the journal into a scratch store, so they cost memory (a second copy of the state while
//!   one is built) and CPU, but never hold up writes.
//! - Replay applies the retention of sends, recalls and modifications with the configuration
//!   the store is opened with; purges (`purge_expired`: inbox entries past their lifetime or
//!   retention, forgotten devices) carry the settings they ran under and remove on replay
//!   what they removed live.
//! - Message records, inbox blocks, conversation buffers (up to 32 messages), account cells,
//!   conversations and lookup tables live in memory the engine maps itself and asks to be huge
//!   pages (`MADV_HUGEPAGE`), so that a large store's random reads are not TLB misses too; the
//!   embedder's allocator holds the rest. A process that wants none calls
//!   `prctl(PR_SET_THP_DISABLE, 1)` (or the system sets transparent huge pages to `never`).
//!   Slab slots are reused, never given back to the system: after a peak, its memory stays
//!   mapped for the next ones.
//! - As a store grows, the memory it is about to fill (a slab's next chunk, an arena's next
//!   chunk, a table's new level) is faulted in ahead by short-lived threads of the engine's
//!   (`MADV_POPULATE_WRITE`, at most four at once), so that the kernel's zeroing of fresh
//!   pages is not done on the writing thread: the same CPU time on another core, and up to
//!   one chunk (2 MiB) a growing slab shard resident before it is used.

mod account;
pub mod api;
mod cache;
mod callback;
mod clock;
#[cfg(feature = "cluster")]
pub mod cluster;
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
mod pages;
mod registry;
mod roaming;
#[cfg(feature = "server")]
pub mod server;
mod slab;
mod store;
mod table;
pub mod usersig;

pub use account::{MAX_USER_ID_LEN, UserId};
pub use callback::{CallbackEvent, Origin, OutboxEntry, Platform};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, ERASE_WITHIN_SECS};
pub use device::{DeviceId, Disconnected, Event, EventKind, MAX_DEVICE_ID_LEN, Subscription};
pub use error::{Error, Result};
pub use hooks::{BeforeSend, Hooks, NoHooks, OutgoingMessage};
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub use journal::{Faults, Gate};
pub use journal::{JournalObserver, OpenError, RecoveryReport, SyncPolicy};
pub use key::{MAX_MSG_KEY_LEN, MsgKey, ParseMsgKeyError};
pub use message::{
    Content, CustomElem, FLAG_RECALLED, FaceElem, FileElem, ImageElem, ImageInfo, LocationElem,
    MAX_BODY_BYTES, MAX_LIFETIME_SECS, MessageView, MsgElement, RecallNotice, SendControl,
    SendReceipt, SendRequest, SenderCopy, SoundElem, TextElem, VideoFileElem,
};
pub use roaming::{HistoryItem, HistoryPage, HistoryQuery};
pub use store::{
    BatchReceipt, BatchSendRequest, CommitTicket, CompactReport, Deferred, ImportRequest,
    MAX_BATCH_RECIPIENTS, MAX_IMPORT_BATCH, MAX_MSG_TIME_AHEAD_SECS, PreparedSend, PurgeReport,
    RECALL_WAVE, RecallItem, Store,
};

/// The README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
