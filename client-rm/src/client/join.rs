//! Entering groups: by Welcome (an invitation from a contact) and by external commit.

use super::leaves::{encoded_credential, leaf_key_backup};
use super::{
    Client, Event, GroupHandle, MAX_FORWARD_DISTANCE, MAX_MESSAGE, MAX_PAST_EPOCHS,
    OUT_OF_ORDER_TOLERANCE, now_ms,
};
use crate::error::ClientError;
use crate::identity;
use crate::state::{GroupMeta, PendingKeyPackage, unhex};
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_crypto::hpke_seal::{self, HpkeCiphertext, HpkePrivateKey};
use mimi_rm_protocol::credentials::*;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::*;
use mimi_rm_protocol::{DsMode, decode_exact};
use openmls::prelude::{tls_codec::Deserialize as _, *};
use openmls_basic_credential::SignatureKeyPair;
use std::collections::BTreeMap;

/// A group we are entering by external commit, with the keys it needs once the hub accepts.
pub(super) struct ExternalEntry {
    /// The group as the external commit leaves it.
    pub mls: MlsGroup,
    /// Our new leaf's signer.
    pub signer: SignatureKeyPair,
    /// Our new leaf's `SignatureEarKey`.
    pub sek: EarKey,
    /// The group's `GroupStateEarKey`.
    pub ear_key: EarKey,
    /// The group's credential key and wrapper key.
    pub keys: (EarKey, EarKey),
}

impl Client {
    /// Sends an external commit that brings this device into `group`; on success files the group
    /// (keys, leaf backup) and verifies its members. On refusal, our half-built group state is
    /// dropped and the group stays unknown to us. Returns the new epoch.
    pub(super) async fn enter_by_external_commit(
        &mut self,
        group: &GroupHandle,
        req: &DsRequest,
        entry: ExternalEntry,
        credentials: &[LeafCredentialEntry],
    ) -> Result<u64, ClientError> {
        if let Err(e) = self.transport.ds(req).await {
            self.forget_group_state(group)?;
            return Err(e);
        }
        let ExternalEntry {
            mls,
            signer,
            sek,
            ear_key,
            keys: (ck, wk),
        } = entry;
        let epoch = mls.epoch().as_u64();
        self.state.groups.insert(
            hex::encode(&group.0),
            GroupMeta {
                ear_key: hex::encode(ear_key.as_bytes()),
                signer_public: hex::encode(signer.public()),
                credential_key: hex::encode(ck.as_bytes()),
                wrapper_key: hex::encode(wk.as_bytes()),
                signature_ear_key: hex::encode(sek.as_bytes()),
                signer_private: leaf_key_backup(&signer)?,
                leaf_credential: hex::encode(encoded_credential(&mls)?),
                user_key_set: true,
                members: BTreeMap::new(),
                last_request_ms: now_ms(),
                joined_epoch: epoch,
            },
        );
        for event in self.verify_all(group, &mls, credentials)? {
            tracing::debug!(?event, "after an external join");
        }
        self.record_self(group)?;
        self.state.committed_since_receive = true;
        self.persist()?;
        Ok(epoch)
    }

    /// Joins the group of a Welcome if the inviter is a contact (or our own user) whose
    /// attribution verifies; otherwise reports the refused invitation.
    pub(super) async fn join(&mut self, bundle: WelcomeBundle) -> Result<Vec<Event>, ClientError> {
        let MlsMessageBodyIn::Welcome(welcome) =
            MlsMessageIn::tls_deserialize_exact(bundle.welcome.as_slice())
                .map_err(ClientError::mls)?
                .extract()
        else {
            return Err(ClientError::Unexpected("not a Welcome"));
        };
        let (kp_ref, pending) = self.welcomed_key_package(&welcome)?;
        // Who invites us? Only contacts may; the hub cannot tell us, and does not know.
        let (attribution, by_own_user) = match self.vet_inviter(&bundle, kp_ref.as_slice()) {
            Ok(accepted) => accepted,
            Err(rejected) => return Ok(vec![rejected]),
        };
        let info = open_joiner_info(&bundle, &pending, kp_ref.as_slice(), &attribution)?;
        let ear_key = match self.state.mode {
            DsMode::Rm => EarKey::from_bytes(info.ear_key.as_slice())?,
            // A baseline hub has no group key; a local one keeps the group records uniform.
            DsMode::Baseline => EarKey::random(),
        };
        let signer = self.signer(&pending.signer_public)?;
        // Fetch the tree before touching the Welcome: a failed join consumes the KeyPackage.
        let wi = self.welcome_info(&info, &ear_key, &signer).await?;
        let tree = RatchetTreeIn::tls_deserialize_exact(wi.ratchet_tree.as_slice())
            .map_err(ClientError::mls)?;
        let group =
            StagedWelcome::new_from_welcome(&self.provider, &join_config(), welcome, Some(tree))
                .map_err(ClientError::mls)?
                .into_group(&self.provider)
                .map_err(ClientError::mls)?;
        let handle = GroupHandle(group.group_id().as_slice().to_vec());
        if handle.0 != info.group_id.as_slice() {
            return Err(ClientError::Unexpected(
                "Welcome and joiner info name different groups",
            ));
        }
        self.state.groups.insert(
            hex::encode(&handle.0),
            GroupMeta {
                ear_key: hex::encode(ear_key.as_bytes()),
                signer_public: pending.signer_public.clone(),
                credential_key: hex::encode(attribution.tbs.credential_key),
                wrapper_key: hex::encode(attribution.tbs.wrapper_key),
                signature_ear_key: pending.signature_ear_key.clone(),
                signer_private: leaf_key_backup(&signer)?,
                leaf_credential: hex::encode(encoded_credential(&group)?),
                user_key_set: by_own_user,
                members: BTreeMap::new(),
                last_request_ms: now_ms(),
                joined_epoch: group.epoch().as_u64(),
            },
        );
        if !pending.last_resort {
            self.state
                .key_packages
                .remove(&hex::encode(kp_ref.as_slice()));
        }
        let mut events = vec![Event::Joined {
            group: handle.clone(),
        }];
        events.extend(self.verify_all(&handle, &group, &wi.credentials)?);
        self.persist()?;
        if pending.last_resort {
            // The one-time packages are used up. Every further invitation would reuse this
            // leaf key, which links our groups to whoever sees two of them: publish a fresh set.
            if let Err(e) = self.publish_add_packages(super::ADD_PACKAGES).await {
                tracing::warn!(error = %e, "could not replace our used-up AddPackages");
            }
        }
        Ok(events)
    }

    /// The one of our pending KeyPackages that `welcome` is for.
    fn welcomed_key_package(
        &self,
        welcome: &Welcome,
    ) -> Result<(KeyPackageRef, PendingKeyPackage), ClientError> {
        welcome
            .secrets()
            .iter()
            .find_map(|s| {
                let r = hex::encode(s.new_member().as_slice());
                self.state
                    .key_packages
                    .get(&r)
                    .map(|p| (s.new_member(), p.clone()))
            })
            .ok_or(ClientError::Unexpected(
                "Welcome for none of our KeyPackages",
            ))
    }

    /// Accepts an invitation only from a contact (or our own user) whose attribution verifies:
    /// returns the attribution and whether our own user invites us, or the refusal to report.
    fn vet_inviter(
        &self,
        bundle: &WelcomeBundle,
        kp_ref: &[u8],
    ) -> Result<(WelcomeAttributionInfo, bool), Event> {
        let attribution = match self.attribution(bundle, kp_ref) {
            Ok(a) => a,
            Err(reason) => {
                return Err(Event::InviteRejected {
                    inviter: None,
                    reason,
                });
            }
        };
        let inviter = attribution.tbs.sender.tbs.identity.handle_str();
        // Our own other devices add us to their groups (with our user's key already set).
        let by_own_user = inviter == self.state.name;
        if !by_own_user && !self.state.contacts.contains_key(&inviter) {
            tracing::warn!(inviter = %inviter, "refusing an invitation from a non-contact");
            return Err(Event::InviteRejected {
                inviter: Some(inviter),
                reason: "not a contact".into(),
            });
        }
        Ok((attribution, by_own_user))
    }

    /// Fetches the ratchet tree and credential material of the Welcome's epoch, signed by the
    /// leaf we are joining with.
    async fn welcome_info(
        &self,
        info: &JoinerInfo,
        ear_key: &EarKey,
        signer: &SignatureKeyPair,
    ) -> Result<WelcomeInfo, ClientError> {
        let req = self.ds_request(
            info.group_id.as_slice(),
            Some(ear_key),
            DsSender::Joiner(signer.public().to_vec().into()),
            DsOperation::WelcomeInfo(info.epoch),
            Some(signer),
        )?;
        let DsResponse::WelcomeInfo(wi) = self.transport.ds(&req).await? else {
            return Err(ClientError::Unexpected("expected WelcomeInfo"));
        };
        Ok(wi)
    }

    /// Opens and verifies the inviter's attribution; the error is the reason to refuse.
    fn attribution(
        &self,
        bundle: &WelcomeBundle,
        kp_ref: &[u8],
    ) -> Result<WelcomeAttributionInfo, String> {
        let key = unhex(&self.state.wai_key)
            .ok()
            .and_then(|k| EarKey::from_bytes(&k).ok())
            .ok_or("no attribution key")?;
        let plain = ear::open(
            &key,
            identity::ATTRIBUTION_DOMAIN,
            kp_ref,
            bundle.attribution.as_slice(),
        )
        .map_err(|_| "the attribution is not for us".to_string())?;
        let wai: WelcomeAttributionInfo =
            decode_exact(&plain, MAX_MESSAGE).map_err(|e| format!("attribution: {e}"))?;
        if wai.tbs.key_package_ref.as_slice() != kp_ref {
            return Err("the attribution is for another invitation".into());
        }
        let anchors = self.anchors().map_err(|e| e.to_string())?;
        wai.verify(&anchors, now_ms() / 1000)
            .map_err(|e| format!("attribution: {e}"))?;
        Ok(wai)
    }
}

/// How we join groups: plaintext handshakes (the hub validates them), no tree in messages.
pub(super) fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAX_FORWARD_DISTANCE,
        ))
        .build()
}

/// Decodes an `MLSMessage` that must carry a GroupInfo.
pub(super) fn parse_group_info(
    bytes: &[u8],
) -> Result<openmls::messages::group_info::VerifiableGroupInfo, ClientError> {
    match MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(ClientError::mls)?
        .extract()
    {
        MlsMessageBodyIn::GroupInfo(vgi) => Ok(vgi),
        _ => Err(ClientError::Unexpected("not a GroupInfo")),
    }
}

/// Opens the joiner info the inviter sealed to our KeyPackage's init key; it must name the
/// group the attribution names.
fn open_joiner_info(
    bundle: &WelcomeBundle,
    pending: &PendingKeyPackage,
    kp_ref: &[u8],
    attribution: &WelcomeAttributionInfo,
) -> Result<JoinerInfo, ClientError> {
    let init = HpkePrivateKey::from_bytes(&unhex(&pending.init_private)?)?;
    let ct = HpkeCiphertext {
        kem_output: bundle.joiner_info.kem_output.as_slice().to_vec(),
        ciphertext: bundle.joiner_info.ciphertext.as_slice().to_vec(),
    };
    let info: JoinerInfo = decode_exact(
        &hpke_seal::open(&init, JOINER_INFO_HPKE_LABEL, kp_ref, &ct)?,
        4096,
    )
    .map_err(|e| ClientError::State(e.to_string()))?;
    if info.group_id != attribution.tbs.group_id {
        return Err(ClientError::Unexpected(
            "attribution and joiner info name different groups",
        ));
    }
    Ok(info)
}
