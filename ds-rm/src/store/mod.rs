//! Storage: a small transactional key-value interface and its RocksDB implementation.
//!
//! The core never sees RocksDB. It reads through [`Txn`], which buffers every write of one request
//! in a [`Batch`] that the shell commits atomically (and durably) or drops. The interface is
//! deliberately the shape a distributed transactional KV could implement too.

mod locks;
pub mod mem;
pub mod postgres;
pub mod record;
#[cfg(test)]
mod record_decoding_tests;
mod rocks;
pub mod shared;
pub mod slots;
pub mod wal;

pub use locks::{KeyLocks, LockSet, hold_global};
pub use mem::MemStore;
pub use postgres::PgStore;
pub use record::Record;
pub use rocks::{LiveSst, RocksStore, verify_logs as rocks_verify_logs};
pub use shared::{Coordinator, HeldLocks, LockKind};

use std::collections::HashMap;

/// A hash map for the request path: foldhash with a per-process random seed, so keys a sender
/// chooses cannot be aimed at one bucket from outside, at a fraction of SipHash's cost on the
/// short keys (ids) these maps hold.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Every record kind has its own column family, so a dump shows exactly what each holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// group id → encrypted group state row.
    DsGroups,
    /// group id → the group's routing record (members' signature keys and sealed queue refs),
    /// encrypted under the same EAR key as the state.
    DsRouting,
    /// group id → reservation expiry (seconds).
    DsReservations,
    /// group id ‖ random → the `QueueRef` of a member whose queue is gone, HPKE-sealed to the
    /// group's tombstone key (only the group's members can let the hub open it).
    DsTombstones,
    /// pseudonymous user id → user record.
    QsUsers,
    /// SHA-256(friendship token) → pseudonymous user id.
    QsFriendship,
    /// pseudonymous client id → client record (auth key, user, counters).
    QsClients,
    /// pseudonymous client id → the queue's ratchet state and last rekey. Erasable: kept in the
    /// slot file, overwritten in place, never in the LSM (see [`slots`]).
    QsRatchets,
    /// client id ‖ seq → ratchet ciphertext.
    QsQueues,
    /// client id ‖ index → encrypted AddPackage.
    QsAddPackages,
    /// name → server key material (QS HPKE key).
    ServerKeys,
    /// AS: handle → the user's current client credentials. Kept apart from every DS/QS family
    /// so the identity store never shares keys or records with pseudonymous data.
    AsUsers,
    /// AS: name → AS signing keys and their credentials (root and intermediate).
    AsKeys,
    /// AS: SHA-256(invitation code) → nothing; the unused codes of an invitation-only
    /// provider (`ds-rm invite`), each deleted when a registration uses it.
    AsInvites,
    /// AS: handle → the user's published connection packages (per device).
    AsConnectionPackages,
    /// AS: handle ‖ 0 ‖ random → a sealed connection request waiting for that user.
    AsConnectionRequests,
    /// Federation: peer domain ‖ 0 ‖ seq → a fan-out item waiting for delivery to that peer,
    /// HPKE-sealed to the peer's QS key (only the peer can open it).
    FedOutbox,
    /// Federation: peer domain → that peer's QS public key, which outbox items are sealed to.
    FedPeerKeys,
    /// Federation: sender domain ‖ 0 ‖ created ms ‖ item id → nothing; delivered item ids, so a
    /// retried delivery is enqueued once.
    FedSeen,
    /// Privacy Pass: key epoch → issuer key material (`k` ‖ epoch) or, once expired, only the
    /// key ids (`r` ‖ epoch), so expired tokens get a precise error.
    PpKeys,
    /// Privacy Pass: key epoch ‖ token type ‖ nonce → nothing; spent tokens, pruned with their
    /// key epoch.
    PpSpent,
    /// pseudonymous client id → the client's push subscription, sealed under its
    /// `PushTokenEarKey`, which is never stored here (it arrives in sealed queue refs).
    QsPush,
    /// AS: labelled digest of a revoked device's identity → the last second its credentials
    /// were valid (8 bytes, big-endian); the signed revocation list is read from here and an
    /// entry goes when no credential it covers can verify any more.
    AsRevoked,
    /// random id → a message stored once for all its local recipients (month, EAR ciphertext
    /// under a key held only inside their queue entries).
    QsStored,
    /// stored id ‖ digest of a release ticket → nothing: one row per recipient that has not
    /// yet released the stored message.
    QsStoredTickets,
}

impl Cf {
    /// All column families, in a fixed order.
    pub const ALL: [Cf; 25] = [
        Cf::DsGroups,
        Cf::DsRouting,
        Cf::DsReservations,
        Cf::DsTombstones,
        Cf::QsUsers,
        Cf::QsFriendship,
        Cf::QsClients,
        Cf::QsRatchets,
        Cf::QsQueues,
        Cf::QsAddPackages,
        Cf::ServerKeys,
        Cf::AsUsers,
        Cf::AsKeys,
        Cf::AsInvites,
        Cf::AsConnectionPackages,
        Cf::AsConnectionRequests,
        Cf::FedOutbox,
        Cf::FedPeerKeys,
        Cf::FedSeen,
        Cf::PpKeys,
        Cf::PpSpent,
        // New families go last: a family's index is part of the slot file's keys.
        Cf::QsPush,
        Cf::AsRevoked,
        Cf::QsStored,
        Cf::QsStoredTickets,
    ];

    /// The RocksDB column-family name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::DsGroups => "ds_groups",
            Cf::DsRouting => "ds_routing",
            Cf::DsReservations => "ds_reservations",
            Cf::DsTombstones => "ds_tombstones",
            Cf::QsUsers => "qs_users",
            Cf::QsFriendship => "qs_friendship",
            Cf::QsClients => "qs_clients",
            Cf::QsRatchets => "qs_ratchets",
            Cf::QsQueues => "qs_queues",
            Cf::QsAddPackages => "qs_add_packages",
            Cf::ServerKeys => "server_keys",
            Cf::AsUsers => "as_users",
            Cf::AsKeys => "as_keys",
            Cf::AsInvites => "as_invites",
            Cf::AsConnectionPackages => "as_connection_packages",
            Cf::AsConnectionRequests => "as_connection_requests",
            Cf::FedOutbox => "fed_outbox",
            Cf::FedPeerKeys => "fed_peer_keys",
            Cf::FedSeen => "fed_seen",
            Cf::PpKeys => "pp_keys",
            Cf::PpSpent => "pp_spent",
            Cf::QsPush => "qs_push",
            Cf::AsRevoked => "as_revoked",
            Cf::QsStored => "qs_stored",
            Cf::QsStoredTickets => "qs_stored_tickets",
        }
    }
}

impl Cf {
    /// Whether this family's values must vanish from the files when overwritten or deleted.
    /// The RocksDB store keeps these in the [`slots::SlotFile`] instead of the LSM, whose log
    /// and SST files keep old values; their values must fit a slot.
    pub fn is_erasable(self) -> bool {
        matches!(self, Cf::QsRatchets)
    }
}

/// What one [`Store::scrub`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Column families flushed and compacted (0: nothing was written since the last scrub).
    pub families: usize,
    /// Sequence number the scrub covered: every write up to it is now only in SST files that
    /// hold no older version of any key.
    pub sequence: u64,
}

/// Storage failures; always a server fault, never the client's. The backend's own error type
/// stays behind a box, so no database type reaches the core.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database backend reported an error.
    #[error("storage backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A column family is missing (database opened by an incompatible version).
    #[error("missing column family {0}")]
    MissingCf(&'static str),
    /// A stored record does not decode as its kind: the data on disk is damaged or was written
    /// by an incompatible version.
    #[error("corrupt {record}: {reason}")]
    Corrupt {
        /// Which record kind (its column family, or what was being read).
        record: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A record about to be written is larger than its kind allows: a bug, caught before the
    /// record reaches the disk where it could not be read back.
    #[error("record for {cf} is {len} bytes, limit {max}")]
    Oversize {
        /// The column family.
        cf: &'static str,
        /// Its encoded length.
        len: usize,
        /// The kind's limit.
        max: usize,
    },
    /// A record could not be encoded (a length beyond what its wire type can express).
    #[error("record for {cf} does not encode: {reason}")]
    Encode {
        /// The column family.
        cf: &'static str,
        /// The codec's reason.
        reason: String,
    },
}

impl StoreError {
    /// Wraps a backend's error.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(e))
    }
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);
/// A key and its value in a column family.
pub type CfEntry = (Cf, Vec<u8>, Vec<u8>);

/// One buffered write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put(Cf, Vec<u8>, Vec<u8>),
    /// Remove `key`.
    Delete(Cf, Vec<u8>),
}

/// The writes of one request, applied all together or not at all.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Writes in order.
    pub ops: Vec<Op>,
}

/// A transactional key-value store.
pub trait Store: Send + Sync + 'static {
    /// Reads one value.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// All entries whose key starts with `prefix`, in key order, at most `limit`.
    fn scan_prefix(&self, cf: Cf, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Reads several values of one family at once (in `keys`' order). One lookup each by
    /// default; a networked store answers them in one round trip.
    fn get_many(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|k| self.get(cf, k)).collect()
    }
    /// Applies a batch atomically; returns only once it is durable under the sync policy.
    fn write(&self, batch: Batch) -> Result<(), StoreError>;
    /// Every entry of every column family (audit and tests).
    fn dump(&self) -> Result<Vec<CfEntry>, StoreError>;
    /// Makes overwritten and deleted values unrecoverable from the store's files: a store that
    /// keeps old versions (a log-structured one) rewrites what changed since the last scrub so
    /// that only current values remain. The hub calls it periodically and at shutdown; a
    /// store without history has nothing to do.
    fn scrub(&self) -> Result<ScrubReport, StoreError> {
        Ok(ScrubReport::default())
    }
    /// The store's own figures for operators, per column family where they are kept so: how
    /// many keys (an estimate where the engine only estimates), bytes on disk, bytes in memory.
    /// Totals only: nothing here names a record.
    fn statistics(&self) -> Vec<Statistic> {
        Vec::new()
    }
    /// Cross-process coordination, for a store that other hub processes share; `None` (the
    /// default) for a store only this process opens, whose in-memory locks then suffice.
    fn coordinator(&self) -> Option<std::sync::Arc<dyn Coordinator>> {
        None
    }
    /// Applies a batch through the lock transaction `held` of a shared store (see
    /// [`HeldLocks::commit`]); wrappers that act on durable batches see these too.
    fn write_held(&self, batch: Batch, held: &mut dyn HeldLocks) -> Result<(), StoreError> {
        held.commit(batch)
    }
}

/// One store figure ([`Store::statistics`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statistic {
    /// What is counted: `keys`, `sst_bytes`, `memtable_bytes`, `pending_compaction_bytes`.
    pub name: &'static str,
    /// The column family it is for.
    pub cf: Cf,
    /// The figure.
    pub value: u64,
}

/// Read-your-writes view over a store for the duration of one request.
pub struct Txn<'s> {
    store: &'s dyn Store,
    batch: Batch,
    /// Per family (indexed by [`Cf`]'s discriminant): the latest op of `batch` for each key
    /// this transaction wrote (its index), so a read of one's own write finds it without a
    /// second copy of every value, and a lookup needs no owned key.
    overlay: Vec<FastMap<Vec<u8>, usize>>,
    /// Per family: committed values read ahead by [`Txn::prefetch`], under the locks the
    /// request holds.
    read_ahead: Vec<FastMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl<'s> Txn<'s> {
    /// Starts an empty transaction.
    pub fn new(store: &'s dyn Store) -> Self {
        Self {
            store,
            batch: Batch::default(),
            overlay: (0..Cf::ALL.len()).map(|_| FastMap::default()).collect(),
            read_ahead: (0..Cf::ALL.len()).map(|_| FastMap::default()).collect(),
        }
    }

    /// Reads a value, seeing this transaction's own writes.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(&i) = self.overlay[cf as usize].get(key) {
            return Ok(self.written(i).map(<[u8]>::to_vec));
        }
        if let Some(v) = self.read_ahead[cf as usize].get(key) {
            return Ok(v.clone());
        }
        self.store.get(cf, key)
    }

    /// Reads `keys` of `cf` ahead, in one call to the store, for the `get`s that follow (a
    /// fan-out reads every recipient's record: one round trip instead of one per recipient on
    /// a networked store). Call only under the locks that keep those keys unchanged until the
    /// request commits, as for any read.
    pub fn prefetch(&mut self, cf: Cf, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut wanted: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| {
                !self.overlay[cf as usize].contains_key(k.as_slice())
                    && !self.read_ahead[cf as usize].contains_key(k.as_slice())
            })
            .cloned()
            .collect();
        // Two recipients may name one queue (a member can copy another's sealed ref): ask once.
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        let values = self.store.get_many(cf, &wanted)?;
        for (k, v) in wanted.into_iter().zip(values) {
            self.read_ahead[cf as usize].insert(k, v);
        }
        Ok(())
    }

    /// Prefix scan of committed data merged with this transaction's writes.
    pub fn scan_prefix(
        &self,
        cf: Cf,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        // Each of this transaction's deletes can hide at most one committed entry, so the first
        // `limit + deletes` committed entries hold at least `limit` survivors when there are
        // that many: the store is never asked for more than the answer can use.
        let deletes = self.overlay[cf as usize]
            .iter()
            .filter(|(k, i)| self.written(**i).is_none() && k.starts_with(prefix))
            .count();
        let mut merged: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = self
            .store
            .scan_prefix(cf, prefix, limit.saturating_add(deletes))?
            .into_iter()
            .collect();
        for (k, i) in &self.overlay[cf as usize] {
            if k.starts_with(prefix) {
                match self.written(*i) {
                    Some(v) => merged.insert(k.clone(), v.to_vec()),
                    None => merged.remove(k),
                };
            }
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    /// Buffers a write.
    pub fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.overlay[cf as usize].insert(key.clone(), self.batch.ops.len());
        self.batch.ops.push(Op::Put(cf, key, value));
    }

    /// Buffers a delete.
    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.overlay[cf as usize].insert(key.clone(), self.batch.ops.len());
        self.batch.ops.push(Op::Delete(cf, key));
    }

    /// The value op `i` of the batch writes (`None` for a delete).
    fn written(&self, i: usize) -> Option<&[u8]> {
        match self.batch.ops.get(i) {
            Some(Op::Put(_, _, v)) => Some(v),
            _ => None,
        }
    }

    /// Whether anything was written.
    pub fn is_empty(&self) -> bool {
        self.batch.ops.is_empty()
    }

    /// The bytes this transaction would hand the store — keys and values of its puts, keys of
    /// its deletes — per column family: how benchmarks compare write strategies.
    pub fn pending_bytes(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut out = std::collections::BTreeMap::new();
        for op in &self.batch.ops {
            let (cf, n) = match op {
                Op::Put(cf, k, v) => (cf, k.len() + v.len()),
                Op::Delete(cf, k) => (cf, k.len()),
            };
            *out.entry(cf.name()).or_insert(0) += n;
        }
        out
    }

    /// Commits all buffered writes atomically.
    pub fn commit(self) -> Result<(), StoreError> {
        if self.batch.ops.is_empty() {
            return Ok(());
        }
        self.store.write(self.batch)
    }

    /// Commits all buffered writes atomically while `locks` are held: on a shared store in the
    /// same database transaction as the locks (a batch never outlives them), otherwise as
    /// [`Txn::commit`].
    pub fn commit_under(self, locks: &mut LockSet<'_>) -> Result<(), StoreError> {
        if self.batch.ops.is_empty() {
            return Ok(());
        }
        match locks.held() {
            Some(held) => self.store.write_held(self.batch, held),
            None => self.store.write(self.batch),
        }
    }
}

#[cfg(test)]
mod txn_tests {
    use super::*;

    #[test]
    fn every_family_has_its_own_overlay_map() {
        let mut seen: Vec<usize> = Cf::ALL.iter().map(|cf| *cf as usize).collect();
        assert!(seen.iter().all(|i| *i < Cf::ALL.len()));
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), Cf::ALL.len());
    }

    #[test]
    fn a_transaction_reads_its_own_latest_write_per_family() {
        let store = MemStore::default();
        let mut txn = Txn::new(&store);
        txn.put(Cf::QsQueues, b"k".to_vec(), b"1".to_vec());
        txn.put(Cf::QsClients, b"k".to_vec(), b"other family".to_vec());
        txn.put(Cf::QsQueues, b"k".to_vec(), b"2".to_vec());
        assert_eq!(txn.get(Cf::QsQueues, b"k").unwrap(), Some(b"2".to_vec()));
        txn.delete(Cf::QsQueues, b"k".to_vec());
        assert_eq!(txn.get(Cf::QsQueues, b"k").unwrap(), None);
        assert_eq!(
            txn.get(Cf::QsClients, b"k").unwrap(),
            Some(b"other family".to_vec())
        );
        assert!(txn.scan_prefix(Cf::QsQueues, b"", 10).unwrap().is_empty());
        assert_eq!(txn.scan_prefix(Cf::QsClients, b"", 10).unwrap().len(), 1);
    }
}
