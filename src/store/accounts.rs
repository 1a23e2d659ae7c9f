//! The store's accounts, indexed by their interned number: account numbers are dense (see
//! `registry.rs`), so a lookup by `UserId` is two array indexes and a read lock — no hashing,
//! no probe of a shared map, one cache line per account touched. (A lookup by name first
//! finds the number in the registry, which does hash.) Chunks are allocated as numbers reach
//! them and never move; a slot costs 16 bytes per number the process has handed out.
//!
//! A slot's write lock is what a map entry's lock was: import and delete hold it while they
//! record their operation, so memory and journal agree on the order of an import and a delete
//! of the same account.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{RwLock, RwLockWriteGuard};

use crate::account::{AccountCell, UserId};
use crate::registry::{CHUNKS, FIRST, locate};

type Slot = RwLock<Option<Arc<AccountCell>>>;

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

/// A slot held for writing: an import or a delete in progress.
pub(crate) struct SlotGuard<'a> {
    slot: RwLockWriteGuard<'a, Option<Arc<AccountCell>>>,
    len: &'a AtomicUsize,
}

impl SlotGuard<'_> {
    pub fn get(&self) -> Option<&Arc<AccountCell>> {
        self.slot.as_ref()
    }

    pub fn insert(&mut self, cell: Arc<AccountCell>) {
        if self.slot.replace(cell).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn remove(&mut self) {
        if self.slot.take().is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Accounts {
    fn slot(&self, id: &UserId) -> Option<&Slot> {
        let (k, i) = locate(id.num());
        self.chunks[k].get().map(|c| &c[i])
    }

    /// The account `id`, if it exists.
    pub fn get(&self, id: &UserId) -> Option<Arc<AccountCell>> {
        self.slot(id)?.read().clone()
    }

    pub fn contains(&self, id: &UserId) -> bool {
        self.slot(id).is_some_and(|s| s.read().is_some())
    }

    /// The slot of `id`, locked for writing (import, delete, restore).
    pub fn entry(&self, id: &UserId) -> SlotGuard<'_> {
        let (k, i) = locate(id.num());
        let chunk = self.chunks[k].get_or_init(|| {
            (0..1usize << (k as u32 + FIRST))
                .map(|_| RwLock::new(None))
                .collect()
        });
        SlotGuard {
            slot: chunk[i].write(),
            len: &self.len,
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Every account, in number order.
    pub fn cells(&self) -> Vec<Arc<AccountCell>> {
        let mut out = Vec::with_capacity(self.len());
        // Every allocated chunk: numbers are handed out process-wide, so this store's
        // accounts may sit in chunks above ones it never touched.
        for chunk in self.chunks.iter().filter_map(OnceLock::get) {
            out.extend(chunk.iter().filter_map(|s| s.read().clone()));
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
            t.entry(id).insert(Arc::new(AccountCell::new(id.clone())));
        }
        assert_eq!(t.len(), 300);
        assert!(ids.iter().all(|id| t.get(id).is_some_and(|c| c.id == *id)));
        t.entry(&ids[7]).remove();
        t.entry(&ids[7]).remove();
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
        t.entry(high)
            .insert(Arc::new(AccountCell::new(high.clone())));
        assert!(locate(high.num()).0 > 0, "a chunk above the first");
        assert_eq!(t.cells().len(), 1);
    }
}
