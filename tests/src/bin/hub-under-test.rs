//! The `ds-rm` command line, built inside the test crate so end-to-end tests can start it as a
//! real process (`CARGO_BIN_EXE_hub-under-test`). Same code as the shipped `ds-rm` binary.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    mimi_ds_rm::cli::main()
}
