//! Fuzz target: the outer frame of every request, and the error body of every non-2xx response.
#![no_main]

use mimi_rm_fuzz::check_canonical;
use mimi_rm_protocol::{Envelope, ErrorResponse};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_canonical::<Envelope>(data);
    check_canonical::<ErrorResponse>(data);
});
