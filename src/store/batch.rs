//! Recalls in batches ([`Store::recall_many`]): the same recalls, one after another, with
//! their cache misses overlapped.
//!
//! A recall of a random message in a large store is a chain of about five dependent cache
//! misses (the names' slots, then the cells and the conversation's slot, then the
//! conversation, its buffer, the message record), each a trip to memory (~180 ns here): one
//! at a time, memory latency and not work bounds it. A batch walks a wave of up to
//! [`WAVE`] recalls through that chain one link at a time — every recall's first link, then
//! every recall's second — so that a wave's misses of one link are in flight together (the
//! technique of RocksDB's `MultiGet` and of group prefetching in hash joins). Each link is
//! only a hint: it reads what the link before it loaded and starts the next load; it changes
//! nothing and decides nothing. Then each recall runs exactly as [`Store::recall`] runs it,
//! through the one `apply`, in the batch's order, and finds its data in the cache.
//!
//! Waiting for durability (R6): a wave's recalls are journaled one by one, the wave waits once
//! for the journal to be durable up to its last recall (one commit, one fsync, under any sync
//! policy), then acknowledges each recall in order (its after-recall hook runs then). No recall
//! of a wave is acknowledged — nor shown to a reader — before it is durable, as with
//! [`Store::recall_deferred`].

use super::{Deferred, Store};
use crate::error::Result;
use crate::key::MsgKey;
use crate::message::RecallNotice;
use crate::roaming::conv_key;

/// How many recalls a batch walks through the chain of loads together: enough for their
/// misses to overlap (a core keeps 10 to 16 misses in flight), few enough that what the first
/// links load is still in the cache when the last link needs it.
pub const WAVE: usize = 16;

/// One recall of [`Store::recall_many`]: what [`Store::recall`] takes after the operator.
#[derive(Clone, Copy, Debug)]
pub struct RecallItem<'a> {
    /// From_Account of the message.
    pub from: &'a str,
    /// To_Account.
    pub to: &'a str,
    /// MsgKey.
    pub key: &'a str,
}

/// What the links of the chain learnt about one recall of a wave.
#[derive(Clone, Copy, Default)]
struct Link {
    from: Option<u32>,
    to: Option<u32>,
    conv: Option<u32>,
    key: Option<MsgKey>,
}

impl Store {
    /// Recalls each of `items` as [`recall`](Store::recall) would, in order, by the same
    /// administrator, and answers each as `recall` would have (an item's error does not stop the
    /// others). Faster than calling `recall` for each when the store is larger than the CPU's
    /// caches: see the module's documentation.
    pub fn recall_many(
        &self,
        operator: &str,
        items: &[RecallItem<'_>],
    ) -> Vec<Result<RecallNotice>> {
        let mut out = Vec::with_capacity(items.len());
        let mut pending: Vec<Result<Deferred<'_, RecallNotice>>> = Vec::with_capacity(WAVE);
        for wave in items.chunks(WAVE) {
            self.prefetch_recalls(wave);
            pending.extend(
                wave.iter()
                    .map(|it| self.recall_deferred(operator, it.from, it.to, it.key)),
            );
            // One commit for the wave: durable up to its last recall, each wait below finds
            // its own recall durable (under `Every` too, which would otherwise write and
            // fsync once per recall).
            if let Some(last) = pending.iter().flatten().map(|d| d.ticket).max() {
                // An error here is each wait's own to answer.
                let _ = self.durable(last);
            }
            out.extend(pending.drain(..).map(|d| d.and_then(|d| d.wait())));
        }
        out
    }

    /// Walks `wave` through the chain of loads a recall makes, one link for all at a time.
    /// Reads only; what it cannot find it skips (the recall itself says what is wrong).
    fn prefetch_recalls(&self, wave: &[RecallItem<'_>]) {
        let accounts = &self.inner.accounts;
        let mut links = [Link::default(); WAVE];
        // 1. The names' slots.
        for it in wave {
            accounts.prefetch_name(it.from);
            accounts.prefetch_name(it.to);
        }
        // 2. The cells' numbers (from the slots), then the cells and the conversation's slot.
        for (it, l) in wave.iter().zip(&mut links) {
            l.from = accounts.name_number_prefetch(it.from);
            l.to = accounts.name_number_prefetch(it.to);
            l.key = MsgKey::parse(it.key).ok();
            if let (Some(f), Some(t)) = (l.from, l.to) {
                self.inner.conversations.prefetch(&conv_key(f, t));
            }
        }
        // 3. The conversation (its number, from its slot), and the entries `apply` reads by
        //    the cells' UserIds.
        for l in &mut links[..wave.len()] {
            let (Some(f), Some(t)) = (l.from, l.to) else {
                continue;
            };
            l.conv = self.inner.conversations.get(&conv_key(f, t));
            if let Some(n) = l.conv {
                self.inner.conversation_list.prefetch(n);
            }
            for n in [f, t] {
                if let Some(cell) = accounts.cell_numbered(n) {
                    accounts.prefetch_number(&cell.id);
                }
            }
        }
        // 4. Where the message is looked for, and where each inbox's next entry goes. Each
        //    lock is taken alone and let go at once (never two at a time: no lock order).
        for l in &links[..wave.len()] {
            if let (Some(n), Some(key)) = (l.conv, l.key)
                && let Some(conv) = self.inner.conversation_list.get(n)
            {
                conv.lock().prefetch_find(key);
            }
            for n in [l.from, l.to].into_iter().flatten() {
                if let Some(cell) = accounts.cell_numbered(n) {
                    cell.state.lock().inbox.prefetch_tail();
                }
            }
        }
        // 5. The message record.
        for l in &links[..wave.len()] {
            if let (Some(n), Some(key)) = (l.conv, l.key)
                && let Some(conv) = self.inner.conversation_list.get(n)
                && let Some(from) = l.from.and_then(|f| accounts.cell_numbered(f))
            {
                conv.lock().prefetch_found(&from.id, key);
            }
        }
    }
}
