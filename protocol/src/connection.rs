//! Consent-based 1:1 connections.
//!
//! A user publishes [`ConnectionPackage`]s at its AS: an HPKE key signed by one of its client
//! credentials. An initiator fetches one, creates a connection group on its own hub, and leaves
//! a [`ConnectionRequest`] for the responder: a signed [`ConnectionOffer`] sealed to the
//! package's key. The AS stores only the ciphertext under the responder's handle and cannot tell
//! who sent it. The responder reads the initiator's verified credential and decides; accepting is
//! an external join of the connection group, declining is doing nothing.

use crate::credentials::{AsCredentials, ClientCredential, CredentialError, ExpirationData};
use crate::queue::HpkeCiphertextWire;
use mimi_rm_crypto::kdf::labelled_digest;
use mimi_rm_crypto::sign::SigningKey;
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Signature label of a [`ConnectionPackage`].
pub const CONNECTION_PACKAGE_LABEL: &str = "ConnectionPackage";
/// Signature label of a [`ConnectionOffer`].
pub const CONNECTION_OFFER_LABEL: &str = "ConnectionOffer";
/// HPKE info label of a sealed [`ConnectionOffer`].
pub const CONNECTION_HPKE_LABEL: &str = "connection offer";
/// EAR domain of the responder's contact card in its join.
pub const FRIENDSHIP_DOMAIN: &str = "connection friendship";
const PACKAGE_HASH_LABEL: &str = "connection package";

fn tbs_bytes<T: tls_codec::Serialize>(tbs: &T) -> Result<Vec<u8>, CredentialError> {
    tbs.tls_serialize_detached()
        .map_err(|_| CredentialError::Malformed("connection structure"))
}

/// Signed part of a [`ConnectionPackage`].
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ConnectionPackageTbs {
    /// X25519 HPKE public key offers are sealed to (one per package; never reused).
    pub encryption_key: VLBytes,
    /// Validity of the package.
    pub expiration: ExpirationData,
    /// The publishing client's credential.
    pub client_credential: ClientCredential,
}

/// A responder's published invitation to be asked: anyone who knows the handle may fetch one.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ConnectionPackage {
    /// Signed part.
    pub tbs: ConnectionPackageTbs,
    /// Signature by the client credential's key under [`CONNECTION_PACKAGE_LABEL`].
    pub signature: VLBytes,
}

impl ConnectionPackage {
    /// Signs a package with the client credential's key.
    pub fn sign(key: &SigningKey, tbs: ConnectionPackageTbs) -> Result<Self, CredentialError> {
        let signature = key.sign(CONNECTION_PACKAGE_LABEL, &tbs_bytes(&tbs)?).into();
        Ok(Self { tbs, signature })
    }

    /// Checks the signature by the package's own credential and its validity at `now`; with
    /// `anchors`, also the credential chain.
    pub fn verify(&self, anchors: Option<&AsCredentials>, now: u64) -> Result<(), CredentialError> {
        if let Some(a) = anchors {
            self.tbs.client_credential.verify_chain(a, now)?;
        }
        self.tbs
            .client_credential
            .verifying_key()?
            .verify(
                CONNECTION_PACKAGE_LABEL,
                &tbs_bytes(&self.tbs)?,
                self.signature.as_slice(),
            )
            .map_err(|_| CredentialError::BadSignature("connection package"))?;
        if !self.tbs.expiration.contains(now) {
            return Err(CredentialError::Expired("connection package"));
        }
        Ok(())
    }

    /// Names the package (and so the key an offer is sealed to).
    pub fn hash(&self) -> Result<[u8; 32], CredentialError> {
        Ok(labelled_digest(PACKAGE_HASH_LABEL, &tbs_bytes(self)?))
    }
}

/// Signed part of a [`ConnectionOffer`]: everything the responder needs to join the connection
/// group and to become the initiator's contact.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ConnectionOfferTbs {
    /// The initiator's client credential (verified by the responder against its AS).
    pub sender: ClientCredential,
    /// The responder's handle: an offer cannot be redirected to someone else.
    pub recipient_handle: VLBytes,
    /// [`ConnectionPackage::hash`] of the package the offer is sealed to.
    pub package_hash: [u8; 32],
    /// The connection group (a qualified group id on the initiator's hub).
    pub group_id: VLBytes,
    /// Its `GroupStateEarKey`.
    pub ear_key: [u8; 32],
    /// Its credential key.
    pub credential_key: [u8; 32],
    /// Its signature-EAR wrapper key.
    pub wrapper_key: [u8; 32],
    /// Key under which the responder returns its contact card in the join.
    pub friendship_key: [u8; 32],
    /// The initiator's contact card (text form).
    pub sender_card: VLBytes,
}

/// An initiator's signed connection offer.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ConnectionOffer {
    /// Signed part.
    pub tbs: ConnectionOfferTbs,
    /// Signature by the sender's client credential key under [`CONNECTION_OFFER_LABEL`].
    pub signature: VLBytes,
}

impl ConnectionOffer {
    /// Signs an offer with the initiator's client credential key.
    pub fn sign(key: &SigningKey, tbs: ConnectionOfferTbs) -> Result<Self, CredentialError> {
        let signature = key.sign(CONNECTION_OFFER_LABEL, &tbs_bytes(&tbs)?).into();
        Ok(Self { tbs, signature })
    }

    /// Checks the sender's chain against `anchors` and its signature over the offer.
    pub fn verify(&self, anchors: &AsCredentials, now: u64) -> Result<(), CredentialError> {
        self.tbs.sender.verify_signed(
            anchors,
            now,
            CONNECTION_OFFER_LABEL,
            &self.tbs,
            self.signature.as_slice(),
            "connection offer",
        )
    }
}

/// What the AS stores for a responder: an offer sealed to one of its packages.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ConnectionRequest {
    /// [`ConnectionPackage::hash`] of the package whose key opens it.
    pub package_hash: [u8; 32],
    /// HPKE ciphertext of the encoded [`ConnectionOffer`] (info [`CONNECTION_HPKE_LABEL`],
    /// aad the package hash).
    pub sealed_offer: HpkeCiphertextWire,
}
