//! Durability on the caller's side: recording an operation, waiting until the journal holds
//! it (R6: writers wait before acknowledging, readers before showing what they read), and
//! the deferred forms — [`Deferred`] results acknowledged by `wait`, and
//! [`Store::deferring`] with its [`CommitTicket`] for servers that await durability without a
//! thread per request. After-hooks run only once their operation is durable.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Applied, Found, Mode, Store};
use crate::codec;
use crate::error::Result;
use crate::journal::Journal;
use crate::message::{MessageView, RecallNotice, SendReceipt};
use crate::op::Op;

/// What must happen once an operation is durable, besides answering: the after-hooks.
pub(super) enum After {
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
    pub(super) store: &'s Store,
    pub(super) ticket: u64,
    pub(super) value: T,
    /// The stored message, for the after-send hook (not for a duplicate or dropped send).
    pub(super) sent: Option<MessageView>,
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

impl Store {
    /// Records `op` in the journal before it is applied (live path only); returns its ticket,
    /// which the operation stores on everything it changes (0: nothing to wait for).
    pub(super) fn record(&self, op: &Op, mode: Mode) -> Result<u64> {
        match (self.journal(), mode) {
            (Some(journal), Mode::Live) => {
                journal.append(|buf| codec::encode_op(op, buf), op.erases())
            }
            (_, Mode::Replay) => {
                if op.erases() {
                    self.inner.erased_in_replay.store(true, Ordering::Relaxed);
                }
                Ok(0)
            }
            (None, Mode::Live) => Ok(0),
        }
    }

    /// The operation recorded as `ticket` turned out to erase a body (a send that trimmed its
    /// conversation to retention): a snapshot must take it off the disk.
    pub(super) fn note_erased(&self, ticket: u64, mode: Mode) {
        match (self.journal(), mode) {
            (Some(journal), Mode::Live) => journal.note_erased(ticket),
            (_, Mode::Replay) => self.inner.erased_in_replay.store(true, Ordering::Relaxed),
            (None, Mode::Live) => {}
        }
    }

    /// Applies a live operation and returns once it is durable. Even a refusal waits for
    /// what was appended before it, since it may rest on state not yet on disk (20023 on a
    /// recall still in flight, say).
    pub(super) fn run(&self, op: &Op) -> Result<Applied> {
        self.run_found(op, None)
    }

    /// [`run`](Store::run) with the parties' cells as the request found them ([`Found`]).
    pub(super) fn run_found(&self, op: &Op, found: Found) -> Result<Applied> {
        let (applied, ticket) = self.run_deferred(op, found);
        self.durable(ticket)?;
        applied
    }

    /// Applies a live operation and returns the journal position that must be durable before
    /// it is acknowledged.
    /// `found`: the parties' cells, if the caller has them ([`Found`]).
    pub(super) fn run_deferred(&self, op: &Op, found: Found) -> (Result<Applied>, u64) {
        let applied = self.apply_found(op, Mode::Live, found);
        (applied, self.journal().map_or(0, Journal::appended))
    }

    /// Applies a live operation whose caller waits for durability later. A refusal still waits
    /// now, for what was appended before it. `found`: the parties' cells, if the caller has
    /// them ([`Found`]).
    pub(super) fn deferred(&self, op: &Op, found: Found) -> Result<Applied> {
        let (applied, ticket) = self.run_deferred(op, found);
        if applied.is_err() {
            self.durable(ticket)?;
        }
        applied
    }

    /// Inside [`Store::deferring`] on this store: notes that `ticket` must be durable before
    /// the caller answers, and returns `true`.
    pub(super) fn defer(&self, ticket: u64) -> bool {
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
    pub(super) fn durable(&self, ticket: u64) -> Result<()> {
        if ticket == 0 || self.defer(ticket) {
            return Ok(());
        }
        match self.journal() {
            Some(journal) => journal.commit_to(ticket),
            None => Ok(()),
        }
    }

    /// Whether this thread is inside [`Store::deferring`] on this store.
    pub(super) fn in_deferring(&self) -> bool {
        let me = Arc::as_ptr(&self.inner) as usize;
        DEFERRING.with_borrow(|d| d.as_ref().is_some_and(|d| d.store == me))
    }

    /// Runs an after-hook now, or inside [`Store::deferring`] leaves it to `commit`.
    pub(super) fn after(&self, after: After) {
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

    pub(super) fn run_hook(&self, after: After) {
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

#[cfg(all(test, feature = "server"))]
mod tests {
    use crate::{Config, MsgElement, SendRequest, Store};

    /// After the store closed in place (the server's shutdown, other handles still open), an
    /// async wait for durability is written on the waiter's side: the committer thread that
    /// would have woken it has stopped. Before, it waited for good (the server gave up after
    /// 30 s and took the store for stalled).
    #[test]
    fn an_async_commit_after_a_close_in_place_completes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Config::default()).unwrap();
        store.import_accounts(&["a", "b"]).unwrap();
        store.close_in_place().unwrap();
        let (sent, ticket) = store.deferring(|| {
            store.send(SendRequest::new(
                "a",
                "b",
                1,
                vec![MsgElement::text("late")],
            ))
        });
        sent.unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let done = rt.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                store.commit_async(ticket),
            )
            .await
        });
        assert!(matches!(done, Ok(Ok(()))), "{done:?}");
        drop(store);
        let store = Store::open(dir.path(), Config::default()).unwrap();
        assert_eq!(store.unread("b", "a").unwrap(), 1);
    }
}
