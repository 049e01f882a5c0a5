//! Pseudonymous leaves and their verification, without network or OpenMLS state.
//!
//! Every leaf carries a fresh [`PseudonymousCredential`]. Its link to the client credential (the
//! client's signature over the pseudonym and leaf key) is encrypted under a per-leaf
//! `SignatureEarKey`; members hold that key wrapped under the group's wrapper key and the client
//! credential encrypted under the group's credential key. The hub stores both ciphertexts and can
//! open neither.

use mimi_rm_crypto::CryptoError;
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::credentials::*;
use mimi_rm_protocol::{decode_exact, encode};

/// EAR domain of the encrypted link signature inside a leaf credential.
const LINK_DOMAIN: &str = "leaf link signature";
/// EAR domain of encrypted client credentials (friendship or group key).
const CREDENTIAL_DOMAIN: &str = "client credential";
/// EAR domain of wrapped `SignatureEarKey`s (friendship or group wrapper key).
const WRAPPED_KEY_DOMAIN: &str = "signature ear key";
/// EAR domain of encrypted welcome attributions.
pub const ATTRIBUTION_DOMAIN: &str = "welcome attribution";
/// Sanity bound for decoding credential material.
const MAX_CREDENTIAL: usize = 64 * 1024;

/// Why a member's identity could not be established.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A ciphertext did not open with the keys we hold.
    #[error("cannot decrypt {0}")]
    Decrypt(&'static str),
    /// Something did not decode.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The leaf credential names another signature key than the leaf's.
    #[error("leaf credential is for another leaf key")]
    WrongLeafKey,
    /// The client credential's signature over the pseudonym does not verify.
    #[error("the pseudonym is not signed by the client credential")]
    BadLink,
    /// The client credential chain does not verify.
    #[error("credential chain: {0}")]
    Chain(#[from] CredentialError),
}

/// A fresh pseudonymous credential for the leaf key `leaf_public`, linked to our client key.
/// Returns it with its `SignatureEarKey`.
pub fn new_pseudonym(
    client_key: &SigningKey,
    leaf_public: &[u8],
) -> Result<(PseudonymousCredential, EarKey), CryptoError> {
    let tbs = PseudonymousCredentialTbs {
        pseudonym: mimi_rm_crypto::ids::random_id(),
        signature_key: leaf_public.to_vec().into(),
    };
    let bytes = tbs
        .signed_bytes()
        .map_err(|_| CryptoError::Malformed("pseudonym"))?;
    let link = client_key.sign(PSEUDONYM_LABEL, &bytes);
    let key = EarKey::random();
    let encrypted_signature = ear::seal(&key, LINK_DOMAIN, &bytes, &link)?.into();
    Ok((
        PseudonymousCredential {
            tbs,
            encrypted_signature,
        },
        key,
    ))
}

/// Encrypts a client credential and a leaf's `SignatureEarKey` under a credential key and a
/// wrapper key (the friendship pair in AddPackages, the group pair in group state).
pub fn wrap(
    credential: &ClientCredential,
    signature_ear_key: &EarKey,
    credential_key: &EarKey,
    wrapper_key: &EarKey,
) -> Result<LeafCredentialInfo, CryptoError> {
    let cc = encode(credential).map_err(|_| CryptoError::Malformed("client credential"))?;
    Ok(LeafCredentialInfo {
        encrypted_client_credential: ear::seal(credential_key, CREDENTIAL_DOMAIN, b"", &cc)?.into(),
        encrypted_signature_ear_key: ear::seal(
            wrapper_key,
            WRAPPED_KEY_DOMAIN,
            b"",
            signature_ear_key.as_bytes(),
        )?
        .into(),
    })
}

/// Opens what [`wrap`] sealed.
pub fn unwrap(
    info: &LeafCredentialInfo,
    credential_key: &EarKey,
    wrapper_key: &EarKey,
) -> Result<(ClientCredential, EarKey), IdentityError> {
    let cc = ear::open(
        credential_key,
        CREDENTIAL_DOMAIN,
        b"",
        info.encrypted_client_credential.as_slice(),
    )
    .map_err(|_| IdentityError::Decrypt("client credential"))?;
    let credential = decode_exact(&cc, MAX_CREDENTIAL)
        .map_err(|_| IdentityError::Malformed("client credential"))?;
    let key = ear::open(
        wrapper_key,
        WRAPPED_KEY_DOMAIN,
        b"",
        info.encrypted_signature_ear_key.as_slice(),
    )
    .map_err(|_| IdentityError::Decrypt("signature EAR key"))?;
    let key =
        EarKey::from_bytes(&key).map_err(|_| IdentityError::Malformed("signature EAR key"))?;
    Ok((credential, key))
}

/// Verifies one leaf: the pseudonymous credential (BasicCredential identity bytes) names the
/// leaf's signature key, the client credential signed it, and the client credential chains to
/// the AS. Returns the verified client credential.
pub fn verify_leaf(
    leaf_identity: &[u8],
    leaf_signature_key: &[u8],
    info: &LeafCredentialInfo,
    credential_key: &EarKey,
    wrapper_key: &EarKey,
    anchors: &AsCredentials,
    now_secs: u64,
) -> Result<ClientCredential, IdentityError> {
    let pseudonym: PseudonymousCredential = decode_exact(leaf_identity, MAX_CREDENTIAL)
        .map_err(|_| IdentityError::Malformed("leaf credential"))?;
    if pseudonym.tbs.signature_key.as_slice() != leaf_signature_key {
        return Err(IdentityError::WrongLeafKey);
    }
    let (credential, key) = unwrap(info, credential_key, wrapper_key)?;
    let bytes = pseudonym
        .tbs
        .signed_bytes()
        .map_err(|_| IdentityError::Malformed("leaf credential"))?;
    let link = ear::open(
        &key,
        LINK_DOMAIN,
        &bytes,
        pseudonym.encrypted_signature.as_slice(),
    )
    .map_err(|_| IdentityError::Decrypt("link signature"))?;
    credential
        .verifying_key()?
        .verify(PSEUDONYM_LABEL, &bytes, &link)
        .map_err(|_| IdentityError::BadLink)?;
    credential.verify_chain(anchors, now_secs)?;
    Ok(credential)
}

/// Verifies a baseline-mode leaf: its credential is the member's client credential itself,
/// which must certify the leaf's signature key and chain to the AS. Baseline clients expose
/// their identity in every leaf; this is the conventional DS that RM mode is compared with.
pub fn verify_plain_leaf(
    leaf_identity: &[u8],
    leaf_signature_key: &[u8],
    anchors: &AsCredentials,
    now_secs: u64,
) -> Result<ClientCredential, IdentityError> {
    let credential: ClientCredential = decode_exact(leaf_identity, MAX_CREDENTIAL)
        .map_err(|_| IdentityError::Malformed("leaf credential"))?;
    if credential.tbs.public_key.as_slice() != leaf_signature_key {
        return Err(IdentityError::WrongLeafKey);
    }
    credential.verify_chain(anchors, now_secs)?;
    Ok(credential)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// AS anchors and a client credential issued under them, valid from `now` (for tests).
    pub(crate) fn anchors_and_credential(
        now: u64,
    ) -> (AsCredentials, SigningKey, ClientCredential) {
        let root_key = SigningKey::generate();
        let root =
            AsCredential::issue(&root_key, "a.test", ExpirationData::starting(now, 1000)).unwrap();
        let int_key = SigningKey::generate();
        let int = AsIntermediateCredential::issue(
            &root_key,
            &root,
            &int_key.verifying_key(),
            ExpirationData::starting(now, 500),
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
        let cc = ClientCredential::issue(&int_key, &int, &csr, ExpirationData::starting(now, 100))
            .unwrap();
        (
            AsCredentials {
                roots: vec![root],
                intermediates: vec![int],
            },
            client_key,
            cc,
        )
    }

    #[test]
    fn a_leaf_verifies_only_with_the_right_keys() {
        let now = 1_800_000_000;
        let (anchors, client_key, cc) = anchors_and_credential(now);
        let leaf_key = [7u8; 32];
        let (pseudonym, sek) = new_pseudonym(&client_key, &leaf_key).unwrap();
        let identity = encode(&pseudonym).unwrap();
        let (ck, wk) = (EarKey::random(), EarKey::random());
        let info = wrap(&cc, &sek, &ck, &wk).unwrap();
        let got = verify_leaf(&identity, &leaf_key, &info, &ck, &wk, &anchors, now + 1).unwrap();
        assert_eq!(got, cc);
        // Another leaf key, another group's keys, or a client key the AS never certified fail.
        assert!(matches!(
            verify_leaf(&identity, &[8; 32], &info, &ck, &wk, &anchors, now + 1),
            Err(IdentityError::WrongLeafKey)
        ));
        assert!(matches!(
            verify_leaf(
                &identity,
                &leaf_key,
                &info,
                &EarKey::random(),
                &wk,
                &anchors,
                now + 1
            ),
            Err(IdentityError::Decrypt(_))
        ));
        let (pseudonym2, sek2) = new_pseudonym(&SigningKey::generate(), &leaf_key).unwrap();
        let info2 = wrap(&cc, &sek2, &ck, &wk).unwrap();
        assert!(matches!(
            verify_leaf(
                &encode(&pseudonym2).unwrap(),
                &leaf_key,
                &info2,
                &ck,
                &wk,
                &anchors,
                now + 1
            ),
            Err(IdentityError::BadLink)
        ));
    }

    #[test]
    fn two_pseudonyms_of_one_client_share_no_bytes_that_link_them() {
        let (_, client_key, cc) = anchors_and_credential(1_800_000_000);
        let (a, ka) = new_pseudonym(&client_key, &[1; 32]).unwrap();
        let (b, kb) = new_pseudonym(&client_key, &[2; 32]).unwrap();
        assert_ne!(a.tbs.pseudonym, b.tbs.pseudonym);
        assert_ne!(a.encrypted_signature, b.encrypted_signature);
        let (ck, wk) = (EarKey::random(), EarKey::random());
        // Same credential wrapped twice under the same keys: fresh salts, different bytes.
        let ia = wrap(&cc, &ka, &ck, &wk).unwrap();
        let ib = wrap(&cc, &kb, &ck, &wk).unwrap();
        assert_ne!(
            ia.encrypted_client_credential,
            ib.encrypted_client_credential
        );
    }
}
