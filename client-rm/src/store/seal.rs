//! The store's optional passphrase: argon2id stretches it into a key that seals every row.
//!
//! With a passphrase, a stolen device's database shows row counts and padded sizes only: row ids
//! are a keyed PRF of the logical key (so group ids and public keys do not show), and every value
//! is sealed (key-committing AES-256-GCM, [`mimi_rm_crypto::ear`]) to its row id, so rows cannot
//! be swapped or replayed between slots unnoticed. A wrong passphrase fails the check value before
//! anything else is read.

use crate::error::ClientError;
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_crypto::kdf::expand_label;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// argon2id cost recorded with the salt, so later versions can raise it for new stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// OWASP's argon2id recommendation (19 MiB, 2 passes, 1 lane): ~50 ms on a laptop core, per
    /// open, and per guess for whoever holds the file.
    pub const DEFAULT: Self = Self {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };
}

/// What `meta` keeps about the passphrase: its salt, cost and a value sealed under it.
#[derive(Serialize, Deserialize)]
pub struct KdfRecord {
    /// argon2id salt (random per store).
    pub salt: [u8; 16],
    /// argon2id cost.
    pub params: KdfParams,
    /// [`CHECK_PLAINTEXT`] sealed under the value key: tells a wrong passphrase apart from a
    /// damaged row.
    pub check: Vec<u8>,
}

/// EAR domain of the check value.
const CHECK_DOMAIN: &str = "client store check";
/// What the check value holds.
const CHECK_PLAINTEXT: &[u8] = b"mimi-rm client store";
/// EAR domain of row values.
const ROW_DOMAIN: &str = "client store row";
/// EAR domain of stored events.
const EVENT_DOMAIN: &str = "client store event";
/// EAR domain of a sealed Privacy Pass token.
const TOKEN_DOMAIN: &str = "client store token";

/// Keys derived from the passphrase. Never printed: no `Debug`.
pub struct Sealer {
    /// PRF key turning logical keys into row ids.
    id_key: Zeroizing<[u8; 32]>,
    /// AEAD key of values.
    value_key: EarKey,
}

impl Sealer {
    /// Stretches `passphrase` with `salt` and `params`.
    fn derive(passphrase: &[u8], salt: &[u8; 16], params: KdfParams) -> Result<Self, ClientError> {
        let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
            .map_err(|_| ClientError::State("stored argon2 parameters are invalid".into()))?;
        let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
        let mut master = Zeroizing::new([0u8; 32]);
        kdf.hash_password_into(passphrase, salt, master.as_mut())
            .map_err(|_| ClientError::State("argon2id failed".into()))?;
        let mut id_key = Zeroizing::new([0u8; 32]);
        expand_label(master.as_ref(), "client store row id", &[], id_key.as_mut())?;
        let mut value_key = Zeroizing::new([0u8; 32]);
        expand_label(
            master.as_ref(),
            "client store value",
            &[],
            value_key.as_mut(),
        )?;
        Ok(Self {
            id_key,
            value_key: EarKey::from_bytes(value_key.as_ref())?,
        })
    }

    /// A new store's keys and the record that lets [`Sealer::unlock`] find them again.
    pub fn create(passphrase: &[u8], params: KdfParams) -> Result<(Self, KdfRecord), ClientError> {
        let salt: [u8; 16] = mimi_rm_crypto::ids::random_bytes();
        let sealer = Self::derive(passphrase, &salt, params)?;
        let check = ear::seal(&sealer.value_key, CHECK_DOMAIN, &[], CHECK_PLAINTEXT)?;
        Ok((
            sealer,
            KdfRecord {
                salt,
                params,
                check,
            },
        ))
    }

    /// The keys of an existing store, or [`ClientError::Passphrase`] if `passphrase` is wrong.
    pub fn unlock(passphrase: &[u8], record: &KdfRecord) -> Result<Self, ClientError> {
        let sealer = Self::derive(passphrase, &record.salt, record.params)?;
        match ear::open(&sealer.value_key, CHECK_DOMAIN, &[], &record.check) {
            Ok(p) if p == CHECK_PLAINTEXT => Ok(sealer),
            _ => Err(ClientError::Passphrase("wrong passphrase")),
        }
    }

    /// The row id of logical key `key`.
    pub fn row_id(&self, key: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut id = vec![0u8; 32];
        expand_label(self.id_key.as_ref(), "row", key, &mut id)?;
        Ok(id)
    }

    /// `key ‖ value` sealed to row `id` (the key is inside, so loading needs no reverse PRF).
    pub fn seal_row(&self, id: &[u8], key: &[u8], value: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut plain = Zeroizing::new(Vec::with_capacity(4 + key.len() + value.len()));
        plain.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
        plain.extend_from_slice(key);
        plain.extend_from_slice(value);
        Ok(ear::seal(&self.value_key, ROW_DOMAIN, id, &plain)?)
    }

    /// Opens what [`Sealer::seal_row`] wrote in row `id`: (logical key, value).
    pub fn open_row(&self, id: &[u8], sealed: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        let plain = Zeroizing::new(
            ear::open(&self.value_key, ROW_DOMAIN, id, sealed)
                .map_err(|_| ClientError::State("a store row does not open: damaged".into()))?,
        );
        let (len, rest) = plain
            .split_first_chunk::<4>()
            .ok_or_else(|| ClientError::State("a store row is truncated".into()))?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > rest.len() {
            return Err(ClientError::State("a store row is truncated".into()));
        }
        let (key, value) = rest.split_at(len);
        Ok((key.to_vec(), value.to_vec()))
    }

    /// An event sealed to its sequence number.
    pub fn seal_event(&self, id: i64, value: &[u8]) -> Result<Vec<u8>, ClientError> {
        Ok(ear::seal(
            &self.value_key,
            EVENT_DOMAIN,
            &id.to_be_bytes(),
            value,
        )?)
    }

    /// A Privacy Pass token sealed to its row number.
    pub fn seal_token(&self, id: i64, value: &[u8]) -> Result<Vec<u8>, ClientError> {
        Ok(ear::seal(
            &self.value_key,
            TOKEN_DOMAIN,
            &id.to_be_bytes(),
            value,
        )?)
    }

    /// Opens what [`Sealer::seal_token`] wrote.
    pub fn open_token(&self, id: i64, sealed: &[u8]) -> Result<Vec<u8>, ClientError> {
        ear::open(&self.value_key, TOKEN_DOMAIN, &id.to_be_bytes(), sealed)
            .map_err(|_| ClientError::State("a stored token does not open: damaged".into()))
    }

    /// Opens what [`Sealer::seal_event`] wrote.
    pub fn open_event(&self, id: i64, sealed: &[u8]) -> Result<Vec<u8>, ClientError> {
        ear::open(&self.value_key, EVENT_DOMAIN, &id.to_be_bytes(), sealed)
            .map_err(|_| ClientError::State("a stored event does not open: damaged".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: these tests check the construction, not argon2's cost.
    const FAST: KdfParams = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn right_passphrase_opens_wrong_one_is_refused() {
        let (s, rec) = Sealer::create(b"correct horse", FAST).unwrap();
        let id = s.row_id(b"k").unwrap();
        let sealed = s.seal_row(&id, b"k", b"secret value").unwrap();
        let again = Sealer::unlock(b"correct horse", &rec).unwrap();
        assert_eq!(again.row_id(b"k").unwrap(), id);
        assert_eq!(
            again.open_row(&id, &sealed).unwrap(),
            (b"k".to_vec(), b"secret value".to_vec())
        );
        assert!(matches!(
            Sealer::unlock(b"correct hors", &rec),
            Err(ClientError::Passphrase(_))
        ));
    }

    #[test]
    fn a_row_moved_to_another_id_does_not_open() {
        let (s, _) = Sealer::create(b"pw", FAST).unwrap();
        let (a, b) = (s.row_id(b"a").unwrap(), s.row_id(b"b").unwrap());
        assert_ne!(a, b);
        let sealed = s.seal_row(&a, b"a", b"v").unwrap();
        assert!(s.open_row(&b, &sealed).is_err());
        let ev = s.seal_event(7, b"e").unwrap();
        assert_eq!(s.open_event(7, &ev).unwrap(), b"e");
        assert!(s.open_event(8, &ev).is_err());
    }

    #[test]
    fn no_plaintext_in_sealed_rows() {
        let (s, _) = Sealer::create(b"pw", FAST).unwrap();
        let id = s.row_id(b"group:abcdef").unwrap();
        let sealed = s
            .seal_row(&id, b"group:abcdef", b"a very secret value")
            .unwrap();
        let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(!find(&sealed, b"secret") && !find(&sealed, b"abcdef") && !find(&id, b"abcdef"));
    }
}
