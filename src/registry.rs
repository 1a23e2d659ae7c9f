//! Account names, interned: every account name the process has seen gets a dense `u32` the
//! first time, kept for good (a deleted account's messages still name it; imported again it
//! gets the same number). A [`UserId`](crate::UserId) *is* that number: 4 bytes instead of a
//! 16-byte shared string, compared and hashed as an integer, cloned without touching memory
//! shared with other threads.
//!
//! The table is process-wide (several stores in one process share it) and only grows: a name
//! costs ~70 bytes once, for the life of the process. Only names that become accounts, or that
//! a journal or snapshot names, are interned; looking up an unknown name ([`Registry::find`])
//! interns nothing, so requests naming accounts that do not exist cannot grow it. Numbers live
//! only in memory: everything on disk names accounts, and numbers are handed out again, in
//! whatever order, when a process opens a store.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::table::{Table, name_key};

/// The first chunk holds 2^FIRST names; chunk k holds 2^(FIRST + k).
pub(crate) const FIRST: u32 = 6;
pub(crate) const CHUNKS: usize = (33 - FIRST) as usize;

pub(crate) struct Registry {
    /// Name → number, read without a lock (`table.rs`).
    numbers: Table<4>,
    next: AtomicU32,
    /// Number → name, in chunks that are never moved (lock-free reads).
    names: [OnceLock<Box<[OnceLock<&'static str>]>>; CHUNKS],
}

/// (chunk, index in chunk) of number `n`.
pub(crate) fn locate(n: u32) -> (usize, usize) {
    let x = u64::from(n) + (1 << FIRST);
    let k = 63 - x.leading_zeros() - FIRST;
    (k as usize, (x - (1 << (k + FIRST))) as usize)
}

/// The process's registry.
pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::new)
}

impl Registry {
    fn new() -> Self {
        Registry {
            numbers: Table::default(),
            next: AtomicU32::new(0),
            names: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The number of `name` (a valid UserID, at most 32 bytes), given now if it has none.
    pub fn number(&self, name: &str) -> u32 {
        let key = name_key(name).expect("a UserID is at most 32 bytes, without NUL");
        // The table's writer lock is held while the name is recorded: a number is visible
        // only once its name is.
        self.numbers.get_or_insert_with(&key, || {
            let stored: &'static str = Box::leak(name.into());
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            assert!(
                n < u32::MAX - 1,
                "more than 2^32 - 2 distinct account names"
            );
            let (k, i) = locate(n);
            let chunk = self.names[k].get_or_init(|| {
                (0..1usize << (k as u32 + FIRST))
                    .map(|_| OnceLock::new())
                    .collect()
            });
            chunk[i].set(stored).expect("a fresh number");
            n
        })
    }

    /// The number of `name`, if it has one.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.numbers.get(&name_key(name)?)
    }

    /// The name of number `n` (numbers are only handed out with their names).
    pub fn name(&self, n: u32) -> &'static str {
        let (k, i) = locate(n);
        self.names[k]
            .get()
            .and_then(|c| c[i].get())
            .expect("an account number is given with its name")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_dense_stable_and_name_their_accounts() {
        let r = Registry::new();
        let names: Vec<String> = (0..5000).map(|i| format!("u{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(r.number(n), i as u32);
        }
        for (i, n) in names.iter().enumerate() {
            assert_eq!(r.number(n), i as u32, "stable");
            assert_eq!(r.name(i as u32), n);
            assert_eq!(r.find(n), Some(i as u32));
        }
        assert_eq!(r.find("nobody"), None);
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(63), (0, 63));
        assert_eq!(locate(64), (1, 0));
        assert_eq!(locate(u32::MAX).0, CHUNKS - 1);
    }
}
