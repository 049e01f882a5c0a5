//! Group lifecycle and bookkeeping: creating groups, re-initialising and deleting them, and
//! what we know about the groups we are in.

use super::commit::Plan;
use super::leaves::{encoded_credential, leaf_key_backup};
use super::verify::verified_record;
use super::{
    CIPHERSUITE, Client, GroupHandle, MAX_FORWARD_DISTANCE, MAX_PAST_EPOCHS,
    OUT_OF_ORDER_TOLERANCE, b32, now_ms,
};
use crate::contact::ContactCard;
use crate::error::ClientError;
use crate::state::{GroupMeta, unhex};
use mimi_rm_crypto::ear::EarKey;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::*;
use openmls::prelude::{tls_codec::Serialize as _, *};
use openmls_basic_credential::SignatureKeyPair;
use std::collections::BTreeMap;

impl Client {
    /// Groups we are in.
    pub fn groups(&self) -> Vec<GroupHandle> {
        self.state
            .groups
            .keys()
            .filter_map(|k| GroupHandle::from_hex(k).ok())
            .collect()
    }

    /// Our leaf index in a group.
    pub fn own_leaf(&self, group: &GroupHandle) -> Result<u32, ClientError> {
        Ok(self.load_group(group)?.own_leaf_index().u32())
    }

    /// Current epoch of a group as we see it.
    pub fn epoch(&self, group: &GroupHandle) -> Result<u64, ClientError> {
        Ok(self.load_group(group)?.epoch().as_u64())
    }

    /// Leaf indices of the current members.
    pub fn members(&self, group: &GroupHandle) -> Result<Vec<u32>, ClientError> {
        Ok(self
            .load_group(group)?
            .members()
            .map(|m| m.index.u32())
            .collect())
    }

    /// The EAR key of a group (for tests and diagnostics; never logged).
    pub fn group_ear_key(&self, group: &GroupHandle) -> Result<[u8; 32], ClientError> {
        let meta = self.meta(group)?;
        b32(&unhex(&meta.ear_key)?)
    }

    /// The group's `CredentialEarKey` and `SignatureEarKeyWrapperKey` (for tests and
    /// diagnostics; never logged).
    pub fn group_credential_keys(
        &self,
        group: &GroupHandle,
    ) -> Result<([u8; 32], [u8; 32]), ClientError> {
        let meta = self.meta(group)?;
        Ok((
            b32(&unhex(&meta.credential_key)?)?,
            b32(&unhex(&meta.wrapper_key)?)?,
        ))
    }

    /// Opens a leaf's credential material with the given group credential keys: what anyone
    /// holding those keys can read (audits, and the tests that play a removed member).
    pub fn open_credential_material(
        info: &mimi_rm_protocol::credentials::LeafCredentialInfo,
        credential_key: &[u8; 32],
        wrapper_key: &[u8; 32],
    ) -> Result<mimi_rm_protocol::credentials::ClientCredential, ClientError> {
        let (cc, _) = crate::identity::unwrap(
            info,
            &EarKey::from_bytes(credential_key)?,
            &EarKey::from_bytes(wrapper_key)?,
        )?;
        Ok(cc)
    }

    /// Creates a group on the hub with our user as its only member (and admin): this device,
    /// plus our user's other devices.
    pub async fn create_group(&mut self) -> Result<GroupHandle, ClientError> {
        let group = self.create_group_of(GroupKind::Regular).await?;
        if self.state.devices.len() > 1 {
            self.add_own_devices(&group).await?;
        }
        Ok(group)
    }

    /// Creates a group of `kind` with this device as its only member.
    pub(super) async fn create_group_of(
        &mut self,
        kind: GroupKind,
    ) -> Result<GroupHandle, ClientError> {
        let reserved = self.reserve_group_id().await?;
        self.create_group_in(reserved, kind).await
    }

    /// Creates a group of `kind` under an id reserved on our hub.
    async fn create_group_in(
        &mut self,
        reserved: ReservedGroup,
        kind: GroupKind,
    ) -> Result<GroupHandle, ClientError> {
        let gid = reserved.group_id.as_slice().to_vec();
        let (signer, cwk, sek) = self.new_leaf_identity()?;
        let cfg = self.group_create_config(&reserved)?;
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &signer,
            &cfg,
            GroupId::from_slice(&gid),
            cwk,
        )
        .map_err(ClientError::mls)?;
        let (group_info, ratchet_tree) = self.export_public_state(&group, &signer)?;
        let ear_key = EarKey::random();
        let (credential_key, wrapper_key) = (EarKey::random(), EarKey::random());
        let credential = self.client_credential()?;
        let creator = self.leaf_info(&credential, &sek, &credential_key, &wrapper_key)?;
        let op = DsOperation::CreateGroup(CreateGroup {
            group_info: group_info.into(),
            ratchet_tree: ratchet_tree.into(),
            creator,
            creator_user_auth_key: self
                .user_auth_key(&gid)?
                .verifying_key()
                .as_bytes()
                .to_vec()
                .into(),
            kind,
        });
        let req = self.ds_request(&gid, Some(&ear_key), DsSender::Member(0), op, Some(&signer))?;
        self.transport.ds(&req).await?;
        self.state.groups.insert(
            hex::encode(&gid),
            GroupMeta {
                ear_key: hex::encode(ear_key.as_bytes()),
                signer_public: hex::encode(signer.public()),
                credential_key: hex::encode(credential_key.as_bytes()),
                wrapper_key: hex::encode(wrapper_key.as_bytes()),
                signature_ear_key: hex::encode(sek.as_bytes()),
                signer_private: leaf_key_backup(&signer)?,
                leaf_credential: hex::encode(encoded_credential(&group)?),
                user_key_set: true,
                members: BTreeMap::from([(
                    0,
                    verified_record(signer.public(), &credential, &self.state.domain),
                )]),
                last_request_ms: now_ms(),
                joined_epoch: 0,
            },
        );
        self.persist()?;
        Ok(GroupHandle(gid))
    }

    /// How we create groups: plaintext handshakes (the hub validates them), no tree in
    /// messages, our sealed queue reference in our leaf, and the hub as external sender.
    fn group_create_config(
        &self,
        reserved: &ReservedGroup,
    ) -> Result<MlsGroupCreateConfig, ClientError> {
        // The hub proposes removals (inactive members, deleted queues) as external sender.
        let hub_sender = ExternalSender::new(
            reserved.external_sender_key.as_slice().to_vec().into(),
            BasicCredential::new(external_sender_identity(&self.state.domain)).into(),
        );
        Ok(MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(SenderRatchetConfiguration::new(
                OUT_OF_ORDER_TOLERANCE,
                MAX_FORWARD_DISTANCE,
            ))
            .capabilities(leaf_capabilities())
            .with_leaf_node_extensions(
                Extensions::single(self.sealed_queue_ref()?).map_err(ClientError::mls)?,
            )
            .map_err(ClientError::mls)?
            .with_group_context_extensions(
                Extensions::single(Extension::ExternalSenders(vec![hub_sender]))
                    .map_err(ClientError::mls)?,
            )
            .build())
    }

    /// The serialized GroupInfo and ratchet tree of a group we just created, for the hub.
    fn export_public_state(
        &self,
        group: &MlsGroup,
        signer: &SignatureKeyPair,
    ) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        let group_info = group
            .export_group_info(self.provider.crypto(), signer, false)
            .map_err(ClientError::mls)?
            .to_bytes()
            .map_err(ClientError::mls)?;
        let ratchet_tree = group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(ClientError::mls)?;
        Ok((group_info, ratchet_tree))
    }

    /// Reserves a group id on our hub (with the hub's external-sender key).
    pub(crate) async fn reserve_group_id(&self) -> Result<ReservedGroup, ClientError> {
        let req = self.ds_request(
            &[],
            None,
            DsSender::Anonymous,
            DsOperation::RequestGroupId,
            None,
        )?;
        match self.transport.ds(&req).await? {
            DsResponse::GroupId(reserved) => Ok(reserved),
            _ => Err(ClientError::Unexpected("expected a group id")),
        }
    }

    /// The epoch we joined `group` at (see [`GroupMeta::joined_epoch`]).
    pub(super) fn joined_epoch(&self, group: &GroupHandle) -> u64 {
        self.state
            .groups
            .get(&hex::encode(&group.0))
            .map_or(0, |g| g.joined_epoch)
    }

    /// Re-initialises `group` (admins only): commits a ReInit into a fresh group on our hub,
    /// creates that group and invites every member who is our contact. The old group takes no
    /// further operations. Returns the new group.
    pub async fn reinit(&mut self, group: &GroupHandle) -> Result<GroupHandle, ClientError> {
        self.catch_up_before_commit().await?;
        let reserved = self.reserve_group_id().await?;
        self.commit(group, Plan::ReInit(reserved.group_id.as_slice().to_vec()))
            .await?;
        let handles: std::collections::BTreeSet<String> = self
            .meta(group)?
            .members
            .values()
            .filter_map(|r| r.handle.clone())
            .filter(|h| *h != self.state.name)
            .collect();
        let new = self.create_group_in(reserved, GroupKind::Regular).await?;
        if self.state.devices.len() > 1 {
            self.add_own_devices(&new).await?;
        }
        for handle in handles {
            if let Some(text) = self.state.contacts.get(&handle).cloned() {
                self.invite(&new, &ContactCard::from_text(&text)?).await?;
            }
        }
        Ok(new)
    }

    /// Removes everyone else and deletes the group on the hub.
    pub async fn delete_group(&mut self, group: &GroupHandle) -> Result<(), ClientError> {
        self.catch_up_before_commit().await?;
        let mls = self.load_group(group)?;
        let own = mls.own_leaf_index();
        let others = mls
            .members()
            .map(|m| m.index)
            .filter(|i| *i != own)
            .collect();
        self.commit(group, Plan::Delete(others)).await?;
        let mut mls = self.load_group(group)?;
        mls.delete(self.provider.storage())
            .map_err(ClientError::mls)?;
        self.state.groups.remove(&hex::encode(&group.0));
        self.persist()
    }
}

/// The group's credential key and wrapper key.
pub(super) fn group_keys(meta: &GroupMeta) -> Result<(EarKey, EarKey), ClientError> {
    Ok((
        EarKey::from_bytes(&unhex(&meta.credential_key)?)?,
        EarKey::from_bytes(&unhex(&meta.wrapper_key)?)?,
    ))
}
