//! A store whose journal is given to it (feature `cluster`: a shard's JetStream stream).

use std::sync::Arc;

use super::Store;
use crate::config::Config;
use crate::journal::{Journal, OpenError, Recovered, RecoveryReport};

impl Store {
    /// Opens a store on a journal that `open` makes: `open` feeds the recovered records to the
    /// callback it is given — the same replay path `Store::open` uses — and returns the
    /// journal, ready to append. No background snapshots.
    pub(crate) fn open_with_journal(
        config: Config,
        open: impl FnOnce(
            &mut dyn FnMut(Recovered<'_>) -> Result<(), String>,
        ) -> Result<(Journal, RecoveryReport), OpenError>,
    ) -> Result<Store, OpenError> {
        let store = Store::empty(config).map_err(OpenError::Config)?;
        let (journal, report) = open(&mut |rec| store.recover(rec))?;
        store.erasures_at_open(&journal);
        let _ = store.inner.journal.set(Arc::new(journal));
        let _ = store.inner.recovery.set(report);
        store.import_admins().map_err(OpenError::Config)?;
        Ok(store)
    }
}

impl Store {
    /// Builds a snapshot covering stream records up to `cut` without touching a live store:
    /// `feed` hands the previous snapshot's records and the stream's records after it to a
    /// scratch store (as the file journal's checkpoint replays its segments), which is then
    /// captured. Recalled and expired bodies are not in it.
    pub(crate) fn build_snapshot(
        config: &Config,
        cut: u64,
        feed: impl FnOnce(&mut dyn FnMut(Recovered<'_>) -> Result<(), String>) -> Result<(), String>,
    ) -> crate::Result<Vec<u8>> {
        let scratch = Store::empty(config.clone().with_hooks(Arc::new(crate::NoHooks)))?;
        feed(&mut |rec| scratch.recover(rec))
            .map_err(|e| crate::Error::Internal(format!("building a shard snapshot: {e}")))?;
        let capture = scratch.capture();
        crate::journal::snapshot_bytes(cut, |w| capture.write(w))
            .map_err(|e| crate::Error::Internal(format!("writing a shard snapshot: {e}")))
    }
}
