//! Labelled Ed25519 signatures, and raw verification for MLS leaf keys.
//!
//! Labelled signatures cover `"mimi-rm 1.0 " ‖ label ‖ 0x00 ‖ msg`, so a signature made for one
//! kind of request can never be replayed as another.

use crate::{CryptoError, ids::random_bytes};
use ed25519_dalek::{Signature, Signer as _};
use zeroize::{Zeroize, ZeroizeOnDrop};

const PREFIX: &[u8] = b"mimi-rm 1.0 ";

/// An Ed25519 signing key (its 32-byte seed); zeroized on drop so it does not linger in freed
/// memory.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SigningKey([u8; 32]);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

/// An Ed25519 verifying key (32 bytes, checked to be a valid curve point). Public, so printable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VerifyingKey([u8; 32]);

/// Labels are fixed protocol strings without NUL bytes, so the 0x00 separator marks unambiguously
/// where the label ends and the message begins.
fn labelled(label: &str, msg: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(PREFIX.len() + label.len() + 1 + msg.len());
    m.extend_from_slice(PREFIX);
    m.extend_from_slice(label.as_bytes());
    m.push(0);
    m.extend_from_slice(msg);
    m
}

impl SigningKey {
    /// A fresh key from the OS RNG.
    pub fn generate() -> Self {
        Self(random_bytes())
    }

    /// Wraps a 32-byte seed; any other length is [`CryptoError::InvalidKey`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        Ok(Self(b.try_into().map_err(|_| CryptoError::InvalidKey)?))
    }

    /// The seed, for the owner's own persistent storage.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The public half, to register with whoever verifies.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.dalek().verifying_key().to_bytes())
    }

    /// Signs `"mimi-rm 1.0 " ‖ label ‖ 0x00 ‖ msg`; returns the 64-byte signature.
    pub fn sign(&self, label: &str, msg: &[u8]) -> Vec<u8> {
        self.dalek().sign(&labelled(label, msg)).to_bytes().to_vec()
    }

    /// The dalek key is rebuilt per use (it zeroizes itself on drop too).
    fn dalek(&self) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&self.0)
    }
}

impl VerifyingKey {
    /// Wraps 32 bytes that encode a valid Ed25519 point; otherwise [`CryptoError::InvalidKey`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = b.try_into().map_err(|_| CryptoError::InvalidKey)?;
        ed25519_dalek::VerifyingKey::from_bytes(&arr).map_err(|_| CryptoError::InvalidKey)?;
        Ok(Self(arr))
    }

    /// The raw 32 bytes, for encoding on the wire.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Verifies a signature made by [`SigningKey::sign`] with the same label.
    pub fn verify(&self, label: &str, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        verify_raw_ed25519(&self.0, &labelled(label, msg), sig)
    }
}

/// Verifies an Ed25519 signature over raw bytes with a raw 32-byte key, for MLS leaf signature
/// keys, which sign payloads the caller builds (and labels) itself. Uses strict verification
/// (rejects small-order keys and non-canonical signatures). A bad key is
/// [`CryptoError::InvalidKey`], any other failure [`CryptoError::Signature`].
pub fn verify_raw_ed25519(public_key: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
    let arr: [u8; 32] = public_key.try_into().map_err(|_| CryptoError::InvalidKey)?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&arr).map_err(|_| CryptoError::InvalidKey)?;
    let sig = Signature::from_slice(sig).map_err(|_| CryptoError::Signature)?;
    vk.verify_strict(msg, &sig)
        .map_err(|_| CryptoError::Signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_separate_signatures() {
        let k = SigningKey::generate();
        let vk = k.verifying_key();
        let sig = k.sign("qs request", b"m");
        assert_eq!(sig.len(), 64);
        vk.verify("qs request", b"m", &sig).unwrap();
        assert_eq!(
            vk.verify("ds request", b"m", &sig),
            Err(CryptoError::Signature)
        );
        assert_eq!(
            vk.verify("qs request", b"n", &sig),
            Err(CryptoError::Signature)
        );
        // Shifting bytes between label and message does not keep a signature valid.
        let sig2 = k.sign("ab", b"c");
        assert_eq!(vk.verify("a", b"bc", &sig2), Err(CryptoError::Signature));
        assert_eq!(
            SigningKey::generate()
                .verifying_key()
                .verify("qs request", b"m", &sig),
            Err(CryptoError::Signature)
        );
        assert_eq!(
            vk.verify("qs request", b"m", &sig[..63]),
            Err(CryptoError::Signature)
        );
        assert_eq!(
            vk.verify("qs request", b"m", &[]),
            Err(CryptoError::Signature)
        );
    }

    #[test]
    fn labelled_signature_is_over_the_documented_bytes() {
        let k = SigningKey::from_bytes(&[9; 32]).unwrap();
        let sig = k.sign("label", b"msg");
        verify_raw_ed25519(
            k.verifying_key().as_bytes(),
            b"mimi-rm 1.0 label\0msg",
            &sig,
        )
        .unwrap();
    }

    #[test]
    fn raw_verification_matches_dalek() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let sig = sk.sign(b"payload").to_bytes();
        let pk = sk.verifying_key().to_bytes();
        verify_raw_ed25519(&pk, b"payload", &sig).unwrap();
        assert_eq!(
            verify_raw_ed25519(&pk, b"payloaD", &sig),
            Err(CryptoError::Signature)
        );
        let mut bad = sig;
        bad[10] ^= 1;
        assert_eq!(
            verify_raw_ed25519(&pk, b"payload", &bad),
            Err(CryptoError::Signature)
        );
        assert_eq!(
            verify_raw_ed25519(&[0; 31], b"payload", &sig),
            Err(CryptoError::InvalidKey)
        );
        // Our wrapper over the same seed gives the same public key.
        let ours = SigningKey::from_bytes(&[5; 32]).unwrap();
        assert_eq!(ours.verifying_key().as_bytes(), &pk);
    }

    #[test]
    fn key_serialisation() {
        let k = SigningKey::generate();
        let k2 = SigningKey::from_bytes(&k.to_bytes()).unwrap();
        assert_eq!(k.verifying_key(), k2.verifying_key());
        let vk = VerifyingKey::from_bytes(k.verifying_key().as_bytes()).unwrap();
        assert_eq!(vk, k.verifying_key());
        assert_eq!(
            VerifyingKey::from_bytes(&[1; 31]),
            Err(CryptoError::InvalidKey)
        );
        assert!(SigningKey::from_bytes(&[1; 33]).is_err());
        assert_eq!(format!("{k:?}"), "SigningKey([redacted])");
    }
}
