//! Wire types of the mimi-ds-rm hub: every request and response, TLS-encoded.
//!
//! Everything the hub and its clients exchange is defined here once, with `tls_codec`, so that the
//! server and the client library can never disagree on framing. Decoding goes through
//! [`codec::decode_exact`], which enforces a size limit before parsing and rejects trailing bytes.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
pub mod codec;
pub mod connection;
pub mod credentials;
pub mod ds;
pub mod envelope;
pub mod error;
pub mod federation;
pub mod live;
pub mod mode;
pub mod oblivious;
pub mod paths;
pub mod push;
pub mod qs;
pub mod queue;
pub mod revocation;
pub mod tokens;

pub use codec::{DecodeError, decode_exact, encode};
pub use envelope::{Envelope, PROTOCOL_VERSION, TransactionType};
pub use error::{ErrorCode, ErrorResponse};
pub use mode::DsMode;
pub use tls_codec::VLBytes;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod roundtrip_tests;
