//! External commits: a member resyncing, a new or recovering client of an existing user, and a
//! connection group's responder. Like member commits they are classified, validated, then
//! merged, and only a [`ValidatedJoin`] can be merged.

use crate::core::HubError;
use crate::core::ds::DsContext;
use crate::core::ds::group::LoadedGroup;
use crate::core::ds::observer::{checked_queue_ref, commit_aad};
use crate::core::ds::ops::{Applied, Write};
use crate::core::ds::users::UserId;
use crate::core::{GroupError, RequestError};
use mimi_rm_protocol::ds::*;
use openmls::prelude::*;
use openmls_rust_crypto::RustCrypto;
use tls_codec::VLBytes;

/// Who enters a group by external commit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ExternalKind {
    /// A member re-entering with its own signature key (signed by its old leaf).
    Resync(LeafNodeIndex),
    /// A client of an existing user: a new device, or one that lost its state.
    Device(UserId),
    /// The responder of a connection group.
    Connection,
}

/// Stage one: an external commit OpenMLS validated at the current epoch, adding no one else.
struct ClassifiedJoin {
    /// The commit's authenticated data.
    aad: CommitAad,
    staged: StagedCommit,
    /// The leaves it removes.
    removed: Vec<LeafNodeIndex>,
}

/// Stage two: an external commit that passed the rules of its kind; only
/// [`LoadedGroup::validate_join`] makes one, and only this can be merged.
struct ValidatedJoin {
    staged: StagedCommit,
    /// The leaves it removes.
    removed: Vec<u32>,
    /// The joiner's leaf signature key.
    new_key: Vec<u8>,
    /// The credential material of a joiner that is not a resyncing member.
    joiner: Option<JoinData>,
    /// A connection responder's user auth key.
    user_auth_key: Option<VLBytes>,
}

impl LoadedGroup {
    /// An external commit: a member re-entering with its own signature key after an epoch it
    /// could not follow (signed by its old leaf), a client of an existing user (a new device,
    /// or one that lost its state and removes its old leaf), or a connection group's responder.
    /// Nothing else may ride along, so an external commit never changes the roster beyond the
    /// joiner's own user.
    pub(super) fn external_commit(
        &mut self,
        ctx: &DsContext<'_>,
        kind: ExternalKind,
        bundle: &CommitBundle,
    ) -> Result<Applied, HubError> {
        if kind == ExternalKind::Connection && self.kind != GroupKind::Connection {
            return Err(HubError::Group(GroupError::WrongOperation(
                "only a connection group waiting for its responder can be joined this way",
            )));
        }
        let crypto = RustCrypto::default();
        let classified = self.classify_join(&crypto, bundle)?;
        let validated = self.validate_join(kind, classified, ctx.max_group_size)?;
        self.merge_join(ctx, &crypto, kind, validated, bundle)
    }

    /// Stage one: OpenMLS validates the commit; it must be external, add no one else and carry
    /// no proposals but ExternalInit and removals.
    fn classify_join(
        &self,
        crypto: &RustCrypto,
        bundle: &CommitBundle,
    ) -> Result<ClassifiedJoin, HubError> {
        let processed = self.handshake_at_current_epoch(crypto, bundle.commit.as_slice())?;
        if !matches!(processed.sender(), Sender::NewMemberCommit) {
            return Err(HubError::Group(GroupError::WrongOperation(
                "an external commit is needed",
            )));
        }
        let aad = commit_aad(processed.aad())?;
        if !aad.added.is_empty() {
            return Err(HubError::Group(GroupError::WrongOperation(
                "an external commit adds no one else",
            )));
        }
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(HubError::Group(GroupError::WrongOperation("not a commit")));
        };
        let staged = *staged;
        let mut removed = Vec::new();
        for qp in staged.queued_proposals() {
            match qp.proposal() {
                Proposal::ExternalInit(_) => {}
                Proposal::Remove(r) => removed.push(r.removed()),
                _ => {
                    return Err(HubError::Group(GroupError::WrongOperation(
                        "an external commit may only remove the joiner's own old leaf",
                    )));
                }
            }
        }
        Ok(ClassifiedJoin {
            aad,
            staged,
            removed,
        })
    }

    /// Stage two: the joiner removes only what its kind allows, a resync keeps its signature
    /// key, other joiners bring credential material, a connection responder a fresh user auth
    /// key, and the new leaf's address is of this hub's mode.
    fn validate_join(
        &self,
        kind: ExternalKind,
        c: ClassifiedJoin,
        max_group_size: usize,
    ) -> Result<ValidatedJoin, HubError> {
        let ClassifiedJoin {
            aad,
            staged,
            removed,
        } = c;
        let removed_u32: Vec<u32> = removed.iter().map(|l| l.u32()).collect();
        self.check_join_removals(kind, &removed, &removed_u32)?;
        // The same bound a member's add is held to: the joiner takes one seat, the leaves
        // its commit removes free theirs. A join that does not grow the group (a resync, a
        // device replacing its own old leaf) is never refused, so recovery always works.
        let before = self.pg.members().count();
        let after = before.saturating_sub(removed.len()) + 1;
        if after > before && after > max_group_size {
            return Err(HubError::Request(RequestError::LimitExceeded("group size")));
        }
        let leaf =
            staged
                .update_path_leaf_node()
                .ok_or(HubError::Group(GroupError::WrongOperation(
                    "an external commit needs a path",
                )))?;
        let new_key = leaf.signature_key().as_slice().to_vec();
        let joiner =
            match kind {
                ExternalKind::Resync(old) => {
                    let old_key = self
                        .pg
                        .leaf(old)
                        .map(|l| l.signature_key().as_slice().to_vec())
                        .ok_or(HubError::Request(RequestError::NotAuthorized(
                            "no member at that leaf index",
                        )))?;
                    if new_key != old_key {
                        return Err(HubError::Request(RequestError::NotAuthorized(
                            "a resync must keep the member's signature key",
                        )));
                    }
                    None
                }
                _ => Some(aad.joiner.clone().ok_or(HubError::Group(
                    GroupError::WrongOperation(
                        "an external joiner must bring its credential material",
                    ),
                ))?),
            };
        if kind == ExternalKind::Connection {
            let key =
                aad.user_auth_key
                    .as_ref()
                    .ok_or(HubError::Group(GroupError::WrongOperation(
                        "a connection responder brings its user auth key",
                    )))?;
            if key.as_slice().len() != 32 || self.roster.user_by_key(key.as_slice()).is_some() {
                return Err(HubError::Request(RequestError::Invalid(
                    "unusable user auth key",
                )));
            }
        }
        checked_queue_ref(leaf, self.mode)?;
        Ok(ValidatedJoin {
            staged,
            removed: removed_u32,
            new_key,
            joiner,
            user_auth_key: aad.user_auth_key,
        })
    }

    /// A resync removes exactly the member's old leaf, a device only its own user's leaves, a
    /// connection responder no one.
    fn check_join_removals(
        &self,
        kind: ExternalKind,
        removed: &[LeafNodeIndex],
        removed_u32: &[u32],
    ) -> Result<(), HubError> {
        let allowed = match kind {
            ExternalKind::Resync(old) => removed == [old],
            ExternalKind::Device(user) => removed_u32.iter().all(|l| self.roster.holds(user, *l)),
            ExternalKind::Connection => removed.is_empty(),
        };
        if !allowed {
            return Err(HubError::Group(GroupError::WrongOperation(match kind {
                ExternalKind::Resync(_) => "a resync must remove the member's old leaf, only",
                ExternalKind::Device(_) => "a device may only remove its own user's leaves",
                ExternalKind::Connection => "joining a connection group removes no one",
            })));
        }
        Ok(())
    }

    /// Stage three: merges a validated external commit, seats the joiner with its user and
    /// credential, and checks the GroupInfo.
    fn merge_join(
        &mut self,
        ctx: &DsContext<'_>,
        crypto: &RustCrypto,
        kind: ExternalKind,
        j: ValidatedJoin,
        bundle: &CommitBundle,
    ) -> Result<Applied, HubError> {
        let except = match kind {
            ExternalKind::Resync(old) => Some(old),
            _ => None,
        };
        let fanout = Self::fan(self.recipients(except), &bundle.commit);
        let epoch_before = self.epoch();
        self.pg
            .merge_commit(&self.store, j.staged)
            .map_err(|e| HubError::Bug(format!("merge: {e}")))?;
        let new = self.leaf_of(&j.new_key)?;
        let period = ctx.removal.period(ctx.now_ms);
        self.seat_joiner(kind, new, &j.removed, j.user_auth_key)?;
        if let Some(joiner) = j.joiner {
            self.set_credential(new, joiner.credential);
        }
        self.record_activity(new.u32(), period);
        self.after_merge(crypto, epoch_before, new, bundle)?;
        Ok(Applied {
            response: DsResponse::Accepted(self.epoch()),
            fanout,
            write: Write::Save,
        })
    }

    /// Puts the joiner at leaf `new` into the roster: a resyncing member moves with its
    /// credential and user, a device joins its user, a connection responder becomes a user.
    fn seat_joiner(
        &mut self,
        kind: ExternalKind,
        new: LeafNodeIndex,
        removed: &[u32],
        user_auth_key: Option<VLBytes>,
    ) -> Result<(), HubError> {
        match kind {
            ExternalKind::Resync(old) => {
                self.acct.move_leaf(old.u32(), new.u32());
                // The member keeps its credential and its user: both move with it.
                if let Some(pos) = self.credentials.iter().position(|c| c.leaf == old.u32()) {
                    let entry = self.credentials.remove(pos);
                    self.set_credential(new, entry.info);
                }
                self.roster.move_leaf(old.u32(), new.u32());
                self.activity.retain(|a| a.leaf != old.u32());
            }
            ExternalKind::Device(user) => {
                // The new device and the removal of the user's old ones are one roster step:
                // the user never empties, so it keeps its place and role, and no other user is
                // promoted for a moment without admins.
                self.forget_leaf_state(removed);
                self.roster.rejoin_device(user, removed, new.u32())?;
            }
            ExternalKind::Connection => {
                // Both ends of a 1:1 connection are admins of it.
                self.roster
                    .add_user(vec![new.u32()], Role::Admin, user_auth_key);
                self.kind = GroupKind::Regular;
            }
        }
        Ok(())
    }
}
