//! The hub's own keys in `server_keys`: loaded at start, created on first start.

use super::qs::QsKeys;
use super::{Hub, HubError};
use crate::store::{Cf, Store, Txn};
use mimi_rm_crypto::hpke_seal::{HpkeKeyPair, HpkePrivateKey, HpkePublicKey};
use mimi_rm_crypto::sign::SigningKey;

/// The QS HPKE key pair (opens sealed queue refs).
pub const QS_HPKE_KEY: &[u8] = b"qs_hpke_v1";
/// The federation signing key.
pub const S2S_SIGNING_KEY: &[u8] = b"s2s_signing_v1";
/// The DS external-sender key (signs the hub's removal proposals).
pub const DS_SENDER_KEY: &[u8] = b"ds_external_sender_v1";

/// Loads the QS HPKE key pair, creating it on first start.
pub fn qs_keys(store: &dyn Store) -> Result<QsKeys, HubError> {
    Ok(match store.get(Cf::ServerKeys, QS_HPKE_KEY)? {
        Some(bytes) if bytes.len() == 64 => QsKeys {
            hpke: HpkeKeyPair {
                private: HpkePrivateKey::from_bytes(&bytes[..32])
                    .map_err(|e| HubError::corrupt("server_keys", e))?,
                public: HpkePublicKey::from_bytes(&bytes[32..])
                    .map_err(|e| HubError::corrupt("server_keys", e))?,
            },
        },
        Some(_) => return Err(HubError::corrupt("server_keys", "QS key length")),
        None => {
            let kp = HpkeKeyPair::generate();
            let mut bytes = kp.private.as_bytes().to_vec();
            bytes.extend_from_slice(kp.public.as_bytes());
            let mut txn = Txn::new(store);
            txn.put(Cf::ServerKeys, QS_HPKE_KEY.to_vec(), bytes);
            txn.commit()?;
            QsKeys { hpke: kp }
        }
    })
}

/// Loads the Ed25519 key stored under `name`, creating it on first start.
pub fn signing_key(store: &dyn Store, name: &[u8]) -> Result<SigningKey, HubError> {
    match store.get(Cf::ServerKeys, name)? {
        Some(bytes) => SigningKey::from_bytes(&bytes)
            .map_err(|_| HubError::corrupt("server_keys", "signing key")),
        None => {
            let key = SigningKey::generate();
            let mut txn = Txn::new(store);
            txn.put(Cf::ServerKeys, name.to_vec(), key.to_bytes().to_vec());
            txn.commit()?;
            Ok(key)
        }
    }
}

impl Hub {
    /// A 32-byte secret stored under `name` in `server_keys`, created on first use (seeds of
    /// keys the shells derive, such as the OHTTP gateway's).
    pub fn server_seed(&self, name: &[u8]) -> Result<zeroize::Zeroizing<[u8; 32]>, HubError> {
        if let Some(bytes) = self.store.get(Cf::ServerKeys, name)? {
            let seed: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| HubError::corrupt("server_keys", "seed length"))?;
            return Ok(zeroize::Zeroizing::new(seed));
        }
        let seed = zeroize::Zeroizing::new(mimi_rm_crypto::ids::random_bytes::<32>());
        let mut txn = Txn::new(self.store.as_ref());
        txn.put(Cf::ServerKeys, name.to_vec(), seed.to_vec());
        txn.commit()?;
        Ok(seed)
    }
}
