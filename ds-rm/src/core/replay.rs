//! Freshness and replay protection for signed requests.
//!
//! A request is fresh if its timestamp lies within `window` of the hub's clock and not before the
//! process started. Signatures of verified requests are remembered (hashed) until their timestamp
//! leaves the window, so an exact replay is refused. For one process the cache lives only in
//! memory: requests signed before a restart are stale afterwards, so nothing about request
//! history touches disk. Processes sharing a database record the digests there instead (a
//! table pruned as they expire), so a request replayed to another process is refused too.

use crate::core::HubError;
use crate::core::RequestError;
use crate::store::Coordinator;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

/// Freshness window and the set of recently seen signatures.
pub struct ReplayGuard {
    window_ms: u64,
    not_before_ms: u64,
    seen: Mutex<Seen>,
    /// Set when other processes share the store: digests are recorded there.
    shared: Option<Arc<dyn Coordinator>>,
}

/// Signature digests still inside the window, findable by digest and by expiry, so that
/// forgetting expired ones costs O(log n) per request instead of a scan of the whole window
/// (at 1,000 requests/s a 60 s window holds 60,000 entries).
#[derive(Default)]
struct Seen {
    digests: HashSet<[u8; 32]>,
    by_expiry: BTreeSet<(u64, [u8; 32])>,
}

impl Seen {
    fn forget_expired(&mut self, now_ms: u64) {
        while let Some(&(expiry, digest)) = self.by_expiry.first() {
            if expiry >= now_ms {
                break;
            }
            self.by_expiry.pop_first();
            self.digests.remove(&digest);
        }
    }
}

impl ReplayGuard {
    /// A guard accepting timestamps within `window_ms` of now and not before `started_ms`.
    pub fn new(window_ms: u64, started_ms: u64) -> Self {
        Self {
            window_ms,
            not_before_ms: started_ms,
            seen: Mutex::new(Seen::default()),
            shared: None,
        }
    }

    /// A guard that records digests through `shared` (processes on one database), or in
    /// memory when `None`.
    /// Shared digests outlive a process, so a restarted process accepts requests signed
    /// before it started (a client failing over to it mid-request) and still refuses replays.
    pub fn shared(window_ms: u64, started_ms: u64, shared: Option<Arc<dyn Coordinator>>) -> Self {
        let not_before = if shared.is_some() { 0 } else { started_ms };
        Self {
            shared,
            ..Self::new(window_ms, not_before)
        }
    }

    /// Rejects timestamps outside the window.
    pub fn check_fresh(&self, timestamp_ms: u64, now_ms: u64) -> Result<(), HubError> {
        let too_old = timestamp_ms.saturating_add(self.window_ms) < now_ms;
        let too_new = timestamp_ms > now_ms.saturating_add(self.window_ms);
        if too_old || too_new || timestamp_ms < self.not_before_ms {
            return Err(HubError::Request(RequestError::Stale));
        }
        Ok(())
    }

    /// Records a verified signature; fails if it was seen within the window.
    pub fn check_and_record(
        &self,
        signature: &[u8],
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), HubError> {
        self.check_fresh(timestamp_ms, now_ms)?;
        let digest: [u8; 32] = Sha256::digest(signature).into();
        let expiry = timestamp_ms.saturating_add(self.window_ms);
        if let Some(shared) = &self.shared {
            return if shared.first_seen(&digest, expiry)? {
                Ok(())
            } else {
                Err(HubError::Request(RequestError::Replayed))
            };
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.forget_expired(now_ms);
        if !seen.digests.insert(digest) {
            return Err(HubError::Request(RequestError::Replayed));
        }
        seen.by_expiry.insert((expiry, digest));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_replay() {
        let g = ReplayGuard::new(1000, 10_000);
        assert!(g.check_fresh(9_999, 10_500).is_err(), "before start");
        assert!(g.check_fresh(10_000, 11_000).is_ok());
        assert!(g.check_fresh(10_000, 11_001).is_err(), "too old");
        assert!(g.check_fresh(12_001, 11_000).is_err(), "too new");
        g.check_and_record(b"sig", 10_100, 10_200).unwrap();
        assert!(matches!(
            g.check_and_record(b"sig", 10_100, 10_300),
            Err(HubError::Request(RequestError::Replayed))
        ));
        g.check_and_record(b"other", 10_100, 10_300).unwrap();
    }

    #[test]
    fn expired_entries_are_forgotten_and_fresh_ones_kept() {
        let g = ReplayGuard::new(1000, 0);
        for i in 0..10_000u32 {
            g.check_and_record(&i.to_be_bytes(), 5_000, 5_000).unwrap();
        }
        assert_eq!(g.seen.lock().unwrap().digests.len(), 10_000);
        // Still inside the window: every one is a replay.
        assert!(matches!(
            g.check_and_record(&7u32.to_be_bytes(), 5_000, 5_900),
            Err(HubError::Request(RequestError::Replayed))
        ));
        // Once their window has passed they are dropped (and would be stale anyway).
        g.check_and_record(b"later", 6_500, 6_500).unwrap();
        let seen = g.seen.lock().unwrap();
        assert_eq!((seen.digests.len(), seen.by_expiry.len()), (1, 1));
    }
}
