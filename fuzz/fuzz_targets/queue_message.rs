//! Fuzz target: queue entries a client decrypts, and the sealed queue addresses the hub routes by.
#![no_main]

use mimi_rm_fuzz::check_canonical;
use mimi_rm_protocol::queue::{QueueMessage, QueueRef};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_canonical::<QueueMessage>(data);
    check_canonical::<QueueRef>(data);
});
