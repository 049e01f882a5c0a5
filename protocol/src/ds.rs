//! Delivery-service requests and responses.
//!
//! Every request is a [`DsRequestTbs`] signed as a whole (EAR key and timestamp included) by the
//! sender's MLS leaf key, or by a joiner's KeyPackage key, so a captured request cannot be altered
//! or re-targeted. The label below domain-separates these signatures from every MLS signature.

use crate::credentials::LeafCredentialInfo;
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Signature label prefix for DS requests (the signer signs `label ‖ encoded tbs`).
pub const DS_REQUEST_SIGNATURE_LABEL: &[u8] = b"mimi-rm 1.0 ds request\0";

/// A group id qualified by the hub's domain; its TLS encoding is the MLS group id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct QualifiedGroupId {
    /// Random part, chosen by the hub at reservation.
    pub uuid: [u8; 16],
    /// The hub domain that owns the group.
    pub domain: VLBytes,
}

/// Who signs a DS request.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum DsSender {
    /// No signature (only `RequestGroupId`).
    #[tls_codec(discriminant = 0)]
    Anonymous,
    /// A current member, by leaf index; verified with that leaf's signature key.
    #[tls_codec(discriminant = 1)]
    Member(u32),
    /// A Welcome joiner, by the signature key of its KeyPackage leaf.
    #[tls_codec(discriminant = 2)]
    Joiner(VLBytes),
    /// A user of the group, by its per-group user auth key (`PseudonymousUserAuth`): every
    /// client of the user holds it, none of the other members do. Used for user-level
    /// operations (own clients, external join of a new or recovering device).
    #[tls_codec(discriminant = 3)]
    User(VLBytes),
}

/// What a group is for; a connection group accepts one external join by its responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum GroupKind {
    /// An ordinary group.
    Regular = 0,
    /// A 1:1 connection group whose responder has not joined yet.
    Connection = 1,
}

/// A commit plus what the hub needs to keep serving the group after it.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct CommitBundle {
    /// `MLSMessage` (PublicMessage) carrying the commit.
    pub commit: VLBytes,
    /// `MLSMessage` carrying the GroupInfo of the new epoch, signed by the committer.
    pub group_info: VLBytes,
    /// `MLSMessage` carrying the Welcome, when the commit adds members.
    pub welcome: Option<VLBytes>,
    /// The group's new keys, exactly when the commit removes a member (other than by
    /// deleting the group): the new `GroupStateEarKey` and every leaf's credential material
    /// re-wrapped under the new credential keys, all exported from the new epoch (see
    /// [`ROTATION_LABELS`]). It travels only in the request to the hub, never in the commit,
    /// so the removed member, who receives the commit, learns none of it.
    pub rotation: Option<KeyRotation>,
}

/// MLS exporter labels of the keys a removing commit rotates to: `GroupStateEarKey`,
/// `CredentialEarKey`, `SignatureEarKeyWrapperKey`, each 32 bytes with an empty context. Every
/// member that merges the commit exports them from the new epoch; a removed member cannot.
pub const ROTATION_LABELS: [&str; 3] = [
    "mimi-rm rotated group state ear key",
    "mimi-rm rotated credential ear key",
    "mimi-rm rotated signature ear wrapper key",
];

/// Group creation: the epoch-0 public state.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct CreateGroup {
    /// `MLSMessage` carrying the epoch-0 GroupInfo.
    pub group_info: VLBytes,
    /// TLS-encoded ratchet tree.
    pub ratchet_tree: VLBytes,
    /// The creator's encrypted credential material for leaf 0.
    pub creator: LeafCredentialInfo,
    /// The creator's per-group user auth key (Ed25519 public key); the creator is the first
    /// admin.
    pub creator_user_auth_key: VLBytes,
    /// Regular group or pending connection group.
    pub kind: GroupKind,
}

/// The encrypted credential material of one leaf, as the hub stores and serves it.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct LeafCredentialEntry {
    /// Leaf index.
    pub leaf: u32,
    /// Ciphertexts only members can open.
    pub info: LeafCredentialInfo,
}

/// One member added by a commit, as carried in the commit's authenticated data.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct AddedMember {
    /// `KeyPackageRef` of the added KeyPackage (names the new leaf).
    pub key_package_ref: VLBytes,
    /// Its credential material re-wrapped under the group's keys.
    pub credential: LeafCredentialInfo,
    /// `WelcomeAttributionInfo` for the joiner, encrypted under its friendship key.
    pub attribution: VLBytes,
    /// Which user of this commit the client belongs to: added entries with the same number are
    /// clients of one user (the hub cannot tell otherwise; members check it against the
    /// credentials).
    pub user: u32,
}

/// [`AddedMember::user`] of a client added by `AddClients`: a client of the committer's own
/// user. Members check that it carries the committer's handle, so a user cannot pass someone
/// else off as its own device (which would bypass the admin rule for adding users).
pub const OWN_CLIENT: u32 = u32::MAX;

/// What an external joiner adds about itself, in the commit's authenticated data.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct JoinData {
    /// The joiner's credential material, wrapped under the group's keys.
    pub credential: LeafCredentialInfo,
    /// For a connection group: the responder's contact card, encrypted under the friendship
    /// key the initiator sent it (empty otherwise).
    pub friendship: VLBytes,
}

/// The MLS `authenticated_data` of every commit: signed by the committer, seen identically by
/// the hub and every member, so all store the same ciphertexts.
#[derive(Debug, Clone, Default, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct CommitAad {
    /// One entry per added KeyPackage (empty for commits without adds).
    pub added: Vec<AddedMember>,
    /// Sets (or, removing own clients, rotates) the committer's user's per-group auth key.
    pub user_auth_key: Option<VLBytes>,
    /// An external joiner's own material.
    pub joiner: Option<JoinData>,
    /// In a `ReInit` commit: the group this one continues in. (OpenMLS 0.9 drops ReInit
    /// proposals from commits, so the re-initialisation rides here, signed by the committer and
    /// seen by every member.)
    pub reinit: Option<VLBytes>,
}

/// A role change, by an admin.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct SetRole {
    /// Any leaf of the user whose role changes (all its clients share the role).
    pub leaf: u32,
    /// The new role.
    pub role: Role,
}

/// A user's role in a group, enforced by the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum Role {
    /// May send, update and manage its own clients.
    Member = 0,
    /// May also add and remove users, change roles and delete or re-initialise the group.
    Admin = 1,
}

/// One user of a group as the hub keeps it: which leaves are its clients and its role.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct GroupUser {
    /// Its clients' current leaves.
    pub leaves: Vec<u32>,
    /// Its role.
    pub role: Role,
}

/// One DS operation.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum DsOperation {
    /// Reserve a fresh group id on this hub.
    #[tls_codec(discriminant = 0)]
    RequestGroupId,
    /// Create the reserved group.
    #[tls_codec(discriminant = 1)]
    CreateGroup(CreateGroup),
    /// Add-only commit with a Welcome.
    #[tls_codec(discriminant = 2)]
    AddMembers(CommitBundle),
    /// Remove-only commit.
    #[tls_codec(discriminant = 3)]
    RemoveMembers(CommitBundle),
    /// Commit with an UpdatePath; commits every pending proposal (e.g. self-removes).
    #[tls_codec(discriminant = 4)]
    Update(CommitBundle),
    /// A member's Remove proposal for itself (`MLSMessage`, PublicMessage); stored until committed.
    #[tls_codec(discriminant = 5)]
    SelfRemove(VLBytes),
    /// An application message (`MLSMessage`, PrivateMessage), fanned out uninspected.
    #[tls_codec(discriminant = 6)]
    SendMessage(VLBytes),
    /// A commit removing every other member; then the group is deleted.
    #[tls_codec(discriminant = 7)]
    DeleteGroup(CommitBundle),
    /// The ratchet tree of the given epoch, for a Welcome joiner.
    #[tls_codec(discriminant = 8)]
    WelcomeInfo(u64),
    /// GroupInfo and ratchet tree of the current epoch.
    #[tls_codec(discriminant = 9)]
    ExternalCommitInfo,
    /// A member could not process a commit the hub accepted (see [`CommitRejected`]).
    #[tls_codec(discriminant = 10)]
    ReportCommit(CommitRejected),
    /// An external commit by which a member re-enters the group with its own signature key,
    /// removing its old leaf. Signed by that old leaf, so only a member can resync itself.
    #[tls_codec(discriminant = 11)]
    Resync(CommitBundle),
    /// Re-encrypt the group state under a new `GroupStateEarKey`, optionally replacing every
    /// leaf's credential material (re-wrapped under new group credential and wrapper keys).
    #[tls_codec(discriminant = 12)]
    RotateEarKey(KeyRotation),
    /// Add-only commit adding new clients of the signing user (signed with its user auth key).
    #[tls_codec(discriminant = 13)]
    AddClients(CommitBundle),
    /// Remove-only commit removing other clients of the signing user; rotates the user auth
    /// key (the commit's authenticated data carries the new one).
    #[tls_codec(discriminant = 14)]
    RemoveClients(CommitBundle),
    /// External commit by a client of the signing user: a new device, or one that lost its
    /// state (then it removes its own old leaf).
    #[tls_codec(discriminant = 15)]
    ExternalJoin(CommitBundle),
    /// The responder's external commit into a connection group (knowing the EAR key, from the
    /// connection request, is the authorisation).
    #[tls_codec(discriminant = 16)]
    JoinConnectionGroup(CommitBundle),
    /// An admin changes a user's role.
    #[tls_codec(discriminant = 17)]
    SetRole(SetRole),
    /// An Update commit whose authenticated data names another group on this hub to continue
    /// in (`CommitAad::reinit`); afterwards this group takes no further operations.
    #[tls_codec(discriminant = 18)]
    ReInit(CommitBundle),
}

/// A member's key rotation. The request's own `ear_key` is the current one; afterwards only
/// `new_ear_key` opens the state.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct KeyRotation {
    /// The new `GroupStateEarKey` (32 bytes).
    pub new_ear_key: VLBytes,
    /// Either empty (credential keys unchanged) or one entry for every current leaf, under the
    /// new group credential and wrapper keys.
    pub credentials: Vec<LeafCredentialEntry>,
}

impl DsOperation {
    /// Whether this is a commit by a member, which must include every pending proposal (the
    /// hub answers `ProposalsPending` when it has just made some). External commits are not:
    /// they cannot include proposals by reference.
    pub fn is_member_commit(&self) -> bool {
        matches!(
            self,
            Self::AddMembers(_)
                | Self::RemoveMembers(_)
                | Self::Update(_)
                | Self::DeleteGroup(_)
                | Self::AddClients(_)
                | Self::RemoveClients(_)
                | Self::ReInit(_)
        )
    }

    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RequestGroupId => "request_group_id",
            Self::CreateGroup(_) => "create_group",
            Self::AddMembers(_) => "add_members",
            Self::RemoveMembers(_) => "remove_members",
            Self::Update(_) => "update",
            Self::SelfRemove(_) => "self_remove",
            Self::SendMessage(_) => "send_message",
            Self::DeleteGroup(_) => "delete_group",
            Self::WelcomeInfo(_) => "welcome_info",
            Self::ExternalCommitInfo => "external_commit_info",
            Self::ReportCommit(_) => "report_commit",
            Self::Resync(_) => "resync",
            Self::RotateEarKey(_) => "rotate_ear_key",
            Self::AddClients(_) => "add_clients",
            Self::RemoveClients(_) => "remove_clients",
            Self::ExternalJoin(_) => "external_join",
            Self::JoinConnectionGroup(_) => "join_connection_group",
            Self::SetRole(_) => "set_role",
            Self::ReInit(_) => "reinit",
        }
    }
}

/// The signed part of a DS request.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct DsRequestTbs {
    /// The MLS group id (encoded [`QualifiedGroupId`]); empty for `RequestGroupId`.
    pub group_id: VLBytes,
    /// The group's `GroupStateEarKey`; absent only for `RequestGroupId`.
    pub ear_key: Option<VLBytes>,
    /// Milliseconds since the Unix epoch when the client signed.
    pub timestamp_ms: u64,
    /// Random per request, so two identical operations in one millisecond stay distinct.
    pub nonce: [u8; 16],
    /// The signer.
    pub sender: DsSender,
    /// What to do.
    pub operation: DsOperation,
}

/// A DS request: the signed body plus the signature over `DS_REQUEST_SIGNATURE_LABEL ‖ tbs`.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct DsRequest {
    /// Signed content.
    pub tbs: DsRequestTbs,
    /// Ed25519 signature (empty for anonymous requests).
    pub signature: VLBytes,
}

/// The ratchet tree a Welcome joiner needs.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct WelcomeInfo {
    /// TLS-encoded ratchet tree of the Welcome's epoch.
    pub ratchet_tree: VLBytes,
    /// Every leaf's encrypted credential material at that epoch.
    pub credentials: Vec<LeafCredentialEntry>,
}

/// What an external joiner needs.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ExternalCommitInfo {
    /// `MLSMessage` with the current GroupInfo.
    pub group_info: VLBytes,
    /// TLS-encoded current ratchet tree.
    pub ratchet_tree: VLBytes,
    /// How often members reported commits of each current leaf as unprocessable.
    pub reports: Vec<ReportTally>,
    /// Every current leaf's encrypted credential material.
    pub credentials: Vec<LeafCredentialEntry>,
    /// The group's users: which leaves belong together, and their roles.
    pub users: Vec<GroupUser>,
    /// The new group id, once the group was re-initialised (then it takes no operations).
    pub reinit: Option<VLBytes>,
}

/// Label of [`commit_ref`].
const COMMIT_REF_LABEL: &str = "commit ref";

/// Names one commit unambiguously: a labelled SHA-256 of its `MLSMessage` bytes exactly as the
/// hub fanned them out. Reporter and hub compute it independently from the same bytes.
pub fn commit_ref(commit_message: &[u8]) -> [u8; 32] {
    mimi_rm_crypto::kdf::labelled_digest(COMMIT_REF_LABEL, commit_message)
}

/// Why a member could not process a commit (advisory: the hub cannot verify it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum RejectReason {
    /// The membership tag did not verify (also how a bad confirmation tag surfaces first).
    MembershipTag = 1,
    /// The confirmation tag did not match the new epoch.
    ConfirmationTag = 2,
    /// The UpdatePath could not be decrypted or did not match the tree.
    UpdatePath = 3,
    /// Any other validation failure.
    Other = 255,
}

/// A member's report that it could not process a commit the hub accepted and fanned out.
///
/// The hub cannot check membership or confirmation tags (it has no epoch secrets), so such a
/// commit can move the hub to an epoch no honest member can enter. The report is evidence
/// against the committer's leaf; the reporter then resyncs.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct CommitRejected {
    /// The epoch the commit was sent in (the epoch it moved the group away from).
    pub epoch: u64,
    /// [`commit_ref`] of the commit message.
    pub commit_ref: [u8; 32],
    /// What failed at the reporter.
    pub reason: RejectReason,
}

/// Reports counted against one current leaf.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ReportTally {
    /// The committer's leaf index.
    pub leaf: u32,
    /// Distinct commits of this leaf that at least one member reported.
    pub reported_commits: u32,
    /// Distinct (commit, reporting leaf) pairs.
    pub reports: u32,
}

/// A successful DS response.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum DsResponse {
    /// Done; the group is now at this epoch.
    #[tls_codec(discriminant = 0)]
    Accepted(u64),
    /// A freshly reserved group id.
    #[tls_codec(discriminant = 1)]
    GroupId(ReservedGroup),
    /// Answer to `WelcomeInfo`.
    #[tls_codec(discriminant = 2)]
    WelcomeInfo(WelcomeInfo),
    /// Answer to `ExternalCommitInfo`.
    #[tls_codec(discriminant = 3)]
    ExternalCommitInfo(ExternalCommitInfo),
    /// The group was deleted.
    #[tls_codec(discriminant = 4)]
    Deleted,
    /// The request was not applied: the hub has just proposed removals (inactive clients,
    /// deleted queues) that the next commit must include. Fetch them and commit first.
    #[tls_codec(discriminant = 5)]
    ProposalsPending(u64),
}

/// A reserved group id and what a creator must put in the group's `external_senders`.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ReservedGroup {
    /// The encoded [`QualifiedGroupId`].
    pub group_id: VLBytes,
    /// The hub's Ed25519 key for the proposals it makes (removal of inactive clients and of
    /// clients whose queue is gone).
    pub external_sender_key: VLBytes,
}

/// The credential identity of the hub as an external sender: its domain, in a BasicCredential.
pub fn external_sender_identity(domain: &str) -> Vec<u8> {
    let mut v = b"mimi-rm hub:".to_vec();
    v.extend_from_slice(domain.as_bytes());
    v
}
