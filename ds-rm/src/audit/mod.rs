//! The seized-disk view: every stored record, with what it is, readable by a person
//! ([`render`]), and every file with the old values it still holds ([`files`]).

pub mod check;
pub mod files;

use crate::core::ds::state::PLAIN_GROUP_ROW_FORMAT;
use crate::store::{Cf, Store, StoreError};
use std::fmt::Write as _;

/// What a snapshot of each column family reveals, printed with its records so an operator reads
/// the privacy consequence next to the data (details in `spec-notes/metadata.md`). `baseline`:
/// the directory belongs to a baseline-mode hub, whose group records are plaintext.
pub fn reveals(cf: Cf, baseline: bool) -> &'static str {
    match cf {
        Cf::DsGroups if baseline => {
            "PLAINTEXT group states (baseline mode): members, credentials, queue ids, history"
        }
        Cf::DsRouting if baseline => {
            "PLAINTEXT routing records (baseline mode): members' keys and plain queue ids"
        }
        Cf::DsGroups => "random group ids, last-change month, padded size of encrypted states",
        Cf::DsRouting => {
            "random group ids, last-change month, padded size of encrypted routing records"
        }
        Cf::DsReservations => "group ids reserved within the last hour",
        Cf::DsTombstones => {
            "which groups have a member whose queue was deleted (not which member: sealed)"
        }
        Cf::QsUsers => "pseudonymous users: client count, auth key, friendship-token hash",
        Cf::QsFriendship => "friendship-token hash -> pseudonymous user id",
        Cf::QsClients => {
            "pseudonymous queues: owning pseudonymous user, auth key, activity month, ack count"
        }
        Cf::QsRatchets => {
            "current queue ratchets (slot file): open only messages not yet enqueued, none queued"
        }
        Cf::QsQueues => {
            "undelivered messages per queue: count and padded sizes; each under a one-time \
             ratchet key the hub erased when it enqueued it"
        }
        Cf::QsAddPackages => "unused AddPackage counts per queue (contents encrypted)",
        Cf::QsPush => {
            "which queues have a push subscription and its padded size (sealed under a key the \
             hub does not store: no endpoint, no push service, no keys)"
        }
        Cf::ServerKeys => {
            "QS HPKE private key (opens sealed queue refs), federation and DS external-sender \
             keys, the VAPID push key, the OHTTP gateway key seed"
        }
        Cf::AsUsers => "AS identities by design: every handle and its client credentials",
        Cf::AsRevoked => {
            "how many devices were revoked and until when their credentials ran (digests of \
             handle and device: testable only by someone holding that device's credential)"
        }
        Cf::QsStored => {
            "large messages (commits) stored once: random id, month, padded size; sealed under \
             keys held only inside queue entries, not linked to any queue or group"
        }
        Cf::QsStoredTickets => {
            "per stored message, how many recipients have not released it yet (ticket digests \
             only: not which queues)"
        }
        Cf::AsKeys => "AS root and intermediate private keys (can forge client credentials)",
        Cf::AsInvites => "how many invitation codes are unused (hashes only; not who got them)",
        Cf::AsConnectionPackages => {
            "per handle: connection packages (public keys, client credentials) left unused"
        }
        Cf::AsConnectionRequests => {
            "per handle: how many connection requests wait (sender and contents sealed)"
        }
        Cf::FedOutbox => {
            "fan-out waiting for a peer: peer domain, item count and sizes; contents sealed to the peer"
        }
        Cf::FedPeerKeys => "the QS public key of each peer domain this hub has fanned out to",
        Cf::FedSeen => "ids and creation times of items peers delivered here (bounded retention)",
        Cf::PpKeys => "Privacy Pass issuer keys per key epoch (can mint tokens for that epoch)",
        Cf::PpSpent => "random nonces of spent tokens per key epoch (a count of redemptions)",
    }
}

/// Renders every column family of `store` as text: key, value size and a short value preview.
pub fn render(store: &dyn Store) -> Result<String, StoreError> {
    let mut out = String::new();
    let dump = store.dump()?;
    let baseline = dump
        .iter()
        .any(|(cf, _, v)| *cf == Cf::DsGroups && v.first() == Some(&PLAIN_GROUP_ROW_FORMAT));
    for cf in Cf::ALL {
        let rows: Vec<_> = dump.iter().filter(|(c, _, _)| *c == cf).collect();
        let _ = writeln!(
            out,
            "== {} ({} records): {}",
            cf.name(),
            rows.len(),
            reveals(cf, baseline)
        );
        for (_, k, v) in rows {
            let preview: String = hex::encode(&v[..v.len().min(16)]);
            let _ = writeln!(
                out,
                "  key {}  value {} bytes  {}…",
                hex::encode(k),
                v.len(),
                preview
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ds::state::GROUP_ROW_FORMAT;
    use crate::store::{MemStore, Txn};

    /// A baseline hub's group rows are plaintext, and the audit says so; an RM hub's are not
    /// called plaintext.
    #[test]
    fn baseline_group_rows_are_described_as_plaintext() {
        for (format, plaintext) in [(PLAIN_GROUP_ROW_FORMAT, true), (GROUP_ROW_FORMAT, false)] {
            let store = MemStore::new();
            let mut txn = Txn::new(&store);
            txn.put(Cf::DsGroups, b"group".to_vec(), vec![format, 0, 0, 0, 1]);
            txn.commit().unwrap();
            let text = render(&store).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("== ds_groups"))
                .unwrap();
            assert_eq!(line.contains("PLAINTEXT"), plaintext, "{line}");
        }
    }
}
