//! Server-to-server logic, without I/O: signing and checking envelopes, the durable outbox of
//! fan-out for other providers, and accepting deliveries with deduplication.

use crate::core::HubError;
use crate::core::qs;
use crate::core::replay::ReplayGuard;
use crate::core::{FederationError, RequestError};
use crate::store::{Cf, Record, Txn, record};
use mimi_rm_crypto::hpke_seal::{self, HpkePrivateKey, HpkePublicKey};
use mimi_rm_crypto::sign::{SigningKey, VerifyingKey};
use mimi_rm_protocol::federation::*;
use mimi_rm_protocol::queue::{HpkeCiphertextWire, QueueRef};
use mimi_rm_protocol::{decode_exact, encode};
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// How long a delivered item id is remembered: retries of a delivery come within this window
/// (the hub retries until it succeeds, and deletes an item right after its 2xx).
pub const SEEN_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;
/// Items per delivery request.
pub const DELIVERY_BATCH: usize = 256;

/// Signs `tbs` with this provider's federation key.
pub fn sign(key: &SigningKey, tbs: S2sEnvelopeTbs) -> Result<S2sEnvelope, HubError> {
    let bytes = encode(&tbs).map_err(|e| HubError::Bug(e.to_string()))?;
    let signature = key.sign(S2S_SIGNATURE_LABEL, &bytes).into();
    Ok(S2sEnvelope { tbs, signature })
}

/// Checks an incoming envelope: addressed to us, fresh, signed by the claimed sender's key,
/// not seen before. Only then is its payload looked at.
pub fn verify(
    env: &S2sEnvelope,
    own_domain: &str,
    sender_key: &VerifyingKey,
    replay: &ReplayGuard,
    now_ms: u64,
) -> Result<(), HubError> {
    replay.check_fresh(env.tbs.timestamp_ms, now_ms)?;
    let bytes = encode(&env.tbs).map_err(|e| HubError::malformed("s2s envelope", e))?;
    sender_key
        .verify(S2S_SIGNATURE_LABEL, &bytes, env.signature.as_slice())
        .map_err(|_| HubError::Request(RequestError::InvalidSignature))?;
    if env.tbs.recipient_domain.as_slice() != own_domain.as_bytes() {
        return Err(HubError::Federation(FederationError::WrongRecipient(
            "addressed to another domain",
        )));
    }
    replay.check_and_record(env.signature.as_slice(), env.tbs.timestamp_ms, now_ms)
}

/// Key of an outbox entry: items for one peer sort in the order they were queued.
pub fn outbox_key(domain: &[u8], seq: u64) -> Vec<u8> {
    let mut k = domain.to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The peer domain of an outbox key.
pub fn outbox_domain(key: &[u8]) -> Option<&[u8]> {
    let split = key.len().checked_sub(9)?;
    (key[split] == 0).then_some(&key[..split])
}

/// Queues one item for a peer inside the request's transaction (so it is durable exactly when
/// the request's effects are).
pub fn queue_for_peer(
    txn: &mut Txn<'_>,
    seq: u64,
    peer: &[u8],
    item: &SealedOutboxItem,
) -> Result<(), HubError> {
    let key = outbox_key(peer, seq);
    Ok(txn.put_record(key.as_slice(), item)?)
}

fn seen_key(sender: &[u8], item: &DeliveryItem) -> Vec<u8> {
    let mut k = sender.to_vec();
    k.push(0);
    k.extend_from_slice(&item.created_ms.to_be_bytes());
    k.extend_from_slice(&item.id);
    k
}

/// What a delivery did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Items enqueued now.
    pub enqueued: u64,
    /// Items already delivered before (a retry).
    pub duplicates: u64,
    /// Items for queues that no longer exist.
    pub undeliverable: u64,
    /// Positions of the items enqueued now (their clients may be owed a push).
    pub delivered: Vec<usize>,
}

/// Resolves each item's queue ref with `open` (before any lock is taken, so the caller can lock
/// the queues). Every item must be for this provider; an item whose queue cannot be resolved
/// maps to `None` and is counted undeliverable.
pub fn resolve(
    own_domain: &str,
    items: &[DeliveryItem],
    open: impl Fn(&QueueRef) -> Result<qs::ClientId, HubError>,
) -> Result<Vec<Option<qs::ClientId>>, HubError> {
    items
        .iter()
        .map(|item| {
            if item.queue_ref.domain.as_slice() != own_domain.as_bytes() {
                return Err(HubError::Federation(FederationError::WrongRecipient(
                    "an item is for another provider",
                )));
            }
            Ok(open(&item.queue_ref).ok())
        })
        .collect()
}

/// Enqueues a verified delivery from `sender`, each item at most once.
pub fn accept_delivery(
    txn: &mut Txn<'_>,
    sender: &[u8],
    items: &[DeliveryItem],
    clients: &[Option<qs::ClientId>],
    now_ms: u64,
    max_queue: u64,
) -> Result<Accepted, HubError> {
    let mut out = Accepted::default();
    for (i, (item, client)) in items.iter().zip(clients).enumerate() {
        let key = seen_key(sender, item);
        if txn.get(Cf::FedSeen, &key)?.is_some() {
            out.duplicates += 1;
            continue;
        }
        if item.created_ms.saturating_add(SEEN_RETENTION_MS) > now_ms {
            txn.put(Cf::FedSeen, key, Vec::new());
        }
        match client {
            Some(c)
                if qs::enqueue(txn, c, &item.message, max_queue)? == qs::Enqueued::Delivered =>
            {
                out.enqueued += 1;
                out.delivered.push(i);
            }
            _ => out.undeliverable += 1,
        }
    }
    Ok(out)
}

/// An outbox item as stored: a [`DeliveryItem`] HPKE-sealed to the peer's QS key.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct SealedOutboxItem(pub HpkeCiphertextWire);

impl Record for SealedOutboxItem {
    const CF: Cf = Cf::FedOutbox;
    /// One sealed queue message, which arrived in one request body (capped by
    /// `max_body_bytes`).
    const MAX_BYTES: usize = 64 << 20;
    type Key = [u8];
}

/// Decodes an outbox value.
pub fn decode_item(value: &[u8]) -> Result<HpkeCiphertextWire, HubError> {
    Ok(record::decode::<SealedOutboxItem>(value)?.0)
}

/// A peer's QS public key as stored in `fed_peer_keys`.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct PeerKeyRecord {
    /// X25519 public key.
    pub key: VLBytes,
}

impl Record for PeerKeyRecord {
    const CF: Cf = Cf::FedPeerKeys;
    const MAX_BYTES: usize = 256;
    type Key = [u8];
}

/// Seals `item` for `peer`'s QS (its public key `peer_key`), as sent by `own_domain`.
pub fn seal_item(
    own_domain: &str,
    peer: &[u8],
    peer_key: &HpkePublicKey,
    item: &DeliveryItem,
) -> Result<SealedOutboxItem, HubError> {
    let plain = zeroize::Zeroizing::new(encode(item).map_err(HubError::bug)?);
    let aad = outbox_item_aad(own_domain.as_bytes(), peer);
    let ct = hpke_seal::seal(peer_key, OUTBOX_ITEM_HPKE_LABEL, &aad, &plain)
        .map_err(|e| HubError::bug(format!("sealing an outbox item: {e}")))?;
    Ok(SealedOutboxItem(ct.into()))
}

/// Opens the items `sender` sealed to our QS key; an item that does not open or decode is
/// dropped (counted by the caller as undeliverable), never an error for the whole delivery.
pub fn open_items(
    own_domain: &str,
    sender: &[u8],
    qs_key: &HpkePrivateKey,
    sealed: &[HpkeCiphertextWire],
    max_item: usize,
) -> (Vec<DeliveryItem>, u64) {
    let aad = outbox_item_aad(sender, own_domain.as_bytes());
    let mut items = Vec::with_capacity(sealed.len());
    let mut dropped = 0;
    for s in sealed {
        match hpke_seal::open(qs_key, OUTBOX_ITEM_HPKE_LABEL, &aad, &s.to_ciphertext())
            .ok()
            .and_then(|plain| decode_exact::<DeliveryItem>(&plain, max_item).ok())
        {
            Some(item) => items.push(item),
            None => dropped += 1,
        }
    }
    (items, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_keys_sort_by_sequence_and_name_their_domain() {
        let a = outbox_key(b"b.test", 2);
        let b = outbox_key(b"b.test", 10);
        assert!(a < b);
        assert_eq!(outbox_domain(&a), Some(&b"b.test"[..]));
        assert_eq!(outbox_domain(b"short"), None);
    }
}
