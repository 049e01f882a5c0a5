//! The persisted group row and the EAR-encrypted group state inside it.
//!
//! On disk a group is `GroupRow { format, activity_month, tombstone_key, ciphertext }`: the only
//! plaintext is a format byte, the month of last activity and a random per-group public key that
//! tombstones are sealed to. Everything else — the public MLS state, the
//! current GroupInfo, the trees kept for pending Welcome joiners — is one padded, key-committed
//! ciphertext under the group's `GroupStateEarKey`, which only members hold.
//!
//! A hub in baseline mode (the full-metadata comparison DS) writes the same state in the clear,
//! under its own format byte, so neither mode can misread the other's rows.

use super::accountability::CommitRecord;
use super::public_store::PublicStoreBlob;
use super::removals::LeafActivity;
use super::users::UserEntry;
use crate::core::GroupError;
use crate::core::HubError;
use crate::store::{Cf, Record};
use mimi_rm_crypto::{CryptoError, ear};
use mimi_rm_protocol::decode_exact;
use mimi_rm_protocol::ds::{GroupKind, LeafCredentialEntry, ReportTally};
use tls_codec::{Serialize as _, TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Format byte of an EAR-encrypted [`GroupRow`]; bump on any change of the row or state layout.
pub const GROUP_ROW_FORMAT: u8 = 5;
/// Format byte of a baseline-mode [`GroupRow`], whose `ciphertext` is the plaintext state.
pub const PLAIN_GROUP_ROW_FORMAT: u8 = 0x80 | GROUP_ROW_FORMAT;
/// EAR domain label of group state ciphertexts.
pub const STATE_DOMAIN: &str = "ds group state";
/// Upper bound on a decrypted state (a sanity limit, not a policy).
const MAX_STATE: usize = 64 << 20;

/// The outer, plaintext row stored under the group id.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct GroupRow {
    /// [`GROUP_ROW_FORMAT`].
    pub format: u8,
    /// Months since 1970-01 of the last state change: coarse on purpose.
    pub activity_month: u32,
    /// X25519 public key tombstones of this group are sealed to (random per group; its private
    /// key is inside the ciphertext).
    pub tombstone_key: VLBytes,
    /// EAR ciphertext of [`DsGroupState`] (its plain encoding in baseline mode).
    pub ciphertext: VLBytes,
}

impl Record for GroupRow {
    const CF: Cf = Cf::DsGroups;
    /// A padded state ciphertext: a 10,000-member group's state is a few MiB.
    const MAX_BYTES: usize = 64 << 20;
    type Key = [u8];
}

/// How a group's records are protected at rest.
pub enum AtRest {
    /// RM mode: under the members' `GroupStateEarKey` (zeroized on drop).
    Ear(ear::EarKey),
    /// Baseline mode: in the clear, as a conventional DS stores them.
    Plain,
}

impl AtRest {
    /// The key a Welcome joiner must learn (empty in baseline mode).
    pub fn joiner_key(&self) -> Vec<u8> {
        match self {
            Self::Ear(k) => k.as_bytes().to_vec(),
            Self::Plain => Vec::new(),
        }
    }

    /// The row format byte this protection writes.
    pub(super) fn format(&self) -> u8 {
        match self {
            Self::Ear(_) => GROUP_ROW_FORMAT,
            Self::Plain => PLAIN_GROUP_ROW_FORMAT,
        }
    }

    /// Encrypts (or, in baseline mode, copies) `plain` for the record kind `domain`.
    pub fn seal(&self, domain: &str, group_id: &[u8], plain: &[u8]) -> Result<Vec<u8>, HubError> {
        match self {
            Self::Ear(key) => ear::seal(key, domain, &aad(group_id), plain)
                .map_err(|e| HubError::Bug(format!("seal {domain}: {e}"))),
            Self::Plain => Ok(plain.to_vec()),
        }
    }

    /// Reverses [`AtRest::seal`] for a row written with `format`; a wrong EAR key is reported as
    /// [`GroupError::WrongEarKey`], a row of the other mode as an internal error.
    pub fn open(
        &self,
        format: u8,
        domain: &str,
        group_id: &[u8],
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, HubError> {
        if format != self.format() {
            return Err(HubError::corrupt(
                "group record",
                format!("format {format} does not match this hub's mode"),
            ));
        }
        match self {
            Self::Ear(key) => ear::open(key, domain, &aad(group_id), sealed)
                .map(zeroize::Zeroizing::new)
                .map_err(|e| match e {
                    CryptoError::WrongKey => HubError::Group(GroupError::WrongEarKey),
                    other => HubError::corrupt("group record", format!("open {domain}: {other}")),
                }),
            Self::Plain => Ok(zeroize::Zeroizing::new(sealed.to_vec())),
        }
    }
}

/// A ratchet tree kept for Welcome joiners of one epoch.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct PastTree {
    /// The epoch the Welcome brings its joiners into.
    pub epoch: u64,
    /// When the hub drops this tree even if some joiners never came (ms since the Unix epoch):
    /// an unused KeyPackage must not keep a copy of the tree in the state forever.
    pub expires_ms: u64,
    /// TLS-encoded ratchet tree of that epoch.
    pub ratchet_tree: VLBytes,
    /// Leaf signature keys of joiners that have not yet been seen as members.
    pub joiners: Vec<VLBytes>,
    /// Every leaf's encrypted credential material at that epoch.
    pub credentials: Vec<LeafCredentialEntry>,
}

/// Everything the hub knows about a group, encrypted at rest.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct DsGroupState {
    /// OpenMLS public group (tree, context, transcript hash, confirmation tag, proposals).
    pub public_group: PublicStoreBlob,
    /// `MLSMessage` with the GroupInfo of the current epoch, signed by the last committer.
    pub group_info: VLBytes,
    /// Trees for outstanding Welcomes.
    pub past_trees: Vec<PastTree>,
    /// The last accepted commits, so members can report one they could not process.
    pub recent_commits: Vec<CommitRecord>,
    /// Reports counted per current committer leaf.
    pub tallies: Vec<ReportTally>,
    /// Every current leaf's encrypted credential material (opaque to the hub).
    pub credentials: Vec<LeafCredentialEntry>,
    /// Which leaves belong to one user, their per-group auth keys and roles.
    pub users: Vec<UserEntry>,
    /// Regular, or a connection group waiting for its responder.
    pub kind: GroupKind,
    /// Every member's last activity period (for inactivity removal).
    pub activity: Vec<LeafActivity>,
    /// Private key of [`GroupRow::tombstone_key`].
    pub tombstone_secret: VLBytes,
    /// Signature keys of leaves whose queue is gone, until their removal is committed.
    pub doomed: Vec<VLBytes>,
    /// The group this one was re-initialised into; then it takes no further operations.
    pub reinit: Option<VLBytes>,
}

/// Associated data binding a state ciphertext to its group id, so a row copied under another
/// group id never decrypts.
fn aad(group_id: &[u8]) -> Vec<u8> {
    let mut a = b"group:".to_vec();
    a.extend_from_slice(group_id);
    a
}

/// Months since 1970-01 for a Unix time in milliseconds.
pub fn month_of(now_ms: u64) -> u32 {
    // 30.44-day months are fine for a coarse activity marker.
    (now_ms / 1000 / 2_629_746) as u32
}

impl DsGroupState {
    /// Pads and encrypts the state into a row.
    pub fn seal(
        &self,
        key: &AtRest,
        group_id: &[u8],
        now_ms: u64,
        tombstone_key: VLBytes,
    ) -> Result<GroupRow, HubError> {
        let plain = zeroize::Zeroizing::new(
            self.tls_serialize_detached()
                .map_err(|e| HubError::Bug(format!("encode state: {e:?}")))?,
        );
        Ok(GroupRow {
            format: key.format(),
            activity_month: month_of(now_ms),
            tombstone_key,
            ciphertext: key.seal(STATE_DOMAIN, group_id, &plain)?.into(),
        })
    }

    /// Decrypts a row; a wrong key is reported as [`GroupError::WrongEarKey`].
    pub fn open(row: &GroupRow, key: &AtRest, group_id: &[u8]) -> Result<Self, HubError> {
        let plain = key.open(
            row.format,
            STATE_DOMAIN,
            group_id,
            row.ciphertext.as_slice(),
        )?;
        decode_exact(&plain, MAX_STATE).map_err(|e| HubError::corrupt("group state", e))
    }
}
