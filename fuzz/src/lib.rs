//! The one check every fuzz target applies, so all targets assert the same property.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use mimi_rm_protocol::{decode_exact, encode};
use std::fmt::Debug;
use tls_codec::{Deserialize, Serialize};

/// Far above libFuzzer's default input sizes, so only the framing decides.
pub const LIMIT: usize = 1 << 20;

/// Decodes `data` as `T`; when that succeeds the value must re-encode to exactly `data` and
/// decode back to itself.
///
/// Panics on a violation: a panic is how libFuzzer learns about a finding. Two encodings of one
/// value would let signatures, replay caches and deduplication keyed by bytes disagree with
/// what the hub acts on.
pub fn check_canonical<T>(data: &[u8])
where
    T: Serialize + Deserialize + PartialEq + Debug,
{
    let Ok(value) = decode_exact::<T>(data, LIMIT) else {
        return;
    };
    let again = match encode(&value) {
        Ok(bytes) => bytes,
        Err(e) => panic!("decoded {value:?} does not re-encode: {e:?}"),
    };
    assert_eq!(again, data, "non-canonical encoding of {value:?}");
    match decode_exact::<T>(&again, LIMIT) {
        Ok(back) => assert_eq!(back, value),
        Err(e) => panic!("re-encoding of {value:?} does not decode: {e:?}"),
    }
}
