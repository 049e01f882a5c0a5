//! `mimi-rm-load latency`: how long a message takes from the sender's acknowledgement to the
//! recipient's event, with the recipient woken over its live socket or polling.
//!
//! Two clients in one group, registered on the hub at `--url`. The sender sends one message
//! every `--gap-ms`; the recipient waits with [`Client::next_events`] and notes when each
//! message became an event. Latency is measured on this process's clock, from the moment
//! `send` returned (the hub had stored and fanned out the message) to the moment the event was
//! handed to the application.

use crate::LoadError;
use indicatif::{ProgressBar, ProgressStyle};
use mimi_client_rm::{Event, Listening};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `mimi-rm-load latency` options.
#[derive(clap::Args, Debug, Clone)]
pub struct LatencyArgs {
    /// Base URL of the hub.
    #[arg(long)]
    pub url: String,
    /// Messages per mode.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Pause between two sends, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub gap_ms: u64,
    /// The polling recipient's interval, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// Where the two client stores go (a temporary directory if absent).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

fn setup(e: impl std::fmt::Display) -> LoadError {
    LoadError::Setup(e.to_string())
}

/// Percentiles of one mode, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latencies {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Worst.
    pub max: f64,
}

/// Runs both modes, live first, and prints their percentiles.
pub async fn run(args: LatencyArgs) -> Result<(), LoadError> {
    let tmp = tempfile::tempdir().map_err(setup)?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    for (name, mode) in [
        (
            "live socket",
            Listening::Live {
                fallback: Duration::from_secs(5),
            },
        ),
        (
            "polling",
            Listening::Poll {
                every: Duration::from_millis(args.poll_ms),
            },
        ),
    ] {
        let l = measure(&args, &dir.join(name.replace(' ', "-")), mode).await?;
        println!(
            "{name}: {} messages, sender's ack to recipient's event: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            args.messages, l.p50, l.p99, l.max
        );
    }
    Ok(())
}

async fn measure(
    args: &LatencyArgs,
    dir: &std::path::Path,
    mode: Listening,
) -> Result<Latencies, LoadError> {
    let (mut alice, mut bob, group) =
        crate::population::pair_in_group(dir, &args.url, "lat").await?;
    alice
        .prefill_tokens(args.messages + 10)
        .await
        .map_err(setup)?;
    bob.set_listening(mode);

    let acked: Arc<Mutex<HashMap<Vec<u8>, Instant>>> = Arc::default();
    let n = args.messages;
    let recipient = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            while latencies.len() < n {
                let events = bob.next_events().await?;
                let now = Instant::now();
                let last = events.last().map_or(0, |(id, _)| *id);
                for (_, e) in events {
                    if let Event::Message { plaintext, .. } = e {
                        // The event can be handed out before `send` returned at the sender
                        // (the fan-out is stored before the answer travels back): 0 then.
                        let sent = acked.lock().ok().and_then(|m| m.get(&plaintext).copied());
                        latencies.push(sent.map_or(0.0, |t| {
                            now.saturating_duration_since(t).as_secs_f64() * 1e3
                        }));
                    }
                }
                bob.events_shown(last)?;
            }
            Ok::<_, mimi_client_rm::ClientError>(latencies)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bar = ProgressBar::new(n as u64)
        .with_style(ProgressStyle::with_template("{msg} {bar:30} {pos}/{len}").map_err(setup)?);
    bar.set_message("sending");
    for i in 0..n {
        let text = format!("latency {i}").into_bytes();
        alice.send(&group, &text).await.map_err(setup)?;
        if let Ok(mut m) = acked.lock() {
            m.insert(text, Instant::now());
        }
        bar.inc(1);
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
    }
    bar.finish_and_clear();
    let mut latencies = recipient.await.map_err(setup)?.map_err(setup)?;
    latencies.sort_by(f64::total_cmp);
    Ok(Latencies {
        p50: crate::report::quantile(&latencies, 0.5),
        p99: crate::report::quantile(&latencies, 0.99),
        max: crate::report::quantile(&latencies, 1.0),
    })
}
