//! Who is listening for which queue, and the store wrapper that tells them when it grew.
//!
//! Live delivery (a client's open WebSocket) needs to know the moment a message is durably in
//! that client's queue. Rather than threading "queues touched" through every operation, the
//! hub's store is wrapped: after a batch is durable, every queue that got an entry in it is
//! signalled. Only queues somebody listens to are looked up; nothing is stored or logged.

use super::qs::ClientId;
use crate::store::{Batch, Cf, CfEntry, Entry, Op, ScrubReport, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Live listeners by queue (client id), in memory only.
#[derive(Default)]
pub struct QueueSignal {
    /// One counter per listened-to queue, bumped when it grows; every listener of the queue
    /// holds a receiver, so none misses a change while it is busy.
    queues: Mutex<HashMap<ClientId, watch::Sender<u64>>>,
}

impl std::fmt::Debug for QueueSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSignal")
            .field("queues", &self.listened())
            .finish()
    }
}

/// A listener's view of one queue; dropping it stops listening.
pub struct Listening {
    client: ClientId,
    signal: Arc<QueueSignal>,
    rx: watch::Receiver<u64>,
}

impl Listening {
    /// Resolves once the queue grew since the last call (or since listening began).
    pub async fn grown(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let mut queues = self.signal.lock();
        // Our receiver is still alive here, so one receiver left means it was the last.
        if queues
            .get(&self.client)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            queues.remove(&self.client);
        }
    }
}

impl QueueSignal {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, watch::Sender<u64>>> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts listening to `client`'s queue.
    pub fn listen(self: &Arc<Self>, client: ClientId) -> Listening {
        let rx = self
            .lock()
            .entry(client)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Listening {
            client,
            signal: self.clone(),
            rx,
        }
    }

    /// Whether anyone listens to `client`'s queue now (a live client needs no push).
    pub fn is_listened(&self, client: &ClientId) -> bool {
        self.lock()
            .get(client)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// How many queues have a listener.
    pub fn listened(&self) -> usize {
        self.lock().len()
    }

    /// The listened-to queues that `batch` adds an entry to (a queue key is the client id,
    /// then the sequence number).
    fn touched(&self, batch: &Batch) -> Vec<ClientId> {
        let queues = self.lock();
        if queues.is_empty() {
            return Vec::new();
        }
        let mut ids: Vec<ClientId> = batch
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Put(Cf::QsQueues, key, _) => key.first_chunk::<16>().copied(),
                _ => None,
            })
            .filter(|id| queues.contains_key(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Signals the listeners of `ids`.
    fn grew(&self, ids: &[ClientId]) {
        let queues = self.lock();
        for id in ids {
            if let Some(tx) = queues.get(id) {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
}

/// A store that signals [`QueueSignal`] after each durable batch; everything else is the inner
/// store's.
pub struct Signalling {
    inner: Arc<dyn Store>,
    signal: Arc<QueueSignal>,
}

impl Signalling {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, signal: Arc<QueueSignal>) -> Self {
        Self { inner, signal }
    }
}

impl Store for Signalling {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(cf, key)
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan_prefix(cf, prefix, limit)
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let touched = self.signal.touched(&batch);
        self.inner.write(batch)?;
        // Only now is the entry durable: a listener that fetches at once finds it.
        self.signal.grew(&touched);
        Ok(())
    }

    fn write_held(
        &self,
        batch: Batch,
        held: &mut dyn crate::store::HeldLocks,
    ) -> Result<(), StoreError> {
        let touched = self.signal.touched(&batch);
        self.inner.write_held(batch, held)?;
        self.signal.grew(&touched);
        Ok(())
    }

    fn dump(&self) -> Result<Vec<CfEntry>, StoreError> {
        self.inner.dump()
    }

    fn scrub(&self) -> Result<ScrubReport, StoreError> {
        self.inner.scrub()
    }

    fn statistics(&self) -> Vec<crate::store::Statistic> {
        self.inner.statistics()
    }

    fn get_many(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.inner.get_many(cf, keys)
    }

    fn coordinator(&self) -> Option<Arc<dyn crate::store::Coordinator>> {
        self.inner.coordinator()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Txn;
    use crate::store::mem::MemStore;

    #[tokio::test]
    async fn a_listener_hears_its_own_queue_only_and_after_the_write() {
        let signal = Arc::new(QueueSignal::default());
        let store = Signalling::new(Arc::new(MemStore::default()), signal.clone());
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let mut la = signal.listen(a);
        assert!(signal.is_listened(&a) && !signal.is_listened(&b));

        let mut txn = Txn::new(&store);
        let mut key = b.to_vec();
        key.extend_from_slice(&0u64.to_be_bytes());
        txn.put(Cf::QsQueues, key, b"x".to_vec());
        txn.commit().unwrap();
        assert!(!la.rx.has_changed().unwrap(), "b's queue is not a's");

        let mut txn = Txn::new(&store);
        let mut key = a.to_vec();
        key.extend_from_slice(&7u64.to_be_bytes());
        txn.put(Cf::QsQueues, key.clone(), b"y".to_vec());
        txn.commit().unwrap();
        assert!(la.grown().await);
        assert_eq!(store.get(Cf::QsQueues, &key).unwrap(), Some(b"y".to_vec()));

        drop(la);
        assert!(!signal.is_listened(&a) && signal.listened() == 0);
    }
}
