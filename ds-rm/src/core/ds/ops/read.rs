//! Reads and messages: application messages (the routing-record fast path and the full path),
//! the tree of a Welcome's epoch for its joiners, and what an external joiner needs.

use crate::core::GroupError;
use crate::core::HubError;
use crate::core::ds::group::LoadedGroup;
use crate::core::ds::observer::check_application_message;
use crate::core::ds::ops::{Applied, Write};
use crate::core::ds::routing::{RoutedMember, RoutingRecord};
use crate::core::ds::{DsContext, DsOutcome, Fanout, verify};
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::QueueMessage;
use openmls::prelude::LeafNodeIndex;
use tls_codec::VLBytes;

/// The application-message fast path: authenticate the sender and fan out using only the
/// group's routing record, never the tree.
pub(in crate::core::ds) fn send_routed(
    ctx: &DsContext<'_>,
    req: &DsRequest,
    signed: &[u8],
    group_id: &[u8],
    record: &RoutingRecord,
    sender: &RoutedMember,
    message: &VLBytes,
) -> Result<DsOutcome, HubError> {
    verify(sender.signature_key.as_slice(), signed, &req.signature)?;
    ctx.admit_identity(sender.signature_key.as_slice())?;
    ctx.replay
        .check_and_record(req.signature.as_slice(), req.tbs.timestamp_ms, ctx.now_ms)?;
    check_application_message(message.as_slice(), group_id, record.epoch)?;
    let shared = std::sync::Arc::new(QueueMessage::Mls(message.clone()));
    let fanout = record
        .members
        .iter()
        .filter(|m| m.leaf != sender.leaf)
        .map(|m| Fanout {
            queue_ref: m.queue_ref.clone(),
            message: shared.clone(),
        })
        .collect();
    Ok(DsOutcome {
        response: DsResponse::Accepted(record.epoch),
        fanout,
    })
}

impl LoadedGroup {
    /// An application message from a member, fanned out to everyone else (the full path).
    pub(super) fn send(&self, sender: LeafNodeIndex, bytes: &VLBytes) -> Result<Applied, HubError> {
        let current = self.epoch();
        check_application_message(bytes.as_slice(), &self.group_id, current)?;
        Ok(Applied {
            response: DsResponse::Accepted(current),
            fanout: Self::fan(self.recipients(Some(sender)), bytes),
            write: Write::None,
        })
    }

    /// The tree and credentials of a Welcome's epoch, for one of its joiners.
    pub(super) fn welcome_info(&self, epoch: u64, joiner: &[u8]) -> Result<Applied, HubError> {
        // Only a joiner of that epoch's Welcome may read the tree (it proved key possession).
        let tree = self
            .past_trees
            .iter()
            .find(|t| t.epoch == epoch && t.joiners.iter().any(|j| j.as_slice() == joiner))
            .ok_or(HubError::Group(GroupError::UnknownEpoch))?;
        Ok(Applied {
            response: DsResponse::WelcomeInfo(WelcomeInfo {
                ratchet_tree: tree.ratchet_tree.clone(),
                credentials: tree.credentials.clone(),
            }),
            fanout: Vec::new(),
            write: Write::None,
        })
    }

    /// What an external joiner needs: the GroupInfo, the tree, the report tallies, the
    /// credentials, the roster and the reinit target.
    pub(super) fn external_commit_info(&self) -> Result<Applied, HubError> {
        Ok(Applied {
            response: DsResponse::ExternalCommitInfo(ExternalCommitInfo {
                group_info: self.group_info.clone(),
                ratchet_tree: self.tree_bytes()?.into(),
                reports: self.acct.tallies.clone(),
                credentials: self.credentials.clone(),
                users: self.roster.public_view(),
                reinit: self.reinit.clone(),
            }),
            fanout: Vec::new(),
            write: Write::None,
        })
    }
}
