//! The store façade: validates requests, turns them into [`Op`] values and applies them to the
//! layers under the crate's lock order (see `AccountCell`). The layers never call each other;
//! this module is the only place that knows an operation touches several of them.
//!
//! Every mutation goes through `Store::apply` (`store/apply.rs`), which the live path and
//! journal replay share: it takes the locks, validates against current state, records the op in
//! the journal (live path only), then mutates. Validation happens before recording, so the
//! journal holds only operations that succeeded, and mutation after recording cannot fail.
//!
//! The parts: `store/messages.rs` (send, recall, modify, the outbox), `store/batch.rs`
//! (`recall_many`), `store/history.rs` (history pages, unread counts), `store/devices.rs`,
//! `store/accounts.rs` (the accounts' cells and names), `store/conversations.rs` (the
//! conversations' table), `store/commit.rs` (waiting for durability, deferred
//! acknowledgement), `store/snapshot.rs` (snapshots and checkpoints), `store/shard.rs` (a
//! store on a given journal: a cluster shard).
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

use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::account::{AccountCell, UserId, check_user_id};
use crate::config::Config;
use crate::device::{self, DeviceId};
use crate::error::{Error, Result};
use crate::journal::{Journal, OpenError, RecoveryReport};
use crate::key::MsgKey;
use crate::message::{MAX_LIFETIME_SECS, MsgArc, MsgElement, RecallNotice, SenderCopy};
use crate::op::Op;
use crate::roaming::{Conversation, conv_key};
use crate::table::{Arena, Table};

mod accounts;
mod apply;
mod batch;
mod commit;
mod conversations;
mod devices;
mod history;
mod messages;
mod outbox;
#[cfg(feature = "cluster")]
mod shard;
mod snapshot;

pub use batch::{RecallItem, WAVE as RECALL_WAVE};
pub use commit::{CommitTicket, Deferred};
pub use messages::{ImportRequest, PreparedSend};

/// The most accounts one multi-import may name.
pub const MAX_IMPORT_BATCH: usize = 100;
/// The most recipients one batch send may name.
pub const MAX_BATCH_RECIPIENTS: usize = 500;
/// How far ahead of the store's clock a caller's MsgTimeStamp may be (a day): further is
/// refused with 90006 (`store/apply.rs`, `check_not_ahead`).
pub const MAX_MSG_TIME_AHEAD_SECS: u64 = 86_400;

/// Whether `apply` is serving a caller (and must journal) or replaying the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Live,
    Replay,
}

/// The store numbers of the two parties' cells (`AccountCell::n`), (sender, recipient), as the
/// request found them by name, and their conversation's number if it had one then: a hint
/// that spares `apply` looking the cells and the conversation up again. `apply` uses it only
/// for cells that are live and carry the operation's UserIds, so a stale hint — an account
/// deleted, say — changes nothing but the lookup taken; a conversation, once filed under two
/// cells' numbers, stays theirs (the table only grows), and one made since is looked for
/// again — except by a send (or import) whose request found none: `conversation_or_new` looks
/// under the table's writers' lock anyway. Replay and the callers that have no hint pass `None`.
pub(crate) type Found = Option<(u32, u32, Option<u32>)>;

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
    /// A device's live session began: its session number, signal, and where it starts;
    /// `reset` when the resume position it asked for was past the inbox's end, `end` the
    /// inbox's last sequence number then.
    Connected {
        generation: u64,
        signal: Arc<device::Signal>,
        start: u64,
        reset: bool,
        end: u64,
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
    /// SendMsgControl.
    pub control: crate::message::SendControl,
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
    /// Conversations by the pair of their accounts' cells' numbers (`conv_key`), filed under a
    /// mix of the accounts' name hashes (`Store::conv_key_of`, `Table::prehashed`) → their
    /// number in `conversation_list`; both read without a lock (`table.rs`), neither ever
    /// shrinks.
    conversations: Table<2, true>,
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
    /// The highest `Op::SeqFloor` applied (0: none): an account imported now numbers its
    /// inbox from here or above. Changed only by `apply_seq_floor` and a snapshot's restore.
    seq_floor: AtomicU64,
    /// How many `Op::SeqFloor` records recovery replayed (after the snapshot it began at).
    floors_replayed: std::sync::atomic::AtomicU32,
    /// Sends stored with a body the before-send decision replaced, by what was sent: a retry
    /// of one is found here (`Store::repeat_of_stored`). Live only, like the retry search.
    replaced_sends: messages::ReplacedSends,
    /// Writes snapshots in the background when enough journal has accumulated.
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    /// Replay met a record that erased a body: the journal holds it, so a snapshot is due
    /// (`journal/erasure.rs`) once the store is open.
    erased_in_replay: AtomicBool,
}

/// The highest sequence floor (`Store::raise_seq_floor`): 2^52, so that sequence numbers stay
/// exact in a JavaScript client (integers up to 2^53), with 2^52 numbers to go above it. The
/// clock in microseconds reaches it in 2112; opens after that raise no floor.
pub(crate) const SEQ_FLOOR_MAX: u64 = 1 << 52;

/// Sequence floors a replay may meet before the open makes a snapshot due
/// (`Store::raise_seq_floor`): each walks every account.
const FLOORS_BEFORE_CHECKPOINT: u32 = 8;

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
    /// anyone. Only one `Store` may have a directory open at a time. A store that has numbered
    /// any inbox entry numbers the next ones above its clock in microseconds
    /// (`Clock::now_micros`; see `raise_seq_floor`), so its sequence numbers jump at each open.
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
        store.erasures_at_open(&journal);
        let journal = Arc::new(journal);
        let _ = store.inner.journal.set(journal.clone());
        let _ = store.inner.recovery.set(report);
        store.raise_seq_floor().map_err(OpenError::Config)?;
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
                    // threshold crossing tries again, and an erasure's snapshot a little later.
                    let started = std::time::Instant::now();
                    if snapshot::checkpoint(&journal, &config).is_err() {
                        journal.erasure_retry_later(started);
                    }
                }
            })
            .map_err(|e| OpenError::Io {
                path: dir.as_ref().to_owned(),
                source: e,
            })?;
        *store.inner.checkpointer.lock() = Some(checkpointer);
        Ok(store)
    }

    /// Called by `open` once recovery is done, before anyone is served: if recovery found
    /// anything (a snapshot or a journal record), journals an `Op::SeqFloor` at the clock's
    /// now in microseconds (`Clock::now_micros`), so that every entry numbered from now on is
    /// numbered above what any earlier open could have given. What recovery found is what
    /// was durable; a backup restored, or a power loss under `SyncPolicy::None`, may have lost
    /// later records whose numbers devices saw (R6: sequence numbers are never reused). A
    /// later open has a later clock, so its floor is above everything an earlier one numbered
    /// — unless one inbox got a million entries a second of the time between them — and
    /// nothing here needs to know what was lost. A clock behind the floor already set leaves
    /// it (no record). A directory that held nothing (a new store) writes none: its numbers
    /// start at 1.
    ///
    /// Each floor replayed walks every account (`apply_seq_floor`): when recovery replayed
    /// `FLOORS_BEFORE_CHECKPOINT` of them, a snapshot is made due, which folds them into one.
    fn raise_seq_floor(&self) -> Result<()> {
        let report = self.recovery_report();
        let found = report.snapshot_lsn.is_some() || report.records_replayed > 0;
        let floor = self.inner.config.clock.now_micros().min(SEQ_FLOOR_MAX);
        let set = self.inner.seq_floor.load(Ordering::Relaxed);
        if found && floor > set {
            self.run(&Op::SeqFloor { floor })?;
        }
        let replayed = self.inner.floors_replayed.load(Ordering::Relaxed);
        if replayed >= FLOORS_BEFORE_CHECKPOINT
            && let Some(journal) = self.journal()
        {
            journal.checkpoint_soon();
        }
        Ok(())
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
            conversations: Table::prehashed(),
            conversation_list: Arena::default(),
            rng: AtomicU64::new(std::hash::RandomState::new().hash_one(std::process::id())),
            journal: OnceLock::new(),
            recovery: OnceLock::new(),
            membership: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            retired: Mutex::new(Default::default()),
            seq_floor: AtomicU64::new(0),
            floors_replayed: Default::default(),
            replaced_sends: Default::default(),
            outbox: Mutex::new(outbox),
            checkpointer: Mutex::new(None),
            erased_in_replay: AtomicBool::new(false),
        });
        Ok(Store { inner })
    }

    /// Tells a journal just opened how soon an erasure must reach the disk
    /// (`Config::erase_within_secs`), and that one must if replay met a record that erased a
    /// body (the journal still holds it) or the directory still holds files its newest
    /// snapshot replaces (a crash before their deletion: they may hold such bodies).
    fn erasures_at_open(&self, journal: &Journal) {
        let within = self.inner.config.erase_within_secs;
        journal.set_erase_within((within > 0).then(|| Duration::from_secs(within)));
        if self.inner.erased_in_replay.load(Ordering::Relaxed) || journal.replaced_at_open() {
            journal.note_erased(journal.appended());
        }
    }

    fn journal(&self) -> Option<&Journal> {
        self.inner.journal.get().map(|j| &**j)
    }

    /// What recovery found when the store was opened (empty for an in-memory store).
    pub fn recovery_report(&self) -> &RecoveryReport {
        self.inner.recovery.get().unwrap_or(&NO_RECOVERY)
    }

    /// When a snapshot is due to take bodies erased since the last one (recalled, modified,
    /// past retention) off the disk (`Config::erase_within_secs`); `None` when nothing erased
    /// is left on disk, or for an in-memory store.
    pub fn erasure_due(&self) -> Option<std::time::Instant> {
        self.journal().and_then(Journal::erasure_due)
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

    /// What dropping the last handle does, done now through this one, whatever other handles
    /// remain: flushes, stops the journal's committer (appends still work, each then written on
    /// its caller's thread) and waits for the snapshot writer to end — after a checkpoint that
    /// was already due, which a clean close still runs. The last handle's drop then finds
    /// only what came after to flush. The server's shutdown runs this within a bound.
    #[cfg(feature = "server")]
    pub(crate) fn close_in_place(&self) -> Result<()> {
        self.inner.close()
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
    /// past retention — except the message of an after-send callback still waiting in the
    /// outbox, which must carry its body (docs/FORMAT.md). Runs on its own, in the background, after
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

    /// Names this store (and its clones) while it lives: for a server's per-store bookkeeping.
    #[cfg(feature = "server")]
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
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
        self.cell(user)
            .ok_or_else(|| self.absent(role, user.name()))
    }

    /// The error of a lookup that found no live account `name` — once every import and delete
    /// so far is durable: a delete not yet durable could be undone by a crash, after someone
    /// was told the account is gone (R6). (The membership ticket is raised before the live
    /// flag changes.) Only the error path waits.
    fn absent(&self, role: Role, name: &str) -> Error {
        match self.durable(self.inner.membership.load(Ordering::Acquire)) {
            Ok(()) => role.missing(name),
            Err(e) => e,
        }
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
            .ok_or_else(|| self.absent(role, user.name()))
    }

    /// The two accounts a request names — the acting one (90008 if it is not live) and its
    /// peer (90003) — with their cells' numbers, looked up together, and the number of their
    /// conversation if they have one (every caller goes on to it): both names' table slots
    /// and the conversation's (`conv_place`) are loaded at once, then both cells and the
    /// conversation, so that a request in a large store waits for two misses to memory where
    /// one name after the other, then the conversation, would wait for five or six.
    fn pair(&self, acting: &str, other: &str) -> Result<(Numbered<'_>, Numbered<'_>, Option<u32>)> {
        let accounts = &self.inner.accounts;
        let (a, b) = (accounts.name_lookup(acting), accounts.name_lookup(other));
        for name in [&a, &b].into_iter().flatten() {
            accounts.prefetch_named(name);
        }
        // The conversation's slot, filed by the names' hashes alone: it loads with theirs.
        let place = a.zip(b).map(|((_, x), (_, y))| {
            let place = self.conv_place(x, y);
            self.inner.conversations.prefetch_hashed(place);
            place
        });
        let na = a.and_then(|k| accounts.named_number_prefetch(&k));
        let nb = b.and_then(|k| accounts.named_number_prefetch(&k));
        let mut conv = None;
        if let (Some(x), Some(y), Some(place)) = (na, nb, place) {
            // The conversation itself (its slot is in by now): its miss overlaps the cells'.
            conv = self.prefetch_conversation(&[conv_key(x, y), place], true);
        }
        let live = |n: Option<u32>, name: &str, role: Role| {
            n.and_then(|n| Some((n, accounts.cell_numbered(n).filter(|c| c.is_live())?)))
                .ok_or_else(|| self.absent(role, name))
        };
        Ok((
            live(na, acting, Role::Acting)?,
            live(nb, other, Role::Other)?,
            conv,
        ))
    }
}

impl Inner {
    /// A clean close: the journal flushed, its committer stopped (appends still work, each then
    /// written on its caller's thread), the snapshot writer ended — after a checkpoint already
    /// due, which it still runs. What the last handle's drop does, and what
    /// `Store::close_in_place` does earlier; a second close only flushes.
    fn close(&self) -> Result<()> {
        let Some(journal) = self.journal.get() else {
            return Ok(()); // in memory: no journal, no snapshot writer
        };
        let flushed = journal.flush();
        journal.shutdown();
        let writer = self.checkpointer.lock().take();
        if let Some(t) = writer {
            let _ = t.join();
        }
        flushed
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort: `Store::close` is the way to see a flush fail.
        let _ = self.close();
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
        self.accounts_durable()?;
        Ok(exists)
    }

    /// Deletes an account (`account_delete`): its inbox, devices and unread counts go; the
    /// history of its conversations stays in the peers' views. Fails with 70107 when absent.
    pub fn delete_account(&self, user: &str) -> Result<()> {
        check_user_id(user).map_err(|_| Error::AccountNotFound(user.to_owned()))?;
        let user = self.cell_as(user, Role::Plain)?.id.clone();
        self.run(&Op::DeleteAccount {
            user,
            read_all: true,
        })
        .map(|_| ())
    }

    /// Drops roaming messages past retention and inbox entries past their lifetime, and
    /// forgets devices not connected for `Config::device_idle_secs`. Journals what it removes,
    /// and that a device connected for half that time or more is still there (a record per
    /// such device per half period; without it, a crash would leave the device's last sight
    /// at its connect, and the next purge would forget it before it is back): on an idle store
    /// with nothing expired and no long session it writes nothing.
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
        let mut seen_ticket = 0;
        for cell in cells {
            let (expired, idle_devices, long_connected) = {
                let state = cell.state.lock();
                let devices: Vec<DeviceId> = state
                    .devices
                    .iter()
                    .filter(|(_, s)| !s.is_connected() && s.last_seen.saturating_add(idle) <= now)
                    .map(|(d, _)| d.clone())
                    .collect();
                // Connected since long ago and quiet (no ack moved its cursor): its last sight
                // is its connect's. Seen now, journaled — else after a crash, before it is back,
                // it would look idle since then, and be forgotten.
                let long_connected: Vec<(DeviceId, u64)> = state
                    .devices
                    .iter()
                    .filter(|(_, s)| {
                        s.is_connected() && s.last_seen.saturating_add(idle / 2) <= now
                    })
                    .map(|(d, s)| (d.clone(), s.cursor))
                    .collect();
                (
                    state.inbox.has_expired(now, cutoff),
                    devices,
                    long_connected,
                )
            };
            let account = cell.id.clone();
            for (device, cursor) in long_connected {
                // Not waited for one by one (a commit each, for every such device): once, at
                // the end of the pass. A sight lost to a crash costs nothing until the next.
                let (seen, ticket) = self.run_deferred(
                    &Op::Cursor {
                        account: account.clone(),
                        device,
                        cursor,
                        at: now,
                    },
                    None,
                );
                seen_ticket = seen_ticket.max(ticket);
                match seen {
                    // Deleted, or the device forgotten meanwhile: nothing to note.
                    Ok(_) | Err(Error::AccountNotFound(_) | Error::InvalidRequest(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if expired {
                match self.run(&Op::PurgeInbox {
                    account: account.clone(),
                    at: now,
                    retention: Some(self.inner.config.retention_secs),
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
                    idle: Some(idle),
                }) {
                    Ok(Applied::Purged(n)) => report.devices += n,
                    Ok(_) | Err(Error::AccountNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.durable(seen_ticket)?;
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
