//! Where the hub's fresh identifiers come from.
//!
//! Group ids, pseudonymous user and client ids, tombstone and inbox keys and outbox item ids
//! are random so that they link nothing. The core takes them from an [`IdSource`] passed in,
//! like the clock, instead of calling the operating system itself: a test can then predict
//! every id a request creates and compare whole stores, and the production hub uses
//! [`OsIds`]. (Key material is not an id: it always comes from the operating system.)

/// A source of 128-bit identifiers that must not repeat or be guessable in production.
pub trait IdSource: Send + Sync {
    /// A fresh identifier.
    fn id(&self) -> [u8; 16];
}

/// Identifiers from the operating system's random number generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsIds;

impl IdSource for OsIds {
    fn id(&self) -> [u8; 16] {
        mimi_rm_crypto::ids::random_id()
    }
}
