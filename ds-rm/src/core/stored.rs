//! Messages stored once for all their local recipients.
//!
//! A commit whose UpdatePath crosses blank nodes is O(members) bytes; enqueuing a copy per
//! recipient wrote O(members²) bytes per commit. Instead the QS seals such a message once,
//! under a fresh key, in `qs_stored`, and each recipient's queue gets a small
//! [`QueueMessage::Stored`] entry — a ratchet ciphertext like any other — naming the stored
//! message, its key and a release ticket of that recipient.
//!
//! What a seized disk shows: a stored message's random id, its padded size and month, and how
//! many tickets are still out (one row per ticket, holding a digest of the ticket only). The
//! link from a stored message to its recipients' queues, and its key, exist only inside the
//! queue entries, under one-time ratchet keys the QS erased when it enqueued them; the queue
//! entries themselves now all have one size whatever the commit's size, so sizes no longer link
//! the queues that received one commit either.

use crate::core::ds::Fanout;
use crate::core::ds::state::month_of;
use crate::core::qs::{self, ClientId, Enqueued};
use crate::core::{HubError, RequestError};
use crate::store::{Cf, Record, Txn};
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_crypto::ids::random_bytes;
use mimi_rm_protocol::encode;
use mimi_rm_protocol::qs::{QsResponse, StoredMessage, StoredTicket};
use mimi_rm_protocol::queue::{
    QueueMessage, STORED_EAR_DOMAIN, STORED_ID_LEN, STORED_TICKET_LEN, StoredRef,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tls_codec::{Size as _, TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Most stored messages one `FetchStored` may ask for.
pub const MAX_FETCH_STORED: usize = 64;
/// Most tickets one `Dequeue` may release. A client releases what it consumed since its last
/// dequeue and sends the rest with the next one; the bound also caps the lock stripes one
/// request takes before its signature is checked.
pub const MAX_RELEASE: usize = 256;
/// Length of a ticket row's digest part.
const TICKET_DIGEST_LEN: usize = 16;

/// A stored message id.
pub type StoredId = [u8; STORED_ID_LEN];

/// A message stored once: the month it was stored (for offline expiry of messages whose
/// tickets never all came back) and its EAR ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct StoredRecord {
    /// Month (since the epoch) it was stored.
    pub month: u32,
    /// `QueueMessage` sealed under the key in its `StoredRef`s.
    pub ciphertext: VLBytes,
}

impl Record for StoredRecord {
    const CF: Cf = Cf::QsStored;
    /// A message arrived in one request body (capped by `max_body_bytes`), plus EAR overhead.
    const MAX_BYTES: usize = (64 << 20) + 4096;
    type Key = StoredId;
}

/// Which messages to store once: those at least this long (encoded) with at least two local
/// recipients. Below it a copy per queue costs about what a reference does, and saves the
/// recipient a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOncePolicy {
    /// Smallest encoded message stored once.
    pub min_bytes: usize,
}

impl StoreOncePolicy {
    /// Whether `message` (encoded as `len` bytes) to `recipients` local queues is stored once.
    pub fn applies(&self, message: &QueueMessage, len: usize, recipients: usize) -> bool {
        recipients >= 2 && len >= self.min_bytes && !matches!(message, QueueMessage::Stored(_))
    }
}

/// `qs_stored_tickets` key: the stored id, then a digest of the ticket (the ticket itself is
/// only inside its queue entry, so a seized disk cannot release anything).
fn ticket_key(id: &StoredId, ticket: &[u8; STORED_TICKET_LEN]) -> Vec<u8> {
    let digest = Sha256::new()
        .chain_update(b"mimi-rm stored ticket")
        .chain_update(id)
        .chain_update(ticket)
        .finalize();
    let mut key = Vec::with_capacity(STORED_ID_LEN + TICKET_DIGEST_LEN);
    key.extend_from_slice(id);
    key.extend_from_slice(&digest[..TICKET_DIGEST_LEN]);
    key
}

/// Stores `message` once and enqueues a reference to it for each of `recipients` (whose queue
/// locks the caller holds). Returns each recipient's outcome, in order; nothing is stored if
/// no recipient's queue took the reference.
pub fn enqueue_once(
    txn: &mut Txn<'_>,
    message: &QueueMessage,
    recipients: &[ClientId],
    max_queue: u64,
    now_ms: u64,
) -> Result<Vec<Enqueued>, HubError> {
    let id: StoredId = random_bytes();
    let key_bytes: [u8; 32] = random_bytes();
    let key = EarKey::from_bytes(&key_bytes).map_err(HubError::bug)?;
    let plain = zeroize::Zeroizing::new(encode(message).map_err(HubError::bug)?);
    let ciphertext = ear::seal(&key, STORED_EAR_DOMAIN, &id, &plain).map_err(HubError::bug)?;
    let mut outcomes = Vec::with_capacity(recipients.len());
    for client in recipients {
        let reference = StoredRef {
            id,
            key: key_bytes,
            ticket: random_bytes(),
        };
        let outcome = qs::enqueue(
            txn,
            client,
            &QueueMessage::Stored(reference.clone()),
            max_queue,
        )?;
        if outcome == Enqueued::Delivered {
            txn.put(
                Cf::QsStoredTickets,
                ticket_key(&id, &reference.ticket),
                Vec::new(),
            );
        }
        outcomes.push(outcome);
    }
    if outcomes.contains(&Enqueued::Delivered) {
        txn.put_record(
            &id,
            &StoredRecord {
                month: month_of(now_ms),
                ciphertext: ciphertext.into(),
            },
        )?;
    }
    Ok(outcomes)
}

/// Enqueues the local items of one fan-out, run by run: a run of items sharing one message
/// (one `Arc`, as the DS core fans them out) that `policy` covers is stored once with a
/// reference per queue; anything else is copied into each queue. Runs keep their order, so
/// each queue receives its items in fan-out order. The caller holds every queue's lock.
/// Returns each item's outcome, in order, and how many messages were stored once.
pub fn enqueue_local(
    txn: &mut Txn<'_>,
    targets: &[(ClientId, &Fanout)],
    policy: StoreOncePolicy,
    max_queue: u64,
    now_ms: u64,
) -> Result<(Vec<Enqueued>, u64), HubError> {
    let mut out = Vec::with_capacity(targets.len());
    let mut stored = 0;
    for run in targets.chunk_by(|(_, a), (_, b)| Arc::ptr_eq(&a.message, &b.message)) {
        let Some((_, first)) = run.first() else {
            continue;
        };
        let message = first.message.as_ref();
        if policy.applies(message, message.tls_serialized_len(), run.len()) {
            let clients: Vec<ClientId> = run.iter().map(|(c, _)| *c).collect();
            out.extend(enqueue_once(txn, message, &clients, max_queue, now_ms)?);
            stored += 1;
        } else {
            let plain = encode(message).map_err(HubError::bug)?;
            for (client, _) in run {
                out.push(qs::enqueue_encoded(txn, client, &plain, max_queue)?);
            }
        }
    }
    Ok((out, stored))
}

/// The stored ids a release list names, for the caller to lock (as queue stripes) before the
/// request's transaction; a list over [`MAX_RELEASE`] is refused before any lock is taken.
pub fn ids_released(release: &[StoredTicket]) -> Result<Vec<StoredId>, HubError> {
    check_release_len(release)?;
    let mut ids: Vec<StoredId> = release.iter().map(|t| t.id).collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn check_release_len(release: &[StoredTicket]) -> Result<(), HubError> {
    if release.len() > MAX_RELEASE {
        return Err(HubError::Request(RequestError::Invalid(
            "too many stored-message tickets released at once",
        )));
    }
    Ok(())
}

/// Releases `tickets` (the caller holds their ids' locks); a stored message goes with its last
/// ticket. Unknown tickets are ignored, so a repeated release is harmless. Returns how many
/// stored messages were deleted.
pub fn release(txn: &mut Txn<'_>, tickets: &[StoredTicket]) -> Result<usize, HubError> {
    check_release_len(tickets)?;
    let mut touched = Vec::new();
    for t in tickets {
        let key = ticket_key(&t.id, &t.ticket);
        if txn.get(Cf::QsStoredTickets, &key)?.is_some() {
            txn.delete(Cf::QsStoredTickets, key);
            touched.push(t.id);
        }
    }
    touched.sort_unstable();
    touched.dedup();
    let mut deleted = 0;
    for id in touched {
        if txn.scan_prefix(Cf::QsStoredTickets, &id, 1)?.is_empty() {
            txn.delete_record::<StoredRecord>(&id);
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Answers `FetchStored`: the stored messages among `ids`, in the order asked.
pub fn fetch(txn: &Txn<'_>, ids: &[StoredId]) -> Result<QsResponse, HubError> {
    if ids.len() > MAX_FETCH_STORED {
        return Err(HubError::Request(RequestError::Invalid(
            "too many stored messages asked for at once",
        )));
    }
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(r) = txn.get_record::<StoredRecord>(id)? {
            found.push(StoredMessage {
                id: *id,
                ciphertext: r.ciphertext,
            });
        }
    }
    Ok(QsResponse::Stored(found))
}

/// Deletes stored messages older than `cutoff_month` with all their tickets (recipients that
/// never fetched them, or deleted their queues first); returns how many.
pub fn expire(
    store: &dyn crate::store::Store,
    txn: &mut Txn<'_>,
    cutoff_month: u32,
) -> Result<usize, HubError> {
    let mut expired = 0;
    for (id, value) in store.scan_prefix(Cf::QsStored, b"", usize::MAX)? {
        let record: StoredRecord = crate::store::record::decode(&value)?;
        if record.month >= cutoff_month {
            continue;
        }
        for (k, _) in store.scan_prefix(Cf::QsStoredTickets, &id, usize::MAX)? {
            txn.delete(Cf::QsStoredTickets, k);
        }
        txn.delete(Cf::QsStored, id);
        expired += 1;
    }
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mem::MemStore;

    #[test]
    fn a_message_to_one_queue_or_a_small_one_is_not_stored_once() {
        let p = StoreOncePolicy { min_bytes: 1024 };
        let m = QueueMessage::Mls(vec![0; 2000].into());
        assert!(p.applies(&m, 2000, 2));
        assert!(!p.applies(&m, 2000, 1));
        assert!(!p.applies(&m, 1023, 5));
        let r = QueueMessage::Stored(StoredRef {
            id: [0; 16],
            key: [0; 32],
            ticket: [0; 16],
        });
        assert!(!StoreOncePolicy { min_bytes: 0 }.applies(&r, 100, 5));
    }

    #[test]
    fn ticket_rows_hold_a_digest_not_the_ticket() {
        let id = [1u8; 16];
        let ticket = [2u8; 16];
        let key = ticket_key(&id, &ticket);
        assert_eq!(&key[..16], &id);
        assert_ne!(&key[16..], &ticket);
        assert_ne!(ticket_key(&id, &[3; 16]), key);
    }

    #[test]
    fn the_last_release_deletes_and_repeats_do_nothing() {
        let store = MemStore::default();
        let mut txn = Txn::new(&store);
        let id = [7u8; 16];
        txn.put_record(
            &id,
            &StoredRecord {
                month: 1,
                ciphertext: vec![1, 2, 3].into(),
            },
        )
        .unwrap();
        let tickets: Vec<StoredTicket> = (0..3u8)
            .map(|i| StoredTicket {
                id,
                ticket: [i; 16],
            })
            .collect();
        for t in &tickets {
            txn.put(Cf::QsStoredTickets, ticket_key(&id, &t.ticket), Vec::new());
        }
        assert_eq!(release(&mut txn, &tickets[..2]).unwrap(), 0);
        assert!(txn.get_record::<StoredRecord>(&id).unwrap().is_some());
        // The same tickets again: nothing more happens.
        assert_eq!(release(&mut txn, &tickets[..2]).unwrap(), 0);
        // A ticket that was never issued does not count.
        let forged = StoredTicket {
            id,
            ticket: [9; 16],
        };
        assert_eq!(release(&mut txn, &[forged]).unwrap(), 0);
        assert!(txn.get_record::<StoredRecord>(&id).unwrap().is_some());
        assert_eq!(release(&mut txn, &tickets[2..]).unwrap(), 1);
        assert!(txn.get_record::<StoredRecord>(&id).unwrap().is_none());
        assert!(
            txn.scan_prefix(Cf::QsStoredTickets, &id, 10)
                .unwrap()
                .is_empty()
        );
    }
}
