//! `run --prebuilt`: every application message of a measured run is encrypted, signed and
//! paid for before the run starts, so the generator only sends during it.
//!
//! Building a message (MLS encryption, an Ed25519 signature, a token taken from the wallet)
//! costs the generator more CPU than the hub spends on it, and both share this machine's cores:
//! built at its due time, the generator saturates before the hub does. Built ahead, what is
//! left per arrival is one HTTP POST.
//!
//! The hub refuses a request older than its freshness window (60 s by default), so a run is
//! planned, built and sent within that window, and refused up front when it cannot be.

use crate::LoadError;
use crate::population::LoadGroup;
use indicatif::{ProgressBar, ProgressStyle};
use mimi_client_rm::{PreparedRequest, Transport};
use rand::Rng as _;
use std::time::{Duration, Instant};

/// Seconds kept free between the end of a run and the hub's freshness limit (clock steps,
/// draining, a slow first connection).
const MARGIN: Duration = Duration::from_secs(5);

/// One arrival of the run: the sending client's transport and its request.
pub struct Arrival {
    /// Where the request goes (a clone shares the member's connection pool).
    pub transport: Transport,
    /// The request, built before the run.
    pub request: PreparedRequest,
}

/// The arrivals of one run, in due order, and what building them cost.
pub struct Plan {
    /// One per arrival (`n`-th due at `n / rate` seconds).
    pub arrivals: Vec<Arrival>,
    /// Wall-clock time the build took.
    pub built_in: Duration,
}

/// Sends one message from every member the live way, before anything is built: a wallet learns
/// from the hub's first token challenge which rate classes cost a token, and a prepared request
/// can only carry a token once its wallet knows (it is never retried).
pub async fn prime(groups: &[LoadGroup], bytes: usize) -> Result<(), LoadError> {
    let text = vec![b'p'; bytes];
    for group in groups {
        for member in &group.members {
            member
                .lock()
                .await
                .send(&group.handle, &text)
                .await
                .map_err(|e| LoadError::Setup(format!("priming send: {e}")))?;
        }
    }
    Ok(())
}

/// Picks a random member for each of `count` arrivals and builds its message. Each member
/// builds its share in one batch (one state write, one wallet write), members in parallel.
/// Fails when building plus `run_for` (the run and the longest a send may wait) would not fit
/// in `freshness`.
pub async fn build(
    groups: &[LoadGroup],
    count: usize,
    bytes: usize,
    run_for: Duration,
    freshness: Duration,
) -> Result<Plan, LoadError> {
    let mut rng = rand::thread_rng();
    let order: Vec<(usize, usize)> = (0..count)
        .map(|_| {
            let g = rng.gen_range(0..groups.len());
            (g, rng.gen_range(0..groups[g].members.len()))
        })
        .collect();
    let pb = ProgressBar::new(count as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message("building");
    let mut shares = std::collections::HashMap::<(usize, usize), usize>::new();
    for key in &order {
        *shares.entry(*key).or_default() += 1;
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (&(g, m), &share) in &shares {
        let member = groups[g].members[m].clone();
        let (handle, pb) = (groups[g].handle.clone(), pb.clone());
        tasks.spawn(async move {
            let text = vec![b'm'; bytes];
            let mut client = member.lock().await;
            let built = client
                .prepare_messages(&handle, std::iter::repeat_n(text.as_slice(), share))
                .await
                .map_err(|e| LoadError::Setup(format!("building messages: {e}")))?;
            pb.inc(share as u64);
            Ok::<_, LoadError>(((g, m), client.transport().clone(), built))
        });
    }
    let mut built = std::collections::HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let (key, transport, requests) = done.map_err(|e| LoadError::Setup(e.to_string()))??;
        built.insert(key, (transport, requests.into_iter()));
    }
    pb.finish();
    let built_in = started.elapsed();
    if built_in + run_for + MARGIN > freshness {
        return Err(LoadError::Setup(format!(
            "building took {built_in:.1?}; with {run_for:?} of load the first requests would be \
             older than the hub's {freshness:?} freshness window: shorten the run or raise \
             --freshness-secs together with the hub's freshness_window_secs"
        )));
    }
    let mut arrivals = Vec::with_capacity(count);
    for key in order {
        let (transport, requests) = built
            .get_mut(&key)
            .ok_or_else(|| LoadError::Setup("a member built nothing".into()))?;
        let request = requests
            .next()
            .ok_or_else(|| LoadError::Setup("a member built too few messages".into()))?;
        arrivals.push(Arrival {
            transport: transport.clone(),
            request,
        });
    }
    Ok(Plan { arrivals, built_in })
}
