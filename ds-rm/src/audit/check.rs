//! `ds-rm check`: verifies a stopped hub's data directory before it is trusted again (after a
//! crash, a restore, a copy) — every check the hub's own start makes, and a full read.

use crate::store::slots::SlotFile;
use crate::store::{RocksStore, StoreError};
use std::path::Path;

/// Runs every check on `dir`; `Ok` carries a one-line summary, `Err` names what is damaged.
///
/// 0. Every write-ahead log record's checksum (only a torn final record is accepted).
/// 1. The slot file: header and every slot's checksum.
/// 2. The database opens (read-only, so nothing is repaired or deleted): MANIFEST, every
///    closed log's recorded length, every log record's checksum.
/// 3. The database is not older than the slot file's durability witness (no acknowledged
///    write lost with a cut or replaced log or MANIFEST).
/// 4. Every record of every table is read with block checksums verified.
pub fn check(dir: &Path) -> Result<String, StoreError> {
    if !dir.join("CURRENT").exists() {
        return Err(StoreError::Corrupt {
            record: "data directory",
            reason: format!("{}: no RocksDB CURRENT file", dir.display()),
        });
    }
    let logs = crate::store::rocks_verify_logs(dir)?;
    let slots = SlotFile::open_read_only(dir)?;
    let witness = slots.witness();
    drop(slots);
    let store = RocksStore::open_read_only(dir)?;
    store.check_witness()?;
    let records = store.verify_all()?;
    let tables = store.live_sst_files()?.len();
    Ok(format!(
        "ok: {} — {records} records in {tables} tables, {logs} logs and the slot file \
         verified; writes up to {} present (witnessed: {})",
        dir.display(),
        store.latest_sequence_number(),
        witness.sequence
    ))
}
