//! Which clients are owed a push, and the queue to the push worker (`crate::push`).
//!
//! A wake-up is owed when a message is enqueued for a client whose queue ref carried its push
//! key and that has no live socket open. One wake-up per burst: once pushed, a client is not
//! pushed again until it dequeues (or [`REPUSH_AFTER_MS`] passed, in case the first push was
//! dismissed unseen). All of this is in memory; the key travels with the job and is gone after.

use super::qs::{ClientId, PushRecord};
use super::{Hub, HubError};
use crate::store::{Cf, Store, Txn};
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_protocol::decode_exact;
use mimi_rm_protocol::push::{PUSH_KEY_LEN, PUSH_TOKEN_DOMAIN, PushSubscription};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

/// `server_keys` entry of the hub's VAPID (RFC 8292) signing key.
const VAPID_KEY: &[u8] = b"vapid p256";

/// A client not fetching after its push is pushed again after this long, if more arrives.
pub const REPUSH_AFTER_MS: u64 = 10 * 60 * 1000;
/// Jobs waiting for the worker at most; beyond, wake-ups are dropped (and counted).
pub const QUEUE_DEPTH: usize = 10_000;

/// One wake-up to send: the client and the key that opens its stored subscription.
pub struct PushJob {
    /// The client.
    pub client: ClientId,
    /// Its `PushTokenEarKey`, from the queue ref being served.
    pub key: zeroize::Zeroizing<[u8; PUSH_KEY_LEN]>,
}

impl std::fmt::Debug for PushJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PushJob")
    }
}

/// Push bookkeeping of a hub.
#[derive(Default)]
pub struct PushQueue {
    /// Clients pushed and not fetched since, with when.
    pushed: Mutex<HashMap<ClientId, u64>>,
    /// The worker's queue, once a worker is attached.
    tx: Mutex<Option<mpsc::Sender<PushJob>>>,
}

impl std::fmt::Debug for PushQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PushQueue")
    }
}

/// What [`PushQueue::wanted`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// This hub sends no pushes (no worker attached).
    Off,
    /// Handed to the worker.
    Queued,
    /// Already pushed and not fetched since: coalesced.
    Coalesced,
    /// No worker, or its queue is full.
    Dropped,
}

impl PushQueue {
    fn pushed(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, u64>> {
        self.pushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Attaches the worker: from now on wake-ups go to the returned receiver.
    pub fn attach(&self) -> mpsc::Receiver<PushJob> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        *self
            .tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        rx
    }

    /// A message was enqueued for `client` (offline, with push key `key`).
    pub fn wanted(&self, client: ClientId, key: [u8; PUSH_KEY_LEN], now_ms: u64) -> Wanted {
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(tx) = tx else {
            return Wanted::Off;
        };
        {
            let mut pushed = self.pushed();
            if pushed
                .get(&client)
                .is_some_and(|at| now_ms.saturating_sub(*at) < REPUSH_AFTER_MS)
            {
                return Wanted::Coalesced;
            }
            pushed.insert(client, now_ms);
        }
        let job = PushJob {
            client,
            key: zeroize::Zeroizing::new(key),
        };
        match tx.try_send(job) {
            Ok(()) => Wanted::Queued,
            Err(_) => {
                self.pushed().remove(&client);
                Wanted::Dropped
            }
        }
    }

    /// `client` dequeued: the next message may push again.
    pub fn fetched(&self, client: &ClientId) {
        self.pushed().remove(client);
    }
}

/// A subscription opened for one push: what to send it to, and the sealed bytes it came from
/// (so an expired subscription is dropped only if the client has not replaced it since).
pub struct OpenedPush {
    /// The subscription.
    pub subscription: PushSubscription,
    /// The stored sealed form.
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for OpenedPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenedPush")
    }
}

/// Loads the hub's VAPID key, creating it on first start. One key per hub: push services tie a
/// subscription to the application server key it was made for.
pub fn vapid_key(store: &dyn Store) -> Result<p256::SecretKey, HubError> {
    match store.get(Cf::ServerKeys, VAPID_KEY)? {
        Some(bytes) => p256::SecretKey::from_slice(&bytes)
            .map_err(|_| HubError::corrupt("server_keys", "VAPID key")),
        None => {
            let key = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
            let mut txn = Txn::new(store);
            txn.put(Cf::ServerKeys, VAPID_KEY.to_vec(), key.to_bytes().to_vec());
            txn.commit()?;
            Ok(key)
        }
    }
}

/// Why a push subscription could not be opened.
fn unopenable(e: impl std::fmt::Display) -> HubError {
    HubError::corrupt("qs_push", e)
}

impl Hub {
    /// Opens the subscription a push job is for. `None` when the client has none (removed, or
    /// never set). A subscription that does not open under the job's key is reported, not
    /// sent: the client sealed it under another key than its queue refs carry.
    pub fn open_push(&self, job: &PushJob) -> Result<Option<OpenedPush>, HubError> {
        let txn = Txn::new(self.store.as_ref());
        let Some(record) = txn.get_record::<PushRecord>(&job.client)? else {
            return Ok(None);
        };
        let key = EarKey::from_bytes(job.key.as_slice()).map_err(unopenable)?;
        let plain = ear::open(
            &key,
            PUSH_TOKEN_DOMAIN,
            &job.client,
            record.sealed.as_slice(),
        )
        .map_err(unopenable)?;
        let subscription: PushSubscription = decode_exact(&plain, 8 * 1024).map_err(unopenable)?;
        Ok(Some(OpenedPush {
            subscription,
            sealed: record.sealed.as_slice().to_vec(),
        }))
    }

    /// The push service said `client`'s subscription is gone (404/410): drop it, unless the
    /// client replaced it meanwhile.
    pub fn drop_push(&self, client: &ClientId, seen: &[u8]) -> Result<bool, HubError> {
        let mut locks = crate::store::LockSet::default();
        self.locks
            .lock_queues(&mut locks, std::slice::from_ref(client));
        let mut txn = Txn::new(self.store.as_ref());
        let current = txn.get_record::<PushRecord>(client)?;
        if current.is_none_or(|r| r.sealed.as_slice() != seen) {
            return Ok(false);
        }
        txn.delete_record::<PushRecord>(client);
        txn.commit()?;
        self.metrics
            .push_subscriptions_expired
            .fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// The hub's VAPID public key (uncompressed SEC1), which clients pass to their push
    /// service as the application server key when they subscribe.
    pub fn vapid_public(&self) -> Vec<u8> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        self.vapid
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    /// The hub's VAPID signing key (for the push worker).
    pub fn vapid_key(&self) -> &p256::SecretKey {
        &self.vapid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_push_per_burst_until_the_client_fetches() {
        let q = PushQueue::default();
        assert_eq!(q.wanted([1; 16], [9; 32], 0), Wanted::Off, "no worker yet");
        let mut rx = q.attach();
        assert_eq!(q.wanted([1; 16], [9; 32], 10), Wanted::Queued);
        for t in 11..20 {
            assert_eq!(q.wanted([1; 16], [9; 32], t), Wanted::Coalesced);
        }
        assert_eq!(
            q.wanted([2; 16], [8; 32], 20),
            Wanted::Queued,
            "another client"
        );
        q.fetched(&[1; 16]);
        assert_eq!(q.wanted([1; 16], [9; 32], 30), Wanted::Queued);
        assert_eq!(
            q.wanted([1; 16], [9; 32], 30 + REPUSH_AFTER_MS),
            Wanted::Queued,
            "a push not followed by a fetch is repeated after a while"
        );
        let mut got = Vec::new();
        while let Ok(job) = rx.try_recv() {
            got.push(job.client);
        }
        assert_eq!(got, vec![[1; 16], [2; 16], [1; 16], [1; 16]]);
    }
}
