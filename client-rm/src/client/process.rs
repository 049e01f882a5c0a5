//! Processing one queue entry: a Welcome, or an MLS message of a group we are in.

use super::commit::{GroupKeys, decode_aad};
use super::{
    CONTENT_CONTROL, CONTENT_USER, Client, Event, GroupHandle, devices, friendship, recovery,
};
use crate::error::ClientError;
use mimi_rm_protocol::DsMode;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::*;
use openmls::prelude::{tls_codec::Deserialize as _, *};

/// What processing one MLS message from the queue led to.
enum Processed {
    /// Done; what to report to the user.
    Done(Vec<Event>),
    /// A commit at our epoch failed: report it and resync.
    Rejected(GroupHandle, CommitRejected),
    /// A commit for a later epoch: we missed something; resync.
    Behind(GroupHandle),
}

impl Client {
    /// Processes one decrypted queue entry: joins on a Welcome, processes (and, if need be,
    /// recovers from) an MLS message.
    pub(super) async fn handle(&mut self, msg: QueueMessage) -> Result<Vec<Event>, ClientError> {
        match msg {
            QueueMessage::Welcome(bundle) => self.join(bundle).await,
            QueueMessage::Mls(bytes) => match self.process_mls(bytes.as_slice())? {
                Processed::Done(event) => Ok(event),
                Processed::Rejected(group, report) => self.recover(group, Some(report)).await,
                Processed::Behind(group) => self.recover(group, None).await,
            },
            // The queue reader opens stored messages before handing them here.
            QueueMessage::Stored(_) => Err(ClientError::Unexpected("an unopened stored message")),
        }
    }

    /// Processes an MLS message of one of our groups (see [`Processed`]).
    fn process_mls(&mut self, bytes: &[u8]) -> Result<Processed, ClientError> {
        let pm = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(ClientError::mls)?
            .try_into_protocol_message()
            .map_err(ClientError::mls)?;
        let group = GroupHandle(pm.group_id().as_slice().to_vec());
        let mut mls = self.load_group(&group)?;
        let (msg_epoch, ours) = (pm.epoch().as_u64(), mls.epoch().as_u64());
        let is_commit = pm.content_type() == ContentType::Commit;
        if is_commit && msg_epoch < ours {
            // Superseded, e.g. another member's resync that lost to ours.
            tracing::debug!(group = %group, msg_epoch, ours, "ignoring an old commit");
            return Ok(Processed::Done(Vec::new()));
        }
        if is_commit && msg_epoch > ours {
            return Ok(Processed::Behind(group));
        }
        let processed = match mls.process_message(&self.provider, pm) {
            Ok(p) => p,
            Err(e) => return self.unprocessable(group, bytes, e, (msg_epoch, ours), is_commit),
        };
        let sender = match processed.sender() {
            Sender::Member(i) => i.u32(),
            _ => u32::MAX,
        };
        // Who committed, as we knew them before the commit.
        let committer = self
            .meta(&group)?
            .members
            .get(&sender)
            .and_then(|r| r.handle.clone());
        let aad = processed.aad().to_vec();
        let events = match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => {
                self.application_message(group, sender, m.into_bytes())?
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                mls.store_pending_proposal(self.provider.storage(), *p)
                    .map_err(ClientError::mls)?;
                vec![Event::Proposal { group }]
            }
            ProcessedMessageContent::StagedCommitMessage(sc) => {
                self.apply_commit(group, &mut mls, *sc, &aad, committer)?
            }
            _ => Vec::new(),
        };
        Ok(Processed::Done(events))
    }

    /// What a message OpenMLS refused leads to: a commit (the hub accepted it) is reported and
    /// resynced from, a message from before we joined is dropped, anything else fails.
    fn unprocessable(
        &self,
        group: GroupHandle,
        bytes: &[u8],
        e: ProcessMessageError<impl std::fmt::Debug + std::fmt::Display>,
        (msg_epoch, ours): (u64, u64),
        is_commit: bool,
    ) -> Result<Processed, ClientError> {
        // The hub fans out only commits it accepted, so this one moved the hub to an
        // epoch we cannot enter: report it and resync.
        if is_commit {
            tracing::warn!(group = %group, epoch = msg_epoch, error = %e,
                "a commit the hub accepted fails our checks");
            let report = CommitRejected {
                epoch: msg_epoch,
                commit_ref: commit_ref(bytes),
                reason: recovery::reason_of(&e),
            };
            return Ok(Processed::Rejected(group, report));
        }
        if msg_epoch < self.joined_epoch(&group) {
            tracing::debug!(group = %group, msg_epoch, error = %e,
                "dropping a message from before we joined");
            return Ok(Processed::Done(Vec::new()));
        }
        if is_used_message_key(&e) {
            // A sender that lost the hub's answer re-sends the same ciphertext; its message key
            // was deleted when we read the first copy. Nothing to show.
            tracing::debug!(group = %group, msg_epoch, "dropping a copy of a message already read");
            return Ok(Processed::Done(Vec::new()));
        }
        // Say which epoch the message was for: the usual cause is an epoch we no longer keep.
        Err(ClientError::Mls(format!(
            "{e} (message epoch {msg_epoch}, ours {ours})"
        )))
    }

    /// An application message from the member at leaf `sender`, by its first byte: a user
    /// message, a control message, or a rotated user secret for our own devices.
    fn application_message(
        &mut self,
        group: GroupHandle,
        sender: u32,
        bytes: Vec<u8>,
    ) -> Result<Vec<Event>, ClientError> {
        let event = match bytes.split_first() {
            Some((&CONTENT_USER, rest)) => Event::Message {
                group,
                sender,
                plaintext: rest.to_vec(),
            },
            Some((&CONTENT_CONTROL, rest)) => self.control(group, rest)?,
            Some((&devices::CONTENT_USER_SECRET, rest)) => {
                let handle = self
                    .meta(&group)?
                    .members
                    .get(&sender)
                    .and_then(|r| r.handle.clone());
                self.apply_user_secret(handle.as_deref(), rest)?;
                return Ok(Vec::new());
            }
            Some((&friendship::CONTENT_CARD, rest)) => {
                return Ok(self
                    .apply_card_update(&group, sender, rest)?
                    .into_iter()
                    .collect());
            }
            _ => return Err(ClientError::Unexpected("unknown application content")),
        };
        Ok(vec![event])
    }

    /// Merges another member's commit and reports what it changed: our removal, or the new
    /// epoch, the members (verified from its authenticated data), a re-initialisation and a
    /// responder joining our connection group.
    fn apply_commit(
        &mut self,
        group: GroupHandle,
        mls: &mut MlsGroup,
        sc: StagedCommit,
        aad: &[u8],
        committer: Option<String>,
    ) -> Result<Vec<Event>, ClientError> {
        let adds: Vec<KeyPackage> = sc
            .add_proposals()
            .map(|p| p.add_proposal().key_package().clone())
            .collect();
        // The hub's rule: a member's commit that removes anyone rotates the group keys to the
        // new epoch's exports (an external commit — a join or a resync — never does).
        let rotates = sc.remove_proposals().next().is_some()
            && !sc
                .queued_proposals()
                .any(|p| matches!(p.proposal(), Proposal::ExternalInit(_)))
            && self.state.mode != DsMode::Baseline;
        mls.merge_staged_commit(&self.provider, sc)
            .map_err(ClientError::mls)?;
        if !mls.is_active() {
            self.state.groups.remove(&hex::encode(&group.0));
            return Ok(vec![Event::Removed { group }]);
        }
        let mut events = vec![Event::Commit {
            group: group.clone(),
            epoch: mls.epoch().as_u64(),
        }];
        // Joiners' material in the authenticated data is under the keys from before.
        events.extend(self.track_members(&group, mls, &adds, aad, committer)?);
        if rotates {
            let keys = GroupKeys::export(|label| {
                mls.export_secret(self.provider.crypto(), label, &[], 32)
                    .map_err(ClientError::mls)
            })?;
            keys.store(self.meta_mut(&group)?);
            tracing::debug!(group = %group, "a removal rotated the group keys");
        }
        // A re-initialisation names the group the conversation continues in.
        if let Some(next) = decode_aad(aad)?.reinit {
            events.push(Event::ReInitialised {
                group: group.clone(),
                new_group: GroupHandle(next.as_slice().to_vec()),
            });
        }
        // A responder joining our connection group brings its contact card.
        if let Some(joiner) = decode_aad(aad)?.joiner
            && !joiner.friendship.as_slice().is_empty()
        {
            match self.connection_joined(&group, joiner.friendship.as_slice()) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => {}
                Err(e) => tracing::warn!(group = %group, error = %e,
                    "a connection join with an unusable contact card"),
            }
        }
        Ok(events)
    }
}

/// Whether OpenMLS refused a message because its key is already used and deleted (forward
/// secrecy): the message, or one sent with the same key, was read before.
fn is_used_message_key<E>(e: &ProcessMessageError<E>) -> bool {
    use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
    matches!(
        e,
        ProcessMessageError::ValidationError(ValidationError::UnableToDecrypt(
            MessageDecryptionError::SecretTreeError(SecretTreeError::SecretReuseError)
        ))
    )
}
