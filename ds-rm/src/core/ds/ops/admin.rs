//! Administration: rotating the group's EAR key (any member) and setting a user's role (admins).

use crate::core::HubError;
use crate::core::ds::group::LoadedGroup;
use crate::core::ds::ops::{Applied, Write};
use crate::core::ds::state::AtRest;
use crate::core::{GroupError, RequestError};
use mimi_rm_crypto::ear::EarKey;
use mimi_rm_protocol::ds::*;
use openmls::prelude::LeafNodeIndex;

impl LoadedGroup {
    /// Replaces the state's EAR key (and, optionally, every leaf's credential material). Any
    /// member may rotate: every member holds the keys anyway. The state is written under the new
    /// key; the old one no longer opens it.
    pub(super) fn rotate(&mut self, r: &KeyRotation) -> Result<Applied, HubError> {
        if matches!(self.key, AtRest::Plain) {
            return Err(HubError::Group(GroupError::WrongOperation(
                "a baseline group has no EAR key to rotate",
            )));
        }
        let key = EarKey::from_bytes(r.new_ear_key.as_slice())
            .map_err(|_| HubError::Request(RequestError::Invalid("EAR key must be 32 bytes")))?;
        if !r.credentials.is_empty() {
            let leaves: Vec<u32> = r.credentials.iter().map(|c| c.leaf).collect();
            let current: Vec<u32> = self.credentials.iter().map(|c| c.leaf).collect();
            if leaves != current {
                return Err(HubError::Group(GroupError::WrongOperation(
                    "re-wrapped credentials must cover exactly the current leaves",
                )));
            }
            self.credentials = r.credentials.clone();
        }
        self.key = AtRest::Ear(key);
        Ok(Applied {
            response: DsResponse::Accepted(self.epoch()),
            fanout: Vec::new(),
            write: Write::Save,
        })
    }

    /// An admin sets the role of the user owning `r.leaf` (all its clients share it). The last
    /// admin cannot step down: a group without admins could never add or remove anyone again.
    pub(super) fn set_role(
        &mut self,
        sender: LeafNodeIndex,
        r: &SetRole,
    ) -> Result<Applied, HubError> {
        self.roster.require_admin(sender.u32())?;
        let user = self
            .roster
            .user_of(r.leaf)
            .ok_or(HubError::Request(RequestError::Invalid(
                "no member at that leaf index",
            )))?;
        let admins = self.roster.admin_count();
        let was_admin = self
            .roster
            .user(user)
            .is_some_and(|u| u.role == Role::Admin);
        if r.role == Role::Member && was_admin && admins == 1 {
            return Err(HubError::Group(GroupError::WrongOperation(
                "a group keeps at least one admin",
            )));
        }
        self.roster.set_role(user, r.role)?;
        Ok(Applied {
            response: DsResponse::Accepted(self.epoch()),
            fanout: Vec::new(),
            write: Write::Save,
        })
    }
}
