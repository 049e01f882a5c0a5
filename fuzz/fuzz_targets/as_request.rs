//! Fuzz target: authentication-service requests and responses.
#![no_main]

use mimi_rm_fuzz::check_canonical;
use mimi_rm_protocol::auth::{AsRequest, AsResponse};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_canonical::<AsRequest>(data);
    check_canonical::<AsResponse>(data);
});
