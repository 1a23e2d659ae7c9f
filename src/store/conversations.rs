//! The conversations' table: where a pair of accounts' conversation is filed (its key, made
//! from the accounts' numbers and their names' hashes), finding it, making it, walking an
//! account's list of conversations, and the slot hints that let a lookup start loading a
//! conversation's messages before it is searched. The table's slots are written only under
//! both accounts' locks (`conversation_or_new`), so a conversation enters both accounts'
//! lists in the instant it can first be found.

use parking_lot::Mutex;

use super::Store;
use crate::account::{AccountCell, AccountState, UserId};
use crate::error::{Error, Result};
use crate::roaming::{Conversation, conv_key, conversation_id};
use crate::table::Arena;

impl Store {
    /// Where the conversation of the accounts whose names hash to `x` and `y` is filed: the
    /// last word of its key in the conversations' table (see `Table::prehashed`), known as
    /// soon as the names are hashed, before the accounts' numbers are read.
    pub(super) fn conv_place(&self, x: u64, y: u64) -> u64 {
        self.inner.conversations.mix(x.min(y), x.max(y))
    }

    /// The conversations' table key of the conversation of cells `x` and `y`: their numbers
    /// (which tell it apart) and where it is filed (`conv_place`).
    pub(super) fn conv_key_of(&self, x: &AccountCell, y: &AccountCell) -> [u64; 2] {
        [
            conv_key(x.n, y.n),
            self.conv_place(x.name_hash, y.name_hash),
        ]
    }

    /// The conversation of `x` and `y`, if they have one.
    pub(super) fn conversation(&self, x: &UserId, y: &UserId) -> Option<&Mutex<Conversation>> {
        self.conversation_keyed(x, y).map(|(_, conv)| conv)
    }

    /// [`conversation`](Store::conversation) with its key in the conversations' table.
    pub(super) fn conversation_keyed(
        &self,
        x: &UserId,
        y: &UserId,
    ) -> Option<([u64; 2], &Mutex<Conversation>)> {
        let accounts = &self.inner.accounts;
        let cell = |id| accounts.cell_numbered(accounts.number(id)?);
        let key = self.conv_key_of(cell(x)?, cell(y)?);
        Some((key, self.conversation_at(&key)?))
    }

    /// The conversation filed under `key` ([`conv_key_of`](Store::conv_key_of)), if any.
    pub(super) fn conversation_at(&self, key: &[u64; 2]) -> Option<&Mutex<Conversation>> {
        let n = self.inner.conversations.get(key)?;
        self.inner.conversation_list.get(n)
    }

    /// Keeps where the messages of `c` (filed under `key`) are in its table slot, if that
    /// moved from `before` (`Conversation::hint`, taken before `c` changed): a request that
    /// finds the conversation's slot starts loading them together with the conversation
    /// (`prefetch_conversation`). Called with the conversation locked, by every change that
    /// can move them — a message in or out, a snapshot's restore. A hint the table does not
    /// take (`Table::set_hint`: its writers' lock was busy) stays stale until the messages
    /// next move; a stale hint costs a cache miss, never a wrong answer: it is only ever
    /// prefetched.
    pub(super) fn rehint(&self, key: &[u64; 2], c: &Conversation, before: u64) {
        let hint = c.hint();
        if hint != before {
            self.inner.conversations.set_hint(key, hint);
        }
    }

    /// The conversation of the accounts of cells `x` and `y`, if they have one.
    pub(super) fn conversation_of(
        &self,
        x: &AccountCell,
        y: &AccountCell,
    ) -> Option<&Mutex<Conversation>> {
        self.conversation_at(&self.conv_key_of(x, y))
    }

    /// The conversation of cells `x` and `y`: `hint`, the number a lookup of the same two
    /// cells found (`Found`), else looked up.
    pub(super) fn conversation_hinted(
        &self,
        x: &AccountCell,
        y: &AccountCell,
        hint: Option<u32>,
    ) -> Option<&Mutex<Conversation>> {
        match hint {
            Some(n) => self.inner.conversation_list.get(n),
            None => self.conversation_of(x, y),
        }
    }

    /// The number of the conversation filed under `key`, if there is one (its slot is read),
    /// and starts loading the conversation and, with `messages`, by the hint its slot keeps
    /// (`rehint`), its message or buffer: a request's search of the conversation then waits
    /// for no miss of its own, and the record of a one-message conversation is in when it is
    /// read. (`recall_many`'s waves load them a link later.)
    pub(super) fn prefetch_conversation(&self, key: &[u64; 2], messages: bool) -> Option<u32> {
        let (n, hint) = self.inner.conversations.get_hinted(key)?;
        self.inner.conversation_list.prefetch(n);
        if messages {
            crate::roaming::prefetch_hint(hint);
        }
        Some(n)
    }

    /// The conversation of two accounts, made if they have none. The caller holds both
    /// accounts' locks (`xs`, `ys`): a new conversation enters both lists of conversations in
    /// the same instant it can first be found.
    pub(super) fn conversation_or_new(
        &self,
        (x, xs): (&AccountCell, &mut AccountState),
        (y, ys): (&AccountCell, &mut AccountState),
    ) -> Result<&Mutex<Conversation>> {
        let (a, b) = conversation_id(&x.id, &y.id);
        let mut made = false;
        let key = self.conv_key_of(x, y);
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
    pub(super) fn add_conversation(
        &self,
        key: [u64; 2],
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
}
