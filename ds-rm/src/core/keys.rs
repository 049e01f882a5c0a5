//! The hub's own keys in `server_keys`: loaded at start, created on first start.

use super::qs::QsKeys;
use super::{Hub, HubError};
use crate::store::{Cf, LockKind, Store, Txn};
use mimi_rm_crypto::hpke_seal::{HpkeKeyPair, HpkePrivateKey, HpkePublicKey};
use mimi_rm_crypto::sign::SigningKey;

/// The QS HPKE key pair (opens sealed queue refs).
pub const QS_HPKE_KEY: &[u8] = b"qs_hpke_v1";
/// The federation signing key.
pub const S2S_SIGNING_KEY: &[u8] = b"s2s_signing_v1";
/// The DS external-sender key (signs the hub's removal proposals).
pub const DS_SENDER_KEY: &[u8] = b"ds_external_sender_v1";

/// The hub's VAPID (RFC 8292) signing key: one per hub, since push services tie a subscription
/// to the application server key it was made for.
pub const VAPID_KEY: &[u8] = b"vapid p256";

/// The bytes stored under `name` in `server_keys`; on first start, `create`'s, stored first.
fn load_or_create(
    store: &dyn Store,
    name: &[u8],
    create: impl FnOnce() -> Vec<u8>,
) -> Result<zeroize::Zeroizing<Vec<u8>>, HubError> {
    if let Some(bytes) = store.get(Cf::ServerKeys, name)? {
        return Ok(zeroize::Zeroizing::new(bytes));
    }
    // Processes sharing the store create it once: the first under this lock, the others find
    // it when they get the lock.
    let _creating = crate::store::hold_global(store.coordinator().as_deref(), LockKind::Keys)?;
    if let Some(bytes) = store.get(Cf::ServerKeys, name)? {
        return Ok(zeroize::Zeroizing::new(bytes));
    }
    let bytes = zeroize::Zeroizing::new(create());
    let mut txn = Txn::new(store);
    txn.put(Cf::ServerKeys, name.to_vec(), bytes.to_vec());
    txn.commit()?;
    Ok(bytes)
}

/// Loads the QS HPKE key pair, creating it on first start.
pub fn qs_keys(store: &dyn Store) -> Result<QsKeys, HubError> {
    let bytes = load_or_create(store, QS_HPKE_KEY, || {
        let kp = HpkeKeyPair::generate();
        let mut bytes = kp.private.as_bytes().to_vec();
        bytes.extend_from_slice(kp.public.as_bytes());
        bytes
    })?;
    if bytes.len() != 64 {
        return Err(HubError::corrupt("server_keys", "QS key length"));
    }
    Ok(QsKeys {
        hpke: HpkeKeyPair {
            private: HpkePrivateKey::from_bytes(&bytes[..32])
                .map_err(|e| HubError::corrupt("server_keys", e))?,
            public: HpkePublicKey::from_bytes(&bytes[32..])
                .map_err(|e| HubError::corrupt("server_keys", e))?,
        },
    })
}

/// Loads the Ed25519 key stored under `name`, creating it on first start.
pub fn signing_key(store: &dyn Store, name: &[u8]) -> Result<SigningKey, HubError> {
    let bytes = load_or_create(store, name, || SigningKey::generate().to_bytes().to_vec())?;
    SigningKey::from_bytes(&bytes).map_err(|_| HubError::corrupt("server_keys", "signing key"))
}

/// Loads the hub's VAPID key, creating it on first start.
pub fn vapid_key(store: &dyn Store) -> Result<p256::SecretKey, HubError> {
    let bytes = load_or_create(store, VAPID_KEY, || {
        p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng)
            .to_bytes()
            .to_vec()
    })?;
    p256::SecretKey::from_slice(&bytes).map_err(|_| HubError::corrupt("server_keys", "VAPID key"))
}

impl Hub {
    /// A 32-byte secret stored under `name` in `server_keys`, created on first use (seeds of
    /// keys the shells derive, such as the OHTTP gateway's).
    pub fn server_seed(&self, name: &[u8]) -> Result<zeroize::Zeroizing<[u8; 32]>, HubError> {
        let bytes = load_or_create(self.store.as_ref(), name, || {
            mimi_rm_crypto::ids::random_bytes::<32>().to_vec()
        })?;
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| HubError::corrupt("server_keys", "seed length"))?;
        Ok(zeroize::Zeroizing::new(seed))
    }
}
