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

/// Scoped connections, direct or through `relay`.
fn connect_via(client: &mut Client, relay: &Option<String>) -> Result<(), LoadError> {
    client
        .set_connections(ConnectionOptions {
            ohttp_relay: relay.clone(),
            ..Default::default()
        })
        .map_err(setup)
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
    let (mut alice, mut bob, group) =
        crate::population::pair_in_group(&dir, &args.url, "ohttp").await?;
    alice
        .prefill_tokens(2 * args.messages + 40)
        .await
        .map_err(setup)?;
    // The two modes alternate in blocks, so whatever drifts during a run (the token wallet
    // shrinks, the hub's store grows) weighs on both alike.
    let modes = [("direct", None), ("OHTTP relay", Some(args.relay.clone()))];
    let mut latencies: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut hub_cpu: [Option<f64>; 2] = [Some(0.0), Some(0.0)];
    for (i, (_, relay)) in modes.iter().enumerate() {
        connect_via(&mut alice, relay)?;
        // Unmeasured sends first: they warm the pools (and, through the relay, fetch the
        // gateway's keys), the hub and the stores.
        for _ in 0..10 {
            alice.send(&group, b"warm-up").await.map_err(setup)?;
        }
        latencies[i].reserve(args.messages);
    }
    let block = 50.min(args.messages.max(1));
    let mut sent = 0;
    while sent < args.messages {
        let n = block.min(args.messages - sent);
        for (i, (_, relay)) in modes.iter().enumerate() {
            connect_via(&mut alice, relay)?;
            let before = cpu_seconds(args.hub_pid);
            for k in 0..n {
                let started = Instant::now();
                alice
                    .send(&group, format!("m{}", sent + k).as_bytes())
                    .await
                    .map_err(setup)?;
                latencies[i].push(started.elapsed().as_secs_f64() * 1000.0);
            }
            hub_cpu[i] = match (hub_cpu[i], before, cpu_seconds(args.hub_pid)) {
                (Some(t), Some(a), Some(b)) => Some(t + b - a),
                _ => None,
            };
        }
        sent += n;
        // Keep bob's queue short for both modes alike.
        bob.receive().await.map_err(setup)?;
    }
    for (i, (name, _)) in modes.iter().enumerate() {
        let l = &mut latencies[i];
        l.sort_by(f64::total_cmp);
        let cpu = hub_cpu[i]
            .map(|t| {
                format!(
                    ", hub CPU {:.0} µs per send",
                    t * 1e6 / args.messages as f64
                )
            })
            .unwrap_or_default();
        println!(
            "{name}: {} sends, round trip p50 {:.2} ms, p99 {:.2} ms{cpu}",
            args.messages,
            quantile(l, 0.5),
            quantile(l, 0.99)
        );
    }
    Ok(())
}
