//! The group operations, one module per capability, and [`LoadedGroup::apply`], which runs the
//! hub's own bookkeeping and then the operation an authenticated sender asked for.

mod admin;
mod commit;
mod create;
mod external;
mod proposals;
mod read;

pub(super) use create::{create_group, reserve_group_id};
pub(super) use read::send_routed;

use super::group::LoadedGroup;
use super::{Authenticated, DsContext, Fanout};
use crate::core::HubError;
use crate::core::{GroupError, RequestError};
use crate::store::Txn;
use commit::CommitKind;
use external::ExternalKind;
use mimi_rm_protocol::ds::{DsOperation, DsResponse};

/// What an operation leaves to be written.
pub(super) enum Write {
    /// Nothing changed.
    None,
    /// The state changed: seal and store it.
    Save,
    /// The group is gone: delete its records.
    Delete,
}

/// The result of one operation on a loaded group.
pub(super) struct Applied {
    /// What to answer.
    pub(super) response: DsResponse,
    /// What to enqueue.
    pub(super) fanout: Vec<Fanout>,
    /// What to write.
    pub(super) write: Write,
}

impl LoadedGroup {
    /// Runs `op` for `who` after the hub's own bookkeeping: dropping Welcome trees nobody needs,
    /// recording the member's activity and proposing the removals the hub owes.
    pub(in crate::core::ds) fn apply(
        &mut self,
        ctx: &DsContext<'_>,
        txn: &mut Txn<'_>,
        who: Authenticated,
        op: &DsOperation,
    ) -> Result<Applied, HubError> {
        if self.reinit.is_some() && !matches!(op, DsOperation::ExternalCommitInfo) {
            return Err(HubError::Group(GroupError::WrongOperation(
                "the group was re-initialised into another group",
            )));
        }
        let mut changed = self.housekeeping(ctx, &who);
        // The hub's own removal proposals come first: a commit must include them.
        let proposals = self.propose_removals(ctx, txn)?;
        let proposal_fanout = proposals
            .iter()
            .flat_map(|p| Self::fan(self.recipients(None), p))
            .collect::<Vec<_>>();
        if !proposals.is_empty() && op.is_member_commit() {
            return Ok(Applied {
                response: DsResponse::ProposalsPending(self.epoch()),
                fanout: proposal_fanout,
                write: Write::Save,
            });
        }
        let mut applied = self.dispatch(ctx, who, op)?;
        if !proposals.is_empty() {
            // Members learn of the proposals before whatever this request fans out.
            let mut fanout = proposal_fanout;
            fanout.append(&mut applied.fanout);
            applied.fanout = fanout;
            changed = true;
        }
        if changed && matches!(applied.write, Write::None) {
            applied.write = Write::Save;
        }
        Ok(applied)
    }

    /// The bookkeeping every request does first; whether it changed the state.
    fn housekeeping(&mut self, ctx: &DsContext<'_>, who: &Authenticated) -> bool {
        // A member signing a request proves it has joined: its Welcome tree is no longer needed.
        // Trees whose joiners never came go when they expire.
        let trees_before = self.past_trees.len();
        self.past_trees.retain(|t| t.expires_ms > ctx.now_ms);
        let mut changed = self.past_trees.len() != trees_before;
        if let Authenticated::Member(idx) = who {
            let idx = *idx;
            changed |= self.forget_joiner(idx);
            changed |= self.record_activity(idx.u32(), ctx.removal.period(ctx.now_ms));
        }
        changed
    }

    /// Runs the operation `op`, if `who` may send it.
    fn dispatch(
        &mut self,
        ctx: &DsContext<'_>,
        who: Authenticated,
        op: &DsOperation,
    ) -> Result<Applied, HubError> {
        Ok(match (op, who) {
            (DsOperation::AddMembers(b), Authenticated::Member(s)) => {
                self.commit(ctx, s, CommitKind::Add, b)?
            }
            (DsOperation::RemoveMembers(b), Authenticated::Member(s)) => {
                self.commit(ctx, s, CommitKind::Remove, b)?
            }
            (DsOperation::Update(b), Authenticated::Member(s)) => {
                self.commit(ctx, s, CommitKind::Update, b)?
            }
            (DsOperation::DeleteGroup(b), Authenticated::Member(s)) => {
                self.commit(ctx, s, CommitKind::Delete, b)?
            }
            (DsOperation::ReInit(b), Authenticated::Member(s)) => {
                self.commit(ctx, s, CommitKind::ReInit, b)?
            }
            (DsOperation::AddClients(b), Authenticated::User(u)) => {
                let s = self.committer_of_user(b, u)?;
                self.commit(ctx, s, CommitKind::AddClients(u), b)?
            }
            (DsOperation::RemoveClients(b), Authenticated::User(u)) => {
                let s = self.committer_of_user(b, u)?;
                self.commit(ctx, s, CommitKind::RemoveClients(u), b)?
            }
            (DsOperation::ExternalJoin(b), Authenticated::User(u)) => {
                self.external_commit(ctx, ExternalKind::Device(u), b)?
            }
            (DsOperation::JoinConnectionGroup(b), Authenticated::KeyHolder) => {
                self.external_commit(ctx, ExternalKind::Connection, b)?
            }
            (DsOperation::Resync(b), Authenticated::Member(s)) => {
                self.external_commit(ctx, ExternalKind::Resync(s), b)?
            }
            (DsOperation::SetRole(r), Authenticated::Member(s)) => self.set_role(s, r)?,
            (DsOperation::SelfRemove(p), Authenticated::Member(s)) => self.self_remove(s, p)?,
            (DsOperation::RotateEarKey(r), Authenticated::Member(_)) => self.rotate(r)?,
            (DsOperation::ReportCommit(r), Authenticated::Member(s)) => self.report(s, r)?,
            (DsOperation::SendMessage(m), Authenticated::Member(s)) => self.send(s, m)?,
            (DsOperation::WelcomeInfo(epoch), Authenticated::Joiner(key)) => {
                self.welcome_info(*epoch, &key)?
            }
            (DsOperation::ExternalCommitInfo, _) => self.external_commit_info()?,
            _ => {
                return Err(HubError::Request(RequestError::NotAuthorized(
                    "operation not allowed for this sender",
                )));
            }
        })
    }
}
