//! Key-committing AEAD for encryption at rest (EAR).
//!
//! Format: `0x01 ‖ salt[32] ‖ commitment[32] ‖ AES-256-GCM(padded plaintext) ‖ tag[16]`.
//!
//! From the key, the random salt and a use label (`domain`) we derive, with labelled HKDF, a
//! one-time encryption key and a commitment. AES-GCM alone is not key-committing: a crafted
//! ciphertext can decrypt validly under two keys. Checking the commitment (in constant time)
//! before decrypting closes that gap, so a ciphertext opens under exactly one key and a wrong key is
//! always [`CryptoError::WrongKey`]. Because every salt yields a fresh key, the GCM nonce is fixed
//! to zero. The plaintext is Padmé-padded so stored sizes reveal only a length bucket.

use crate::{CryptoError, ids::random_bytes, kdf::expand_label_array, padding};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of an EAR key in bytes.
pub const EAR_KEY_LEN: usize = 32;
const VERSION: u8 = 0x01;
const SALT_LEN: usize = 32;
const COMMIT_LEN: usize = 32;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + SALT_LEN + COMMIT_LEN;

/// A 32-byte symmetric key for encryption at rest; zeroized on drop so it does not linger in
/// freed memory. Equality is constant time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct EarKey([u8; EAR_KEY_LEN]);

impl std::fmt::Debug for EarKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EarKey([redacted])")
    }
}

impl PartialEq for EarKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for EarKey {}

impl EarKey {
    /// A fresh key from the OS RNG.
    pub fn random() -> Self {
        Self(random_bytes())
    }

    /// Wraps exactly [`EAR_KEY_LEN`] bytes (e.g. a key received from a client); any other length
    /// is [`CryptoError::InvalidKey`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        Ok(Self(b.try_into().map_err(|_| CryptoError::InvalidKey)?))
    }

    /// The raw key, for handing it to its owner or persisting it under another key.
    pub fn as_bytes(&self) -> &[u8; EAR_KEY_LEN] {
        &self.0
    }
}

/// Per-ciphertext encryption key (secret) and commitment (public).
struct Derived {
    enc: Zeroizing<[u8; 32]>,
    commitment: [u8; COMMIT_LEN],
}

/// The salt has a fixed length, so `salt ‖ domain` is an unambiguous context.
fn derive(key: &EarKey, domain: &str, salt: &[u8; SALT_LEN]) -> Derived {
    let mut ctx = Vec::with_capacity(SALT_LEN + domain.len());
    ctx.extend_from_slice(salt);
    ctx.extend_from_slice(domain.as_bytes());
    Derived {
        enc: Zeroizing::new(expand_label_array(&key.0, "ear enc", &ctx)),
        commitment: expand_label_array(&key.0, "ear commit", &ctx),
    }
}

fn cipher(d: &Derived) -> Result<Aes256Gcm, CryptoError> {
    Aes256Gcm::new_from_slice(d.enc.as_slice()).map_err(|_| CryptoError::InvalidKey)
}

/// Pads and encrypts `plaintext` for the use `domain`, binding `aad`; the result opens only with
/// the same key, domain and aad.
pub fn seal(
    key: &EarKey,
    domain: &str,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    seal_with_salt(key, domain, aad, plaintext, random_bytes())
}

/// [`seal`] with a caller-chosen salt, for known-answer tests only: reusing a salt with the same
/// key and domain reuses the GCM key and nonce, which breaks confidentiality.
#[doc(hidden)]
pub fn seal_with_salt(
    key: &EarKey,
    domain: &str,
    aad: &[u8],
    plaintext: &[u8],
    salt: [u8; SALT_LEN],
) -> Result<Vec<u8>, CryptoError> {
    let d = derive(key, domain, &salt);
    let padded = Zeroizing::new(padding::try_pad(plaintext)?);
    let ct = cipher(&d)?
        .encrypt(&Nonce::from([0u8; 12]), Payload { msg: &padded, aad })
        .map_err(|_| CryptoError::Malformed("EAR plaintext too long"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
    out.push(VERSION);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&d.commitment);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Checks the key commitment, decrypts and unpads.
///
/// Wrong key, wrong domain, wrong aad or any modification of the commitment or ciphertext is
/// [`CryptoError::WrongKey`]; a too-short input or an unknown version is
/// [`CryptoError::Malformed`].
pub fn open(
    key: &EarKey,
    domain: &str,
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let (&version, rest) = ciphertext
        .split_first()
        .ok_or(CryptoError::Malformed("EAR ciphertext too short"))?;
    if version != VERSION {
        return Err(CryptoError::Malformed("EAR version"));
    }
    let (salt, rest) = rest
        .split_first_chunk::<SALT_LEN>()
        .ok_or(CryptoError::Malformed("EAR ciphertext too short"))?;
    let (commitment, body) = rest
        .split_first_chunk::<COMMIT_LEN>()
        .ok_or(CryptoError::Malformed("EAR ciphertext too short"))?;
    if body.len() < TAG_LEN {
        return Err(CryptoError::Malformed("EAR ciphertext too short"));
    }
    let d = derive(key, domain, salt);
    if !bool::from(d.commitment.ct_eq(commitment)) {
        return Err(CryptoError::WrongKey);
    }
    let padded = Zeroizing::new(
        cipher(&d)?
            .decrypt(&Nonce::from([0u8; 12]), Payload { msg: body, aad })
            .map_err(|_| CryptoError::WrongKey)?,
    );
    padding::unpad(&padded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the format and derivations; update only together with a version byte change.
    const KAT_EAR: &str = "01222222222222222222222222222222222222222222222222222222222222222283a94771d4194572a72fc2256c5b50d93c5b741e6bc772d86646c00ad15e413ecd89c71a7d1939cbfba38eae8f6f913f4222358643df919b9ffe73e88c2a";

    #[test]
    fn known_answer() {
        let key = EarKey::from_bytes(&[0x11; 32]).unwrap();
        let ct = seal_with_salt(&key, "group state", b"aad", b"hello ear", [0x22; 32]).unwrap();
        assert_eq!(hex::encode(&ct), KAT_EAR);
        assert_eq!(
            open(&key, "group state", b"aad", &ct).unwrap(),
            b"hello ear"
        );
    }

    #[test]
    fn round_trip_sizes() {
        let key = EarKey::random();
        for len in [0, 1, 17, 100, 5000] {
            let pt = vec![0x5a; len];
            let ct = seal(&key, "d", b"a", &pt).unwrap();
            assert_eq!(ct.len(), HEADER_LEN + padding::padme_len(4 + len) + TAG_LEN);
            assert_eq!(open(&key, "d", b"a", &ct).unwrap(), pt);
        }
        let a = seal(&key, "d", b"a", b"same").unwrap();
        let b = seal(&key, "d", b"a", b"same").unwrap();
        assert_ne!(a, b, "fresh salt per seal");
    }

    #[test]
    fn wrong_key_domain_and_aad_are_wrong_key() {
        let key = EarKey::random();
        let ct = seal(&key, "group state", b"a", b"secret state").unwrap();
        assert_eq!(
            open(&key, "group state", b"a", &ct).unwrap(),
            b"secret state"
        );
        assert_eq!(
            open(&EarKey::random(), "group state", b"a", &ct),
            Err(CryptoError::WrongKey)
        );
        assert_eq!(open(&key, "queue", b"a", &ct), Err(CryptoError::WrongKey));
        assert_eq!(
            open(&key, "group state", b"b", &ct),
            Err(CryptoError::WrongKey)
        );
    }

    #[test]
    fn every_flipped_bit_and_truncation_fails() {
        let key = EarKey::random();
        let ct = seal(&key, "d", b"a", b"secret state").unwrap();
        for i in 0..ct.len() {
            for bit in 0..8 {
                let mut t = ct.clone();
                t[i] ^= 1 << bit;
                let err = open(&key, "d", b"a", &t).unwrap_err();
                let want_malformed = i == 0;
                assert_eq!(
                    matches!(err, CryptoError::Malformed(_)),
                    want_malformed,
                    "byte {i}"
                );
                if i > 0 {
                    assert_eq!(err, CryptoError::WrongKey, "byte {i}");
                }
            }
        }
        for cut in 0..ct.len() {
            let err = open(&key, "d", b"a", &ct[..cut]).unwrap_err();
            assert!(
                matches!(err, CryptoError::Malformed(_) | CryptoError::WrongKey),
                "cut {cut}: {err:?}"
            );
        }
        let mut longer = ct.clone();
        longer.push(0);
        assert_eq!(open(&key, "d", b"a", &longer), Err(CryptoError::WrongKey));
    }

    #[test]
    fn lengths_within_a_bucket_are_equal() {
        let key = EarKey::random();
        // padme_len(1004) == padme_len(1014) == 1024.
        let a = seal(&key, "d", b"", &[1u8; 1000]).unwrap();
        let b = seal(&key, "d", b"", &[1u8; 1010]).unwrap();
        assert_eq!(a.len(), b.len());
        let c = seal(&key, "d", b"", &[1u8; 1030]).unwrap();
        assert_ne!(a.len(), c.len());
    }

    #[test]
    fn key_handling() {
        assert_eq!(EarKey::from_bytes(&[0; 31]), Err(CryptoError::InvalidKey));
        assert_eq!(EarKey::from_bytes(&[0; 33]), Err(CryptoError::InvalidKey));
        let key = EarKey::from_bytes(&[0xaa; 32]).unwrap();
        assert_eq!(key.as_bytes(), &[0xaa; 32]);
        assert_eq!(key.clone(), key);
        assert_ne!(EarKey::random(), key);
        assert_eq!(format!("{key:?}"), "EarKey([redacted])");
    }
}
