//! Errors of the crypto crate.

/// What can fail; none of these variants carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The key does not match the ciphertext (commitment or authentication failed).
    #[error("wrong key or tampered ciphertext")]
    WrongKey,
    /// Input has the wrong shape.
    #[error("malformed input: {0}")]
    Malformed(&'static str),
    /// HPKE failed (bad encapsulation or ciphertext).
    #[error("hpke operation failed")]
    Hpke,
    /// A signature did not verify.
    #[error("invalid signature")]
    Signature,
    /// Key bytes are not a valid key.
    #[error("invalid key")]
    InvalidKey,
}
