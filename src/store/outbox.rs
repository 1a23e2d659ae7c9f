//! The outbox of after-callbacks from the reader's side (the server's webhook dispatcher):
//! entries shown once durable (R6), in operation order, a wait for new ones, and the
//! acknowledgement — itself an operation — that removes delivered ones. What is queued, and
//! why with the operation: `crate::callback`.

use super::{Mode, Store};
use crate::callback::OutboxEntry;
use crate::device;
use crate::error::Result;
use crate::op::Op;

impl Store {
    /// The after-callbacks after `after` (at most `max`), in operation order, once their
    /// operations — and any that changed their messages since — are durable (R6; inside
    /// [`Store::deferring`] the ticket says when).
    pub fn outbox_after(&self, after: u64, max: usize) -> Result<Vec<OutboxEntry>> {
        let (entries, ticket) = {
            let outbox = self.inner.outbox.lock();
            let start = outbox.entries.partition_point(|(id, _, _)| *id <= after);
            let entries: Vec<_> = outbox
                .entries
                .range(start..)
                .take(max)
                .map(|(id, origin, queued)| OutboxEntry {
                    id: *id,
                    origin: origin.clone(),
                    event: queued.event(),
                })
                .collect();
            // The views show their messages as they are now: modified, or recalled, by
            // operations that queued nothing here and may not be durable yet. Their records
            // were appended before they changed the message, so everything appended by now
            // covers them (R6).
            let appended = self.journal().map_or(0, |j| j.appended());
            (entries, outbox.ticket.max(appended))
        };
        self.durable(ticket)?;
        Ok(entries)
    }

    /// Completes once there are after-callbacks after `after` (or at once if there are).
    pub async fn outbox_wait(&self, after: u64) {
        loop {
            let signal = {
                let outbox = self.inner.outbox.lock();
                // The newest queued (numbers of dropped callbacks are never queued).
                if outbox.entries.back().is_some_and(|(id, _, _)| *id > after) {
                    return;
                }
                outbox.signal.clone()
            };
            device::wait_signal(&signal).await;
        }
    }

    /// The callbacks up to `upto` were delivered: they leave the outbox. Journaled without
    /// waiting: one not on disk at a crash is delivered again (at least once).
    pub fn outbox_ack(&self, upto: u64) -> Result<()> {
        self.apply(&Op::OutboxAck { upto }, Mode::Live).map(|_| ())
    }

    /// Callbacks in the outbox now, and callbacks dropped because it was full.
    pub fn outbox_len(&self) -> (usize, u64) {
        let outbox = self.inner.outbox.lock();
        (outbox.entries.len(), outbox.dropped)
    }
}
