//! Pins the public signatures other crates are written against, and exercises the crate end to
//! end the way the queue service and client use it.

// Spelling out full function types is the point of this file.
#![allow(clippy::type_complexity)]

use mimi_rm_crypto::{CryptoError, ear, hpke_seal, ids, kdf, padding, ratchet, sign};

#[test]
fn signatures_are_stable() {
    let _: fn(usize) -> usize = padding::padme_len;
    let _: fn(&[u8]) -> Vec<u8> = padding::pad;
    let _: fn(&[u8]) -> Result<Vec<u8>, CryptoError> = padding::unpad;
    let _: fn(&[u8], &str, &[u8], &mut [u8]) -> Result<(), CryptoError> = kdf::expand_label;
    let _: usize = ear::EAR_KEY_LEN;
    let _: fn() -> ear::EarKey = ear::EarKey::random;
    let _: fn(&[u8]) -> Result<ear::EarKey, CryptoError> = ear::EarKey::from_bytes;
    let _: fn(&ear::EarKey) -> &[u8; 32] = ear::EarKey::as_bytes;
    let _: fn(&ear::EarKey, &str, &[u8], &[u8]) -> Result<Vec<u8>, CryptoError> = ear::seal;
    let _: fn(&ear::EarKey, &str, &[u8], &[u8]) -> Result<Vec<u8>, CryptoError> = ear::open;
    let _: fn() -> hpke_seal::HpkeKeyPair = hpke_seal::HpkeKeyPair::generate;
    let _: fn(&[u8]) -> Result<hpke_seal::HpkePublicKey, CryptoError> =
        hpke_seal::HpkePublicKey::from_bytes;
    let _: fn(&hpke_seal::HpkePublicKey) -> &[u8] = hpke_seal::HpkePublicKey::as_bytes;
    let _: fn(&[u8]) -> Result<hpke_seal::HpkePrivateKey, CryptoError> =
        hpke_seal::HpkePrivateKey::from_bytes;
    let _: fn(&hpke_seal::HpkePrivateKey) -> &[u8] = hpke_seal::HpkePrivateKey::as_bytes;
    let _: fn(
        &hpke_seal::HpkePublicKey,
        &str,
        &[u8],
        &[u8],
    ) -> Result<hpke_seal::HpkeCiphertext, CryptoError> = hpke_seal::seal;
    let _: fn(&[u8], &str, &[u8], &[u8]) -> Result<hpke_seal::HpkeCiphertext, CryptoError> =
        hpke_seal::seal_to_init_key;
    let _: fn(
        &hpke_seal::HpkePrivateKey,
        &str,
        &[u8],
        &hpke_seal::HpkeCiphertext,
    ) -> Result<Vec<u8>, CryptoError> = hpke_seal::open;
    let _: fn() -> ratchet::RatchetSecret = ratchet::RatchetSecret::random;
    let _: fn(&[u8]) -> Result<ratchet::RatchetSecret, CryptoError> =
        ratchet::RatchetSecret::from_bytes;
    let _: fn(&ratchet::RatchetSecret) -> &[u8; 32] = ratchet::RatchetSecret::as_bytes;
    let _: fn(&ratchet::RatchetSecret, u64) -> (ratchet::RatchetSecret, ratchet::RatchetKey) =
        ratchet::RatchetSecret::advance;
    let _: fn(&ratchet::RatchetKey, u64, &[u8]) -> Result<Vec<u8>, CryptoError> =
        ratchet::RatchetKey::encrypt;
    let _: fn(&ratchet::RatchetKey, u64, &[u8]) -> Result<Vec<u8>, CryptoError> =
        ratchet::RatchetKey::decrypt;
    let _: fn(ratchet::RatchetSecret) -> ratchet::QueueRatchet = ratchet::QueueRatchet::new;
    let _: fn(&mut ratchet::QueueRatchet, &[u8]) -> Result<(u64, Vec<u8>), CryptoError> =
        ratchet::QueueRatchet::encrypt_next;
    let _: fn(&mut ratchet::QueueRatchet, u64, &[u8]) -> Result<Vec<u8>, CryptoError> =
        ratchet::QueueRatchet::decrypt_next;
    let _: fn(&ratchet::QueueRatchet) -> [u8; 40] = ratchet::QueueRatchet::to_bytes;
    let _: fn(&[u8]) -> Result<ratchet::QueueRatchet, CryptoError> =
        ratchet::QueueRatchet::from_bytes;
    let _: fn() -> sign::SigningKey = sign::SigningKey::generate;
    let _: fn(&[u8]) -> Result<sign::SigningKey, CryptoError> = sign::SigningKey::from_bytes;
    let _: fn(&sign::SigningKey) -> [u8; 32] = sign::SigningKey::to_bytes;
    let _: fn(&sign::SigningKey) -> sign::VerifyingKey = sign::SigningKey::verifying_key;
    let _: fn(&sign::SigningKey, &str, &[u8]) -> Vec<u8> = sign::SigningKey::sign;
    let _: fn(&[u8]) -> Result<sign::VerifyingKey, CryptoError> = sign::VerifyingKey::from_bytes;
    let _: fn(&sign::VerifyingKey) -> &[u8; 32] = sign::VerifyingKey::as_bytes;
    let _: fn(&sign::VerifyingKey, &str, &[u8], &[u8]) -> Result<(), CryptoError> =
        sign::VerifyingKey::verify;
    let _: fn(&[u8], &[u8], &[u8]) -> Result<(), CryptoError> = sign::verify_raw_ed25519;
    let _: fn() -> [u8; 16] = ids::random_id;
    let _: fn() -> [u8; 24] = ids::random_bytes::<24>;
}

#[test]
fn queue_flow_end_to_end() {
    // The client creates a queue: an initial ratchet secret sealed to the QS, and an EAR key.
    let qs_keys = hpke_seal::HpkeKeyPair::generate();
    let initial = ratchet::RatchetSecret::random();
    let sealed = hpke_seal::seal(&qs_keys.public, "queue create", b"", initial.as_bytes()).unwrap();
    let opened = hpke_seal::open(&qs_keys.private, "queue create", b"", &sealed).unwrap();
    let mut qs = ratchet::QueueRatchet::new(ratchet::RatchetSecret::from_bytes(&opened).unwrap());
    let mut client = ratchet::QueueRatchet::new(initial);

    // The QS persists its ratchet under EAR between messages.
    let ear_key = ear::EarKey::random();
    let queue_id = ids::random_id();
    let mut stored = ear::seal(&ear_key, "queue state", &queue_id, &qs.to_bytes()).unwrap();
    let mut inbox = Vec::new();
    for i in 0..3u8 {
        let state = ear::open(&ear_key, "queue state", &queue_id, &stored).unwrap();
        qs = ratchet::QueueRatchet::from_bytes(&state).unwrap();
        inbox.push(qs.encrypt_next(&[i; 10]).unwrap());
        stored = ear::seal(&ear_key, "queue state", &queue_id, &qs.to_bytes()).unwrap();
    }
    for (i, (seq, ct)) in inbox.iter().enumerate() {
        assert_eq!(client.decrypt_next(*seq, ct).unwrap(), [i as u8; 10]);
    }
    assert_eq!(
        ear::open(&ear_key, "group state", &queue_id, &stored),
        Err(CryptoError::WrongKey)
    );

    // Requests are signed with a label naming their kind.
    let sk = sign::SigningKey::generate();
    let sig = sk.sign("queue fetch", &queue_id);
    sk.verifying_key()
        .verify("queue fetch", &queue_id, &sig)
        .unwrap();
    assert_eq!(
        sk.verifying_key().verify("queue delete", &queue_id, &sig),
        Err(CryptoError::Signature)
    );
}
