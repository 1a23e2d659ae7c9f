//! Fault injection for tests (cargo feature `fault-injection`, off in every normal build): hold
//! the journal's writer before it writes or before it fsyncs, or make reserving disk space fail
//! as it does on a full disk. Tests use it to prove that nothing is visible before it is
//! durable, and that a full disk refuses operations and recovers when space comes back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// The faults a test can inject into one store's journal.
#[derive(Debug, Default)]
pub struct Faults {
    /// While closed, the journal's writer waits before writing a batch.
    pub hold_write: Gate,
    /// While closed, the journal's writer waits after writing a batch, before its fsync.
    pub hold_fsync: Gate,
    /// While closed, a checkpoint waits after switching segments, before building its
    /// snapshot.
    pub hold_checkpoint: Gate,
    no_space: AtomicBool,
    no_new_segment: AtomicBool,
}

impl Faults {
    /// Makes every reservation of disk space fail with `ENOSPC` (`true`), and every write of
    /// a batch past the space reserved, as on a full disk; or succeed again.
    pub fn set_no_space(&self, on: bool) {
        self.no_space.store(on, Ordering::SeqCst);
    }

    pub(crate) fn no_space(&self) -> bool {
        self.no_space.load(Ordering::SeqCst)
    }

    /// Makes starting a new journal segment fail once its file is open, before its header is
    /// written (`true`), as a full disk or an I/O error would; or succeed again.
    pub fn set_no_new_segment(&self, on: bool) {
        self.no_new_segment.store(on, Ordering::SeqCst);
    }

    pub(crate) fn no_new_segment(&self) -> bool {
        self.no_new_segment.load(Ordering::SeqCst)
    }
}

/// A gate threads wait at while it is closed.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    waiting: usize,
}

impl Gate {
    /// Closes the gate: threads arriving now wait.
    pub fn close(&self) {
        self.state.lock().closed = true;
    }

    /// Opens the gate and lets every waiting thread through.
    pub fn open(&self) {
        self.state.lock().closed = false;
        self.changed.notify_all();
    }

    /// Waits until at least `n` threads are held at the gate; `false` if that did not happen
    /// within `timeout`.
    pub fn wait_for_held(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock();
        while st.waiting < n {
            if self.changed.wait_until(&mut st, deadline).timed_out() {
                return st.waiting >= n;
            }
        }
        true
    }

    /// How many threads are held at the gate now.
    pub fn held(&self) -> usize {
        self.state.lock().waiting
    }

    /// Passes the gate, waiting while it is closed.
    pub(crate) fn pass(&self) {
        let mut st = self.state.lock();
        if !st.closed {
            return;
        }
        st.waiting += 1;
        self.changed.notify_all();
        while st.closed {
            self.changed.wait(&mut st);
        }
        st.waiting -= 1;
    }
}
