//! Removals the hub proposes itself, as the group's external sender.
//!
//! Two causes: a client inactive for longer than the configured limit, and a client whose queue
//! was deleted. The second is learnt during fan-out, after the request's state was already
//! sealed, so the hub leaves a *tombstone*: the missing member's `QueueRef`, HPKE-sealed to the
//! group's tombstone key (public key in the plaintext row, private key inside the EAR state). The
//! next request that opens the state matches tombstones against the members' addresses. A seized
//! disk shows only that some group has a tombstone, not whose.
//!
//! Proposals go into the hub's proposal store and to every member; the next commit must include
//! them (see `LoadedGroup::commit`).

use crate::core::HubError;
use crate::core::ids::IdSource;
use crate::store::{Cf, Record, Txn, record};
use mimi_rm_crypto::hpke_seal::{self, HpkePrivateKey, HpkePublicKey};
use mimi_rm_protocol::encode;
use mimi_rm_protocol::queue::{HpkeCiphertextWire, QueueRef};
use openmls_basic_credential::SignatureKeyPair;
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize};

/// HPKE label of tombstones.
const TOMBSTONE_LABEL: &str = "queue tombstone";
/// Most tombstones read for one group per request (the rest wait for the next).
const MAX_TOMBSTONES: usize = 256;

/// What the hub needs to propose removals.
pub struct RemovalPolicy<'a> {
    /// The hub's external-sender signing key (the group lists its public key).
    pub signer: &'a SignatureKeyPair,
    /// A client that made no request for longer than this is proposed for removal (ms).
    pub inactivity_limit_ms: u64,
    /// Activity is recorded in periods of this length (ms): coarse on purpose.
    pub activity_period_ms: u64,
}

impl RemovalPolicy<'_> {
    /// The activity period `now_ms` falls into.
    pub fn period(&self, now_ms: u64) -> u32 {
        (now_ms / self.activity_period_ms.max(1)).min(u64::from(u32::MAX)) as u32
    }

    /// Whether a client last active in `period` is inactive at `now_ms`.
    pub fn is_inactive(&self, period: u32, now_ms: u64) -> bool {
        let idle = u64::from(self.period(now_ms).saturating_sub(period))
            .saturating_mul(self.activity_period_ms);
        idle > self.inactivity_limit_ms
    }
}

/// A member's last activity period.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct LeafActivity {
    /// Leaf index.
    pub leaf: u32,
    /// Activity period of its last request.
    pub period: u32,
}

fn tombstone_prefix(group_id: &[u8]) -> Vec<u8> {
    // An encoded group id is never a prefix of another (its domain is length-prefixed), so a
    // scan over this prefix sees exactly this group's tombstones.
    group_id.to_vec()
}

/// A tombstone as stored: the encoded `QueueRef` of a member whose queue is gone, sealed to
/// the group's tombstone key (encoded exactly as the bare ciphertext).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
struct Tombstone(HpkeCiphertextWire);

impl Record for Tombstone {
    const CF: Cf = Cf::DsTombstones;
    /// An X25519 encapsulation and one sealed `QueueRef` (a sealed address and a domain).
    const MAX_BYTES: usize = 4096;
    type Key = [u8];
}

/// Records that the member at `queue_ref` lost its queue, sealed to the group's tombstone key.
/// The caller also drops the group's routing record, so the next request takes the full path.
pub fn write_tombstone(
    txn: &mut Txn<'_>,
    ids: &dyn IdSource,
    group_id: &[u8],
    tombstone_key: &[u8],
    queue_ref: &QueueRef,
) -> Result<(), HubError> {
    let pk = HpkePublicKey::from_bytes(tombstone_key)
        .map_err(|e| HubError::corrupt("group record", format!("tombstone key: {e}")))?;
    let plain = encode(queue_ref).map_err(|e| HubError::Bug(e.to_string()))?;
    let sealed = hpke_seal::seal(&pk, TOMBSTONE_LABEL, group_id, &plain)
        .map_err(|e| HubError::Bug(format!("seal tombstone: {e}")))?;
    let wire: HpkeCiphertextWire = sealed.into();
    let mut key = tombstone_prefix(group_id);
    key.extend_from_slice(&ids.id());
    Ok(txn.put_record(key.as_slice(), &Tombstone(wire))?)
}

/// Opens and deletes this group's tombstones; returns the encoded `QueueRef`s they name.
/// Tombstones that do not open (a stale key after a state rewrite) are deleted too.
pub fn take_tombstones(
    txn: &mut Txn<'_>,
    group_id: &[u8],
    secret: &[u8],
) -> Result<Vec<Vec<u8>>, HubError> {
    let rows = txn.scan_prefix(
        Cf::DsTombstones,
        &tombstone_prefix(group_id),
        MAX_TOMBSTONES,
    )?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let sk = HpkePrivateKey::from_bytes(secret)
        .map_err(|e| HubError::corrupt("group state", format!("tombstone secret: {e}")))?;
    let mut out = Vec::with_capacity(rows.len());
    for (key, value) in rows {
        txn.delete(Cf::DsTombstones, key);
        let Ok(Tombstone(wire)) = record::decode::<Tombstone>(&value) else {
            continue;
        };
        let ct = wire.to_ciphertext();
        if let Ok(plain) = hpke_seal::open(&sk, TOMBSTONE_LABEL, group_id, &ct) {
            out.push(plain);
        }
    }
    Ok(out)
}

/// Deletes every tombstone of a deleted group.
pub fn drop_tombstones(txn: &mut Txn<'_>, group_id: &[u8]) -> Result<(), HubError> {
    for (key, _) in txn.scan_prefix(Cf::DsTombstones, &tombstone_prefix(group_id), usize::MAX)? {
        txn.delete(Cf::DsTombstones, key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inactivity_is_measured_in_whole_periods() {
        let signer =
            SignatureKeyPair::new(openmls::prelude::SignatureScheme::ED25519).expect("key");
        let p = RemovalPolicy {
            signer: &signer,
            inactivity_limit_ms: 2_000,
            activity_period_ms: 1_000,
        };
        let start = p.period(10_500);
        assert_eq!(start, 10);
        assert!(!p.is_inactive(start, 12_900), "two periods is the limit");
        assert!(p.is_inactive(start, 13_000), "three periods is past it");
        assert!(
            !p.is_inactive(start + 5, 13_000),
            "a clock step back is not idleness"
        );
    }
}
