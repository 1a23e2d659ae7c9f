//! Store configuration: bounds of the three layers, administrators, the clock and the hooks.

use std::fmt;
use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::hooks::{Hooks, NoHooks};
use crate::journal::SyncPolicy;

/// `Config::erase_within_secs` by default: ten minutes.
pub const ERASE_WITHIN_SECS: u64 = 600;

/// How a [`Store`](crate::Store) is set up. `Config::default()` gives Tencent's defaults.
///
/// ```
/// use imstore::{Config, ManualClock};
/// let clock = ManualClock::new(1_700_000_000);
/// let config = Config::default().with_clock(clock).with_retention_secs(3600);
/// assert_eq!(config.retention_secs, 3600);
/// ```
#[derive(Clone)]
pub struct Config {
    /// How long roaming history keeps a message, counted from its MsgTimeStamp (default 7 days).
    pub retention_secs: u64,
    /// How long a Recalled or Modified notice stays in an inbox (default 30 days), and never
    /// less than `device_idle_secs` plus a day: a device last seen before the notice (or
    /// within a day after it, a connection that ended before reading it) and not forgotten
    /// since gets it when it comes back (R3). A Modified notice still leaves with its message
    /// at the end of roaming retention (it carries the message's content); a Recalled one
    /// carries no content and stays its whole lifetime. (An inbox drops expired entries from
    /// its front as it grows; ones behind a longer-lived notice wait for `purge_expired`.)
    pub notice_lifetime_secs: u64,
    /// How many messages each device cache holds (default 1000).
    pub cache_capacity: usize,
    /// Largest history response (`admin_getroammsg`'s whole answer, counted at its widest),
    /// in bytes (default 13 KB); a page holds at least one message, whatever its size.
    pub history_max_bytes: usize,
    /// App administrators: they may recall, and a send without From_Account comes from the
    /// first one. They are imported when the store opens. Default: `administrator`.
    pub admins: Vec<String>,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// Send and recall callbacks.
    pub hooks: Arc<dyn Hooks>,
    /// When a durable store's acknowledged operations are on disk (default: group commit).
    pub sync: SyncPolicy,
    /// Journal bytes after which a durable store takes a snapshot and drops the journal it
    /// replaces (default 64 MiB), bounding recovery time.
    pub snapshot_after_bytes: u64,
    /// How soon, in seconds, a body a durable store erased — recalled, replaced by a
    /// modification, past retention — leaves the disk too (default 600): a
    /// snapshot is taken at most this long after the first such operation since the last
    /// snapshot, and the journal it replaces deleted (SPEC §4.3: a recalled body "cannot be
    /// restored"). Costs at most one snapshot of the whole store per interval, only while
    /// something is erased. 0: only `snapshot_after_bytes` and `Store::compact` take
    /// snapshots, and an erased body stays in the journal until then.
    pub erase_within_secs: u64,
    /// Open a damaged data directory anyway, truncating the journal at the first damaged
    /// record (what was dropped is in `Store::recovery_report`). Default: refuse to open.
    pub repair: bool,
    /// How many devices one account may have (default 32): a new device beyond it is refused
    /// (90001) until one is forgotten.
    pub max_devices_per_account: usize,
    /// A device not connected for this long is forgotten by `purge_expired` (default 30
    /// days); if it comes back it starts again from the oldest retained entry.
    pub device_idle_secs: u64,
    /// Disk space the journal reserves ahead of its writes (default 4 MiB). A full disk then
    /// refuses an operation before it takes effect, never in the middle of a write.
    pub journal_prealloc_bytes: u64,
    /// How long after its MsgTimeStamp a client may recall its own message (default 120 s,
    /// Tencent's 2 minutes); later answers 20016. Administrators have no limit.
    pub client_recall_window_secs: u64,
    /// Most after-callbacks kept undelivered in the outbox (default 1,000,000); beyond, new
    /// ones are dropped and counted (`Store::outbox_dropped`), and their operations still
    /// succeed.
    pub outbox_max: usize,
    /// Told of every batch the journal writes (for metrics); none by default.
    pub journal_observer: Option<Arc<dyn crate::journal::JournalObserver>>,
}

/// How much longer than `device_idle_secs` a notice lives at least: a device still connected
/// when the notice came, whose connection ended (its last seen) before it read it, is
/// remembered until a day after that.
const NOTICE_MARGIN_SECS: u64 = 86_400;

impl Default for Config {
    fn default() -> Self {
        Config {
            retention_secs: 604_800,
            notice_lifetime_secs: 30 * 86_400,
            cache_capacity: 1000,
            history_max_bytes: 13 * 1024,
            admins: vec!["administrator".to_owned()],
            clock: Arc::new(SystemClock),
            hooks: Arc::new(NoHooks),
            sync: SyncPolicy::Group,
            snapshot_after_bytes: 64 << 20,
            erase_within_secs: ERASE_WITHIN_SECS,
            repair: false,
            max_devices_per_account: 32,
            device_idle_secs: 30 * 86_400,
            journal_prealloc_bytes: crate::journal::DEFAULT_PREALLOC,
            client_recall_window_secs: 120,
            outbox_max: 1_000_000,
            journal_observer: None,
        }
    }
}

impl Config {
    /// How long a notice appended now stays in an inbox: `notice_lifetime_secs`, raised to
    /// `device_idle_secs` plus a day if lower, so that a notice outlives every device that has
    /// yet to read it and is still remembered.
    pub(crate) fn notice_lifetime(&self) -> u64 {
        (self.notice_lifetime_secs).max(self.device_idle_secs.saturating_add(NOTICE_MARGIN_SECS))
    }

    /// Uses `clock` for "now".
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Installs `hooks`.
    pub fn with_hooks(mut self, hooks: Arc<dyn Hooks>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Sets the sync policy of a durable store.
    pub fn with_sync(mut self, sync: SyncPolicy) -> Self {
        self.sync = sync;
        self
    }

    /// Sets how much journal triggers a snapshot.
    pub fn with_snapshot_after_bytes(mut self, bytes: u64) -> Self {
        self.snapshot_after_bytes = bytes;
        self
    }

    /// Sets how soon an erased body leaves the disk, in seconds (0: only at the size
    /// threshold and `compact`).
    pub fn with_erase_within_secs(mut self, secs: u64) -> Self {
        self.erase_within_secs = secs;
        self
    }

    /// Opens damaged data directories by truncating them at the damage.
    pub fn with_repair(mut self, repair: bool) -> Self {
        self.repair = repair;
        self
    }

    /// Sets the roaming retention.
    pub fn with_retention_secs(mut self, secs: u64) -> Self {
        self.retention_secs = secs;
        self
    }

    /// Sets the per-device cache capacity.
    pub fn with_cache_capacity(mut self, n: usize) -> Self {
        self.cache_capacity = n;
        self
    }

    /// Sets how many devices an account may have.
    pub fn with_max_devices_per_account(mut self, n: usize) -> Self {
        self.max_devices_per_account = n.max(1);
        self
    }

    /// Sets after how long without connecting a device is forgotten.
    pub fn with_device_idle_secs(mut self, secs: u64) -> Self {
        self.device_idle_secs = secs;
        self
    }

    /// Sets how long a client may recall its own message.
    pub fn with_client_recall_window_secs(mut self, secs: u64) -> Self {
        self.client_recall_window_secs = secs;
        self
    }

    /// Sets how much disk space the journal reserves ahead of its writes.
    pub fn with_journal_prealloc_bytes(mut self, bytes: u64) -> Self {
        self.journal_prealloc_bytes = bytes;
        self
    }

    /// Tells `observer` of every batch the journal writes.
    pub fn with_journal_observer(
        mut self,
        observer: Arc<dyn crate::journal::JournalObserver>,
    ) -> Self {
        self.journal_observer = Some(observer);
        self
    }

    /// Replaces the administrator list.
    pub fn with_admins<I: IntoIterator<Item = S>, S: Into<String>>(mut self, admins: I) -> Self {
        self.admins = admins.into_iter().map(Into::into).collect();
        self
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("retention_secs", &self.retention_secs)
            .field("notice_lifetime_secs", &self.notice_lifetime_secs)
            .field("cache_capacity", &self.cache_capacity)
            .field("history_max_bytes", &self.history_max_bytes)
            .field("admins", &self.admins)
            .field("sync", &self.sync)
            .field("snapshot_after_bytes", &self.snapshot_after_bytes)
            .field("erase_within_secs", &self.erase_within_secs)
            .field("repair", &self.repair)
            .field("max_devices_per_account", &self.max_devices_per_account)
            .field("device_idle_secs", &self.device_idle_secs)
            .field("journal_prealloc_bytes", &self.journal_prealloc_bytes)
            .field("client_recall_window_secs", &self.client_recall_window_secs)
            .field("outbox_max", &self.outbox_max)
            .field("journal_observer", &self.journal_observer.is_some())
            .finish_non_exhaustive()
    }
}
