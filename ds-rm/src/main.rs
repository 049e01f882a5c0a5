//! `ds-rm`: run a reduced-metadata MIMI hub, or audit what one stored.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    mimi_ds_rm::cli::main()
}
