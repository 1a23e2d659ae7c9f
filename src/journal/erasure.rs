//! When erased bodies must leave the disk: SPEC §4.3 wants a recalled body "erased from what
//! is persisted". A journal is append-only, so a recall's record cannot take the body out of
//! the send's record before it; a snapshot (built by replay, which keeps no recalled body)
//! followed by the deletion of what it replaces does. [`Erasure`] remembers that some record
//! since the last snapshot erased something — a recall, a modification (the old body), a
//! purge past retention, a send that trimmed its conversation — and when a
//! snapshot must be written for it: `Config::erase_within_secs` after the first of them.
//! Owned by the journal's state (file or stream) and read by its snapshot thread.
//!
//! The rule that keeps it right: a snapshot clears only what its cut covers. A record whose
//! ticket is at or below the cut is in the snapshot's input; one past it keeps the erasure
//! pending, due `within` after the snapshot began. In the file journal every such record was
//! appended after that (a checkpoint's rotation takes everything appended), so the bound holds
//! for it; a shard's snapshot covers what JetStream had acknowledged when it began, so a
//! record appended just before and acknowledged after may wait up to that acknowledgement's
//! delay longer (seconds during a stream leader election).

use std::time::{Duration, Instant};

/// After a snapshot for an erasure fails (a full disk, NATS unreachable), the next try
/// comes this much later (or the bound, if shorter) — or as long after as the failed try
/// took, if longer.
const RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub(crate) struct Erasure {
    /// `None`: no snapshot is ever due for an erasure (only the size threshold and
    /// `compact` write them).
    within: Option<Duration>,
    /// When a snapshot is due, and the ticket of the last erasing record since the last one.
    pending: Option<(Instant, u64)>,
    /// No snapshot is due for an erasure before this: the last one (or the last try) ended
    /// here plus as long as it took, so that these snapshots take at most half of the
    /// snapshot thread's time, however short the bound or large the store.
    not_before: Option<Instant>,
}

impl Erasure {
    pub fn set_within(&mut self, within: Option<Duration>) {
        // At most a century: `Instant + within` must not overflow.
        self.within = within.map(|w| w.min(Duration::from_secs(100 * 365 * 86_400)));
        if within.is_none() {
            self.pending = None;
        }
    }

    /// The record `ticket` erased something. Returns whether a snapshot just became pending
    /// (the snapshot thread, waiting without a deadline, must be woken to take it).
    pub fn note(&mut self, ticket: u64) -> bool {
        let Some(within) = self.within else {
            return false;
        };
        match &mut self.pending {
            Some((_, last)) => {
                *last = (*last).max(ticket);
                false
            }
            None => {
                let due = (Instant::now() + within).max(self.not_before.unwrap_or(Instant::now()));
                self.pending = Some((due, ticket));
                true
            }
        }
    }

    /// When a snapshot is due for an erasure, if one is.
    pub fn due(&self) -> Option<Instant> {
        self.pending.map(|(due, _)| due)
    }

    /// Remembers that a snapshot (or a try) begun at `started` just ended: the next one for an
    /// erasure waits at least as long as it took.
    fn ended(&mut self, started: Instant) -> Instant {
        let now = Instant::now();
        let not_before = now + now.saturating_duration_since(started);
        self.not_before = Some(not_before);
        not_before
    }

    /// A snapshot that began at `started` covers every record up to ticket `cut`; what it does
    /// not cover is due a bound after it began, and not before [`not_before`](Self::not_before).
    pub fn covered(&mut self, cut: u64, started: Instant) {
        let not_before = self.ended(started);
        if let (Some((due, last)), Some(within)) = (&mut self.pending, self.within) {
            if *last <= cut {
                self.pending = None;
            } else {
                *due = (*due).max(started + within).max(not_before);
            }
        }
    }

    /// A snapshot begun at `started` failed: one due for an erasure is tried again later, not
    /// at once.
    pub fn retry_later(&mut self, started: Instant) {
        let not_before = self.ended(started);
        if let (Some((due, _)), Some(within)) = (&mut self.pending, self.within) {
            *due = (*due)
                .max(Instant::now() + within.min(RETRY))
                .max(not_before);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_clears_only_what_its_cut_covers() {
        let mut e = Erasure::default();
        assert!(!e.note(5), "off: nothing is ever pending");
        assert_eq!(e.due(), None);
        e.set_within(Some(Duration::from_secs(60)));
        let before = Instant::now();
        assert!(e.note(5));
        assert!(!e.note(9), "already pending: the deadline stays");
        let due = e.due().unwrap();
        assert!(due >= before + Duration::from_secs(60));
        assert!(due <= Instant::now() + Duration::from_secs(60));
        // A cut below the last erasing record: still pending, due a bound after the start.
        let started = Instant::now() + Duration::from_secs(10);
        e.covered(8, started);
        assert_eq!(e.due(), Some(started + Duration::from_secs(60)));
        e.covered(9, Instant::now());
        assert_eq!(e.due(), None);
        // A failed snapshot: the next try waits (at most the retry interval here).
        e.note(12);
        let was = e.due().unwrap();
        e.retry_later(Instant::now());
        assert!(e.due().unwrap() >= was);
        e.set_within(None);
        assert_eq!(e.due(), None);
    }

    #[test]
    fn a_snapshot_longer_than_the_bound_is_followed_by_as_long_a_pause() {
        let mut e = Erasure::default();
        e.set_within(Some(Duration::from_secs(1)));
        e.note(10);
        let Some(started) = Instant::now().checked_sub(Duration::from_secs(5)) else {
            return; // a clock this close to its origin cannot go back five seconds
        };
        e.covered(5, started);
        let due = e.due().unwrap();
        assert!(due >= Instant::now() + Duration::from_secs(4), "{due:?}");
        // Covered whole: the next erasure waits as long too, though the bound is a second.
        e.covered(10, started);
        assert_eq!(e.due(), None);
        e.note(11);
        assert!(e.due().unwrap() >= Instant::now() + Duration::from_secs(4));
        // And after a failed try that took as long.
        let mut f = Erasure::default();
        f.set_within(Some(Duration::from_secs(1)));
        f.note(1);
        f.retry_later(started);
        assert!(f.due().unwrap() >= Instant::now() + Duration::from_secs(4));
    }

    #[test]
    fn a_failed_try_waits_at_most_the_retry_interval_past_now() {
        let mut e = Erasure::default();
        e.set_within(Some(Duration::from_secs(3600)));
        e.note(1);
        // Due an hour from now; a failure does not bring it closer.
        let was = e.due().unwrap();
        e.retry_later(Instant::now());
        assert_eq!(e.due(), Some(was));
        let mut short = Erasure::default();
        short.set_within(Some(Duration::from_millis(1)));
        short.note(1);
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        short.retry_later(now);
        let due = short.due().unwrap();
        assert!(due >= now && due <= Instant::now() + Duration::from_millis(1));
    }
}
