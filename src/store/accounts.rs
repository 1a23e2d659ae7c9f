//! The store's accounts. A cell per account this store has ever had, in place in an arena
//! (`table.rs`): found by name through the store's own table (name → cell: a request's
//! account is one probe and the cell's own cache line), or by interned number through an
//! array indexed by it (4 bytes per number the process has handed out; numbers are dense, see
//! `registry.rs`). No lookup takes a lock or a reference count.
//!
//! A cell, once made, stays for the life of the store: a deleted account's cell is kept, not
//! live and empty, and an import makes it live again. So a lookup hands out a plain reference,
//! and a cell is never freed under a reader.
//!
//! Import and delete change whether an account is live under its state lock, while they record
//! their operation: memory and journal agree on the order of an import and a delete of the same
//! account.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::account::{AccountCell, UserId};
use crate::error::{Error, Result};
use crate::registry::{CHUNKS, FIRST, locate};
use crate::table::{Arena, Table, name_key};

pub(crate) struct Accounts {
    /// Name → cell number.
    by_name: Table<4>,
    /// Interned number → cell number + 1 (0: none), in chunks that never move.
    by_num: [OnceLock<Box<[AtomicU32]>>; CHUNKS],
    cells: Arena<AccountCell>,
    len: AtomicUsize,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            by_name: Table::default(),
            by_num: std::array::from_fn(|_| OnceLock::new()),
            cells: Arena::default(),
            len: AtomicUsize::new(0),
        }
    }
}

impl Accounts {
    /// The cell of `id`, made (not live) if this store never had it.
    pub fn cell(&self, id: &UserId) -> Result<&AccountCell> {
        if let Some(cell) = self.any(id) {
            return Ok(cell);
        }
        let key = name_key(id).expect("a UserId is a valid name");
        let name_hash = self.by_name.hash_of(&key);
        let n = self.by_name.get_or_try_insert(&key, || {
            // Cells are pushed only here, under the name table's writer lock: the next number
            // is the arena's length.
            let next = self.cells.len() as u32;
            let n = self
                .cells
                .push(AccountCell::dormant(id.clone(), next, name_hash))
                .map_err(|_| {
                    Error::Internal(format!(
                        "this store holds {} accounts, the most it can",
                        Arena::<AccountCell>::CAPACITY
                    ))
                })?;
            let (k, i) = locate(id.num());
            let chunk = self.by_num[k].get_or_init(|| {
                (0..1usize << (k as u32 + FIRST))
                    .map(|_| AtomicU32::new(0))
                    .collect()
            });
            chunk[i].store(n + 1, Ordering::Release);
            debug_assert_eq!(n, next);
            Ok::<_, Error>(n)
        })?;
        Ok(self.cells.get(n).expect("a cell is numbered once stored"))
    }

    /// The number of `id`'s cell, live or not: one load from the array by interned number.
    pub fn number(&self, id: &UserId) -> Option<u32> {
        let (k, i) = locate(id.num());
        self.by_num[k].get()?[i]
            .load(Ordering::Acquire)
            .checked_sub(1)
    }

    /// The cell of `id`, live or not.
    pub fn any(&self, id: &UserId) -> Option<&AccountCell> {
        self.cells.get(self.number(id)?)
    }

    /// The account `id`, if it exists (is live).
    pub fn get(&self, id: &UserId) -> Option<&AccountCell> {
        self.get_numbered(id).map(|(_, c)| c)
    }

    /// [`get`](Accounts::get) with the cell's number, known before the cell is loaded.
    pub fn get_numbered(&self, id: &UserId) -> Option<(u32, &AccountCell)> {
        let n = self.number(id)?;
        Some((n, self.cells.get(n).filter(|c| c.is_live())?))
    }

    /// The account named `name`, if it exists (is live), with its cell's number, read from the
    /// name's slot before the cell is loaded.
    pub fn by_name_numbered(&self, name: &str) -> Option<(u32, &AccountCell)> {
        let n = self.by_name.get(&name_key(name)?)?;
        // The whole cell, not just the line `is_live` reads: the operation goes on to lock it
        // and reach its inbox, lists and counters, each further line another miss otherwise
        // (sends 5-8% faster at 1M in three paired runs; recalls the same).
        self.cells.prefetch(n);
        Some((n, self.cells.get(n).filter(|c| c.is_live())?))
    }

    /// The table key of `name` and its hash, for `prefetch_named` and `named_number_prefetch`
    /// (`None` for what cannot be a UserID).
    pub fn name_lookup(&self, name: &str) -> Option<([u64; 4], u64)> {
        let key = name_key(name)?;
        Some((key, self.by_name.hash_of(&key)))
    }

    /// Starts loading the slot of a name in the table of names (a hint).
    pub fn prefetch_named(&self, &(_, hash): &([u64; 4], u64)) {
        self.by_name.prefetch_hashed(hash);
    }

    /// The number of the cell of a name, read from the name's slot only (the cell, live or
    /// not, is not read), and starts loading the whole cell (a hint for a lookup soon after).
    pub fn named_number_prefetch(&self, (key, hash): &([u64; 4], u64)) -> Option<u32> {
        let n = self.by_name.get_hashed(key, *hash)?;
        self.cells.prefetch(n);
        Some(n)
    }

    /// The cell numbered `n`, live or not.
    pub fn cell_numbered(&self, n: u32) -> Option<&AccountCell> {
        self.cells.get(n)
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

    /// Every live account, in the order this store first had them.
    pub fn cells(&self) -> Vec<&AccountCell> {
        self.cells.iter().filter(|c| c.is_live()).collect()
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
            let cell = t.cell(id).unwrap();
            cell.state.lock().alive = true;
            t.set_live(cell, true);
        }
        assert_eq!(t.len(), 300);
        assert!(ids.iter().all(|id| t.get(id).is_some_and(|c| c.id == *id)));
        assert!(ids.iter().all(|id| {
            t.by_name_numbered(id.as_str())
                .is_some_and(|(n, c)| c.id == *id && c.n == n)
        }));
        assert!(t.by_name_numbered("acct-table-none").is_none());
        for _ in 0..2 {
            let cell = t.cell(&ids[7]).unwrap();
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
        t.set_live(t.cell(high).unwrap(), true);
        assert!(locate(high.num()).0 > 0, "a chunk above the first");
        assert_eq!(t.cells().len(), 1);
    }
}
