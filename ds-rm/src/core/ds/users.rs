//! The users of a group as the hub enforces them: which leaves are clients of one user, that
//! user's per-group auth key (`PseudonymousUserAuth`) and its role.
//!
//! The roster lives inside the EAR-encrypted state only. It says "these leaves belong together"
//! and nothing about who the user is: the auth key is a per-group random key, unlinkable to the
//! same user's key in another group.

use crate::core::HubError;
use mimi_rm_protocol::ds::{GroupUser, Role};
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// One user of a group.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct UserEntry {
    /// Ed25519 public key every client of the user holds for this group; `None` until one of
    /// its clients sets it (users added by others start without one).
    pub auth_key: Option<VLBytes>,
    /// Its clients' leaves, ascending.
    pub leaves: Vec<u32>,
    /// Its role; all its clients share it.
    pub role: Role,
}

/// All users of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    /// Users in order of arrival.
    pub users: Vec<UserEntry>,
}

impl Roster {
    /// The roster of a new group: its creator, an admin.
    pub fn with_creator(auth_key: VLBytes) -> Self {
        Self {
            users: vec![UserEntry {
                auth_key: Some(auth_key),
                leaves: vec![0],
                role: Role::Admin,
            }],
        }
    }

    /// Index of the user holding `leaf`.
    pub fn user_of(&self, leaf: u32) -> Option<usize> {
        self.users.iter().position(|u| u.leaves.contains(&leaf))
    }

    /// Index of the user whose auth key is `key`.
    pub fn user_by_key(&self, key: &[u8]) -> Option<usize> {
        self.users
            .iter()
            .position(|u| u.auth_key.as_ref().is_some_and(|k| k.as_slice() == key))
    }

    /// Whether the client at `leaf` belongs to an admin.
    pub fn is_admin(&self, leaf: u32) -> bool {
        self.user_of(leaf)
            .is_some_and(|u| self.users[u].role == Role::Admin)
    }

    /// Fails unless the client at `leaf` belongs to an admin.
    pub fn require_admin(&self, leaf: u32) -> Result<(), HubError> {
        if self.is_admin(leaf) {
            Ok(())
        } else {
            Err(HubError::NotAuthorized("only an admin may do this"))
        }
    }

    /// Sets the auth key of user `user`; a key must not be shared by two users.
    pub fn set_key(&mut self, user: usize, key: VLBytes) -> Result<(), HubError> {
        if key.as_slice().len() != 32 {
            return Err(HubError::InvalidRequest("a user auth key is 32 bytes"));
        }
        if self.user_by_key(key.as_slice()).is_some_and(|u| u != user) {
            return Err(HubError::InvalidRequest("user auth key already in use"));
        }
        let entry = self
            .users
            .get_mut(user)
            .ok_or_else(|| HubError::Internal("no such user".into()))?;
        entry.auth_key = Some(key);
        Ok(())
    }

    /// Drops removed leaves, and users left without clients. If that took the last admin (it
    /// left, or the hub removed it as inactive), the longest-standing remaining user becomes
    /// admin: a group without admins could never add or remove anyone again.
    pub fn remove_leaves(&mut self, removed: &[u32]) {
        for u in &mut self.users {
            u.leaves.retain(|l| !removed.contains(l));
        }
        self.users.retain(|u| !u.leaves.is_empty());
        if !self.users.iter().any(|u| u.role == Role::Admin)
            && let Some(first) = self.users.first_mut()
        {
            first.role = Role::Admin;
        }
    }

    /// Gives user `user` the client at `leaf`.
    pub fn add_leaf(&mut self, user: usize, leaf: u32) -> Result<(), HubError> {
        let entry = self
            .users
            .get_mut(user)
            .ok_or_else(|| HubError::Internal("no such user".into()))?;
        let pos = entry.leaves.partition_point(|l| *l < leaf);
        entry.leaves.insert(pos, leaf);
        Ok(())
    }

    /// A client re-entered at another leaf (resync): it stays with its user and role.
    pub fn move_leaf(&mut self, old: u32, new: u32) {
        if let Some(u) = self.user_of(old) {
            let leaves = &mut self.users[u].leaves;
            leaves.retain(|l| *l != old);
            let pos = leaves.partition_point(|l| *l < new);
            leaves.insert(pos, new);
        }
    }

    /// Adds a user with the given clients; returns its index.
    pub fn add_user(&mut self, leaves: Vec<u32>, role: Role, auth_key: Option<VLBytes>) -> usize {
        let mut leaves = leaves;
        leaves.sort_unstable();
        self.users.push(UserEntry {
            auth_key,
            leaves,
            role,
        });
        self.users.len() - 1
    }

    /// Whether removing `removed` (by value, in a remove-users commit) takes every client of
    /// each affected user: a user is removed whole, never one device behind its back.
    pub fn removes_whole_users(&self, removed: &[u32]) -> bool {
        removed.iter().all(|leaf| {
            self.user_of(*leaf)
                .is_some_and(|u| self.users[u].leaves.iter().all(|l| removed.contains(l)))
        })
    }

    /// The roster as members read it.
    pub fn public_view(&self) -> Vec<GroupUser> {
        self.users
            .iter()
            .map(|u| GroupUser {
                leaves: u.leaves.clone(),
                role: u.role,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> VLBytes {
        vec![b; 32].into()
    }

    #[test]
    fn roles_and_whole_user_removal() {
        let mut r = Roster::with_creator(key(1));
        let bob = r.add_user(vec![3, 1], Role::Member, None);
        assert_eq!(r.users[bob].leaves, vec![1, 3]);
        assert!(r.is_admin(0));
        assert!(!r.is_admin(1));
        assert!(r.require_admin(3).is_err());
        assert!(r.removes_whole_users(&[1, 3]));
        assert!(!r.removes_whole_users(&[1]), "one of bob's two devices");
        assert!(!r.removes_whole_users(&[7]), "no such leaf");
        r.move_leaf(1, 5);
        assert_eq!(
            r.users[bob].leaves,
            vec![3, 5],
            "a resync keeps user and role"
        );
        r.add_user(vec![7], Role::Member, None);
        r.remove_leaves(&[3, 5]);
        assert_eq!(r.users.len(), 2);
        assert!(!r.is_admin(7));
        // The last admin goes: the longest-standing remaining user takes over.
        r.remove_leaves(&[0]);
        assert_eq!(r.users.len(), 1);
        assert!(r.is_admin(7));
    }

    #[test]
    fn keys_are_unique_and_32_bytes() {
        let mut r = Roster::with_creator(key(1));
        let bob = r.add_user(vec![1], Role::Member, None);
        assert!(r.set_key(bob, key(1)).is_err(), "alice's key");
        assert!(r.set_key(bob, vec![2; 5].into()).is_err());
        r.set_key(bob, key(2)).unwrap();
        assert_eq!(r.user_by_key(&[2; 32]), Some(bob));
    }
}
