//! Fuzz target: delivery-service requests and responses, and the commit AAD the hub parses from commits.
#![no_main]

use mimi_rm_fuzz::check_canonical;
use mimi_rm_protocol::ds::{CommitAad, DsRequest, DsResponse};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_canonical::<DsRequest>(data);
    check_canonical::<DsResponse>(data);
    check_canonical::<CommitAad>(data);
});
