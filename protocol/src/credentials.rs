//! The authentication chain: AS root → AS intermediate → client credential → pseudonymous leaf.
//!
//! Every credential is a TLS-encoded to-be-signed part plus an Ed25519 signature under a label
//! naming the credential type, so a signature of one type can never be replayed as another. The
//! hub's delivery service never sees any of these in the clear except the pseudonymous leaf
//! credential, whose link to the client credential is encrypted (see [`PseudonymousCredential`]).

use mimi_rm_crypto::kdf::labelled_digest;
use mimi_rm_crypto::sign::{SigningKey, VerifyingKey};
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Signature label of [`AsCredential`] (self-signed root).
pub const AS_CREDENTIAL_LABEL: &str = "AsCredential";
/// Signature label of [`AsIntermediateCredential`].
pub const AS_INTERMEDIATE_LABEL: &str = "AsIntermediateCredential";
/// Signature label of [`ClientCredential`].
pub const CLIENT_CREDENTIAL_LABEL: &str = "ClientCredential";
/// Signature label of a [`ClientCredentialCsr`] (proof of possession).
pub const CSR_LABEL: &str = "ClientCredentialCsr";
/// Signature label of the client credential's signature over a [`PseudonymousCredentialTbs`].
pub const PSEUDONYM_LABEL: &str = "PseudonymousCredential";
/// Digest label of credential fingerprints.
const FINGERPRINT_LABEL: &str = "credential fingerprint";

/// Why a credential does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// A signature in the chain does not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// Outside its validity period.
    #[error("{0} is expired or not yet valid")]
    Expired(&'static str),
    /// A child names a signer that is not the given parent, or outlives it.
    #[error("{0} is not issued by the given signer")]
    WrongIssuer(&'static str),
    /// A field does not decode or has the wrong length.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Validity period in seconds since the Unix epoch (inclusive bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ExpirationData {
    /// First second of validity.
    pub not_before: u64,
    /// Last second of validity.
    pub not_after: u64,
}

impl ExpirationData {
    /// Valid from `now` for `lifetime` seconds.
    pub fn starting(now: u64, lifetime: u64) -> Self {
        Self {
            not_before: now,
            not_after: now.saturating_add(lifetime),
        }
    }

    /// Whether `now` lies within the period.
    pub fn contains(&self, now: u64) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// Whether this period lies within `outer` (a child must not outlive its issuer).
    pub fn within(&self, outer: &Self) -> bool {
        outer.not_before <= self.not_before && self.not_after <= outer.not_after
    }
}

/// A 32-byte labelled SHA-256 over a credential's full encoding: how children name their issuer.
pub type Fingerprint = [u8; 32];

fn fingerprint_of<T: tls_codec::Serialize>(value: &T) -> Result<Fingerprint, CredentialError> {
    let bytes = value
        .tls_serialize_detached()
        .map_err(|_| CredentialError::Malformed("credential"))?;
    Ok(labelled_digest(FINGERPRINT_LABEL, &bytes))
}

pub(crate) fn tbs_bytes<T: tls_codec::Serialize>(tbs: &T) -> Result<Vec<u8>, CredentialError> {
    tbs.tls_serialize_detached()
        .map_err(|_| CredentialError::Malformed("credential"))
}

pub(crate) fn verifying_key(
    bytes: &VLBytes,
    what: &'static str,
) -> Result<VerifyingKey, CredentialError> {
    VerifyingKey::from_bytes(bytes.as_slice()).map_err(|_| CredentialError::Malformed(what))
}

/// Signed part of the AS root credential.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct AsCredentialTbs {
    /// The provider domain this AS speaks for.
    pub as_domain: VLBytes,
    /// Validity (long: years).
    pub expiration: ExpirationData,
    /// Ed25519 root public key.
    pub public_key: VLBytes,
}

/// The AS root: self-signed, long-lived, the trust anchor clients pin per domain.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct AsCredential {
    /// Signed part.
    pub tbs: AsCredentialTbs,
    /// Self-signature under [`AS_CREDENTIAL_LABEL`].
    pub signature: VLBytes,
}

impl AsCredential {
    /// Creates a self-signed root for `key`.
    pub fn issue(
        key: &SigningKey,
        as_domain: &str,
        expiration: ExpirationData,
    ) -> Result<Self, CredentialError> {
        let tbs = AsCredentialTbs {
            as_domain: as_domain.as_bytes().to_vec().into(),
            expiration,
            public_key: key.verifying_key().as_bytes().to_vec().into(),
        };
        let signature = key.sign(AS_CREDENTIAL_LABEL, &tbs_bytes(&tbs)?).into();
        Ok(Self { tbs, signature })
    }

    /// Checks the self-signature and validity at `now`.
    pub fn verify(&self, now: u64) -> Result<(), CredentialError> {
        verifying_key(&self.tbs.public_key, "AS key")?
            .verify(
                AS_CREDENTIAL_LABEL,
                &tbs_bytes(&self.tbs)?,
                self.signature.as_slice(),
            )
            .map_err(|_| CredentialError::BadSignature("AS credential"))?;
        if !self.tbs.expiration.contains(now) {
            return Err(CredentialError::Expired("AS credential"));
        }
        Ok(())
    }

    /// This credential's fingerprint.
    pub fn fingerprint(&self) -> Result<Fingerprint, CredentialError> {
        fingerprint_of(self)
    }
}

/// Signed part of an intermediate credential.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct AsIntermediateCredentialTbs {
    /// Validity; must lie within the root's.
    pub expiration: ExpirationData,
    /// Ed25519 public key that signs client credentials.
    pub public_key: VLBytes,
    /// Fingerprint of the root that signed this.
    pub signer_fingerprint: Fingerprint,
}

/// An online AS signing key, certified by the root, that issues client credentials.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct AsIntermediateCredential {
    /// Signed part.
    pub tbs: AsIntermediateCredentialTbs,
    /// Root signature under [`AS_INTERMEDIATE_LABEL`].
    pub signature: VLBytes,
}

impl AsIntermediateCredential {
    /// The root `root_key` (with credential `root`) certifies `public_key`.
    pub fn issue(
        root_key: &SigningKey,
        root: &AsCredential,
        public_key: &VerifyingKey,
        expiration: ExpirationData,
    ) -> Result<Self, CredentialError> {
        let tbs = AsIntermediateCredentialTbs {
            expiration,
            public_key: public_key.as_bytes().to_vec().into(),
            signer_fingerprint: root.fingerprint()?,
        };
        let signature = root_key
            .sign(AS_INTERMEDIATE_LABEL, &tbs_bytes(&tbs)?)
            .into();
        Ok(Self { tbs, signature })
    }

    /// Checks that `root` issued this and that it is valid at `now`.
    pub fn verify(&self, root: &AsCredential, now: u64) -> Result<(), CredentialError> {
        if self.tbs.signer_fingerprint != root.fingerprint()?
            || !self.tbs.expiration.within(&root.tbs.expiration)
        {
            return Err(CredentialError::WrongIssuer("AS intermediate credential"));
        }
        verifying_key(&root.tbs.public_key, "AS key")?
            .verify(
                AS_INTERMEDIATE_LABEL,
                &tbs_bytes(&self.tbs)?,
                self.signature.as_slice(),
            )
            .map_err(|_| CredentialError::BadSignature("AS intermediate credential"))?;
        if !self.tbs.expiration.contains(now) {
            return Err(CredentialError::Expired("AS intermediate credential"));
        }
        Ok(())
    }

    /// This credential's fingerprint.
    pub fn fingerprint(&self) -> Result<Fingerprint, CredentialError> {
        fingerprint_of(self)
    }
}

/// Who a client is: the user's handle on its provider plus a random device id.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, TlsSerialize, TlsDeserialize, TlsSize,
)]
pub struct ClientIdentity {
    /// The user's handle (UTF-8, validated by the AS).
    pub handle: VLBytes,
    /// Random per device.
    pub device: [u8; 16],
}

impl ClientIdentity {
    /// The handle as text (lossy).
    pub fn handle_str(&self) -> String {
        String::from_utf8_lossy(self.handle.as_slice()).into_owned()
    }
}

/// A client's request for a credential: identity and key, signed by that key.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ClientCredentialCsrTbs {
    /// Requested identity.
    pub identity: ClientIdentity,
    /// The client's long-term Ed25519 public key.
    pub public_key: VLBytes,
}

/// A certificate signing request with proof of possession of the key.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ClientCredentialCsr {
    /// Signed part.
    pub tbs: ClientCredentialCsrTbs,
    /// Signature by the requested key under [`CSR_LABEL`].
    pub signature: VLBytes,
}

impl ClientCredentialCsr {
    /// A CSR for `identity`, signed by `key`.
    pub fn new(key: &SigningKey, identity: ClientIdentity) -> Result<Self, CredentialError> {
        let tbs = ClientCredentialCsrTbs {
            identity,
            public_key: key.verifying_key().as_bytes().to_vec().into(),
        };
        let signature = key.sign(CSR_LABEL, &tbs_bytes(&tbs)?).into();
        Ok(Self { tbs, signature })
    }

    /// Checks the proof of possession.
    pub fn verify(&self) -> Result<(), CredentialError> {
        verifying_key(&self.tbs.public_key, "client key")?
            .verify(CSR_LABEL, &tbs_bytes(&self.tbs)?, self.signature.as_slice())
            .map_err(|_| CredentialError::BadSignature("credential request"))
    }
}

/// Signed part of a client credential.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ClientCredentialTbs {
    /// Whose client this is.
    pub identity: ClientIdentity,
    /// Validity; must lie within the intermediate's.
    pub expiration: ExpirationData,
    /// The client's long-term Ed25519 public key.
    pub public_key: VLBytes,
    /// Fingerprint of the intermediate that signed this.
    pub signer_fingerprint: Fingerprint,
}

/// A client's long-term identity, issued by the AS. It signs pseudonymous leaf credentials and
/// welcome attributions; only group members and contacts ever see it.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ClientCredential {
    /// Signed part.
    pub tbs: ClientCredentialTbs,
    /// Intermediate signature under [`CLIENT_CREDENTIAL_LABEL`].
    pub signature: VLBytes,
}

impl ClientCredential {
    /// The intermediate `key` (with credential `intermediate`) issues a credential for a
    /// verified CSR.
    pub fn issue(
        key: &SigningKey,
        intermediate: &AsIntermediateCredential,
        csr: &ClientCredentialCsr,
        expiration: ExpirationData,
    ) -> Result<Self, CredentialError> {
        csr.verify()?;
        let tbs = ClientCredentialTbs {
            identity: csr.tbs.identity.clone(),
            expiration,
            public_key: csr.tbs.public_key.clone(),
            signer_fingerprint: intermediate.fingerprint()?,
        };
        let signature = key.sign(CLIENT_CREDENTIAL_LABEL, &tbs_bytes(&tbs)?).into();
        Ok(Self { tbs, signature })
    }

    /// Checks this credential against `intermediate` only (not the root) at `now`.
    pub fn verify_issued_by(
        &self,
        intermediate: &AsIntermediateCredential,
        now: u64,
    ) -> Result<(), CredentialError> {
        if self.tbs.signer_fingerprint != intermediate.fingerprint()?
            || !self.tbs.expiration.within(&intermediate.tbs.expiration)
        {
            return Err(CredentialError::WrongIssuer("client credential"));
        }
        verifying_key(&intermediate.tbs.public_key, "AS key")?
            .verify(
                CLIENT_CREDENTIAL_LABEL,
                &tbs_bytes(&self.tbs)?,
                self.signature.as_slice(),
            )
            .map_err(|_| CredentialError::BadSignature("client credential"))?;
        if !self.tbs.expiration.contains(now) {
            return Err(CredentialError::Expired("client credential"));
        }
        Ok(())
    }

    /// Checks the whole chain: this credential → one of `intermediates` → one of `roots`.
    pub fn verify_chain(&self, anchors: &AsCredentials, now: u64) -> Result<(), CredentialError> {
        let intermediate = anchors
            .verified_intermediate(&self.tbs.signer_fingerprint, now)
            .map_err(|e| match e {
                CredentialError::WrongIssuer("unknown intermediate") => {
                    CredentialError::WrongIssuer("client credential")
                }
                other => other,
            })?;
        self.verify_issued_by(intermediate, now)
    }

    /// Checks that this credential's chain verifies against `anchors` at `now` and that it made
    /// `signature` over `label ‖ tbs`: how every structure a client signs (attributions,
    /// connection offers) is checked.
    pub fn verify_signed<T: tls_codec::Serialize>(
        &self,
        anchors: &AsCredentials,
        now: u64,
        label: &str,
        tbs: &T,
        signature: &[u8],
        what: &'static str,
    ) -> Result<(), CredentialError> {
        self.verify_chain(anchors, now)?;
        self.verifying_key()?
            .verify(label, &tbs_bytes(tbs)?, signature)
            .map_err(|_| CredentialError::BadSignature(what))
    }

    /// The client's verifying key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, CredentialError> {
        verifying_key(&self.tbs.public_key, "client key")
    }

    /// This credential's fingerprint.
    pub fn fingerprint(&self) -> Result<Fingerprint, CredentialError> {
        fingerprint_of(self)
    }
}

/// What the AS publishes for verifiers: its roots and its intermediates.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct AsCredentials {
    /// Self-signed roots (normally one; two during a rotation).
    pub roots: Vec<AsCredential>,
    /// Intermediates signed by those roots.
    pub intermediates: Vec<AsIntermediateCredential>,
}

impl AsCredentials {
    /// The intermediate with `fingerprint`, once it and the root that signed it verify at
    /// `now`: what everything an AS signs online (client credentials, revocation lists) chains
    /// to.
    pub fn verified_intermediate(
        &self,
        fingerprint: &Fingerprint,
        now: u64,
    ) -> Result<&AsIntermediateCredential, CredentialError> {
        let intermediate = self
            .intermediate(fingerprint)
            .ok_or(CredentialError::WrongIssuer("unknown intermediate"))?;
        let root = self
            .root_of(intermediate)
            .ok_or(CredentialError::WrongIssuer("AS intermediate credential"))?;
        root.verify(now)?;
        intermediate.verify(root, now)?;
        Ok(intermediate)
    }

    /// The intermediate with `fingerprint`, if it is among these (not verified).
    pub fn intermediate(&self, fingerprint: &Fingerprint) -> Option<&AsIntermediateCredential> {
        self.intermediates
            .iter()
            .find(|i| i.fingerprint().is_ok_and(|f| f == *fingerprint))
    }

    /// The root that `intermediate` names as its signer, if it is among these (not verified):
    /// its `as_domain` is the provider the intermediate speaks for.
    pub fn root_of(&self, intermediate: &AsIntermediateCredential) -> Option<&AsCredential> {
        self.roots.iter().find(|r| {
            r.fingerprint()
                .is_ok_and(|f| f == intermediate.tbs.signer_fingerprint)
        })
    }
}

/// The part of a leaf credential the client credential signs: a random pseudonym and the leaf's
/// signature key, so the link binds exactly this leaf.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct PseudonymousCredentialTbs {
    /// Fresh random bytes per leaf.
    pub pseudonym: [u8; 16],
    /// The leaf's Ed25519 signature public key.
    pub signature_key: VLBytes,
}

/// The identity inside every MLS leaf (as a BasicCredential identity): a pseudonym plus the
/// client credential's signature over it, encrypted under a per-leaf `SignatureEarKey`. Without
/// that key (members get it wrapped under the group's wrapper key) the leaf links to nobody.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct PseudonymousCredential {
    /// Signed part.
    pub tbs: PseudonymousCredentialTbs,
    /// EAR ciphertext of the client credential's signature over `tbs`.
    pub encrypted_signature: VLBytes,
}

impl PseudonymousCredentialTbs {
    /// The bytes the client credential signs under [`PSEUDONYM_LABEL`].
    pub fn signed_bytes(&self) -> Result<Vec<u8>, CredentialError> {
        tbs_bytes(self)
    }
}

/// A member's identity material as stored per leaf in the group state and carried in commits:
/// both ciphertexts, openable only with the group's keys.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct LeafCredentialInfo {
    /// The member's [`ClientCredential`] under the group's `CredentialEarKey`.
    pub encrypted_client_credential: VLBytes,
    /// The leaf's `SignatureEarKey` under the group's `SignatureEarKeyWrapperKey`.
    pub encrypted_signature_ear_key: VLBytes,
}

/// Signature label of a [`WelcomeAttributionInfo`].
pub const WELCOME_ATTRIBUTION_LABEL: &str = "WelcomeAttributionInfo";

/// What an inviter tells the invitee, end to end: who invites it, and the group keys it needs to
/// read the other members' credentials. Signed by the inviter's client credential and encrypted
/// under the invitee's friendship key, so the hub carries it without learning the inviter.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct WelcomeAttributionTbs {
    /// The inviter's client credential.
    pub sender: ClientCredential,
    /// The MLS group id.
    pub group_id: VLBytes,
    /// The invitee's KeyPackageRef: binds the attribution to this one invitation.
    pub key_package_ref: VLBytes,
    /// The group's `CredentialEarKey`.
    pub credential_key: [u8; 32],
    /// The group's `SignatureEarKeyWrapperKey`.
    pub wrapper_key: [u8; 32],
}

/// A [`WelcomeAttributionTbs`] with the inviter's signature under
/// [`WELCOME_ATTRIBUTION_LABEL`].
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct WelcomeAttributionInfo {
    /// Signed part.
    pub tbs: WelcomeAttributionTbs,
    /// Signature by `tbs.sender`'s key.
    pub signature: VLBytes,
}

impl WelcomeAttributionInfo {
    /// Signs `tbs` with the inviter's client key.
    pub fn sign(key: &SigningKey, tbs: WelcomeAttributionTbs) -> Result<Self, CredentialError> {
        let signature = key
            .sign(WELCOME_ATTRIBUTION_LABEL, &tbs_bytes(&tbs)?)
            .into();
        Ok(Self { tbs, signature })
    }

    /// Checks the signature against the sender credential and that credential's chain.
    pub fn verify(&self, anchors: &AsCredentials, now: u64) -> Result<(), CredentialError> {
        self.tbs.sender.verify_signed(
            anchors,
            now,
            WELCOME_ATTRIBUTION_LABEL,
            &self.tbs,
            self.signature.as_slice(),
            "welcome attribution",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tls_codec::Serialize as _;

    const NOW: u64 = 1_800_000_000;

    fn chain() -> (SigningKey, AsCredentials, SigningKey, ClientCredential) {
        let root_key = SigningKey::generate();
        let root = AsCredential::issue(
            &root_key,
            "a.test",
            ExpirationData::starting(NOW - 10, 1000),
        )
        .unwrap();
        let int_key = SigningKey::generate();
        let int = AsIntermediateCredential::issue(
            &root_key,
            &root,
            &int_key.verifying_key(),
            ExpirationData::starting(NOW - 5, 500),
        )
        .unwrap();
        let client_key = SigningKey::generate();
        let csr = ClientCredentialCsr::new(
            &client_key,
            ClientIdentity {
                handle: b"alice".to_vec().into(),
                device: [1; 16],
            },
        )
        .unwrap();
        let cred =
            ClientCredential::issue(&int_key, &int, &csr, ExpirationData::starting(NOW, 100))
                .unwrap();
        let anchors = AsCredentials {
            roots: vec![root],
            intermediates: vec![int],
        };
        (int_key, anchors, client_key, cred)
    }

    #[test]
    fn a_chain_verifies_and_fails_when_touched() {
        let (_, anchors, _, cred) = chain();
        cred.verify_chain(&anchors, NOW + 1).unwrap();
        assert_eq!(
            cred.verify_chain(&anchors, NOW + 101),
            Err(CredentialError::Expired("client credential"))
        );
        let mut forged = cred.clone();
        forged.tbs.identity.handle = b"mallory".to_vec().into();
        assert_eq!(
            forged.verify_chain(&anchors, NOW + 1),
            Err(CredentialError::BadSignature("client credential"))
        );
    }

    #[test]
    fn a_credential_from_an_uncertified_key_is_rejected() {
        let (_, anchors, client_key, cred) = chain();
        // Same fields, signed by a key the root never certified.
        let rogue_key = SigningKey::generate();
        let rogue_int = AsIntermediateCredential {
            tbs: AsIntermediateCredentialTbs {
                public_key: rogue_key.verifying_key().as_bytes().to_vec().into(),
                ..anchors.intermediates[0].tbs.clone()
            },
            signature: vec![0; 64].into(),
        };
        let csr = ClientCredentialCsr::new(&client_key, cred.tbs.identity.clone()).unwrap();
        let rogue = ClientCredential::issue(
            &rogue_key,
            &rogue_int,
            &csr,
            ExpirationData::starting(NOW, 100),
        )
        .unwrap();
        assert!(rogue.verify_chain(&anchors, NOW + 1).is_err());
    }

    #[test]
    fn a_csr_needs_the_key() {
        let key = SigningKey::generate();
        let mut csr = ClientCredentialCsr::new(
            &key,
            ClientIdentity {
                handle: b"bob".to_vec().into(),
                device: [2; 16],
            },
        )
        .unwrap();
        csr.verify().unwrap();
        csr.tbs.public_key = SigningKey::generate()
            .verifying_key()
            .as_bytes()
            .to_vec()
            .into();
        assert!(csr.verify().is_err());
    }

    #[test]
    fn labels_separate_types() {
        // An intermediate's signature does not verify as a client credential's.
        let (int_key, anchors, _, cred) = chain();
        let tbs = cred.tbs.tls_serialize_detached().unwrap();
        let wrong = int_key.sign(AS_INTERMEDIATE_LABEL, &tbs);
        let forged = ClientCredential {
            signature: wrong.into(),
            ..cred
        };
        assert!(forged.verify_chain(&anchors, NOW + 1).is_err());
    }
}
