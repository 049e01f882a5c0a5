//! What several hub processes on one database must agree on besides the data.
//!
//! One process serialises requests with in-memory lock stripes, remembers request signatures
//! in memory and numbers outbox items with an atomic counter. Processes sharing a database
//! cannot: a backend that can be shared implements [`Coordinator`], and the hub uses it in
//! place of each of those: row locks held in a transaction that also commits the request's
//! batch, inserts that report a conflict, a sequence (`spec-notes/scaling.md`).

use super::{Batch, StoreError};

/// What a lock serialises; each kind has its own stripes, and requests take kinds in the
/// order listed (token, then invitation, then handle or group, then queues), so no two
/// requests can wait for each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockKind {
    /// A Privacy Pass token's nonce: a token presented at two processes at once is spent once.
    Token = 0,
    /// Invited registrations (one stripe): one code, one user.
    Invite = 1,
    /// An AS handle's record.
    Handle = 2,
    /// A group's state.
    Group = 3,
    /// A queue (client id): its sequence numbers and ratchet.
    Queue = 4,
    /// Start-up key creation and issuer key rotation (one stripe): every process ends up
    /// with the same keys.
    Keys = 5,
    /// A peer's outbox: one process delivers it at a time.
    Outbox = 6,
}

impl LockKind {
    /// Every kind, in lock order.
    pub const ALL: [LockKind; 7] = [
        LockKind::Token,
        LockKind::Invite,
        LockKind::Handle,
        LockKind::Group,
        LockKind::Queue,
        LockKind::Keys,
        LockKind::Outbox,
    ];
}

/// How many stripes each lock kind has: keys hash onto them, so unrelated keys rarely share
/// one, and the lock table stays a fixed size whatever the data.
pub const STRIPES: u32 = 1024;

/// The stripe `key` falls on.
pub fn stripe(key: &[u8]) -> u32 {
    // FNV-1a: cheap and good enough to spread random ids over stripes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(STRIPES)) as u32
}

/// Cross-process coordination through the shared database.
pub trait Coordinator: Send + Sync {
    /// Starts holding locks: a database transaction of its own that keeps every lock taken
    /// through it until it is dropped (or its process dies, when the database ends it).
    fn hold(&self) -> Result<Box<dyn HeldLocks>, StoreError>;
    /// Records a request signature digest until `expires_ms`; false if it is already recorded
    /// (a replay, possibly to another process).
    fn first_seen(&self, digest: &[u8; 32], expires_ms: u64) -> Result<bool, StoreError>;
    /// The next number of a sequence shared by all processes, increasing (not gap-free).
    fn next_outbox_seq(&self) -> Result<u64, StoreError>;
}

/// Locks held by one request (see [`Coordinator::hold`]).
pub trait HeldLocks: Send {
    /// Takes the `stripes` of `kind`, waiting for other holders. Stripes are taken in
    /// ascending order.
    fn take(&mut self, kind: LockKind, stripes: &[u32]) -> Result<(), StoreError>;
    /// Takes one stripe only if nobody holds it; false if somebody does.
    fn try_take(&mut self, kind: LockKind, stripe: u32) -> Result<bool, StoreError>;
    /// Applies `batch` in the transaction that holds the locks and commits both at once, so a
    /// batch can only become durable while its locks are still held: if the database ended the
    /// lock transaction (a dropped connection, an administrator), the batch fails instead of
    /// racing the next holder. The holder takes nothing more afterwards.
    fn commit(&mut self, batch: Batch) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_spread_and_stay_in_range() {
        let mut seen = std::collections::HashSet::new();
        for i in 0u32..4096 {
            let s = stripe(&i.to_be_bytes());
            assert!(s < STRIPES);
            seen.insert(s);
        }
        assert!(seen.len() > 900, "4096 keys on only {} stripes", seen.len());
        assert_eq!(stripe(b"same"), stripe(b"same"));
    }
}
