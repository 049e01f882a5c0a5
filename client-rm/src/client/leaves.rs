//! Our leaves: fresh pseudonymous leaf identities, sealed queue references, credential
//! material for the hub, and the key-file backup of leaf keys.

use super::{CIPHERSUITE, Client, encoded};
use crate::error::ClientError;
use crate::identity;
use crate::state::unhex;
use mimi_rm_crypto::ear::EarKey;
use mimi_rm_crypto::hpke_seal::{self, HpkePublicKey};
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::credentials::*;
use mimi_rm_protocol::queue::*;
use mimi_rm_protocol::{DsMode, encode};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;

impl Client {
    /// The credential identities of our leaves in every current group: pseudonyms the hub must
    /// never store in the clear.
    pub fn leaf_identities(&self) -> Result<Vec<Vec<u8>>, ClientError> {
        self.groups()
            .iter()
            .map(|g| {
                let mls = self.load_group(g)?;
                let leaf = mls
                    .own_leaf_node()
                    .ok_or(ClientError::Unexpected("no own leaf"))?;
                Ok(leaf.credential().serialized_content().to_vec())
            })
            .collect()
    }

    /// A fresh `QueueRef` for one leaf: our client id sealed to our QS (fresh randomness each
    /// time, so two leaves of ours cannot be linked by it). Baseline clients send it plain.
    pub(super) fn sealed_queue_ref(&self) -> Result<Extension, ClientError> {
        let address = match self.state.mode {
            DsMode::Baseline => QueueAddress::Plain(QueueRefPlain {
                client_id: self.client_id()?,
            }),
            DsMode::Rm => {
                // The push key rides only in sealed refs: a plain ref would show it.
                let inside = SealedQueueRef {
                    client_id: self.client_id()?,
                    push_key: unhex(&self.state.push_key)?.into(),
                };
                let pk = HpkePublicKey::from_bytes(&unhex(&self.state.qs_public_key)?)?;
                let plain = encode(&inside).map_err(|e| ClientError::State(e.to_string()))?;
                let sealed = hpke_seal::seal(
                    &pk,
                    QUEUE_REF_HPKE_LABEL,
                    self.state.domain.as_bytes(),
                    &plain,
                )?;
                QueueAddress::Sealed(HpkeCiphertextWire {
                    kem_output: sealed.kem_output.into(),
                    ciphertext: sealed.ciphertext.into(),
                })
            }
        };
        let qr = QueueRef {
            domain: self.state.domain.as_bytes().to_vec().into(),
            address,
        };
        let bytes = encode(&qr).map_err(|e| ClientError::State(e.to_string()))?;
        Ok(Extension::Unknown(
            QUEUE_REF_EXTENSION_TYPE,
            UnknownExtension(bytes),
        ))
    }

    /// A fresh leaf: a new signature key and a pseudonymous credential linked (encrypted) to our
    /// client credential. Returns the leaf's `SignatureEarKey` too. In baseline mode the leaf is
    /// our client credential itself, signing with its key, as in a conventional DS.
    pub(super) fn new_leaf_identity(
        &self,
    ) -> Result<(SignatureKeyPair, CredentialWithKey, EarKey), ClientError> {
        if self.state.mode == DsMode::Baseline {
            let client_key = SigningKey::from_bytes(&unhex(&self.state.client_key)?)?;
            let signer = SignatureKeyPair::from_raw(
                CIPHERSUITE.signature_algorithm(),
                client_key.to_bytes().to_vec(),
                client_key.verifying_key().as_bytes().to_vec(),
            );
            signer
                .store(self.provider.storage())
                .map_err(ClientError::mls)?;
            let credential = BasicCredential::new(unhex(&self.state.client_credential)?).into();
            let cwk = CredentialWithKey {
                credential,
                signature_key: signer.to_public_vec().into(),
            };
            return Ok((signer, cwk, EarKey::random()));
        }
        let signer =
            SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).map_err(ClientError::mls)?;
        signer
            .store(self.provider.storage())
            .map_err(ClientError::mls)?;
        let client_key = SigningKey::from_bytes(&unhex(&self.state.client_key)?)?;
        let (pseudonym, sek) = identity::new_pseudonym(&client_key, signer.public())?;
        let credential = BasicCredential::new(encoded(&pseudonym)?).into();
        let cwk = CredentialWithKey {
            credential,
            signature_key: signer.to_public_vec().into(),
        };
        Ok((signer, cwk, sek))
    }

    /// The credential material the hub stores for one of our leaves: encrypted under the group's
    /// keys in RM mode; empty in baseline mode, whose leaves carry the credential in the clear.
    pub(super) fn leaf_info(
        &self,
        credential: &ClientCredential,
        sek: &EarKey,
        ck: &EarKey,
        wk: &EarKey,
    ) -> Result<LeafCredentialInfo, ClientError> {
        Ok(match self.state.mode {
            DsMode::Rm => identity::wrap(credential, sek, ck, wk)?,
            DsMode::Baseline => LeafCredentialInfo {
                encrypted_client_credential: Vec::new().into(),
                encrypted_signature_ear_key: Vec::new().into(),
            },
        })
    }
}

/// The serialized content of our own leaf's credential in `group`.
pub(super) fn encoded_credential(group: &MlsGroup) -> Result<Vec<u8>, ClientError> {
    Ok(group
        .own_leaf_node()
        .ok_or(ClientError::Unexpected("no own leaf"))?
        .credential()
        .serialized_content()
        .to_vec())
}

/// Our leaf's signature key pair, serialised for the key file (see `GroupMeta::signer_private`).
pub(super) fn leaf_key_backup(signer: &SignatureKeyPair) -> Result<String, ClientError> {
    serde_json::to_vec(signer)
        .map(hex::encode)
        .map_err(|e| ClientError::State(e.to_string()))
}

/// Restores a key pair saved by [`leaf_key_backup`].
pub(super) fn leaf_key_restore(backup: &str) -> Result<SignatureKeyPair, ClientError> {
    serde_json::from_slice(&unhex(backup)?).map_err(|e| ClientError::State(e.to_string()))
}
