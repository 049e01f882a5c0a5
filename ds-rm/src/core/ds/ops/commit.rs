//! Member commits: adding and removing users and clients, updates, deleting and re-initialising
//! the group.
//!
//! A commit goes through three stages, each a type of its own (as OpenMLS turns a processed
//! message into a staged commit before it can be merged): [`LoadedGroup::classify`] lets OpenMLS
//! validate it and sorts its proposals into a [`ClassifiedCommit`]; [`LoadedGroup::validate`]
//! checks the operation's own rules and only then yields a [`ValidatedCommit`];
//! [`LoadedGroup::merge`] takes only a validated commit. An unvalidated commit cannot be merged.

use crate::core::HubError;
use crate::core::ds::group::LoadedGroup;
use crate::core::ds::observer::{
    checked_queue_ref, commit_aad, parse_protocol_message, queue_ref_of,
};
use crate::core::ds::ops::{Applied, Write};
use crate::core::ds::state::{AtRest, PastTree};
use crate::core::ds::users::UserId;
use crate::core::ds::welcome_split;
use crate::core::ds::{DsContext, Fanout};
use crate::core::{GroupError, RequestError};
use mimi_rm_crypto::ear::EarKey;
use mimi_rm_crypto::hpke_seal;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::*;
use mimi_rm_protocol::{decode_exact, encode};
use openmls::ciphersuite::hash_ref::ProposalRef;
use openmls::prelude::{tls_codec::Deserialize as _, *};
use openmls_rust_crypto::RustCrypto;
use std::collections::HashSet;
use tls_codec::VLBytes;
use zeroize::Zeroize;

/// What a member commit is for; decides which proposals it may carry and who may send it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum CommitKind {
    /// Add users (admin only).
    Add,
    /// Remove whole users (admin only).
    Remove,
    /// An update path, nothing else.
    Update,
    /// Remove everyone else, then delete the group (admin only).
    Delete,
    /// Add clients of the signing user.
    AddClients(UserId),
    /// Remove other clients of the signing user, rotating its auth key.
    RemoveClients(UserId),
    /// Re-initialise into another group (admin only).
    ReInit,
}

impl CommitKind {
    /// Whether only an admin's client may send this commit.
    fn admin_only(self) -> bool {
        matches!(self, Self::Add | Self::Remove | Self::Delete | Self::ReInit)
    }

    /// Why a commit of this kind was refused for what it adds and removes.
    fn shape_error(self) -> &'static str {
        match self {
            Self::Add => "add_members needs add proposals only",
            Self::AddClients(_) => "add_clients needs add proposals only",
            Self::Remove => "remove_members removes every client of other users, and nothing else",
            Self::RemoveClients(_) => {
                "remove_clients removes other clients of the signing user only"
            }
            Self::Update => "update needs an update path and no adds or removes",
            Self::Delete => "delete_group must remove every other member",
            Self::ReInit => "reinit is an update naming the new group, nothing else",
        }
    }
}

/// Stage one: a member commit OpenMLS validated at the current epoch, with its proposals sorted
/// by what they do. None of the operation's own rules has been checked yet.
struct ClassifiedCommit {
    /// The committer (the signing member).
    sender: LeafNodeIndex,
    kind: CommitKind,
    /// The commit's authenticated data.
    aad: CommitAad,
    staged: StagedCommit,
    /// KeyPackages of the Add proposals, in proposal order.
    adds: Vec<KeyPackage>,
    /// Leaves the committer itself removes (pending proposals it merely commits not included).
    removed: Vec<LeafNodeIndex>,
    /// Every leaf the commit removes, pending proposals included.
    all_removed: Vec<u32>,
}

/// Stage two: a commit that passed every rule of its operation; only
/// [`LoadedGroup::validate`] makes one, and only this can be merged.
struct ValidatedCommit {
    sender: LeafNodeIndex,
    kind: CommitKind,
    staged: StagedCommit,
    adds: Vec<KeyPackage>,
    /// One entry per added KeyPackage, in the order of `adds`.
    added: Vec<AddedMember>,
    all_removed: Vec<u32>,
    /// The committer's user's new auth key, if the commit sets one.
    new_key: Option<VLBytes>,
    /// The group this one is re-initialised into.
    reinit: Option<Vec<u8>>,
    /// The keys the group moves to (a removing commit's rotation).
    rotation: Option<Rotation>,
}

/// A checked key rotation: the new EAR key and every leaf's re-wrapped credential material.
struct Rotation {
    key: EarKey,
    credentials: Vec<LeafCredentialEntry>,
}

impl LoadedGroup {
    /// A member commit of `kind` by `sender`: classified, validated, then merged (or, for
    /// `delete_group`, fanned out before the group is deleted).
    pub(super) fn commit(
        &mut self,
        ctx: &DsContext<'_>,
        sender: LeafNodeIndex,
        kind: CommitKind,
        bundle: &CommitBundle,
    ) -> Result<Applied, HubError> {
        if kind.admin_only() {
            self.roster.require_admin(sender.u32())?;
        }
        let crypto = RustCrypto::default();
        let classified = self.classify(&crypto, sender, kind, bundle)?;
        let validated = self.validate(ctx, &crypto, classified, bundle.rotation.as_ref())?;
        // Fan out with the roster from before the commit: removed members learn of it too.
        let fanout = Self::fan(self.recipients(Some(sender)), &bundle.commit);
        if kind == CommitKind::Delete {
            return Ok(Applied {
                response: DsResponse::Deleted,
                fanout,
                write: Write::Delete,
            });
        }
        self.merge(ctx, &crypto, validated, bundle, fanout)
    }

    /// The MLS sender of a user-authenticated commit: it must be one of that user's clients.
    pub(super) fn committer_of_user(
        &self,
        bundle: &CommitBundle,
        user: UserId,
    ) -> Result<LeafNodeIndex, HubError> {
        let ProtocolMessage::PublicMessage(pm) = parse_protocol_message(bundle.commit.as_slice())?
        else {
            return Err(HubError::Group(GroupError::InvalidMls(
                "handshake messages must be PublicMessages".into(),
            )));
        };
        let Sender::Member(leaf) = pm.sender() else {
            return Err(HubError::Group(GroupError::WrongOperation(
                "a member commit is needed",
            )));
        };
        if !self.roster.holds(user, leaf.u32()) {
            return Err(HubError::Request(RequestError::NotAuthorized(
                "the commit must come from a client of the signing user",
            )));
        }
        Ok(*leaf)
    }

    /// Stage one: OpenMLS validates the commit at the current epoch; its proposals are sorted,
    /// and it must commit every pending proposal.
    fn classify(
        &self,
        crypto: &RustCrypto,
        sender: LeafNodeIndex,
        kind: CommitKind,
        bundle: &CommitBundle,
    ) -> Result<ClassifiedCommit, HubError> {
        let processed = self.handshake_at_current_epoch(crypto, bundle.commit.as_slice())?;
        if !matches!(processed.sender(), Sender::Member(i) if *i == sender) {
            return Err(HubError::Request(RequestError::NotAuthorized(
                "commit not sent by the signing member",
            )));
        }
        let aad = commit_aad(processed.aad())?;
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(HubError::Group(GroupError::WrongOperation("not a commit")));
        };
        let staged = *staged;

        // Pending proposals (self-removes, the hub's removals) must be committed by whatever
        // commit comes next.
        let pending: HashSet<ProposalRef> = self
            .pg
            .queued_proposals(&self.store)
            .map_err(|e| HubError::Bug(e.to_string()))?
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        let mut covered = 0usize;
        let (mut adds, mut removed, mut all_removed) = (Vec::new(), Vec::new(), Vec::new());
        for qp in staged.queued_proposals() {
            let is_pending = pending.contains(qp.proposal_reference_ref());
            covered += usize::from(is_pending);
            match qp.proposal() {
                Proposal::Add(a) => adds.push(a.key_package().clone()),
                Proposal::Remove(r) => {
                    all_removed.push(r.removed().u32());
                    if !is_pending {
                        removed.push(r.removed());
                    }
                }
                _ => {
                    return Err(HubError::Group(GroupError::WrongOperation(
                        "only add and remove proposals are supported",
                    )));
                }
            }
        }
        if covered != pending.len() {
            return Err(HubError::Group(GroupError::WrongOperation(
                "commit must include every pending proposal",
            )));
        }
        Ok(ClassifiedCommit {
            sender,
            kind,
            aad,
            staged,
            adds,
            removed,
            all_removed,
        })
    }

    /// Stage two: the operation's own rules — what it may add and remove, the auth-key rotation
    /// of `remove_clients`, the reinit target, the joiners' addresses and credential entries,
    /// and the group size.
    fn validate(
        &self,
        ctx: &DsContext<'_>,
        crypto: &RustCrypto,
        c: ClassifiedCommit,
        rotation: Option<&KeyRotation>,
    ) -> Result<ValidatedCommit, HubError> {
        if !self.has_kind_shape(&c) {
            return Err(HubError::Group(GroupError::WrongOperation(
                c.kind.shape_error(),
            )));
        }
        let rotation = self.check_rotation(&c, rotation)?;
        if let CommitKind::RemoveClients(user) = c.kind {
            self.check_key_rotation(user, &c.aad)?;
        }
        let reinit = self.check_reinit(ctx, c.kind, &c.aad)?;
        if let Some(leaf) = c.staged.update_path_leaf_node() {
            checked_queue_ref(leaf, self.mode)?;
        }
        for kp in &c.adds {
            checked_queue_ref(kp.leaf_node(), self.mode)?;
        }
        check_own_client_marks(c.kind, &c.aad)?;
        let ClassifiedCommit {
            sender,
            kind,
            aad,
            staged,
            adds,
            all_removed,
            ..
        } = c;
        let new_key = aad.user_auth_key.clone();
        let added = match_added(crypto, &adds, aad)?;
        if self.pg.members().count() + adds.len() > ctx.max_group_size {
            return Err(HubError::Request(RequestError::LimitExceeded("group size")));
        }
        Ok(ValidatedCommit {
            sender,
            kind,
            staged,
            adds,
            added,
            all_removed,
            new_key,
            reinit,
            rotation,
        })
    }

    /// A commit that removes anyone (except by deleting the group) rotates the group's keys,
    /// and no other commit does: members derive the new keys from the epoch exactly when the
    /// commit removes someone, so the rule must be the same on both sides. The hub cannot
    /// check the keys are the exported ones; it checks they are new and complete.
    fn check_rotation(
        &self,
        c: &ClassifiedCommit,
        rotation: Option<&KeyRotation>,
    ) -> Result<Option<Rotation>, HubError> {
        let AtRest::Ear(current) = &self.key else {
            // Baseline groups keep no keys; nothing to rotate.
            return match rotation {
                None => Ok(None),
                Some(_) => Err(HubError::Group(GroupError::RotationRequired(
                    "a baseline group has no keys to rotate",
                ))),
            };
        };
        if c.kind == CommitKind::Delete {
            // The group goes: no key of it matters any more.
            return Ok(None);
        }
        let removes = !c.all_removed.is_empty();
        let r = match (removes, rotation) {
            (false, None) => return Ok(None),
            (true, None) => {
                return Err(HubError::Group(GroupError::RotationRequired(
                    "a commit that removes a member must rotate the group keys",
                )));
            }
            (false, Some(_)) => {
                return Err(HubError::Group(GroupError::RotationRequired(
                    "only a commit that removes a member rotates the group keys",
                )));
            }
            (true, Some(r)) => r,
        };
        let key = EarKey::from_bytes(r.new_ear_key.as_slice())
            .map_err(|_| HubError::Request(RequestError::Invalid("EAR key must be 32 bytes")))?;
        if key.as_bytes() == current.as_bytes() {
            return Err(HubError::Group(GroupError::RotationRequired(
                "the rotated EAR key must differ from the current one",
            )));
        }
        // The leaves after the commit: today's, less the removed, plus one per add.
        let mut expected: Vec<u32> = self
            .credentials
            .iter()
            .map(|e| e.leaf)
            .filter(|l| !c.all_removed.contains(l))
            .collect();
        let mut given: Vec<u32> = r.credentials.iter().map(|e| e.leaf).collect();
        given.sort_unstable();
        given.dedup();
        if given.len() != r.credentials.len() {
            return Err(HubError::Request(RequestError::Invalid(
                "re-wrapped credentials name a leaf twice",
            )));
        }
        // Joiners' leaves are known only after the merge: count them here, check them there.
        expected.sort_unstable();
        // Both sorted: a binary search per leaf, not a scan (10,000 members made this 10^8).
        let (old, new): (Vec<u32>, Vec<u32>) = given
            .iter()
            .partition(|l| expected.binary_search(l).is_ok());
        if old != expected || new.len() != c.adds.len() {
            return Err(HubError::Group(GroupError::RotationRequired(
                "re-wrapped credentials must cover exactly the leaves after the commit",
            )));
        }
        let mut credentials = r.credentials.clone();
        credentials.sort_by_key(|e| e.leaf);
        Ok(Some(Rotation { key, credentials }))
    }

    /// Whether the commit adds and removes what its kind allows, and nothing else.
    fn has_kind_shape(&self, c: &ClassifiedCommit) -> bool {
        let (adds, removed, sender) = (&c.adds, &c.removed, c.sender);
        let has_path = c.staged.update_path_leaf_node().is_some();
        let removed_u32: Vec<u32> = removed.iter().map(|l| l.u32()).collect();
        match c.kind {
            CommitKind::Add | CommitKind::AddClients(_) => !adds.is_empty() && removed.is_empty(),
            CommitKind::Remove => {
                !removed.is_empty()
                    && adds.is_empty()
                    && self.roster.removes_whole_users(&removed_u32)
                    && self
                        .roster
                        .user_of(sender.u32())
                        .is_some_and(|own| removed_u32.iter().all(|l| !self.roster.holds(own, *l)))
            }
            CommitKind::RemoveClients(user) => {
                !removed.is_empty()
                    && adds.is_empty()
                    && !removed.contains(&sender)
                    && removed_u32.iter().all(|l| self.roster.holds(user, *l))
            }
            CommitKind::Update => has_path && adds.is_empty() && removed.is_empty(),
            CommitKind::Delete => {
                let others: HashSet<LeafNodeIndex> = self
                    .pg
                    .members()
                    .map(|m| m.index)
                    .filter(|i| *i != sender)
                    .collect();
                adds.is_empty() && others == removed.iter().copied().collect()
            }
            CommitKind::ReInit => {
                has_path && adds.is_empty() && removed.is_empty() && c.aad.reinit.is_some()
            }
        }
    }

    /// A user removing its own other clients must rotate its auth key.
    fn check_key_rotation(&self, user: UserId, aad: &CommitAad) -> Result<(), HubError> {
        let old_key = self.roster.user(user).and_then(|u| u.auth_key.as_ref());
        let rotated = aad
            .user_auth_key
            .as_ref()
            .is_some_and(|k| old_key.is_none_or(|old| old != k));
        if !rotated {
            return Err(HubError::Group(GroupError::WrongOperation(
                "removing own clients rotates the user auth key",
            )));
        }
        Ok(())
    }

    /// The group a reinit commit names: only a reinit names one, another group on this hub.
    fn check_reinit(
        &self,
        ctx: &DsContext<'_>,
        kind: CommitKind,
        aad: &CommitAad,
    ) -> Result<Option<Vec<u8>>, HubError> {
        if kind != CommitKind::ReInit && aad.reinit.is_some() {
            return Err(HubError::Group(GroupError::WrongOperation(
                "only a reinit operation may name a new group",
            )));
        }
        let reinit = aad.reinit.clone().map(|g| g.as_slice().to_vec());
        if let Some(new_group) = &reinit {
            let target: QualifiedGroupId = decode_exact(new_group, 1024).map_err(|_| {
                HubError::Group(GroupError::InvalidId("reinit target is not a group id"))
            })?;
            if target.domain.as_slice() != ctx.domain.as_bytes() || *new_group == self.group_id {
                return Err(HubError::Group(GroupError::InvalidId(
                    "reinit must name another group on this hub",
                )));
            }
        }
        Ok(reinit)
    }

    /// Stage three: merges a validated commit and updates everything the hub keeps beside the
    /// tree — removed leaves forgotten, joiners seated, the committer's new auth key, the
    /// reinit target — then checks the GroupInfo and sends the Welcomes.
    fn merge(
        &mut self,
        ctx: &DsContext<'_>,
        crypto: &RustCrypto,
        c: ValidatedCommit,
        bundle: &CommitBundle,
        mut fanout: Vec<Fanout>,
    ) -> Result<Applied, HubError> {
        let epoch_before = self.epoch();
        self.pg
            .merge_commit(&self.store, c.staged)
            .map_err(|e| HubError::Bug(format!("merge: {e}")))?;
        self.forget_removed(&c.all_removed);
        self.seat_joiners(ctx, c.kind, &c.adds, &c.added)?;
        if let Some(rotation) = c.rotation {
            let leaves: Vec<u32> = self.credentials.iter().map(|e| e.leaf).collect();
            let given: Vec<u32> = rotation.credentials.iter().map(|e| e.leaf).collect();
            if leaves != given {
                return Err(HubError::Group(GroupError::RotationRequired(
                    "re-wrapped credentials must cover exactly the leaves after the commit",
                )));
            }
            self.credentials = rotation.credentials;
            self.key = AtRest::Ear(rotation.key);
        }
        if let Some(key) = c.new_key {
            let user = self
                .roster
                .user_of(c.sender.u32())
                .ok_or_else(|| HubError::Bug("committer without user".into()))?;
            self.roster.set_key(user, key)?;
        }
        if let Some(target) = c.reinit {
            self.reinit = Some(target.into());
        }
        self.after_merge(crypto, epoch_before, c.sender, bundle)?;
        if matches!(c.kind, CommitKind::Add | CommitKind::AddClients(_)) {
            fanout.extend(self.welcomes(
                ctx,
                crypto,
                &c.adds,
                &c.added,
                bundle.welcome.as_ref(),
            )?);
        }
        Ok(Applied {
            response: DsResponse::Accepted(self.epoch()),
            fanout,
            write: Write::Save,
        })
    }

    /// Gives every joiner of a merged commit its credential material, its activity and its
    /// user: the signing user for `add_clients`, else one new user per `user` mark.
    fn seat_joiners(
        &mut self,
        ctx: &DsContext<'_>,
        kind: CommitKind,
        adds: &[KeyPackage],
        added: &[AddedMember],
    ) -> Result<(), HubError> {
        let period = ctx.removal.period(ctx.now_ms);
        let mut new_users: Vec<(u32, Vec<u32>)> = Vec::new();
        // Position of each user mark in `new_users`, which keeps first-seen order.
        let mut user_at: crate::store::FastMap<u32, usize> = crate::store::FastMap::default();
        let keys: Vec<&[u8]> = adds
            .iter()
            .map(|kp| kp.leaf_node().signature_key().as_slice())
            .collect();
        let leaves = self.leaves_of(&keys)?;
        for (leaf, member) in leaves.into_iter().zip(added) {
            self.set_credential(leaf, member.credential.clone());
            self.record_activity(leaf.u32(), period);
            match kind {
                CommitKind::AddClients(user) => self.roster.add_leaf(user, leaf.u32())?,
                _ => match user_at.get(&member.user) {
                    Some(&i) => new_users[i].1.push(leaf.u32()),
                    None => {
                        user_at.insert(member.user, new_users.len());
                        new_users.push((member.user, vec![leaf.u32()]));
                    }
                },
            }
        }
        for (_, leaves) in new_users {
            self.roster.add_user(leaves, Role::Member, None);
        }
        Ok(())
    }

    /// What every merged commit needs: the committer's GroupInfo checked and kept, the commit
    /// remembered for reports, and trees of joiners that were removed again dropped.
    pub(super) fn after_merge(
        &mut self,
        crypto: &RustCrypto,
        epoch_before: u64,
        committer: LeafNodeIndex,
        bundle: &CommitBundle,
    ) -> Result<(), HubError> {
        self.check_group_info(crypto, committer, bundle.group_info.as_slice())?;
        self.group_info = bundle.group_info.clone();
        self.acct.record_commit(
            epoch_before,
            commit_ref(bundle.commit.as_slice()),
            committer.u32(),
        );
        let present: HashSet<Vec<u8>> =
            self.pg.members().map(|m| m.signature_key.clone()).collect();
        for t in &mut self.past_trees {
            t.joiners.retain(|j| present.contains(j.as_slice()));
        }
        self.past_trees.retain(|t| !t.joiners.is_empty());
        Ok(())
    }

    /// Builds one WelcomeBundle per joiner and remembers this epoch's tree for them.
    fn welcomes(
        &mut self,
        ctx: &DsContext<'_>,
        crypto: &RustCrypto,
        adds: &[KeyPackage],
        added: &[AddedMember],
        welcome: Option<&VLBytes>,
    ) -> Result<Vec<Fanout>, HubError> {
        let welcome_bytes = welcome.ok_or(HubError::Group(GroupError::WrongOperation(
            "add_members needs a Welcome",
        )))?;
        let MlsMessageBodyIn::Welcome(_) =
            MlsMessageIn::tls_deserialize_exact(welcome_bytes.as_slice())
                .map_err(|e| HubError::malformed("welcome", e))?
                .extract()
        else {
            return Err(HubError::malformed("welcome", "not a Welcome message"));
        };
        // OpenMLS has validated the structure; cut it into one Welcome per joiner.
        let split = welcome_split::SplitWelcome::parse(welcome_bytes.as_slice())?;
        let epoch = self.epoch();
        let mut out = Vec::with_capacity(adds.len());
        let mut joiners = Vec::with_capacity(adds.len());
        for (kp, member) in adds.iter().zip(added) {
            let kp_ref = kp
                .hash_ref(crypto)
                .map_err(|e| HubError::Bug(e.to_string()))?;
            let Some(own_welcome) = split.for_joiner(kp_ref.as_slice())? else {
                return Err(HubError::Group(GroupError::WrongOperation(
                    "the Welcome does not cover every added member",
                )));
            };
            let info = JoinerInfo {
                group_id: self.group_id.clone().into(),
                ear_key: self.key.joiner_key().into(),
                epoch,
                hub_domain: ctx.domain.as_bytes().to_vec().into(),
            };
            let mut plain = encode(&info).map_err(|e| HubError::Bug(e.to_string()))?;
            let pk = hpke_seal::HpkePublicKey::from_bytes(kp.hpke_init_key().as_slice()).map_err(
                |_| HubError::Request(RequestError::Invalid("unsupported KeyPackage init key")),
            )?;
            let sealed = hpke_seal::seal(&pk, JOINER_INFO_HPKE_LABEL, kp_ref.as_slice(), &plain);
            plain.zeroize();
            let sealed = sealed.map_err(|e| HubError::Bug(e.to_string()))?;
            out.push(Fanout {
                queue_ref: queue_ref_of(kp.leaf_node())?,
                message: std::sync::Arc::new(QueueMessage::Welcome(WelcomeBundle {
                    welcome: own_welcome.into(),
                    joiner_info: HpkeCiphertextWire {
                        kem_output: sealed.kem_output.into(),
                        ciphertext: sealed.ciphertext.into(),
                    },
                    attribution: member.attribution.clone(),
                })),
            });
            joiners.push(kp.leaf_node().signature_key().as_slice().to_vec().into());
        }
        self.past_trees.push(PastTree {
            epoch,
            expires_ms: ctx.now_ms.saturating_add(ctx.welcome_tree_ttl_ms),
            ratchet_tree: self.tree_bytes()?.into(),
            joiners,
            credentials: self.credentials.clone(),
        });
        Ok(out)
    }
}

/// Clients added by `add_clients`, and only they, are marked as the committer's own.
fn check_own_client_marks(kind: CommitKind, aad: &CommitAad) -> Result<(), HubError> {
    let own_clients = aad.added.iter().filter(|a| a.user == OWN_CLIENT).count();
    let marked_right = match kind {
        CommitKind::AddClients(_) => own_clients == aad.added.len(),
        _ => own_clients == 0,
    };
    if !marked_right {
        return Err(HubError::Group(GroupError::WrongOperation(
            "clients added by add_clients, and only they, are marked as the committer's own",
        )));
    }
    Ok(())
}

/// Puts the commit's `added` entries in the order of its Add proposals: exactly one per added
/// KeyPackage, so every joiner gets its credential material and attribution, and nothing else
/// rides along.
fn match_added(
    crypto: &RustCrypto,
    adds: &[KeyPackage],
    aad: CommitAad,
) -> Result<Vec<AddedMember>, HubError> {
    if aad.added.len() != adds.len() {
        return Err(HubError::Group(GroupError::WrongOperation(
            "the commit must carry one credential entry per added member",
        )));
    }
    let mut pool = aad.added;
    let mut out = Vec::with_capacity(adds.len());
    for kp in adds {
        let kp_ref = kp
            .hash_ref(crypto)
            .map_err(|e| HubError::Bug(e.to_string()))?;
        let pos = pool
            .iter()
            .position(|m| m.key_package_ref.as_slice() == kp_ref.as_slice())
            .ok_or(HubError::Group(GroupError::WrongOperation(
                "a credential entry names no added KeyPackage",
            )))?;
        out.push(pool.swap_remove(pos));
    }
    Ok(out)
}
