//! The file-level audit: what every file of a data directory holds, including the old values
//! a log-structured store keeps after the hub overwrote or deleted them.
//!
//! A database open shows current records only; an attacker with the disk reads the files. So
//! this reads every write-ahead log with [`crate::store::wal`] and counts the values that are no
//! longer current, compares the SST files on disk with the ones the database still uses
//! (entries beyond one per live key are old versions or tombstones), and names every other
//! file and what it may contain.

use crate::store::slots::{SLOT_FILE, SlotFile};
use crate::store::wal;
use crate::store::{Cf, RocksStore, Store, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

/// The column family ids a MANIFEST assigns, read from its "add column family" edits: the tag
/// 200 (varint id) directly followed by tag 201 and the length-prefixed name.
fn family_ids(manifest: &[u8]) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    out.insert(0, "default".to_string());
    for cf in Cf::ALL {
        let name = cf.name().as_bytes();
        let mut needle = vec![0xC9, 0x01, name.len() as u8];
        needle.extend_from_slice(name);
        let mut from = 0;
        while let Some(pos) = manifest[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
        {
            from = pos + 1;
            // `C8 01 <varint id>` right before: a one- or two-byte id.
            for id_len in 1..=2 {
                let Some(start) = pos.checked_sub(2 + id_len) else {
                    continue;
                };
                if manifest[start..start + 2] == [0xC8, 0x01] {
                    let id_bytes = &manifest[start + 2..pos];
                    let id = id_bytes
                        .iter()
                        .rev()
                        .fold(0u32, |acc, b| (acc << 7) | u32::from(b & 0x7f));
                    if id_bytes.last().is_some_and(|b| b & 0x80 == 0) {
                        out.insert(id, cf.name().to_string());
                    }
                }
            }
        }
    }
    out
}

/// What one log holds that the database no longer does.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogHistory {
    /// Puts whose value is no longer the key's current value (overwritten or deleted since).
    pub stale_values: usize,
    /// All puts and deletes in the log.
    pub entries: usize,
}

/// The whole file-level picture of a directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileAudit {
    /// Old values still readable in write-ahead logs, per column family name.
    pub log_stale: BTreeMap<String, usize>,
    /// Entries in live SST files beyond one per current key (old versions and tombstones).
    pub sst_stale: BTreeMap<String, u64>,
    /// SST files on disk that the database no longer uses (deleted later, or leftovers).
    pub orphan_ssts: Vec<String>,
    /// The report, one line per file.
    pub text: String,
}

impl FileAudit {
    /// Old values anywhere in the files: what the "deleted means gone" bound must bring to 0.
    pub fn stale_total(&self) -> u64 {
        self.log_stale.values().map(|n| *n as u64).sum::<u64>()
            + self.sst_stale.values().sum::<u64>()
            + self.orphan_ssts.len() as u64
    }
}

fn describe(name: &str) -> &'static str {
    if name.ends_with(".log") {
        "write-ahead log: every write since the last flush, old values included"
    } else if name.ends_with(".sst") {
        "table file"
    } else if name.starts_with("MANIFEST") {
        "MANIFEST: file list with each table's smallest and largest key"
    } else if name.starts_with("OPTIONS") {
        "RocksDB options (no records)"
    } else if name.starts_with("LOG") {
        "RocksDB info log: file numbers, sizes, timings (no records)"
    } else if name == SLOT_FILE {
        "erasable slot file: current queue ratchets only, overwritten in place"
    } else if name == "CURRENT" || name == "IDENTITY" || name == "LOCK" {
        "RocksDB bookkeeping (no records)"
    } else {
        "not written by the hub"
    }
}

/// Audits every file of `dir` against the database's current contents (read-only; the hub
/// may be running, in which case the picture is as of opening).
pub fn audit(dir: &Path) -> Result<FileAudit, StoreError> {
    let store = RocksStore::open_read_only(dir)?;
    let live: HashSet<(Cf, Vec<u8>, Vec<u8>)> = store.dump()?.into_iter().collect();
    let mut live_keys: HashMap<Cf, usize> = HashMap::new();
    for (cf, _, _) in &live {
        *live_keys.entry(*cf).or_default() += 1;
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(StoreError::backend)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let manifest: Vec<u8> = names
        .iter()
        .filter(|n| n.starts_with("MANIFEST"))
        .filter_map(|n| std::fs::read(dir.join(n)).ok())
        .flatten()
        .collect();
    let ids = family_ids(&manifest);
    let by_name: HashMap<&str, Cf> = Cf::ALL.iter().map(|cf| (cf.name(), *cf)).collect();
    let live_ssts = store.live_sst_files()?;
    let mut out = FileAudit::default();
    let mut text = String::new();
    let _ = writeln!(text, "== files of {}", dir.display());
    for name in &names {
        let path = dir.join(name);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut line = format!("  {name}  {size} bytes  {}", describe(name));
        if name.ends_with(".log") {
            let bytes = std::fs::read(&path).map_err(StoreError::backend)?;
            let contents = wal::read(&bytes);
            let mut stale = 0;
            for e in &contents.entries {
                let family = ids
                    .get(&e.cf_id)
                    .cloned()
                    .unwrap_or_else(|| format!("cf#{}", e.cf_id));
                if let (Some(value), Some(cf)) = (&e.value, by_name.get(family.as_str()))
                    && !live.contains(&(*cf, e.key.clone(), value.clone()))
                {
                    *out.log_stale.entry(family).or_default() += 1;
                    stale += 1;
                }
            }
            let _ = write!(
                line,
                ": {} batches, {} entries, {stale} old values{}",
                contents.batches,
                contents.entries.len(),
                if contents.undecoded > 0 {
                    format!(", {} undecoded records", contents.undecoded)
                } else {
                    String::new()
                }
            );
        } else if name.ends_with(".sst") {
            match live_ssts.iter().find(|f| f.name == *name) {
                Some(f) => {
                    let _ = write!(
                        line,
                        ": {}, level {}, {} entries ({} deletions)",
                        f.family, f.level, f.entries, f.deletions
                    );
                }
                None => {
                    let _ = write!(line, ": no longer used by the database (old contents)");
                    out.orphan_ssts.push(name.clone());
                }
            }
        } else if name == SLOT_FILE {
            let slots = SlotFile::open_read_only(dir)?;
            let _ = write!(line, ": {} slots in use", slots.len());
        }
        let _ = writeln!(text, "{line}");
    }
    // Per family: entries in its SST files beyond its current keys.
    let mut sst_entries: BTreeMap<String, u64> = BTreeMap::new();
    for f in &live_ssts {
        *sst_entries.entry(f.family.clone()).or_default() += f.entries;
    }
    for (family, entries) in sst_entries {
        let current = by_name
            .get(family.as_str())
            .and_then(|cf| live_keys.get(cf))
            .copied()
            .unwrap_or(0) as u64;
        if entries > current {
            out.sst_stale.insert(family, entries - current);
        }
    }
    let _ = writeln!(
        text,
        "== old values in files: {} in logs, {} in tables, {} unused tables",
        out.log_stale.values().sum::<usize>(),
        out.sst_stale.values().sum::<u64>(),
        out.orphan_ssts.len()
    );
    for (family, n) in &out.log_stale {
        let _ = writeln!(text, "  log   {family}: {n}");
    }
    for (family, n) in &out.sst_stale {
        let _ = writeln!(text, "  table {family}: {n}");
    }
    out.text = text;
    Ok(out)
}
