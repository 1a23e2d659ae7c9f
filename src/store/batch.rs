//! Recalls in batches ([`Store::recall_many`]): the same recalls, one after another, with
//! their cache misses overlapped.
//!
//! A recall of a random message in a large store is a chain of dependent cache misses (the
//! names' slots and the conversation's, then the cells and the conversation, then its
//! buffer, the message record — one at a time, the conversation's slot hint loads the buffer,
//! or a one-message conversation's record, with the conversation: three misses, or two),
//! each a trip to memory (~180-400 ns here): one at a time, memory latency and not work
//! bounds it. A batch walks a wave of up to
//! [`WAVE`] recalls through that chain one link at a time — every recall's first link, then
//! every recall's second — so that a wave's misses of one link are in flight together (the
//! technique of RocksDB's `MultiGet` and of group prefetching in hash joins). Each link
//! reads what the link before it loaded and starts the next load; it changes nothing. Then
//! each recall runs as [`Store::recall`] runs it, through the one `apply`, in the batch's
//! order, and finds its data in the cache — starting from the accounts and key the links
//! resolved, when both accounts are live and the key is canonical; any other item goes the
//! way `recall` goes and answers its error, in its precedence.
//!
//! Waiting for durability (R6): a wave's recalls are applied and journaled one by one, then
//! the wave waits once for the journal to be durable up to its last recall (one commit for
//! all that took effect; a refused recall commits at once, as `recall`'s refusal does, since
//! what it read may be an earlier recall of the same wave), then acknowledges each recall in
//! order, running its after-recall hook then. So, as with 16 `recall_deferred`s in flight:
//! no recall of a wave is acknowledged — nor shown to a reader — before it is durable; a
//! recall's hook runs after the later recalls of its wave have been applied; and if the
//! journal fails during a wave, every recall the wave applied answers the failure (91000),
//! where one at a time the later ones would have been refused before taking effect.

use super::{Deferred, Store};
use crate::account::AccountCell;
use crate::error::Result;
use crate::key::MsgKey;
use crate::message::RecallNotice;
use crate::roaming::{Conversation, conv_key};

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
struct Link<'s> {
    from: Option<&'s AccountCell>,
    to: Option<&'s AccountCell>,
    conv: Option<u32>,
    key: Option<MsgKey>,
    /// The message (if the conversation has it) is loading already: a one-message
    /// conversation holds its pointer in place.
    loaded: bool,
}

impl Store {
    /// Recalls each of `items` as [`recall`](Store::recall) would, in order, by the same
    /// administrator, and answers each as `recall` would have (an item's error does not stop the
    /// others). Faster than calling `recall` for each when the store is larger than the CPU's
    /// caches. Acknowledged a wave of [`RECALL_WAVE`](crate::RECALL_WAVE) at a time: see the
    /// module's documentation for what that changes about hooks and journal failures.
    pub fn recall_many(
        &self,
        operator: &str,
        items: &[RecallItem<'_>],
    ) -> Vec<Result<RecallNotice>> {
        let mut out = Vec::with_capacity(items.len());
        let by = self.admin(operator).ok();
        let mut pending: Vec<Result<Deferred<'_, RecallNotice>>> = Vec::with_capacity(WAVE);
        let mut links = [Link::default(); WAVE];
        for wave in items.chunks(WAVE) {
            let links = &mut links[..wave.len()];
            self.prefetch_recalls(wave, links);
            pending.extend(wave.iter().zip(links.iter()).map(|(it, l)| {
                match (&by, l.from, l.to, l.key) {
                    // What `recall_deferred` would find, found by the links already: an
                    // administrator, both accounts live, a canonical key.
                    (Some(by), Some(f), Some(t), Some(key)) if f.is_live() && t.is_live() => self
                        .recall_op(
                            f.id.clone(),
                            t.id.clone(),
                            key,
                            by.clone(),
                            Some((f.n, t.n, l.conv)),
                        ),
                    // Anything else answers the error `recall` answers, in its precedence.
                    _ => self.recall_deferred(operator, it.from, it.to, it.key),
                }
            }));
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

    /// Walks `wave` through the chain of loads a recall makes, one link for all at a time,
    /// and notes in `links` what it found. Reads only; what it cannot find it leaves out.
    fn prefetch_recalls<'s>(&'s self, wave: &[RecallItem<'_>], links: &mut [Link<'s>]) {
        self.prefetch_parties(wave, links);
        for (it, l) in wave.iter().zip(links.iter_mut()) {
            l.key = MsgKey::parse(it.key).ok();
        }
        // 3. Where the message is looked for (a one-message conversation holds its pointer),
        //    and where each inbox's next entry goes.
        self.prefetch_in_conversations(links, |c, l| {
            l.loaded = l.key.is_none_or(|key| c.prefetch_find(key));
        });
        self.prefetch_inboxes(links);
        // 4. The message record, found in a buffer (the conversations of more than one): by
        //    the buffer alone, never reading a record (see `Conversation::prefetch_found`).
        self.prefetch_in_conversations(links, |c, l| {
            if let (Some(key), false) = (l.key, l.loaded) {
                c.prefetch_found(key);
            }
        });
    }

    /// Links 1 and 2 of a wave: the names' slots and the conversation's (filed by the names'
    /// hashes, `Store::conv_place`); then the cells' numbers and the conversation's, and the
    /// cells and the conversation themselves. Resets `links` and notes the cells and the
    /// conversation found.
    fn prefetch_parties<'s>(&'s self, wave: &[RecallItem<'_>], links: &mut [Link<'s>]) {
        let accounts = &self.inner.accounts;
        // 1. The names' slots and the conversation's. (Each name's key and hash are made
        //    once, for two lookups.)
        let mut names = [(None, None, 0); WAVE];
        for (it, n) in wave.iter().zip(&mut names) {
            let (from, to) = (accounts.name_lookup(it.from), accounts.name_lookup(it.to));
            for name in [&from, &to].into_iter().flatten() {
                accounts.prefetch_named(name);
            }
            if let (Some((_, x)), Some((_, y))) = (&from, &to) {
                n.2 = self.conv_place(*x, *y);
                self.inner.conversations.prefetch_hashed(n.2);
            }
            (n.0, n.1) = (from, to);
        }
        // 2. The cells' numbers and the conversation's (from the slots), then the cells and
        //    the conversation. (`apply` reads the cells by the numbers found here, not by
        //    UserId again: nothing more to load for it.)
        for (l, n) in links.iter_mut().zip(&names) {
            // Nothing of a previous wave's request in this place stays.
            *l = Link::default();
            let number = |name: &Option<_>| {
                name.as_ref()
                    .and_then(|k| accounts.named_number_prefetch(k))
            };
            if let (Some(f), Some(t)) = (number(&n.0), number(&n.1)) {
                // Not its messages by the slot's hint, as a recall alone does: link 3 loads
                // them for the whole wave, whose link 2 already has its cells and
                // conversations in flight (with the hint in link 2 too, whole runs of 1M
                // rotated six times measured `recall_many` at a median of 862 k/s, without
                // it 994 k/s).
                l.conv = self.prefetch_conversation(&[conv_key(f, t), n.2], false);
                (l.from, l.to) = (accounts.cell_numbered(f), accounts.cell_numbered(t));
            }
        }
    }

    /// A link inside each request's conversation, under its lock (`at`). Each lock is taken
    /// alone and let go at once: never two at a time, so no lock order.
    fn prefetch_in_conversations<'s>(
        &'s self,
        links: &mut [Link<'s>],
        mut at: impl FnMut(&Conversation, &mut Link<'s>),
    ) {
        for l in links.iter_mut() {
            if let Some(conv) = l.conv.and_then(|c| self.inner.conversation_list.get(c)) {
                at(&conv.lock(), l);
            }
        }
    }

    /// Where each inbox's next entry goes (under each account's lock, taken alone).
    fn prefetch_inboxes(&self, links: &[Link<'_>]) {
        for l in links {
            for cell in [l.from, l.to].into_iter().flatten() {
                cell.state.lock().inbox.prefetch_tail();
            }
        }
    }
}
