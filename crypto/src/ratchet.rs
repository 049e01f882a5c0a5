//! The forward-secret queue ratchet.
//!
//! Each queue has a chain of secrets. Message `n` is encrypted under a key derived from secret
//! `n`, which is then replaced by secret `n + 1`. The queue service stores only the current secret,
//! so once a message is enqueued, whoever later seizes the stored state cannot derive its key
//! again. The client starts from the same initial secret and follows the chain as it reads.

use crate::{
    CryptoError, ids::random_bytes, kdf::expand_label_array, kdf::expand_label_pair, padding,
};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of a serialised [`QueueRatchet`].
const STATE_LEN: usize = 40;

/// A chain secret (32 bytes); zeroized on drop, which is what makes old messages unrecoverable.
/// Equality is constant time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RatchetSecret([u8; 32]);

/// A one-message key (32 bytes); zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RatchetKey([u8; 32]);

impl std::fmt::Debug for RatchetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RatchetSecret([redacted])")
    }
}

impl std::fmt::Debug for RatchetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RatchetKey([redacted])")
    }
}

impl PartialEq for RatchetSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for RatchetSecret {}

impl RatchetSecret {
    /// A fresh random initial secret from the OS RNG.
    pub fn random() -> Self {
        Self(random_bytes())
    }

    /// Wraps exactly 32 bytes; any other length is [`CryptoError::InvalidKey`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        Ok(Self(b.try_into().map_err(|_| CryptoError::InvalidKey)?))
    }

    /// The raw bytes, to hand the initial secret to the queue service.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The next chain secret and the key for message `seq`, derived with the labels
    /// "ratchet secret" and "ratchet key" and `seq` (u64 BE) as context.
    pub fn advance(&self, seq: u64) -> (RatchetSecret, RatchetKey) {
        let [secret, key] = expand_label_pair(
            &self.0,
            ["ratchet secret", "ratchet key"],
            &seq.to_be_bytes(),
        );
        (RatchetSecret(secret), RatchetKey(key))
    }
}

/// Every key encrypts exactly one message, so a nonce built from `seq` never repeats per key.
fn nonce(seq: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::from(n)
}

impl RatchetKey {
    fn cipher(&self) -> Result<Aes256Gcm, CryptoError> {
        Aes256Gcm::new_from_slice(&self.0).map_err(|_| CryptoError::InvalidKey)
    }

    /// Pads and encrypts message `seq` with AES-256-GCM; `seq` (u64 BE) is the associated data so
    /// a message cannot be replayed at another position.
    pub fn encrypt(&self, seq: u64, pt: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let padded = Zeroizing::new(padding::try_pad(pt)?);
        let aad = seq.to_be_bytes();
        self.cipher()?
            .encrypt(
                &nonce(seq),
                Payload {
                    msg: &padded,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Malformed("ratchet plaintext too long"))
    }

    /// Decrypts and unpads message `seq`; a wrong key, wrong `seq` or tampering is
    /// [`CryptoError::WrongKey`].
    pub fn decrypt(&self, seq: u64, ct: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let aad = seq.to_be_bytes();
        let padded = Zeroizing::new(
            self.cipher()?
                .decrypt(&nonce(seq), Payload { msg: ct, aad: &aad })
                .map_err(|_| CryptoError::WrongKey)?,
        );
        padding::unpad(&padded)
    }
}

/// The state both ends keep: the current chain secret and the next sequence number.
///
/// The queue service calls [`encrypt_next`](Self::encrypt_next) when enqueuing, the client calls
/// [`decrypt_next`](Self::decrypt_next) in the same order when reading.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct QueueRatchet {
    secret: RatchetSecret,
    next_seq: u64,
}

impl QueueRatchet {
    /// Starts a chain at sequence number 0.
    pub fn new(initial: RatchetSecret) -> Self {
        Self {
            secret: initial,
            next_seq: 0,
        }
    }

    /// The sequence number the next message will have (or must have, when decrypting).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Encrypts the next message, then replaces (and so zeroizes) the secret it used.
    pub fn encrypt_next(&mut self, pt: &[u8]) -> Result<(u64, Vec<u8>), CryptoError> {
        let seq = self.next_seq;
        let after = seq
            .checked_add(1)
            .ok_or(CryptoError::Malformed("ratchet sequence overflow"))?;
        let (next, key) = self.secret.advance(seq);
        let ct = key.encrypt(seq, pt)?;
        self.secret = next;
        self.next_seq = after;
        Ok((seq, ct))
    }

    /// Decrypts message `seq`, which must be [`next_seq`](Self::next_seq) (else
    /// `Malformed("ratchet sequence")`); the state advances only on success, so a bad message can
    /// be skipped by neither side by accident.
    pub fn decrypt_next(&mut self, seq: u64, ct: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if seq != self.next_seq {
            return Err(CryptoError::Malformed("ratchet sequence"));
        }
        let after = seq
            .checked_add(1)
            .ok_or(CryptoError::Malformed("ratchet sequence overflow"))?;
        let (next, key) = self.secret.advance(seq);
        let pt = key.decrypt(seq, ct)?;
        self.secret = next;
        self.next_seq = after;
        Ok(pt)
    }

    /// Steps over one message that will never arrive (the server expired it): derives and
    /// discards its key, so the chain stays in step.
    pub fn skip(&mut self) -> Result<(), CryptoError> {
        let after = self
            .next_seq
            .checked_add(1)
            .ok_or(CryptoError::Malformed("ratchet sequence overflow"))?;
        let (next, _) = self.secret.advance(self.next_seq);
        self.secret = next;
        self.next_seq = after;
        Ok(())
    }

    /// Mixes fresh randomness into the chain at the current position (post-compromise
    /// security): from here on, keys depend on `fresh`, so someone who copied the state earlier
    /// cannot follow. Both ends apply it at the same sequence number.
    pub fn mix(&mut self, fresh: &[u8; 32]) {
        let mut ctx = fresh.to_vec();
        ctx.extend_from_slice(&self.next_seq.to_be_bytes());
        self.secret = RatchetSecret(expand_label_array(&self.secret.0, "ratchet mix", &ctx));
        ctx.zeroize();
    }

    /// `secret ‖ next_seq (u64 BE)`, 40 bytes, for persisting. The result holds the secret:
    /// store it encrypted and zeroize it when done.
    pub fn to_bytes(&self) -> [u8; STATE_LEN] {
        let mut out = [0u8; STATE_LEN];
        out[..32].copy_from_slice(&self.secret.0);
        out[32..].copy_from_slice(&self.next_seq.to_be_bytes());
        out
    }

    /// Reverses [`to_bytes`](Self::to_bytes); any length but 40 is [`CryptoError::Malformed`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        let b: &[u8; STATE_LEN] = b
            .try_into()
            .map_err(|_| CryptoError::Malformed("ratchet state length"))?;
        let (secret, seq) = b.split_at(32);
        let seq: [u8; 8] = seq
            .try_into()
            .map_err(|_| CryptoError::Malformed("ratchet state length"))?;
        Ok(Self {
            secret: RatchetSecret::from_bytes(secret)?,
            next_seq: u64::from_be_bytes(seq),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixing_locks_out_an_old_copy_of_the_state() {
        let mut qs = QueueRatchet::new(RatchetSecret::random());
        let mut client = qs.clone();
        let (s0, c0) = qs.encrypt_next(b"before").unwrap();
        assert_eq!(client.decrypt_next(s0, &c0).unwrap(), b"before");
        let stolen = qs.clone();
        let fresh = [7u8; 32];
        qs.mix(&fresh);
        client.mix(&fresh);
        let (s1, c1) = qs.encrypt_next(b"after").unwrap();
        assert_eq!(client.decrypt_next(s1, &c1).unwrap(), b"after");
        assert!(stolen.clone().decrypt_next(s1, &c1).is_err());
        // The mix depends on the position: the same randomness at another seq differs.
        let mut other = stolen;
        other.next_seq += 1;
        other.mix(&fresh);
        assert_ne!(other.to_bytes()[..32], qs.to_bytes()[..32]);
    }

    /// Pins the chain derivation and message format.
    const KAT_ADVANCE: [&str; 2] = [
        "600bb3a1ba343d1ee15480ae301abd03bbffe0a8a25120c298d3c836813c6d02",
        "8bd8c55cbe4f13eb6b61d2559c2e3cfdffb56c0aa3d179cee88b0950dc795674",
    ];
    const KAT_RATCHET: [&str; 2] = [
        "394197f02ee6c94f24e7b96d40cd27572b846a1bc717b1071639",
        "353700866c0c473888fb8c14afe1db663df0bbc49ae26ebb55d6",
    ];

    #[test]
    fn known_answer() {
        let init = RatchetSecret::from_bytes(&[0x33; 32]).unwrap();
        let (next, key) = init.advance(0);
        assert_eq!(hex::encode(next.as_bytes()), KAT_ADVANCE[0]);
        assert_eq!(hex::encode(key.0), KAT_ADVANCE[1]);
        let mut r = QueueRatchet::new(init);
        let (seq0, ct0) = r.encrypt_next(b"first").unwrap();
        let (seq1, ct1) = r.encrypt_next(b"second").unwrap();
        assert_eq!((seq0, seq1), (0, 1));
        assert_eq!(hex::encode(&ct0), KAT_RATCHET[0]);
        assert_eq!(hex::encode(&ct1), KAT_RATCHET[1]);
    }

    #[test]
    fn both_ends_follow_the_chain() {
        let init = RatchetSecret::random();
        let mut qs = QueueRatchet::new(init.clone());
        let mut client = QueueRatchet::new(init);
        let msgs: Vec<(u64, Vec<u8>)> = (0..3)
            .map(|i| qs.encrypt_next(format!("message {i}").as_bytes()).unwrap())
            .collect();
        assert_eq!(msgs.iter().map(|m| m.0).collect::<Vec<_>>(), [0, 1, 2]);
        for (i, (seq, ct)) in msgs.iter().enumerate() {
            assert_eq!(
                client.decrypt_next(*seq, ct).unwrap(),
                format!("message {i}").as_bytes()
            );
        }
        assert_eq!(client, qs);
        assert_eq!(client.next_seq(), 3);
    }

    #[test]
    fn wrong_sequence_is_refused_without_advancing() {
        let init = RatchetSecret::random();
        let mut qs = QueueRatchet::new(init.clone());
        let mut client = QueueRatchet::new(init);
        let (_, ct0) = qs.encrypt_next(b"a").unwrap();
        let (_, ct1) = qs.encrypt_next(b"b").unwrap();
        assert_eq!(
            client.decrypt_next(1, &ct1),
            Err(CryptoError::Malformed("ratchet sequence"))
        );
        // Right position, wrong message: authentication fails and nothing advances.
        assert_eq!(client.decrypt_next(0, &ct1), Err(CryptoError::WrongKey));
        assert_eq!(client.next_seq(), 0);
        assert_eq!(client.decrypt_next(0, &ct0).unwrap(), b"a");
        assert_eq!(client.decrypt_next(1, &ct1).unwrap(), b"b");
        // A key for one position does not open the same message under another sequence number.
        let (_, key) = RatchetSecret::from_bytes(&[1; 32]).unwrap().advance(5);
        let ct = key.encrypt(5, b"x").unwrap();
        assert_eq!(key.decrypt(6, &ct), Err(CryptoError::WrongKey));
        assert_eq!(key.decrypt(5, &ct).unwrap(), b"x");
    }

    #[test]
    fn forward_secrecy() {
        let init = RatchetSecret::random();
        let mut qs = QueueRatchet::new(init.clone());
        let msgs: Vec<(u64, Vec<u8>)> = (0..3).map(|_| qs.encrypt_next(b"m").unwrap()).collect();
        // The state the queue service holds now cannot decrypt anything already enqueued.
        let seized = QueueRatchet::from_bytes(&qs.to_bytes()).unwrap();
        for (seq, ct) in &msgs {
            let (_, key) = seized.secret.advance(*seq);
            assert_eq!(key.decrypt(*seq, ct), Err(CryptoError::WrongKey));
        }
        // An old key does not decrypt later messages either.
        let (_, key0) = init.advance(0);
        assert_eq!(key0.decrypt(1, &msgs[1].1), Err(CryptoError::WrongKey));
        assert_eq!(key0.decrypt(0, &msgs[1].1), Err(CryptoError::WrongKey));
        assert_eq!(key0.decrypt(0, &msgs[0].1).unwrap(), b"m");
    }

    #[test]
    fn persist_round_trip() {
        let mut r = QueueRatchet::new(RatchetSecret::random());
        r.encrypt_next(b"x").unwrap();
        let bytes = r.to_bytes();
        assert_eq!(&bytes[32..], &1u64.to_be_bytes());
        let back = QueueRatchet::from_bytes(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.next_seq(), 1);
        assert!(matches!(
            QueueRatchet::from_bytes(&[0; 39]),
            Err(CryptoError::Malformed(_))
        ));
        assert!(matches!(
            QueueRatchet::from_bytes(&[0; 41]),
            Err(CryptoError::Malformed(_))
        ));
    }

    #[test]
    fn sequence_overflow_and_garbage_do_not_panic() {
        let mut bytes = [7u8; 40];
        bytes[32..].copy_from_slice(&u64::MAX.to_be_bytes());
        let mut r = QueueRatchet::from_bytes(&bytes).unwrap();
        assert!(matches!(
            r.encrypt_next(b"x"),
            Err(CryptoError::Malformed(_))
        ));
        assert!(matches!(
            r.decrypt_next(u64::MAX, &[0; 40]),
            Err(CryptoError::Malformed(_))
        ));
        let (_, key) = RatchetSecret::random().advance(0);
        for len in [0, 1, 15, 16, 17, 100] {
            assert_eq!(key.decrypt(0, &vec![0; len]), Err(CryptoError::WrongKey));
        }
        assert_eq!(format!("{key:?}"), "RatchetKey([redacted])");
        assert_eq!(
            format!("{:?}", RatchetSecret::random()),
            "RatchetSecret([redacted])"
        );
    }
}
