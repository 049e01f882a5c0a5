//! One Welcome per joiner, carrying only that joiner's secrets.
//!
//! An MLS Welcome holds one `EncryptedGroupSecrets` entry per new member plus the encrypted
//! GroupInfo they share. A commit adding k members therefore comes with a Welcome of size O(k),
//! and delivering it whole to each joiner's queue stores O(k²) bytes (a 1,000-member add would
//! queue ~100 MB). Each joiner only needs its own entry, so the hub re-frames the Welcome per
//! joiner: same cipher suite, same encrypted GroupInfo, one secrets entry. The joiner processes
//! it exactly as the full Welcome (it looks up its own entry by KeyPackage reference).

use crate::core::HubError;
use mimi_rm_protocol::decode_exact;
use tls_codec::{Serialize as _, TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// `MLSMessage` wire format value of a Welcome (RFC 9420 §6).
const WIRE_FORMAT_WELCOME: u16 = 3;

/// `EncryptedGroupSecrets` (RFC 9420 §12.4.3.1), with its HPKE ciphertext inlined.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
struct GroupSecrets {
    new_member: VLBytes,
    kem_output: VLBytes,
    ciphertext: VLBytes,
}

/// An `MLSMessage` carrying a `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
struct WelcomeMessage {
    version: u16,
    wire_format: u16,
    cipher_suite: u16,
    secrets: Vec<GroupSecrets>,
    encrypted_group_info: VLBytes,
}

/// A parsed Welcome that can be cut into per-joiner Welcomes.
pub struct SplitWelcome {
    message: WelcomeMessage,
    /// Index of each joiner's entry in `message.secrets`, by KeyPackage reference: a bulk add
    /// of k members looks up k entries, which a scan per joiner made O(k²).
    by_joiner: crate::store::FastMap<Vec<u8>, usize>,
}

impl SplitWelcome {
    /// Parses an encoded `MLSMessage` Welcome (already validated by OpenMLS).
    pub fn parse(bytes: &[u8]) -> Result<Self, HubError> {
        let message: WelcomeMessage =
            decode_exact(bytes, bytes.len()).map_err(|e| HubError::malformed("welcome", e))?;
        if message.wire_format != WIRE_FORMAT_WELCOME {
            return Err(HubError::malformed("welcome", "not a Welcome message"));
        }
        let mut by_joiner = crate::store::FastMap::default();
        for (i, secrets) in message.secrets.iter().enumerate() {
            // A reference named twice keeps its first entry, as a scan would find it.
            by_joiner
                .entry(secrets.new_member.as_slice().to_vec())
                .or_insert(i);
        }
        Ok(Self { message, by_joiner })
    }

    /// The Welcome for the joiner whose KeyPackage reference is `key_package_ref`: only its own
    /// secrets entry. `None` if the Welcome has no entry for it.
    pub fn for_joiner(&self, key_package_ref: &[u8]) -> Result<Option<Vec<u8>>, HubError> {
        let Some(own) = self
            .by_joiner
            .get(key_package_ref)
            .and_then(|i| self.message.secrets.get(*i))
        else {
            return Ok(None);
        };
        // Only this joiner's entry is copied: cloning the whole message per joiner copied
        // every joiner's secrets k times for a k-member add.
        let one = WelcomeMessage {
            version: self.message.version,
            wire_format: self.message.wire_format,
            cipher_suite: self.message.cipher_suite,
            secrets: vec![own.clone()],
            encrypted_group_info: self.message.encrypted_group_info.clone(),
        };
        one.tls_serialize_detached()
            .map(Some)
            .map_err(|e| HubError::Bug(format!("encode welcome: {e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmls::prelude::{tls_codec::Deserialize as _, *};
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;

    const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

    fn identity(name: &str) -> (SignatureKeyPair, CredentialWithKey) {
        let signer = SignatureKeyPair::new(CS.signature_algorithm()).unwrap();
        let cwk = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.to_public_vec().into(),
        };
        (signer, cwk)
    }

    #[test]
    fn every_joiner_joins_with_only_its_own_secrets() {
        let alice = OpenMlsRustCrypto::default();
        let (signer, cwk) = identity("alice");
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CS)
            .use_ratchet_tree_extension(false)
            .build();
        let mut group = MlsGroup::new(&alice, &signer, &config, cwk).unwrap();
        let joiners: Vec<(OpenMlsRustCrypto, KeyPackage)> = (0..3)
            .map(|i| {
                let p = OpenMlsRustCrypto::default();
                let (s, c) = identity(&format!("joiner{i}"));
                let kp = KeyPackage::builder().build(CS, &p, &s, c).unwrap();
                (p, kp.key_package().clone())
            })
            .collect();
        let kps: Vec<KeyPackage> = joiners.iter().map(|(_, kp)| kp.clone()).collect();
        let (_, welcome, _) = group.add_members(&alice, &signer, &kps).unwrap();
        group.merge_pending_commit(&alice).unwrap();
        let full = welcome.tls_serialize_detached().unwrap();
        let tree = group.export_ratchet_tree();
        let split = SplitWelcome::parse(&full).unwrap();
        let mut sizes = Vec::new();
        for (provider, kp) in &joiners {
            let kp_ref = kp.hash_ref(provider.crypto()).unwrap();
            let own = split.for_joiner(kp_ref.as_slice()).unwrap().unwrap();
            sizes.push(own.len());
            let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(own.as_slice())
                .unwrap()
                .extract()
            else {
                panic!("not a welcome")
            };
            assert_eq!(w.secrets().len(), 1);
            let joined = StagedWelcome::new_from_welcome(
                provider,
                &MlsGroupJoinConfig::default(),
                w,
                Some(tree.clone().into()),
            )
            .unwrap()
            .into_group(provider)
            .unwrap();
            assert_eq!(joined.epoch(), group.epoch());
            assert_eq!(
                joined.epoch_authenticator().as_slice(),
                group.epoch_authenticator().as_slice()
            );
        }
        assert!(
            sizes.iter().all(|s| *s < full.len()),
            "{sizes:?} vs {}",
            full.len()
        );
        // A KeyPackage the Welcome does not cover gets nothing.
        assert!(split.for_joiner(&[0; 16]).unwrap().is_none());
    }

    #[test]
    fn non_welcome_messages_are_refused() {
        assert!(SplitWelcome::parse(&[0, 1, 0, 1, 0, 1, 0, 0]).is_err());
        assert!(SplitWelcome::parse(&[]).is_err());
    }
}
