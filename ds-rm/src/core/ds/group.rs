//! A decrypted group for the duration of one request: loading and saving its state, the
//! routing record derived from it, and the small per-leaf bookkeeping every operation shares.

use super::Fanout;
use super::accountability::Accountability;
use super::observer::queue_ref_of;
use super::ops::Write;
use super::public_store::PublicStore;
use super::removals::{self, LeafActivity};
use super::routing::{RoutedMember, RoutingRecord};
use super::state::{self, AtRest, DsGroupState, GroupRow, PastTree};
use super::users::Roster;
use crate::core::GroupError;
use crate::core::HubError;
use crate::store::{Cf, Txn};
use mimi_rm_protocol::DsMode;
use mimi_rm_protocol::credentials::LeafCredentialInfo;
use mimi_rm_protocol::ds::{GroupKind, LeafCredentialEntry};
use mimi_rm_protocol::queue::{QueueMessage, QueueRef};
use openmls::prelude::{GroupId, LeafNodeIndex, PublicGroup, tls_codec::Serialize as _};
use std::collections::HashSet;
use tls_codec::VLBytes;

/// A decrypted group for the duration of one request; the EAR key is zeroized on drop.
pub(super) struct LoadedGroup {
    pub(super) group_id: Vec<u8>,
    pub(super) key: AtRest,
    pub(super) mode: DsMode,
    pub(super) store: PublicStore,
    pub(super) pg: PublicGroup,
    pub(super) group_info: VLBytes,
    pub(super) past_trees: Vec<PastTree>,
    pub(super) acct: Accountability,
    pub(super) credentials: Vec<LeafCredentialEntry>,
    /// The stored row's activity month.
    pub(super) activity_month: u32,
    pub(super) roster: Roster,
    pub(super) kind: GroupKind,
    pub(super) activity: Vec<LeafActivity>,
    pub(super) tombstone_key: VLBytes,
    pub(super) tombstone_secret: VLBytes,
    pub(super) doomed: Vec<VLBytes>,
    pub(super) reinit: Option<VLBytes>,
}

impl LoadedGroup {
    /// Opens the stored state of `group_id` with the request's key.
    pub(super) fn load(
        txn: &Txn<'_>,
        group_id: &[u8],
        key: AtRest,
        mode: DsMode,
    ) -> Result<Self, HubError> {
        let row = txn
            .get_record::<GroupRow>(group_id)?
            .ok_or(HubError::Group(GroupError::Unknown))?;
        let state = DsGroupState::open(&row, &key, group_id)?;
        let store = PublicStore::from_blob(state.public_group);
        let pg = PublicGroup::load(&store, &GroupId::from_slice(group_id))
            .map_err(|e| HubError::corrupt("group state", format!("public group: {e}")))?
            .ok_or_else(|| HubError::corrupt("group state", "no public group"))?;
        Ok(Self {
            group_id: group_id.to_vec(),
            key,
            mode,
            store,
            pg,
            group_info: state.group_info,
            past_trees: state.past_trees,
            acct: Accountability {
                recent: state.recent_commits,
                tallies: state.tallies,
            },
            credentials: state.credentials,
            activity_month: row.activity_month,
            roster: Roster::from_entries(state.users),
            kind: state.kind,
            activity: {
                let mut a = state.activity;
                a.sort_by_key(|x| x.leaf);
                a
            },
            tombstone_key: row.tombstone_key,
            tombstone_secret: state.tombstone_secret,
            doomed: state.doomed,
            reinit: state.reinit,
        })
    }

    /// Seals the state and writes it, with the routing record matching it.
    pub(super) fn save(&self, txn: &mut Txn<'_>, now_ms: u64) -> Result<(), HubError> {
        let state = DsGroupState {
            public_group: self.store.to_blob(),
            group_info: self.group_info.clone(),
            past_trees: self.past_trees.clone(),
            recent_commits: self.acct.recent.clone(),
            tallies: self.acct.tallies.clone(),
            credentials: self.credentials.clone(),
            users: self.roster.entries(),
            kind: self.kind,
            activity: self.activity.clone(),
            tombstone_secret: self.tombstone_secret.clone(),
            doomed: self.doomed.clone(),
            reinit: self.reinit.clone(),
        };
        let row = state.seal(
            &self.key,
            &self.group_id,
            now_ms,
            self.tombstone_key.clone(),
        )?;
        txn.put_record(self.group_id.as_slice(), &row)?;
        if self.reinit.is_some() {
            // A re-initialised group takes no messages: no fast path.
            txn.delete(Cf::DsRouting, self.group_id.clone());
            return Ok(());
        }
        self.routing().save(txn, &self.key, &self.group_id, now_ms)
    }

    /// Writes what an operation left behind: the state, nothing, or the group's deletion.
    pub(super) fn persist(
        &self,
        txn: &mut Txn<'_>,
        now_ms: u64,
        write: Write,
    ) -> Result<(), HubError> {
        match write {
            // Keep the coarse activity month current (once per month per group), so idle
            // expiry never removes a group that only exchanges messages.
            Write::None if self.activity_month != state::month_of(now_ms) => {
                self.save(txn, now_ms)?
            }
            Write::None => {}
            Write::Save => self.save(txn, now_ms)?,
            Write::Delete => {
                txn.delete(Cf::DsRouting, self.group_id.clone());
                txn.delete(Cf::DsGroups, self.group_id.clone());
                removals::drop_tombstones(txn, &self.group_id)?;
            }
        }
        Ok(())
    }

    /// The routing record matching the current state (see [`super::routing`]).
    pub(super) fn routing(&self) -> RoutingRecord {
        let joiner_keys: HashSet<&[u8]> = self
            .past_trees
            .iter()
            .flat_map(|t| t.joiners.iter().map(|j| j.as_slice()))
            .collect();
        let mut joining = Vec::new();
        let mut members: Vec<RoutedMember> = self
            .pg
            .members()
            // A member whose queue is gone is left out: nothing is fanned out to it, and its own
            // requests take the full path.
            .filter(|m| !self.is_doomed(&m.signature_key))
            .filter_map(|m| {
                if joiner_keys.contains(m.signature_key.as_slice()) {
                    joining.push(m.index.u32());
                }
                let queue_ref = self.pg.leaf(m.index).and_then(|l| queue_ref_of(l).ok())?;
                Some(RoutedMember {
                    leaf: m.index.u32(),
                    signature_key: m.signature_key.into(),
                    queue_ref,
                    active_period: self.period_of(m.index.u32()),
                })
            })
            .collect();
        members.sort_by_key(|m| m.leaf);
        RoutingRecord {
            epoch: self.epoch(),
            members,
            joining,
        }
    }

    /// The current epoch.
    pub(super) fn epoch(&self) -> u64 {
        self.pg.group_context().epoch().as_u64()
    }

    /// Whether the member with this signature key lost its queue.
    pub(super) fn is_doomed(&self, signature_key: &[u8]) -> bool {
        self.doomed.iter().any(|d| d.as_slice() == signature_key)
    }

    /// Notes that `leaf` was active in `period`; whether that changed anything. `activity` is
    /// kept sorted by leaf, so lookups stay O(log n) in groups of thousands.
    pub(super) fn record_activity(&mut self, leaf: u32, period: u32) -> bool {
        match self.activity.binary_search_by_key(&leaf, |a| a.leaf) {
            Ok(i) if self.activity[i].period >= period => false,
            Ok(i) => {
                self.activity[i].period = period;
                true
            }
            Err(i) => {
                self.activity.insert(i, LeafActivity { leaf, period });
                true
            }
        }
    }

    /// The activity recorded for `leaf`, if any.
    pub(super) fn activity_of(&self, leaf: u32) -> Option<&LeafActivity> {
        self.activity
            .binary_search_by_key(&leaf, |a| a.leaf)
            .ok()
            .map(|i| &self.activity[i])
    }

    /// The activity period recorded for `leaf` (0 if none).
    pub(super) fn period_of(&self, leaf: u32) -> u32 {
        self.activity_of(leaf).map_or(0, |a| a.period)
    }

    /// A member signing a request proves it has joined: drops its key from the Welcome trees
    /// (and trees left without joiners); whether that changed anything.
    pub(super) fn forget_joiner(&mut self, idx: LeafNodeIndex) -> bool {
        let Some(key) = self
            .pg
            .leaf(idx)
            .map(|l| l.signature_key().as_slice().to_vec())
        else {
            return false;
        };
        let before: usize = self.past_trees.iter().map(|t| t.joiners.len()).sum();
        for t in &mut self.past_trees {
            t.joiners.retain(|j| j.as_slice() != key.as_slice());
        }
        self.past_trees.retain(|t| !t.joiners.is_empty());
        before
            != self
                .past_trees
                .iter()
                .map(|t| t.joiners.len())
                .sum::<usize>()
    }

    /// The current leaf holding `signature_key`.
    pub(super) fn leaf_of(&self, signature_key: &[u8]) -> Result<LeafNodeIndex, HubError> {
        self.leaves_of(&[signature_key])?
            .pop()
            .ok_or_else(|| HubError::Bug("leaf missing after merge".into()))
    }

    /// Stores `info` for `leaf`, keeping the list sorted by leaf.
    pub(super) fn set_credential(&mut self, leaf: LeafNodeIndex, info: LeafCredentialInfo) {
        let leaf = leaf.u32();
        // A binary search, not a scan: a bulk add seats k joiners in an N-leaf list.
        let pos = self.credentials.partition_point(|c| c.leaf < leaf);
        match self.credentials.get_mut(pos) {
            Some(c) if c.leaf == leaf => c.info = info,
            _ => self
                .credentials
                .insert(pos, LeafCredentialEntry { leaf, info }),
        }
    }

    /// The current leaves of every key in `signature_keys`, in one pass over the members (a
    /// lookup per joiner made a bulk add O(joiners × members)).
    pub(super) fn leaves_of(
        &self,
        signature_keys: &[&[u8]],
    ) -> Result<Vec<LeafNodeIndex>, HubError> {
        let wanted: std::collections::HashSet<&[u8]> = signature_keys.iter().copied().collect();
        let mut found: crate::store::FastMap<Vec<u8>, LeafNodeIndex> =
            crate::store::FastMap::default();
        for m in self.pg.members() {
            if wanted.contains(m.signature_key.as_slice()) {
                found.entry(m.signature_key).or_insert(m.index);
                if found.len() == wanted.len() {
                    break;
                }
            }
        }
        signature_keys
            .iter()
            .map(|k| {
                found
                    .get(*k)
                    .copied()
                    .ok_or_else(|| HubError::Bug("leaf missing after merge".into()))
            })
            .collect()
    }

    /// The current ratchet tree, TLS-encoded.
    pub(super) fn tree_bytes(&self) -> Result<Vec<u8>, HubError> {
        self.pg
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(|e| HubError::Bug(format!("encode tree: {e:?}")))
    }

    /// Every member except `except`, with its fan-out address.
    /// Members whose queue is known to be gone get nothing (their removal is proposed).
    pub(super) fn recipients(&self, except: Option<LeafNodeIndex>) -> Vec<QueueRef> {
        self.pg
            .members()
            .filter(|m| Some(m.index) != except)
            .filter(|m| !self.is_doomed(&m.signature_key))
            .filter_map(|m| self.pg.leaf(m.index).and_then(|l| queue_ref_of(l).ok()))
            .collect()
    }

    /// One fan-out item per recipient, all sharing one copy of `bytes`.
    pub(super) fn fan(recipients: Vec<QueueRef>, bytes: &VLBytes) -> Vec<Fanout> {
        let shared = std::sync::Arc::new(QueueMessage::Mls(bytes.clone()));
        recipients
            .into_iter()
            .map(|queue_ref| Fanout {
                queue_ref,
                message: shared.clone(),
            })
            .collect()
    }

    /// Drops everything the hub keeps per leaf for leaves a commit removed.
    pub(super) fn forget_removed(&mut self, removed: &[u32]) {
        self.forget_leaf_state(removed);
        self.roster.remove_leaves(removed);
    }

    /// Everything but the roster's part of [`Self::forget_removed`].
    pub(super) fn forget_leaf_state(&mut self, removed: &[u32]) {
        self.acct.forget_leaves(removed);
        self.credentials.retain(|c| !removed.contains(&c.leaf));
        self.activity.retain(|a| !removed.contains(&a.leaf));
    }
}
