//! The erasable slot file: secrets that must stop existing when the hub overwrites them.
//!
//! RocksDB never overwrites: a new value is appended to the write-ahead log and later to SST
//! files, and the old value survives there until a flush and compaction happen to drop it. For
//! the queue ratchet that history is fatal — every old ratchet state opens every message
//! enqueued after it. So the records of [`Cf::is_erasable`] column families live here instead:
//! one fixed-size slot per key in a small file, rewritten in place (`pwrite`) and `fdatasync`ed
//! before the request that changed it is acknowledged. An overwritten value is gone from the
//! file the moment the new one is written; a deleted one is zero-filled.
//!
//! Layout: slot 0 is the header (magic, version, slot size, the durability witnesses), every
//! further slot is all zeroes (free) or `1 ‖ key length ‖ key ‖ value length ‖ value ‖ zero
//! padding ‖ witnessed sequence number ‖ SHA-256 prefix`. Each write carries the witness in
//! the slot it writes anyway, so an enqueue dirties no second page for the header. A slot whose checksum fails is corruption, reported with the file
//! and slot number; it is never read as data.
//!
//! [`Cf::is_erasable`]: super::Cf::is_erasable

use super::FastMap;
use super::{Entry, StoreError};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use zeroize::Zeroizing;

/// File name of the slot file inside a data directory.
pub const SLOT_FILE: &str = "erasable.slots";
/// Bytes per slot: sector-aligned (512 / 128 = 4), so a slot write never straddles a sector.
pub const SLOT_LEN: usize = 128;
/// Longest key a slot holds.
pub const MAX_KEY: usize = 24;
/// Longest value a slot holds.
pub const MAX_VALUE: usize = WITNESS_AT - VALUE_AT;

const MAGIC: &[u8; 8] = b"MIMIRMSL";
const VERSION: u32 = 1;
const SUM_AT: usize = SLOT_LEN - 8;
const WITNESS_AT: usize = SUM_AT - 8;
const KEY_AT: usize = 2;
const VLEN_AT: usize = KEY_AT + MAX_KEY;
const VALUE_AT: usize = VLEN_AT + 1;

type Slot = [u8; SLOT_LEN];

fn checksum(slot: &Slot) -> [u8; 8] {
    let digest = Sha256::digest(&slot[..SUM_AT]);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn seal(mut slot: Slot) -> Slot {
    let sum = checksum(&slot);
    slot[SUM_AT..].copy_from_slice(&sum);
    slot
}

/// What the header witnesses about the database beside the slot file, so that losing part of
/// it is noticed at the next open.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Witness {
    /// A RocksDB sequence number below which every write had been acknowledged.
    pub sequence: u64,
    /// The MANIFEST file number and length as of the last scrub (0, 0: not recorded yet). The
    /// MANIFEST only grows until RocksDB replaces it with a higher-numbered one, so a shorter
    /// file under the same number, or a lower number, means it was cut or swapped.
    pub manifest: (u64, u64),
}

fn header(w: &Witness) -> Slot {
    let mut s = [0u8; SLOT_LEN];
    s[..8].copy_from_slice(MAGIC);
    s[8..12].copy_from_slice(&VERSION.to_be_bytes());
    s[12..16].copy_from_slice(&(SLOT_LEN as u32).to_be_bytes());
    s[16..24].copy_from_slice(&w.sequence.to_be_bytes());
    s[24..32].copy_from_slice(&w.manifest.0.to_be_bytes());
    s[32..40].copy_from_slice(&w.manifest.1.to_be_bytes());
    seal(s)
}

fn be64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_be_bytes(w)
}

fn entry(key: &[u8], value: &[u8], witness: u64) -> Result<Slot, StoreError> {
    if key.is_empty() || key.len() > MAX_KEY || value.len() > MAX_VALUE {
        return Err(StoreError::Oversize {
            cf: "erasable slot",
            len: key.len().max(value.len()),
            max: MAX_KEY.min(MAX_VALUE),
        });
    }
    let mut s = [0u8; SLOT_LEN];
    s[0] = 1;
    s[1] = key.len() as u8;
    s[KEY_AT..KEY_AT + key.len()].copy_from_slice(key);
    s[VLEN_AT] = value.len() as u8;
    s[VALUE_AT..VALUE_AT + value.len()].copy_from_slice(value);
    s[WITNESS_AT..SUM_AT].copy_from_slice(&witness.to_be_bytes());
    Ok(seal(s))
}

/// What one slot holds once its checksum and fields check out.
enum Decoded {
    Free,
    Used {
        key: Vec<u8>,
        value: Vec<u8>,
        witness: u64,
    },
}

fn decode(slot: &Slot) -> Result<Decoded, &'static str> {
    if slot.iter().all(|b| *b == 0) {
        return Ok(Decoded::Free);
    }
    if checksum(slot) != slot[SUM_AT..] {
        return Err("checksum mismatch");
    }
    let (klen, vlen) = (slot[1] as usize, slot[VLEN_AT] as usize);
    if slot[0] != 1 || klen == 0 || klen > MAX_KEY || vlen > MAX_VALUE {
        return Err("bad slot fields");
    }
    Ok(Decoded::Used {
        key: slot[KEY_AT..KEY_AT + klen].to_vec(),
        value: slot[VALUE_AT..VALUE_AT + vlen].to_vec(),
        witness: be64(&slot[WITNESS_AT..SUM_AT]),
    })
}

/// Every used slot of a raw copy of a slot file whose checksum holds, as (key, value): what
/// anyone holding the file reads, without the hub's index (audit, tests).
pub fn raw_entries(bytes: &[u8]) -> Vec<Entry> {
    bytes
        .chunks_exact(SLOT_LEN)
        .skip(1)
        .filter_map(|chunk| {
            let slot: &Slot = chunk.try_into().ok()?;
            match decode(slot) {
                Ok(Decoded::Used { key, value, .. }) => Some((key, value)),
                _ => None,
            }
        })
        .collect()
}

#[derive(Default)]
struct Index {
    by_key: FastMap<Vec<u8>, u64>,
    /// The file's contents, kept in step with every write, so a read costs no system call
    /// (a fan-out reads one ratchet per recipient). Empty for a read-only view, whose file
    /// another process may be writing. Wiped when dropped; the same bytes sit in the kernel's
    /// page cache anyway.
    image: Zeroizing<Vec<u8>>,
    /// Free slot numbers, lowest first, so the file stays as short as its live records allow.
    free: BTreeSet<u64>,
    /// Slots in the file, header included.
    slots: u64,
    witness: Witness,
}

impl Index {
    /// Puts what was just written to slot `n` into the in-memory image (growing it with the
    /// file).
    fn mirror(&mut self, n: u64, slot: &Slot) {
        let Ok(n) = usize::try_from(n) else {
            return;
        };
        let at = n * SLOT_LEN;
        let need = at + SLOT_LEN;
        if self.image.capacity() < need {
            // Grow into a new buffer and let the old one be wiped on drop: a reallocation
            // in place would free the old bytes unwiped.
            let mut bigger = Zeroizing::new(Vec::with_capacity(need.max(2 * self.image.len())));
            bigger.extend_from_slice(&self.image);
            self.image = bigger;
        }
        if self.image.len() < need {
            self.image.resize(need, 0);
        }
        self.image[at..at + SLOT_LEN].copy_from_slice(slot);
    }
}

/// The slot file of one data directory. All methods are safe to call from many threads; writes
/// of one key are serialised by the caller's locks (as for every other record).
pub struct SlotFile {
    path: PathBuf,
    /// `None` for a read-only view of a directory without a slot file (written before it
    /// existed): it reads as empty.
    file: Option<File>,
    read_only: bool,
    index: Mutex<Index>,
}

impl SlotFile {
    /// Opens `dir/erasable.slots`, creating it (and syncing the directory) when missing. Every
    /// slot is checked: a torn or altered slot, a duplicate key or a bad header is
    /// [`StoreError::Corrupt`] naming the file, so a damaged file never starts a hub.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(SLOT_FILE);
        let fresh = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StoreError::backend)?;
        if fresh {
            file.write_all_at(&header(&Witness::default()), 0)
                .map_err(StoreError::backend)?;
            file.sync_all().map_err(StoreError::backend)?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(StoreError::backend)?;
        }
        let mut index = Self::load(&path, &file)?;
        index.image = Self::read_all(&file)?;
        Ok(Self {
            path,
            file: Some(file),
            read_only: false,
            index: Mutex::new(index),
        })
    }

    /// Opens the slot file for reading only (audit, check), while a hub may be writing it. A
    /// missing file reads as empty. The same checks as [`Self::open`] apply.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(SLOT_FILE);
        let (file, index) = if path.exists() {
            let file = File::open(&path).map_err(StoreError::backend)?;
            // A running hub may be rewriting a slot while we read it: a checksum failure is
            // only corruption if it persists.
            let mut attempt = 0;
            let index = loop {
                match Self::load(&path, &file) {
                    Ok(index) => break index,
                    Err(_) if attempt < 5 => {
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => return Err(e),
                }
            };
            (Some(file), index)
        } else {
            (None, Index::default())
        };
        Ok(Self {
            path,
            file,
            read_only: true,
            index: Mutex::new(index),
        })
    }

    fn writable(&self) -> Result<&File, StoreError> {
        match (&self.file, self.read_only) {
            (Some(f), false) => Ok(f),
            _ => Err(StoreError::backend(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "slot file opened read-only",
            ))),
        }
    }

    fn corrupt(path: &Path, what: String) -> StoreError {
        StoreError::Corrupt {
            record: "erasable slot file",
            reason: format!("{}: {what}", path.display()),
        }
    }

    fn read_all(file: &File) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let len = file.metadata().map_err(StoreError::backend)?.len();
        let mut bytes = Zeroizing::new(vec![
            0u8;
            usize::try_from(len).map_err(StoreError::backend)?
        ]);
        file.read_exact_at(&mut bytes, 0)
            .map_err(StoreError::backend)?;
        Ok(bytes)
    }

    fn load(path: &Path, file: &File) -> Result<Index, StoreError> {
        let bytes = Self::read_all(file)?;
        if bytes.len() < SLOT_LEN || bytes.len() % SLOT_LEN != 0 {
            return Err(Self::corrupt(
                path,
                format!("length {} is not a whole number of slots", bytes.len()),
            ));
        }
        let mut index = Index::default();
        for (n, chunk) in bytes.chunks_exact(SLOT_LEN).enumerate() {
            let slot: &Slot = chunk
                .try_into()
                .map_err(|_| Self::corrupt(path, format!("slot {n} is short")))?;
            let n = n as u64;
            if n == 0 {
                if slot[..8] != MAGIC[..]
                    || slot[8..12] != VERSION.to_be_bytes()
                    || slot[12..16] != (SLOT_LEN as u32).to_be_bytes()
                    || checksum(slot) != slot[SUM_AT..]
                {
                    return Err(Self::corrupt(path, "bad header".into()));
                }
                index.witness = Witness {
                    sequence: be64(&slot[16..24]),
                    manifest: (be64(&slot[24..32]), be64(&slot[32..40])),
                };
                continue;
            }
            match decode(slot).map_err(|e| Self::corrupt(path, format!("slot {n}: {e}")))? {
                Decoded::Free => {
                    index.free.insert(n);
                }
                Decoded::Used { key, witness, .. } => {
                    index.witness.sequence = index.witness.sequence.max(witness);
                    if index.by_key.insert(key, n).is_some() {
                        return Err(Self::corrupt(path, format!("slot {n}: duplicate key")));
                    }
                }
            }
        }
        index.slots = (bytes.len() / SLOT_LEN) as u64;
        Ok(index)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // Every mutation of the index is completed before any fallible step, so a panic in
        // another thread cannot leave it half-updated.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_slot(&self, n: u64) -> Result<Slot, StoreError> {
        let mut slot = [0u8; SLOT_LEN];
        if !self.read_only {
            let index = self.index();
            let at = usize::try_from(n).map_err(StoreError::backend)? * SLOT_LEN;
            return match index.image.get(at..at + SLOT_LEN) {
                Some(bytes) => {
                    slot.copy_from_slice(bytes);
                    Ok(slot)
                }
                None => Err(Self::corrupt(
                    &self.path,
                    format!("slot {n} beyond the file"),
                )),
            };
        }
        let Some(file) = &self.file else {
            return Err(Self::corrupt(
                &self.path,
                format!("slot {n} read without a file"),
            ));
        };
        file.read_exact_at(&mut slot, n * SLOT_LEN as u64)
            .map_err(StoreError::backend)?;
        Ok(slot)
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(n) = self.index().by_key.get(key).copied() else {
            return Ok(None);
        };
        match decode(&self.read_slot(n)?)
            .map_err(|e| Self::corrupt(&self.path, format!("slot {n}: {e}")))?
        {
            Decoded::Used { key: k, value, .. } if k == key => Ok(Some(value)),
            _ => Err(Self::corrupt(
                &self.path,
                format!("slot {n} no longer holds its key"),
            )),
        }
    }

    /// Every key and value, in key order.
    pub fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        let mut keys: Vec<Vec<u8>> = self.index().by_key.keys().cloned().collect();
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(v) = self.get(&k)? {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    /// Writes every `(key, value)` in place (a new key takes the lowest free slot) and, with
    /// `sync`, makes them durable before returning. `witness`, when given, is recorded in the
    /// written slots (see [`Self::witness`]); the recorded witness never decreases.
    pub fn put_all(
        &self,
        puts: &[(&[u8], &[u8])],
        witness: Option<u64>,
        sync: bool,
    ) -> Result<(), StoreError> {
        let file = self.writable()?;
        {
            let mut index = self.index();
            if let Some(w) = witness {
                index.witness.sequence = index.witness.sequence.max(w);
            }
            let stamp = index.witness.sequence;
            let slots: Vec<Slot> = puts
                .iter()
                .map(|(k, v)| entry(k, v, stamp))
                .collect::<Result<_, _>>()?;
            for ((key, _), slot) in puts.iter().zip(&slots) {
                let n = match index.by_key.get(*key) {
                    Some(n) => *n,
                    None => {
                        let n = match index.free.pop_first() {
                            Some(n) => n,
                            None => {
                                index.slots += 1;
                                index.slots - 1
                            }
                        };
                        index.by_key.insert(key.to_vec(), n);
                        n
                    }
                };
                file.write_all_at(slot, n * SLOT_LEN as u64)
                    .map_err(StoreError::backend)?;
                index.mirror(n, slot);
            }
        }
        if sync {
            file.sync_data().map_err(StoreError::backend)?;
        }
        Ok(())
    }

    /// Zero-fills the slots of `keys` (absent keys are ignored) and, with `sync`, makes that
    /// durable: from then on the values exist nowhere in the file.
    pub fn erase_all(&self, keys: &[&[u8]], sync: bool) -> Result<(), StoreError> {
        let file = self.writable()?;
        let mut erased = false;
        {
            let mut index = self.index();
            for key in keys {
                if let Some(n) = index.by_key.remove(*key) {
                    file.write_all_at(&[0u8; SLOT_LEN], n * SLOT_LEN as u64)
                        .map_err(StoreError::backend)?;
                    index.mirror(n, &[0u8; SLOT_LEN]);
                    index.free.insert(n);
                    erased = true;
                }
            }
            if erased {
                // The erased slots may have held the highest witness: keep it in the header.
                let head = header(&index.witness);
                file.write_all_at(&head, 0).map_err(StoreError::backend)?;
                index.mirror(0, &head);
            }
        }
        if sync && erased {
            file.sync_data().map_err(StoreError::backend)?;
        }
        Ok(())
    }

    /// The durability witness (see [`Witness`]). A database that opens with a lower latest
    /// sequence number, or a shorter or older MANIFEST, lost acknowledged writes.
    pub fn witness(&self) -> Witness {
        self.index().witness
    }

    /// Records a scrub's witness — the sequence number (ignored if not higher) and the
    /// MANIFEST position — and syncs it.
    pub fn set_witness(
        &self,
        sequence: u64,
        manifest: Option<(u64, u64)>,
    ) -> Result<(), StoreError> {
        let file = self.writable()?;
        {
            let mut index = self.index();
            index.witness.sequence = index.witness.sequence.max(sequence);
            if let Some(m) = manifest {
                index.witness.manifest = m;
            }
            let head = header(&index.witness);
            file.write_all_at(&head, 0).map_err(StoreError::backend)?;
            index.mirror(0, &head);
        }
        file.sync_data().map_err(StoreError::backend)
    }

    /// Number of slots holding a value.
    pub fn len(&self) -> usize {
        self.index().by_key.len()
    }

    /// Whether no slot holds a value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Path of the file (for messages and the file audit).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(dir: &Path) -> Vec<u8> {
        std::fs::read(dir.join(SLOT_FILE)).unwrap()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// An overwritten or deleted value is gone from the file's bytes, not only from the index.
    #[test]
    fn overwritten_and_erased_values_leave_no_bytes_behind() {
        let dir = tempfile::tempdir().unwrap();
        let slots = SlotFile::open(dir.path()).unwrap();
        let (old, new, other) = ([0xA1u8; 40], [0xB2u8; 40], [0xC3u8; 40]);
        slots
            .put_all(&[(b"client-1", &old), (b"client-2", &other)], None, true)
            .unwrap();
        assert!(contains(&raw(dir.path()), &old), "positive control");
        slots.put_all(&[(b"client-1", &new)], None, true).unwrap();
        let bytes = raw(dir.path());
        assert!(!contains(&bytes, &old));
        assert!(contains(&bytes, &new));
        assert_eq!(slots.get(b"client-1").unwrap().unwrap(), new);
        slots.erase_all(&[b"client-2"], true).unwrap();
        assert!(!contains(&raw(dir.path()), &other));
        assert_eq!(slots.get(b"client-2").unwrap(), None);
        // The freed slot is reused, so the file does not grow with churn.
        let len = raw(dir.path()).len();
        slots.put_all(&[(b"client-3", &other)], None, true).unwrap();
        assert_eq!(raw(dir.path()).len(), len);
        drop(slots);
        let reopened = SlotFile::open(dir.path()).unwrap();
        assert_eq!(
            reopened.entries().unwrap(),
            vec![
                (b"client-1".to_vec(), new.to_vec()),
                (b"client-3".to_vec(), other.to_vec())
            ]
        );
    }

    #[test]
    fn the_witness_survives_a_reopen_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let slots = SlotFile::open(dir.path()).unwrap();
        slots.set_witness(42, Some((5, 900))).unwrap();
        slots.set_witness(7, None).unwrap();
        slots.put_all(&[(b"k", b"v")], Some(9), true).unwrap();
        slots.put_all(&[(b"k2", b"v")], Some(50), true).unwrap();
        drop(slots);
        let want = Witness {
            sequence: 50,
            manifest: (5, 900),
        };
        assert_eq!(SlotFile::open(dir.path()).unwrap().witness(), want);
        // Erasing the slot that carried the highest witness keeps it (in the header).
        let slots = SlotFile::open(dir.path()).unwrap();
        slots.erase_all(&[b"k2"], true).unwrap();
        drop(slots);
        assert_eq!(SlotFile::open(dir.path()).unwrap().witness(), want);
    }

    /// Every kind of damage is refused at open with the file named, never read as data.
    #[test]
    fn a_damaged_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let slots = SlotFile::open(dir.path()).unwrap();
        slots
            .put_all(&[(b"k1", &[1; 40]), (b"k2", &[2; 40])], None, true)
            .unwrap();
        drop(slots);
        let good = raw(dir.path());
        let path = dir.path().join(SLOT_FILE);
        let damage: Vec<(&str, Vec<u8>)> = vec![
            ("flipped value byte", {
                let mut b = good.clone();
                b[SLOT_LEN + VALUE_AT] ^= 0x40;
                b
            }),
            ("truncated mid-slot", good[..good.len() - 5].to_vec()),
            ("bad header", {
                let mut b = good.clone();
                b[0] ^= 1;
                b
            }),
            ("duplicate key", {
                let mut b = good.clone();
                let first = b[SLOT_LEN..2 * SLOT_LEN].to_vec();
                b[2 * SLOT_LEN..3 * SLOT_LEN].copy_from_slice(&first);
                b
            }),
            ("empty", Vec::new()),
        ];
        for (what, bytes) in damage {
            std::fs::write(&path, &bytes).unwrap();
            let err = SlotFile::open(dir.path()).err().expect(what);
            assert!(
                matches!(&err, StoreError::Corrupt { reason, .. } if reason.contains(SLOT_FILE)),
                "{what}: {err}"
            );
        }
        std::fs::write(&path, &good).unwrap();
        assert_eq!(SlotFile::open(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn oversized_keys_and_values_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let slots = SlotFile::open(dir.path()).unwrap();
        let before = raw(dir.path());
        for (k, v) in [
            (vec![1u8; MAX_KEY + 1], vec![0u8; 4]),
            (vec![1u8; 4], vec![0u8; MAX_VALUE + 1]),
            (Vec::new(), vec![0u8; 4]),
        ] {
            assert!(matches!(
                slots.put_all(&[(&k, &v)], None, true),
                Err(StoreError::Oversize { .. })
            ));
        }
        assert_eq!(raw(dir.path()), before);
    }
}
