//! Stored events: an [`Event`] as JSON (its protocol fields as TLS bytes).

use crate::client::Event;
use crate::error::ClientError;

/// Longest stored event we decode (a message's plaintext is bounded by the queue entry's).
const MAX_EVENT: usize = 32 << 20;

/// The bytes of `e` as stored.
pub fn encode(e: &Event) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(e).map_err(|e| ClientError::State(format!("encoding an event: {e}")))
}

/// An event from what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Event, ClientError> {
    if bytes.len() > MAX_EVENT {
        return Err(ClientError::State("a stored event is too long".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| ClientError::State(format!("stored event: {e}")))
}

/// Serde for an optional TLS-encoded protocol value (a commit report), as hex.
pub mod tls_hex {
    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Serializes `v` TLS-encoded, in hex.
    pub fn serialize<T: tls_codec::Serialize, S: Serializer>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(v) => {
                let bytes = v
                    .tls_serialize_detached()
                    .map_err(serde::ser::Error::custom)?;
                s.serialize_some(&hex::encode(bytes))
            }
        }
    }

    /// Reads what [`serialize`] wrote.
    pub fn deserialize<'de, T: tls_codec::Deserialize, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(h) => {
                let bytes = hex::decode(h).map_err(serde::de::Error::custom)?;
                T::tls_deserialize_exact(bytes)
                    .map(Some)
                    .map_err(serde::de::Error::custom)
            }
        }
    }
}
