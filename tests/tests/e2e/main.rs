//! The end-to-end tests, as one test binary: real hub processes, real RocksDB, real HTTP.
//!
//! One module per suite; a test's name is `suite::test` (run a suite with
//! `cargo test -j2 --workspace --test e2e -- suite::`). Shared setup lives in the library
//! (`mimi_rm_tests::common`), never in a suite.
//!
//! All suites share this process, and the harness runs tests on parallel threads, so a suite
//! must not rely on having the process to itself: nothing here sets environment variables or
//! other process-wide state, hubs are separate processes on ports [`mimi_rm_tests::free_port`]
//! hands out at most once per process, and every test works in its own temporary directory.

mod auth_service;
mod bad_commit;
mod bad_input;
mod baseline;
mod cli;
mod client_store;
mod concurrency;
mod connections;
mod corruption;
mod crash;
mod ds_core_arbitrary;
mod ear_rotation;
mod examples;
mod federation;
mod files_at_rest;
mod identity;
mod lifecycle;
mod limits;
mod live;
mod live_operator;
mod load_generator;
mod logs;
mod mangled;
mod membership;
mod multi_process;
mod operator_metrics;
mod postgres_store;
mod privacy_pass;
mod push;
mod queue_pcs;
mod registration;
mod removed_contact;
mod removed_member;
mod resend;
mod seized_disk;
mod smoke;
mod stored_once;
mod tls;

/// The library finds the binaries at run time (it cannot see these compile-time paths): it
/// must find the very files Cargo built for this test binary, with or without Cargo's run-time
/// `CARGO_BIN_EXE_*` variables.
#[test]
fn the_library_runs_the_binaries_cargo_built() {
    use mimi_rm_tests::common::{beside_test_executable, cli_binary, hub_binary, load_binary};
    use std::path::Path;
    for (name, found, built) in [
        (
            "hub-under-test",
            hub_binary(),
            Path::new(env!("CARGO_BIN_EXE_hub-under-test")),
        ),
        (
            "mimi-rm-under-test",
            cli_binary(),
            Path::new(env!("CARGO_BIN_EXE_mimi-rm-under-test")),
        ),
        (
            "load-under-test",
            load_binary(),
            Path::new(env!("CARGO_BIN_EXE_load-under-test")),
        ),
    ] {
        assert_eq!(found, built);
        assert_eq!(beside_test_executable(name), built);
    }
}
