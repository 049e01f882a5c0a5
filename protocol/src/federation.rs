//! Server-to-server messages between providers.
//!
//! Two legs: a provider forwards its client's request, unchanged, to the hub that owns the group
//! (follower → hub); a hub delivers fan-out for another provider's queues into that provider
//! (hub → follower). Both travel in an [`S2sEnvelope`] naming sender and recipient domain, with
//! a unique id and a timestamp, signed by the sender's long-term Ed25519 key, which each provider
//! publishes at `/verification_key`. The client's own signature stays inside, so a forwarding
//! provider can route a request but not alter it.

use crate::TransactionType;
use crate::queue::{HpkeCiphertextWire, QueueMessage, QueueRef};
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Signature label of [`S2sEnvelopeTbs`].
pub const S2S_SIGNATURE_LABEL: &str = "s2s envelope";

/// HPKE label of a [`DeliveryItem`] sealed to the recipient provider's QS key while it waits in
/// the sender's outbox (its associated data: [`outbox_item_aad`]).
pub const OUTBOX_ITEM_HPKE_LABEL: &str = "outbox delivery item";

/// Associated data of a sealed outbox item: who sealed it for whom, so an item cannot be
/// passed off as coming from, or meant for, another provider.
pub fn outbox_item_aad(sender_domain: &[u8], recipient_domain: &[u8]) -> Vec<u8> {
    let mut aad = sender_domain.to_vec();
    aad.push(0);
    aad.extend_from_slice(recipient_domain);
    aad
}

/// A client's request as its provider received it.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ForwardedRequest {
    /// Which endpoint the client posted to.
    pub transaction_type: TransactionType,
    /// The client's encoded [`crate::Envelope`], byte for byte.
    pub envelope: VLBytes,
}

/// One fan-out item for a queue at the recipient provider.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct DeliveryItem {
    /// Random per item, fixed when the hub queued it: the recipient deduplicates by it, so a
    /// retried delivery is enqueued once.
    pub id: [u8; 16],
    /// When the hub queued it (ms since the Unix epoch).
    pub created_ms: u64,
    /// The member's sealed address; only the recipient's QS can open it.
    pub queue_ref: QueueRef,
    /// What to enqueue.
    pub message: QueueMessage,
}

/// What an [`S2sEnvelope`] carries.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum S2sPayload {
    /// Follower → hub: process this client request as if it had been posted here.
    #[tls_codec(discriminant = 1)]
    Forward(ForwardedRequest),
    /// Hub → follower: enqueue these items, in order.
    #[tls_codec(discriminant = 2)]
    Deliver(Vec<DeliveryItem>),
    /// Fan-out items for the recipient's queues, each HPKE-sealed to the recipient's QS key
    /// when it was queued (label [`OUTBOX_ITEM_HPKE_LABEL`]), so the sender's outbox never
    /// holds them readable.
    #[tls_codec(discriminant = 3)]
    DeliverSealed(Vec<HpkeCiphertextWire>),
}

/// The signed part of a server-to-server message.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct S2sEnvelopeTbs {
    /// The sending provider's domain.
    pub sender_domain: VLBytes,
    /// The receiving provider's domain; a receiver refuses anything addressed elsewhere.
    pub recipient_domain: VLBytes,
    /// Random per message.
    pub id: [u8; 16],
    /// When the sender signed (ms since the Unix epoch); stale messages are refused.
    pub timestamp_ms: u64,
    /// The content.
    pub payload: S2sPayload,
}

/// A server-to-server message with the sender's signature under [`S2S_SIGNATURE_LABEL`].
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct S2sEnvelope {
    /// Signed content.
    pub tbs: S2sEnvelopeTbs,
    /// Ed25519 signature by the sender domain's key.
    pub signature: VLBytes,
}

/// A provider's long-term federation key, served at `/verification_key`.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct VerificationKey {
    /// The domain the key speaks for.
    pub domain: VLBytes,
    /// Ed25519 public key.
    pub key: VLBytes,
}

/// A client asks its own provider to pass an anonymous QS or AS request (AddPackage fetch, AS
/// credentials) to another provider, so that provider never learns the client's address.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ProxyRequest {
    /// The provider to ask.
    pub domain: VLBytes,
    /// The request, as it would be posted there.
    pub request: ForwardedRequest,
}
