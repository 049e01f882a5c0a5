//! Baseline mode's rate limit: requests per client identity per minute.
//!
//! This is how a conventional DS limits abuse, and it needs exactly the knowledge the RM hub
//! refuses to have: which real client sent each request. RM mode uses Privacy Pass instead
//! (`core::tokens`). Counts live in memory only and are keyed by a hash of the identity.

use crate::core::HubError;
use crate::core::TokenError;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// Fixed one-minute windows of per-identity request counts.
pub struct IdentityLimiter {
    per_minute: u32,
    window: Mutex<Window>,
}

struct Window {
    minute: u64,
    counts: HashMap<[u8; 32], u32>,
}

impl IdentityLimiter {
    /// A limiter allowing `per_minute` requests per identity and minute (0 disables it).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            window: Mutex::new(Window {
                minute: 0,
                counts: HashMap::new(),
            }),
        }
    }

    /// Counts one request of `identity` (e.g. the sender's leaf credential) at `now_ms`, or
    /// refuses it once the identity's count for this minute is used up.
    pub fn admit(&self, identity: &[u8], now_ms: u64) -> Result<(), HubError> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let id: [u8; 32] = Sha256::digest(identity).into();
        let minute = now_ms / 60_000;
        let mut w = self
            .window
            .lock()
            .map_err(|_| HubError::Bug("rate limiter lock poisoned".into()))?;
        if w.minute != minute {
            w.minute = minute;
            w.counts.clear();
        }
        let count = w.counts.entry(id).or_insert(0);
        if *count >= self.per_minute {
            return Err(HubError::Token(TokenError::RateLimited {
                per_minute: self.per_minute,
            }));
        }
        *count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_identity_per_minute() {
        let l = IdentityLimiter::new(2);
        let t = 120_000;
        l.admit(b"alice", t).unwrap();
        l.admit(b"alice", t + 1).unwrap();
        assert!(matches!(
            l.admit(b"alice", t + 2),
            Err(HubError::Token(TokenError::RateLimited { per_minute: 2 }))
        ));
        // Another identity has its own count; the next minute starts afresh.
        l.admit(b"bob", t + 3).unwrap();
        l.admit(b"alice", t + 60_000).unwrap();
    }

    #[test]
    fn zero_disables_the_limit() {
        let l = IdentityLimiter::new(0);
        for i in 0..100 {
            l.admit(b"alice", i).unwrap();
        }
    }
}
