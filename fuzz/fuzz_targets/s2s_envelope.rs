//! Fuzz target: what other providers send: server-to-server envelopes, proxied requests, their keys.
#![no_main]

use mimi_rm_fuzz::check_canonical;
use mimi_rm_protocol::federation::{ProxyRequest, S2sEnvelope, VerificationKey};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_canonical::<S2sEnvelope>(data);
    check_canonical::<ProxyRequest>(data);
    check_canonical::<VerificationKey>(data);
});
