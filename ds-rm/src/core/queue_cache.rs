//! A bounded in-memory cache of opened sealed `QueueRef`s.
//!
//! Every fan-out item carries the recipient's `QueueRef`, sealed to this QS with HPKE. A leaf's
//! sealed ref only changes when the member updates its leaf, so the same ciphertexts are opened
//! again for every message to the group: one X25519 decapsulation (~65 µs) per recipient per
//! message. This cache maps the exact sealed bytes to the queue they name. It never touches the
//! disk (a seized disk learns nothing from it), and it is bounded: two generations of at most
//! `capacity` entries, the older dropped whole when the newer fills up.

use crate::core::qs::ClientId;
use crate::store::FastMap;
use std::sync::Mutex;

/// Sealed address bytes → client id, for recently seen addresses.
pub struct QueueRefCache {
    capacity: usize,
    inner: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    young: FastMap<Vec<u8>, ClientId>,
    old: FastMap<Vec<u8>, ClientId>,
}

/// The key a sealed queue address is cached under: its whole ciphertext.
pub fn sealed_key(sealed: &mimi_rm_protocol::queue::HpkeCiphertextWire) -> Vec<u8> {
    let mut key = sealed.kem_output.as_slice().to_vec();
    key.extend_from_slice(sealed.ciphertext.as_slice());
    key
}

impl QueueRefCache {
    /// A cache holding between `capacity` and `2 × capacity` addresses (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Generations::default()),
        }
    }

    /// The client `sealed` names: from the cache, or from `open` (then remembered). Failures
    /// are not cached, so a corrupt ref costs its failed open every time.
    pub fn get_or_open<E>(
        &self,
        sealed: &[u8],
        open: impl FnOnce() -> Result<ClientId, E>,
    ) -> Result<ClientId, E> {
        if self.capacity == 0 {
            return open();
        }
        if let Ok(mut g) = self.inner.lock() {
            if let Some(id) = g.young.get(sealed) {
                return Ok(*id);
            }
            if let Some(id) = g.old.remove(sealed) {
                g.young.insert(sealed.to_vec(), id);
                return Ok(id);
            }
        }
        // Open outside the lock: HPKE is the slow part and must not serialise fan-outs.
        let id = open()?;
        if let Ok(mut g) = self.inner.lock() {
            if g.young.len() >= self.capacity {
                g.old = std::mem::take(&mut g.young);
            }
            g.young.insert(sealed.to_vec(), id);
        }
        Ok(id)
    }

    /// Addresses currently cached (for metrics and tests).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .map(|g| g.young.len() + g.old.len())
            .unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_once_and_stays_bounded() {
        let cache = QueueRefCache::new(2);
        let mut opens = 0;
        let mut get = |k: &[u8], id: u8| {
            cache
                .get_or_open::<()>(k, || {
                    opens += 1;
                    Ok([id; 16])
                })
                .unwrap()
        };
        assert_eq!(get(b"a", 1), [1; 16]);
        assert_eq!(
            get(b"a", 9),
            [1; 16],
            "a cached address is not opened again"
        );
        get(b"b", 2);
        get(b"c", 3); // young was full: {a, b} become old
        get(b"d", 4);
        get(b"e", 5); // {c, d} become old, {a, b} are dropped
        assert_eq!(get(b"a", 7), [7; 16], "evicted addresses are opened again");
        assert_eq!(opens, 6);
        assert!(cache.len() <= 4);
    }

    #[test]
    fn failures_are_not_cached() {
        let cache = QueueRefCache::new(4);
        assert!(cache.get_or_open(b"x", || Err("bad")).is_err());
        assert_eq!(cache.get_or_open::<()>(b"x", || Ok([1; 16])), Ok([1; 16]));
    }
}
