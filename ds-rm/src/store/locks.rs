//! Per-key serialisation with a fixed set of lock stripes.
//!
//! Groups and queues use separate stripe arrays and are always taken in the order "group first,
//! then queues in ascending stripe order", which makes deadlock impossible. AS handles have their
//! own stripes; an AS request takes exactly one of them and nothing else (but an invitation
//! lock before it), so it cannot deadlock with group or queue requests either. A request that
//! spends a Privacy Pass token takes the token's stripe before anything else ("token, group,
//! queues"), so the order stays total.
//!
//! One process uses in-memory stripes. Processes sharing a database take the same stripes as
//! rows of the database's lock table instead ([`Coordinator`]), in the same order, so the
//! argument carries over to any number of processes.

use super::StoreError;
use super::shared::{Coordinator, HeldLocks, LockKind, STRIPES, stripe};
use std::sync::{Arc, Mutex, MutexGuard};

/// Lock stripes for group ids, queue (client) ids, AS handles and token nonces.
pub struct KeyLocks {
    groups: Vec<Mutex<()>>,
    queues: Vec<Mutex<()>>,
    handles: Vec<Mutex<()>>,
    tokens: Vec<Mutex<()>>,
    invites: Mutex<()>,
    /// Set when the store is shared with other processes: locks are then taken there.
    shared: Option<Arc<dyn Coordinator>>,
}

/// Guards held for the rest of a request.
#[derive(Default)]
pub struct LockSet<'a> {
    guards: Vec<MutexGuard<'a, ()>>,
    queue_stripes: Vec<u32>,
    held: Option<Box<dyn HeldLocks>>,
}

impl LockSet<'_> {
    /// The database lock transaction, when the locks are held in a shared store.
    pub fn held(&mut self) -> Option<&mut dyn HeldLocks> {
        match &mut self.held {
            Some(h) => Some(h.as_mut()),
            None => None,
        }
    }
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    // A poisoned stripe only means another request panicked while holding it; the data it
    // protects lives in the database, which that request never committed to.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn stripes() -> Vec<Mutex<()>> {
    (0..STRIPES).map(|_| Mutex::new(())).collect()
}

impl Default for KeyLocks {
    fn default() -> Self {
        Self::new(None)
    }
}

impl KeyLocks {
    /// In-memory stripes, or (with `shared`) the database's.
    pub fn new(shared: Option<Arc<dyn Coordinator>>) -> Self {
        Self {
            groups: stripes(),
            queues: stripes(),
            handles: stripes(),
            tokens: stripes(),
            invites: Mutex::new(()),
            shared,
        }
    }

    /// Takes `kind`'s `stripes` (sorted) into `set`: locally, or in the shared database.
    fn take<'a>(
        &'a self,
        set: &mut LockSet<'a>,
        kind: LockKind,
        sorted: &[u32],
    ) -> Result<(), StoreError> {
        if sorted.is_empty() {
            return Ok(());
        }
        if let Some(shared) = &self.shared {
            let held = match &mut set.held {
                Some(h) => h,
                None => set.held.insert(shared.hold()?),
            };
            return held.take(kind, sorted);
        }
        for s in sorted {
            let m = match kind {
                LockKind::Token => &self.tokens[*s as usize],
                LockKind::Group => &self.groups[*s as usize],
                LockKind::Queue => &self.queues[*s as usize],
                LockKind::Handle => &self.handles[*s as usize],
                LockKind::Invite => &self.invites,
                // Only processes sharing a store take these (`hold_global`, the outbox
                // claim); alone, a process's own mutexes serialise the same work.
                LockKind::Keys | LockKind::Outbox => continue,
            };
            set.guards.push(lock(m));
        }
        Ok(())
    }

    /// Serialises requests on one group. Must be the first lock a request takes.
    pub fn lock_group(&self, group_id: &[u8]) -> Result<LockSet<'_>, StoreError> {
        let mut set = LockSet::default();
        self.take(&mut set, LockKind::Group, &[stripe(group_id)])?;
        Ok(set)
    }

    /// Serialises requests spending the token with `nonce` (so a token presented twice at once
    /// is accepted once). Taken first, into an empty set; `None` gives an empty set.
    pub fn lock_token(&self, nonce: Option<&[u8; 32]>) -> Result<LockSet<'_>, StoreError> {
        let mut set = LockSet::default();
        if let Some(n) = nonce {
            self.take(&mut set, LockKind::Token, &[stripe(n)])?;
        }
        Ok(set)
    }

    /// Adds a group lock to a set that holds at most a token lock.
    pub fn add_group<'a>(
        &'a self,
        set: &mut LockSet<'a>,
        group_id: &[u8],
    ) -> Result<(), StoreError> {
        debug_assert!(set.queue_stripes.is_empty(), "group lock after queue locks");
        self.take(set, LockKind::Group, &[stripe(group_id)])
    }

    /// Serialises invited registrations (one code, one user), after a token lock and before
    /// the handle's.
    pub fn add_invites<'a>(&'a self, set: &mut LockSet<'a>) -> Result<(), StoreError> {
        self.take(set, LockKind::Invite, &[0])
    }

    /// Serialises AS requests that write one handle's record, so two registrations of the same
    /// handle cannot both succeed. Taken after any token and invitation lock: an AS request
    /// holds no other lock.
    pub fn add_handle<'a>(
        &'a self,
        set: &mut LockSet<'a>,
        handle: &[u8],
    ) -> Result<(), StoreError> {
        self.take(set, LockKind::Handle, &[stripe(handle)])
    }

    /// Adds the locks of `queues` to `set`. Call at most once per set, after any group lock.
    pub fn lock_queues<'a>(
        &'a self,
        set: &mut LockSet<'a>,
        queues: &[[u8; 16]],
    ) -> Result<(), StoreError> {
        let mut sorted: Vec<u32> = queues.iter().map(|q| stripe(q)).collect();
        sorted.sort_unstable();
        sorted.dedup();
        debug_assert!(set.queue_stripes.is_empty(), "queue locks taken twice");
        self.take(set, LockKind::Queue, &sorted)?;
        set.queue_stripes = sorted;
        Ok(())
    }

    /// Holds `kind`'s one global stripe (key creation, rotation) across processes; `None`
    /// when the store is not shared (the caller's own mutex then suffices).
    pub fn hold_global(&self, kind: LockKind) -> Result<Option<Box<dyn HeldLocks>>, StoreError> {
        hold_global(self.shared.as_deref(), kind)
    }
}

/// [`KeyLocks::hold_global`] for code that has only the store's coordinator.
pub fn hold_global(
    shared: Option<&dyn Coordinator>,
    kind: LockKind,
) -> Result<Option<Box<dyn HeldLocks>>, StoreError> {
    let Some(shared) = shared else {
        return Ok(None);
    };
    let mut held = shared.hold()?;
    held.take(kind, &[0])?;
    Ok(Some(held))
}
