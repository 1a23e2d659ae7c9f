//! The store façade: validates requests, turns them into [`Op`] values and applies them to the
//! layers under the crate's lock order (see `AccountCell`). The layers never call each other;
//! this module is the only place that knows an operation touches several of them.
//!
//! Every mutation goes through `Store::apply` (`store/apply.rs`), which the live path and
//! journal replay share: it takes the locks, validates against current state, records the op in
//! the journal (live path only), then mutates. Validation happens before recording, so the
//! journal holds only operations that succeeded, and mutation after recording cannot fail.
//!
//! ## Visible only when durable (R6)
//!
//! An operation changes memory when it is applied, before its record is durable. What keeps
//! that from being seen is the *ticket*: recording returns the journal position that must be
//! durable for the record to be, and the operation stores it on every object it changes — each
//! account it touches, its conversation, the account list — under the lock it changes them
//! under. Every read path reads under those locks, keeps the tickets of what it read, and
//! returns (in a server: answers) only once the journal is durable up to them. So no reader
//! shows an operation before it is durable, and since everything shown was durable, a crash
//! cannot take back what a reader saw. A reader of objects with no operation in flight does not
//! wait; one that read an object with an operation in flight waits for that operation's
//! commit — the group commit already under way — never for unrelated writes. Devices follow the
//! same rule (`device.rs`); hooks run only once their operation is durable; a refusal (20023,
//! say) waits for everything appended before it, since it may rest on it.
//!
//! Inbox sequence numbers are never reused: a device is shown only durable entries, so after a
//! crash every number it saw is still taken, and the next entry gets a higher one.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::account::{AccountCell, AccountState, UserId, check_user_id};
use crate::codec;
use crate::config::Config;
use crate::device::{self, DeviceId};
use crate::error::{Error, Result};
use crate::journal::{Journal, OpenError, RecoveryReport};
use crate::key::MsgKey;
use crate::message::{
    MAX_LIFETIME_SECS, MessageView, MsgArc, MsgElement, RecallNotice, SendReceipt, SenderCopy,
};
use crate::op::Op;
use crate::roaming::{
    Conversation, HistoryItem, HistoryPage, HistoryQuery, conv_key, conversation_id,
};
use crate::table::{Arena, Table};

mod accounts;
mod apply;
mod batch;
mod devices;
mod messages;
#[cfg(feature = "cluster")]
mod shard;
mod snapshot;

pub use batch::{RecallItem, WAVE as RECALL_WAVE};
pub use messages::{ImportRequest, PreparedSend};

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

/// The store numbers of the two parties' cells (`AccountCell::n`), (sender, recipient), as the
/// request found them by name: a hint that spares `apply` looking the cells up again by
/// UserId. `apply` uses it only for cells that are live and carry the operation's UserIds, so
/// a stale hint — an account deleted, say — changes nothing but the lookup taken. Replay and
/// the callers that have no hint pass `None`.
pub(crate) type Found = Option<(u32, u32)>;

/// What applying an op produced, for the caller that asked for it.
pub(crate) enum Applied {
    Done,
    /// The account already existed (import).
    Unchanged,
    Sent {
        msg: MsgArc,
        duplicate: bool,
    },
    Recalled(RecallNotice),
    Purged(usize),
    /// A device's live session began: its session number, signal, and where it starts.
    Connected {
        generation: u64,
        signal: Arc<device::Signal>,
        start: u64,
    },
}

/// An account named by a request (a string, found through the store's table of names) or by
/// the store itself (an interned UserId, found by its number).
pub(crate) trait AccountName {
    /// The live account and its cell's number (known before the cell is loaded).
    fn find<'a>(&self, accounts: &'a accounts::Accounts) -> Option<(u32, &'a AccountCell)>;
    fn name(&self) -> &str;
}

impl AccountName for str {
    fn find<'a>(&self, accounts: &'a accounts::Accounts) -> Option<(u32, &'a AccountCell)> {
        accounts.by_name_numbered(self)
    }
    fn name(&self) -> &str {
        self
    }
}

impl AccountName for String {
    fn find<'a>(&self, accounts: &'a accounts::Accounts) -> Option<(u32, &'a AccountCell)> {
        accounts.by_name_numbered(self)
    }
    fn name(&self) -> &str {
        self
    }
}

impl AccountName for UserId {
    fn find<'a>(&self, accounts: &'a accounts::Accounts) -> Option<(u32, &'a AccountCell)> {
        accounts.get_numbered(self)
    }
    fn name(&self) -> &str {
        self.as_str()
    }
}

/// A live account's cell with its number (known before the cell is loaded).
type Numbered<'a> = (u32, &'a AccountCell);

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
    /// Devices forgotten after `Config::device_idle_secs` without connecting.
    pub devices: usize,
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

/// What must happen once an operation is durable, besides answering: the after-hooks.
enum After {
    Sent(MessageView),
    Recalled(RecallNotice),
}

/// Inside `Store::deferring`: which store, the highest ticket to commit, the hooks to run then.
struct Deferring {
    store: usize,
    ticket: u64,
    after: Vec<After>,
}

thread_local! {
    static DEFERRING: RefCell<Option<Deferring>> = const { RefCell::new(None) };
}

/// What [`Store::deferring`] leaves to do: make everything the deferred calls did durable,
/// then run their after-hooks. Pass it to [`Store::commit`] or [`Store::commit_async`] before
/// acknowledging any of their results.
#[must_use = "results are acknowledged only after `commit`"]
#[derive(Default)]
pub struct CommitTicket {
    lsn: u64,
    after: Vec<After>,
}

impl std::fmt::Debug for CommitTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitTicket")
            .field("lsn", &self.lsn)
            .field("hooks", &self.after.len())
            .finish()
    }
}

/// An operation that has taken effect but is not yet acknowledged: [`wait`](Deferred::wait)
/// returns its result once the journal holds it as the sync policy demands, and runs the
/// after-send or after-recall hook. Until then no reader shows it. Dropping it without waiting
/// leaves the operation applied; it becomes durable (and visible) with the next commit, but
/// nobody was told it had.
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
        if let Some(view) = self.sent {
            self.store.after(After::Sent(view));
        }
        Ok(self.value)
    }
}

impl Deferred<'_, RecallNotice> {
    /// Waits until the recall is durable and acknowledges it.
    pub fn wait(self) -> Result<RecallNotice> {
        self.store.durable(self.ticket)?;
        if self.store.in_deferring() {
            self.store.after(After::Recalled(self.value.clone()));
        } else {
            self.store.inner.config.hooks.after_recall(&self.value);
        }
        Ok(self.value)
    }
}

/// The store: accounts, the three layers, recall. `Send + Sync` and cheap to clone: clones are
/// handles to the same store, which closes (flushing its journal) when the last one is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// This store, for the subscriptions it hands out.
    me: Weak<Inner>,
    config: Config,
    admins: Vec<UserId>,
    accounts: accounts::Accounts,
    /// Conversations by the pair of account numbers (`conv_key`) → their number in
    /// `conversation_list`; both read without a lock (`table.rs`), neither ever shrinks.
    conversations: Table<1>,
    conversation_list: Arena<Mutex<Conversation>>,
    rng: AtomicU64,
    /// Unset for an in-memory store.
    journal: OnceLock<Arc<Journal>>,
    recovery: OnceLock<RecoveryReport>,
    /// The ticket of the last import or delete: readers of the account list wait for it.
    membership: AtomicU64,
    /// Numbers device sessions.
    sessions: AtomicU64,
    /// After-callbacks not yet delivered (changed only by `apply`).
    outbox: Mutex<crate::callback::Outbox>,
    /// Deleted accounts' next inbox sequence numbers: re-imported, an account continues from
    /// there (sequence numbers are never reused). Changed only by import and delete.
    retired: Mutex<crate::hash::HashMap<UserId, u64>>,
    /// Writes snapshots in the background when enough journal has accumulated.
    checkpointer: Mutex<Option<JoinHandle<()>>>,
}

static NO_RECOVERY: RecoveryReport = RecoveryReport {
    snapshot_lsn: None,
    records_replayed: 0,
    truncated_tail: None,
    repaired: None,
};

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("accounts", &self.inner.accounts.len())
            .field("conversations", &self.inner.conversation_list.len())
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
    /// journal after it, then journals every mutation before acknowledging it or showing it to
    /// anyone. Only one `Store` may have a directory open at a time.
    ///
    /// A durable store runs two threads: one that commits for callers who wait asynchronously
    /// ([`commit_async`](Store::commit_async), [`Subscription::next_batch`](crate::Subscription::next_batch)) and one that
    /// writes snapshots in the background once `Config::snapshot_after_bytes` of journal
    /// have accumulated.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> std::result::Result<Store, OpenError> {
        let store = Store::empty(config).map_err(OpenError::Config)?;
        let cfg = &store.inner.config;
        let (journal, report) = Journal::open(
            dir.as_ref(),
            cfg.sync,
            cfg.repair,
            cfg.journal_prealloc_bytes,
            cfg.journal_observer.clone(),
            |rec| store.recover(rec),
        )?;
        journal.set_snapshot_threshold(cfg.snapshot_after_bytes);
        let journal = Arc::new(journal);
        let _ = store.inner.journal.set(journal.clone());
        let _ = store.inner.recovery.set(report);
        store.import_admins().map_err(OpenError::Config)?;
        let config = store.inner.config.clone();
        let checkpointer = std::thread::Builder::new()
            .name("imstore-snapshot".into())
            .spawn(move || {
                // Below the writers: building a snapshot is background work. (Linux sets
                // the nice value per thread; failure leaves the default.)
                // SAFETY: plain system calls on this thread's own id.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
                }
                while journal.wait_checkpoint_due() {
                    // A failure (a full disk, say) leaves the journal as it was; the next
                    // threshold crossing tries again.
                    let _ = snapshot::checkpoint(&journal, &config);
                }
            })
            .map_err(|e| OpenError::Io {
                path: dir.as_ref().to_owned(),
                source: e,
            })?;
        *store.inner.checkpointer.lock() = Some(checkpointer);
        Ok(store)
    }

    fn empty(config: Config) -> Result<Store> {
        let admins = config
            .admins
            .iter()
            .map(|a| UserId::new(a))
            .collect::<Result<Vec<_>>>()?;
        let outbox = crate::callback::Outbox::new(config.outbox_max);
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            config,
            admins,
            accounts: accounts::Accounts::default(),
            conversations: Table::default(),
            conversation_list: Arena::default(),
            rng: AtomicU64::new(std::hash::RandomState::new().hash_one(std::process::id())),
            journal: OnceLock::new(),
            recovery: OnceLock::new(),
            membership: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            retired: Mutex::new(Default::default()),
            outbox: Mutex::new(outbox),
            checkpointer: Mutex::new(None),
        });
        Ok(Store { inner })
    }

    fn journal(&self) -> Option<&Journal> {
        self.inner.journal.get().map(|j| &**j)
    }

    /// What recovery found when the store was opened (empty for an in-memory store).
    pub fn recovery_report(&self) -> &RecoveryReport {
        self.inner.recovery.get().unwrap_or(&NO_RECOVERY)
    }

    /// The data directory, for a durable store.
    pub fn data_dir(&self) -> Option<&Path> {
        self.journal().map(Journal::dir)
    }

    /// Writes and fsyncs everything acknowledged so far, whatever the sync policy.
    pub fn flush(&self) -> Result<()> {
        self.journal().map_or(Ok(()), Journal::flush)
    }

    /// Closes this handle, flushing the journal. Dropping the last handle does the same but
    /// cannot report an error.
    pub fn close(self) -> Result<()> {
        self.flush()
    }

    /// The fault injection points of a durable store's journal (cargo feature
    /// `fault-injection`, for tests).
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn faults(&self) -> Option<&crate::journal::Faults> {
        self.journal().map(Journal::faults)
    }

    /// Purges expired entries, takes a snapshot and deletes the journal it replaces. Afterwards
    /// no file in the data directory holds the body of a recalled message or of a message
    /// past retention. Runs on its own, in the background, after
    /// `Config::snapshot_after_bytes` of journal (or the last snapshot's size, if larger).
    ///
    /// The snapshot is built from the journal itself (the previous snapshot and the finished
    /// segments replayed into a scratch store), so operations go on while it is written: they
    /// wait only for the journal to switch segments, which is one ordinary commit.
    pub fn compact(&self) -> Result<CompactReport> {
        let Some(journal) = self.inner.journal.get() else {
            return Err(Error::Internal(
                "an in-memory store has nothing to compact".into(),
            ));
        };
        let purged = self.purge_expired()?;
        let (snapshot, lsn) = snapshot::checkpoint(journal, &self.inner.config)?;
        Ok(CompactReport {
            snapshot,
            lsn,
            purged,
        })
    }

    fn import_admins(&self) -> Result<()> {
        for admin in &self.inner.admins {
            self.run(&Op::ImportAccount {
                user: admin.clone(),
            })?;
        }
        Ok(())
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether `user` is an app administrator.
    pub fn is_admin(&self, user: &str) -> bool {
        self.inner.admins.iter().any(|a| &**a == user)
    }

    fn admin(&self, user: &str) -> Result<UserId> {
        self.inner
            .admins
            .iter()
            .find(|a| &***a == user)
            .cloned()
            .ok_or_else(|| Error::NotAdmin(user.to_owned()))
    }

    fn now(&self) -> u64 {
        self.inner.config.clock.now()
    }

    fn random_u32(&self) -> u32 {
        // splitmix64 over a shared counter: cheap, lock-free, well spread.
        let mut z = self
            .inner
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as u32
    }

    fn cell(&self, user: &(impl AccountName + ?Sized)) -> Option<&AccountCell> {
        user.find(&self.inner.accounts).map(|(_, cell)| cell)
    }

    fn cell_as(&self, user: &(impl AccountName + ?Sized), role: Role) -> Result<&AccountCell> {
        self.cell(user).ok_or_else(|| role.missing(user.name()))
    }

    /// [`cell_as`](Store::cell_as) with the cell's number, which the lookup learns before the
    /// cell's own cache line arrives: a conversation keyed by the two numbers can be looked up
    /// (or prefetched) while the cells load.
    fn numbered_as(
        &self,
        user: &(impl AccountName + ?Sized),
        role: Role,
    ) -> Result<(u32, &AccountCell)> {
        user.find(&self.inner.accounts)
            .ok_or_else(|| role.missing(user.name()))
    }

    /// The two accounts a request names — the acting one (90008 if it is not live) and its
    /// peer (90003) — with their cells' numbers, looked up together: both names' table slots
    /// are loaded at once, then both cells and the slot of their conversation (every caller
    /// goes on to it), so that a request in a large store waits for two misses to memory
    /// where one name after the other would wait for four or five.
    fn pair(&self, acting: &str, other: &str) -> Result<(Numbered<'_>, Numbered<'_>)> {
        let accounts = &self.inner.accounts;
        let (a, b) = (accounts.name_lookup(acting), accounts.name_lookup(other));
        for name in [&a, &b].into_iter().flatten() {
            accounts.prefetch_named(name);
        }
        let na = a.and_then(|k| accounts.named_number_prefetch(&k));
        let nb = b.and_then(|k| accounts.named_number_prefetch(&k));
        if let (Some(x), Some(y)) = (na, nb) {
            self.prefetch_conversation(x, y);
        }
        let live = |n: Option<u32>, name: &str, role: Role| {
            n.and_then(|n| Some((n, accounts.cell_numbered(n).filter(|c| c.is_live())?)))
                .ok_or_else(|| role.missing(name))
        };
        Ok((
            live(na, acting, Role::Acting)?,
            live(nb, other, Role::Other)?,
        ))
    }

    /// The conversation of `x` and `y`, if they have one.
    fn conversation(&self, x: &UserId, y: &UserId) -> Option<&Mutex<Conversation>> {
        let accounts = &self.inner.accounts;
        self.conversation_of(accounts.number(x)?, accounts.number(y)?)
    }

    /// The conversation of the accounts whose cells are numbered `x` and `y`, if they have one.
    fn conversation_of(&self, x: u32, y: u32) -> Option<&Mutex<Conversation>> {
        let n = self.inner.conversations.get(&conv_key(x, y))?;
        self.inner.conversation_list.get(n)
    }

    /// Starts loading the table slot of the conversation of cells `x` and `y`: a request calls
    /// it as soon as it knows both numbers, so the slot's miss overlaps the cells' own.
    fn prefetch_conversation(&self, x: u32, y: u32) {
        self.inner.conversations.prefetch(&conv_key(x, y));
    }

    /// The conversation of two accounts, made if they have none. The caller holds both
    /// accounts' locks (`xs`, `ys`): a new conversation enters both lists of conversations in
    /// the same instant it can first be found.
    fn conversation_or_new(
        &self,
        (x, xs): (&AccountCell, &mut AccountState),
        (y, ys): (&AccountCell, &mut AccountState),
    ) -> Result<&Mutex<Conversation>> {
        let (a, b) = conversation_id(&x.id, &y.id);
        let mut made = false;
        let key = conv_key(x.n, y.n);
        let mut conv = Conversation::new(a, b);
        conv.link(if conv.side(&x.id) == 0 {
            [xs.conversations, ys.conversations]
        } else {
            [ys.conversations, xs.conversations]
        });
        let (n, conv) = self.add_conversation(key, conv, &mut made)?;
        if made {
            xs.conversations = n;
            ys.conversations = n;
        }
        Ok(conv)
    }

    /// Calls `f` with each of `account`'s conversations, newest first, each locked in turn;
    /// `state` is the account's state, locked (so the list does not change meanwhile).
    pub(crate) fn each_conversation(
        &self,
        account: &UserId,
        state: &AccountState,
        mut f: impl FnMut(&mut Conversation),
    ) {
        let mut n = state.conversations;
        // A list holds each conversation at most once: bounded by how many there are.
        for _ in 0..self.inner.conversation_list.len() {
            let Some(conv) = self.inner.conversation_list.get(n) else {
                return;
            };
            let mut c = conv.lock();
            f(&mut c);
            n = c.next_of(account);
        }
    }

    /// The conversation of `conv`'s two accounts, whose cells' `conv_key` is `key`: `conv`
    /// itself, stored (and `made` set), if they had none. Returns its number.
    fn add_conversation(
        &self,
        key: [u64; 1],
        conv: Conversation,
        made: &mut bool,
    ) -> Result<(u32, &Mutex<Conversation>)> {
        let inner = &self.inner;
        // Its callers have just missed the conversation (or load a snapshot, where it is new).
        let n = inner.conversations.get_or_try_insert_locked(&key, || {
            *made = true;
            inner.conversation_list.push(Mutex::new(conv)).map_err(|_| {
                Error::Internal(format!(
                    "this store holds {} conversations, the most it can",
                    Arena::<Mutex<Conversation>>::CAPACITY
                ))
            })
        })?;
        let conv = inner
            .conversation_list
            .get(n)
            .expect("a conversation is numbered once stored");
        Ok((n, conv))
    }

    /// Records `op` in the journal before it is applied (live path only); returns its ticket,
    /// which the operation stores on everything it changes (0: nothing to wait for).
    fn record(&self, op: &Op, mode: Mode) -> Result<u64> {
        match (self.journal(), mode) {
            (Some(journal), Mode::Live) => journal.append(|buf| codec::encode_op(op, buf)),
            _ => Ok(0),
        }
    }

    /// Applies a live operation and returns once it is durable. Even a refusal waits for
    /// what was appended before it, since it may rest on state not yet on disk (20023 on a
    /// recall still in flight, say).
    fn run(&self, op: &Op) -> Result<Applied> {
        self.run_found(op, None)
    }

    /// [`run`](Store::run) with the parties' cells as the request found them ([`Found`]).
    fn run_found(&self, op: &Op, found: Found) -> Result<Applied> {
        let (applied, ticket) = self.run_deferred(op, found);
        self.durable(ticket)?;
        applied
    }

    /// Applies a live operation and returns the journal position that must be durable before
    /// it is acknowledged.
    /// `found`: the parties' cells, if the caller has them ([`Found`]).
    fn run_deferred(&self, op: &Op, found: Found) -> (Result<Applied>, u64) {
        let applied = self.apply_found(op, Mode::Live, found);
        (applied, self.journal().map_or(0, Journal::appended))
    }

    /// Applies a live operation whose caller waits for durability later. A refusal still waits
    /// now, for what was appended before it. `found`: the parties' cells, if the caller has
    /// them ([`Found`]).
    fn deferred(&self, op: &Op, found: Found) -> Result<Applied> {
        let (applied, ticket) = self.run_deferred(op, found);
        if applied.is_err() {
            self.durable(ticket)?;
        }
        applied
    }

    /// Inside [`Store::deferring`] on this store: notes that `ticket` must be durable before
    /// the caller answers, and returns `true`.
    fn defer(&self, ticket: u64) -> bool {
        let me = Arc::as_ptr(&self.inner) as usize;
        DEFERRING.with_borrow_mut(|d| match d {
            Some(d) if d.store == me => {
                d.ticket = d.ticket.max(ticket);
                true
            }
            _ => false,
        })
    }

    /// Waits until the journal is durable up to `ticket` — or, inside [`Store::deferring`],
    /// notes the ticket for the caller to commit before it answers. Writers call it before
    /// acknowledging, readers before showing what they read.
    fn durable(&self, ticket: u64) -> Result<()> {
        if ticket == 0 || self.defer(ticket) {
            return Ok(());
        }
        match self.journal() {
            Some(journal) => journal.commit_to(ticket),
            None => Ok(()),
        }
    }

    /// Whether this thread is inside [`Store::deferring`] on this store.
    fn in_deferring(&self) -> bool {
        let me = Arc::as_ptr(&self.inner) as usize;
        DEFERRING.with_borrow(|d| d.as_ref().is_some_and(|d| d.store == me))
    }

    /// Runs an after-hook now, or inside [`Store::deferring`] leaves it to `commit`.
    fn after(&self, after: After) {
        let me = Arc::as_ptr(&self.inner) as usize;
        let after = DEFERRING.with_borrow_mut(|d| match d {
            Some(d) if d.store == me => {
                d.after.push(after);
                None
            }
            _ => Some(after),
        });
        if let Some(after) = after {
            self.run_hook(after);
        }
    }

    fn run_hook(&self, after: After) {
        let hooks = &self.inner.config.hooks;
        match after {
            After::Sent(view) => hooks.after_send(&view),
            After::Recalled(notice) => hooks.after_recall(&notice),
        }
    }

    /// Runs `f` with this store's durability waits deferred: the calls `f` makes take effect
    /// and return without waiting for the journal — reads included, whose results may show
    /// what is not yet durable — and the ticket returned covers all of them. Answer nobody with
    /// their results before [`commit`](Store::commit) or [`commit_async`](Store::commit_async)
    /// of the ticket; that is when the after-hooks run, too. Meant for servers that await
    /// durability without a thread per request.
    ///
    /// ```
    /// # use imstore::{Config, Store};
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), Config::default()).unwrap();
    /// let (imported, ticket) = store.deferring(|| store.import_account("vinson"));
    /// store.commit(ticket).unwrap(); // now it may be acknowledged
    /// imported.unwrap();
    /// ```
    pub fn deferring<R>(&self, f: impl FnOnce() -> R) -> (R, CommitTicket) {
        let me = Arc::as_ptr(&self.inner) as usize;
        let outer = DEFERRING.replace(Some(Deferring {
            store: me,
            ticket: 0,
            after: Vec::new(),
        }));
        let result = f();
        let mine = DEFERRING.replace(outer).expect("set above");
        (
            result,
            CommitTicket {
                lsn: mine.ticket,
                after: mine.after,
            },
        )
    }

    /// Waits until everything `ticket` covers is durable (sharing the fsync with concurrent
    /// committers), then runs the after-hooks of the operations it covers.
    pub fn commit(&self, ticket: CommitTicket) -> Result<()> {
        if let Some(journal) = self.journal() {
            journal.commit_to(ticket.lsn)?;
        }
        for after in ticket.after {
            self.run_hook(after);
        }
        Ok(())
    }

    /// [`commit`](Store::commit) for async callers: the store's committer thread writes, and
    /// the future completes once the ticket is durable and the after-hooks have run.
    pub async fn commit_async(&self, ticket: CommitTicket) -> Result<()> {
        if let Some(journal) = self.journal() {
            std::future::poll_fn(|cx| journal.poll_durable(ticket.lsn, cx)).await?;
        }
        for after in ticket.after {
            self.run_hook(after);
        }
        Ok(())
    }

    /// Whether `commit(ticket)` would not wait for the disk.
    pub fn is_durable(&self, ticket: &CommitTicket) -> bool {
        self.journal().is_none_or(|j| j.is_done(ticket.lsn))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(journal) = self.journal.get() {
            // Best effort: `close` is the way to see this fail.
            let _ = journal.flush();
            journal.shutdown();
        }
        if let Some(t) = self.checkpointer.get_mut().take() {
            let _ = t.join();
        }
    }
}

impl Store {
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
    pub fn account_exists(&self, user: &str) -> Result<bool> {
        let exists = UserId::find(user).is_some_and(|id| self.inner.accounts.contains(&id));
        self.durable(self.inner.membership.load(Ordering::Acquire))?;
        Ok(exists)
    }

    /// Deletes an account (`account_delete`): its inbox, devices and unread counts go; the
    /// history of its conversations stays in the peers' views. Fails with 70107 when absent.
    pub fn delete_account(&self, user: &str) -> Result<()> {
        check_user_id(user).map_err(|_| Error::AccountNotFound(user.to_owned()))?;
        let user = self.cell_as(user, Role::Plain)?.id.clone();
        self.run(&Op::DeleteAccount { user }).map(|_| ())
    }

    /// One page of a conversation's history from `operator`'s side (`admin_getroammsg`).
    pub fn history(&self, q: &HistoryQuery) -> Result<HistoryPage> {
        let ((n_op, op), (n_peer, _)) = self.pair(&q.operator, &q.peer)?;
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
        if n_op == n_peer {
            return Ok(empty);
        }
        let Some(conv) = self.conversation_of(n_op, n_peer) else {
            return Ok(empty);
        };
        let (page, ticket) = {
            let c = conv.lock();
            let page = c.page(
                c.side(&op.id),
                q,
                self.inner.config.history_max_bytes,
                self.retention_cutoff(),
            );
            (page, c.ticket)
        };
        self.durable(ticket)?;
        Ok(page)
    }

    /// The newest message of the conversation in `account`'s view, recalled or not.
    pub fn last_message(&self, account: &str, peer: &str) -> Result<Option<HistoryItem>> {
        let ((na, a), (np, _)) = self.pair(account, peer)?;
        let Some(conv) = self.conversation_of(na, np) else {
            return Ok(None);
        };
        let (last, ticket) = {
            let c = conv.lock();
            (
                c.last_message(c.side(&a.id), self.retention_cutoff()),
                c.ticket,
            )
        };
        self.durable(ticket)?;
        Ok(last)
    }

    fn retention_cutoff(&self) -> u64 {
        self.now().saturating_sub(self.inner.config.retention_secs)
    }

    /// Marks everything `peer` has sent to `reader` as read (`admin_set_msg_read`).
    pub fn mark_read(&self, reader: &str, peer: &str) -> Result<()> {
        let reader = self.cell_as(reader, Role::Acting)?.id.clone();
        let peer = self.cell_as(peer, Role::Other)?.id.clone();
        self.run(&Op::SetRead {
            reader,
            peer,
            at: self.now(),
            origin: self.origin(),
        })
        .map(|_| ())
    }

    /// How many messages from `peer` `account` has not read.
    pub fn unread(&self, account: &str, peer: &str) -> Result<u32> {
        let cell = self.cell_as(account, Role::Other)?;
        // What made the account exist (its import) is read too, as before any conversation.
        let mut ticket = cell.state.lock().ticket;
        let conv = UserId::find(peer).and_then(|p| self.conversation(&cell.id, &p));
        let n = conv.map_or(0, |conv| {
            let c = conv.lock();
            ticket = ticket.max(c.ticket);
            c.unread[c.side(&cell.id)]
        });
        self.durable(ticket)?;
        Ok(n)
    }

    /// Every peer with unread messages for `account`, and how many (`get_c2c_unread_msg_num`).
    pub fn unread_all(&self, account: &str) -> Result<Vec<(UserId, u32)>> {
        let cell = self.cell_as(account, Role::Other)?;
        let (mut all, ticket) = {
            let state = cell.state.lock();
            self.unread_peers(&cell.id, &state)
        };
        self.durable(ticket)?;
        all.sort();
        Ok(all)
    }

    /// `account`'s peers with unread messages (its state locked), and the newest ticket of
    /// what was read.
    fn unread_peers(&self, account: &UserId, state: &AccountState) -> (Vec<(UserId, u32)>, u64) {
        let mut ticket = state.ticket;
        let mut all = Vec::new();
        self.each_conversation(account, state, |c| {
            let side = c.side(account);
            // Every change to a count stamps the account's ticket too; the conversations'
            // are taken as well, listed or not (a count gone to 0 is something read), so the
            // rule does not rest on that.
            ticket = ticket.max(c.ticket);
            if c.unread[side] > 0 {
                all.push((c.users()[1 - side].clone(), c.unread[side]));
            }
        });
        (all, ticket)
    }

    /// Drops roaming messages past retention and inbox entries past their lifetime, and
    /// forgets devices not connected for `Config::device_idle_secs`. Journals only what it
    /// removes: on an idle store with nothing expired it writes nothing.
    pub fn purge_expired(&self) -> Result<PurgeReport> {
        let now = self.now();
        let cutoff = now.saturating_sub(self.inner.config.retention_secs);
        let idle = self.inner.config.device_idle_secs;
        let mut report = PurgeReport::default();
        let convs: Vec<_> = self
            .inner
            .conversation_list
            .iter()
            .filter_map(|c| {
                let c = c.lock();
                c.has_expired(cutoff).then(|| c.users().clone())
            })
            .collect();
        for [a, b] in convs {
            if let Applied::Purged(n) = self.run(&Op::PurgeConversation { a, b, cutoff })? {
                report.messages += n;
            }
        }
        let cells = self.inner.accounts.cells();
        for cell in cells {
            let (expired, idle_devices) = {
                let state = cell.state.lock();
                let devices: Vec<DeviceId> = state
                    .devices
                    .iter()
                    .filter(|(_, s)| !s.is_connected() && s.last_seen.saturating_add(idle) <= now)
                    .map(|(d, _)| d.clone())
                    .collect();
                (state.inbox.has_expired(now, cutoff), devices)
            };
            let account = cell.id.clone();
            if expired {
                match self.run(&Op::PurgeInbox {
                    account: account.clone(),
                    at: now,
                }) {
                    Ok(Applied::Purged(n)) => report.inbox_entries += n,
                    Ok(_) | Err(Error::AccountNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if !idle_devices.is_empty() {
                match self.run(&Op::ForgetDevices {
                    account,
                    devices: idle_devices,
                    at: now,
                }) {
                    Ok(Applied::Purged(n)) => report.devices += n,
                    Ok(_) | Err(Error::AccountNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
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
