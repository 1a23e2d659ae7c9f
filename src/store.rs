//! The store façade: validates requests, turns them into [`Op`] values and applies them to the
//! layers under the crate's lock order (see `AccountCell`). The layers never call each other;
//! this module is the only place that knows an operation touches several of them.
//!
//! Every mutation goes through [`Store::apply`], which the live path and journal replay share:
//! it takes the locks, validates against current state, records the op in the journal (live
//! path only), then mutates. Validation happens before recording, so the journal holds only
//! operations that succeeded, and mutation after recording cannot fail.

use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::mapref::entry::Entry as MapEntry;
use parking_lot::{Mutex, RwLock};

use crate::account::{AccountCell, AccountState, UserId, check_user_id, lock_pair};
use crate::codec;
use crate::config::Config;
use crate::device::{self, DeviceId, DeviceSlot, Event, Subscription, check_device_id};
use crate::error::{Error, Result};
use crate::hash::DashMap;
use crate::hooks::{BeforeSend, OutgoingMessage};
use crate::inbox::Entry;
use crate::journal::{Journal, OpenError, RecoveryReport};
use crate::key::MsgKey;
use crate::message::{
    Content, MAX_LIFETIME_SECS, MessageView, MsgElement, RecallNotice, SendReceipt, SendRequest,
    SenderCopy, StoredMessage,
};
use crate::op::{ModifyOp, Op, SendOp};

mod snapshot;
use crate::roaming::{Conversation, HistoryItem, HistoryPage, HistoryQuery, conversation_id};

/// The most accounts one multi-import may name.
pub const MAX_IMPORT_BATCH: usize = 100;
/// The most recipients one batch send may name.
pub const MAX_BATCH_RECIPIENTS: usize = 500;

/// Whether `apply` is serving a caller (and must journal) or replaying the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Live,
    Replay,
}

/// What applying an op produced, for the caller that asked for it.
pub(crate) enum Applied {
    Done,
    /// The account already existed (import) or the device already existed (add device).
    Unchanged,
    Sent {
        msg: Arc<StoredMessage>,
        duplicate: bool,
    },
    Recalled(Arc<StoredMessage>),
    Purged(usize),
}

/// Which field of a request named an account, deciding the error code when it does not exist.
#[derive(Clone, Copy)]
enum Role {
    /// From_Account, Operator_Account, Report_Account: 90008.
    Acting,
    /// To_Account, Peer_Account: 90003.
    Other,
    /// Account APIs and batch recipients: 70107.
    Plain,
}

impl Role {
    fn missing(self, user: &str) -> Error {
        match self {
            Role::Acting => Error::FromAccountNotFound(user.to_owned()),
            Role::Other => Error::ToAccountNotFound(user.to_owned()),
            Role::Plain => Error::AccountNotFound(user.to_owned()),
        }
    }
}

/// A batch send (`batchsendmsg`): one message, one MsgKey, up to 500 recipients.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchSendRequest {
    /// From_Account; `None` sends as the first administrator.
    pub from: Option<String>,
    /// To_Account: 1 to 500 recipients.
    pub to: Vec<String>,
    /// MsgRandom.
    pub msg_random: u32,
    /// MsgSeq; random when `None`.
    pub msg_seq: Option<u32>,
    /// MsgTimeStamp; now when `None`.
    pub msg_time: Option<u32>,
    /// MsgBody.
    pub body: Vec<MsgElement>,
    /// CloudCustomData.
    pub cloud_custom_data: Option<String>,
    /// SyncOtherMachine.
    pub sender_copy: SenderCopy,
    /// MsgLifeTime in seconds.
    pub lifetime: Option<u64>,
}

/// What a batch send answers: the shared MsgKey and the recipients it failed for.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchReceipt {
    /// MsgTime.
    pub msg_time: u32,
    /// MsgKey, the same for every recipient.
    pub msg_key: MsgKey,
    /// ErrorList: (To_Account, why).
    pub errors: Vec<(String, Error)>,
}

/// What `purge_expired` removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Roaming messages past retention.
    pub messages: usize,
    /// Inbox entries past their lifetime.
    pub inbox_entries: usize,
}

/// What `compact` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactReport {
    /// The snapshot written; recovery starts from it.
    pub snapshot: PathBuf,
    /// The first journal record it does not cover.
    pub lsn: u64,
    /// What was purged first.
    pub purged: PurgeReport,
}

thread_local! {
    /// Inside `Store::deferring`: (the store, the highest journal position to commit).
    static DEFERRING: std::cell::Cell<Option<(usize, u64)>> = const { std::cell::Cell::new(None) };
}

/// A journal position from [`Store::deferring`]: what must be durable before the operations
/// run there are acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct CommitTicket(u64);

/// An operation that has taken effect but is not yet acknowledged: [`wait`](Deferred::wait)
/// returns its result once the journal holds it as the sync policy demands, and runs the
/// after-send or after-recall hook. Dropping it without waiting leaves the operation applied;
/// it becomes durable with the next commit, but nobody was told it had.
#[must_use = "an operation is acknowledged only by `wait`"]
pub struct Deferred<'s, T> {
    store: &'s Store,
    ticket: u64,
    value: T,
    /// The stored message, for the after-send hook (not for a duplicate or dropped send).
    sent: Option<MessageView>,
}

impl<T> std::fmt::Debug for Deferred<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl Deferred<'_, SendReceipt> {
    /// Waits until the send is durable and acknowledges it.
    pub fn wait(self) -> Result<SendReceipt> {
        self.store.durable(self.ticket)?;
        if let Some(view) = &self.sent {
            self.store.config.hooks.after_send(view);
        }
        Ok(self.value)
    }
}

impl Deferred<'_, RecallNotice> {
    /// Waits until the recall is durable and acknowledges it.
    pub fn wait(self) -> Result<RecallNotice> {
        self.store.durable(self.ticket)?;
        self.store.config.hooks.after_recall(&self.value);
        Ok(self.value)
    }
}

/// The store: accounts, the three layers, recall. `Send + Sync`; share it by reference or `Arc`.
pub struct Store {
    config: Config,
    admins: Vec<UserId>,
    accounts: DashMap<UserId, Arc<AccountCell>>,
    conversations: DashMap<(UserId, UserId), Arc<Mutex<Conversation>>>,
    rng: AtomicU64,
    /// `None` for an in-memory store.
    journal: Option<Journal>,
    /// Live operations hold it shared; a snapshot holds it exclusively to capture a cut with
    /// no operation half-applied. Taken before any other lock.
    gate: RwLock<()>,
    /// One compaction at a time; an automatic one is skipped while another runs.
    compaction: Mutex<()>,
    recovery: RecoveryReport,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("accounts", &self.accounts.len())
            .field("conversations", &self.conversations.len())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store that keeps everything in memory. Fails only if an administrator name is not a
    /// valid UserID.
    pub fn in_memory(config: Config) -> Result<Store> {
        let store = Store::empty(config)?;
        store.import_admins()?;
        Ok(store)
    }

    /// Opens (or creates) a durable store in `dir`: recovers the newest snapshot and the
    /// journal after it, then journals every mutation before acknowledging it. Only one `Store`
    /// may have a directory open at a time.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> std::result::Result<Store, OpenError> {
        let mut store = Store::empty(config).map_err(OpenError::Config)?;
        let (journal, report) = Journal::open(
            dir.as_ref(),
            store.config.sync,
            store.config.repair,
            |rec| store.recover(rec),
        )?;
        store.journal = Some(journal);
        store.recovery = report;
        store.import_admins().map_err(OpenError::Config)?;
        Ok(store)
    }

    fn empty(config: Config) -> Result<Store> {
        let admins = config
            .admins
            .iter()
            .map(|a| UserId::new(a))
            .collect::<Result<Vec<_>>>()?;
        Ok(Store {
            config,
            admins,
            accounts: DashMap::default(),
            conversations: DashMap::default(),
            rng: AtomicU64::new(std::hash::RandomState::new().hash_one(std::process::id())),
            journal: None,
            gate: RwLock::new(()),
            compaction: Mutex::new(()),
            recovery: RecoveryReport::default(),
        })
    }

    /// What recovery found when the store was opened (empty for an in-memory store).
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The data directory, for a durable store.
    pub fn data_dir(&self) -> Option<&Path> {
        self.journal.as_ref().map(Journal::dir)
    }

    /// Writes and fsyncs everything acknowledged so far, whatever the sync policy.
    pub fn flush(&self) -> Result<()> {
        self.journal.as_ref().map_or(Ok(()), Journal::flush)
    }

    /// Closes the store, flushing the journal. Dropping it does the same but cannot report an
    /// error.
    pub fn close(self) -> Result<()> {
        self.flush()
    }

    /// Purges expired entries, takes a snapshot and deletes the journal it replaces. Afterwards
    /// no file in the data directory holds the body of a recalled message or of a message
    /// past retention. Runs on its own after `Config::snapshot_after_bytes` of journal.
    pub fn compact(&self) -> Result<CompactReport> {
        let _one = self.compaction.lock();
        self.compact_now()
    }

    fn compact_now(&self) -> Result<CompactReport> {
        let Some(journal) = &self.journal else {
            return Err(Error::Internal(
                "an in-memory store has nothing to compact".into(),
            ));
        };
        let purged = self.purge_expired()?;
        let (lsn, capture) = {
            let _cut = self.gate.write();
            let capture = self.capture();
            (journal.rotate()?, capture)
        };
        let snapshot = journal.write_snapshot(lsn, |w| capture.write(w))?;
        Ok(CompactReport {
            snapshot,
            lsn,
            purged,
        })
    }

    fn import_admins(&self) -> Result<()> {
        for admin in &self.admins {
            self.run(&Op::ImportAccount {
                user: admin.clone(),
            })?;
        }
        Ok(())
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether `user` is an app administrator.
    pub fn is_admin(&self, user: &str) -> bool {
        self.admins.iter().any(|a| &**a == user)
    }

    fn admin(&self, user: &str) -> Result<UserId> {
        self.admins
            .iter()
            .find(|a| &***a == user)
            .cloned()
            .ok_or_else(|| Error::NotAdmin(user.to_owned()))
    }

    fn now(&self) -> u64 {
        self.config.clock.now()
    }

    fn random_u32(&self) -> u32 {
        // splitmix64 over a shared counter: cheap, lock-free, well spread.
        let mut z = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as u32
    }

    fn cell(&self, user: &str) -> Option<Arc<AccountCell>> {
        self.accounts.get(user).map(|r| r.value().clone())
    }

    fn cell_as(&self, user: &str, role: Role) -> Result<Arc<AccountCell>> {
        self.cell(user).ok_or_else(|| role.missing(user))
    }

    fn conversation(
        &self,
        x: &UserId,
        y: &UserId,
        create: bool,
    ) -> Option<Arc<Mutex<Conversation>>> {
        let id = conversation_id(x, y);
        if let Some(c) = self.conversations.get(&id) {
            return Some(c.value().clone());
        }
        if !create {
            return None;
        }
        let (a, b) = id.clone();
        Some(
            self.conversations
                .entry(id)
                .or_insert_with(|| Arc::new(Mutex::new(Conversation::new(a, b))))
                .value()
                .clone(),
        )
    }

    /// Records `op` in the journal before it is applied (live path only).
    fn record(&self, op: &Op, mode: Mode) -> Result<()> {
        match (&self.journal, mode) {
            (Some(journal), Mode::Live) => journal.append(|buf| codec::encode_op(op, buf)),
            _ => Ok(()),
        }
    }

    /// Applies a live operation and returns once it is durable. Even a refusal waits for
    /// what was appended before it, since it may rest on state not yet on disk (20023 on a
    /// recall still in flight, say).
    fn run(&self, op: &Op) -> Result<Applied> {
        let (applied, ticket) = self.run_deferred(op);
        self.durable(ticket)?;
        applied
    }

    /// Applies a live operation and returns the journal position that must be durable before
    /// it is acknowledged.
    fn run_deferred(&self, op: &Op) -> (Result<Applied>, u64) {
        let applied = self.apply(op, Mode::Live);
        (applied, self.journal.as_ref().map_or(0, Journal::appended))
    }

    /// Applies a live operation whose caller waits for durability later. A refusal still waits
    /// now, for what was appended before it.
    fn deferred(&self, op: &Op) -> Result<Applied> {
        let (applied, ticket) = self.run_deferred(op);
        if applied.is_err() {
            self.durable(ticket)?;
        }
        applied
    }

    /// Waits until the journal is durable up to `ticket` — or, inside [`Store::deferring`],
    /// notes the ticket for the caller to commit later.
    fn durable(&self, ticket: u64) -> Result<()> {
        let me = self as *const Store as usize;
        if let Some((store, max)) = DEFERRING.get()
            && store == me
        {
            DEFERRING.set(Some((store, max.max(ticket))));
            return Ok(());
        }
        if let Some(journal) = &self.journal {
            journal.commit_to(ticket)?;
            self.maybe_compact(journal);
        }
        Ok(())
    }

    /// Runs `f` with this store's durability waits deferred: the store calls `f` makes take
    /// effect and return without waiting for the journal, and the ticket returned covers all of
    /// them. Acknowledge their results only after [`commit`](Store::commit) of the ticket.
    /// Meant for servers that await durability elsewhere (one committer for many requests)
    /// instead of blocking a thread per request. Hooks run as the operations take effect.
    ///
    /// ```
    /// # use imstore::{Config, Store};
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), Config::default()).unwrap();
    /// let (imported, ticket) = store.deferring(|| store.import_account("vinson"));
    /// imported.unwrap();
    /// store.commit(ticket).unwrap(); // now it may be acknowledged
    /// ```
    pub fn deferring<R>(&self, f: impl FnOnce() -> R) -> (R, CommitTicket) {
        let me = self as *const Store as usize;
        let outer = DEFERRING.replace(Some((me, 0)));
        let result = f();
        let (_, ticket) = DEFERRING.replace(outer).expect("set above");
        (result, CommitTicket(ticket))
    }

    /// Waits until everything `ticket` covers is durable (sharing the fsync with concurrent
    /// committers), then compacts if the journal has grown past its threshold.
    pub fn commit(&self, ticket: CommitTicket) -> Result<()> {
        self.durable(ticket.0)
    }

    /// Whether `commit(ticket)` would return at once.
    pub fn is_durable(&self, ticket: CommitTicket) -> bool {
        self.journal.as_ref().is_none_or(|j| j.is_done(ticket.0))
    }

    /// Compacts once the journal has grown past `Config::snapshot_after_bytes`, on the thread
    /// that noticed. A failure here leaves the journal as it was (the next operation retries);
    /// it is not the caller's operation that failed.
    fn maybe_compact(&self, journal: &Journal) {
        if journal.bytes_since_snapshot() >= self.config.snapshot_after_bytes
            && let Some(_one) = self.compaction.try_lock()
        {
            let _ = self.compact_now();
        }
    }

    /// Applies one operation: the single path shared by live calls and replay.
    pub(crate) fn apply(&self, op: &Op, mode: Mode) -> Result<Applied> {
        let _gate = (mode == Mode::Live && self.journal.is_some()).then(|| self.gate.read());
        match op {
            Op::ImportAccount { user } => self.apply_import(op, user, mode),
            Op::DeleteAccount { user } => self.apply_delete(op, user, mode),
            Op::Send(send) => self.apply_send(op, send, mode),
            Op::Recall {
                from,
                to,
                key,
                by,
                at,
            } => self.apply_recall(op, from, to, *key, by, *at, mode),
            Op::Modify(m) => self.apply_modify(op, m, mode),
            Op::SetRead { reader, peer, .. } => self.apply_set_read(op, reader, peer, mode),
            Op::AddDevice { account, device } => self.apply_add_device(op, account, device, mode),
            Op::Cursor {
                account,
                device,
                cursor,
            } => {
                let cell = self.cell_as(account, Role::Plain)?;
                let state = cell.state.lock();
                let slot = state.devices.get(device).ok_or_else(|| no_device(device))?;
                self.record(op, mode)?;
                slot.shared.set_cursor(*cursor);
                Ok(Applied::Done)
            }
            Op::PurgeConversation { a, b, cutoff } => {
                let Some(conv) = self.conversation(a, b, false) else {
                    return Ok(Applied::Purged(0));
                };
                let mut c = conv.lock();
                self.record(op, mode)?;
                Ok(Applied::Purged(c.trim(*cutoff)))
            }
            Op::PurgeInbox { account, at } => {
                let cell = self.cell_as(account, Role::Plain)?;
                let mut state = cell.state.lock();
                self.record(op, mode)?;
                Ok(Applied::Purged(
                    state
                        .inbox
                        .purge(*at, at.saturating_sub(self.config.retention_secs)),
                ))
            }
        }
    }

    fn apply_import(&self, op: &Op, user: &UserId, mode: Mode) -> Result<Applied> {
        // The map shard stays locked while the import is recorded, so a concurrent delete of the
        // same name is ordered the same way in memory and in the journal.
        match self.accounts.entry(user.clone()) {
            MapEntry::Occupied(_) => Ok(Applied::Unchanged),
            MapEntry::Vacant(v) => {
                self.record(op, mode)?;
                v.insert(Arc::new(AccountCell::new(user.clone())));
                Ok(Applied::Done)
            }
        }
    }

    fn apply_delete(&self, op: &Op, user: &UserId, mode: Mode) -> Result<Applied> {
        match self.accounts.entry(user.clone()) {
            MapEntry::Vacant(_) => Err(Error::AccountNotFound(user.to_string())),
            MapEntry::Occupied(o) => {
                let cell = o.get().clone();
                let mut state = cell.state.lock();
                self.record(op, mode)?;
                state.alive = false;
                // Dropping the devices drops their channels' senders: subscribers see the end.
                state.devices.clear();
                state.inbox = Default::default();
                state.unread.clear();
                drop(state);
                o.remove();
                Ok(Applied::Done)
            }
        }
    }

    fn apply_send(&self, op: &Op, s: &SendOp, mode: Mode) -> Result<Applied> {
        if s.from == s.to {
            return Err(Error::ToAccountNotFound(format!(
                "{} (To_Account must differ from From_Account)",
                s.to
            )));
        }
        self.with_parties(
            &s.from,
            &s.to,
            true,
            || unreachable!("created on demand"),
            |fs, ts, c| {
                if let Some(existing) = c.find(&s.from, s.key) {
                    return Ok(Applied::Sent {
                        msg: existing.clone(),
                        duplicate: true,
                    });
                }
                self.record(op, mode)?;
                let msg = Arc::new(StoredMessage::new(
                    s.from.clone(),
                    s.to.clone(),
                    s.key,
                    c.take_arrival(),
                    s.sender_copy,
                    s.origin_device.clone(),
                    s.content.clone(),
                ));
                c.insert(msg.clone());
                c.trim(s.at.saturating_sub(self.config.retention_secs));
                self.deliver_sent(fs, ts, s, &msg);
                Ok(Applied::Sent {
                    msg,
                    duplicate: false,
                })
            },
        )
    }

    /// The inbox, unread and cache side of a send.
    fn deliver_sent(
        &self,
        fs: &mut AccountState,
        ts: &mut AccountState,
        s: &SendOp,
        msg: &Arc<StoredMessage>,
    ) {
        let expires_at = s.at + s.lifetime;
        ts.deliver(Entry::Message(msg.clone()), expires_at, s.at);
        *ts.unread.entry(s.from.clone()).or_default() += 1;
        if s.sender_copy == SenderCopy::RoamingAndDevices {
            fs.deliver(Entry::Message(msg.clone()), expires_at, s.at);
        }
        if let Some(device) = &s.origin_device {
            let cursor = fs.inbox.before_oldest();
            let cap = self.config.cache_capacity;
            let slot = fs
                .devices
                .entry(device.clone())
                .or_insert_with(|| DeviceSlot::new(device.clone(), cursor, cap));
            slot.shared.cache_push(msg.clone());
        }
    }

    /// Locks both parties and their conversation in the crate's lock order and runs `f` on
    /// them: 90008 / 90003 when a party does not exist (or was deleted meanwhile), `missing()`
    /// when they are one account or have no conversation and `create` is false.
    fn with_parties<R>(
        &self,
        from: &UserId,
        to: &UserId,
        create: bool,
        missing: impl FnOnce() -> Error,
        f: impl FnOnce(&mut AccountState, &mut AccountState, &mut Conversation) -> Result<R>,
    ) -> Result<R> {
        let fc = self.cell_as(from, Role::Acting)?;
        let tc = self.cell_as(to, Role::Other)?;
        if fc.id == tc.id {
            return Err(missing());
        }
        let Some(conv) = self.conversation(&fc.id, &tc.id, create) else {
            return Err(missing());
        };
        let (mut fs, mut ts) = lock_pair(&fc, &tc);
        if !fs.alive {
            return Err(Role::Acting.missing(from));
        }
        if !ts.alive {
            return Err(Role::Other.missing(to));
        }
        f(&mut fs, &mut ts, &mut conv.lock())
    }

    /// [`with_parties`](Store::with_parties) for the live, unexpired message `key` from `from`
    /// to `to`, with recall's precedence: 90008, 90003, 20022, 20023.
    fn with_live_message<R>(
        &self,
        from: &UserId,
        to: &UserId,
        key: MsgKey,
        at: u64,
        f: impl FnOnce(
            &mut AccountState,
            &mut AccountState,
            &Conversation,
            &Arc<StoredMessage>,
        ) -> Result<R>,
    ) -> Result<R> {
        let (from_s, to_s) = (from.to_string(), to.to_string());
        let not_found = || Error::MessageNotFound {
            from: from_s.clone(),
            to: to_s.clone(),
            key,
        };
        self.with_parties(from, to, false, not_found, |fs, ts, c| {
            let expired = u64::from(key.time()) < at.saturating_sub(self.config.retention_secs);
            let msg = c
                .find(from, key)
                .filter(|_| !expired)
                .cloned()
                .ok_or_else(not_found)?;
            if msg.is_recalled() {
                return Err(Error::AlreadyRecalled {
                    from: from.to_string(),
                    to: to.to_string(),
                    key,
                });
            }
            f(fs, ts, c, &msg)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_recall(
        &self,
        op: &Op,
        from: &UserId,
        to: &UserId,
        key: MsgKey,
        by: &UserId,
        at: u64,
        mode: Mode,
    ) -> Result<Applied> {
        self.with_live_message(from, to, key, at, |fs, ts, c, msg| {
            self.record(op, mode)?;
            // The one instant every layer changes: they all share this record.
            msg.recall(by.clone(), at);
            if c.is_unread(msg)
                && let Some(n) = ts.unread.get_mut(&**from)
            {
                *n = n.saturating_sub(1);
            }
            let expires_at = at + self.config.notice_lifetime_secs;
            fs.deliver(Entry::Recalled(msg.clone()), expires_at, at);
            ts.deliver(Entry::Recalled(msg.clone()), expires_at, at);
            Ok(Applied::Recalled(msg.clone()))
        })
    }

    fn apply_modify(&self, op: &Op, m: &ModifyOp, mode: Mode) -> Result<Applied> {
        self.with_live_message(&m.from, &m.to, m.key, m.at, |fs, ts, _, msg| {
            let old = msg.content().expect("a live message has content");
            let custom = m.cloud_custom_data.as_deref().or(old.cloud_custom_data());
            let content = m.body.as_ref().unwrap_or(&old).with_custom_data(custom)?;
            self.record(op, mode)?;
            msg.replace(content);
            let expires_at = m.at + self.config.notice_lifetime_secs;
            fs.deliver(Entry::Modified(msg.clone(), m.at), expires_at, m.at);
            ts.deliver(Entry::Modified(msg.clone(), m.at), expires_at, m.at);
            Ok(Applied::Done)
        })
    }

    fn apply_set_read(
        &self,
        op: &Op,
        reader: &UserId,
        peer: &UserId,
        mode: Mode,
    ) -> Result<Applied> {
        let rc = self.cell_as(reader, Role::Acting)?;
        self.cell_as(peer, Role::Other)?;
        let conv = self.conversation(reader, peer, false);
        let mut state = rc.state.lock();
        if !state.alive {
            return Err(Role::Acting.missing(reader));
        }
        let mut c = conv.as_ref().map(|c| c.lock());
        self.record(op, mode)?;
        if let Some(c) = &mut c {
            c.mark_read(reader);
        }
        state.unread.remove(&**peer);
        Ok(Applied::Done)
    }

    fn apply_add_device(
        &self,
        op: &Op,
        account: &UserId,
        device: &DeviceId,
        mode: Mode,
    ) -> Result<Applied> {
        let cell = self.cell_as(account, Role::Plain)?;
        let mut state = cell.state.lock();
        if !state.alive {
            return Err(Role::Plain.missing(account));
        }
        if state.devices.contains_key(device) {
            return Ok(Applied::Unchanged);
        }
        self.record(op, mode)?;
        let cursor = state.inbox.before_oldest();
        state.devices.insert(
            device.clone(),
            DeviceSlot::new(device.clone(), cursor, self.config.cache_capacity),
        );
        Ok(Applied::Done)
    }

    // ----- accounts -----

    /// Imports an account (`account_import`); importing an existing account succeeds and changes
    /// nothing.
    pub fn import_account(&self, user: &str) -> Result<()> {
        let user = UserId::new(user)?;
        self.run(&Op::ImportAccount { user }).map(|_| ())
    }

    /// Imports up to 100 accounts (`multiaccount_import`); returns FailAccounts, the names that
    /// could not be imported.
    pub fn import_accounts<S: AsRef<str>>(&self, users: &[S]) -> Result<Vec<String>> {
        if users.len() > MAX_IMPORT_BATCH {
            return Err(Error::TooManyAccounts { count: users.len() });
        }
        Ok(users
            .iter()
            .map(AsRef::as_ref)
            .filter(|u| self.import_account(u).is_err())
            .map(str::to_owned)
            .collect())
    }

    /// Whether `user` exists (`account_check`).
    pub fn account_exists(&self, user: &str) -> bool {
        self.accounts.contains_key(user)
    }

    /// Deletes an account (`account_delete`): its inbox, devices and unread counts go; the
    /// history of its conversations stays in the peers' views. Fails with 70107 when absent.
    pub fn delete_account(&self, user: &str) -> Result<()> {
        check_user_id(user).map_err(|_| Error::AccountNotFound(user.to_owned()))?;
        let user = self.cell_as(user, Role::Plain)?.id.clone();
        self.run(&Op::DeleteAccount { user }).map(|_| ())
    }

    // ----- messages -----

    /// Sends a one-to-one message (`sendmsg`), running the before- and after-send hooks.
    /// Sending the same (From, To, MsgKey) again returns the same receipt and stores nothing.
    pub fn send(&self, req: SendRequest) -> Result<SendReceipt> {
        self.send_deferred(req)?.wait()
    }

    /// [`send`](Store::send) without waiting for the journal: the message is stored and
    /// delivered, and [`Deferred::wait`] acknowledges it once it is durable. A thread can keep
    /// many sends in flight and they share fsyncs.
    pub fn send_deferred(&self, req: SendRequest) -> Result<Deferred<'_, SendReceipt>> {
        let from = self.sender(req.from.as_deref())?;
        let to = self.cell_as(&req.to, Role::Other)?.id.clone();
        let lifetime = check_lifetime(req.lifetime)?;
        let origin_device = req
            .from_device
            .as_deref()
            .map(|d| check_device_id(d).map(|_| DeviceId::from(d)))
            .transpose()?;
        let mut content = Content::new(&req.body, req.cloud_custom_data.as_deref())?;
        let key = self.resolve_key(req.msg_seq, req.msg_random, req.msg_time);
        let outgoing = OutgoingMessage {
            from: &from,
            to: &to,
            body: &req.body,
            cloud_custom_data: req.cloud_custom_data.as_deref(),
        };
        match self.config.hooks.before_send(&outgoing) {
            BeforeSend::Allow => {}
            BeforeSend::Block => return Err(Error::BlockedByHook { code: 20006 }),
            BeforeSend::BlockWithCode(code) => {
                let code = if (120_001..=130_000).contains(&code) {
                    code
                } else {
                    20006
                };
                return Err(Error::BlockedByHook { code });
            }
            BeforeSend::Drop => {
                let receipt = SendReceipt {
                    msg_time: key.time(),
                    msg_key: key,
                };
                return Ok(Deferred {
                    store: self,
                    ticket: 0,
                    value: receipt,
                    sent: None,
                });
            }
            BeforeSend::Replace {
                body,
                cloud_custom_data,
            } => {
                let body = body.as_deref().unwrap_or(&req.body);
                let custom = cloud_custom_data
                    .as_deref()
                    .or(req.cloud_custom_data.as_deref());
                content = Content::new(body, custom)?;
            }
        }
        let op = Op::Send(Box::new(SendOp {
            from,
            to,
            key,
            content,
            sender_copy: req.sender_copy,
            lifetime,
            origin_device,
            at: self.now(),
        }));
        let Applied::Sent { msg, duplicate } = self.deferred(&op)? else {
            unreachable!("send applies as Sent")
        };
        Ok(Deferred {
            store: self,
            ticket: self.journal.as_ref().map_or(0, Journal::appended),
            value: SendReceipt {
                msg_time: msg.key.time(),
                msg_key: msg.key,
            },
            sent: (!duplicate).then(|| msg.view()),
        })
    }

    /// Sends one message to up to 500 recipients (`batchsendmsg`) under one MsgKey. Runs no
    /// hooks. Per-recipient failures are listed in the receipt; the call itself fails only for
    /// errors of the whole request.
    pub fn batch_send(&self, req: BatchSendRequest) -> Result<BatchReceipt> {
        if req.to.len() > MAX_BATCH_RECIPIENTS {
            return Err(Error::TooManyRecipients(req.to.len()));
        }
        if req.to.is_empty() {
            return Err(Error::ToAccountNotFound(
                "(To_Account lists no recipient)".into(),
            ));
        }
        let from = self.sender(req.from.as_deref())?;
        let lifetime = check_lifetime(req.lifetime)?;
        let content = Content::new(&req.body, req.cloud_custom_data.as_deref())?;
        let key = self.resolve_key(req.msg_seq, req.msg_random, req.msg_time);
        let mut errors = Vec::new();
        for to in &req.to {
            let Some(cell) = self.cell(to) else {
                errors.push((to.clone(), Error::AccountNotFound(to.clone())));
                continue;
            };
            let op = Op::Send(Box::new(SendOp {
                from: from.clone(),
                to: cell.id.clone(),
                key,
                content: content.clone(),
                sender_copy: req.sender_copy,
                lifetime,
                origin_device: None,
                at: self.now(),
            }));
            match self.run(&op) {
                // Deleted between the lookup and the send: as unknown as never imported.
                Err(Error::ToAccountNotFound(_)) if cell.id != from => {
                    errors.push((to.clone(), Error::AccountNotFound(to.clone())))
                }
                Err(e) => errors.push((to.clone(), e)),
                Ok(_) => {}
            }
        }
        Ok(BatchReceipt {
            msg_time: key.time(),
            msg_key: key,
            errors,
        })
    }

    fn sender(&self, from: Option<&str>) -> Result<UserId> {
        match from {
            Some(f) => Ok(self.cell_as(f, Role::Acting)?.id.clone()),
            None => {
                self.admins.first().cloned().ok_or_else(|| {
                    Error::FromAccountNotFound("(no administrator configured)".into())
                })
            }
        }
    }

    fn resolve_key(&self, seq: Option<u32>, random: u32, time: Option<u32>) -> MsgKey {
        let seq = seq.unwrap_or_else(|| self.random_u32());
        let time = time.unwrap_or_else(|| u32::try_from(self.now()).unwrap_or(u32::MAX));
        MsgKey::new(seq, random, time)
    }

    /// Recalls a message (`admin_msgwithdraw`) in every layer at once: history keeps it with
    /// MsgFlagBits 8 and no content, no device receives it any more, every device cache holds a
    /// tombstone, both parties' devices get a Recalled notice, unread counts drop. Errors, in
    /// this order: 90009, 90008, 90003, 90054, 20022, 20023.
    pub fn recall(&self, operator: &str, from: &str, to: &str, key: &str) -> Result<RecallNotice> {
        self.recall_deferred(operator, from, to, key)?.wait()
    }

    /// [`recall`](Store::recall) without waiting for the journal: the recall has taken effect
    /// in every layer, and [`Deferred::wait`] acknowledges it once it is durable.
    pub fn recall_deferred(
        &self,
        operator: &str,
        from: &str,
        to: &str,
        key: &str,
    ) -> Result<Deferred<'_, RecallNotice>> {
        let by = self.admin(operator)?;
        let from = self.cell_as(from, Role::Acting)?.id.clone();
        let to = self.cell_as(to, Role::Other)?.id.clone();
        let key = MsgKey::parse(key)?;
        let op = Op::Recall {
            from,
            to,
            key,
            by,
            at: self.now(),
        };
        let Applied::Recalled(msg) = self.deferred(&op)? else {
            unreachable!("recall applies as Recalled")
        };
        Ok(Deferred {
            store: self,
            ticket: self.journal.as_ref().map_or(0, Journal::appended),
            value: msg.recall_notice().expect("just recalled"),
            sent: None,
        })
    }

    /// Replaces the MsgBody and/or CloudCustomData of a live message (`modify_c2c_msg`) in
    /// every layer and sends both parties' devices a Modified notice. A recalled message answers
    /// 20023.
    pub fn modify(
        &self,
        from: &str,
        to: &str,
        key: &str,
        body: Option<Vec<MsgElement>>,
        cloud_custom_data: Option<String>,
    ) -> Result<()> {
        let from = self.cell_as(from, Role::Acting)?.id.clone();
        let to = self.cell_as(to, Role::Other)?.id.clone();
        let key = MsgKey::parse(key)?;
        if body.is_none() && cloud_custom_data.is_none() {
            return Err(Error::InvalidMsgBody(
                "give a new MsgBody or CloudCustomData".into(),
            ));
        }
        let body = body.map(|b| Content::new(&b, None)).transpose()?;
        let op = Op::Modify(Box::new(ModifyOp {
            from,
            to,
            key,
            body,
            cloud_custom_data,
            at: self.now(),
        }));
        self.run(&op).map(|_| ())
    }

    /// One page of a conversation's history from `operator`'s side (`admin_getroammsg`).
    pub fn history(&self, q: &HistoryQuery) -> Result<HistoryPage> {
        let op = self.cell_as(&q.operator, Role::Acting)?;
        let peer = self.cell_as(&q.peer, Role::Other)?;
        if q.max_cnt == 0 {
            return Err(Error::InvalidRequest("MaxCnt must be at least 1".into()));
        }
        if q.min_time > q.max_time {
            return Err(Error::InvalidRequest("MinTime is after MaxTime".into()));
        }
        let empty = HistoryPage {
            messages: Vec::new(),
            complete: true,
            last_msg_time: 0,
            last_msg_key: None,
        };
        if op.id == peer.id {
            return Ok(empty);
        }
        let Some(conv) = self.conversation(&op.id, &peer.id, false) else {
            return Ok(empty);
        };
        let c = conv.lock();
        Ok(c.page(
            c.side(&op.id),
            q,
            self.config.history_max_bytes,
            self.retention_cutoff(),
        ))
    }

    /// The newest message of the conversation in `account`'s view, recalled or not.
    pub fn last_message(&self, account: &str, peer: &str) -> Result<Option<HistoryItem>> {
        let a = self.cell_as(account, Role::Acting)?;
        let p = self.cell_as(peer, Role::Other)?;
        let Some(conv) = self.conversation(&a.id, &p.id, false) else {
            return Ok(None);
        };
        let c = conv.lock();
        Ok(c.last_message(c.side(&a.id), self.retention_cutoff()))
    }

    fn retention_cutoff(&self) -> u64 {
        self.now().saturating_sub(self.config.retention_secs)
    }

    /// Marks everything `peer` has sent to `reader` as read (`admin_set_msg_read`).
    pub fn mark_read(&self, reader: &str, peer: &str) -> Result<()> {
        let reader = self.cell_as(reader, Role::Acting)?.id.clone();
        let peer = self.cell_as(peer, Role::Other)?.id.clone();
        self.run(&Op::SetRead {
            reader,
            peer,
            at: self.now(),
        })
        .map(|_| ())
    }

    /// How many messages from `peer` `account` has not read.
    pub fn unread(&self, account: &str, peer: &str) -> Result<u32> {
        let cell = self.cell_as(account, Role::Other)?;
        let state = cell.state.lock();
        Ok(state.unread.get(peer).copied().unwrap_or(0))
    }

    /// Every peer with unread messages for `account`, and how many (`get_c2c_unread_msg_num`).
    pub fn unread_all(&self, account: &str) -> Result<Vec<(UserId, u32)>> {
        let cell = self.cell_as(account, Role::Other)?;
        let state = cell.state.lock();
        let mut all: Vec<_> = state
            .unread
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(p, n)| (p.clone(), *n))
            .collect();
        all.sort();
        Ok(all)
    }

    // ----- devices -----

    /// Connects a device of `account`: it first receives every retained inbox entry after its
    /// cursor (a new device starts at the oldest), then new entries live. Connecting a device
    /// that is already connected ends the older subscription.
    pub fn connect(&self, account: &str, device: &str) -> Result<Subscription> {
        self.connect_inner(account, device, None)
    }

    /// Like [`connect`](Store::connect), resuming after inbox sequence number `after` (the last
    /// entry the client saw, e.g. SSE `Last-Event-ID`).
    pub fn connect_after(&self, account: &str, device: &str, after: u64) -> Result<Subscription> {
        self.connect_inner(account, device, Some(after))
    }

    fn connect_inner(
        &self,
        account: &str,
        device: &str,
        after: Option<u64>,
    ) -> Result<Subscription> {
        check_device_id(device)?;
        let cell = self.cell_as(account, Role::Plain)?;
        let device = DeviceId::from(device);
        self.run(&Op::AddDevice {
            account: cell.id.clone(),
            device: device.clone(),
        })?;
        let mut guard = cell.state.lock();
        let state = &mut *guard;
        let last_seq = state.inbox.last_seq();
        let slot = state
            .devices
            .get_mut(&device)
            .ok_or_else(|| Role::Plain.missing(account))?;
        let (rx, generation) = slot.connect(self.config.channel_capacity, after, last_seq);
        let shared = slot.shared.clone();
        drop(guard);
        Ok(Subscription::new(
            rx,
            shared,
            cell.clone(),
            generation,
            self.config.clock.clone(),
        ))
    }

    /// Disconnects a subscription and records its device's cursor, so the device resumes from
    /// there after a restart.
    pub fn disconnect(&self, sub: Subscription) -> Result<()> {
        let account = UserId::new(sub.account())?;
        let device = DeviceId::from(sub.device());
        let cursor = sub.cursor();
        drop(sub);
        self.run(&Op::Cursor {
            account,
            device,
            cursor,
        })
        .map(|_| ())
    }

    /// What a device whose cursor is `after` would receive now, without moving any cursor:
    /// the account's retained inbox entries after `after`, recalled messages left out.
    pub fn inbox(&self, account: &str, after: u64) -> Result<Vec<Event>> {
        let cell = self.cell_as(account, Role::Plain)?;
        let now = self.now();
        let state = cell.state.lock();
        Ok(state
            .inbox
            .after(after)
            .filter(|s| s.expires_at > now)
            .filter_map(|s| device::event(s.seq, &s.entry))
            .collect())
    }

    /// The inbox sequence number of the last entry the device received.
    pub fn device_cursor(&self, account: &str, device: &str) -> Result<u64> {
        let cell = self.cell_as(account, Role::Plain)?;
        let state = cell.state.lock();
        state
            .devices
            .get(device)
            .map(|s| s.shared.cursor())
            .ok_or_else(|| no_device(device))
    }

    /// The messages a device holds in its cache, oldest first; recalled ones are tombstones.
    pub fn device_cache(&self, account: &str, device: &str) -> Result<Vec<MessageView>> {
        let cell = self.cell_as(account, Role::Plain)?;
        let shared = cell
            .state
            .lock()
            .devices
            .get(device)
            .map(|s| s.shared.clone())
            .ok_or_else(|| no_device(device))?;
        Ok(shared.cache_views())
    }

    /// The devices `account` has, with whether each is connected now.
    pub fn devices(&self, account: &str) -> Result<Vec<(String, bool)>> {
        let cell = self.cell_as(account, Role::Plain)?;
        let state = cell.state.lock();
        let mut out: Vec<_> = state
            .devices
            .iter()
            .map(|(id, s)| (id.to_string(), s.is_connected()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Drops roaming messages past retention and inbox entries past their lifetime.
    pub fn purge_expired(&self) -> Result<PurgeReport> {
        let now = self.now();
        let cutoff = now.saturating_sub(self.config.retention_secs);
        let mut report = PurgeReport::default();
        let convs: Vec<_> = self.conversations.iter().map(|e| e.key().clone()).collect();
        for (a, b) in convs {
            if let Applied::Purged(n) = self.run(&Op::PurgeConversation { a, b, cutoff })? {
                report.messages += n;
            }
        }
        let accounts: Vec<_> = self.accounts.iter().map(|e| e.key().clone()).collect();
        for account in accounts {
            match self.run(&Op::PurgeInbox { account, at: now }) {
                Ok(Applied::Purged(n)) => report.inbox_entries += n,
                Ok(_) | Err(Error::AccountNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort: `close` is the way to see this fail.
        let _ = self.flush();
    }
}

fn no_device(device: &str) -> Error {
    Error::InvalidRequest(format!("no device {device:?}; connect it first"))
}

fn check_lifetime(lifetime: Option<u64>) -> Result<u64> {
    match lifetime {
        None => Ok(MAX_LIFETIME_SECS),
        Some(l) if l <= MAX_LIFETIME_SECS => Ok(l),
        Some(l) => Err(Error::InvalidLifeTime(l)),
    }
}
