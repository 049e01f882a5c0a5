//! Bounded, exact TLS decoding.

use tls_codec::{Deserialize, Serialize};

/// Why a body could not be decoded; maps to `ErrorCode::Malformed` or `ErrorCode::TooLarge`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input is longer than the limit the caller allows for this type.
    #[error("input of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// Allowed maximum.
        limit: usize,
    },
    /// The bytes are not a valid encoding (including truncation and trailing data).
    #[error("malformed encoding: {0}")]
    Malformed(String),
}

/// Decodes exactly one `T` from `bytes`, refusing inputs over `limit` bytes and any trailing data.
///
/// Uses the `Read`-based decoder of `tls_codec`, which never pre-allocates more than the input
/// can hold, so a forged length prefix cannot exhaust memory.
pub fn decode_exact<T: Deserialize>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    T::tls_deserialize_exact(bytes).map_err(|e| DecodeError::Malformed(format!("{e:?}")))
}

/// Encodes a value; encoding only fails for values whose lengths exceed the wire format.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, DecodeError> {
    value
        .tls_serialize_detached()
        .map_err(|e| DecodeError::Malformed(format!("encode: {e:?}")))
}
