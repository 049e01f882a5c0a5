//! What the hub delivers, as the client reports it: [`Event`]s and verified [`MemberIdentity`]s.

use super::GroupHandle;
use mimi_rm_protocol::ds::*;

/// Something that arrived from the hub. Stored (serde) until the application takes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Event {
    /// We were welcomed into a group.
    Joined {
        /// The group.
        group: GroupHandle,
    },
    /// An application message.
    Message {
        /// The group.
        group: GroupHandle,
        /// Sender's leaf index.
        sender: u32,
        /// Decrypted content.
        plaintext: Vec<u8>,
    },
    /// A commit by another member was applied.
    Commit {
        /// The group.
        group: GroupHandle,
        /// New epoch.
        epoch: u64,
    },
    /// A member proposed something (e.g. to leave); committed later by someone.
    Proposal {
        /// The group.
        group: GroupHandle,
    },
    /// We are no longer a member.
    Removed {
        /// The group.
        group: GroupHandle,
    },
    /// We left an epoch we could not follow and re-entered the group by external commit. With
    /// `reported` set, a commit the hub had accepted failed our checks and we reported it;
    /// without, we had fallen behind.
    Resynced {
        /// The group.
        group: GroupHandle,
        /// Our report, if a commit failed.
        #[serde(with = "crate::store::events_tls")]
        reported: Option<CommitRejected>,
        /// The epoch we re-entered at.
        epoch: u64,
    },
    /// An invitation we refused: the inviter is not among our contacts, or its attribution did
    /// not verify. We did not join.
    InviteRejected {
        /// The claimed inviter handle, if it could be read.
        inviter: Option<String>,
        /// Why.
        reason: String,
    },
    /// A member whose credential chain does not verify: shown, but not trusted.
    UnverifiedMember {
        /// The group.
        group: GroupHandle,
        /// Its leaf.
        leaf: u32,
        /// Why verification failed.
        reason: String,
    },
    /// A member rotated the group's `GroupStateEarKey`; we switched to the new key.
    EarKeyRotated {
        /// The group.
        group: GroupHandle,
    },
    /// Someone we asked to connect accepted: it joined the connection group and is now a
    /// contact.
    ConnectionAccepted {
        /// The connection group.
        group: GroupHandle,
        /// The responder's verified handle.
        handle: String,
    },
    /// A contact rotated its friendship keys (it removed a contact or a device) and sent us
    /// its new card, which replaced the old one.
    ContactUpdated {
        /// The contact's handle.
        handle: String,
    },
    /// An admin re-initialised the group: it takes no further messages; the conversation
    /// continues in `new_group` (its Welcome follows when we are invited).
    ReInitialised {
        /// The old group.
        group: GroupHandle,
        /// The new group.
        new_group: GroupHandle,
    },
    /// A queue entry that could not be processed (logged and skipped).
    Undecryptable {
        /// Queue sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// Who a member is, as far as we could verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberIdentity {
    /// The chain leaf → client credential → AS verified.
    Verified {
        /// The member's handle.
        handle: String,
        /// Its device id (one user may have several clients).
        device: [u8; 16],
    },
    /// It did not verify (or we lack its material); do not trust this member.
    Unverified {
        /// Why.
        reason: String,
    },
}
