//! Start-up upkeep of the erasable records: queue ratchets live apart from client records (in
//! the slot file, see `store::slots`), and these two steps keep both halves consistent.
//!
//! - **Migration.** Data directories written before the split hold the ratchet inside the
//!   client record. Each such record is rewritten without it and its ratchet moves to the
//!   erasable family; the hub's first scrub then drops the old copies from the LSM.
//! - **Sweep.** A crash between writing a new client's ratchet and its record, or between
//!   deleting a record and erasing its ratchet, leaves a ratchet without a record. It is
//!   erased, so no secret outlives its queue.

use crate::core::HubError;
use crate::core::qs::{ClientId, ClientRecord, LastRekey, RatchetRecord};
use crate::store::{Cf, Record, Store, Txn};
use mimi_rm_protocol::decode_exact;
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Most records one upkeep transaction rewrites, so a large directory migrates in bounded
/// batches.
const CHUNK: usize = 1024;

/// The client record as it was stored before ratchets moved to the erasable family.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct LegacyClientRecord {
    /// Pseudonymous user id.
    pub user_id: [u8; 16],
    /// Client auth key.
    pub auth_key: VLBytes,
    /// Ratchet state (40 bytes).
    pub ratchet: VLBytes,
    /// Month of the last dequeue.
    pub activity_month: u32,
    /// Last rekey.
    pub last_rekey: Option<LastRekey>,
    /// Acknowledged-below counter.
    pub acked_below: u64,
}

/// What [`prepare`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Upkeep {
    /// Client records rewritten without their inline ratchet.
    pub migrated: usize,
    /// Ratchets erased because their client record is gone.
    pub orphans_erased: usize,
}

/// Migrates legacy client records and erases orphaned ratchets (see the module docs).
pub fn prepare(store: &dyn Store) -> Result<Upkeep, HubError> {
    let mut out = Upkeep::default();
    let mut txn = Txn::new(store);
    let mut pending = 0;
    for (key, value) in store.scan_prefix(Cf::QsClients, b"", usize::MAX)? {
        if crate::store::record::decode::<ClientRecord>(&value).is_ok() {
            continue;
        }
        let id: ClientId = key
            .as_slice()
            .try_into()
            .map_err(|_| HubError::corrupt("qs_clients", "client id is not 16 bytes"))?;
        let legacy: LegacyClientRecord = decode_exact(&value, ClientRecord::MAX_BYTES)
            .map_err(|e| HubError::corrupt("qs_clients", e))?;
        let ratchet: [u8; 40] = legacy
            .ratchet
            .as_slice()
            .try_into()
            .map_err(|_| HubError::corrupt("qs_clients", "inline ratchet is not 40 bytes"))?;
        txn.put_record(
            &id,
            &ClientRecord {
                user_id: legacy.user_id,
                auth_key: legacy.auth_key,
                activity_month: legacy.activity_month,
                acked_below: legacy.acked_below,
                device_tag: Vec::new().into(),
            },
        )?;
        txn.put_record(
            &id,
            &RatchetRecord {
                ratchet,
                last_rekey: legacy.last_rekey,
            },
        )?;
        out.migrated += 1;
        pending += 1;
        if pending == CHUNK {
            std::mem::replace(&mut txn, Txn::new(store)).commit()?;
            pending = 0;
        }
    }
    for (key, _) in store.scan_prefix(Cf::QsRatchets, b"", usize::MAX)? {
        if txn.get(Cf::QsClients, &key)?.is_none() {
            txn.delete(Cf::QsRatchets, key);
            out.orphans_erased += 1;
            pending += 1;
            if pending == CHUNK {
                std::mem::replace(&mut txn, Txn::new(store)).commit()?;
                pending = 0;
            }
        }
    }
    txn.commit()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use mimi_rm_crypto::ratchet::{QueueRatchet, RatchetSecret};
    use mimi_rm_protocol::encode;

    #[test]
    fn legacy_records_move_their_ratchet_and_orphans_are_erased() {
        let store = MemStore::new();
        let secret = RatchetSecret::random();
        let mut ratchet = QueueRatchet::new(secret.clone());
        ratchet.encrypt_next(b"m").unwrap();
        let legacy = LegacyClientRecord {
            user_id: [1; 16],
            auth_key: vec![2; 32].into(),
            ratchet: ratchet.to_bytes().to_vec().into(),
            activity_month: 7,
            last_rekey: Some(LastRekey {
                fresh_hash: [3; 32],
                seq: 1,
            }),
            acked_below: 1,
        };
        let mut txn = Txn::new(&store);
        txn.put(Cf::QsClients, vec![9; 16], encode(&legacy).unwrap());
        txn.put(Cf::QsRatchets, vec![8; 16], vec![0; 41]);
        txn.commit().unwrap();

        let done = prepare(&store).unwrap();
        assert_eq!(
            done,
            Upkeep {
                migrated: 1,
                orphans_erased: 1
            }
        );
        let txn = Txn::new(&store);
        let record = txn.get_record::<ClientRecord>(&[9; 16]).unwrap().unwrap();
        assert_eq!((record.user_id, record.acked_below), ([1; 16], 1));
        let moved = txn.get_record::<RatchetRecord>(&[9; 16]).unwrap().unwrap();
        assert_eq!(moved.ratchet().unwrap(), ratchet);
        assert_eq!(moved.last_rekey, legacy.last_rekey);
        assert_eq!(txn.get(Cf::QsRatchets, &[8; 16]).unwrap(), None);
        // A second start has nothing left to do.
        assert_eq!(prepare(&store).unwrap(), Upkeep::default());
    }
}
