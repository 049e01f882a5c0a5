//! RocksDB implementation of [`Store`], with erasable families in the [`SlotFile`].
//!
//! Two promises shape the options. *Acknowledged means durable*: every batch is fsynced before
//! `write` returns, and at open a database that lacks acknowledged writes (a damaged or cut
//! log or MANIFEST) is refused instead of served. *Deleted means gone from the files*: erasable
//! values never enter the LSM, and [`Store::scrub`] flushes and fully compacts every family
//! written since the last scrub, so the write-ahead log and SST files hold no older version of
//! any key afterwards (bound and costs in `spec-notes/metadata.md`).

use super::slots::SlotFile;
use super::{Batch, Cf, CfEntry, Entry, Op, ScrubReport, Statistic, Store, StoreError};
use rocksdb::{
    BottommostLevelCompaction, ColumnFamilyDescriptor, CompactOptions, DB, DBRecoveryMode,
    FlushOptions, IteratorMode, Options, WriteBatch, WriteOptions,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// One RocksDB database with a column family per non-erasable [`Cf`], and the slot file for
/// the erasable ones.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    slots: SlotFile,
    sync: bool,
    /// One bit per [`Cf::ALL`] index: families written since the last scrub.
    dirty: AtomicU32,
    /// Serialises scrubs (the periodic one and the one at shutdown).
    scrubbing: Mutex<()>,
}

/// Verifies the checksum of every record in every write-ahead log of `dir` (RocksDB itself
/// reports a damaged log without naming it, and silently accepts some damage near the end).
pub fn verify_logs(dir: &Path) -> Result<usize, StoreError> {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0); // a new directory
    };
    for entry in entries {
        let path = entry.map_err(StoreError::backend)?.path();
        if path.extension().is_some_and(|x| x == "log") {
            let bytes = std::fs::read(&path).map_err(StoreError::backend)?;
            super::wal::verify(&bytes).map_err(|damage| StoreError::Corrupt {
                record: "write-ahead log",
                reason: format!("{}: {damage}", path.display()),
            })?;
            n += 1;
        }
    }
    Ok(n)
}

/// The highest-numbered write-ahead log of `dir`, as (file name, length).
fn newest_log(dir: &Path) -> Option<(String, u64)> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .max_by_key(|e| e.file_name())
        .map(|e| {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), len)
        })
}

/// The MANIFEST that `CURRENT` names, as (file number, length).
fn manifest_position(dir: &Path) -> Option<(u64, u64)> {
    let current = std::fs::read_to_string(dir.join("CURRENT")).ok()?;
    let name = current.trim();
    let number = name.strip_prefix("MANIFEST-")?.parse().ok()?;
    let len = std::fs::metadata(dir.join(name)).ok()?.len();
    Some((number, len))
}

/// One SST file the database uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSst {
    /// File name inside the data directory.
    pub name: String,
    /// Its column family.
    pub family: String,
    /// LSM level.
    pub level: i32,
    /// Entries it holds (every version and tombstone counts).
    pub entries: u64,
    /// Of those, deletions.
    pub deletions: u64,
}

/// The column families kept in RocksDB.
fn lsm_families() -> impl Iterator<Item = Cf> {
    Cf::ALL.into_iter().filter(|cf| !cf.is_erasable())
}

fn bit(cf: Cf) -> u32 {
    1 << Cf::ALL.iter().position(|c| *c == cf).unwrap_or(0)
}

/// The slot-file key of an erasable record: its family's index, then its key, so two erasable
/// families never share a slot.
fn slot_key(cf: Cf, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(Cf::ALL.iter().position(|c| *c == cf).unwrap_or(0) as u8);
    k.extend_from_slice(key);
    k
}

/// Options every open shares: refuse, never repair silently. A record whose checksum fails
/// anywhere in the log stops recovery with an error; only a log cut short inside its last
/// record (a crash mid-write, of a write never acknowledged) is accepted. What RocksDB cannot
/// see — a log or MANIFEST losing whole records — the slot file's witness catches.
fn db_options() -> Options {
    let mut opts = Options::default();
    opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    opts.set_paranoid_checks(true);
    // A closed log that is missing or shorter than when it was synced fails the open.
    opts.set_track_and_verify_wals_in_manifest(true);
    // A MANIFEST lists every SST file's smallest and largest key; roll it often so that the
    // keys of deleted records do not linger in its history.
    opts.set_max_manifest_file_size(64 << 10);
    opts
}

/// Fails if the MANIFEST that `CURRENT` names is older or shorter than the one the slot file
/// witnessed at the last scrub.
fn check_manifest(path: &Path, slots: &SlotFile) -> Result<(), StoreError> {
    let refuse = |what: String| StoreError::Corrupt {
        record: "data directory",
        reason: format!(
            "{what} (witnessed in {}); restore the directory from a backup",
            slots.path().display()
        ),
    };
    let (number, len) = slots.witness().manifest;
    if number == 0 {
        return Ok(());
    }
    match manifest_position(path) {
        Some((n, l)) if n > number || (n == number && l >= len) => Ok(()),
        Some((n, l)) => Err(refuse(format!(
            "{} is MANIFEST-{n:06} of {l} bytes, but the last scrub saw MANIFEST-{number:06} \
             at {len} bytes: it was cut or replaced",
            path.display()
        ))),
        None => Err(refuse(format!(
            "{} has no readable MANIFEST named by CURRENT",
            path.display()
        ))),
    }
}

impl RocksStore {
    /// Opens (creating if needed) the database at `path`. With `sync`, every batch is fsynced
    /// before `write` returns, so an acknowledged request survives power loss.
    ///
    /// Refused with [`StoreError::Corrupt`] when the database ends before the last write the
    /// slot file witnessed as acknowledged, or when either is damaged.
    pub fn open(path: &Path, sync: bool) -> Result<Self, StoreError> {
        verify_logs(path)?;
        if path.join("CURRENT").exists() {
            // Check before a writable open: that open deletes every SST file a (possibly cut)
            // MANIFEST does not list, destroying what a restore could still have used. The
            // MANIFEST first, on its own: RocksDB may refuse a cut one with an error about
            // whatever it then misses (a log), without naming the MANIFEST.
            check_manifest(path, &SlotFile::open_read_only(path)?)?;
            Self::open_read_only(path)?.check_witness()?;
        }
        let mut opts = db_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs =
            lsm_families().map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(StoreError::backend)?;
        let slots = SlotFile::open(path)?;
        let store = Self {
            db,
            path: path.to_path_buf(),
            slots,
            sync,
            // The first scrub covers every family: history may predate this process.
            dirty: AtomicU32::new(u32::MAX),
            scrubbing: Mutex::new(()),
        };
        store.check_witness()?;
        Ok(store)
    }

    /// Opens a database read-only, even while a hub process has it open (audit, tests). It sees
    /// the state as of opening, including the write-ahead log. A column family that a newer
    /// version added and this database does not have yet reads as empty.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let existing = DB::list_cf(&Options::default(), path).map_err(StoreError::backend)?;
        let names = lsm_families()
            .map(|cf| cf.name())
            .filter(|name| existing.iter().any(|e| e == name));
        let names: Vec<&str> = names.collect();
        // A running hub's flush or compaction may delete a log or table file between our
        // reading the MANIFEST and opening the file: read the (newer) MANIFEST again. In a
        // stopped directory the same error persists and is returned.
        let mut attempt = 0;
        let db = loop {
            match DB::open_cf_for_read_only(&db_options(), path, names.iter().copied(), false) {
                Ok(db) => break db,
                Err(e)
                    if attempt < 20
                        && (e.to_string().contains("No such file")
                            || e.to_string().contains("Missing WAL")) =>
                {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                Err(e) => return Err(StoreError::backend(e)),
            }
        };
        let slots = SlotFile::open_read_only(path)?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
            slots,
            sync: false,
            dirty: AtomicU32::new(0),
            scrubbing: Mutex::new(()),
        })
    }

    /// Fails if the database is older than what the slot file witnessed: fewer writes than
    /// were acknowledged, or a MANIFEST shorter or older than at the last scrub.
    pub fn check_witness(&self) -> Result<(), StoreError> {
        let (latest, witness) = (self.db.latest_sequence_number(), self.slots.witness());
        let refuse = |what: String| StoreError::Corrupt {
            record: "data directory",
            reason: format!(
                "{what} (witnessed in {}); restore the directory from a backup",
                self.slots.path().display()
            ),
        };
        if latest < witness.sequence {
            let newest = newest_log(&self.path)
                .map(|(name, len)| format!(" (the newest log, {name}, holds {len} bytes)"))
                .unwrap_or_else(|| " (there is no log file)".into());
            return Err(refuse(format!(
                "the database ends at write {latest}, but writes up to {} were acknowledged: \
                 a write-ahead log or the MANIFEST in {} was lost, truncated or replaced{newest}",
                witness.sequence,
                self.path.display()
            )));
        }
        check_manifest(&self.path, &self.slots)
    }

    /// The latest sequence number (writes applied so far).
    pub fn latest_sequence_number(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// The SST files RocksDB's current version refers to: what should exist, to compare with
    /// what the directory holds.
    pub fn live_sst_files(&self) -> Result<Vec<LiveSst>, StoreError> {
        Ok(self
            .db
            .live_files()
            .map_err(StoreError::backend)?
            .into_iter()
            .map(|f| LiveSst {
                name: f.name.trim_start_matches('/').to_string(),
                family: f.column_family_name,
                level: f.level,
                entries: f.num_entries,
                deletions: f.num_deletions,
            })
            .collect())
    }

    /// Reads every entry of every family with block checksums verified (`ds-rm check`): a
    /// damaged SST file fails here, naming the backend's reason.
    pub fn verify_all(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for cf in lsm_families() {
            let Some(handle) = self.handle_if_present(cf) else {
                continue;
            };
            let mut ro = rocksdb::ReadOptions::default();
            ro.set_verify_checksums(true);
            for item in self.db.iterator_cf_opt(handle, ro, IteratorMode::Start) {
                item.map_err(StoreError::backend)?;
                n += 1;
            }
        }
        Ok(n + self.slots.len())
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
        if cf.is_erasable() {
            return self.slots.get(&slot_key(cf, key));
        }
        let Some(handle) = self.handle_if_present(cf) else {
            return Ok(None);
        };
        self.db.get_cf(handle, key).map_err(StoreError::backend)
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        if cf.is_erasable() {
            let full = slot_key(cf, prefix);
            for (k, v) in self.slots.entries()? {
                if out.len() >= limit {
                    break;
                }
                if k.starts_with(&full) {
                    out.push((k[1..].to_vec(), v));
                }
            }
            return Ok(out);
        }
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

    /// Order matters for crash safety: erasable values are written (and synced) first, then
    /// the RocksDB batch, then erasable deletions. A crash between leaves at worst a ratchet
    /// ahead of its queue (a gap the client steps over: the message was never acknowledged) or
    /// a slot whose record is gone (swept at the next start), never a record without its slot.
    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let mut wb = WriteBatch::default();
        let mut erasable: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let mut dirty = 0;
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) if cf.is_erasable() => {
                    erasable.insert(slot_key(cf, &k), Some(v));
                }
                Op::Delete(cf, k) if cf.is_erasable() => {
                    erasable.insert(slot_key(cf, &k), None);
                }
                Op::Put(cf, k, v) => {
                    wb.put_cf(self.handle(cf)?, k, v);
                    dirty |= bit(cf);
                }
                Op::Delete(cf, k) => {
                    wb.delete_cf(self.handle(cf)?, k);
                    dirty |= bit(cf);
                }
            }
        }
        let puts: Vec<(&[u8], &[u8])> = erasable
            .iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k.as_slice(), v)))
            .collect();
        if !puts.is_empty() {
            // Every write up to the current sequence number was acknowledged durable.
            let witness = self.sync.then(|| self.db.latest_sequence_number());
            self.slots.put_all(&puts, witness, self.sync)?;
        }
        if !wb.is_empty() {
            let mut wo = WriteOptions::default();
            wo.set_sync(self.sync);
            self.db.write_opt(wb, &wo).map_err(StoreError::backend)?;
            self.dirty.fetch_or(dirty, Ordering::AcqRel);
        }
        let deletes: Vec<&[u8]> = erasable
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.as_slice())
            .collect();
        if !deletes.is_empty() {
            self.slots.erase_all(&deletes, self.sync)?;
        }
        Ok(())
    }

    fn dump(&self) -> Result<Vec<CfEntry>, StoreError> {
        let mut out = Vec::new();
        for cf in Cf::ALL {
            if cf.is_erasable() {
                for (k, v) in self.scan_prefix(cf, b"", usize::MAX)? {
                    out.push((cf, k, v));
                }
                continue;
            }
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

    /// Flushes the families written since the last scrub (their log becomes obsolete and is
    /// deleted) and compacts each to a single bottommost run, which keeps exactly one version
    /// of every live key and none of a deleted one. Then the slot file witnesses the covered
    /// sequence number.
    fn scrub(&self) -> Result<ScrubReport, StoreError> {
        let _one = self.scrubbing.lock().unwrap_or_else(|p| p.into_inner());
        let dirty = self.dirty.swap(0, Ordering::AcqRel);
        if dirty == 0 {
            return Ok(ScrubReport {
                families: 0,
                sequence: self.db.latest_sequence_number(),
            });
        }
        let sequence = self.db.latest_sequence_number();
        let families: Vec<Cf> = lsm_families().filter(|cf| dirty & bit(*cf) != 0).collect();
        let handles = families
            .iter()
            .map(|cf| self.handle(*cf))
            .collect::<Result<Vec<_>, _>>()?;
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        if let Err(e) = self.db.flush_cfs_opt(&handles, &fo) {
            // Try again next time.
            self.dirty.fetch_or(dirty, Ordering::AcqRel);
            return Err(StoreError::backend(e));
        }
        let mut co = CompactOptions::default();
        co.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        for handle in &handles {
            self.db
                .compact_range_cf_opt(*handle, None::<&[u8]>, None::<&[u8]>, &co);
        }
        if self.sync {
            self.slots
                .set_witness(sequence, manifest_position(&self.path))?;
        }
        Ok(ScrubReport {
            families: families.len(),
            sequence,
        })
    }

    /// RocksDB's own figures per family (`rocksdb.estimate-num-keys` and friends; the key count
    /// is an estimate that counts deletions until compaction), and the slot count of the
    /// erasable family.
    fn statistics(&self) -> Vec<Statistic> {
        const PROPERTIES: [(&str, &str); 4] = [
            ("keys", "rocksdb.estimate-num-keys"),
            ("sst_bytes", "rocksdb.total-sst-files-size"),
            ("memtable_bytes", "rocksdb.cur-size-all-mem-tables"),
            (
                "pending_compaction_bytes",
                "rocksdb.estimate-pending-compaction-bytes",
            ),
        ];
        let mut out = Vec::new();
        for cf in lsm_families() {
            let Some(handle) = self.handle_if_present(cf) else {
                continue;
            };
            for (name, property) in PROPERTIES {
                if let Ok(Some(value)) = self.db.property_int_value_cf(handle, property) {
                    out.push(Statistic { name, cf, value });
                }
            }
        }
        for cf in Cf::ALL.into_iter().filter(|cf| cf.is_erasable()) {
            out.push(Statistic {
                name: "keys",
                cf,
                value: self.slots.len() as u64,
            });
        }
        out
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
            let older = lsm_families()
                .filter(|cf| *cf != Cf::FedPeerKeys)
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

    fn put(store: &RocksStore, cf: Cf, key: &[u8], value: &[u8]) {
        store
            .write(Batch {
                ops: vec![Op::Put(cf, key.to_vec(), value.to_vec())],
            })
            .unwrap();
    }

    /// Every file of the directory, concatenated: what an attacker with the disk reads.
    fn all_bytes(dir: &Path, except: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if Some(e.file_name().to_string_lossy().as_ref()) == except {
                continue;
            }
            out.extend(std::fs::read(e.path()).unwrap());
        }
        out
    }

    fn found(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// Random-looking 40-byte values, each distinct (compression cannot hide them).
    fn value(i: u32) -> Vec<u8> {
        use sha2::Digest;
        let mut v = sha2::Sha256::digest(i.to_be_bytes()).to_vec();
        v.extend_from_slice(&i.to_be_bytes());
        v.extend_from_slice(&[0xEE; 4]);
        v
    }

    /// The ratchet family never reaches RocksDB's files: 50 overwrites leave only the current
    /// value, in the slot file. The same writes to an ordinary family stay in the log until a
    /// scrub, which leaves exactly the current value (the positive control for the search).
    #[test]
    fn erasable_values_never_reach_the_lsm_and_a_scrub_drops_old_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), true).unwrap();
        for i in 0..50 {
            put(&store, Cf::QsRatchets, b"client", &value(i));
            put(&store, Cf::QsClients, b"client", &value(1000 + i));
        }
        put(&store, Cf::QsQueues, b"gone", &value(5000));
        store
            .write(Batch {
                ops: vec![Op::Delete(Cf::QsQueues, b"gone".to_vec())],
            })
            .unwrap();
        let files = all_bytes(dir.path(), None);
        assert!(
            found(&files, &value(1000)),
            "positive control: the log keeps old values"
        );
        assert!(found(&files, &value(5000)));
        assert!(
            crate::audit::files::audit(dir.path())
                .unwrap()
                .stale_total()
                >= 50
        );
        for i in 0..49 {
            assert!(!found(&files, &value(i)), "old ratchet {i} in the files");
        }
        assert!(found(&all_bytes(dir.path(), None), &value(49)));
        assert!(!found(
            &all_bytes(dir.path(), Some(crate::store::slots::SLOT_FILE)),
            &value(49)
        ));

        let report = store.scrub().unwrap();
        assert!(report.families >= 2, "{report:?}");
        let files = all_bytes(dir.path(), None);
        for i in 0..49 {
            assert!(
                !found(&files, &value(1000 + i)),
                "old client value {i} survived"
            );
        }
        assert!(!found(&files, &value(5000)), "deleted value survived");
        assert!(found(&files, &value(1049)));
        let audit = crate::audit::files::audit(dir.path()).unwrap();
        assert_eq!(audit.stale_total(), 0, "{}", audit.text);
        // Nothing written since: the next scrub has nothing to do.
        assert_eq!(store.scrub().unwrap().families, 0);
        assert_eq!(
            store.get(Cf::QsClients, b"client").unwrap(),
            Some(value(1049))
        );
        assert_eq!(
            store.get(Cf::QsRatchets, b"client").unwrap(),
            Some(value(49))
        );
    }

    /// The newest log cut to nothing loses acknowledged writes that RocksDB cannot notice; the
    /// slot file's witness does, and the directory is refused, unchanged.
    #[test]
    fn a_log_cut_to_nothing_is_refused_by_the_witness() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStore::open(dir.path(), true).unwrap();
            put(&store, Cf::PpSpent, b"nonce-1", b"");
            put(&store, Cf::QsRatchets, b"client", &value(1));
            put(&store, Cf::PpSpent, b"nonce-2", b"");
            put(&store, Cf::QsRatchets, b"client", &value(2));
        }
        // Positive control: an untouched copy opens, with the writes (a writable open flushes
        // the replayed log, so the copy is what is opened).
        let copy = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        }
        let reopened = RocksStore::open(copy.path(), true).unwrap();
        assert!(reopened.get(Cf::PpSpent, b"nonce-2").unwrap().is_some());
        drop(reopened);
        let log = dir.path().join(newest_log(dir.path()).unwrap().0);
        std::fs::write(&log, b"").unwrap();
        let before = all_bytes(dir.path(), None);
        let err = RocksStore::open(dir.path(), true).err().expect("refused");
        assert!(
            err.to_string().contains("acknowledged") && err.to_string().contains("erasable.slots"),
            "{err}"
        );
        assert!(crate::audit::check::check(dir.path()).is_err());
        assert_eq!(
            all_bytes(dir.path(), None),
            before,
            "a refused open changes nothing"
        );
    }

    /// A log damaged in the middle is refused at open, and the error names the log file.
    #[test]
    fn a_log_damaged_in_the_middle_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStore::open(dir.path(), true).unwrap();
            for i in 0..200 {
                put(&store, Cf::PpSpent, &value(i), b"");
            }
        }
        let log = dir.path().join(newest_log(dir.path()).unwrap().0);
        let mut b = std::fs::read(&log).unwrap();
        let mid = b.len() / 2;
        for x in &mut b[mid..mid + 64] {
            *x ^= 0xA5;
        }
        std::fs::write(&log, b).unwrap();
        let err = RocksStore::open(dir.path(), true)
            .err()
            .expect("refused")
            .to_string();
        let name = log.file_name().unwrap().to_string_lossy().into_owned();
        assert!(err.contains(&name), "{err}");
    }
}
