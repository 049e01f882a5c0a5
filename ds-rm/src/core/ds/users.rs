//! The users of a group as the hub enforces them: which leaves are clients of one user, that
//! user's per-group auth key (`PseudonymousUserAuth`) and its role.
//!
//! The roster lives inside the EAR-encrypted state only. It says "these leaves belong together"
//! and nothing about who the user is: the auth key is a per-group random key, unlinkable to the
//! same user's key in another group.

use crate::core::HubError;
use crate::core::RequestError;
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

/// A handle to one user of a loaded [`Roster`]: stable for as long as the roster is in memory,
/// however users before it come and go. A position in the user list was not: dropping a user
/// shifted every later one, so a handle taken when a request was authenticated could name
/// another user by the time a commit gave that user a new client.
///
/// Handles are never stored: they are allocated from the roster's counter when the state is
/// loaded (and when users are added), and only live for one request. The stored state is still
/// the plain list of [`UserEntry`], so its format is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(u32);

/// All users of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    /// Users in order of arrival, each with its handle (ascending).
    users: Vec<(UserId, UserEntry)>,
    /// The handle the next added user gets.
    next_id: u32,
}

impl Roster {
    /// The roster of a new group: its creator, an admin.
    pub fn with_creator(auth_key: VLBytes) -> Self {
        Self::from_entries(vec![UserEntry {
            auth_key: Some(auth_key),
            leaves: vec![0],
            role: Role::Admin,
        }])
    }

    /// The roster of stored users (in order of arrival), with fresh handles.
    pub fn from_entries(entries: Vec<UserEntry>) -> Self {
        let mut roster = Self::default();
        for entry in entries {
            roster.push(entry);
        }
        roster
    }

    /// The users as they are stored, in order of arrival.
    pub fn entries(&self) -> Vec<UserEntry> {
        self.users.iter().map(|(_, u)| u.clone()).collect()
    }

    /// Appends a user under a fresh handle.
    fn push(&mut self, entry: UserEntry) -> UserId {
        let id = UserId(self.next_id);
        // One handle per user added in one request: the counter never comes near its end.
        self.next_id = self.next_id.wrapping_add(1);
        self.users.push((id, entry));
        id
    }

    /// The user `user`, if it is still in the group.
    pub fn user(&self, user: UserId) -> Option<&UserEntry> {
        // Handles are allocated in ascending order and the list keeps arrival order.
        self.users
            .binary_search_by_key(&user, |(id, _)| *id)
            .ok()
            .and_then(|i| self.users.get(i))
            .map(|(_, u)| u)
    }

    /// The user `user`, for changing it; an internal error if it left.
    fn user_mut(&mut self, user: UserId) -> Result<&mut UserEntry, HubError> {
        let i = self.users.binary_search_by_key(&user, |(id, _)| *id).ok();
        i.and_then(|i| self.users.get_mut(i))
            .map(|(_, u)| u)
            .ok_or_else(|| HubError::Bug("no such user".into()))
    }

    /// Whether the client at `leaf` belongs to user `user`.
    pub fn holds(&self, user: UserId, leaf: u32) -> bool {
        self.user(user).is_some_and(|u| u.leaves.contains(&leaf))
    }

    /// How many users are admins.
    pub fn admin_count(&self) -> usize {
        self.users
            .iter()
            .filter(|(_, u)| u.role == Role::Admin)
            .count()
    }

    /// The user holding `leaf`.
    pub fn user_of(&self, leaf: u32) -> Option<UserId> {
        self.users
            .iter()
            .find(|(_, u)| u.leaves.contains(&leaf))
            .map(|(id, _)| *id)
    }

    /// The user whose auth key is `key`.
    pub fn user_by_key(&self, key: &[u8]) -> Option<UserId> {
        self.users
            .iter()
            .find(|(_, u)| u.auth_key.as_ref().is_some_and(|k| k.as_slice() == key))
            .map(|(id, _)| *id)
    }

    /// Whether the client at `leaf` belongs to an admin.
    pub fn is_admin(&self, leaf: u32) -> bool {
        self.user_of(leaf)
            .and_then(|u| self.user(u))
            .is_some_and(|u| u.role == Role::Admin)
    }

    /// Fails unless the client at `leaf` belongs to an admin.
    pub fn require_admin(&self, leaf: u32) -> Result<(), HubError> {
        if self.is_admin(leaf) {
            Ok(())
        } else {
            Err(HubError::Request(RequestError::NotAuthorized(
                "only an admin may do this",
            )))
        }
    }

    /// Sets the auth key of user `user`; a key must not be shared by two users.
    pub fn set_key(&mut self, user: UserId, key: VLBytes) -> Result<(), HubError> {
        if key.as_slice().len() != 32 {
            return Err(HubError::Request(RequestError::Invalid(
                "a user auth key is 32 bytes",
            )));
        }
        if self.user_by_key(key.as_slice()).is_some_and(|u| u != user) {
            return Err(HubError::Request(RequestError::Invalid(
                "user auth key already in use",
            )));
        }
        self.user_mut(user)?.auth_key = Some(key);
        Ok(())
    }

    /// Sets the role of user `user` (all its clients share it).
    pub fn set_role(&mut self, user: UserId, role: Role) -> Result<(), HubError> {
        self.user_mut(user)?.role = role;
        Ok(())
    }

    /// Drops removed leaves, and users left without clients. If that took the last admin (it
    /// left, or the hub removed it as inactive), the longest-standing remaining user becomes
    /// admin: a group without admins could never add or remove anyone again.
    pub fn remove_leaves(&mut self, removed: &[u32]) {
        for (_, u) in &mut self.users {
            u.leaves.retain(|l| !removed.contains(l));
        }
        self.users.retain(|(_, u)| !u.leaves.is_empty());
        if !self.users.iter().any(|(_, u)| u.role == Role::Admin)
            && let Some((_, first)) = self.users.first_mut()
        {
            first.role = Role::Admin;
        }
    }

    /// A device of `user` entered at `new` by external commit, removing `removed` (its user's
    /// stale leaves; `new` may reuse one of their indices). The user's leaves change in one
    /// step, so it is never without leaves: no promotion, no loss of seniority.
    pub fn rejoin_device(
        &mut self,
        user: UserId,
        removed: &[u32],
        new: u32,
    ) -> Result<(), HubError> {
        let entry = self.user_mut(user)?;
        entry.leaves.retain(|l| !removed.contains(l) && *l != new);
        let pos = entry.leaves.partition_point(|l| *l < new);
        entry.leaves.insert(pos, new);
        let elsewhere: Vec<u32> = removed.iter().copied().filter(|l| *l != new).collect();
        self.remove_leaves(&elsewhere);
        Ok(())
    }

    /// Gives user `user` the client at `leaf`.
    pub fn add_leaf(&mut self, user: UserId, leaf: u32) -> Result<(), HubError> {
        let entry = self.user_mut(user)?;
        let pos = entry.leaves.partition_point(|l| *l < leaf);
        entry.leaves.insert(pos, leaf);
        Ok(())
    }

    /// A client re-entered at another leaf (resync): it stays with its user and role.
    pub fn move_leaf(&mut self, old: u32, new: u32) {
        if let Some((_, u)) = self.users.iter_mut().find(|(_, u)| u.leaves.contains(&old)) {
            let leaves = &mut u.leaves;
            leaves.retain(|l| *l != old);
            let pos = leaves.partition_point(|l| *l < new);
            leaves.insert(pos, new);
        }
    }

    /// Adds a user with the given clients; returns its handle.
    pub fn add_user(&mut self, leaves: Vec<u32>, role: Role, auth_key: Option<VLBytes>) -> UserId {
        let mut leaves = leaves;
        leaves.sort_unstable();
        self.push(UserEntry {
            auth_key,
            leaves,
            role,
        })
    }

    /// Whether removing `removed` (by value, in a remove-users commit) takes every client of
    /// each affected user: a user is removed whole, never one device behind its back.
    pub fn removes_whole_users(&self, removed: &[u32]) -> bool {
        removed.iter().all(|leaf| {
            self.user_of(*leaf)
                .and_then(|u| self.user(u))
                .is_some_and(|u| u.leaves.iter().all(|l| removed.contains(l)))
        })
    }

    /// The roster as members read it.
    pub fn public_view(&self) -> Vec<GroupUser> {
        self.users
            .iter()
            .map(|(_, u)| GroupUser {
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
        assert_eq!(r.user(bob).unwrap().leaves, vec![1, 3]);
        assert!(r.is_admin(0));
        assert!(!r.is_admin(1));
        assert!(r.require_admin(3).is_err());
        assert!(r.removes_whole_users(&[1, 3]));
        assert!(!r.removes_whole_users(&[1]), "one of bob's two devices");
        assert!(!r.removes_whole_users(&[7]), "no such leaf");
        r.move_leaf(1, 5);
        assert_eq!(
            r.user(bob).unwrap().leaves,
            vec![3, 5],
            "a resync keeps user and role"
        );
        r.add_user(vec![7], Role::Member, None);
        r.remove_leaves(&[3, 5]);
        assert_eq!(r.entries().len(), 2);
        assert!(!r.is_admin(7));
        // The last admin goes: the longest-standing remaining user takes over.
        r.remove_leaves(&[0]);
        assert_eq!(r.entries().len(), 1);
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

    /// Regression: a handle to a user, taken when the request is authenticated, must name the
    /// same user after `remove_leaves` dropped users that came before it (an AddClients commit
    /// that also carries an earlier user's pending self-remove). A handle of a removed user is
    /// refused, never redirected to another user.
    #[test]
    fn user_handles_survive_removal_of_earlier_users() {
        let mut r = Roster::with_creator(key(1));
        let bob = r.add_user(vec![1], Role::Member, Some(key(2)));
        let carol = r.add_user(vec![2], Role::Member, Some(key(3)));
        let dave = r.add_user(vec![3], Role::Member, Some(key(4)));
        // Carol signs an AddClients request; the commit also merges bob's self-remove.
        let signer = r.user_by_key(&[3; 32]);
        assert_eq!(signer, Some(carol));
        r.remove_leaves(&[1]);
        r.add_leaf(carol, 7).unwrap();
        assert_eq!(r.user_of(7), r.user_by_key(&[3; 32]), "carol's new client");
        assert_eq!(r.user_of(2), r.user_of(7));
        assert_eq!(
            r.user_of(3),
            r.user_by_key(&[4; 32]),
            "dave keeps his clients"
        );
        assert_ne!(r.user_of(3), r.user_of(7));
        assert_eq!(r.user_of(3), Some(dave));
        assert!(r.user_of(1).is_none());
        assert!(r.add_leaf(bob, 8).is_err(), "bob is gone");
        assert!(r.user_of(8).is_none());
    }
}
