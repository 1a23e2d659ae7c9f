//! imstore against SQLite: the same sends and recalls on both engines, from one thread (but
//! SQLite's side of pairing 7, from 32), the system allocator (glibc), on the workload of
//! `benches/workload.rs` — ACCOUNTS accounts (100,000), each talking with 20 fixed peers,
//! ~32-character text messages, recalls of random distinct messages. It prints a markdown
//! table of acknowledged sends/s and recalls/s per engine and the ratio imstore / SQLite, for
//! seven pairings:
//!
//! 1. in memory: `Store::in_memory` against SQLite `:memory:` (journal_mode=OFF — faster than
//!    MEMORY here —, synchronous=OFF);
//! 2. durable, an fsync per operation: `SyncPolicy::Every` against SQLite WAL with
//!    synchronous=FULL;
//! 3. `SyncPolicy::Group` against SQLite WAL with synchronous=NORMAL, the pairing issue 9
//!    asks for. It is not like for like: with one thread no other writer shares imstore's
//!    fsync, so each operation still waits for one, while NORMAL does not fsync at commit at
//!    all (only at checkpoints);
//! 4. so also `SyncPolicy::Group` with 32 operations in flight from the one thread
//!    (`send_deferred` / `recall_deferred`, the oldest acknowledged once 32 are pending): how a
//!    server with many connections uses group commit — every acknowledgement still waits for
//!    the fsync that covers it, while SQLite's NORMAL acknowledges before any fsync;
//! 5. and `SyncPolicy::None` against the same SQLite WAL with synchronous=NORMAL: written
//!    to the OS at each commit, no fsync per operation — both survive the process being
//!    killed, neither promises the last moments across a power loss;
//! 6. in memory again with recalls in batches of 64 on both sides: `Store::recall_many`
//!    against 64 recalls per SQLite transaction (sends stay one at a time on both);
//! 7. the same durability on both sides with many clients: `SyncPolicy::Group` with 32
//!    operations in flight against SQLite WAL with synchronous=FULL driven by 32 threads
//!    (sharing its one connection behind a mutex: WAL admits one writer at a time and fsyncs
//!    each commit under its write lock, and a mutex hands the connection on at once where
//!    SQLite's busy handler would sleep). Each engine acknowledges an operation only after an
//!    fsync that covers it; imstore's concurrent operations share fsyncs, SQLite's cannot.
//!
//! The SQLite side is the schema of issue 9: a `messages` table keyed by (from, to, MsgKey), an
//! `inbox` table keyed by (account, seq) — an inbox per account — with the next sequence
//! number in `accounts`, and unread counters per (account, peer), as imstore keeps them. A send
//! is one transaction (insert the message — a repeat of the same key stores nothing, as in
//! imstore —, append an entry to the recipient's inbox, bump the recipient's unread count for
//! the sender): the work of imstore's send with the default SyncOtherMachine, which does not
//! write the sender's inbox. A recall is one transaction (check the message exists and is not
//! recalled, erase its body and flag it 8, append a notice to both parties' inboxes, decrement
//! the unread count if it was unread). Bodies are stored as their text, as imstore stores a
//! text-only body.
//!
//! SQLite is given its best measured setup on this machine: statements prepared once
//! (`prepare_cached`, BEGIN and COMMIT too); `WITHOUT ROWID` tables (faster than rowid tables
//! with a separate primary-key index; `IMSTORE_PEERS_ROWID=1` runs those); a page cache that
//! holds the whole database; `locking_mode=EXCLUSIVE` (imstore's lock file keeps a second
//! process out too), which spares WAL its shared-memory index; a checkpoint after 64 MiB of
//! WAL, as imstore snapshots after 64 MiB of journal; and the page size that measured fastest
//! per mode: 16 KiB in memory, 4 KiB with FULL, 1 KiB with NORMAL. The in-memory page size
//! matters: a B-tree balance briefly renumbers a page to the lock-byte page (page 262,145 at 4
//! KiB), and the commit after it then scans the whole page-cache hash table, which took a
//! quarter of the run at 4 KiB pages and costs less the fewer pages there are.
//!
//! Both engines are handed account names, as imstore's API is: SQLite maps them to its integer
//! ids through an in-process `HashMap` inside the timed loop (cheaper than a SQL lookup), and
//! formats its MsgKey text there. Not modelled on the SQLite side, in its favour: an index to
//! page a conversation's history by time, zeroing erased bodies (`secure_delete`), per-device
//! caches and cursors, the journal's checksums and before-send hooks.
//!
//! It is a crate of its own (an empty `[workspace]` table, its own `target/`), the way redb
//! keeps its comparisons apart: imstore never depends on SQLite, not even as a dev-dependency,
//! and imstore's own `cargo` commands never build this.
//!
//! ```sh
//! cd benches/peers && cargo run --release
//! IMSTORE_PEERS_ACCOUNTS=10000 IMSTORE_PEERS_MESSAGES=50000 cargo run --release
//! IMSTORE_PEERS_ONLY=memory,every cargo run --release
//! ```
//!
//! Environment: `IMSTORE_PEERS_ACCOUNTS` (100000), `IMSTORE_PEERS_MESSAGES` (200000) and
//! `IMSTORE_PEERS_RECALLS` (100000) in memory, `IMSTORE_PEERS_DURABLE_MESSAGES` (20000) and
//! `IMSTORE_PEERS_DURABLE_RECALLS` (10000) on disk, `IMSTORE_PEERS_DIR` (`/tmp`: where the
//! durable runs make, and then remove, their directories; it must be a real disk, not tmpfs,
//! for the fsyncs to mean anything), `IMSTORE_PEERS_ONLY` (a comma list of `memory`,
//! `memory64`, `every`, `group`, `group32`, `group32full`, `none`); to try other SQLite setups:
//! `IMSTORE_PEERS_ROWID` (`1`: rowid tables), `IMSTORE_PEERS_SQLITE_MEMORY` (what the
//! in-memory run opens instead of `:memory:`, e.g. a file on tmpfs),
//! `IMSTORE_PEERS_SQLITE_PAGE_SIZE` (for every mode),
//! `IMSTORE_PEERS_SQLITE_CACHE_KIB` (1048576) and `IMSTORE_PEERS_SQLITE_PRAGMAS` (more, as
//! `name=value;name=value`, set after the others).

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use imstore::{
    Config, Error, HistoryQuery, ManualClock, MsgElement, MsgKey, RecallItem, SendRequest, Store,
    SyncPolicy,
};
use rusqlite::{Connection, OptionalExtension, params};

/// Every message's MsgTimeStamp.
const TIME: u32 = 1_700_000_000;
const PEERS: usize = 20;
/// Both engines' clock: just after TIME, so that retention keeps every message.
const NOW: i64 = TIME as i64 + 60;
/// How long inbox entries live: imstore's default MsgLifeTime and notice lifetime (7 days).
const LIFETIME: i64 = 604_800;
const KIND_MESSAGE: i64 = 1;
const KIND_RECALL: i64 = 2;
const FLAG_RECALLED: i64 = imstore::FLAG_RECALLED as i64;
/// How much WAL SQLite writes before a checkpoint: what imstore journals before a snapshot.
const WAL_BYTES: u64 = 64 << 20;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn env_u64(name: &str, default: u64) -> u64 {
    env(name, &default.to_string())
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

// ----- the workload (as in benches/workload.rs) -----

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Workload {
    accounts: usize,
    names: Vec<String>,
}

impl Workload {
    /// (sender, recipient) of message `i`.
    fn parties(&self, i: u64) -> (usize, usize) {
        let h = mix(i);
        let a = (h % self.accounts as u64) as usize;
        let k = ((h >> 32) % PEERS as u64) as usize + 1;
        // Fixed peers: account a talks with a+1 ... a+PEERS (and is talked to by a-1 ...).
        let b = (a + k * 7919) % self.accounts;
        if a == b {
            (a, (b + 1) % self.accounts)
        } else {
            (a, b)
        }
    }
}

/// Message `i`'s MsgKey.
fn key(i: u64) -> MsgKey {
    MsgKey::new(i as u32, msg_random(i), TIME)
}

include!("../../shared/text.rs");
include!("../../shared/name.rs");
include!("../../shared/random.rs");

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A recall to make: (sender, recipient, MsgKey).
type Pick = (String, String, String);

/// What to recall: `recalls` distinct messages of `0..messages`, scattered (a stride coprime
/// with `messages`). Made before the timing, for both engines, each with its own strings in
/// the order they are recalled — as a server has them fresh from the request it just parsed,
/// and as `benches/workload.rs` hands them: not indices into `names`, whose 100,000 strings
/// (and the vector's entries) would be cache misses of the harness's own in every recall.
fn recall_picks(w: &Workload, messages: u64, recalls: u64) -> Vec<Pick> {
    let n = messages.max(1);
    let mut stride = (2_654_435_761 % n.max(2)) | 1;
    while gcd(stride, n) != 1 {
        stride += 2;
    }
    (0..recalls.min(messages))
        .map(|j| {
            let i = (j * stride) % n;
            let (a, b) = w.parties(i);
            (w.names[a].clone(), w.names[b].clone(), key(i).to_string())
        })
        .collect()
}

/// One engine's timings.
struct Timing {
    send: Duration,
    recall: Duration,
}

// ----- imstore -----

/// Runs the sends and recalls, keeping up to `in_flight` of them unacknowledged (1: each is
/// acknowledged before the next starts; more: what a server does with many connections, which
/// is how group commit shares an fsync — from one thread, with `send_deferred` and
/// `recall_deferred`, acknowledging the oldest once `in_flight` are pending).
fn imstore_run(
    w: &Workload,
    store: &Store,
    messages: u64,
    picks: &[Pick],
    in_flight: usize,
    batch: usize,
) -> Timing {
    // Accounts, before the timing, in one journal commit.
    let (imported, ticket) = store.deferring(|| {
        w.names
            .chunks(100)
            .map(|c| store.import_accounts(c))
            .collect::<imstore::Result<Vec<_>>>()
    });
    store.commit(ticket).expect("imstore: commit the accounts");
    let failed = imported.expect("imstore: import accounts");
    assert!(failed.iter().all(Vec::is_empty), "imstore: import failed");

    let t = Instant::now();
    let mut pending_sends = std::collections::VecDeque::new();
    for i in 0..messages {
        let (a, b) = w.parties(i);
        // Written out, not read from `names` (see `recall_picks`).
        let (from, to) = (Name::of(a), Name::of(b));
        let mut req = SendRequest::new(
            from.as_str(),
            to.as_str(),
            msg_random(i),
            vec![MsgElement::text(text(i))],
        );
        req.msg_seq = Some(i as u32);
        req.msg_time = Some(TIME);
        if in_flight <= 1 {
            black_box(store.send(req).expect("imstore: send"));
        } else {
            pending_sends.push_back(store.send_deferred(req).expect("imstore: send"));
            if pending_sends.len() >= in_flight {
                let oldest = pending_sends.pop_front().expect("pending");
                black_box(oldest.wait().expect("imstore: send acknowledged"));
            }
        }
    }
    for p in pending_sends.drain(..) {
        black_box(p.wait().expect("imstore: send acknowledged"));
    }
    let send = t.elapsed();

    let t = Instant::now();
    let mut pending_recalls = std::collections::VecDeque::new();
    if batch > 1 {
        for chunk in picks.chunks(batch) {
            let items: Vec<RecallItem<'_>> = chunk
                .iter()
                .map(|(a, b, k)| RecallItem {
                    from: a,
                    to: b,
                    key: k,
                })
                .collect();
            for r in store.recall_many("administrator", &items) {
                black_box(r.expect("imstore: recall"));
            }
        }
    }
    for (a, b, k) in picks.iter().filter(|_| batch <= 1) {
        if in_flight <= 1 {
            let notice = store.recall("administrator", a, b, k);
            black_box(notice.expect("imstore: recall"));
        } else {
            let d = store.recall_deferred("administrator", a, b, k);
            pending_recalls.push_back(d.expect("imstore: recall"));
            if pending_recalls.len() >= in_flight {
                let oldest = pending_recalls.pop_front().expect("pending");
                black_box(oldest.wait().expect("imstore: recall acknowledged"));
            }
        }
    }
    for p in pending_recalls.drain(..) {
        black_box(p.wait().expect("imstore: recall acknowledged"));
    }
    let recall = t.elapsed();

    imstore_verify(w, store, messages, picks);
    Timing { send, recall }
}

/// After the run: a second recall is refused (20023), the history shows MsgFlagBits 8, and the
/// unread counts fell by one per recall (nothing was read).
fn imstore_verify(w: &Workload, store: &Store, messages: u64, picks: &[Pick]) {
    let Some((a, b, k)) = picks.first() else {
        return;
    };
    let (from, to) = (a, b);
    match store.recall("administrator", from, to, k) {
        Err(Error::AlreadyRecalled { .. }) => {}
        other => panic!("imstore: a second recall answered {other:?}"),
    }
    let page = store
        .history(&HistoryQuery::new(to, from, 20))
        .expect("imstore: history");
    let item = page
        .messages
        .iter()
        .find(|m| m.message.key.to_string() == *k);
    match item {
        Some(m) => assert_eq!(m.message.msg_flag_bits(), 8, "imstore: recalled flag"),
        None => assert!(
            !page.complete,
            "imstore: recalled message not in its history"
        ),
    }
    let unread: u64 = w
        .names
        .iter()
        .flat_map(|n| store.unread_all(n).expect("imstore: unread"))
        .map(|(_, n)| u64::from(n))
        .sum();
    assert_eq!(
        unread,
        messages - picks.len() as u64,
        "imstore: unread total"
    );
}

// ----- SQLite -----

/// How SQLite keeps its data: in memory, or a file in WAL mode with this `synchronous`.
#[derive(Clone, Copy)]
enum SqliteMode {
    Memory,
    Wal(&'static str),
}

struct Sqlite {
    conn: Connection,
    /// Account name → id.
    ids: HashMap<String, i64>,
}

/// Sets a pragma, reading back what it answers (some answer a row, some nothing).
fn pragma(conn: &Connection, name: &str, value: &str) -> String {
    let mut stmt = conn
        .prepare(&format!("PRAGMA {name} = {value}"))
        .expect("pragma");
    let mut rows = stmt.query([]).expect("pragma");
    match rows.next().expect("pragma") {
        Some(row) => match row.get_ref(0).expect("pragma") {
            rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
            v => format!("{v:?}"),
        },
        None => String::new(),
    }
}

impl Sqlite {
    fn open(path: Option<&Path>, mode: SqliteMode, rowid: bool, names: &[String]) -> Sqlite {
        let conn = match path {
            Some(p) => Connection::open(p),
            None => Connection::open(env("IMSTORE_PEERS_SQLITE_MEMORY", ":memory:")),
        }
        .expect("sqlite: open");
        let (journal, synchronous) = match mode {
            SqliteMode::Memory => ("off", "OFF"),
            SqliteMode::Wal(s) => ("wal", s),
        };
        // The page sizes measured fastest here for each mode (see the crate doc).
        let page_size: u64 = match (mode, std::env::var("IMSTORE_PEERS_SQLITE_PAGE_SIZE")) {
            (_, Ok(v)) => v.parse().expect("IMSTORE_PEERS_SQLITE_PAGE_SIZE"),
            (SqliteMode::Memory, _) => 16_384,
            (SqliteMode::Wal("FULL"), _) => 4_096,
            (SqliteMode::Wal(_), _) => 1_024,
        };
        // First, while the database is empty.
        pragma(&conn, "page_size", &page_size.to_string());
        let set: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("sqlite: page_size");
        assert_eq!(set as u64, page_size, "sqlite: page_size");
        // Before journal_mode: in exclusive mode WAL needs no shared-memory index.
        pragma(&conn, "locking_mode", "EXCLUSIVE");
        let cache = env("IMSTORE_PEERS_SQLITE_CACHE_KIB", "1048576");
        pragma(&conn, "cache_size", &format!("-{cache}"));
        pragma(&conn, "temp_store", "MEMORY");
        assert_eq!(pragma(&conn, "journal_mode", journal), journal);
        pragma(&conn, "synchronous", synchronous);
        // Checkpoint after 64 MiB of WAL: imstore snapshots after 64 MiB of journal.
        pragma(
            &conn,
            "wal_autocheckpoint",
            &(WAL_BYTES / page_size).to_string(),
        );
        for extra in env("IMSTORE_PEERS_SQLITE_PRAGMAS", "").split(';') {
            if let Some((name, value)) = extra.split_once('=') {
                pragma(&conn, name.trim(), value.trim());
            }
        }

        let without = if rowid { "" } else { " WITHOUT ROWID" };
        conn.execute_batch(&format!(
            "CREATE TABLE accounts (
                 id INTEGER PRIMARY KEY,
                 name TEXT NOT NULL UNIQUE,
                 next_seq INTEGER NOT NULL
             );
             CREATE TABLE messages (
                 from_id INTEGER NOT NULL,
                 to_id INTEGER NOT NULL,
                 msgkey TEXT NOT NULL,
                 body TEXT,
                 flag INTEGER NOT NULL,
                 read INTEGER NOT NULL,
                 PRIMARY KEY (from_id, to_id, msgkey)
             ){without};
             CREATE TABLE inbox (
                 account INTEGER NOT NULL,
                 seq INTEGER NOT NULL,
                 kind INTEGER NOT NULL,
                 from_id INTEGER NOT NULL,
                 to_id INTEGER NOT NULL,
                 msgkey TEXT NOT NULL,
                 expires_at INTEGER NOT NULL,
                 PRIMARY KEY (account, seq)
             ){without};
             CREATE TABLE unread (
                 account INTEGER NOT NULL,
                 peer INTEGER NOT NULL,
                 n INTEGER NOT NULL,
                 PRIMARY KEY (account, peer)
             ){without};"
        ))
        .expect("sqlite: schema");

        // Accounts, before the timing, in one transaction.
        let mut ids = HashMap::with_capacity(names.len());
        conn.execute_batch("BEGIN").expect("sqlite: begin");
        {
            let mut insert = conn
                .prepare("INSERT INTO accounts (id, name, next_seq) VALUES (?1, ?2, 0)")
                .expect("sqlite: prepare");
            for (id, name) in names.iter().enumerate() {
                insert
                    .execute(params![id as i64, name])
                    .expect("sqlite: account");
                ids.insert(name.clone(), id as i64);
            }
        }
        conn.execute_batch("COMMIT").expect("sqlite: commit");
        if path.is_some() {
            // The timing starts with an empty WAL, as imstore's starts with its accounts synced.
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .expect("sqlite: checkpoint");
        }
        Sqlite { conn, ids }
    }

    fn id(&self, name: &str) -> rusqlite::Result<i64> {
        self.ids
            .get(name)
            .copied()
            .ok_or(rusqlite::Error::QueryReturnedNoRows)
    }

    /// Runs `f` in one transaction: committed if it succeeds, rolled back if not.
    fn transaction<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.conn.prepare_cached("BEGIN")?.execute([])?;
        match f(&self.conn) {
            Ok(v) => {
                self.conn.prepare_cached("COMMIT")?.execute([])?;
                Ok(v)
            }
            Err(e) => {
                self.conn.execute_batch("ROLLBACK")?;
                Err(e)
            }
        }
    }

    /// A send; `false` when the same (from, to, MsgKey) was stored before (nothing changes).
    fn send(&self, from: &str, to: &str, key: &str, body: &str) -> rusqlite::Result<bool> {
        let (f, t) = (self.id(from)?, self.id(to)?);
        self.transaction(|c| {
            let stored = c
                .prepare_cached(
                    "INSERT INTO messages (from_id, to_id, msgkey, body, flag, read)
                     VALUES (?1, ?2, ?3, ?4, 0, 0) ON CONFLICT DO NOTHING",
                )?
                .execute(params![f, t, key, body])?;
            if stored == 0 {
                return Ok(false);
            }
            append_inbox(c, t, KIND_MESSAGE, f, t, key)?;
            c.prepare_cached(
                "INSERT INTO unread (account, peer, n) VALUES (?1, ?2, 1)
                 ON CONFLICT (account, peer) DO UPDATE SET n = n + 1",
            )?
            .execute(params![t, f])?;
            Ok(true)
        })
    }

    /// A recall; `false` when there is no such message (20022) or it was recalled (20023).
    fn recall(&self, from: &str, to: &str, key: &str) -> rusqlite::Result<bool> {
        let (f, t) = (self.id(from)?, self.id(to)?);
        self.transaction(|c| recall_in(c, f, t, key))
    }

    /// Several recalls in one transaction, each as `recall` does it.
    fn recall_batch(&self, items: &[(&str, &str, &str)]) -> rusqlite::Result<Vec<bool>> {
        let ids = items
            .iter()
            .map(|(from, to, key)| Ok((self.id(from)?, self.id(to)?, *key)))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        self.transaction(|c| {
            ids.iter()
                .map(|&(f, t, key)| recall_in(c, f, t, key))
                .collect()
        })
    }

    fn count(&self, sql: &str) -> u64 {
        let n: Option<i64> = self
            .conn
            .query_row(sql, [], |r| r.get(0))
            .expect("sqlite: count");
        n.unwrap_or(0) as u64
    }
}

/// The statements of one recall (`Sqlite::recall`), inside the caller's transaction.
fn recall_in(c: &Connection, f: i64, t: i64, key: &str) -> rusqlite::Result<bool> {
    let found: Option<(i64, i64)> = c
        .prepare_cached(
            "SELECT flag, read FROM messages
             WHERE from_id = ?1 AND to_id = ?2 AND msgkey = ?3",
        )?
        .query_row(params![f, t, key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((flag, read)) = found else {
        return Ok(false);
    };
    if flag & FLAG_RECALLED != 0 {
        return Ok(false);
    }
    c.prepare_cached(
        "UPDATE messages SET body = NULL, flag = ?4
         WHERE from_id = ?1 AND to_id = ?2 AND msgkey = ?3",
    )?
    .execute(params![f, t, key, FLAG_RECALLED])?;
    append_inbox(c, f, KIND_RECALL, f, t, key)?;
    append_inbox(c, t, KIND_RECALL, f, t, key)?;
    if read == 0 {
        c.prepare_cached("UPDATE unread SET n = n - 1 WHERE account = ?1 AND peer = ?2 AND n > 0")?
            .execute(params![t, f])?;
    }
    Ok(true)
}

/// Appends an entry to `account`'s inbox under its next sequence number.
fn append_inbox(
    c: &Connection,
    account: i64,
    kind: i64,
    from: i64,
    to: i64,
    key: &str,
) -> rusqlite::Result<()> {
    let seq: i64 = c
        .prepare_cached(
            "UPDATE accounts SET next_seq = next_seq + 1 WHERE id = ?1 RETURNING next_seq",
        )?
        .query_row([account], |r| r.get(0))?;
    c.prepare_cached(
        "INSERT INTO inbox (account, seq, kind, from_id, to_id, msgkey, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![account, seq, kind, from, to, key, NOW + LIFETIME])?;
    Ok(())
}

fn sqlite_run(
    w: &Workload,
    db: Sqlite,
    messages: u64,
    picks: &[Pick],
    batch: usize,
    clients: usize,
) -> Timing {
    let (db, timing) = if clients > 1 {
        sqlite_clients(w, db, messages, picks, clients)
    } else {
        let t = Instant::now();
        for i in 0..messages {
            sqlite_send(w, &db, i);
        }
        let send = t.elapsed();
        let t = Instant::now();
        sqlite_recalls(&db, picks, batch);
        let recall = t.elapsed();
        (db, Timing { send, recall })
    };
    sqlite_verify(&db, messages, picks);
    timing
}

/// Message `i`'s send on SQLite.
fn sqlite_send(w: &Workload, db: &Sqlite, i: u64) {
    let (a, b) = w.parties(i);
    // Written out, not read from `names` (see `recall_picks`).
    let (from, to) = (Name::of(a), Name::of(b));
    let stored = db
        .send(from.as_str(), to.as_str(), &key(i).to_string(), &text(i))
        .expect("sqlite: send");
    assert!(stored, "sqlite: message {i} stored twice");
}

/// The sends, then the recalls, from `clients` threads at once — thread `j` sends the
/// messages `i` with `i % clients == j` and recalls every `clients`-th pick — sharing the one
/// connection behind a mutex. That is SQLite's best with many clients: WAL admits one writer
/// at a time and fsyncs each commit under its write lock, so more connections could only add
/// waiting for that lock (its busy handler sleeps a millisecond or more between tries); a
/// mutex hands the connection on at once.
fn sqlite_clients(
    w: &Workload,
    db: Sqlite,
    messages: u64,
    picks: &[Pick],
    clients: usize,
) -> (Sqlite, Timing) {
    let db = std::sync::Mutex::new(db);
    let lanes = clients as u64;
    let t = Instant::now();
    std::thread::scope(|s| {
        for j in 0..lanes {
            let db = &db;
            s.spawn(move || {
                for i in (j..messages).step_by(clients) {
                    sqlite_send(w, &db.lock().expect("sqlite: lock"), i);
                }
            });
        }
    });
    let send = t.elapsed();
    let t = Instant::now();
    std::thread::scope(|s| {
        for j in 0..clients {
            let (db, mine) = (&db, picks.iter().skip(j).step_by(clients));
            s.spawn(move || {
                for (a, b, k) in mine {
                    let done = db
                        .lock()
                        .expect("sqlite: lock")
                        .recall(a, b, k)
                        .expect("sqlite: recall");
                    assert!(done, "sqlite: recall of {k} refused");
                }
            });
        }
    });
    let recall = t.elapsed();
    (
        db.into_inner().expect("sqlite: lock"),
        Timing { send, recall },
    )
}

/// The recalls of `picks`, one at a time or `batch` to a transaction.
fn sqlite_recalls(db: &Sqlite, picks: &[Pick], batch: usize) {
    for chunk in picks.chunks(batch.max(1)) {
        if batch > 1 {
            let items: Vec<(&str, &str, &str)> = chunk
                .iter()
                .map(|(a, b, k)| (a.as_str(), b.as_str(), k.as_str()))
                .collect();
            let done = db.recall_batch(&items).expect("sqlite: recall");
            assert!(done.iter().all(|d| *d), "sqlite: a recall refused");
        } else {
            for (a, b, k) in chunk {
                let done = db.recall(a, b, k).expect("sqlite: recall");
                assert!(done, "sqlite: recall of {k} refused");
            }
        }
    }
}

/// After the run: a second recall is refused, and the tables say what was done.
fn sqlite_verify(db: &Sqlite, messages: u64, picks: &[Pick]) {
    let recalls = picks.len() as u64;
    if let Some((a, b, k)) = picks.first() {
        let again = db.recall(a, b, k).expect("sqlite");
        assert!(!again, "sqlite: a second recall succeeded");
    }
    assert_eq!(db.count("SELECT count(*) FROM messages"), messages);
    assert_eq!(
        db.count("SELECT count(*) FROM messages WHERE flag = 8 AND body IS NULL"),
        recalls
    );
    assert_eq!(
        db.count("SELECT count(*) FROM inbox"),
        messages + 2 * recalls
    );
    assert_eq!(
        db.count("SELECT sum(n) FROM unread"),
        messages - recalls,
        "sqlite: unread total"
    );
}

// ----- the comparisons -----

struct Comparison {
    name: &'static str,
    /// `None`: in memory.
    imstore: Option<SyncPolicy>,
    sqlite: SqliteMode,
    messages: u64,
    recalls: u64,
    /// Operations imstore keeps unacknowledged at once (1: none).
    in_flight: usize,
    /// Recalls per call and per transaction: imstore's `recall_many`, SQLite's transaction
    /// (1: one each). Sends stay one at a time on both.
    batch: usize,
    /// Threads sending and recalling on SQLite at once (1: the timed loop's own; more:
    /// `sqlite_clients`).
    sqlite_clients: usize,
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn show(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e4 {
        format!("{:.0} k/s", r / 1e3)
    } else {
        format!("{:.2} k/s", r / 1e3)
    }
}

fn compare(w: &Workload, c: &Comparison, dir: &Path, rowid: bool) -> String {
    let picks = recall_picks(w, c.messages, c.recalls);
    let clock = || ManualClock::new(NOW as u64);

    let ims = match c.imstore {
        None => {
            let store = Store::in_memory(Config::default().with_clock(clock()))
                .expect("imstore: in memory");
            imstore_run(w, &store, c.messages, &picks, 1, c.batch)
        }
        Some(sync) => {
            let tmp = tempfile::Builder::new()
                .prefix("imstore-peers-")
                .tempdir_in(dir)
                .expect("temp dir");
            let config = Config::default().with_clock(clock()).with_sync(sync);
            let store = Store::open(tmp.path(), config).expect("imstore: open");
            let timing = imstore_run(w, &store, c.messages, &picks, c.in_flight, c.batch);
            store.close().expect("imstore: close");
            timing
        }
    };

    let sql = match c.sqlite {
        SqliteMode::Memory => {
            let db = Sqlite::open(None, c.sqlite, rowid, &w.names);
            sqlite_run(w, db, c.messages, &picks, c.batch, c.sqlite_clients)
        }
        SqliteMode::Wal(_) => {
            let tmp = tempfile::Builder::new()
                .prefix("imstore-peers-sqlite-")
                .tempdir_in(dir)
                .expect("temp dir");
            let db = Sqlite::open(
                Some(&tmp.path().join("peers.db")),
                c.sqlite,
                rowid,
                &w.names,
            );
            sqlite_run(w, db, c.messages, &picks, c.batch, c.sqlite_clients)
        }
    };

    let recalls = picks.len() as u64;
    let (is, ss) = (rate(c.messages, ims.send), rate(c.messages, sql.send));
    let (ir, sr) = (rate(recalls, ims.recall), rate(recalls, sql.recall));
    format!(
        "| {} | {} / {} | {} | {} | **{:.1}×** | {} | {} | **{:.1}×** |",
        c.name,
        c.messages,
        recalls,
        show(is),
        show(ss),
        is / ss,
        show(ir),
        show(sr),
        ir / sr,
    )
}

fn main() {
    check_text();
    let accounts = env_u64("IMSTORE_PEERS_ACCOUNTS", 100_000) as usize;
    assert!(accounts >= 2, "IMSTORE_PEERS_ACCOUNTS: at least 2");
    let messages = env_u64("IMSTORE_PEERS_MESSAGES", 200_000);
    let recalls = env_u64("IMSTORE_PEERS_RECALLS", 100_000);
    let durable_messages = env_u64("IMSTORE_PEERS_DURABLE_MESSAGES", 20_000);
    let durable_recalls = env_u64("IMSTORE_PEERS_DURABLE_RECALLS", 10_000);
    let dir = env("IMSTORE_PEERS_DIR", "/tmp");
    let only = env(
        "IMSTORE_PEERS_ONLY",
        "memory,memory64,every,group,group32,group32full,none",
    );
    let rowid = env("IMSTORE_PEERS_ROWID", "0") == "1";

    let w = Workload {
        accounts,
        names: (0..accounts).map(|i| format!("user{i}")).collect(),
    };
    check_names(&w.names);
    let durable = |name, imstore, sqlite, in_flight, sqlite_clients| Comparison {
        name,
        imstore: Some(imstore),
        sqlite,
        messages: durable_messages,
        recalls: durable_recalls,
        in_flight,
        batch: 1,
        sqlite_clients,
    };
    let comparisons = [
        (
            "memory",
            Comparison {
                name: "in memory (SQLite `:memory:`)",
                imstore: None,
                sqlite: SqliteMode::Memory,
                messages,
                recalls,
                in_flight: 1,
                batch: 1,
                sqlite_clients: 1,
            },
        ),
        (
            "memory64",
            Comparison {
                name: "in memory, 64 recalls a call (`recall_many`) / a transaction",
                imstore: None,
                sqlite: SqliteMode::Memory,
                messages,
                recalls,
                in_flight: 1,
                batch: 64,
                sqlite_clients: 1,
            },
        ),
        (
            "every",
            durable(
                "fsync per op: `Every` / WAL `FULL`",
                SyncPolicy::Every,
                SqliteMode::Wal("FULL"),
                1,
                1,
            ),
        ),
        (
            "group",
            durable(
                "`Group` / WAL `NORMAL`",
                SyncPolicy::Group,
                SqliteMode::Wal("NORMAL"),
                1,
                1,
            ),
        ),
        (
            "group32",
            durable(
                "`Group`, 32 in flight / WAL `NORMAL`",
                SyncPolicy::Group,
                SqliteMode::Wal("NORMAL"),
                32,
                1,
            ),
        ),
        (
            "group32full",
            durable(
                "`Group`, 32 in flight / WAL `FULL`, 32 threads",
                SyncPolicy::Group,
                SqliteMode::Wal("FULL"),
                32,
                32,
            ),
        ),
        (
            "none",
            durable(
                "no fsync per op: `None` / WAL `NORMAL`",
                SyncPolicy::None,
                SqliteMode::Wal("NORMAL"),
                1,
                1,
            ),
        ),
    ];

    println!(
        "imstore against SQLite {} ({} tables): {accounts} accounts x {PEERS} peers, \
         32-character text messages, one thread (SQLite: 32 in the `FULL, 32 threads` row), \
         system allocator; durable runs in {dir}",
        rusqlite::version(),
        if rowid { "rowid" } else { "WITHOUT ROWID" },
    );
    println!();
    println!(
        "| imstore / SQLite | messages / recalls | imstore sends | SQLite sends | ratio \
         | imstore recalls | SQLite recalls | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (tag, c) in &comparisons {
        if only.split(',').any(|o| o.trim() == *tag) {
            println!("{}", compare(&w, c, Path::new(&dir), rowid));
        }
    }
}
