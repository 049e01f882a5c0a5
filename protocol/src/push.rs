//! Encrypted push tokens (draft-robert-mimi-delivery-service §8.5, over Web Push).
//!
//! A client registers a Web Push subscription (RFC 8030 endpoint, RFC 8291 keys) with its QS,
//! sealed under its own `PushTokenEarKey`. That key travels only inside the client's sealed queue
//! refs, so the QS can open the subscription only while it enqueues a message for the client.
//! The push itself is a wake-up of one fixed size, with no content and no group id.

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// EAR domain of a sealed push subscription.
pub const PUSH_TOKEN_DOMAIN: &str = "push token";
/// Length of a `PushTokenEarKey`.
pub const PUSH_KEY_LEN: usize = 32;
/// The plaintext of every push: a fixed marker, padded to [`WAKE_LEN`] bytes.
pub const WAKE_MARKER: &[u8] = b"mimi-rm wake";
/// Length of every push plaintext.
pub const WAKE_LEN: usize = 64;
/// Longest endpoint URL accepted.
pub const MAX_ENDPOINT: usize = 2048;

/// A Web Push subscription, as a browser's `PushSubscription` or a UnifiedPush distributor
/// gives it.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct PushSubscription {
    /// The push service's endpoint URL (https in production).
    pub endpoint: VLBytes,
    /// The user agent's P-256 public key, uncompressed (65 bytes; `p256dh`).
    pub p256dh: VLBytes,
    /// The 16-byte authentication secret (`auth`).
    pub auth: VLBytes,
}

/// The plaintext of a push.
pub fn wake_payload() -> Vec<u8> {
    let mut p = WAKE_MARKER.to_vec();
    p.resize(WAKE_LEN, 0);
    p
}
