//! Typed records: one declaration per stored record kind says where it lives and how large it
//! may be, so every read and write of that kind goes through one decode with one limit.
//!
//! Hand-written decode helpers used to repeat the column family and pick their own size limit
//! (1 KiB, 4 KiB, 64 KiB, 1 MiB for the same record in different places). A [`Record`] names
//! both once; [`Txn::get_record`] and [`Txn::put_record`] enforce them, and a stored value that
//! does not decode, or a value too large to be read back, is reported as
//! [`StoreError::Corrupt`] / [`StoreError::Oversize`] with the record kind.

use super::{Cf, Store, StoreError, Txn};
use mimi_rm_protocol::decode_exact;
use tls_codec::{Deserialize, Serialize, Size};

/// A record kind stored TLS-encoded under its own column family.
pub trait Record: Serialize + Deserialize + Size + Sized {
    /// The column family holding every record of this kind.
    const CF: Cf;
    /// The largest encoding the hub ever writes for this kind; anything larger read back is
    /// corruption, and writing something larger is a bug caught before it reaches the disk.
    const MAX_BYTES: usize;
    /// The key: a typed id where the record has one, so a record cannot be read under another
    /// kind's key by mistake.
    type Key: AsRef<[u8]> + ?Sized;
}

/// Decodes a stored value as `R`, exactly, within `R::MAX_BYTES`.
pub fn decode<R: Record>(value: &[u8]) -> Result<R, StoreError> {
    decode_exact(value, R::MAX_BYTES).map_err(|e| StoreError::Corrupt {
        record: R::CF.name(),
        reason: e.to_string(),
    })
}

/// Encodes `record`, refusing an encoding over `R::MAX_BYTES` (it could never be read back).
pub fn encode<R: Record>(record: &R) -> Result<Vec<u8>, StoreError> {
    let len = record.tls_serialized_len();
    if len > R::MAX_BYTES {
        return Err(StoreError::Oversize {
            cf: R::CF.name(),
            len,
            max: R::MAX_BYTES,
        });
    }
    mimi_rm_protocol::encode(record).map_err(|e| StoreError::Encode {
        cf: R::CF.name(),
        reason: e.to_string(),
    })
}

/// Reads one record straight from a store (outside a request: start-up, audit, expiry).
pub fn get<R: Record>(store: &dyn Store, key: &R::Key) -> Result<Option<R>, StoreError> {
    store
        .get(R::CF, key.as_ref())?
        .map(|v| decode::<R>(&v))
        .transpose()
}

impl Txn<'_> {
    /// Reads one record of kind `R`, seeing this transaction's own writes.
    pub fn get_record<R: Record>(&self, key: &R::Key) -> Result<Option<R>, StoreError> {
        self.get(R::CF, key.as_ref())?
            .map(|v| decode::<R>(&v))
            .transpose()
    }

    /// Buffers a write of one record of kind `R`.
    pub fn put_record<R: Record>(&mut self, key: &R::Key, record: &R) -> Result<(), StoreError> {
        let bytes = encode(record)?;
        self.put(R::CF, key.as_ref().to_vec(), bytes);
        Ok(())
    }

    /// Buffers the deletion of one record of kind `R`.
    pub fn delete_record<R: Record>(&mut self, key: &R::Key) {
        self.delete(R::CF, key.as_ref().to_vec());
    }
}
