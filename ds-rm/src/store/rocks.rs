//! RocksDB implementation of [`Store`].

use super::{Batch, Cf, CfEntry, Entry, Op, Store, StoreError};
use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};
use std::path::Path;

/// One RocksDB database with a column family per [`Cf`].
pub struct RocksStore {
    db: DB,
    sync: bool,
}

impl RocksStore {
    /// Opens (creating if needed) the database at `path`. With `sync`, every batch is fsynced
    /// before `write` returns, so an acknowledged request survives power loss.
    pub fn open(path: &Path, sync: bool) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(StoreError::backend)?;
        Ok(Self { db, sync })
    }

    /// Opens a database read-only, even while a hub process has it open (audit, tests). It sees
    /// the state as of opening, including the write-ahead log. A column family that a newer
    /// version added and this database does not have yet reads as empty.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let existing = DB::list_cf(&Options::default(), path).map_err(StoreError::backend)?;
        let names = Cf::ALL
            .iter()
            .map(|cf| cf.name())
            .filter(|name| existing.iter().any(|e| e == name));
        let db = DB::open_cf_for_read_only(&Options::default(), path, names, false)
            .map_err(StoreError::backend)?;
        Ok(Self { db, sync: false })
    }

    fn handle(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(cf.name())
            .ok_or(StoreError::MissingCf(cf.name()))
    }

    /// Like [`Self::handle`], but `None` for a column family this (read-only, older) database
    /// does not have.
    fn handle_if_present(&self, cf: Cf) -> Option<&rocksdb::ColumnFamily> {
        self.db.cf_handle(cf.name())
    }
}

impl Store for RocksStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(handle) = self.handle_if_present(cf) else {
            return Ok(None);
        };
        self.db.get_cf(handle, key).map_err(StoreError::backend)
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        let Some(handle) = self.handle_if_present(cf) else {
            return Ok(out);
        };
        let iter = self.db.iterator_cf(
            handle,
            IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(StoreError::backend)?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.handle(cf)?, k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.handle(cf)?, k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        self.db.write_opt(wb, &wo).map_err(StoreError::backend)
    }

    fn dump(&self) -> Result<Vec<CfEntry>, StoreError> {
        let mut out = Vec::new();
        for cf in Cf::ALL {
            let Some(handle) = self.handle_if_present(cf) else {
                continue;
            };
            for item in self.db.iterator_cf(handle, IteratorMode::Start) {
                let (k, v) = item.map_err(StoreError::backend)?;
                out.push((cf, k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operator audits a data directory written before a column family existed: the audit
    /// reads it, the missing family as empty; opening it for writing adds the family.
    #[test]
    fn a_database_without_a_newer_column_family_opens_read_only_and_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let older = Cf::ALL
                .iter()
                .filter(|cf| **cf != Cf::FedPeerKeys)
                .map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default()));
            let db = DB::open_cf_descriptors(&opts, dir.path(), older).unwrap();
            let qs = db.cf_handle(Cf::QsClients.name()).unwrap();
            db.put_cf(qs, b"client", b"record").unwrap();
        }
        let old = RocksStore::open_read_only(dir.path()).unwrap();
        assert_eq!(
            old.dump().unwrap(),
            vec![(Cf::QsClients, b"client".to_vec(), b"record".to_vec())]
        );
        assert_eq!(old.get(Cf::FedPeerKeys, b"x").unwrap(), None);
        drop(old);
        let upgraded = RocksStore::open(dir.path(), false).unwrap();
        assert!(upgraded.handle(Cf::FedPeerKeys).is_ok());
    }
}
