//! The per-group routing record: just what an application message needs.
//!
//! Sending a message is by far the most frequent request, and it needs neither the ratchet tree
//! nor the proposal store: only the sender's signature key (to authenticate it), the epoch (to
//! bound the message's lag) and every member's sealed `QueueRef` (to fan out). Loading the full
//! [`super::state::DsGroupState`] for that means decrypting and deserialising the whole public
//! tree, so the hub keeps this small record next to it, written in the same batch as every
//! state change and protected the same way (EAR-encrypted under the group's key in RM mode).

use super::state::{AtRest, month_of};
use crate::core::HubError;
use crate::store::{Cf, Record, Txn};
use mimi_rm_protocol::queue::QueueRef;
use mimi_rm_protocol::{decode_exact, encode};
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// EAR domain label of routing records.
pub const ROUTING_DOMAIN: &str = "ds group routing";
/// Upper bound on a stored routing row (sanity, not policy).
const MAX_ROUTING: usize = 16 << 20;

impl Record for RoutingRow {
    const CF: Cf = Cf::DsRouting;
    const MAX_BYTES: usize = MAX_ROUTING;
    type Key = [u8];
}

/// One member as the message path sees it.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct RoutedMember {
    /// Leaf index.
    pub leaf: u32,
    /// The leaf's signature key, which signs this member's requests.
    pub signature_key: VLBytes,
    /// Where this member's messages go.
    pub queue_ref: QueueRef,
    /// The activity period of its last request recorded in the state; a request in a later
    /// period takes the full path once, to record it.
    pub active_period: u32,
}

/// What an application message needs of a group.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct RoutingRecord {
    /// The group's current epoch.
    pub epoch: u64,
    /// Every member with a fan-out address, by ascending leaf index.
    pub members: Vec<RoutedMember>,
    /// Leaves of outstanding Welcome joiners: their first request must take the full path,
    /// which drops the tree kept for them.
    pub joining: Vec<u32>,
}

/// The stored row: like the group row, only a format byte and the coarse activity month are
/// plaintext.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct RoutingRow {
    /// Format byte (as the group row's).
    pub format: u8,
    /// Months since 1970-01 of the last change.
    pub activity_month: u32,
    /// The EAR ciphertext of the padded [`RoutingRecord`] (domain [`ROUTING_DOMAIN`]).
    pub sealed: VLBytes,
}

/// A routing record read for one request.
pub struct LoadedRouting {
    /// The decrypted record.
    pub record: RoutingRecord,
    /// The stored row's activity month.
    pub activity_month: u32,
}

impl RoutingRecord {
    /// The member at `leaf`, if it is one that may take the fast path (not a pending joiner).
    pub fn settled_member(&self, leaf: u32) -> Option<&RoutedMember> {
        if self.joining.contains(&leaf) {
            return None;
        }
        self.member(leaf)
    }

    /// The member at `leaf`, if any.
    pub fn member(&self, leaf: u32) -> Option<&RoutedMember> {
        self.members
            .binary_search_by_key(&leaf, |m| m.leaf)
            .ok()
            .and_then(|i| self.members.get(i))
    }

    /// Writes the record for `group_id` into `txn`.
    pub fn save(
        &self,
        txn: &mut Txn<'_>,
        key: &AtRest,
        group_id: &[u8],
        now_ms: u64,
    ) -> Result<(), HubError> {
        let plain = zeroize::Zeroizing::new(
            encode(self).map_err(|e| HubError::Bug(format!("encode routing: {e}")))?,
        );
        let row = RoutingRow {
            format: key.format(),
            activity_month: month_of(now_ms),
            sealed: key.seal(ROUTING_DOMAIN, group_id, &plain)?.into(),
        };
        txn.put_record(group_id, &row)?;
        Ok(())
    }

    /// Reads the record of `group_id`; `None` if the group has none (a group written before
    /// routing records existed takes the full path).
    pub fn load(
        txn: &Txn<'_>,
        key: &AtRest,
        group_id: &[u8],
    ) -> Result<Option<LoadedRouting>, HubError> {
        let Some(row) = txn.get_record::<RoutingRow>(group_id)? else {
            return Ok(None);
        };
        let plain = key.open(row.format, ROUTING_DOMAIN, group_id, row.sealed.as_slice())?;
        let record = decode_exact(&plain, MAX_ROUTING)
            .map_err(|e| HubError::corrupt("routing record", e))?;
        Ok(Some(LoadedRouting {
            record,
            activity_month: row.activity_month,
        }))
    }
}
