//! Signed revocation lists: how an AS tells every verifier which devices its users removed.
//!
//! A removed device keeps a client credential that still chains to the AS and has not expired,
//! so the chain alone cannot show it is gone. The AS therefore publishes, on request, a list of
//! the devices it revoked whose credentials have not expired yet, signed by the same online
//! intermediate key that issues client credentials. Clients fetch the whole list (never "is this
//! one revoked?"), so the AS — and the hub relaying the request — learn nothing about which
//! members a client is checking.
//!
//! Entries are labelled digests of the device's `ClientIdentity`, not the identities: the list
//! names no handle, and only a verifier already holding a credential can test it.

use crate::credentials::{
    AsCredentials, AsIntermediateCredential, ClientIdentity, CredentialError, Fingerprint,
    tbs_bytes, verifying_key,
};
use mimi_rm_crypto::kdf::labelled_digest;
use mimi_rm_crypto::sign::SigningKey;
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Signature label of a [`RevocationList`].
pub const REVOCATION_LIST_LABEL: &str = "RevocationList";
/// Digest label of a revoked device's entry.
const REVOKED_DEVICE_LABEL: &str = "revoked device";
/// Most entries one list may carry (a decoder's bound, far above any real provider's churn
/// within one credential lifetime).
pub const MAX_REVOKED: usize = 1 << 16;

/// The list entry of a device: a labelled digest of its identity (handle and device id).
pub fn revoked_entry(identity: &ClientIdentity) -> Result<[u8; 32], CredentialError> {
    Ok(labelled_digest(REVOKED_DEVICE_LABEL, &tbs_bytes(identity)?))
}

/// The signed part of a revocation list.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct RevocationListTbs {
    /// The provider whose AS speaks.
    pub domain: VLBytes,
    /// When the AS signed it (seconds since the Unix epoch). Verifiers refuse a list older than
    /// one they hold or older than an hour, so a relaying hub can hide a revocation by replaying
    /// for an hour at most.
    pub issued_at: u64,
    /// Fingerprint of the intermediate that signed it.
    pub signer_fingerprint: Fingerprint,
    /// Sorted entries ([`revoked_entry`]) of every revoked device whose credential may still
    /// be unexpired.
    pub revoked: Vec<[u8; 32]>,
}

/// A revocation list, signed by the AS intermediate under [`REVOCATION_LIST_LABEL`].
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct RevocationList {
    /// Signed part.
    pub tbs: RevocationListTbs,
    /// Ed25519 signature by the intermediate key.
    pub signature: VLBytes,
}

impl RevocationList {
    /// Signs `revoked` (sorted here) for `domain` with the intermediate `key`.
    pub fn sign(
        key: &SigningKey,
        intermediate: &AsIntermediateCredential,
        domain: &str,
        issued_at: u64,
        mut revoked: Vec<[u8; 32]>,
    ) -> Result<Self, CredentialError> {
        revoked.sort_unstable();
        revoked.dedup();
        let tbs = RevocationListTbs {
            domain: domain.as_bytes().to_vec().into(),
            issued_at,
            signer_fingerprint: intermediate.fingerprint()?,
            revoked,
        };
        let signature = key.sign(REVOCATION_LIST_LABEL, &tbs_bytes(&tbs)?).into();
        Ok(Self { tbs, signature })
    }

    /// Checks that `domain`'s AS (an intermediate in `anchors` under a root naming `domain`)
    /// signed this list, that it is sorted, and that it was not issued in the future.
    pub fn verify(
        &self,
        anchors: &AsCredentials,
        domain: &str,
        now: u64,
    ) -> Result<(), CredentialError> {
        if self.tbs.domain.as_slice() != domain.as_bytes() {
            return Err(CredentialError::WrongIssuer(
                "revocation list of another domain",
            ));
        }
        let intermediate = anchors.verified_intermediate(&self.tbs.signer_fingerprint, now)?;
        let root_names_domain = anchors
            .root_of(intermediate)
            .is_some_and(|r| r.tbs.as_domain.as_slice() == domain.as_bytes());
        if !root_names_domain {
            return Err(CredentialError::WrongIssuer("revocation list"));
        }
        verifying_key(&intermediate.tbs.public_key, "AS key")?
            .verify(
                REVOCATION_LIST_LABEL,
                &tbs_bytes(&self.tbs)?,
                self.signature.as_slice(),
            )
            .map_err(|_| CredentialError::BadSignature("revocation list"))?;
        if !self.tbs.revoked.is_sorted() {
            return Err(CredentialError::Malformed("revocation list order"));
        }
        // A minute of clock skew between AS and verifier is tolerated.
        if self.tbs.issued_at > now.saturating_add(60) {
            return Err(CredentialError::Expired("revocation list"));
        }
        Ok(())
    }

    /// Whether the device `identity` is on the list.
    pub fn lists(&self, identity: &ClientIdentity) -> bool {
        revoked_entry(identity).is_ok_and(|e| self.tbs.revoked.binary_search(&e).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{AsCredential, ExpirationData};

    fn anchors(domain: &str) -> (SigningKey, AsIntermediateCredential, AsCredentials) {
        let root_key = SigningKey::generate();
        let validity = ExpirationData::starting(1_000, 1_000_000);
        let root = AsCredential::issue(&root_key, domain, validity).unwrap();
        let int_key = SigningKey::generate();
        let int =
            AsIntermediateCredential::issue(&root_key, &root, &int_key.verifying_key(), validity)
                .unwrap();
        let anchors = AsCredentials {
            roots: vec![root],
            intermediates: vec![int.clone()],
        };
        (int_key, int, anchors)
    }

    fn device(handle: &str, d: u8) -> ClientIdentity {
        ClientIdentity {
            handle: handle.as_bytes().to_vec().into(),
            device: [d; 16],
        }
    }

    #[test]
    fn a_signed_list_verifies_and_names_exactly_its_devices() {
        let (key, int, anchors) = anchors("a.test");
        let entries = vec![
            revoked_entry(&device("bob", 2)).unwrap(),
            revoked_entry(&device("alice", 1)).unwrap(),
        ];
        let list = RevocationList::sign(&key, &int, "a.test", 5_000, entries).unwrap();
        list.verify(&anchors, "a.test", 5_000).unwrap();
        assert!(list.lists(&device("alice", 1)));
        assert!(list.lists(&device("bob", 2)));
        // Same device id under another handle, and another device of the same handle.
        assert!(!list.lists(&device("carol", 1)));
        assert!(!list.lists(&device("alice", 3)));
    }

    #[test]
    fn forged_replayed_or_foreign_lists_are_refused() {
        let (key, int, anchors) = anchors("a.test");
        let entry = revoked_entry(&device("alice", 1)).unwrap();
        let list = RevocationList::sign(&key, &int, "a.test", 5_000, vec![entry]).unwrap();

        // An entry dropped after signing (a hub hiding a revocation).
        let mut dropped = list.clone();
        dropped.tbs.revoked.clear();
        assert_eq!(
            dropped.verify(&anchors, "a.test", 5_000),
            Err(CredentialError::BadSignature("revocation list"))
        );
        // Presented as another provider's list.
        assert!(list.verify(&anchors, "b.test", 5_000).is_err());
        // Signed by a key no anchor certifies.
        let (other_key, other_int, _) = self::anchors("a.test");
        let foreign = RevocationList::sign(&other_key, &other_int, "a.test", 5_000, vec![entry]);
        assert!(foreign.unwrap().verify(&anchors, "a.test", 5_000).is_err());
        // From the future.
        assert_eq!(
            list.verify(&anchors, "a.test", 4_000),
            Err(CredentialError::Expired("revocation list"))
        );
        // Unsorted entries cannot be searched: refused even when honestly signed.
        let mut unsorted = RevocationList::sign(&key, &int, "a.test", 5_000, vec![]).unwrap();
        unsorted.tbs.revoked = vec![[2; 32], [1; 32]];
        unsorted.signature = key
            .sign(REVOCATION_LIST_LABEL, &tbs_bytes(&unsorted.tbs).unwrap())
            .into();
        assert_eq!(
            unsorted.verify(&anchors, "a.test", 5_000),
            Err(CredentialError::Malformed("revocation list order"))
        );
    }
}
