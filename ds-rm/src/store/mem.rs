//! An in-memory [`Store`]: the same contract as RocksDB without a disk, so the sans-I/O core
//! runs in unit tests and benchmarks in-process, and a test can compare whole snapshots before
//! and after a refused request.

use super::{Batch, Cf, CfEntry, Entry, Op, Statistic, Store, StoreError};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

type Rows = BTreeMap<(Cf, Vec<u8>), Vec<u8>>;

/// Every entry in one ordered map, behind a lock; batches apply atomically under it.
#[derive(Debug, Default)]
pub struct MemStore {
    rows: Mutex<Rows>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn rows(&self) -> MutexGuard<'_, Rows> {
        // A panic while holding the lock cannot leave a half-applied batch (a batch is applied
        // in one loop without fallible steps), so a poisoned lock still guards consistent data.
        self.rows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of entries across all column families.
    pub fn len(&self) -> usize {
        self.rows().len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.rows().is_empty()
    }
}

impl Store for MemStore {
    fn statistics(&self) -> Vec<Statistic> {
        let rows = self.rows();
        Cf::ALL
            .into_iter()
            .map(|cf| Statistic {
                name: "keys",
                cf,
                value: rows.keys().filter(|(c, _)| *c == cf).count() as u64,
            })
            .collect()
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.rows().get(&(cf, key.to_vec())).cloned())
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .rows()
            .range((cf, prefix.to_vec())..)
            .take_while(|((c, k), _)| *c == cf && k.starts_with(prefix))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let mut rows = self.rows();
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => rows.insert((cf, k), v),
                Op::Delete(cf, k) => rows.remove(&(cf, k)),
            };
        }
        Ok(())
    }

    fn dump(&self) -> Result<Vec<CfEntry>, StoreError> {
        Ok(self
            .rows()
            .iter()
            .map(|((c, k), v)| (*c, k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Txn;

    #[test]
    fn prefix_scans_stop_at_the_prefix_and_the_limit() {
        let store = MemStore::new();
        let mut txn = Txn::new(&store);
        for k in [&b"a1"[..], b"a2", b"a3", b"b1"] {
            txn.put(Cf::QsQueues, k.to_vec(), k.to_vec());
        }
        txn.put(Cf::QsClients, b"a0".to_vec(), vec![]);
        txn.commit().unwrap();
        let keys = |limit| -> Vec<Vec<u8>> {
            store
                .scan_prefix(Cf::QsQueues, b"a", limit)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(
            keys(10),
            vec![b"a1".to_vec(), b"a2".to_vec(), b"a3".to_vec()]
        );
        assert_eq!(keys(2), vec![b"a1".to_vec(), b"a2".to_vec()]);
    }

    #[test]
    fn a_transaction_scan_sees_its_own_writes_within_the_limit() {
        let store = MemStore::new();
        let mut txn = Txn::new(&store);
        for i in 0u8..6 {
            txn.put(Cf::QsQueues, vec![b'q', i], vec![i]);
        }
        txn.commit().unwrap();
        let mut txn = Txn::new(&store);
        // Deletes of the first three committed entries must not shorten a limited answer.
        for i in 0u8..3 {
            txn.delete(Cf::QsQueues, vec![b'q', i]);
        }
        txn.put(Cf::QsQueues, vec![b'q', 9], vec![9]);
        let got: Vec<u8> = txn
            .scan_prefix(Cf::QsQueues, b"q", 2)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k[1])
            .collect();
        assert_eq!(got, vec![3, 4]);
        let all: Vec<u8> = txn
            .scan_prefix(Cf::QsQueues, b"q", 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k[1])
            .collect();
        assert_eq!(all, vec![3, 4, 5, 9]);
    }
}
