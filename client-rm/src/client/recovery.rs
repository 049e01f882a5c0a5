//! Recovery from commits the hub accepted but we cannot process: report, then resync.
//!
//! The hub validates every commit as a public observer but cannot check membership or
//! confirmation tags, nor decrypt the UpdatePath. A member can therefore get a commit accepted
//! that honest members reject, leaving the hub at an epoch nobody can enter. An honest member
//! that hits such a commit reports it (bounded evidence against the committer's leaf, counted
//! inside the encrypted group state) and re-enters the group by an external commit built from the
//! hub's current public state, keeping its signature key and credential. The hub orders these
//! resync commits like any other; losers of a race rebuild on the new epoch.

use super::join::{join_config, parse_group_info};
use super::{Client, Event, GroupHandle};
use crate::error::ClientError;
use crate::provider::ClientProvider;
use mimi_rm_crypto::ear::EarKey;
use mimi_rm_protocol::ErrorCode;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::leaf_capabilities;
use openmls::group::{ProcessMessageError, StageCommitError, ValidationError};
use openmls::prelude::{tls_codec::Deserialize as _, *};
use openmls_basic_credential::SignatureKeyPair;
use std::time::Duration;

/// How often a resync is rebuilt after losing a commit race before giving up.
const RESYNC_ATTEMPTS: u32 = 32;

/// Maps an OpenMLS processing failure to the advisory reason of a report.
pub(super) fn reason_of(e: &ProcessMessageError<impl std::fmt::Debug>) -> RejectReason {
    match e {
        ProcessMessageError::ValidationError(ValidationError::InvalidMembershipTag) => {
            RejectReason::MembershipTag
        }
        ProcessMessageError::InvalidCommit(StageCommitError::ConfirmationTagMismatch) => {
            RejectReason::ConfirmationTag
        }
        ProcessMessageError::InvalidCommit(
            StageCommitError::UpdatePathError(_) | StageCommitError::VerifiedUpdatePathError(_),
        ) => RejectReason::UpdatePath,
        _ => RejectReason::Other,
    }
}

impl Client {
    /// Reports (when `report` is set) and resyncs; the queue processing continues afterwards.
    pub(super) async fn recover(
        &mut self,
        group: GroupHandle,
        report: Option<CommitRejected>,
    ) -> Result<Vec<Event>, ClientError> {
        if let Some(r) = &report {
            // A failed report must not keep us out of the group: log it and resync anyway.
            if let Err(e) = self.report_commit(&group, r.clone()).await {
                tracing::warn!(group = %group, error = %e, "could not report the commit");
            }
        }
        let epoch = self.resync(&group).await?;
        tracing::info!(group = %group, epoch, "re-entered the group by external commit");
        Ok(vec![Event::Resynced {
            group,
            reported: report,
            epoch,
        }])
    }

    /// Tells the hub we could not process the commit named in `report`. Signed by our leaf in
    /// the epoch we are still in; returns the hub's epoch.
    pub async fn report_commit(
        &mut self,
        group: &GroupHandle,
        report: CommitRejected,
    ) -> Result<u64, ClientError> {
        let (signer, mls, ear_key) = self.member(group)?;
        let req =
            self.member_request(&mls, &ear_key, &signer, DsOperation::ReportCommit(report))?;
        match self.transport.ds(&req).await? {
            DsResponse::Accepted(epoch) => Ok(epoch),
            _ => Err(ClientError::Unexpected("expected Accepted")),
        }
    }

    /// Re-enters `group` by external commit from the hub's current GroupInfo and tree, with the
    /// same credential and signature key, removing our old leaf. Returns the new epoch.
    pub async fn resync(&mut self, group: &GroupHandle) -> Result<u64, ClientError> {
        let (signer, old_leaf, cwk, ear_key) = self.resync_identity(group)?;
        let mut last = None;
        for attempt in 0..RESYNC_ATTEMPTS {
            let info = self.external_commit_info(group, &ear_key).await?;
            // Building the external commit replaces the stored group; undo that if the hub
            // refuses, so a failed resync leaves us where we were.
            let before = self.provider.snapshot();
            let result =
                match self.build_external_join(group, &info, cwk.clone(), &signer, Vec::new()) {
                    Ok((mls, bundle)) => {
                        let req = self.ds_request(
                            &group.0,
                            Some(&ear_key),
                            DsSender::Member(old_leaf),
                            DsOperation::Resync(bundle),
                            Some(&signer),
                        )?;
                        self.transport.ds(&req).await.map(|_| mls.epoch().as_u64())
                    }
                    Err(e) => Err(e),
                };
            match result {
                Ok(epoch) => {
                    // Re-establish who everyone is from the state we re-entered.
                    let mls = self.load_group(group)?;
                    for event in self.verify_all(group, &mls, &info.credentials)? {
                        tracing::debug!(?event, "after resync");
                    }
                    self.record_self(group)?;
                    self.state.committed_since_receive = true;
                    self.persist()?;
                    return Ok(epoch);
                }
                Err(e) => {
                    self.provider = ClientProvider::from_entries(before);
                    if e.code() != Some(ErrorCode::WrongEpoch) {
                        return Err(e);
                    }
                    // Another commit won this epoch; back off a little, with jitter, and retry.
                    let cap = 10 * u64::from(attempt + 1);
                    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % cap)).await;
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ClientError::Unexpected("resync failed")))
    }

    /// What a resync keeps: our signer, our old leaf (which signs the request), our credential
    /// with the same signature key, and the group's EAR key. Without OpenMLS state (lost), the
    /// key file's backup of the leaf serves.
    pub(super) fn resync_identity(
        &self,
        group: &GroupHandle,
    ) -> Result<(SignatureKeyPair, u32, CredentialWithKey, EarKey), ClientError> {
        if self.load_group(group).is_err() {
            let meta = self.meta(group)?;
            let signer = self.signer(&meta.signer_public)?;
            let old = meta
                .members
                .iter()
                .find(|(_, r)| r.signature_key == meta.signer_public)
                .map(|(l, _)| *l)
                .ok_or(ClientError::Unexpected("our old leaf is unknown"))?;
            let cwk = CredentialWithKey {
                credential: BasicCredential::new(crate::state::unhex(&meta.leaf_credential)?)
                    .into(),
                signature_key: signer.to_public_vec().into(),
            };
            let ear_key = EarKey::from_bytes(&crate::state::unhex(&meta.ear_key)?)?;
            return Ok((signer, old, cwk, ear_key));
        }
        let (signer, old, ear_key) = self.member(group)?;
        let credential = old
            .own_leaf_node()
            .ok_or(ClientError::Unexpected("no own leaf"))?
            .credential()
            .clone();
        let cwk = CredentialWithKey {
            credential,
            signature_key: signer.to_public_vec().into(),
        };
        Ok((signer, old.own_leaf_index().u32(), cwk, ear_key))
    }

    /// Builds an external commit into `group` from the hub's public state, with `aad` as its
    /// authenticated data; any local state of the group is replaced.
    pub(super) fn build_external_join(
        &mut self,
        group: &GroupHandle,
        info: &ExternalCommitInfo,
        cwk: CredentialWithKey,
        signer: &SignatureKeyPair,
        aad: Vec<u8>,
    ) -> Result<(MlsGroup, CommitBundle), ClientError> {
        let vgi = parse_group_info(info.group_info.as_slice())?;
        if vgi.group_id().as_slice() != group.0.as_slice() {
            return Err(ClientError::Unexpected("GroupInfo of another group"));
        }
        let tree = RatchetTreeIn::tls_deserialize_exact(info.ratchet_tree.as_slice())
            .map_err(ClientError::mls)?;
        let params = LeafNodeParameters::builder()
            .with_capabilities(leaf_capabilities())
            .with_extensions(
                Extensions::single(self.sealed_queue_ref()?).map_err(ClientError::mls)?,
            )
            .build();
        // The new group is stored under the same id; drop the old state first.
        self.forget_group_state(group)?;
        let (mls, bundle) = MlsGroup::external_commit_builder()
            .with_config(join_config())
            .with_aad(aad)
            .with_ratchet_tree(tree)
            .skip_lifetime_validation()
            .build_group(&self.provider, vgi, cwk)
            .map_err(ClientError::mls)?
            .leaf_node_parameters(params)
            .load_psks(self.provider.storage())
            .map_err(ClientError::mls)?
            .create_group_info(true)
            .build(self.provider.rand(), self.provider.crypto(), signer, |_| {
                true
            })
            .map_err(ClientError::mls)?
            .finalize(&self.provider)
            .map_err(ClientError::mls)?;
        let (commit, _, group_info) = bundle.into_messages();
        let bundle = CommitBundle {
            commit: commit.to_bytes().map_err(ClientError::mls)?.into(),
            group_info: group_info
                .ok_or(ClientError::Unexpected("external commit without GroupInfo"))?
                .to_bytes()
                .map_err(ClientError::mls)?
                .into(),
            welcome: None,
            rotation: None,
        };
        Ok((mls, bundle))
    }

    /// Deletes our OpenMLS state of `group`, if any (the key file's entry stays).
    pub(super) fn forget_group_state(&mut self, group: &GroupHandle) -> Result<(), ClientError> {
        if let Ok(mut old) = self.load_group(group) {
            old.delete(self.provider.storage())
                .map_err(ClientError::mls)?;
        }
        Ok(())
    }

    pub(super) async fn external_commit_info(
        &self,
        group: &GroupHandle,
        ear_key: &EarKey,
    ) -> Result<ExternalCommitInfo, ClientError> {
        let req = self.ds_request(
            &group.0,
            Some(ear_key),
            DsSender::Anonymous,
            DsOperation::ExternalCommitInfo,
            None,
        )?;
        match self.transport.ds(&req).await? {
            DsResponse::ExternalCommitInfo(info) => Ok(info),
            _ => Err(ClientError::Unexpected("expected ExternalCommitInfo")),
        }
    }

    /// How often members reported each current leaf's commits as unprocessable: the evidence
    /// for removing a misbehaving member.
    pub async fn commit_reports(
        &self,
        group: &GroupHandle,
    ) -> Result<Vec<ReportTally>, ClientError> {
        let ear_key = EarKey::from_bytes(&crate::state::unhex(&self.meta(group)?.ear_key)?)?;
        Ok(self.external_commit_info(group, &ear_key).await?.reports)
    }

    /// The group's epoch authenticator as we see it: members in the same epoch agree on it.
    pub fn epoch_authenticator(&self, group: &GroupHandle) -> Result<Vec<u8>, ClientError> {
        Ok(self
            .load_group(group)?
            .epoch_authenticator()
            .as_slice()
            .to_vec())
    }
}
