//! Per-key serialisation with a fixed set of lock stripes.
//!
//! Groups and queues use separate stripe arrays and are always taken in the order "group first,
//! then queues in ascending stripe order", which makes deadlock impossible. AS handles have their
//! own stripes; an AS request takes exactly one of them and nothing else, so it cannot deadlock
//! with group or queue requests either. A request that spends a Privacy Pass token takes the
//! token's stripe before anything else ("token, group, queues"), so the order stays total.

use std::sync::{Mutex, MutexGuard};

const STRIPES: usize = 1024;

/// Lock stripes for group ids, queue (client) ids and AS handles.
pub struct KeyLocks {
    groups: Vec<Mutex<()>>,
    queues: Vec<Mutex<()>>,
    handles: Vec<Mutex<()>>,
    tokens: Vec<Mutex<()>>,
}

/// Guards held for the rest of a request.
#[derive(Default)]
pub struct LockSet<'a> {
    guards: Vec<MutexGuard<'a, ()>>,
    queue_stripes: Vec<usize>,
}

fn stripe(key: &[u8]) -> usize {
    // FNV-1a: cheap and good enough to spread random ids over stripes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % STRIPES as u64) as usize
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    // A poisoned stripe only means another request panicked while holding it; the data it
    // protects lives in the database, which that request never committed to.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for KeyLocks {
    fn default() -> Self {
        Self {
            groups: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            queues: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            handles: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            tokens: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl KeyLocks {
    /// Serialises requests on one group. Must be the first lock a request takes.
    pub fn lock_group(&self, group_id: &[u8]) -> LockSet<'_> {
        LockSet {
            guards: vec![lock(&self.groups[stripe(group_id)])],
            queue_stripes: Vec::new(),
        }
    }

    /// Serialises requests spending the token with `nonce` (so a token presented twice at once
    /// is accepted once). Taken first, into an empty set; `None` gives an empty set.
    pub fn lock_token(&self, nonce: Option<&[u8; 32]>) -> LockSet<'_> {
        LockSet {
            guards: nonce
                .map(|n| lock(&self.tokens[stripe(n)]))
                .into_iter()
                .collect(),
            queue_stripes: Vec::new(),
        }
    }

    /// Adds a group lock to a set that holds at most a token lock.
    pub fn add_group<'a>(&'a self, set: &mut LockSet<'a>, group_id: &[u8]) {
        debug_assert!(set.queue_stripes.is_empty(), "group lock after queue locks");
        set.guards.push(lock(&self.groups[stripe(group_id)]));
    }

    /// Serialises AS requests that write one handle's record, so two registrations of the same
    /// handle cannot both succeed. Taken alone or after a token lock: an AS request holds no
    /// other lock.
    pub fn lock_handle(&self, handle: &[u8]) -> LockSet<'_> {
        LockSet {
            guards: vec![lock(&self.handles[stripe(handle)])],
            queue_stripes: Vec::new(),
        }
    }

    /// Adds the locks of `queues` to `set`. Call at most once per set, after any group lock.
    pub fn lock_queues<'a>(&'a self, set: &mut LockSet<'a>, queues: &[[u8; 16]]) {
        let mut stripes: Vec<usize> = queues.iter().map(|q| stripe(q)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        debug_assert!(set.queue_stripes.is_empty(), "queue locks taken twice");
        for s in &stripes {
            set.guards.push(lock(&self.queues[*s]));
        }
        set.queue_stripes = stripes;
    }
}
