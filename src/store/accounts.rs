//! The store's accounts, indexed by their interned number: account numbers are dense (see
//! `registry.rs`), so a lookup by `UserId` is two array indexes — no hashing, no lock, no
//! reference count: the account's own cache line is the only one touched that is not shared
//! by many accounts. (A lookup by name first finds the number in the registry, which hashes.)
//!
//! An account's cell, once made, stays for the life of the store: a deleted account's cell is
//! kept, not live and empty, and an import makes it live again. So a lookup hands out a plain
//! reference, and a cell is never freed under a reader. Chunks of slots are allocated as
//! numbers reach them and never move; a slot costs 8 bytes per number the process has handed
//! out, a cell ~200 bytes per account this store has ever had.
//!
//! Import and delete change whether an account is live under its state lock, while they record
//! their operation: memory and journal agree on the order of an import and a delete of the same
//! account.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::account::{AccountCell, UserId};
use crate::registry::{CHUNKS, FIRST, locate};

type Slot = OnceLock<Box<AccountCell>>;

pub(crate) struct Accounts {
    chunks: [OnceLock<Box<[Slot]>>; CHUNKS],
    len: AtomicUsize,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            chunks: std::array::from_fn(|_| OnceLock::new()),
            len: AtomicUsize::new(0),
        }
    }
}

impl Accounts {
    /// The cell of `id`, made (not live) if this store never had it.
    pub fn cell(&self, id: &UserId) -> &AccountCell {
        let (k, i) = locate(id.num());
        let chunk = self.chunks[k].get_or_init(|| {
            (0..1usize << (k as u32 + FIRST))
                .map(|_| OnceLock::new())
                .collect()
        });
        chunk[i].get_or_init(|| Box::new(AccountCell::dormant(id.clone())))
    }

    /// The account `id`, if it exists (is live).
    pub fn get(&self, id: &UserId) -> Option<&AccountCell> {
        let (k, i) = locate(id.num());
        let cell = self.chunks[k].get()?[i].get()?;
        cell.is_live().then_some(&**cell)
    }

    pub fn contains(&self, id: &UserId) -> bool {
        self.get(id).is_some()
    }

    /// Makes `cell` live or not; the caller holds its state lock and has set `alive` to match.
    pub fn set_live(&self, cell: &AccountCell, live: bool) {
        if cell.set_live(live) != live {
            if live {
                self.len.fetch_add(1, Ordering::Relaxed);
            } else {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Every live account, in number order.
    pub fn cells(&self) -> Vec<&AccountCell> {
        let mut out = Vec::with_capacity(self.len());
        // Every allocated chunk: numbers are handed out process-wide, so this store's
        // accounts may sit in chunks above ones it never touched.
        for chunk in self.chunks.iter().filter_map(OnceLock::get) {
            out.extend(
                chunk
                    .iter()
                    .filter_map(OnceLock::get)
                    .filter(|c| c.is_live())
                    .map(|c| &**c),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_hold_insert_and_remove() {
        let t = Accounts::default();
        let ids: Vec<UserId> = (0..300)
            .map(|i| UserId::new(&format!("acct-table-{i}")).unwrap())
            .collect();
        for id in &ids {
            assert!(t.get(id).is_none());
            let cell = t.cell(id);
            cell.state.lock().alive = true;
            t.set_live(cell, true);
        }
        assert_eq!(t.len(), 300);
        assert!(ids.iter().all(|id| t.get(id).is_some_and(|c| c.id == *id)));
        for _ in 0..2 {
            let cell = t.cell(&ids[7]);
            cell.state.lock().alive = false;
            t.set_live(cell, false);
        }
        assert_eq!(t.len(), 299);
        assert!(!t.contains(&ids[7]));
        assert_eq!(t.cells().len(), 299);
    }

    #[test]
    fn cells_are_found_above_chunks_this_store_never_touched() {
        // Numbers are process-wide: another store (or names that never became accounts
        // here) may own every number of the low chunks.
        let t = Accounts::default();
        let ids: Vec<UserId> = (0..200)
            .map(|i| UserId::new(&format!("acct-table-high-{i}")).unwrap())
            .collect();
        let high = ids.iter().max_by_key(|id| id.num()).unwrap();
        t.set_live(t.cell(high), true);
        assert!(locate(high.num()).0 > 0, "a chunk above the first");
        assert_eq!(t.cells().len(), 1);
    }
}
