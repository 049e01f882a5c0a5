//! `mimi-rm-load`: an open-model load generator for a mimi-ds-rm hub.
//!
//! It registers real clients (real MLS state, real Privacy Pass tokens in RM mode), builds
//! groups on the hub, then fires operations at a constant arrival rate: each operation is
//! scheduled at its due time whether or not earlier ones have finished, and its latency is
//! measured from that due time, so a slow hub cannot hide latency by slowing the generator down
//! (no coordinated omission). It writes a JSON report and an SVG plot.
#![forbid(unsafe_code)]

mod latency;
mod oblivious;
mod plot;
mod population;
mod prebuilt;
mod report;
mod run;

use clap::{Parser, Subcommand};
use mimi_rm_protocol::DsMode;
use std::path::PathBuf;
use std::process::ExitCode;

/// Load generator for a mimi-ds-rm hub (RM or baseline mode).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build groups on a running hub and drive them at a constant arrival rate.
    Run(run::RunArgs),
    /// Time from a sender's acknowledgement to the recipient's event: live socket, then polling.
    Latency(latency::LatencyArgs),
    /// A send's round trip and the hub's CPU per send, direct and through an OHTTP relay.
    Oblivious(oblivious::ObliviousArgs),
    /// Draw the latency distributions of several JSON reports into one SVG.
    Compare {
        /// Reports written by `run`.
        reports: Vec<PathBuf>,
        /// Output SVG.
        #[arg(long, default_value = "compare.svg")]
        svg: PathBuf,
    },
}

/// Errors of a load run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A client operation failed during setup.
    #[error("setup: {0}")]
    Setup(String),
    /// Reading or writing a report or plot failed.
    #[error("{what}: {detail}")]
    Io {
        /// Which file.
        what: String,
        /// The error.
        detail: String,
    },
}

/// Parses `rm` / `baseline` for clap.
pub fn parse_mode(s: &str) -> Result<DsMode, String> {
    s.parse()
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| LoadError::Setup(e.to_string()))
            .and_then(|rt| rt.block_on(run::run(args))),
        Command::Latency(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| LoadError::Setup(e.to_string()))
            .and_then(|rt| rt.block_on(latency::run(args))),
        Command::Oblivious(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| LoadError::Setup(e.to_string()))
            .and_then(|rt| rt.block_on(oblivious::run(args))),
        Command::Compare { reports, svg } => report::load_all(&reports)
            .and_then(|all| plot::compare(&all, &svg))
            .map(|()| println!("wrote {}", svg.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mimi-rm-load: {e}");
            ExitCode::FAILURE
        }
    }
}
