//! Labelled HKDF-SHA256, so every derived key is bound to its purpose and context.

use crate::CryptoError;
use hkdf::Hkdf;
use sha2::Sha256;

/// Version prefix of every label, so a future protocol version derives unrelated keys.
const PREFIX: &[u8] = b"mimi-rm 1.0 ";
/// HKDF-SHA256 can expand to at most 255 hash blocks.
const MAX_OUT: usize = 255 * 32;

/// Derives `out.len()` bytes from `secret` for the purpose `label` and the `context`.
///
/// HKDF-SHA256 extract (empty salt) over `secret`, then expand with
/// `u64(len(L)) ‖ L ‖ u64(len(context)) ‖ context` as info, where `L = "mimi-rm 1.0 " ‖ label`.
/// The length prefixes make the encoding injective, so different (label, context) pairs never
/// collide. Fails only if more than 8160 bytes are requested.
pub fn expand_label(
    secret: &[u8],
    label: &str,
    context: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    if out.len() > MAX_OUT {
        return Err(CryptoError::Malformed("kdf output length"));
    }
    expand_with(&Hkdf::<Sha256>::new(None, secret), label, context, out)
}

/// The expand step of [`expand_label`] from an extracted key: several derivations from one
/// secret share one extract.
fn expand_with(
    prk: &Hkdf<Sha256>,
    label: &str,
    context: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let full_label_len = PREFIX.len() + label.len();
    let mut info = Vec::with_capacity(16 + full_label_len + context.len());
    info.extend_from_slice(&(full_label_len as u64).to_be_bytes());
    info.extend_from_slice(PREFIX);
    info.extend_from_slice(label.as_bytes());
    info.extend_from_slice(&(context.len() as u64).to_be_bytes());
    info.extend_from_slice(context);
    prk.expand(&info, out)
        .map_err(|_| CryptoError::Malformed("kdf output length"))
}

/// Two [`expand_label_array`] derivations from one `secret` and `context`, with one extract
/// between them (the queue ratchet derives its next secret and its message key per message).
/// Each output equals its own `expand_label_array` call.
pub(crate) fn expand_label_pair<const N: usize>(
    secret: &[u8],
    labels: [&str; 2],
    context: &[u8],
) -> [[u8; N]; 2] {
    const { assert!(N <= MAX_OUT) };
    let prk = Hkdf::<Sha256>::new(None, secret);
    labels.map(|label| {
        let mut out = [0u8; N];
        // Unreachable error: the length bound above is the only failure condition.
        let _ = expand_with(&prk, label, context, &mut out);
        out
    })
}

/// SHA-256 over `u64(len(L)) ‖ L ‖ data` with `L = "mimi-rm 1.0 " ‖ label`: a digest bound to its
/// purpose, so a reference computed for one use never equals one computed for another.
pub fn labelled_digest(label: &str, data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let full_label_len = PREFIX.len() + label.len();
    let mut h = Sha256::new();
    h.update((full_label_len as u64).to_be_bytes());
    h.update(PREFIX);
    h.update(label.as_bytes());
    h.update(data);
    h.finalize().into()
}

/// [`expand_label`] into a fixed-size array, for derivations that cannot fail.
///
/// The compile-time bound on `N` excludes the only error of HKDF-Expand (output too long), so the
/// result is always fully derived.
pub(crate) fn expand_label_array<const N: usize>(
    secret: &[u8],
    label: &str,
    context: &[u8],
) -> [u8; N] {
    const { assert!(N <= MAX_OUT) };
    let mut out = [0u8; N];
    // Unreachable error: the length bound above is the only failure condition.
    let _ = expand_label(secret, label, context, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_derives_what_two_single_derivations_do() {
        let [a, b] = expand_label_pair::<32>(&[7; 32], ["one", "two"], b"ctx");
        assert_eq!(a, expand_label_array::<32>(&[7; 32], "one", b"ctx"));
        assert_eq!(b, expand_label_array::<32>(&[7; 32], "two", b"ctx"));
        assert_ne!(a, b);
    }

    /// Pins the derivation; update only together with a protocol version change.
    const KAT_EXPAND: &str = "b86f64ba325abfba5b2a5b7c3aee278470eb30acb50e723116a4dfb78e5c2b8e";

    /// Computed independently (Python hashlib) from the definition in the doc comment.
    #[test]
    fn labelled_digest_known_answer() {
        assert_eq!(
            hex::encode(labelled_digest("commit ref", b"abc")),
            "e296e9e2c17abd2691fd8a0d1350497b9f589664f847a77d3e8d7aba2873b605"
        );
        assert_ne!(
            labelled_digest("commit ref", b"abc"),
            labelled_digest("commit re", b"fabc")
        );
    }

    #[test]
    fn known_answer() {
        let mut a = [0u8; 32];
        expand_label(&[7u8; 32], "ear enc", b"ctx", &mut a).unwrap();
        assert_eq!(hex::encode(a), KAT_EXPAND);
        assert_eq!(expand_label_array::<32>(&[7u8; 32], "ear enc", b"ctx"), a);
    }

    #[test]
    fn labels_and_contexts_separate() {
        let base = expand_label_array::<32>(&[7u8; 32], "ear enc", b"ctx");
        assert_ne!(
            base,
            expand_label_array::<32>(&[7u8; 32], "ear commit", b"ctx")
        );
        assert_ne!(
            base,
            expand_label_array::<32>(&[7u8; 32], "ear enc", b"ctY")
        );
        assert_ne!(
            base,
            expand_label_array::<32>(&[8u8; 32], "ear enc", b"ctx")
        );
        // Moving bytes between label and context changes the output (injective encoding).
        assert_ne!(
            expand_label_array::<32>(&[7u8; 32], "ab", b"c"),
            expand_label_array::<32>(&[7u8; 32], "a", b"bc")
        );
    }

    #[test]
    fn output_length_limit() {
        let mut ok = vec![0u8; MAX_OUT];
        expand_label(b"s", "l", b"", &mut ok).unwrap();
        let mut too_long = vec![0u8; MAX_OUT + 1];
        assert!(matches!(
            expand_label(b"s", "l", b"", &mut too_long),
            Err(CryptoError::Malformed(_))
        ));
        let mut empty = [0u8; 0];
        expand_label(b"s", "l", b"", &mut empty).unwrap();
    }
}
