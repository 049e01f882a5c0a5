//! Random identifiers and bytes from the operating system RNG.
//!
//! Pseudonymous ids must be unlinkable and unguessable, so they come straight from the OS CSPRNG.

use rand::RngCore as _;

/// A fresh 16-byte pseudonymous id (queue ids, client ids, ...): 128 bits make collisions and
/// guessing negligible.
pub fn random_id() -> [u8; 16] {
    random_bytes()
}

/// `N` fresh random bytes for keys, salts and nonces.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ() {
        assert_ne!(random_id(), random_id());
        assert_ne!(random_bytes::<32>(), [0u8; 32]);
        assert_eq!(random_bytes::<0>(), [0u8; 0]);
    }
}
