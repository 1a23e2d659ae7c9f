//! What a reader asks of a conversation: a page of its history, its newest message, and the
//! unread counts (marking read is an operation, applied as every other). Each read keeps the
//! tickets of what it read and returns only once they are durable (R6).

use super::{Role, Store};
use crate::account::{AccountState, UserId};
use crate::error::{Error, Result};
use crate::op::Op;
use crate::roaming::{HistoryItem, HistoryPage, HistoryQuery};

impl Store {
    /// One page of a conversation's history from `operator`'s side (`admin_getroammsg`).
    pub fn history(&self, q: &HistoryQuery) -> Result<HistoryPage> {
        let ((n_op, op), (n_peer, peer), conv) = self.pair(&q.operator, &q.peer)?;
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
            return self.accounts_durable().map(|()| empty);
        }
        let Some(conv) = self.conversation_hinted(op, peer, conv) else {
            return self.accounts_durable().map(|()| empty);
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
        self.durable(ticket.max(self.membership()))?;
        Ok(page)
    }

    /// The newest message of the conversation in `account`'s view, recalled or not.
    pub fn last_message(&self, account: &str, peer: &str) -> Result<Option<HistoryItem>> {
        let ((_, a), (_, p), conv) = self.pair(account, peer)?;
        let Some(conv) = self.conversation_hinted(a, p, conv) else {
            return self.accounts_durable().map(|()| None);
        };
        let (last, ticket) = {
            let c = conv.lock();
            (
                c.last_message(c.side(&a.id), self.retention_cutoff()),
                c.ticket,
            )
        };
        self.durable(ticket.max(self.membership()))?;
        Ok(last)
    }

    /// Waits until every account import and delete so far is durable (inside
    /// [`Store::deferring`], leaves that to the caller's ticket). For any answer that rests on
    /// which accounts exist (R6: an import or delete not yet durable could be undone by a
    /// crash): a read that finds two live accounts with no conversation (a conversation's own
    /// ticket covers only the imports before it), a refusal resting on an account found, and a
    /// before-send decision asked outside the process (the server's webhook).
    pub(crate) fn accounts_durable(&self) -> Result<()> {
        self.durable(self.membership())
    }

    /// The ticket of the last import or delete of any account. A page rests on both
    /// accounts existing, and a conversation's own ticket covers only the imports before it:
    /// an account deleted and imported again since (not yet durable) could be deleted again
    /// by a crash, after a reader was shown the conversation with it (R6).
    fn membership(&self) -> u64 {
        self.inner
            .membership
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn retention_cutoff(&self) -> u64 {
        self.now().saturating_sub(self.inner.config.retention_secs)
    }

    /// Marks everything `peer` has sent to `reader` as read (`admin_set_msg_read`).
    pub fn mark_read(&self, reader: &str, peer: &str) -> Result<()> {
        self.set_read(reader, peer, None)
    }

    /// Marks what `peer` sent to `reader` at or before `time` as read (`admin_set_msg_read`
    /// with MsgReadTime). The read mark is a place in arrival order: it stops before the
    /// first message sent after `time`, so a message sent at or before `time` that arrived
    /// after such a one stays unread. `reader`'s unread count with `peer` is counted again
    /// from the messages in roaming.
    pub fn mark_read_until(&self, reader: &str, peer: &str, time: u32) -> Result<()> {
        self.set_read(reader, peer, Some(time))
    }

    /// A deleted peer is accepted when it left a conversation behind: the reader's unread
    /// count with it stays (a delete changes only the deleted account's side) and must be
    /// clearable (`apply_set_read` refuses one with no conversation).
    fn set_read(&self, reader: &str, peer: &str, until: Option<u32>) -> Result<()> {
        let reader = self.cell_as(reader, Role::Acting)?.id.clone();
        let peer = match self.cell_as(peer, Role::Other) {
            Ok(cell) => cell.id.clone(),
            Err(e) => UserId::find(peer)
                .filter(|p| self.inner.accounts.any(p).is_some())
                .ok_or(e)?,
        };
        self.run(&Op::SetRead {
            reader,
            peer,
            at: self.now(),
            origin: self.origin(),
            until,
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
    pub(super) fn unread_peers(
        &self,
        account: &UserId,
        state: &AccountState,
    ) -> (Vec<(UserId, u32)>, u64) {
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
}
