//! A reader for RocksDB's write-ahead log, so the audit sees every value a log still holds —
//! not only the current ones a database open shows.
//!
//! The format, as RocksDB documents it: the file is a sequence of 32 KiB blocks; each block
//! holds physical records `crc32c (4) ‖ length (2, LE) ‖ type (1) ‖ payload`, plus a 4-byte log
//! number for the recyclable types; a block tail too short for a header is zero padding. A
//! logical record is one FULL record or FIRST, MIDDLE…, LAST fragments. Each logical record
//! of a data log is a write batch: `sequence (8, LE) ‖ count (4, LE) ‖ entries`, where an entry
//! is a tag byte, a varint column family id for the `ColumnFamily*` tags, and varint
//! length-prefixed key (and value). [`read`] ignores checksums: the audit reads what an
//! attacker would read, damaged or not. [`verify`] checks them, before the hub opens a log.

/// One key operation found in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Column family id (0: the default family).
    pub cf_id: u32,
    /// The sequence number of the batch it came in.
    pub sequence: u64,
    /// The key.
    pub key: Vec<u8>,
    /// The value of a put; `None` for a deletion.
    pub value: Option<Vec<u8>>,
}

/// What [`read`] recovered from one log file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogContents {
    /// Write batches decoded.
    pub batches: usize,
    /// Every put and delete, in log order.
    pub entries: Vec<LogEntry>,
    /// Records that did not decode (damage, or entry kinds this hub never writes).
    pub undecoded: usize,
}

const BLOCK: usize = 32 * 1024;

fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        out |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

fn slice<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(b, at)?).ok()?;
    let out = b.get(*at..at.checked_add(len)?)?;
    *at += len;
    Some(out)
}

/// Splits a log file into its logical records.
fn records(file: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let (mut out, mut bad) = (Vec::new(), 0);
    let mut partial: Option<Vec<u8>> = None;
    let mut block_start = 0;
    while block_start < file.len() {
        let block = &file[block_start..file.len().min(block_start + BLOCK)];
        let mut at = 0;
        while at + 7 <= block.len() {
            let len = usize::from(u16::from_le_bytes([block[at + 4], block[at + 5]]));
            let kind = block[at + 6];
            let header = match kind {
                5..=8 | 11 => 11,
                _ => 7,
            };
            if kind == 0 && len == 0 {
                break; // zero padding (or a preallocated, never written tail)
            }
            let Some(payload) = block.get(at + header..at + header + len) else {
                bad += 1;
                break;
            };
            at += header + len;
            match kind {
                1 | 5 => out.push(payload.to_vec()),
                2 | 6 => partial = Some(payload.to_vec()),
                3 | 7 => match partial.as_mut() {
                    Some(p) => p.extend_from_slice(payload),
                    None => bad += 1,
                },
                4 | 8 => match partial.take() {
                    Some(mut p) => {
                        p.extend_from_slice(payload);
                        out.push(p);
                    }
                    None => bad += 1,
                },
                // Metadata records (compression type, timestamp sizes, predecessor info).
                _ => {}
            }
        }
        block_start += BLOCK;
    }
    (out, bad)
}

/// Decodes one write batch; `None` at the first entry it cannot read.
fn batch(b: &[u8], out: &mut Vec<LogEntry>) -> Option<()> {
    let sequence = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let mut at = 12;
    while at < b.len() {
        let tag = b[at];
        at += 1;
        let cf_id = match tag {
            0x4 | 0x5 | 0x8 => u32::try_from(varint(b, &mut at)?).ok()?,
            0x0 | 0x1 | 0x7 => 0,
            _ => return None,
        };
        let key = slice(b, &mut at)?.to_vec();
        let value = match tag {
            0x1 | 0x5 => Some(slice(b, &mut at)?.to_vec()),
            _ => None,
        };
        out.push(LogEntry {
            cf_id,
            sequence,
            key,
            value,
        });
    }
    Some(())
}

/// Where and how a log is damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at byte {offset}")]
pub struct LogDamage {
    /// Byte offset of the first bad record.
    pub offset: usize,
    /// What is wrong there.
    pub reason: &'static str,
}

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

fn unmask(masked: u32) -> u32 {
    let rot = masked.wrapping_sub(0xa282_ead8);
    rot.rotate_left(15)
}

fn header_len(kind: u8) -> Option<usize> {
    match kind {
        1..=4 | 9 | 10 | 130 => Some(7),
        5..=8 | 11 | 131 => Some(11),
        _ => None,
    }
}

/// Whether a complete, checksum-valid physical record starts at `at` (and fits its block).
fn valid_record_at(file: &[u8], at: usize) -> bool {
    let Some(h) = file.get(at..at + 7) else {
        return false;
    };
    let Some(header) = header_len(h[6]) else {
        return false;
    };
    let len = usize::from(u16::from_le_bytes([h[4], h[5]]));
    let end = at + header + len;
    if at % BLOCK + header + len > BLOCK || end > file.len() {
        return false;
    }
    let stored = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    CRC32C.checksum(&file[at + 6..end]) == unmask(stored)
}

/// Verifies every physical record's checksum. One irregularity is accepted: a torn tail — a
/// final record cut short by a crash while it was being written (a write never acknowledged),
/// after which the file holds no valid record. A checksum mismatch anywhere, or a "cut" record
/// that valid records follow, is damage that would silently drop acknowledged writes.
pub fn verify(file: &[u8]) -> Result<(), LogDamage> {
    let mut block_start = 0;
    while block_start < file.len() {
        let block_end = file.len().min(block_start + BLOCK);
        let mut at = block_start;
        while at + 7 <= block_end {
            let (kind, len) = (
                file[at + 6],
                usize::from(u16::from_le_bytes([file[at + 4], file[at + 5]])),
            );
            if kind == 0 && len == 0 && file[at..at + 4] == [0; 4] {
                break; // zero padding or preallocated space: the block's end
            }
            let Some(header) = header_len(kind) else {
                return Err(LogDamage {
                    offset: at,
                    reason: "unknown record type",
                });
            };
            if at + header + len > block_end {
                let torn = block_end == file.len()
                    && !(at + 1..file.len()).any(|o| valid_record_at(file, o));
                if torn {
                    return Ok(());
                }
                return Err(LogDamage {
                    offset: at,
                    reason: "record length runs past its block, and valid records follow",
                });
            }
            if !valid_record_at(file, at) {
                return Err(LogDamage {
                    offset: at,
                    reason: "checksum mismatch",
                });
            }
            at += header + len;
        }
        block_start += BLOCK;
    }
    Ok(())
}

/// Every put and delete in a log file's bytes, as far as they decode.
pub fn read(file: &[u8]) -> LogContents {
    let (records, bad) = records(file);
    let mut out = LogContents {
        undecoded: bad,
        ..LogContents::default()
    };
    for r in records {
        let mut entries = Vec::new();
        if batch(&r, &mut entries).is_some() {
            out.batches += 1;
            out.entries.append(&mut entries);
        } else {
            out.undecoded += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::{ColumnFamilyDescriptor, DB, Options};

    /// Against a real RocksDB log: every overwritten value, a large value spanning blocks and
    /// a deletion are all recovered, with their column family.
    #[test]
    fn reads_every_version_from_a_real_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf_descriptors(
            &opts,
            dir.path(),
            [ColumnFamilyDescriptor::new("one", Options::default())],
        )
        .unwrap();
        let one = db.cf_handle("one").unwrap();
        for i in 0u8..50 {
            db.put_cf(one, b"ratchet", [i; 40]).unwrap();
        }
        let big = vec![0x5a; 100_000];
        db.put(b"big", &big).unwrap();
        db.delete_cf(one, b"ratchet").unwrap();
        db.flush_wal(true).unwrap();
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "log") {
                found.extend(read(&std::fs::read(&p).unwrap()).entries);
            }
        }
        let versions: Vec<&LogEntry> = found.iter().filter(|e| e.key == b"ratchet").collect();
        assert_eq!(versions.len(), 51);
        assert!(versions.iter().all(|e| e.cf_id != 0));
        for (i, e) in versions.iter().take(50).enumerate() {
            assert_eq!(e.value.as_deref(), Some(&[i as u8; 40][..]));
        }
        assert_eq!(versions[50].value, None);
        let big_entry = found.iter().find(|e| e.key == b"big").unwrap();
        assert_eq!((big_entry.cf_id, big_entry.value.as_ref()), (0, Some(&big)));
    }

    fn real_log(puts: u32) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        let db = DB::open(&opts, dir.path()).unwrap();
        for i in 0..puts {
            db.put(i.to_be_bytes(), [i as u8; 100]).unwrap();
        }
        db.flush_wal(true).unwrap();
        let log = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "log"))
            .unwrap();
        std::fs::read(log).unwrap()
    }

    /// A real log verifies, and so does one torn inside its last record; a flip anywhere else,
    /// or a flip that makes a middle record look torn, does not.
    #[test]
    fn verify_accepts_a_torn_tail_and_nothing_else() {
        for puts in [30, 2000] {
            let log = real_log(puts);
            assert_eq!(verify(&log), Ok(()), "{puts} puts");
            assert_eq!(verify(&log[..log.len() - 20]), Ok(()), "torn tail");
            let mut flipped = log.clone();
            let mid = log.len() / 2;
            for x in &mut flipped[mid..mid + 64] {
                *x ^= 0xA5;
            }
            assert!(verify(&flipped).is_err(), "{puts} puts: flip in the middle");
            // A first record whose length now runs past the end: it looks torn, but every
            // later record is valid.
            let mut long = log.clone();
            long[4] = 0xff;
            long[5] = 0xff;
            assert!(verify(&long).is_err(), "{puts} puts: fake torn tail");
        }
        assert_eq!(verify(&[]), Ok(()));
    }

    #[test]
    fn garbage_and_truncation_do_not_panic() {
        assert_eq!(read(&[]), LogContents::default());
        for len in [1, 6, 7, 8, 100, 40_000] {
            let junk: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let _ = read(&junk);
            let _ = verify(&junk);
        }
        // A header claiming more bytes than the block has is counted, not followed.
        let mut b = vec![0u8; 7];
        b[4] = 0xff;
        b[5] = 0x7f;
        b[6] = 1;
        assert_eq!(read(&b).undecoded, 1);
    }
}
