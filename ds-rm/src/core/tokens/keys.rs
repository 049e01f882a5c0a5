//! Issuer keys per key epoch: created when an epoch starts, kept for redemption through an
//! overlap window after it ends, then reduced to their key ids (so an expired token gets a
//! precise error) while the secret material and the epoch's spent nonces are deleted.

use crate::core::HubError;
use crate::store::{Cf, LockKind, Store, Txn};
use blind_rsa_signatures::{Deterministic, KeyPair, PSS, SecretKey, Sha384};
use privacypass::VoprfServer;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use voprf::Ristretto255;

/// The RSA key type RFC 9578 token type 2 uses (RSABSSA-SHA384-PSS-Deterministic).
pub type RsaKeyPair = KeyPair<Sha384, PSS, Deterministic>;

const RSA_BITS: usize = 2048;
/// Domain separation for deriving the VOPRF key from its stored seed.
const VOPRF_INFO: &[u8] = b"mimi-rm privacy pass ristretto255 v1";
/// Retired key ids are remembered this many epochs, then forgotten (tokens that old get
/// "unknown key").
const RETIRED_EPOCHS_KEPT: u64 = 64;

/// When keys start, stop issuing and stop redeeming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySchedule {
    /// Length of one key epoch in seconds (at least 1).
    pub epoch_secs: u64,
    /// How long after its epoch ends a key still redeems, so tokens fetched just before a
    /// rollover stay usable.
    pub overlap_secs: u64,
}

impl KeySchedule {
    /// The epoch containing `now_s`.
    pub fn epoch_at(&self, now_s: u64) -> u64 {
        now_s / self.epoch_secs.max(1)
    }

    /// Unix seconds at which `epoch` starts issuing.
    pub fn start_of(&self, epoch: u64) -> u64 {
        epoch.saturating_mul(self.epoch_secs.max(1))
    }

    /// Whether `epoch`'s key still redeems at `now_s`.
    pub fn redeems(&self, epoch: u64, now_s: u64) -> bool {
        let end = self
            .start_of(epoch.saturating_add(1))
            .saturating_add(self.overlap_secs);
        epoch <= self.epoch_at(now_s) && now_s < end
    }
}

/// One epoch's keys, in memory.
pub struct EpochKeys {
    /// The key epoch.
    pub epoch: u64,
    /// Type 2 key pair.
    pub rsa: RsaKeyPair,
    /// SPKI of the type 2 public key, as published.
    pub rsa_spki: Vec<u8>,
    /// SHA-256 of `rsa_spki`.
    pub rsa_key_id: [u8; 32],
    /// Type 5 VOPRF server (holds the private scalar).
    pub voprf: VoprfServer<Ristretto255>,
    /// Serialized type 5 public key, as published.
    pub voprf_public: Vec<u8>,
    /// SHA-256 of `voprf_public`.
    pub voprf_key_id: [u8; 32],
}

impl std::fmt::Debug for EpochKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochKeys")
            .field("epoch", &self.epoch)
            .field("rsa_key_id", &hex::encode(self.rsa_key_id))
            .field("voprf_key_id", &hex::encode(self.voprf_key_id))
            .finish_non_exhaustive()
    }
}

/// What a token's key id names.
pub enum KeyLookup {
    /// A key that redeems now.
    Active(Arc<EpochKeys>),
    /// A key that used to redeem.
    Expired,
    /// No key this hub ever had (or one forgotten long ago).
    Unknown,
}

#[derive(Default)]
struct KeyState {
    active: BTreeMap<u64, Arc<EpochKeys>>,
    retired: BTreeMap<u64, [[u8; 32]; 2]>,
}

/// Which of the hub's two issuers a key set belongs to: the record tags that keep their rows
/// apart in `pp_keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTags {
    secret: u8,
    retired: u8,
    /// For log lines.
    pub name: &'static str,
}

impl KeyTags {
    /// The issuer of request tokens (types 2 and 5).
    pub const REQUESTS: KeyTags = KeyTags {
        secret: b'k',
        retired: b'r',
        name: "request",
    };
    /// The issuer of registration tokens (type 2 only is issued; the VOPRF half is unused).
    pub const REGISTRATION: KeyTags = KeyTags {
        secret: b'g',
        retired: b'h',
        name: "registration",
    };

    fn key(tag: u8, epoch: u64) -> Vec<u8> {
        let mut k = vec![tag];
        k.extend_from_slice(&epoch.to_be_bytes());
        k
    }
}

/// The issuer's key set over a store.
pub struct IssuerKeys {
    tags: KeyTags,
    schedule: KeySchedule,
    state: RwLock<KeyState>,
    /// Serialises rotations (key generation takes up to half a second).
    rotating: Mutex<()>,
}

fn internal(e: impl std::fmt::Display) -> HubError {
    HubError::Bug(format!("privacy pass keys: {e}"))
}

/// The row of the request issuer's secret keys of `epoch` (test vectors store keys there).
#[cfg(test)]
pub(super) fn secret_key(epoch: u64) -> Vec<u8> {
    KeyTags::key(KeyTags::REQUESTS.secret, epoch)
}

#[cfg(test)]
fn retired_key(epoch: u64) -> Vec<u8> {
    KeyTags::key(KeyTags::REQUESTS.retired, epoch)
}

/// Stored secret record: `u32 der_len ‖ rsa pkcs#8 der ‖ voprf seed (32)`.
pub(super) fn encode_secret(der: &[u8], seed: &[u8; 32]) -> Result<Vec<u8>, HubError> {
    let len = u32::try_from(der.len()).map_err(internal)?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(der);
    out.extend_from_slice(seed);
    Ok(out)
}

fn decode_secret(bytes: &[u8]) -> Result<(&[u8], [u8; 32]), HubError> {
    let len_bytes: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| internal("corrupt key record"))?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let der = bytes
        .get(4..4 + len)
        .ok_or_else(|| internal("corrupt key record"))?;
    let seed: [u8; 32] = bytes
        .get(4 + len..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| internal("corrupt key record"))?;
    Ok((der, seed))
}

impl EpochKeys {
    fn from_parts(
        epoch: u64,
        sk: SecretKey<Sha384, PSS, Deterministic>,
        seed: &[u8; 32],
    ) -> Result<Self, HubError> {
        let pk = sk.public_key().map_err(internal)?;
        let rsa = RsaKeyPair { pk, sk };
        let rsa_spki =
            privacypass::public_tokens::server::serialize_public_key(&rsa.pk).map_err(internal)?;
        let voprf =
            VoprfServer::<Ristretto255>::new_from_seed(seed, VOPRF_INFO).map_err(internal)?;
        let voprf_public = privacypass::common::private::serialize_public_key::<Ristretto255>(
            voprf.get_public_key(),
        );
        Ok(Self {
            epoch,
            rsa_key_id: Sha256::digest(&rsa_spki).into(),
            rsa_spki,
            rsa,
            voprf_key_id: Sha256::digest(&voprf_public).into(),
            voprf_public,
            voprf,
        })
    }

    fn generate(epoch: u64) -> Result<(Self, Vec<u8>), HubError> {
        let mut rng = blind_rsa_signatures::reexports::rand::rng();
        let kp = RsaKeyPair::generate(&mut rng, RSA_BITS).map_err(internal)?;
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        let der = kp.sk.to_der().map_err(internal)?;
        let record = encode_secret(&der, &seed)?;
        Ok((Self::from_parts(epoch, kp.sk, &seed)?, record))
    }

    fn load(epoch: u64, record: &[u8]) -> Result<Self, HubError> {
        let (der, seed) = decode_secret(record)?;
        let sk = SecretKey::from_der(der).map_err(internal)?;
        Self::from_parts(epoch, sk, &seed)
    }
}

impl IssuerKeys {
    /// Loads every stored key and brings the set up to date for `now_s`.
    pub fn open(
        store: &dyn Store,
        tags: KeyTags,
        schedule: KeySchedule,
        now_s: u64,
    ) -> Result<Self, HubError> {
        let mut state = KeyState::default();
        let mut rows = store.scan_prefix(Cf::PpKeys, &[tags.secret], usize::MAX)?;
        rows.extend(store.scan_prefix(Cf::PpKeys, &[tags.retired], usize::MAX)?);
        for (k, v) in rows {
            let Some((&tag, epoch)) = k.split_first() else {
                continue;
            };
            let epoch = u64::from_be_bytes(epoch.try_into().map_err(internal)?);
            match tag {
                t if t == tags.secret => {
                    state
                        .active
                        .insert(epoch, Arc::new(EpochKeys::load(epoch, &v)?));
                }
                t if t == tags.retired => {
                    let ids: [u8; 64] = v.as_slice().try_into().map_err(internal)?;
                    let mut a = [0u8; 32];
                    let mut b = [0u8; 32];
                    a.copy_from_slice(&ids[..32]);
                    b.copy_from_slice(&ids[32..]);
                    state.retired.insert(epoch, [a, b]);
                }
                _ => return Err(internal("unknown key record")),
            }
        }
        let keys = Self {
            tags,
            schedule,
            state: RwLock::new(state),
            rotating: Mutex::new(()),
        };
        keys.rotate(store, now_s)?;
        Ok(keys)
    }

    /// The schedule.
    pub fn schedule(&self) -> KeySchedule {
        self.schedule
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The key that issues at `now_s`, creating (and rotating) keys when an epoch has begun.
    pub fn current(&self, store: &dyn Store, now_s: u64) -> Result<Arc<EpochKeys>, HubError> {
        let epoch = self.schedule.epoch_at(now_s);
        if let Some(k) = self.read().active.get(&epoch) {
            return Ok(k.clone());
        }
        self.rotate(store, now_s)?;
        self.read()
            .active
            .get(&epoch)
            .cloned()
            .ok_or_else(|| internal("no key after rotation"))
    }

    /// Keys that redeem at `now_s`, newest first.
    pub fn redeeming(&self, now_s: u64) -> Vec<Arc<EpochKeys>> {
        self.read()
            .active
            .values()
            .rev()
            .filter(|k| self.schedule.redeems(k.epoch, now_s))
            .cloned()
            .collect()
    }

    /// What `key_id` names at `now_s`.
    pub fn lookup(&self, key_id: &[u8; 32], now_s: u64) -> KeyLookup {
        let state = self.read();
        for k in state.active.values() {
            if k.rsa_key_id == *key_id || k.voprf_key_id == *key_id {
                return if self.schedule.redeems(k.epoch, now_s) {
                    KeyLookup::Active(k.clone())
                } else {
                    KeyLookup::Expired
                };
            }
        }
        if state.retired.values().any(|ids| ids.contains(key_id)) {
            KeyLookup::Expired
        } else {
            KeyLookup::Unknown
        }
    }

    /// Creates the current epoch's keys if missing; retires keys past their overlap window
    /// (deleting their secrets and their spent nonces, which can no longer be replayed since
    /// the key no longer redeems); forgets very old retired ids. Idempotent.
    pub fn rotate(&self, store: &dyn Store, now_s: u64) -> Result<(), HubError> {
        let _rotating = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.schedule.epoch_at(now_s);
        let (missing, expired, forgotten) = {
            let s = self.read();
            let expired: Vec<u64> = s
                .active
                .keys()
                .copied()
                // Also epochs "from the future": only a changed `key_epoch_secs` or a clock set
                // back produces them, and such a key must not linger unretired.
                .filter(|e| !self.schedule.redeems(*e, now_s) && *e != epoch)
                .collect();
            let forgotten: Vec<u64> = s
                .retired
                .keys()
                .copied()
                .filter(|e| e.saturating_add(RETIRED_EPOCHS_KEPT) < epoch)
                .collect();
            (!s.active.contains_key(&epoch), expired, forgotten)
        };
        if !missing && expired.is_empty() && forgotten.is_empty() {
            return Ok(());
        }
        // Processes sharing the store rotate one at a time, and the first to reach a new epoch
        // makes its keys: the others load them, so every process issues and redeems alike.
        let _rotating_everywhere =
            crate::store::hold_global(store.coordinator().as_deref(), LockKind::Keys)?;
        let stored = if missing {
            store.get(Cf::PpKeys, &KeyTags::key(self.tags.secret, epoch))?
        } else {
            None
        };
        let mut txn = Txn::new(store);
        let created = if let Some(record) = stored {
            Some(Arc::new(EpochKeys::load(epoch, &record)?))
        } else if missing {
            let (keys, record) = EpochKeys::generate(epoch)?;
            txn.put(Cf::PpKeys, KeyTags::key(self.tags.secret, epoch), record);
            tracing::info!(
                epoch,
                issuer = self.tags.name,
                "privacy pass: new issuer keys"
            );
            Some(Arc::new(keys))
        } else {
            None
        };
        let mut retired = Vec::new();
        for e in &expired {
            let ids = self
                .read()
                .active
                .get(e)
                .map(|k| [k.rsa_key_id, k.voprf_key_id]);
            if let Some(ids) = ids {
                txn.delete(Cf::PpKeys, KeyTags::key(self.tags.secret, *e));
                txn.put(
                    Cf::PpKeys,
                    KeyTags::key(self.tags.retired, *e),
                    ids.concat(),
                );
                retired.push((*e, ids));
            }
            for (k, _) in store.scan_prefix(Cf::PpSpent, &e.to_be_bytes(), usize::MAX)? {
                txn.delete(Cf::PpSpent, k);
            }
            tracing::info!(
                epoch = e,
                issuer = self.tags.name,
                "privacy pass: issuer keys expired"
            );
        }
        for e in &forgotten {
            txn.delete(Cf::PpKeys, KeyTags::key(self.tags.retired, *e));
        }
        txn.commit()?;
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = created {
            s.active.insert(epoch, k);
        }
        for (e, ids) in retired {
            s.active.remove(&e);
            s.retired.insert(e, ids);
        }
        for e in forgotten {
            s.retired.remove(&e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_overlaps_the_next_epoch() {
        let s = KeySchedule {
            epoch_secs: 10,
            overlap_secs: 3,
        };
        assert_eq!(s.epoch_at(25), 2);
        assert!(s.redeems(2, 20) && s.redeems(2, 29));
        assert!(s.redeems(2, 32), "inside the overlap window");
        assert!(!s.redeems(2, 33), "after the overlap window");
        assert!(!s.redeems(3, 29), "not before its epoch");
    }

    #[test]
    fn keys_of_a_changed_schedule_are_retired() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::RocksStore::open(dir.path(), false).unwrap();
        let now = 1_800_000_000;
        let short = KeySchedule {
            epoch_secs: 4,
            overlap_secs: 1,
        };
        IssuerKeys::open(&store, KeyTags::REQUESTS, short, now).unwrap();
        // Restarted with a longer epoch: the old key's epoch number lies "in the future".
        let long = KeySchedule {
            epoch_secs: 86_400,
            overlap_secs: 3_600,
        };
        let keys = IssuerKeys::open(&store, KeyTags::REQUESTS, long, now).unwrap();
        let rows: Vec<Vec<u8>> = store
            .dump()
            .unwrap()
            .into_iter()
            .filter(|(cf, _, _)| *cf == Cf::PpKeys)
            .map(|(_, k, _)| k)
            .collect();
        assert_eq!(
            rows,
            vec![
                secret_key(long.epoch_at(now)),
                retired_key(short.epoch_at(now))
            ]
        );
        assert_eq!(keys.redeeming(now).len(), 1);
    }

    /// The request and registration issuers share `pp_keys` but never a row or a key: each
    /// loads only its own tags, so a registration key can never verify a request token.
    #[test]
    fn two_issuers_keep_their_keys_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::RocksStore::open(dir.path(), false).unwrap();
        let now = 1_800_000_000;
        let schedule = KeySchedule {
            epoch_secs: 86_400,
            overlap_secs: 3_600,
        };
        let requests = IssuerKeys::open(&store, KeyTags::REQUESTS, schedule, now).unwrap();
        let registration = IssuerKeys::open(&store, KeyTags::REGISTRATION, schedule, now).unwrap();
        let (a, b) = (
            requests.current(&store, now).unwrap(),
            registration.current(&store, now).unwrap(),
        );
        assert_ne!(a.rsa_key_id, b.rsa_key_id);
        assert!(matches!(
            requests.lookup(&b.rsa_key_id, now),
            KeyLookup::Unknown
        ));
        assert!(matches!(
            registration.lookup(&a.rsa_key_id, now),
            KeyLookup::Unknown
        ));
        let mut tags: Vec<u8> = store
            .dump()
            .unwrap()
            .into_iter()
            .filter(|(cf, _, _)| *cf == Cf::PpKeys)
            .map(|(_, k, _)| k[0])
            .collect();
        tags.sort();
        assert_eq!(tags, vec![b'g', b'k']);
        // Reopened, each finds its own key again.
        let again = IssuerKeys::open(&store, KeyTags::REGISTRATION, schedule, now).unwrap();
        assert_eq!(again.current(&store, now).unwrap().rsa_key_id, b.rsa_key_id);
    }

    #[test]
    fn secret_records_round_trip_and_reject_truncation() {
        let rec = encode_secret(b"der bytes", &[7; 32]).unwrap();
        let (der, seed) = decode_secret(&rec).unwrap();
        assert_eq!((der, seed), (&b"der bytes"[..], [7; 32]));
        for cut in [0, 3, 5, rec.len() - 1] {
            assert!(decode_secret(&rec[..cut]).is_err());
        }
    }
}
