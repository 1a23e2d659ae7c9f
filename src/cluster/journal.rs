//! A shard's journal as a JetStream stream: the durability backend of a shard's `Store`
//! (`Journal::Stream`). Each operation record — the frame the file journal would write, from
//! `codec::encode_op` — is one stream message, published with `Nats-Expected-Last-Sequence`
//! set to the sequence the record before it has, and `Nats-Msg-Id` naming this owner's epoch
//! and the sequence. A ticket is the record's stream sequence; a record is durable, and so
//! visible (R6), once JetStream has acknowledged it and every record before it.
//!
//! Expected-last-sequence compares numbers only. A stale owner's *pipelined* record can
//! therefore land right after a new owner's marker took the sequence where the stale owner's
//! previous record was refused: a "zombie". (Nats-Expected-Last-Subject-Sequence on a subject
//! per owner would refuse it, but JetStream refuses to pipeline that check: 2.9 checks it
//! against what is applied, newer servers answer 503 while a proposal for the subject is in
//! flight.) Zombies are made harmless instead: every Msg-Id carries its owner's epoch, which
//! only grows; replay skips an operation whose epoch is below the highest epoch seen before
//! it (markers included), and anything of an epoch after a gap in its records' positions
//! ([`Owners`]: a zombie took the owner's place k while k+1 landed after it); the stale owner
//! never acknowledges a zombie (acknowledgements are taken in order, and the refused record
//! before it fails its journal first); and the new owner, finding a lower epoch's record
//! where its own should be, steps over it: its records move one sequence on (tickets are
//! journal positions, `offset` maps them to sequences).
//!
//! Appends never wait: they queue the record (under the operation's store locks, as the file
//! journal's do). One publisher task per shard keeps up to [`WINDOW`] records in flight and
//! awaits their acknowledgements in order. An answer it cannot take at face value — a timeout,
//! no responders while a stream leader is elected, or "wrong last sequence" — sends that
//! record through [`reconcile`]: it is published again, the same bytes with the same
//! Msg-Id, until JetStream acknowledges it, or the stream is found to hold this very record
//! (its Msg-Id) at its sequence. A stream holding *another* record at that sequence means
//! another owner has appended: this owner lost the shard. The journal then fails: every later
//! append and every wait for a record not yet acknowledged answers 91000, and the owner must
//! stop (`Shard::is_owner` turns false).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex, MutexGuard};

#[cfg(feature = "fault-injection")]
use crate::journal::Faults;
use crate::journal::{kind, push_frame};

use crate::error::Error;

/// How many records one shard keeps in flight to JetStream at most.
pub(crate) const WINDOW: usize = 1024;

/// The frame kind of an ownership marker: the first record a new owner appends, which fences
/// every earlier owner out (their next expected-last-sequence is stale). Not an operation;
/// replay skips it.
pub(crate) const KIND_OWNER: u8 = 0x40;

/// The handle a shard's `Store` holds.
pub(crate) struct StreamJournal {
    shared: Arc<Shared>,
    name: PathBuf,
    /// At open, the stream held records below the snapshot's cut (`Cluster::open_shard`).
    replaced_at_open: bool,
    checkpointing: Mutex<()>,
    #[cfg(feature = "fault-injection")]
    faults: Faults,
}

/// What the store's threads share with the publisher task.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Signalled when `done` moves or the journal fails or stops.
    flushed: Condvar,
    /// Wakes the publisher task: records queued, or shutdown.
    work: tokio::sync::Notify,
    shard: u32,
    /// Stale owners' records this owner stepped over.
    pub(crate) zombies: std::sync::atomic::AtomicU64,
}

struct State {
    /// Records queued and not yet taken by the publisher; the first has sequence `taken + 1`.
    pending: VecDeque<Bytes>,
    /// The stream sequence of the last record appended (queued or published).
    next: u64,
    /// Records up to this sequence have been taken by the publisher.
    taken: u64,
    /// Records up to this position are acknowledged by JetStream: durable.
    done: u64,
    /// The stream sequence of record `done`.
    done_seq: u64,
    failed: Option<String>,
    wakers: Vec<(u64, Waker)>,
    shutdown: bool,
    /// The publisher task has ended: nothing queued will be published any more.
    stopped: bool,
    /// Whether, and when, a snapshot is due because a record since the last one erased a
    /// body (`journal/erasure.rs`); tickets are journal positions, as `done` is.
    erasure: crate::journal::erasure::Erasure,
    /// The cut (stream sequence) of the last snapshot this owner took whole: named, the stream
    /// purged below it, the snapshot it replaced deleted. 0: none yet.
    complete: u64,
    /// This owner's snapshot named at this cut whose purge, or deletion of the snapshots it
    /// replaced (named here), failed: the next try finishes them.
    unfinished: Option<(u64, Vec<String>)>,
}

impl Shared {
    pub(crate) fn new(shard: u32, last: u64) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State {
                pending: VecDeque::new(),
                next: last,
                taken: last,
                done: last,
                done_seq: last,
                failed: None,
                wakers: Vec::new(),
                shutdown: false,
                stopped: false,
                erasure: Default::default(),
                complete: 0,
                unfinished: None,
            }),
            flushed: Condvar::new(),
            work: tokio::sync::Notify::new(),
            shard,
            zombies: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Fails the journal: this node no longer owns the shard (or cannot reach JetStream).
    /// Every later append, and every wait for a record not yet acknowledged, answers 91000.
    pub(crate) fn fail(&self, why: String) {
        let mut st = self.state.lock();
        if st.failed.is_none() {
            st.failed = Some(why);
        }
        st.pending.clear();
        self.wake_all(&mut st);
        drop(st);
        self.work.notify_one();
    }

    pub(crate) fn failed(&self) -> Option<String> {
        self.state.lock().failed.clone()
    }

    /// The stream sequence of the last acknowledged record.
    pub(crate) fn done_seq(&self) -> u64 {
        self.state.lock().done_seq
    }

    /// The position and stream sequence of the last acknowledged record, read together.
    pub(crate) fn done(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.done, st.done_seq)
    }

    /// Whether a snapshot is due now for an erasure (`journal/erasure.rs`).
    pub(crate) fn erasure_due_now(&self) -> bool {
        self.state
            .lock()
            .erasure
            .due()
            .is_some_and(|at| at <= Instant::now())
    }

    /// A snapshot at `cut`, begun at `started`, was taken whole (named, the stream purged
    /// below it, the one it replaced deleted): it covers every record up to position `upto`.
    pub(crate) fn snapshot_complete(&self, cut: u64, upto: u64, started: Instant) {
        let mut st = self.state.lock();
        st.erasure.covered(upto, started);
        st.complete = st.complete.max(cut);
    }

    /// This owner's snapshot whose last steps failed, if any (see `State::unfinished`).
    pub(crate) fn unfinished(&self) -> Option<(u64, Vec<String>)> {
        self.state.lock().unfinished.clone()
    }

    pub(crate) fn set_unfinished(&self, left: Option<(u64, Vec<String>)>) {
        self.state.lock().unfinished = left;
    }

    /// Nothing was appended since the newest snapshot, at `cut`: the erasures up to position
    /// `upto` are covered if this owner took that snapshot whole. Otherwise they stay due:
    /// this owner's own snapshot whose last steps failed is finished by `finish_snapshot`
    /// before this is asked; another owner's (which may have failed the same way) is followed
    /// by this owner's next snapshot with something new — its marker, at the latest, is new
    /// to it — which purges below its own cut.
    pub(crate) fn nothing_new_since(&self, cut: u64, upto: u64, started: Instant) {
        let mut st = self.state.lock();
        if cut == 0 || cut == st.complete {
            st.erasure.covered(upto, started);
        } else {
            st.erasure.retry_later(started);
        }
    }

    /// A snapshot begun at `started` failed: one due for an erasure is tried again later, not
    /// at once.
    pub(crate) fn erasure_retry_later(&self, started: Instant) {
        self.state.lock().erasure.retry_later(started);
    }

    fn wake_all(&self, st: &mut State) {
        for (_, w) in st.wakers.drain(..) {
            w.wake();
        }
        self.flushed.notify_all();
    }

    fn error(&self, st: &State) -> Option<Error> {
        if let Some(why) = &st.failed {
            return Some(Error::Internal(format!(
                "shard {} cannot be written by this node: {why}",
                self.shard
            )));
        }
        st.stopped
            .then(|| Error::Internal(format!("shard {}'s journal is closed", self.shard)))
    }

    fn acknowledged(&self, lsn: u64, seq: u64) {
        let mut st = self.state.lock();
        if lsn > st.done {
            st.done = lsn;
            st.done_seq = seq;
        }
        let done = st.done;
        st.wakers.retain(|(t, w)| {
            let ready = *t <= done;
            if ready {
                w.wake_by_ref();
            }
            !ready
        });
        self.flushed.notify_all();
    }
}

fn lost(shard: u32, why: &str) -> Error {
    Error::Internal(format!(
        "shard {shard} cannot be written by this node: {why}"
    ))
}

impl StreamJournal {
    pub(crate) fn new(shared: Arc<Shared>, name: String, replaced_at_open: bool) -> StreamJournal {
        StreamJournal {
            shared,
            name: PathBuf::from(name),
            replaced_at_open,
            checkpointing: Mutex::new(()),
            #[cfg(feature = "fault-injection")]
            faults: Faults::default(),
        }
    }

    /// `nats:` and the stream's name (a store's `data_dir`).
    pub fn name(&self) -> &Path {
        &self.name
    }

    #[cfg(feature = "fault-injection")]
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Queues one operation record; returns its ticket, its stream sequence-to-be. No I/O:
    /// called with the operation's store locks held.
    pub fn append(&self, encode: impl FnOnce(&mut Vec<u8>), erases: bool) -> Result<u64, Error> {
        let mut frame = Vec::with_capacity(256);
        push_frame(&mut frame, kind::OP, encode);
        let sh = &*self.shared;
        let mut st = sh.state.lock();
        if let Some(why) = &st.failed {
            return Err(lost(sh.shard, why));
        }
        if st.stopped || st.shutdown {
            return Err(lost(sh.shard, "its journal is closed"));
        }
        st.pending.push_back(Bytes::from(frame));
        st.next += 1;
        let ticket = st.next;
        if erases {
            st.erasure.note(ticket);
        }
        drop(st);
        sh.work.notify_one();
        Ok(ticket)
    }

    pub fn appended(&self) -> u64 {
        self.shared.state.lock().next
    }

    /// The record `ticket` turned out to erase a body (the shard's snapshotter, checking once
    /// a second, takes it when due).
    pub fn note_erased(&self, ticket: u64) {
        self.shared.state.lock().erasure.note(ticket);
    }

    pub fn set_erase_within(&self, within: Option<Duration>) {
        self.shared.state.lock().erasure.set_within(within);
    }

    pub fn erasure_due(&self) -> Option<Instant> {
        self.shared.state.lock().erasure.due()
    }

    pub fn replaced_at_open(&self) -> bool {
        self.replaced_at_open
    }

    pub fn is_done(&self, target: u64) -> bool {
        self.shared.state.lock().done >= target
    }

    /// Waits until JetStream has acknowledged every record up to `target`.
    pub fn commit_to(&self, target: u64) -> Result<(), Error> {
        let sh = &*self.shared;
        let mut st = sh.state.lock();
        let target = target.min(st.next);
        loop {
            if st.done >= target {
                return Ok(());
            }
            if let Some(e) = sh.error(&st) {
                return Err(e);
            }
            sh.flushed.wait(&mut st);
        }
    }

    pub fn poll_durable(&self, target: u64, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let sh = &*self.shared;
        let mut st = sh.state.lock();
        let target = target.min(st.next);
        if st.done >= target {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = sh.error(&st) {
            return Poll::Ready(Err(e));
        }
        if !st
            .wakers
            .iter()
            .any(|(t, w)| *t == target && w.will_wake(cx.waker()))
        {
            st.wakers.push((target, cx.waker().clone()));
        }
        Poll::Pending
    }

    /// Waits until everything appended so far is acknowledged.
    pub fn flush(&self) -> Result<(), Error> {
        let target = self.appended();
        self.commit_to(target)
    }

    pub fn checkpoint_lock(&self) -> MutexGuard<'_, ()> {
        self.checkpointing.lock()
    }

    /// The publisher publishes what is queued, then ends.
    pub fn shutdown(&self) {
        self.shared.state.lock().shutdown = true;
        self.shared.work.notify_one();
    }
}

/// Where a shard's records go: the stream, its subject, and this owner's Msg-Id prefix.
#[derive(Clone)]
pub(crate) struct Target {
    pub js: jetstream::Context,
    pub stream: String,
    pub subject: String,
    /// `node.epoch.`: with the sequence, the Msg-Id of each record this owner publishes.
    pub msg_id_prefix: String,
    /// How long one record may go unacknowledged (a stream leader election takes 5-8 s)
    /// before the journal fails.
    pub retry_for: Duration,
}

impl Target {
    /// The Msg-Id of record `lsn`: `node.epoch.lsn`.
    pub fn msg_id(&self, lsn: u64) -> String {
        format!("{}{lsn}", self.msg_id_prefix)
    }

    /// Record `lsn` at stream sequence `seq`: it must follow the stream's record `seq - 1`.
    fn message(&self, lsn: u64, seq: u64, frame: &Bytes) -> PublishMessage {
        PublishMessage::build()
            .payload(frame.clone())
            .message_id(self.msg_id(lsn))
            .expected_last_sequence(seq - 1)
    }
}

impl Target {
    /// The Msg-Id of this owner's ownership marker: `node.epoch.owner` (no record's position).
    pub fn marker_id(&self) -> String {
        format!("{}owner", self.msg_id_prefix)
    }
}

/// Appends `frame` wherever the stream ends — no expected sequence — as Msg-Id `id`, until
/// JetStream acknowledges it, or `retry_for` has passed; returns the sequence it got. A retry
/// of an append that was stored but whose acknowledgement was lost is answered as a duplicate
/// of the first (the stream's duplicate window, 2 min, outlasts `retry_for`), with the first
/// one's sequence: the record is in the stream once, wherever it first landed.
///
/// `current` is asked before each attempt, and an `Err` from it ends the tries: a record that
/// lands anywhere must not land once a later owner may be writing (a marker of an earlier
/// epoch amid a later owner's pipelined records would cost that owner its journal). Only an
/// attempt already sent when the lease ran out — held up past the margin `current` keeps —
/// could still land late.
pub(crate) async fn append_anywhere(
    t: &Target,
    id: &str,
    frame: &Bytes,
    current: impl Fn() -> Result<(), String>,
) -> Result<u64, String> {
    let deadline = Instant::now() + t.retry_for;
    let mut backoff = Duration::from_millis(20);
    loop {
        current()?;
        let message = PublishMessage::build()
            .payload(frame.clone())
            .message_id(id);
        let sent = match t.js.send_publish(t.subject.clone(), message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        let error = match sent {
            Ok(ack) => return Ok(ack.sequence),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "no acknowledgement for {id} within {:?}: {error}",
                t.retry_for
            ));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// What became of a record that [`reconcile`] saw through.
pub(crate) enum Outcome {
    /// The stream holds it at its sequence.
    Stored,
    /// The stream holds a record of an equal or later epoch at that sequence (its Msg-Id):
    /// another owner took the shard.
    Taken(String),
    /// The stream holds a stale owner's zombie there: the record goes one sequence on.
    Zombie,
    /// No answer within `retry_for`, or an answer that makes no sense.
    Failed(String),
}

/// The epoch in a Msg-Id `node.epoch.lsn`.
pub(crate) fn epoch_of(msg_id: &str) -> Option<u64> {
    msg_id.split('.').nth(1)?.parse().ok()
}

/// The position in a Msg-Id `node.epoch.lsn` (`None` for a marker's `node.epoch.owner`).
fn lsn_of(msg_id: &str) -> Option<u64> {
    msg_id.rsplit('.').next()?.parse().ok()
}

/// What a replay has learned of the stream's owners so far, to tell which records to apply.
///
/// - A record of an epoch below the highest seen before it (markers included) is a zombie: a
///   stale owner's pipelined append, never acknowledged.
/// - An owner's records carry consecutive positions (`lsn` in their Msg-Ids), the first one
///   its marker's sequence + 1; zombies stepped over move its records' sequences, never their
///   positions. A zombie can take the place of the owner's record k while k+1, pipelined with
///   the sequence k's place had as its expected last, lands right after it. The owner then
///   fails its journal (k is found neither where it went nor one sequence on), so neither k
///   nor anything after it was ever acknowledged. A replay therefore takes nothing of an
///   epoch after a gap in its positions: k+1 applied without k would show what no owner
///   acknowledged, and apply an operation to a state it was not made for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Owners {
    /// The highest owner epoch seen.
    pub epoch: u64,
    /// The position the next record of that epoch must have, once known.
    next: Option<u64>,
    /// A record of that epoch was missing: nothing of it after the gap is applied.
    broken: bool,
    /// A record of that epoch was taken since its marker.
    began: bool,
}

impl Owners {
    /// After a snapshot whose highest epoch is `epoch` (0: none): the next record's position
    /// is not known until the record at the cut is read ([`Owners::knows_next`]).
    pub fn after(epoch: u64) -> Owners {
        Owners {
            epoch,
            next: None,
            broken: false,
            began: true,
        }
    }

    /// Whether the position the current epoch's next record must have is known.
    pub fn knows_next(&self) -> bool {
        self.next.is_some() || self.epoch == 0
    }

    /// Takes the record at `seq` (an ownership marker, or an operation) with Msg-Id `msg_id`;
    /// says whether it is an operation to apply.
    pub fn admit(&mut self, seq: u64, marker: bool, msg_id: &str) -> Result<bool, String> {
        let epoch = epoch_of(msg_id).ok_or_else(|| format!("no owner's Msg-Id: {msg_id:?}"))?;
        if marker {
            // Its own epoch's marker, too: when a replay after a snapshot cut there starts with
            // it; or again before any record of the epoch — a marker's retry deduplicated by
            // its Msg-Id lands once, but were the stream to hold it twice, its owner numbered
            // its records from the one it was answered, the later.
            if epoch > self.epoch || (epoch == self.epoch && (self.next.is_none() || !self.began)) {
                *self = Owners {
                    epoch,
                    next: Some(seq + 1),
                    broken: false,
                    began: false,
                };
            }
            return Ok(false);
        }
        let lsn = lsn_of(msg_id).ok_or_else(|| format!("no record position: {msg_id:?}"))?;
        if epoch < self.epoch {
            return Ok(false);
        }
        if epoch > self.epoch {
            // An owner's marker comes before its records; but a snapshot's purge can take it:
            // the epoch's first record seen says where it is.
            *self = Owners::after(epoch);
        }
        if self.broken {
            return Ok(false);
        }
        match self.next {
            Some(next) if next != lsn => {
                self.broken = true;
                Ok(false)
            }
            _ => {
                self.next = Some(lsn + 1);
                self.began = true;
                Ok(true)
            }
        }
    }
}

/// Publishes record `lsn` at sequence `seq` until the stream holds it there (acknowledged, or
/// found there with its Msg-Id), or holds another owner's record there (`Taken`) or a stale
/// owner's (`Zombie`), or `retry_for` has passed.
pub(crate) async fn reconcile(t: &Target, lsn: u64, seq: u64, frame: &Bytes) -> Outcome {
    let deadline = Instant::now() + t.retry_for;
    let mut backoff = Duration::from_millis(20);
    let mut last_error;
    let me = t.msg_id(lsn);
    let my_epoch = epoch_of(&me);
    loop {
        let sent = match t
            .js
            .send_publish(t.subject.clone(), t.message(lsn, seq, frame))
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(ack) if ack.sequence == seq => return Outcome::Stored,
            Ok(ack) => {
                return Outcome::Failed(format!(
                    "JetStream stored record {lsn} as sequence {}, not {seq}",
                    ack.sequence
                ));
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // Either the record is there already (an earlier attempt was stored and its
                // acknowledgement lost), or someone else's is.
                match stored_msg_id(t, seq).await {
                    Ok(Some(id)) if id == me => return Outcome::Stored,
                    Ok(Some(id)) if epoch_of(&id) < my_epoch => return Outcome::Zombie,
                    Ok(Some(id)) => return Outcome::Taken(id),
                    Ok(None) => last_error = format!("sequence {seq} not in the stream yet"),
                    Err(e) => last_error = e,
                }
            }
            Err(e) => last_error = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Outcome::Failed(format!(
                "no acknowledgement for record {lsn} within {:?}: {last_error}",
                t.retry_for
            ));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// The Msg-Id of the message at `seq` (`Some("")` when it has none), or `None` when the
/// stream has no message there.
async fn stored_msg_id(t: &Target, seq: u64) -> Result<Option<String>, String> {
    let stream =
        t.js.get_stream_no_info(&t.stream)
            .await
            .map_err(|e| e.to_string())?;
    match stream.get_raw_message(seq).await {
        Ok(m) => Ok(Some(
            m.headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default(),
        )),
        Err(e)
            if matches!(
                e.kind(),
                jetstream::stream::RawMessageErrorKind::NoMessageFound
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Marks the journal stopped when the publisher task ends, however it ends (also when the
/// runtime drops it): waiters then get an error instead of waiting for ever.
struct Stopped(Arc<Shared>);

impl Drop for Stopped {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.stopped = true;
        self.0.wake_all(&mut st);
    }
}

/// The publisher task of one shard: publishes queued records in order, up to [`WINDOW`] in
/// flight, and acknowledges them in order.
pub(crate) async fn publisher(shared: Arc<Shared>, target: Target) {
    let _stopped = Stopped(shared.clone());
    // Stream sequence = journal position + offset (zombies stepped over).
    let mut offset = 0u64;
    let mut inflight: VecDeque<(u64, Bytes)> = VecDeque::new();
    loop {
        let idle = {
            let mut st = shared.state.lock();
            if st.failed.is_some() {
                return;
            }
            while inflight.len() < WINDOW {
                let Some(frame) = st.pending.pop_front() else {
                    break;
                };
                st.taken += 1;
                inflight.push_back((st.taken, frame));
            }
            if inflight.is_empty() && st.shutdown {
                return;
            }
            inflight.is_empty()
        };
        if idle {
            shared.work.notified().await;
            continue;
        }
        // Send the whole window, then take the acknowledgements in order.
        let mut acks = Vec::with_capacity(inflight.len());
        for (lsn, frame) in &inflight {
            let msg = target.message(*lsn, lsn + offset, frame);
            match target.js.send_publish(target.subject.clone(), msg).await {
                Ok(ack) => acks.push(ack),
                Err(_) => break,
            }
        }
        let mut acks = acks.into_iter();
        let mut ok = 0;
        for ack in acks.by_ref() {
            let (lsn, _) = inflight[ok];
            match ack.await {
                Ok(a) if a.sequence == lsn + offset => {
                    shared.acknowledged(lsn, lsn + offset);
                    ok += 1;
                }
                _ => break,
            }
        }
        drop(acks);
        inflight.drain(..ok);
        // The first record without a plain acknowledgement: see it through alone; those after
        // it go out again in the next window.
        while let Some((lsn, frame)) = inflight.front() {
            match reconcile(&target, *lsn, lsn + offset, frame).await {
                Outcome::Stored => {
                    shared.acknowledged(*lsn, lsn + offset);
                    inflight.pop_front();
                    break;
                }
                Outcome::Zombie => {
                    offset += 1;
                    shared
                        .zombies
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Outcome::Taken(id) => {
                    shared.fail(format!(
                        "another owner appended to the stream (sequence {} holds {id:?}): \
                         the shard was taken over",
                        lsn + offset
                    ));
                    return;
                }
                Outcome::Failed(why) => {
                    shared.fail(why);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Owners;

    /// (sequence, marker?, Msg-Id) in stream order → the sequences applied.
    fn applied(from: Owners, records: &[(u64, bool, &str)]) -> Vec<u64> {
        let mut o = from;
        records
            .iter()
            .filter_map(|&(seq, marker, id)| o.admit(seq, marker, id).unwrap().then_some(seq))
            .collect()
    }

    #[test]
    fn an_owners_records_are_applied_in_order_and_zombies_skipped() {
        let records = [
            (1, true, "a.1.owner"),
            (2, false, "a.1.2"),
            (3, false, "a.1.3"),
            (4, true, "b.2.owner"),
            // a's pipelined append after b's marker: a zombie, which b steps over.
            (5, false, "a.1.4"),
            (6, false, "b.2.5"),
            (7, false, "b.2.6"),
        ];
        assert_eq!(applied(Owners::default(), &records), [2, 3, 6, 7]);
    }

    #[test]
    fn nothing_of_an_epoch_is_applied_after_a_gap_in_its_positions() {
        // b's record 6 lost its place to a's zombie, and b's record 7 landed after it: b's
        // journal failed at 6, so neither 6 nor 7 nor 8 was ever acknowledged.
        let records = [
            (1, true, "a.1.owner"),
            (2, false, "a.1.2"),
            (3, true, "b.2.owner"),
            (4, false, "b.2.4"),
            (5, false, "b.2.5"),
            (6, false, "a.1.3"),
            (7, false, "b.2.7"),
            (8, false, "b.2.8"),
            // The next owner starts afresh.
            (9, true, "c.3.owner"),
            (10, false, "c.3.10"),
        ];
        assert_eq!(applied(Owners::default(), &records), [2, 4, 5, 10]);
    }

    #[test]
    fn after_a_snapshot_the_record_at_the_cut_says_where_the_epoch_is() {
        // A snapshot cut at 5 (epoch 2); replay reads the record at the cut first.
        let mut o = Owners::after(2);
        assert!(!o.knows_next());
        o.admit(5, false, "b.2.5").unwrap();
        assert!(o.knows_next());
        let rest = [
            (6, false, "a.1.3"),
            (7, false, "b.2.7"),
            (8, false, "b.2.8"),
        ];
        assert_eq!(applied(o, &rest), Vec::<u64>::new());
        let rest = [
            (6, false, "b.2.6"),
            (7, false, "a.1.3"),
            (8, false, "b.2.7"),
        ];
        assert_eq!(applied(o, &rest), [6, 8]);
        // A cut at the owner's marker.
        let mut o = Owners::after(2);
        o.admit(3, true, "b.2.owner").unwrap();
        assert!(o.knows_next());
        let rest = [(4, false, "a.1.9"), (5, false, "b.2.5")];
        assert_eq!(applied(o, &rest), Vec::<u64>::new());
        // Without the record at the cut (a stream that lost it), the first one says.
        assert_eq!(applied(Owners::after(2), &rest), [5]);
    }

    #[test]
    fn an_epochs_marker_held_twice_numbers_its_records_from_the_second() {
        let records = [
            (1, true, "a.1.owner"),
            (2, false, "a.1.2"),
            (3, true, "b.2.owner"),
            (4, false, "a.1.3"),
            (5, true, "b.2.owner"),
            (6, false, "b.2.6"),
            (7, false, "b.2.7"),
        ];
        assert_eq!(applied(Owners::default(), &records), [2, 6, 7]);
        // Once the epoch has records, its marker again changes nothing.
        let records = [
            (1, true, "b.2.owner"),
            (2, false, "b.2.2"),
            (3, true, "b.2.owner"),
            (4, false, "b.2.3"),
        ];
        assert_eq!(applied(Owners::default(), &records), [2, 4]);
    }

    #[test]
    fn a_late_marker_of_an_earlier_epoch_changes_nothing() {
        let records = [
            (1, true, "b.2.owner"),
            (2, false, "b.2.2"),
            (3, true, "a.1.owner"),
            (4, false, "b.2.4"),
        ];
        // The late marker took record 3's place: b's records after it are not applied.
        assert_eq!(applied(Owners::default(), &records), [2]);
        assert!(Owners::default().admit(1, false, "no-id").is_err());
        assert!(Owners::default().admit(1, false, "a.1.x").is_err());
    }
}
