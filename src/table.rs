//! Two append-only containers read on every operation without a lock, a reference count or
//! any other atomic read-modify-write: `Table`, a hash table from a fixed-size key to a `u32`
//! (and, in a prehashed table, a hint word beside it: `Table::set_hint`), and `Arena`
//! (`table/arena.rs`), values numbered 0, 1, 2, ... that never move.
//!
//! Why: a recall looks up two account names, two accounts and a conversation. Behind a
//! `DashMap` and `Arc`s each lookup took a shard lock and a reference count — about twenty
//! locked instructions per recall, each one a full barrier that waits for the cache misses
//! before it, so the misses of the five lookups were paid one after another. Here a lookup is
//! plain loads (`Acquire` loads compile to plain moves on x86-64), and independent lookups'
//! misses overlap.
//!
//! Nothing is ever removed (account names and conversations are kept for the life of the
//! store; see `registry.rs`). Writers take one mutex. A table grows by doubling into a new
//! level, copying the old level's keys a few per later insert (no insert waits for a whole
//! copy); meanwhile lookups probe both. When the copy ends the old level keeps its address
//! range, since a reader may still be probing it, but its pages are given back to the system
//! (`Level::retire`: they read as empty slots). A lookup that misses while a level was
//! retired or a growth began looks again, so a key stored before a lookup began is always
//! found.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

use parking_lot::Mutex;

use crate::hash::RandomState;
use crate::pages::Mapping;

mod arena;
mod names;
mod prefetch;

pub(crate) use arena::Arena;
pub(crate) use names::name_key;
pub(crate) use prefetch::{prefetch, prefetch_addr, prefetch_range};

#[cfg(test)]
thread_local! {
    static ONE_PLACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Tests: runs `f` with every [`prehashed`](Table::prehashed) table it makes filing all its
/// keys in one place — every key's last word the same — so that only the other words tell
/// keys apart. The table keeps what it was made with, whichever thread uses it later.
#[cfg(test)]
pub(crate) fn with_one_place<R>(f: impl FnOnce() -> R) -> R {
    ONE_PLACE.set(true);
    let r = f();
    ONE_PLACE.set(false);
    r
}

/// log2 of the first level's slots.
const FIRST_LEVEL: u32 = 6;
/// Levels 64, 128, ... 2^38 slots: more than any `u32` count of keys needs.
const LEVELS: usize = 33;

/// One slot: `head` is 0 while empty, else (the key's hash tag << 32) | (value + 1); the key
/// words are written before `head` is published (Release) and read after it (Acquire). In a
/// [`prehashed`](Table::prehashed) table the tag is the hash's low 32 bits — enough to file
/// the key again when the table grows (levels of up to 2^32 slots), since its last word, the
/// hash, is not kept: that word holds the key's hint instead, which
/// [`Table::set_hint`] rewrites later (Relaxed: a hint read torn or stale is only ever
/// prefetched).
struct Slot<const W: usize> {
    head: AtomicU64,
    key: [AtomicU64; W],
}

/// A level: `len` slots in a private anonymous mapping of its own ([`Mapping`]; huge pages
/// once it is 2 MiB or more). The system hands it out zero-filled — every slot empty — and
/// `retire` gives its pages back the same way; neither depends on what allocator the embedder
/// installed.
struct Level<const W: usize> {
    ptr: std::ptr::NonNull<Slot<W>>,
    len: usize,
    /// The memory `ptr` points into, unmapped when the level is dropped.
    _map: Mapping,
}

// SAFETY: a level is a slice of atomics in memory it owns, shared as such (`slots`).
unsafe impl<const W: usize> Send for Level<W> {}
// SAFETY: as above; every access to the memory goes through the atomics.
unsafe impl<const W: usize> Sync for Level<W> {}

impl<const W: usize> Level<W> {
    fn bytes(len: usize) -> usize {
        len * std::mem::size_of::<Slot<W>>()
    }

    fn new(log2: u32) -> Self {
        let len = 1usize << log2;
        let map = Mapping::new(Self::bytes(len));
        if Self::bytes(len) >= crate::pages::HUGE {
            // The copy and the inserts after a growth write slots all over the new level, so
            // every page of it is written soon: faulted in by another thread meanwhile, the
            // zeroing of its huge pages is not done by the writers that first touch them.
            // (This level is retired only once the next growth's copy ends, after the inserts
            // that double its keys: its population has long ended by then. Were the thread
            // held up that long, it would make the retired pages resident again, wasting
            // memory, never changing a slot.)
            crate::pages::populate_soon(&map);
        }
        Level {
            ptr: std::ptr::NonNull::new(map.as_ptr().cast()).expect("a mapping is non-null"),
            len,
            _map: map,
        }
    }

    fn slots(&self) -> &[Slot<W>] {
        // SAFETY: `ptr` maps `len` slots, page-aligned (more than a slot's alignment), for the
        // level's whole life (`_map`, unmapped when the level is dropped); all-zero bytes are a valid slot (its
        // atomics at 0), which is what the system fills the mapping with.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn mask(&self) -> usize {
        self.slots().len() - 1
    }

    /// Gives the memory of a level that is no longer consulted back to the system, keeping
    /// its address range: it reads as zeros (empty slots) from then on. A reader still probing
    /// it may see a key, an empty slot where the key was, or (a slot across a page boundary,
    /// zeroed between two loads) a head whose key words read zero; `Table::get_as_of` trusts
    /// neither a miss nor a hit once `Table::epoch` has moved, and looks again. (Before, every
    /// old level stayed resident for the life of the table: as much again as the current
    /// level — 67 MB, ~17 B a message, for the conversations of a 4M-message store.)
    /// Elsewhere than on Linux the level simply stays.
    fn retire(&self) {
        #[cfg(target_os = "linux")]
        // SAFETY: the level's own private anonymous mapping (`new`), which stays mapped until
        // the level is dropped. Every access to it is an atomic load or store of a u64, and
        // MADV_DONTNEED on such memory makes it read as zeros — empty slots, a value the
        // readers already handle. Nobody writes to a retired level. A refusal would leave the
        // level resident and readable, as it was: nothing to undo. What this leans on beyond
        // the language's memory model: a reader that reads a zero put there by the kernel
        // also sees the epoch `copy` moved (Release) before this call. The kernel orders the
        // two — the call clears the page tables and shoots down every CPU's TLB entry for
        // them before it returns, so a reader's later access faults in a fresh zero page
        // after that — which holds on Linux for x86-64 and arm64; neither Miri nor loom can
        // check it.
        unsafe {
            libc::madvise(
                self.ptr.as_ptr().cast(),
                Self::bytes(self.len),
                libc::MADV_DONTNEED,
            );
        }
    }

    /// The value of `key`, or the index of the empty slot that ends its probe (`form`: how
    /// the table files and compares its keys).
    fn probe(&self, key: &[u64; W], hash: u64, form: Form) -> Result<u32, usize> {
        self.find(key, hash, form)
            .map(|(_, head)| (head as u32).wrapping_sub(1))
    }

    /// The index of `key`'s slot and the head read there (the value is read from that one
    /// load, which the key's words were checked after), or the index of the empty slot that
    /// ends its probe.
    fn find(&self, key: &[u64; W], hash: u64, form: Form) -> Result<(usize, u64), usize> {
        let tag = form.tag(hash);
        let words = form.words::<W>();
        let mask = self.mask();
        let mut i = hash as usize & mask;
        // Bounded by the level's size; at load ¾ or less an empty slot comes long before.
        for _ in 0..=mask {
            let slot = &self.slots()[i];
            let head = slot.head.load(Ordering::Acquire);
            if head == 0 {
                return Err(i);
            }
            if head >> 32 == tag
                && slot.key[..words]
                    .iter()
                    .zip(key)
                    .all(|(a, b)| a.load(Ordering::Relaxed) == *b)
            {
                return Ok((i, head));
            }
            i = (i + 1) & mask;
        }
        unreachable!("a table level is never full")
    }

    /// Writes `words` → `value` into the empty slot `i`, filed under `tag` (writers hold the
    /// table's lock): the key's words as the slot keeps them (a prehashed key's hint last).
    fn publish(&self, i: usize, words: &[u64; W], tag: u64, value: u32) {
        let slot = &self.slots()[i];
        for (a, b) in slot.key.iter().zip(words) {
            a.store(*b, Ordering::Relaxed);
        }
        slot.head
            .store(tag << 32 | u64::from(value + 1), Ordering::Release);
    }
}

/// How a table files and tells apart its keys.
#[derive(Clone, Copy)]
enum Form {
    /// Hashed by the table; every word is the key; the tag is the hash's high half.
    Hashed,
    /// [`Table::prehashed`]: the last word is the hash, and only the others tell keys apart
    /// (the slot keeps a hint in its place); the tag is the hash's low half, from which a
    /// growth files the key again (`Table::copy`).
    Prehashed,
}

impl Form {
    fn tag(self, hash: u64) -> u64 {
        match self {
            Form::Hashed => hash >> 32,
            Form::Prehashed => hash & u64::from(u32::MAX),
        }
    }

    /// How many of a key's `W` words are compared.
    fn words<const W: usize>(self) -> usize {
        match self {
            Form::Hashed => W,
            Form::Prehashed => W - 1,
        }
    }
}

/// Slots of the old level copied into the current one by each insert while a growth is under
/// way: at most 24 keys (the old level is at most ¾ full), a few microseconds. The copy of a
/// level of S/2 slots takes S/64 inserts, long before the current level of S slots (3/8 full
/// when the copy began) fills to ¾ and grows in turn; until it ends, the old level stays
/// resident (for the conversations of a 4M-message store, 33 MB for 65k new conversations).
const COPY_PER_INSERT: usize = 32;

/// What writers change, under the writers' lock.
struct Writer {
    /// Keys stored, in every level.
    len: usize,
    /// Keys in the current level.
    in_current: usize,
    /// The next slot of the old level to copy, while a copy is under way.
    copied: usize,
}

/// An append-only hash table from `[u64; W]` keys to `u32` values below `u32::MAX`.
///
/// Growth is incremental: a full level's keys are not copied in one go (that blocked every
/// writer for 208 ms at 1.57M keys, and the pause grows with the table) but
/// `COPY_PER_INSERT` slots per later insert. Meanwhile new keys go to the new, current level,
/// and lookups probe it and then the old one (an insert looks in both first, so a key is
/// never stored twice in a level; a copied key is in both until the old one goes). When the copy
/// ends, the old level is retired (`Level::retire`) and `epoch` moves: a lookup that missed
/// while anything moved looks again.
///
/// `PRE`: the table is [`prehashed`](Table::prehashed) — a compile-time choice, so that the
/// probes of the tables that are not (the names') are the code they were before hints.
pub(crate) struct Table<const W: usize, const PRE: bool = false> {
    hasher: RandomState,
    /// Tests: [`mix`](Table::mix) files every key in one place ([`with_one_place`]).
    #[cfg(test)]
    one_place: bool,
    levels: [OnceLock<Level<W>>; LEVELS],
    /// The level new keys go to.
    current: AtomicUsize,
    /// The level being copied into the current one, + 1 (0: none). No key is written to
    /// it; a prehashed table's hints are (`set_hint`, under the writers' lock).
    old: AtomicUsize,
    /// Moves (Release) each time a level stops being consulted, before its pages go.
    epoch: AtomicUsize,
    /// On a cache line of its own: every lookup reads `current`, `old` and `epoch`, and a
    /// writer taking the lock (an insert; in a prehashed table, a hint) would otherwise take
    /// their line from every other core's cache.
    writer: Padded<Mutex<Writer>>,
}

/// A value on cache lines of its own (128 bytes: x86-64 prefetches lines in pairs).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<const W: usize, const PRE: bool> Default for Table<W, PRE> {
    fn default() -> Self {
        let levels: [OnceLock<Level<W>>; LEVELS] = std::array::from_fn(|_| OnceLock::new());
        levels[0].get_or_init(|| Level::new(FIRST_LEVEL));
        Table {
            hasher: RandomState::default(),
            #[cfg(test)]
            one_place: PRE && ONE_PLACE.get(),
            levels,
            current: AtomicUsize::new(0),
            old: AtomicUsize::new(0),
            epoch: AtomicUsize::new(0),
            writer: Padded(Mutex::new(Writer {
                len: 0,
                in_current: 0,
                copied: 0,
            })),
        }
    }
}

impl<const W: usize> Table<W, true> {
    /// A table whose keys carry their own hash as their last word, which the caller makes
    /// with [`mix`](Table::mix) from what identifies the key before the key itself is known.
    /// The conversations' table is one: a conversation is filed under a mix of its two
    /// accounts' name hashes, so a request can start loading its slot together with the
    /// names' own, one round trip to memory before the accounts' numbers (the rest of its
    /// key) are read from them. Two keys with the same last word are still told apart by the
    /// others — and only by them: the last word says where a key is filed, not what it is, so
    /// a caller must give one key one last word (a conversation's two numbers name its two
    /// accounts, whose names' hashes make its last word). The slot keeps, in that word's
    /// place, a hint ([`set_hint`](Table::set_hint)); its tag, the hash's low 32 bits, is
    /// all a growth needs to file the key again.
    pub fn prehashed() -> Self {
        Table::default()
    }

    /// `a` and `b` mixed by this table's own randomly seeded hasher, for the last word of a
    /// [`prehashed`](Table::prehashed) table's key: a caller's inputs are themselves hashes,
    /// but a client chooses what they hash (account names), so they are mixed under a seed
    /// the client cannot know.
    pub fn mix(&self, a: u64, b: u64) -> u64 {
        #[cfg(test)]
        if self.one_place {
            return 0x9E37_79B9_7F4A_7C15;
        }
        let mut h = self.hasher.build_hasher();
        h.write_u64(a);
        h.write_u64(b);
        h.finish()
    }
}

impl<const W: usize, const PRE: bool> Table<W, PRE> {
    /// The key's words fed one by one: no length prefix, no byte loop (`hash_one` of an
    /// array hashes it as a byte slice, several times the instructions).
    fn hash(&self, key: &[u64; W]) -> u64 {
        if PRE {
            return key[W - 1];
        }
        let mut h = self.hasher.build_hasher();
        for w in key {
            h.write_u64(*w);
        }
        h.finish()
    }

    fn form(&self) -> Form {
        if PRE { Form::Prehashed } else { Form::Hashed }
    }

    fn at(&self, level: usize) -> &Level<W> {
        self.levels[level]
            .get()
            .expect("a level once current exists")
    }

    /// The value of `key`, if stored.
    pub fn get(&self, key: &[u64; W]) -> Option<u32> {
        self.get_hashed(key, self.hash(key))
    }

    /// [`get`](Table::get) of a key whose [`hash_of`](Table::hash_of) the caller has.
    pub fn get_hashed(&self, key: &[u64; W], hash: u64) -> Option<u32> {
        let epoch = self.epoch.load(Ordering::Acquire);
        self.get_as_of(key, hash, epoch, self.current.load(Ordering::Acquire))
            .map(|(v, _)| v)
    }

    /// [`get`](Table::get) of a [`prehashed`](Table::prehashed) table's key, with the hint
    /// last set for it ([`set_hint`](Table::set_hint); 0 if none): read from the same slot,
    /// so it comes with the value, one round trip to memory before whatever the value leads
    /// to. A hint may be stale.
    pub fn get_hinted(&self, key: &[u64; W]) -> Option<(u32, u64)> {
        const { assert!(PRE, "only a prehashed table keeps hints") };
        let epoch = self.epoch.load(Ordering::Acquire);
        self.get_as_of(key, key[W - 1], epoch, self.current.load(Ordering::Acquire))
    }

    /// Keeps `hint` in the slot of `key`, a stored key of a [`prehashed`](Table::prehashed)
    /// table, for [`get_hinted`](Table::get_hinted): one word the caller wants to have as soon
    /// as the key is found (an address to start loading, say). Taken only if the writers'
    /// lock is free at once — the hint is then written where the key is, in either level, and
    /// no copy moves it meanwhile — else left as it was: a writer never waits for a hint, and
    /// one never lands in a retired level (`Level::retire`), whose pages it would make
    /// resident again.
    pub fn set_hint(&self, key: &[u64; W], hint: u64) {
        const { assert!(PRE, "only a prehashed table keeps hints") };
        let Some(_writer) = self.writer.try_lock() else {
            return;
        };
        let old = self.old.load(Ordering::Relaxed).checked_sub(1);
        let levels = std::iter::once(self.current.load(Ordering::Relaxed)).chain(old);
        for level in levels.map(|l| self.at(l)) {
            if let Ok((i, _)) = level.find(key, key[W - 1], Form::Prehashed) {
                level.slots()[i].key[W - 1].store(hint, Ordering::Relaxed);
                return;
            }
        }
    }

    /// The hash this table files `key` under (for `get_hashed` and `prefetch_hashed`, when a
    /// caller looks the same key up more than once).
    pub fn hash_of(&self, key: &[u64; W]) -> u64 {
        self.hash(key)
    }

    /// [`get`](Table::get) by a reader that found `epoch` and `current` when it began.
    fn get_as_of(
        &self,
        key: &[u64; W],
        hash: u64,
        mut epoch: usize,
        mut current: usize,
    ) -> Option<(u32, u64)> {
        // Bounded: each retry follows a growth or a retirement, one each per doubling.
        loop {
            let found = self.lookup(key, hash, current);
            // What was read stands only if nothing moved meanwhile: a level probed may have
            // been retired after its keys were copied — a miss where the key was, or a slot
            // half read as zeros (`Level::retire`). The fence orders the probe's loads before
            // the check, as a sequence lock's reader does. The loads themselves are Acquire
            // too: on a retry they are where the next probe starts, and that probe's loads
            // must come after them, as the first probe's come after `get_hashed`'s (Relaxed
            // would let a weakly ordered CPU read the new level before the epoch that says
            // it is current, and miss a key copied there). Free on x86-64.
            fence(Ordering::Acquire);
            let (e, c) = (
                self.epoch.load(Ordering::Acquire),
                self.current.load(Ordering::Acquire),
            );
            match found {
                Some(v) if e == epoch => return Some(v),
                None if (e, c) == (epoch, current) => return None,
                _ => (epoch, current) = (e, c),
            }
        }
    }

    /// Probes level `current`, then the level being copied into it, if any: the value and,
    /// in a prehashed table, the hint.
    fn lookup(&self, key: &[u64; W], hash: u64, current: usize) -> Option<(u32, u64)> {
        let form = self.form();
        let found = |level: &Level<W>| {
            let (i, head) = level.find(key, hash, form).ok()?;
            let value = (head as u32).wrapping_sub(1);
            let hint = match form {
                Form::Hashed => 0,
                Form::Prehashed => level.slots()[i].key[W - 1].load(Ordering::Relaxed),
            };
            Some((value, hint))
        };
        found(self.at(current)).or_else(|| match self.old.load(Ordering::Acquire) {
            0 => None,
            old => found(self.at(old - 1)),
        })
    }

    /// Starts loading the slot where a lookup of a key of this hash begins
    /// ([`hash_of`](Table::hash_of); a hint: see `prefetch`).
    pub fn prefetch_hashed(&self, hash: u64) {
        let level = self.at(self.current.load(Ordering::Acquire));
        prefetch(&level.slots()[hash as usize & level.mask()]);
    }

    /// The value of `key`; if absent, `make()` is called (under the writers' lock) for the
    /// value to store, and its error returned as is.
    pub fn get_or_try_insert<E>(
        &self,
        key: &[u64; W],
        make: impl FnOnce() -> Result<u32, E>,
    ) -> Result<u32, E> {
        if let Some(v) = self.get(key) {
            return Ok(v);
        }
        self.get_or_try_insert_locked(key, make)
    }

    /// [`get_or_try_insert`](Table::get_or_try_insert) without the first look, which takes no
    /// lock: for a caller that has just missed `key` itself. (The look under the writers' lock
    /// still finds a key stored since.)
    pub fn get_or_try_insert_locked<E>(
        &self,
        key: &[u64; W],
        make: impl FnOnce() -> Result<u32, E>,
    ) -> Result<u32, E> {
        let hash = self.hash(key);
        let mut w = self.writer.lock();
        // The copy's share and any growth come first, so that nothing writes to the current
        // level between the probe below and the publish: the empty slot where that probe ends
        // is where the key goes. (A key found after all leaves them done early: no harm.)
        self.copy(&mut w, COPY_PER_INSERT);
        // At most ¾ full: linear probes stay short (2.5 slots on average for a key found,
        // within one or two cache lines).
        if (w.in_current + 1) * 4 > self.at(self.current.load(Ordering::Relaxed)).slots().len() * 3
        {
            self.grow(&mut w);
        }
        let form = self.form();
        if let Some(old) = self.old.load(Ordering::Relaxed).checked_sub(1)
            && let Ok(v) = self.at(old).probe(key, hash, form)
        {
            return Ok(v);
        }
        let level = self.at(self.current.load(Ordering::Relaxed));
        let slot = match level.probe(key, hash, form) {
            Ok(v) => return Ok(v),
            Err(slot) => slot,
        };
        let value = make()?;
        assert!(value < u32::MAX, "table values stay below u32::MAX");
        let mut words = *key;
        if let Form::Prehashed = form {
            // The hash is not kept (the tag holds what a growth needs): no hint yet.
            words[W - 1] = 0;
        }
        level.publish(slot, &words, form.tag(hash), value);
        w.len += 1;
        w.in_current += 1;
        Ok(value)
    }

    /// Copies up to `limit` more slots of the old level into the current one, if a copy is
    /// under way, and retires the old level when its last slot is copied (writers' lock held).
    fn copy(&self, w: &mut Writer, limit: usize) {
        let old = self.old.load(Ordering::Relaxed);
        if old == 0 {
            return;
        }
        let (from, to) = (
            self.at(old - 1),
            self.at(self.current.load(Ordering::Relaxed)),
        );
        let end = w.copied.saturating_add(limit).min(from.slots().len());
        for slot in &from.slots()[w.copied..end] {
            let head = slot.head.load(Ordering::Relaxed);
            if head == 0 {
                continue;
            }
            // As the slot keeps them: a prehashed key's hint is copied with it.
            let words: [u64; W] = std::array::from_fn(|i| slot.key[i].load(Ordering::Relaxed));
            let form = self.form();
            let hash = match form {
                Form::Hashed => self.hash(&words),
                // The tag is the hash's low half: all a level of up to 2^32 slots files by.
                Form::Prehashed => head >> 32,
            };
            // Never there already: an insert looks in both levels first.
            let i = to
                .find(&words, hash, form)
                .expect_err("not yet in the current level");
            to.publish(i, &words, form.tag(hash), (head as u32) - 1);
            w.in_current += 1;
        }
        w.copied = end;
        if end == from.slots().len() {
            // The epoch moves before the old level stops being consulted: a reader that
            // sees no old level (Acquire) then sees the new epoch, and retries a miss.
            self.epoch.fetch_add(1, Ordering::Release);
            self.old.store(0, Ordering::Release);
            from.retire();
        }
    }

    /// Makes a level twice the size current; the one before becomes the old level, copied a
    /// few slots per insert from now on (writers' lock held).
    fn grow(&self, w: &mut Writer) {
        // A copy still under way is finished first (its pace makes that not happen).
        self.copy(w, usize::MAX);
        let current = self.current.load(Ordering::Relaxed);
        let log2 = self.at(current).slots().len().trailing_zeros() + 1;
        // A prehashed key is filed again by its tag, the hash's low 32 bits.
        assert!(
            !PRE || log2 <= 32,
            "a prehashed table holds at most 3 × 2^30 keys"
        );
        self.levels[current + 1].get_or_init(|| Level::new(log2));
        (w.copied, w.in_current) = (0, 0);
        // The old level is published before the new one becomes current: a reader that sees
        // the new level sees the old one too, until the copy ends.
        self.old.store(current + 1, Ordering::Release);
        self.current.store(current + 1, Ordering::Release);
    }

    /// [`get_or_try_insert`](Table::get_or_try_insert) with a value that is always made.
    pub fn get_or_insert_with(&self, key: &[u64; W], make: impl FnOnce() -> u32) -> u32 {
        match self.get_or_try_insert(key, || Ok::<_, std::convert::Infallible>(make())) {
            Ok(v) => v,
        }
    }

    pub fn len(&self) -> usize {
        self.writer.lock().len
    }
}

#[cfg(test)]
mod tests;
