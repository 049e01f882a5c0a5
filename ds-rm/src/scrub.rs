//! The scrub schedule: the I/O shell around [`Store::scrub`], which is what bounds how long an
//! overwritten or deleted value stays in the data directory's files.

use crate::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Scrubs `store` every `every`, forever, the first time one period after the call (the hub
/// scrubs once before it opens its port). Each scrub runs on a blocking thread (it flushes and
/// compacts); a failed one is logged and retried at the next tick, its families still marked.
pub async fn run(store: Arc<dyn Store>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = store.clone();
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || store.scrub()).await {
            Ok(Ok(report)) if report.families > 0 => tracing::debug!(
                families = report.families,
                sequence = report.sequence,
                ms = started.elapsed().as_millis() as u64,
                "scrubbed: old values dropped from the files"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "scrub failed; retrying next interval"),
            Err(e) => tracing::error!(error = %e, "scrub task panicked"),
        }
    }
}

/// The scrub after the last request: a cleanly stopped hub leaves no old value in its files.
pub fn at_shutdown(store: &dyn Store) {
    let started = Instant::now();
    match store.scrub() {
        Ok(report) => tracing::info!(
            families = report.families,
            ms = started.elapsed().as_millis() as u64,
            "final scrub done: the data directory holds current values only"
        ),
        Err(e) => tracing::error!(
            error = %e,
            "final scrub failed: old values may remain in the data directory's files"
        ),
    }
}
