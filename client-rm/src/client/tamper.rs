//! A misbehaving member, for tests only (cargo feature `adversary`).
//!
//! Each [`Tamper`] produces a commit the hub must accept — its signature, epoch, proposals and
//! tree all validate — but that honest members cannot process, because it breaks something only
//! holders of the epoch secrets can check. This is the threat the report-and-resync protocol
//! answers; the tests use it to prove the group heals.

use super::commit::Plan;
use super::membership::InviteMode;
use super::{Client, GroupHandle};
use crate::error::ClientError;
use mimi_rm_protocol::ds::DsOperation;
use mimi_rm_protocol::qs::QsOperation;
use openmls::prelude::{SignContent, tls_codec::Serialize as _};
use openmls_traits::OpenMlsProvider as _;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::signatures::Signer as _;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeCiphertext, HpkeConfig,
    HpkeKeyPair, KemOutput, SignatureScheme,
};
use tls_codec::SecretVLBytes;

/// How an update commit is corrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// One bit of the confirmation tag flipped; the uploaded GroupInfo carries the same flipped
    /// tag and is re-signed, so the hub's GroupInfo check passes.
    ConfirmationTag,
    /// One bit of the membership tag flipped.
    MembershipTag,
    /// Every encrypted path secret is garbage; tags and signature are honestly computed.
    PathSecrets,
}

/// Length of an HMAC-SHA256 tag and of an Ed25519 signature.
const MAC_LEN: usize = 32;
const SIG_LEN: usize = 64;

impl Client {
    /// Commits a self-update corrupted as `how` says, and merges it locally once the hub has
    /// accepted it (as an attacker would). Returns our new epoch.
    pub async fn update_tampered(
        &mut self,
        group: &GroupHandle,
        how: Tamper,
    ) -> Result<u64, ClientError> {
        let (signer, mut mls, ear_key) = self.member(group)?;
        let mut op = match how {
            Tamper::PathSecrets => self.build_commit(
                &mut mls,
                &signer,
                Plan::Update,
                &CorruptingHpke(self.provider.crypto()),
            )?,
            _ => self.build_commit(&mut mls, &signer, Plan::Update, self.provider.crypto())?,
        };
        let DsOperation::Update(bundle) = &mut op else {
            return Err(ClientError::Unexpected("an update builds an Update"));
        };
        match how {
            Tamper::MembershipTag => {
                let mut commit = bundle.commit.as_slice().to_vec();
                flip_last_tag_byte(&mut commit, 0)?;
                bundle.commit = commit.into();
            }
            Tamper::ConfirmationTag => {
                // PublicMessage ends with `confirmation_tag<V> ‖ membership_tag<V>`.
                let mut commit = bundle.commit.as_slice().to_vec();
                flip_last_tag_byte(&mut commit, 1 + MAC_LEN)?;
                bundle.commit = commit.into();
                // GroupInfo ends with `confirmation_tag<V> ‖ u32 signer ‖ signature<V>`.
                let mut gi = bundle.group_info.as_slice().to_vec();
                let sig_start = gi
                    .len()
                    .checked_sub(2 + SIG_LEN)
                    .ok_or(ClientError::Unexpected("GroupInfo too short"))?;
                flip_last_tag_byte(&mut gi, 2 + SIG_LEN + 4)?;
                // Re-sign GroupInfoTBS (everything between the MLSMessage header and the signature).
                let tbs = gi[4..sig_start].to_vec();
                let content = SignContent::new("GroupInfoTBS", tbs.into())
                    .tls_serialize_detached()
                    .map_err(ClientError::mls)?;
                let sig = signer
                    .sign(&content)
                    .map_err(|e| ClientError::Mls(format!("sign: {e:?}")))?;
                gi.truncate(sig_start + 2);
                gi.extend_from_slice(&sig);
                bundle.group_info = gi.into();
            }
            Tamper::PathSecrets => {}
        }
        self.send_commit(mls, &ear_key, &signer, op, false, None)
            .await
    }
}

impl Client {
    /// Signs any QS operation as our client (queue), enveloped for `/qs/request` or a live
    /// socket's first frame, so tests can replay, truncate or misuse it.
    pub fn signed_client_request(&self, operation: QsOperation) -> Result<Vec<u8>, ClientError> {
        let req = super::requests::signed_qs(
            &self.client_auth()?,
            mimi_rm_protocol::qs::QsSender::Client(self.client_id()?),
            operation,
        )?;
        crate::transport::envelope(mimi_rm_protocol::TransactionType::QueueService, &req)
    }

    /// Signs any DS operation as our current leaf in `group`, so tests can send requests an
    /// honest client never would (e.g. another member's resync under our name).
    pub fn signed_member_request(
        &self,
        group: &GroupHandle,
        operation: DsOperation,
    ) -> Result<mimi_rm_protocol::ds::DsRequest, ClientError> {
        let (signer, mls, ear_key) = self.member(group)?;
        self.member_request(&mls, &ear_key, &signer, operation)
    }

    /// Signs any DS operation with our user's auth key in `group` (user-level sender), so tests
    /// can send user-level requests an honest client never would.
    pub fn signed_user_request(
        &self,
        group: &GroupHandle,
        operation: DsOperation,
    ) -> Result<mimi_rm_protocol::ds::DsRequest, ClientError> {
        let ear_key = mimi_rm_crypto::ear::EarKey::from_bytes(&crate::state::unhex(
            &self.meta(group)?.ear_key,
        )?)?;
        self.user_request(group, &ear_key, operation)
    }

    /// Adds a contact's clients as if they were devices of our own user (`AddClients`, signed
    /// with our user key): a member trying to add users without being an admin.
    pub async fn add_contact_as_own_devices(
        &mut self,
        group: &GroupHandle,
        contact: &crate::ContactCard,
    ) -> Result<u64, ClientError> {
        self.ensure_user_key(group).await?;
        let (kps, added, _) = self
            .fetch_add_packages_of(group, contact, None, InviteMode::Checked)
            .await?;
        let added = added
            .into_iter()
            .map(|a| mimi_rm_protocol::ds::AddedMember {
                user: mimi_rm_protocol::ds::OWN_CLIENT,
                ..a
            })
            .collect();
        self.commit(group, Plan::AddClients(kps, added)).await
    }

    /// Adds a contact's clients without checking their credentials (a colluding member).
    pub async fn invite_unchecked(
        &mut self,
        group: &GroupHandle,
        contact: &crate::ContactCard,
    ) -> Result<u64, ClientError> {
        self.invite_with(group, contact, InviteMode::Unchecked)
            .await
    }

    /// Adds a contact's clients with a commit that carries no credential material.
    pub async fn invite_without_material(
        &mut self,
        group: &GroupHandle,
        contact: &crate::ContactCard,
    ) -> Result<u64, ClientError> {
        self.invite_with(group, contact, InviteMode::WithoutMaterial)
            .await
    }

    /// Replaces our client credential with one claiming `handle`, issued by a root and
    /// intermediate the AS never certified, and republishes our AddPackages with it.
    pub async fn forge_client_credential(&mut self, handle: &str) -> Result<(), ClientError> {
        use mimi_rm_crypto::sign::SigningKey;
        use mimi_rm_protocol::credentials::*;
        let forge = |e: CredentialError| ClientError::State(e.to_string());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let root_key = SigningKey::generate();
        let root = AsCredential::issue(
            &root_key,
            "forged.test",
            ExpirationData::starting(now, 1 << 20),
        )
        .map_err(forge)?;
        let int_key = SigningKey::generate();
        let int = AsIntermediateCredential::issue(
            &root_key,
            &root,
            &int_key.verifying_key(),
            ExpirationData::starting(now, 1 << 19),
        )
        .map_err(forge)?;
        let client_key = SigningKey::from_bytes(&crate::state::unhex(&self.state.client_key)?)?;
        let csr = ClientCredentialCsr::new(
            &client_key,
            ClientIdentity {
                handle: handle.as_bytes().to_vec().into(),
                device: mimi_rm_crypto::ids::random_id(),
            },
        )
        .map_err(forge)?;
        let forged =
            ClientCredential::issue(&int_key, &int, &csr, ExpirationData::starting(now, 1 << 18))
                .map_err(forge)?;
        self.state.client_credential = hex::encode(
            mimi_rm_protocol::encode(&forged).map_err(|e| ClientError::State(e.to_string()))?,
        );
        self.publish_add_packages(5).await
    }

    /// Builds the resync commit we would send now, without sending it and without changing our
    /// state, so tests can send it in someone else's name.
    pub async fn prepared_resync(
        &mut self,
        group: &GroupHandle,
    ) -> Result<mimi_rm_protocol::ds::CommitBundle, ClientError> {
        let (signer, _, cwk, ear_key) = self.resync_identity(group)?;
        let info = self.external_commit_info(group, &ear_key).await?;
        let before = self.provider.snapshot();
        let built = self.build_external_join(group, &info, cwk, &signer, Vec::new());
        self.provider = crate::provider::ClientProvider::from_entries(before);
        Ok(built?.1)
    }
}

/// Flips the last byte of the 32-byte MAC that ends `after` bytes before the end of `bytes`,
/// checking its one-byte length prefix so a layout change fails loudly instead of corrupting
/// something else.
fn flip_last_tag_byte(bytes: &mut [u8], after: usize) -> Result<(), ClientError> {
    let end = bytes
        .len()
        .checked_sub(after)
        .ok_or(ClientError::Unexpected("message too short"))?;
    let prefix = end
        .checked_sub(MAC_LEN + 1)
        .ok_or(ClientError::Unexpected("message too short"))?;
    if bytes[prefix] != MAC_LEN as u8 {
        return Err(ClientError::Unexpected("unexpected tag layout"));
    }
    bytes[end - 1] ^= 0x01;
    Ok(())
}

/// The provider's crypto, except that every HPKE seal returns a corrupted ciphertext. During an
/// update commit the only sealed values are the path secrets.
struct CorruptingHpke<'a, C>(&'a C);

impl<C: OpenMlsCrypto> OpenMlsCrypto for CorruptingHpke<'_, C> {
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        self.0.supports(ciphersuite)
    }
    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        self.0.supported_ciphersuites()
    }
    fn hkdf_extract(
        &self,
        hash_type: HashType,
        salt: &[u8],
        ikm: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.0.hkdf_extract(hash_type, salt, ikm)
    }
    fn hmac(
        &self,
        hash_type: HashType,
        key: &[u8],
        message: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.0.hmac(hash_type, key, message)
    }
    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        self.0.hkdf_expand(hash_type, prk, info, okm_len)
    }
    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.0.hash(hash_type, data)
    }
    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.0.aead_encrypt(alg, key, data, nonce, aad)
    }
    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.0.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }
    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        self.0.signature_key_gen(alg)
    }
    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.0.verify_signature(alg, data, pk, signature)
    }
    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.0.sign(alg, data, key)
    }
    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        let sealed = self.0.hpke_seal(config, pk_r, info, aad, ptxt)?;
        let mut ciphertext = sealed.ciphertext.as_slice().to_vec();
        if let Some(b) = ciphertext.last_mut() {
            *b ^= 0x01;
        }
        Ok(HpkeCiphertext {
            kem_output: sealed.kem_output,
            ciphertext: ciphertext.into(),
        })
    }
    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.0.hpke_open(config, input, sk_r, info, aad)
    }
    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        self.0
            .hpke_setup_sender_and_export(config, pk_r, info, exporter_context, exporter_length)
    }
    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        self.0.hpke_setup_receiver_and_export(
            config,
            enc,
            sk_r,
            info,
            exporter_context,
            exporter_length,
        )
    }
    fn derive_hpke_keypair(
        &self,
        config: HpkeConfig,
        ikm: &[u8],
    ) -> Result<HpkeKeyPair, CryptoError> {
        self.0.derive_hpke_keypair(config, ikm)
    }
}

impl Client {
    /// What a removed (stolen) device can still do with the credential the AS revoked: create a
    /// fresh pseudonymous QS user of its own (paid with tokens it kept), publish AddPackages
    /// under that credential, and hand out a contact card for them. Returns the card. Honest
    /// inviters must refuse it with `ClientError::Revoked`.
    pub async fn republish_under_new_qs_user(&mut self) -> Result<crate::ContactCard, ClientError> {
        let device: [u8; 16] = crate::state::unhex(&self.state.device)?
            .try_into()
            .map_err(|_| ClientError::State("device id".into()))?;
        let fresh = super::register::create_qs_user(&self.transport, &device).await?;
        let state = &mut self.state;
        state.user_id = hex::encode(fresh.ids.user_id);
        state.client_id = hex::encode(fresh.ids.client_id);
        state.client_auth_key = hex::encode(fresh.client_auth.to_bytes());
        state.user_auth_key = hex::encode(fresh.user_auth.to_bytes());
        state.friendship_token = hex::encode(fresh.token);
        state.add_package_key = hex::encode(fresh.add_package_key.as_bytes());
        state.queue_ratchet =
            hex::encode(mimi_rm_crypto::ratchet::QueueRatchet::new(fresh.secret).to_bytes());
        state.key_packages.clear();
        self.publish_add_packages(super::ADD_PACKAGES).await?;
        self.contact_card()
    }
}
