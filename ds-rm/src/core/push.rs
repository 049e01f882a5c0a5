//! Which clients are owed a push, and the queue to the push worker (`crate::push`).
//!
//! A wake-up is owed when a message is enqueued for a client that has a push subscription, has
//! not been pushed since it last fetched, and has no live socket open. One per burst: once
//! pushed, a client is not pushed again until it dequeues (or [`REPUSH_AFTER_MS`] passed, in
//! case the first push was dismissed unseen). The client's `PushTokenEarKey` is taken from the
//! message's sealed queue ref only when a push is owed, travels with the job and is gone after.
//! A message for a client whose socket is open is remembered by its queue ref (not its key)
//! until the client fetches, so a socket that dies before the client fetched still leads to a
//! push. All of this is in memory.

use super::qs::{ClientId, PushRecord};
use super::{Hub, HubError};
use crate::store::Txn;
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_protocol::decode_exact;
use mimi_rm_protocol::push::{PUSH_KEY_LEN, PUSH_TOKEN_DOMAIN, PushSubscription};
use mimi_rm_protocol::queue::{QueueAddress, QueueRef};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::mpsc;

/// A client not fetching after its push is pushed again after this long, if more arrives.
pub const REPUSH_AFTER_MS: u64 = 10 * 60 * 1000;
/// After a push that failed for a passing reason (timeout, 5xx, 429), the next message may
/// push again after this long.
pub const RETRY_AFTER_MS: u64 = 60 * 1000;
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
    /// Clients pushed and not fetched since, with the time from which they may be pushed again.
    pushed: Mutex<HashMap<ClientId, u64>>,
    /// Clients with a stored subscription (their ids are on disk anyway, in `qs_push`).
    subscribed: Mutex<HashSet<ClientId>>,
    /// Subscribed clients with an open socket that got a message since they last fetched: the
    /// latest message's queue ref, to push if the socket closes first.
    held: Mutex<HashMap<ClientId, QueueRef>>,
    /// The worker's queue, once a worker is attached.
    tx: Mutex<Option<mpsc::Sender<PushJob>>>,
}

impl std::fmt::Debug for PushQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PushQueue")
    }
}

/// What [`PushQueue::queue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// This hub sends no pushes (no worker attached).
    Off,
    /// Handed to the worker.
    Queued,
    /// Already pushed and not fetched since: coalesced.
    Coalesced,
    /// The worker's queue is full.
    Dropped,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PushQueue {
    /// Attaches the worker: from now on wake-ups go to the returned receiver.
    pub fn attach(&self) -> mpsc::Receiver<PushJob> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        *lock(&self.tx) = Some(tx);
        rx
    }

    /// Records whether `client` has a stored subscription.
    pub fn set_subscribed(&self, client: ClientId, subscribed: bool) {
        if subscribed {
            lock(&self.subscribed).insert(client);
        } else {
            lock(&self.subscribed).remove(&client);
            lock(&self.held).remove(&client);
        }
    }

    /// Whether a message for `client` now would owe it a push (before looking at its socket).
    pub fn owed(&self, client: &ClientId, now_ms: u64) -> bool {
        lock(&self.tx).is_some()
            && lock(&self.subscribed).contains(client)
            && lock(&self.pushed)
                .get(client)
                .is_none_or(|until| now_ms >= *until)
    }

    /// Hands a push for `client` (opened with `key`) to the worker and marks the client.
    pub fn queue(&self, client: ClientId, key: [u8; PUSH_KEY_LEN], now_ms: u64) -> Wanted {
        let Some(tx) = lock(&self.tx).clone() else {
            return Wanted::Off;
        };
        {
            let mut pushed = lock(&self.pushed);
            if pushed.get(&client).is_some_and(|until| now_ms < *until) {
                return Wanted::Coalesced;
            }
            pushed.insert(client, now_ms.saturating_add(REPUSH_AFTER_MS));
        }
        lock(&self.held).remove(&client);
        let job = PushJob {
            client,
            key: zeroize::Zeroizing::new(key),
        };
        match tx.try_send(job) {
            Ok(()) => Wanted::Queued,
            Err(_) => {
                lock(&self.pushed).remove(&client);
                Wanted::Dropped
            }
        }
    }

    /// Remembers the latest message's ref for a subscribed client whose socket is open.
    pub fn hold(&self, client: ClientId, queue_ref: &QueueRef) {
        lock(&self.held).insert(client, queue_ref.clone());
    }

    /// The ref held for `client`, if a message came since it last fetched.
    pub fn take_held(&self, client: &ClientId) -> Option<QueueRef> {
        lock(&self.held).remove(client)
    }

    /// `client` fetched (or set a subscription): the next message may push again.
    pub fn fetched(&self, client: &ClientId) {
        lock(&self.pushed).remove(client);
        lock(&self.held).remove(client);
    }

    /// A push to `client` failed for a passing reason: allow the next one sooner.
    pub fn retry_soon(&self, client: &ClientId, now_ms: u64) {
        if let Some(until) = lock(&self.pushed).get_mut(client) {
            *until = now_ms.saturating_add(RETRY_AFTER_MS);
        }
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

/// Why a push subscription could not be opened.
fn unopenable(e: impl std::fmt::Display) -> HubError {
    HubError::corrupt("qs_push", e)
}

impl Hub {
    /// A message for `client`, addressed by `queue_ref`, was stored (the caller still holds the
    /// client's queue lock): owes a push if the client is subscribed, unmarked and offline.
    pub(crate) fn push_if_offline(&self, client: &ClientId, queue_ref: &QueueRef, now_ms: u64) {
        if !self.push.owed(client, now_ms) {
            return;
        }
        if self.queue_signal.is_listened(client) {
            self.push.hold(*client, queue_ref);
            return;
        }
        self.push_with_ref(client, queue_ref, now_ms);
    }

    /// The last live socket of `client` closed: a message it got while the socket was open
    /// and did not fetch is pushed now.
    pub fn push_after_socket_closed(&self, client: &ClientId, now_ms: u64) {
        let Some(queue_ref) = self.push.take_held(client) else {
            return;
        };
        if !self.queue_signal.is_listened(client) && self.push.owed(client, now_ms) {
            self.push_with_ref(client, &queue_ref, now_ms);
        }
    }

    /// Takes the push key out of `queue_ref` (a second HPKE open, only when a push is owed)
    /// and queues the push.
    fn push_with_ref(&self, client: &ClientId, queue_ref: &QueueRef, now_ms: u64) {
        let QueueAddress::Sealed(sealed) = &queue_ref.address else {
            return;
        };
        let Ok(opened) =
            super::qs::open_sealed_queue_ref(&self.qs_keys, &self.config.domain, sealed)
        else {
            return;
        };
        let Some(key) = opened.push_key else {
            // A leaf from before push keys: nothing opens the subscription.
            return;
        };
        if self.push.queue(*client, key, now_ms) == Wanted::Dropped {
            self.metrics.pushes_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

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
            .lock_queues(&mut locks, std::slice::from_ref(client))?;
        let mut txn = Txn::new(self.store.as_ref());
        let current = txn.get_record::<PushRecord>(client)?;
        if current.is_none_or(|r| r.sealed.as_slice() != seen) {
            return Ok(false);
        }
        txn.delete_record::<PushRecord>(client);
        txn.commit_under(&mut locks)?;
        self.push.set_subscribed(*client, false);
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
    fn one_push_per_burst_for_subscribed_clients_until_they_fetch() {
        let q = PushQueue::default();
        let (a, b) = ([1; 16], [2; 16]);
        q.set_subscribed(a, true);
        q.set_subscribed(b, true);
        assert!(!q.owed(&a, 0), "no worker yet");
        assert_eq!(q.queue(a, [9; 32], 0), Wanted::Off);
        let mut rx = q.attach();
        assert!(q.owed(&a, 10));
        assert!(!q.owed(&[3; 16], 10), "not subscribed");
        assert_eq!(q.queue(a, [9; 32], 10), Wanted::Queued);
        for t in 11..20 {
            assert!(!q.owed(&a, t));
            assert_eq!(q.queue(a, [9; 32], t), Wanted::Coalesced);
        }
        assert_eq!(q.queue(b, [8; 32], 20), Wanted::Queued, "another client");
        q.fetched(&a);
        assert_eq!(q.queue(a, [9; 32], 30), Wanted::Queued);
        assert!(
            q.owed(&a, 30 + REPUSH_AFTER_MS),
            "a push not followed by a fetch is repeated after a while"
        );
        q.retry_soon(&b, 1_000);
        assert!(!q.owed(&b, 1_000));
        assert!(
            q.owed(&b, 1_000 + RETRY_AFTER_MS),
            "a failed push is retried sooner"
        );
        q.set_subscribed(a, false);
        assert!(!q.owed(&a, 30 + REPUSH_AFTER_MS), "unsubscribed");
        let mut got = Vec::new();
        while let Ok(job) = rx.try_recv() {
            got.push(job.client);
        }
        assert_eq!(got, vec![a, b, a]);
    }

    #[test]
    fn a_held_ref_is_taken_once_and_cleared_by_a_fetch() {
        let q = PushQueue::default();
        let r = QueueRef {
            domain: b"d".to_vec().into(),
            address: QueueAddress::Plain(mimi_rm_protocol::queue::QueueRefPlain {
                client_id: [1; 16],
            }),
        };
        q.hold([1; 16], &r);
        assert_eq!(q.take_held(&[1; 16]), Some(r.clone()));
        assert_eq!(q.take_held(&[1; 16]), None);
        q.hold([1; 16], &r);
        q.fetched(&[1; 16]);
        assert_eq!(q.take_held(&[1; 16]), None);
    }
}
