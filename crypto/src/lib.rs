//! Cryptography of the reduced-metadata hub, with no I/O and no protocol types.
//!
//! Everything that encrypts or signs something the hub stores or checks lives here, so the
//! constructions can be reviewed in one place: key-committing EAR, labelled HPKE, the queue ratchet,
//! Padmé padding, labelled KDF and signatures, and zeroizing key types.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ear;
mod error;
pub mod hpke_seal;
pub mod ids;
pub mod kdf;
pub mod padding;
pub mod ratchet;
pub mod sign;

pub use error::CryptoError;
