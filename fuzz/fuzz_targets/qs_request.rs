//! Fuzz target: queueing-service requests and responses.
#![no_main]

use mimi_rm_fuzz::check_canonical;
use mimi_rm_protocol::qs::{QsRequest, QsResponse};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_canonical::<QsRequest>(data);
    check_canonical::<QsResponse>(data);
});
