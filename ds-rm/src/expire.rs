//! Offline expiry: groups and queues nobody used for a number of months are deleted.
//!
//! The hub keeps only a coarse activity month per group row and per client record (that is all
//! a seized disk may show about timing), so expiry works at month granularity. It runs against
//! a stopped hub's data directory (`ds-rm expire`), e.g. from a monthly timer.

use crate::core::HubError;
use crate::core::ds::state::{GroupRow, month_of};
use crate::core::qs::ClientRecord;
use crate::store::{Cf, Store, Txn};

/// What one expiry run removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Group rows deleted.
    pub groups: usize,
    /// Queued messages deleted (of clients that stopped fetching).
    pub queued_messages: usize,
    /// Revocation-list entries dropped because every credential they covered has expired.
    pub revocations: usize,
    /// Messages stored once whose tickets never all came back (their recipients stopped
    /// fetching or deleted their queues).
    pub stored_messages: usize,
}

/// Deletes groups whose state has not changed, and queued messages of clients that have not
/// fetched, for `idle_months` whole months before `now_ms`.
pub fn expire(store: &dyn Store, idle_months: u32, now_ms: u64) -> Result<Expired, HubError> {
    let cutoff = month_of(now_ms).saturating_sub(idle_months);
    let mut out = Expired::default();
    let mut txn = Txn::new(store);
    for (key, value) in store.scan_prefix(Cf::DsGroups, b"", usize::MAX)? {
        let row: GroupRow = crate::store::record::decode(&value)?;
        if row.activity_month < cutoff {
            crate::core::ds::removals::drop_tombstones(&mut txn, &key)?;
            txn.delete(Cf::DsRouting, key.clone());
            txn.delete(Cf::DsGroups, key);
            out.groups += 1;
        }
    }
    for (id, value) in store.scan_prefix(Cf::QsClients, b"", usize::MAX)? {
        let mut record: ClientRecord = crate::store::record::decode(&value)?;
        if record.activity_month >= cutoff {
            continue;
        }
        let queued = store.scan_prefix(Cf::QsQueues, &id, usize::MAX)?;
        if queued.is_empty() {
            continue;
        }
        out.queued_messages += queued.len();
        for (k, _) in queued {
            txn.delete(Cf::QsQueues, k);
        }
        // Everything up to the ratchet's position now counts as gone, so the queue is empty
        // for the length limit too.
        let id: [u8; 16] = id
            .as_slice()
            .try_into()
            .map_err(|_| HubError::corrupt("qs_clients", "client id is not 16 bytes"))?;
        record.acked_below = crate::core::qs::ratchet_record(&txn, &id)?
            .ratchet()?
            .next_seq();
        txn.put_record(&id, &record)?;
    }
    out.stored_messages = crate::core::stored::expire(store, &mut txn, cutoff)?;
    txn.commit()?;
    out.revocations = crate::core::auth::prune_revocations(store, now_ms / 1000)?;
    Ok(out)
}
