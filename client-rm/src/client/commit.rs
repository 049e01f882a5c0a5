//! Our commits: what each one does ([`Plan`]), building it, sending it and merging it only
//! once the hub has accepted it.

use super::groups::group_keys;
use super::join::parse_group_info;
use super::requests::backoff;
use super::{Client, GroupHandle, MAX_MESSAGE, TRANSPORT_RETRIES, encoded, now_ms};
use crate::error::ClientError;
use crate::identity;
use mimi_rm_crypto::ear::EarKey;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::{DsMode, decode_exact};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;

/// What one of our commits does.
#[derive(Clone)]
pub(super) enum Plan {
    /// Contacts' clients, with the authenticated data carrying their credential material.
    Add(Vec<KeyPackage>, CommitAad),
    /// Members at these leaves.
    Remove(Vec<LeafNodeIndex>),
    /// A fresh UpdatePath of our own leaf.
    Update,
    /// Everyone else, before the group is deleted.
    Delete(Vec<LeafNodeIndex>),
    /// Our user's other devices (signed with the user auth key).
    AddClients(Vec<KeyPackage>, Vec<AddedMember>),
    /// Leaves of our user's devices, and the user auth key that replaces the current one.
    RemoveClients(Vec<u32>, Vec<u8>),
    /// An Update that replaces our user's auth key.
    RotateUserKey(Vec<u8>),
    /// Re-initialise into the given (reserved) group id.
    ReInit(Vec<u8>),
}

impl Plan {
    /// Whether the hub authenticates this commit with the user auth key.
    fn is_user_level(&self) -> bool {
        matches!(self, Plan::AddClients(..) | Plan::RemoveClients(..))
    }

    /// The DS operation that carries a commit for this plan.
    fn operation(self, cb: CommitBundle) -> DsOperation {
        match self {
            Plan::Add(..) => DsOperation::AddMembers(cb),
            Plan::Remove(_) => DsOperation::RemoveMembers(cb),
            Plan::Update | Plan::RotateUserKey(_) => DsOperation::Update(cb),
            Plan::Delete(_) => DsOperation::DeleteGroup(cb),
            Plan::AddClients(..) => DsOperation::AddClients(cb),
            Plan::RemoveClients(..) => DsOperation::RemoveClients(cb),
            Plan::ReInit(_) => DsOperation::ReInit(cb),
        }
    }
}

impl Client {
    /// Called before each of our commits, before the group's state is read for it: if a
    /// commit of ours has moved us on since we last read our whole queue, read it now.
    ///
    /// Our own commits advance our epoch without going through the queue, where application
    /// messages of earlier epochs may still wait (the hub accepts a message up to a few epochs
    /// behind its own and queues it for us then). After `MAX_PAST_EPOCHS` commits of ours in a
    /// row those epochs' secrets were gone, and OpenMLS refused the waiting messages
    /// ("generation too old"). Reading the queue before every further commit keeps a queued
    /// message at most the hub's lag plus one epoch behind us.
    pub(super) async fn catch_up_before_commit(&mut self) -> Result<(), ClientError> {
        if self.state.committed_since_receive {
            self.catch_up().await?;
        }
        Ok(())
    }

    /// Commits `plan` in `group` and returns the new epoch; rebuilt once if the hub has just
    /// proposed removals the commit must include.
    ///
    /// A commit that removes anyone rotates the group's keys, and a commit that adds must not
    /// (joiners' credential material is wrapped before the new keys exist): pending removals
    /// (self-removes, the hub's proposals) are committed on their own first.
    pub(super) async fn commit(
        &mut self,
        group: &GroupHandle,
        plan: Plan,
    ) -> Result<u64, ClientError> {
        let plan = self.commit_pending_removals_before(group, plan).await?;
        match self.commit_once(group, plan.clone()).await {
            // The hub has just proposed removals our commit must include: fetch them (they go
            // into our proposal store) and build the commit again, once.
            Err(ClientError::ProposalsPending) => {
                self.catch_up().await?;
                let plan = self.commit_pending_removals_before(group, plan).await?;
                self.commit_once(group, plan).await
            }
            other => other,
        }
    }

    /// Before a commit that adds: an Update committing the pending removals, if there are any.
    /// That Update rotates the group's credential keys, so the joiners' material, wrapped under
    /// the keys from before, is re-wrapped under the new ones.
    async fn commit_pending_removals_before(
        &mut self,
        group: &GroupHandle,
        plan: Plan,
    ) -> Result<Plan, ClientError> {
        if !matches!(plan, Plan::Add(..) | Plan::AddClients(..)) {
            return Ok(plan);
        }
        let pending = self
            .load_group(group)?
            .pending_proposals()
            .any(|p| matches!(p.proposal(), Proposal::Remove(_)));
        if !pending {
            return Ok(plan);
        }
        if self.state.mode == DsMode::Baseline {
            // No group credential keys, and the joiners' leaves carry their credentials in the
            // clear: nothing to re-wrap.
            self.commit_once(group, Plan::Update).await?;
            return Ok(plan);
        }
        let (old_ck, old_wk) = group_keys(self.meta(group)?)?;
        self.commit_once(group, Plan::Update).await?;
        let (new_ck, new_wk) = group_keys(self.meta(group)?)?;
        let rewrap = |added: Vec<AddedMember>| -> Result<Vec<AddedMember>, ClientError> {
            added
                .into_iter()
                .map(|mut m| {
                    let (cc, sek) = identity::unwrap(&m.credential, &old_ck, &old_wk)?;
                    m.credential = identity::wrap(&cc, &sek, &new_ck, &new_wk)?;
                    Ok(m)
                })
                .collect()
        };
        Ok(match plan {
            Plan::Add(kps, aad) => Plan::Add(
                kps,
                CommitAad {
                    added: rewrap(aad.added)?,
                    ..aad
                },
            ),
            Plan::AddClients(kps, added) => Plan::AddClients(kps, rewrap(added)?),
            other => other,
        })
    }

    /// Builds, rotates (if it removes) and sends one commit.
    async fn commit_once(&mut self, group: &GroupHandle, plan: Plan) -> Result<u64, ClientError> {
        let user_level = plan.is_user_level();
        let deletes = matches!(plan, Plan::Delete(_));
        let (signer, mut mls, ear_key) = self.member(group)?;
        let mut op = self.build_commit(&mut mls, &signer, plan, self.provider.crypto())?;
        let keys = match self.rotation(&mls, group, &ear_key, deletes).await {
            Ok(Some((rotation, keys))) => {
                if let Some(cb) = bundle_mut(&mut op) {
                    cb.rotation = Some(rotation);
                }
                Some(keys)
            }
            Ok(None) => None,
            Err(e) => {
                mls.clear_pending_commit(self.provider.storage())
                    .map_err(ClientError::mls)?;
                return Err(e);
            }
        };
        self.send_commit(mls, &ear_key, &signer, op, user_level, keys)
            .await
    }

    /// For a staged commit that removes a member (and does not delete the group): the keys of
    /// the new epoch and the rotation the hub needs — every remaining leaf's credential
    /// material re-wrapped under the new credential keys.
    async fn rotation(
        &self,
        mls: &MlsGroup,
        group: &GroupHandle,
        ear_key: &EarKey,
        deletes: bool,
    ) -> Result<Option<(KeyRotation, GroupKeys)>, ClientError> {
        let pending = mls
            .pending_commit()
            .ok_or(ClientError::Unexpected("no pending commit"))?;
        let removed: Vec<u32> = pending
            .remove_proposals()
            .map(|r| r.remove_proposal().removed().u32())
            .collect();
        if removed.is_empty() || deletes || self.state.mode == DsMode::Baseline {
            return Ok(None);
        }
        let keys = GroupKeys::export(|label| {
            pending
                .export_secret(self.provider.crypto(), label, &[], 32)
                .map_err(ClientError::mls)
        })?;
        let (old_ck, old_wk) = group_keys(self.meta(group)?)?;
        let info = self.external_commit_info(group, ear_key).await?;
        let mut credentials = Vec::with_capacity(info.credentials.len());
        for entry in info
            .credentials
            .iter()
            .filter(|e| !removed.contains(&e.leaf))
        {
            let (cc, sek) = identity::unwrap(&entry.info, &old_ck, &old_wk)?;
            credentials.push(LeafCredentialEntry {
                leaf: entry.leaf,
                info: identity::wrap(&cc, &sek, &keys.credential, &keys.wrapper)?,
            });
        }
        let rotation = KeyRotation {
            new_ear_key: keys.ear.as_bytes().to_vec().into(),
            credentials,
        };
        Ok(Some((rotation, keys)))
    }

    /// Stages a commit for `plan` and wraps it as the matching DS operation. `crypto` is the
    /// provider's own, except for the test adversary.
    pub(super) fn build_commit(
        &self,
        mls: &mut MlsGroup,
        signer: &SignatureKeyPair,
        plan: Plan,
        crypto: &impl openmls_traits::crypto::OpenMlsCrypto,
    ) -> Result<DsOperation, ClientError> {
        let group = GroupHandle(mls.group_id().as_slice().to_vec());
        let aad = self.commit_aad(&group, &plan)?;
        mls.set_aad(encoded(&aad)?);
        let builder = mls.commit_builder();
        let builder = match &plan {
            Plan::Add(kps, _) | Plan::AddClients(kps, _) => {
                builder.propose_adds(kps.iter().cloned())
            }
            Plan::Remove(l) | Plan::Delete(l) => builder.propose_removals(l.iter().copied()),
            Plan::RemoveClients(l, _) => {
                builder.propose_removals(l.iter().map(|i| LeafNodeIndex::new(*i)))
            }
            Plan::Update | Plan::RotateUserKey(_) | Plan::ReInit(_) => {
                builder.force_self_update(true)
            }
        };
        let bundle = builder
            .load_psks(self.provider.storage())
            .map_err(ClientError::mls)?
            .create_group_info(true)
            .build(self.provider.rand(), crypto, signer, |_| true)
            .map_err(ClientError::mls)?
            .stage_commit(&self.provider)
            .map_err(ClientError::mls)?;
        let (commit, welcome, group_info) = bundle.into_messages();
        let cb = CommitBundle {
            commit: commit.to_bytes().map_err(ClientError::mls)?.into(),
            group_info: group_info
                .ok_or(ClientError::Unexpected("commit without GroupInfo"))?
                .to_bytes()
                .map_err(ClientError::mls)?
                .into(),
            welcome: welcome
                .map(|w| w.to_bytes().map(Into::into))
                .transpose()
                .map_err(ClientError::mls)?,
            rotation: None,
        };
        Ok(plan.operation(cb))
    }

    /// The authenticated data of our commit for `plan` in `group`.
    fn commit_aad(&self, group: &GroupHandle, plan: &Plan) -> Result<CommitAad, ClientError> {
        // Our user's auth key goes into the first commit we make after being welcomed.
        let own_key = match self.meta(group) {
            Ok(m) if !m.user_key_set => Some(
                self.user_auth_key(&group.0)?
                    .verifying_key()
                    .as_bytes()
                    .to_vec()
                    .into(),
            ),
            _ => None,
        };
        // The credential material and key changes ride in the signed authenticated data of the
        // commit, so the hub and every member see the same values.
        Ok(match plan {
            Plan::Add(_, aad) => CommitAad {
                user_auth_key: own_key,
                ..aad.clone()
            },
            Plan::AddClients(_, added) => CommitAad {
                added: added.clone(),
                user_auth_key: None,
                joiner: None,
                reinit: None,
            },
            Plan::RemoveClients(_, key) | Plan::RotateUserKey(key) => CommitAad {
                added: Vec::new(),
                user_auth_key: Some(key.clone().into()),
                joiner: None,
                reinit: None,
            },
            Plan::ReInit(target) => CommitAad {
                added: Vec::new(),
                user_auth_key: own_key,
                joiner: None,
                reinit: Some(target.clone().into()),
            },
            _ => CommitAad {
                added: Vec::new(),
                user_auth_key: own_key,
                joiner: None,
                reinit: None,
            },
        })
    }

    /// Sends a staged commit; merges it only once the hub has accepted it (the hub orders
    /// commits), and drops it otherwise.
    pub(super) async fn send_commit(
        &mut self,
        mut mls: MlsGroup,
        ear_key: &EarKey,
        signer: &SignatureKeyPair,
        op: DsOperation,
        user_level: bool,
        rotated: Option<GroupKeys>,
    ) -> Result<u64, ClientError> {
        let group = GroupHandle(mls.group_id().as_slice().to_vec());
        let mut attempt = 0;
        let answer = loop {
            let req = if user_level {
                self.user_request(&group, ear_key, op.clone())?
            } else {
                self.member_request(&mls, ear_key, signer, op.clone())?
            };
            match self.transport.ds(&req).await {
                // Refused before anything was applied: the same commit, in a new request.
                Err(ClientError::PeerUnavailable(e)) if attempt < TRANSPORT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "a peer is unavailable; re-sending");
                    backoff(attempt).await;
                }
                other => break other,
            }
        };
        let outcome = match answer {
            Ok(DsResponse::ProposalsPending(_)) => Err(ClientError::ProposalsPending),
            // The hub may or may not have applied it before the connection broke: ask it.
            Err(ClientError::Transport(e)) => {
                tracing::warn!(error = %e, "commit outcome unknown; asking the hub");
                // A rotating commit, once applied, left the state under the new key.
                let key = rotated.as_ref().map_or(ear_key, |k| &k.ear);
                self.commit_applied(&mls, key).await.map(|applied| {
                    if applied {
                        Ok(())
                    } else {
                        Err(ClientError::Transport(e))
                    }
                })?
            }
            other => other.map(|_| ()),
        };
        match outcome {
            Ok(()) => {
                mls.merge_pending_commit(&self.provider)
                    .map_err(ClientError::mls)?;
                self.state.committed_since_receive = true;
                if let Ok(meta) = self.meta_mut(&group) {
                    meta.user_key_set = true;
                    meta.last_request_ms = now_ms();
                    if let Some(keys) = &rotated {
                        keys.store(meta);
                    }
                }
                self.persist()?;
                Ok(mls.epoch().as_u64())
            }
            Err(e) => {
                mls.clear_pending_commit(self.provider.storage())
                    .map_err(ClientError::mls)?;
                self.persist()?;
                Err(e)
            }
        }
    }

    /// Whether the hub's current state is the one our pending commit produces (so the hub
    /// applied it); waits for the hub while it is unreachable.
    async fn commit_applied(&self, mls: &MlsGroup, ear_key: &EarKey) -> Result<bool, ClientError> {
        let pending = mls
            .pending_commit()
            .ok_or(ClientError::Unexpected("no pending commit"))?;
        let group = GroupHandle(mls.group_id().as_slice().to_vec());
        let mut attempt = 0;
        let info = loop {
            match self.external_commit_info(&group, ear_key).await {
                Ok(info) => break info,
                Err(ClientError::Transport(_)) if attempt < TRANSPORT_RETRIES => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(e) => return Err(e),
            }
        };
        let vgi = parse_group_info(info.group_info.as_slice())?;
        Ok(vgi.group_context() == pending.group_context())
    }
}

/// The three group keys a member holds beside MLS; zeroized on drop (`EarKey` is).
pub(super) struct GroupKeys {
    /// `GroupStateEarKey`.
    pub(super) ear: EarKey,
    /// `CredentialEarKey`.
    pub(super) credential: EarKey,
    /// `SignatureEarKeyWrapperKey`.
    pub(super) wrapper: EarKey,
}

impl GroupKeys {
    /// The keys a removing commit rotates to, from `export` (an exporter of the new epoch:
    /// the staged commit's for the committer, the merged group's for everyone else).
    pub(super) fn export(
        mut export: impl FnMut(&str) -> Result<Vec<u8>, ClientError>,
    ) -> Result<Self, ClientError> {
        let [ear, credential, wrapper] = ROTATION_LABELS;
        Ok(Self {
            ear: EarKey::from_bytes(&zeroize::Zeroizing::new(export(ear)?))?,
            credential: EarKey::from_bytes(&zeroize::Zeroizing::new(export(credential)?))?,
            wrapper: EarKey::from_bytes(&zeroize::Zeroizing::new(export(wrapper)?))?,
        })
    }

    /// Makes these the group's keys in our state.
    pub(super) fn store(&self, meta: &mut crate::state::GroupMeta) {
        meta.ear_key = hex::encode(self.ear.as_bytes());
        meta.credential_key = hex::encode(self.credential.as_bytes());
        meta.wrapper_key = hex::encode(self.wrapper.as_bytes());
    }
}

/// The commit bundle inside a commit operation.
fn bundle_mut(op: &mut DsOperation) -> Option<&mut CommitBundle> {
    match op {
        DsOperation::AddMembers(cb)
        | DsOperation::RemoveMembers(cb)
        | DsOperation::Update(cb)
        | DsOperation::DeleteGroup(cb)
        | DsOperation::AddClients(cb)
        | DsOperation::RemoveClients(cb)
        | DsOperation::ReInit(cb) => Some(cb),
        _ => None,
    }
}

/// Decodes a commit's authenticated data (empty means nothing).
pub(super) fn decode_aad(aad: &[u8]) -> Result<CommitAad, ClientError> {
    if aad.is_empty() {
        return Ok(CommitAad::default());
    }
    decode_exact(aad, MAX_MESSAGE).map_err(|e| ClientError::State(e.to_string()))
}
