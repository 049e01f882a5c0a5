//! `mimi-rm-load oblivious`: what Oblivious HTTP costs per request — a send's round trip and
//! the hub's CPU — against the same send direct, and how many connections each way opens.
//!
//! Two clients in one group on the hub at `--url`. The sender sends `--messages` messages
//! direct (scoped connections), then as many through the relay at `--relay`; each send is timed
//! from the call to its acknowledgement. With `--hub-pid` the hub's CPU time over each phase is
//! divided by its sends.

use crate::LoadError;
use crate::report::cpu_seconds;
use mimi_client_rm::{Client, ConnectionOptions};
use std::path::PathBuf;
use std::time::Instant;

/// `mimi-rm-load oblivious` options.
#[derive(clap::Args, Debug, Clone)]
pub struct ObliviousArgs {
    /// Base URL of the hub.
    #[arg(long)]
    pub url: String,
    /// URL of an OHTTP relay for the hub's gateway.
    #[arg(long)]
    pub relay: String,
    /// Sends per mode.
    #[arg(long, default_value_t = 500)]
    pub messages: usize,
    /// The hub's process id, to report its CPU time per send.
    #[arg(long)]
    pub hub_pid: Option<u32>,
    /// Where the client stores go (a temporary directory if absent).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

fn setup(e: impl std::fmt::Display) -> LoadError {
    LoadError::Setup(e.to_string())
}

/// Sorted latencies' quantile, in milliseconds.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs both modes and prints one line each.
pub async fn run(args: ObliviousArgs) -> Result<(), LoadError> {
    let tmp = tempfile::tempdir().map_err(setup)?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    let tag: u32 = rand::random();
    let mut alice = Client::register(&dir.join("a"), &args.url, &format!("ohttp-a-{tag:08x}"))
        .await
        .map_err(setup)?;
    let mut bob = Client::register(&dir.join("b"), &args.url, &format!("ohttp-b-{tag:08x}"))
        .await
        .map_err(setup)?;
    bob.add_contact(&alice.contact_card().map_err(setup)?)
        .map_err(setup)?;
    let group = alice.create_group().await.map_err(setup)?;
    alice
        .invite(&group, &bob.contact_card().map_err(setup)?)
        .await
        .map_err(setup)?;
    bob.receive().await.map_err(setup)?;
    alice
        .prefill_tokens(2 * args.messages + 10)
        .await
        .map_err(setup)?;
    for (name, relay) in [("direct", None), ("OHTTP relay", Some(args.relay.clone()))] {
        alice
            .set_connections(ConnectionOptions {
                ohttp_relay: relay,
                ..Default::default()
            })
            .map_err(setup)?;
        // One send to warm the pools (and, through the relay, fetch the gateway's keys).
        alice.send(&group, b"warm-up").await.map_err(setup)?;
        let hub_before = cpu_seconds(args.hub_pid);
        let mut latencies = Vec::with_capacity(args.messages);
        for i in 0..args.messages {
            let started = Instant::now();
            alice
                .send(&group, format!("m{i}").as_bytes())
                .await
                .map_err(setup)?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let hub_cpu = match (hub_before, cpu_seconds(args.hub_pid)) {
            (Some(a), Some(b)) => format!(
                ", hub CPU {:.0} µs per send",
                (b - a) * 1e6 / args.messages as f64
            ),
            _ => String::new(),
        };
        latencies.sort_by(f64::total_cmp);
        println!(
            "{name}: {} sends, round trip p50 {:.2} ms, p99 {:.2} ms{hub_cpu}",
            args.messages,
            quantile(&latencies, 0.5),
            quantile(&latencies, 0.99)
        );
        // Empty bob's queue between the phases, so both phases enqueue into a short queue.
        bob.receive().await.map_err(setup)?;
    }
    Ok(())
}
