//! Padmé padding, so stored and queued ciphertexts leak only a coarse length bucket.
//!
//! Padmé (Nikitin et al., PETS 2019) rounds a length `L` up so that only the top
//! `floor(log2(E)) + 1` bits of `L` remain significant, where `E = floor(log2(L))`. The overhead is
//! at most about 12%, and the number of distinct padded lengths grows only logarithmically.

use crate::CryptoError;

/// Bytes of the big-endian `u32` length prefix written by [`pad`].
const PREFIX_LEN: usize = 4;

/// The Padmé length for `len` bytes; lets callers predict ciphertext sizes.
///
/// Lengths 0–3 are returned unchanged. The result is never smaller than `len`; if rounding up
/// would overflow `usize`, `len` itself is returned.
pub fn padme_len(len: usize) -> usize {
    if len < 2 {
        return len;
    }
    let e = usize::BITS - 1 - len.leading_zeros(); // floor(log2(len)), >= 1
    let s = u32::BITS - e.leading_zeros(); // floor(log2(e)) + 1
    let last_bits = e - s; // e >= s for every e >= 1
    let mask = (1usize << last_bits) - 1;
    match len.checked_add(mask) {
        Some(v) => v & !mask,
        None => len,
    }
}

/// Pads `data` as `u32-BE length ‖ data ‖ zeros`, `padme_len(4 + data.len())` bytes in total,
/// so that messages of similar size become indistinguishable by length.
///
/// Data longer than `u32::MAX` bytes cannot be described by the prefix; for it the result is
/// empty, which [`unpad`] rejects, so such input fails closed instead of panicking.
pub fn pad(data: &[u8]) -> Vec<u8> {
    let Ok(len) = u32::try_from(data.len()) else {
        return Vec::new();
    };
    let total = padme_len(PREFIX_LEN + data.len());
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    out.resize(total, 0);
    out
}

/// Like [`pad`], but reports oversized input as an error; used by the encryption functions.
pub(crate) fn try_pad(data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if u32::try_from(data.len()).is_err() {
        return Err(CryptoError::Malformed("too long to pad"));
    }
    Ok(pad(data))
}

/// Reverses [`pad`]; rejects a missing or impossible length prefix and non-zero padding, so a
/// padded buffer has exactly one valid reading.
pub fn unpad(padded: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let (prefix, body) = padded
        .split_first_chunk::<PREFIX_LEN>()
        .ok_or(CryptoError::Malformed("padding prefix"))?;
    let len = usize::try_from(u32::from_be_bytes(*prefix))
        .map_err(|_| CryptoError::Malformed("padding length"))?;
    let (data, zeros) = body
        .split_at_checked(len)
        .ok_or(CryptoError::Malformed("padding length"))?;
    if zeros.iter().any(|b| *b != 0) {
        return Err(CryptoError::Malformed("padding bytes"));
    }
    Ok(data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straight transcription of the Padmé definition, to cross-check the bit tricks.
    fn padme_reference(l: usize) -> usize {
        if l < 2 {
            return l;
        }
        let e = (l as f64).log2().floor() as u32;
        let s = (e as f64).log2().floor() as u32 + 1;
        let last_bits = e - s;
        let mask = (1usize << last_bits) - 1;
        (l + mask) & !mask
    }

    #[test]
    fn padme_values() {
        // Small lengths are exact; larger ones keep few significant bits.
        for (len, want) in [
            (0, 0),
            (1, 1),
            (2, 2),
            (3, 3),
            (4, 4),
            (5, 5),
            (7, 7),
            (8, 8),
            (9, 10),
            (11, 12),
            (17, 18),
            (100, 104),
            (1000, 1024),
            (1025, 1088),
            (65_537, 67_584),
        ] {
            assert_eq!(padme_len(len), want, "padme_len({len})");
        }
        for len in 0..20_000 {
            let p = padme_len(len);
            assert_eq!(p, padme_reference(len), "{len}");
            assert!(p >= len && p <= len + len / 8 + 1, "{len} -> {p}");
        }
        assert_eq!(padme_len(usize::MAX), usize::MAX);
    }

    #[test]
    fn pad_round_trip() {
        for len in [0, 1, 5, 60, 61, 1000, 4096] {
            let data = vec![0xab; len];
            let p = pad(&data);
            assert_eq!(p.len(), padme_len(4 + len));
            assert_eq!(&p[..4], &(len as u32).to_be_bytes());
            assert_eq!(unpad(&p).unwrap(), data);
        }
    }

    #[test]
    fn unpad_rejects_bad_input() {
        assert!(matches!(unpad(&[]), Err(CryptoError::Malformed(_))));
        assert!(matches!(unpad(&[0, 0]), Err(CryptoError::Malformed(_))));
        assert!(matches!(
            unpad(&[0, 0, 0, 9, 1]),
            Err(CryptoError::Malformed(_))
        ));
        assert!(matches!(unpad(&[0xff; 16]), Err(CryptoError::Malformed(_))));
        assert!(matches!(
            unpad(&[0, 0, 0, 1, 1, 7]),
            Err(CryptoError::Malformed(_))
        ));
        assert_eq!(unpad(&[0, 0, 0, 0]).unwrap(), b"");
        assert_eq!(unpad(&[0, 0, 0, 1, 9, 0, 0]).unwrap(), [9]);
    }
}
