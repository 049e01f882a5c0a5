//! Proposals and reports: the removals the hub proposes itself (inactive clients, clients whose
//! queue is gone), a member's self-remove proposal, and a member's report of a commit it could
//! not process.

use crate::core::GroupError;
use crate::core::HubError;
use crate::core::ds::DsContext;
use crate::core::ds::group::LoadedGroup;
use crate::core::ds::observer::{hub_sender_index, queue_ref_of};
use crate::core::ds::ops::{Applied, Write};
use crate::core::ds::removals;
use crate::store::Txn;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::encode;
use openmls::prelude::*;
use openmls_rust_crypto::RustCrypto;
use std::collections::HashSet;
use tls_codec::VLBytes;

impl LoadedGroup {
    /// Proposes removal of inactive clients and of clients whose queue is gone, unless already
    /// proposed; returns the new proposal messages (already in the hub's proposal store).
    pub(super) fn propose_removals(
        &mut self,
        ctx: &DsContext<'_>,
        txn: &mut Txn<'_>,
    ) -> Result<Vec<VLBytes>, HubError> {
        let Some(sender_index) = hub_sender_index(&self.pg, ctx) else {
            return Ok(Vec::new());
        };
        self.doom_tombstoned(txn)?;
        let candidates = self.removal_candidates(ctx)?;
        let crypto = RustCrypto::default();
        let mut out = Vec::with_capacity(candidates.len());
        for leaf in candidates {
            out.push(self.propose_removal(ctx, &crypto, sender_index, leaf)?);
        }
        Ok(out)
    }

    /// Reads the group's tombstones and marks the members whose queue they name as doomed.
    fn doom_tombstoned(&mut self, txn: &mut Txn<'_>) -> Result<(), HubError> {
        for gone in
            removals::take_tombstones(txn, &self.group_id, self.tombstone_secret.as_slice())?
        {
            for m in self.pg.members() {
                let matches = self
                    .pg
                    .leaf(m.index)
                    .and_then(|l| queue_ref_of(l).ok())
                    .and_then(|q| encode(&q).ok())
                    .is_some_and(|q| q == gone);
                if matches && !self.doomed.iter().any(|d| d.as_slice() == m.signature_key) {
                    self.doomed.push(m.signature_key.clone().into());
                }
            }
        }
        Ok(())
    }

    /// The leaves the hub should propose to remove now: inactive or doomed members, present,
    /// not yet proposed, ascending. Doomed keys of members already gone are dropped.
    fn removal_candidates(&mut self, ctx: &DsContext<'_>) -> Result<Vec<LeafNodeIndex>, HubError> {
        // The common case — nobody idle, no queue gone — must not walk the tree: the activity
        // list alone (sorted by leaf) says who is idle.
        let mut candidates: Vec<LeafNodeIndex> = self
            .activity
            .iter()
            .filter(|a| ctx.removal.is_inactive(a.period, ctx.now_ms))
            .map(|a| LeafNodeIndex::new(a.leaf))
            .collect();
        if !self.doomed.is_empty() {
            let present: HashSet<Vec<u8>> =
                self.pg.members().map(|m| m.signature_key.clone()).collect();
            self.doomed.retain(|d| present.contains(d.as_slice()));
            candidates.extend(
                self.pg
                    .members()
                    .filter(|m| self.is_doomed(&m.signature_key))
                    .map(|m| m.index),
            );
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let proposed: HashSet<u32> = self
            .pg
            .queued_proposals(&self.store)
            .map_err(|e| HubError::Bug(e.to_string()))?
            .into_iter()
            .filter_map(|(_, qp)| match qp.proposal() {
                Proposal::Remove(r) => Some(r.removed().u32()),
                _ => None,
            })
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        candidates.retain(|l| self.pg.leaf(*l).is_some() && !proposed.contains(&l.u32()));
        Ok(candidates)
    }

    /// Builds the hub's proposal to remove `leaf`, runs it through OpenMLS and stores it.
    fn propose_removal(
        &mut self,
        ctx: &DsContext<'_>,
        crypto: &RustCrypto,
        sender_index: u32,
        leaf: LeafNodeIndex,
    ) -> Result<VLBytes, HubError> {
        let message = ExternalProposal::new_remove::<openmls_rust_crypto::OpenMlsRustCrypto>(
            leaf,
            GroupId::from_slice(&self.group_id),
            self.pg.group_context().epoch(),
            ctx.removal.signer,
            SenderExtensionIndex::new(sender_index),
        )
        .map_err(|e| HubError::Bug(format!("hub proposal: {e}")))?;
        let bytes = message
            .to_bytes()
            .map_err(|e| HubError::Bug(format!("hub proposal: {e}")))?;
        let processed = self.handshake_at_current_epoch(crypto, &bytes)?;
        let ProcessedMessageContent::ProposalMessage(qp) = processed.into_content() else {
            return Err(HubError::Bug("hub proposal is not a proposal".into()));
        };
        self.pg
            .add_proposal(&self.store, *qp)
            .map_err(|e| HubError::Bug(e.to_string()))?;
        tracing::info!(leaf = leaf.u32(), "hub proposed a removal");
        Ok(bytes.into())
    }

    /// A member's proposal to remove itself: stored, so the next commit must include it, and
    /// fanned out to everyone else.
    pub(super) fn self_remove(
        &mut self,
        sender: LeafNodeIndex,
        bytes: &VLBytes,
    ) -> Result<Applied, HubError> {
        let current = self.epoch();
        let processed =
            self.handshake_at_current_epoch(&RustCrypto::default(), bytes.as_slice())?;
        let ProcessedMessageContent::ProposalMessage(qp) = processed.into_content() else {
            return Err(HubError::Group(GroupError::WrongOperation(
                "self_remove needs a proposal",
            )));
        };
        let own = matches!(qp.sender(), Sender::Member(i) if *i == sender)
            && matches!(qp.proposal(), Proposal::Remove(r) if r.removed() == sender);
        if !own {
            return Err(HubError::Group(GroupError::WrongOperation(
                "self_remove must remove the sender itself",
            )));
        }
        self.pg
            .add_proposal(&self.store, *qp)
            .map_err(|e| HubError::Bug(e.to_string()))?;
        Ok(Applied {
            response: DsResponse::Accepted(current),
            fanout: Self::fan(self.recipients(Some(sender)), bytes),
            write: Write::Save,
        })
    }

    /// Counts a member's report about a commit it could not process. The hub cannot check the
    /// claim; it only keeps bounded, deduplicated evidence that members read via external
    /// commit info.
    pub(super) fn report(
        &mut self,
        reporter: LeafNodeIndex,
        report: &CommitRejected,
    ) -> Result<Applied, HubError> {
        let changed = self.acct.report(reporter.u32(), report)?;
        Ok(Applied {
            response: DsResponse::Accepted(self.epoch()),
            fanout: Vec::new(),
            write: if changed { Write::Save } else { Write::None },
        })
    }
}
