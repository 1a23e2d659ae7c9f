//! Accounts: the validated `UserId`, and each account's state (inbox, devices, its unread total
//! and its list of conversations) behind one lock, with the crate's lock order.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, MutexGuard};

use crate::device::{DeviceId, DeviceSlot};
use crate::error::Error;
use crate::hash::HashMap;
use crate::inbox::{Entry, Inbox};
use crate::registry::registry;

/// The longest UserID, in bytes of UTF-8.
pub const MAX_USER_ID_LEN: usize = 32;

/// A validated account name: 1 to 32 bytes of UTF-8 without control characters.
///
/// Interned: a `UserId` is a number standing for its name (see `registry.rs`), so it is 4
/// bytes, cheap to clone, compared for equality and hashed as an integer. It dereferences to
/// its name, and orders by it.
///
/// ```
/// use imstore::UserId;
/// assert!(UserId::new("vinson").is_ok());
/// assert_eq!(UserId::new("").unwrap_err().code(), 70402);
/// assert_eq!(UserId::new("tab\there").unwrap_err().code(), 70402);
/// assert_eq!(&*UserId::new("vinson").unwrap(), "vinson");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserId(u32);

impl UserId {
    /// Validates `s` as a UserID.
    pub fn new(s: &str) -> Result<UserId, Error> {
        check_user_id(s)?;
        Ok(UserId(registry().number(s)))
    }

    /// The UserId of `s` if the process has interned that name already (an account, or a name
    /// some message refers to); interns nothing.
    pub(crate) fn find(s: &str) -> Option<UserId> {
        registry().find(s).map(UserId)
    }

    /// The account name.
    pub fn as_str(&self) -> &'static str {
        registry().name(self.0)
    }

    /// The interned number: an order for locks and conversation keys that costs no string
    /// comparison (it is not the order of names).
    pub(crate) fn num(&self) -> u32 {
        self.0
    }
}

/// Checks the UserID rules without allocating.
pub(crate) fn check_user_id(s: &str) -> Result<(), Error> {
    let reason = if s.is_empty() {
        "it is empty"
    } else if s.len() > MAX_USER_ID_LEN {
        "it is longer than 32 bytes"
    } else if s.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidUserId {
        user: s.to_owned(),
        reason,
    })
}

impl Deref for UserId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialOrd for UserId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for UserId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if self.0 == other.0 {
            return std::cmp::Ordering::Equal;
        }
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        UserId::new(&s).map_err(serde::de::Error::custom)
    }
}

/// The end of an account's list of conversations (`AccountState::conversations`).
pub(crate) const NO_CONVERSATION: u32 = u32::MAX;

/// One account's mutable state. Everything here changes under `AccountCell::state`.
pub(crate) struct AccountState {
    /// False once deleted: an operation that looked the account up before the delete sees this
    /// after taking the lock and fails as if the account never existed.
    pub alive: bool,
    pub inbox: Inbox,
    pub devices: HashMap<DeviceId, DeviceSlot>,
    /// Unread messages over all conversations (a callback's UnreadMsgNum); per peer, the
    /// count is kept in the conversation (`Conversation::unread`).
    pub unread_total: u32,
    /// The store's number of the newest conversation this account has had
    /// (`Store::conversation_list`; [`NO_CONVERSATION`] when none): the head of a list linked
    /// through the conversations themselves (`Conversation::next`), newest first. Kept across a
    /// delete and re-import, as the conversations are: a delete resets its unread counts there,
    /// `get_c2c_unread_msg_num` reads them. (A list in the conversations costs nothing to grow;
    /// a `Vec` per account was reallocated as it grew — a cold allocation and copy on about
    /// one send in three at 1M messages — and held ~270 bytes per account at 4M.)
    pub conversations: u32,
    /// The journal ticket of the last operation that changed this account's inbox, devices,
    /// unread counts, or a message in its inbox: readers show what they read here only once
    /// the journal is durable up to it (R6).
    pub ticket: u64,
}

/// An account and its lock.
///
/// Lock order (the whole crate): a subscription's buffer → account locks, two at once in
/// ascending interned-number order (`UserId::num`, as `lock_pair` does — not the names'
/// order, which `UserId`'s `Ord` follows) → the conversation lock → the outbox (taken before
/// the journal by an operation that queues a callback: `Store::record_queueing`) → a
/// message's state lock → a device signal → the journal. The lookup tables' writer locks (`table.rs`) are leaves:
/// a conversation is made while its accounts are locked.
/// No lock is held while a hook runs or while waiting for the disk.
pub(crate) struct AccountCell {
    pub id: UserId,
    /// The cell's number in its store (`Accounts`): conversations are keyed by the two cells'
    /// numbers, which a lookup by name or by UserId learns before the cell itself is loaded.
    pub n: u32,
    /// The hash its name is filed under in its store's table of names; the conversations'
    /// table files each conversation under a mix of its two accounts' (`Store::conv_key_of`).
    pub name_hash: u64,
    pub state: Mutex<AccountState>,
    /// `state.alive`, readable without the lock: lookups skip accounts that are not live.
    /// Changed only under the state lock (`Accounts::set_live`); a reader that finds it set
    /// still checks `alive` once it holds the lock.
    live: AtomicBool,
}

impl AccountCell {
    /// A cell for an account that does not exist (yet): not live, nothing in it.
    pub fn dormant(id: UserId, n: u32, name_hash: u64) -> Self {
        AccountCell {
            id,
            n,
            name_hash,
            state: Mutex::new(AccountState::empty()),
            live: AtomicBool::new(false),
        }
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Sets the live flag; returns the previous value (`Accounts::set_live` counts).
    pub(crate) fn set_live(&self, live: bool) -> bool {
        self.live.swap(live, Ordering::AcqRel)
    }
}

impl AccountState {
    /// The state of an account that does not exist: not alive, nothing in it.
    pub fn empty() -> Self {
        AccountState {
            alive: false,
            inbox: Inbox::default(),
            devices: HashMap::default(),
            unread_total: 0,
            conversations: NO_CONVERSATION,
            ticket: 0,
        }
    }

    /// Empties the state (an import or delete), keeping the list of conversations.
    pub fn reset(&mut self) {
        let conversations = self.conversations;
        *self = AccountState::empty();
        self.conversations = conversations;
    }

    /// Appends to the inbox and wakes the connected devices, which read it once it is durable.
    /// `online_only`: only devices connected now receive it (MsgLifeTime 0).
    pub fn deliver(&mut self, entry: Entry, expires_at: u64, now: u64, online_only: bool) {
        self.inbox.append(entry, expires_at, now, online_only);
        for live in self.devices.values().filter_map(|d| d.live.as_ref()) {
            live.signal.notify();
        }
    }
}

/// Locks two different accounts in the crate's lock order; returns the guards as (x, y).
pub(crate) fn lock_pair<'a>(
    x: &'a AccountCell,
    y: &'a AccountCell,
) -> (MutexGuard<'a, AccountState>, MutexGuard<'a, AccountState>) {
    debug_assert!(x.id != y.id);
    if x.id.num() < y.id.num() {
        let gx = x.state.lock();
        (gx, y.state.lock())
    } else {
        let gy = y.state.lock();
        (x.state.lock(), gy)
    }
}
