//! The measured phase: operations fired at a constant arrival rate (open model).

use crate::population::{self, LoadGroup};
use crate::prebuilt::{self, Arrival};
use crate::report::{self, Op, Report, Sample};
use crate::{LoadError, plot};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mimi_client_rm::Client;
use mimi_rm_protocol::DsMode;
use rand::Rng as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// `mimi-rm-load run` options.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Base URL of the hub, e.g. http://127.0.0.1:8080; several, comma-separated, for hub
    /// processes sharing one database (clients are spread over them in turn).
    #[arg(long)]
    pub url: String,
    /// The hub's mode: `rm` or `baseline` (clients must match it).
    #[arg(long, default_value = "rm", value_parser = crate::parse_mode)]
    pub mode: DsMode,
    /// Number of groups.
    #[arg(long, default_value_t = 20)]
    pub groups: usize,
    /// Members per group (each a separate registered client).
    #[arg(long, default_value_t = 10)]
    pub group_size: usize,
    /// Operations started per second (the arrival rate), across all groups.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Run several arrival rates in turn on the same population (e.g. `250,500,1000`), each
    /// with its own warm-up and report; overrides `--rate`.
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<f64>,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of load before measuring (same rate, not recorded).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Operation mix as weights, e.g. `send=90,update=5,add=5`. `add` invites a fresh client
    /// (a join), `update` commits a key update.
    #[arg(long, default_value = "send=100")]
    pub mix: String,
    /// Bytes of each application message.
    #[arg(long, default_value_t = 100)]
    pub message_bytes: usize,
    /// Most operations in flight; arrivals beyond it are counted as dropped.
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Process ids of the hub (or of every hub process behind `--url`) on this machine, to
    /// report the CPU time they spent per operation; comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub hub_pid: Vec<u32>,
    /// Process id of the database server (a PostgreSQL postmaster), to report the CPU time
    /// it and its backends spent per operation.
    #[arg(long)]
    pub db_pid: Option<u32>,
    /// Build every application message (MLS-encrypt, sign, pay) before each measured run and
    /// only send during it, so the generator's own CPU stays small beside the hub's. Needs a
    /// send-only mix; the whole run (build, warm-up, measurement) must fit in the hub's
    /// freshness window (`--freshness-secs`).
    #[arg(long)]
    pub prebuilt: bool,
    /// Seconds a prebuilt send (and a read of the hub's /metrics) may take before it counts as
    /// failed ("timed out"): a connection the hub never answers must not hold the run's end
    /// forever. Live operations are not cut short (a commit cancelled while it waits would
    /// leave its pending commit behind).
    #[arg(long, default_value_t = 30)]
    pub op_timeout_secs: u64,
    /// The hub's `freshness_window_secs`: how old a request may be when the hub reads it.
    #[arg(long, default_value_t = 60)]
    pub freshness_secs: u64,
    /// Where client state lives during the run (a temporary directory if absent).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Report path prefix: writes `<out>.json` and `<out>.svg`.
    #[arg(long, default_value = "load")]
    pub out: PathBuf,
}

/// Parsed `--mix`: cumulative weights.
struct Mix {
    send: u32,
    update: u32,
    add: u32,
}

impl Mix {
    fn parse(s: &str) -> Result<Self, LoadError> {
        let mut m = Mix {
            send: 0,
            update: 0,
            add: 0,
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| LoadError::Setup(format!("bad mix entry {part:?}")))?;
            let v: u32 = v
                .parse()
                .map_err(|_| LoadError::Setup(format!("bad mix weight {part:?}")))?;
            match k {
                "send" => m.send = v,
                "update" => m.update = v,
                "add" => m.add = v,
                other => return Err(LoadError::Setup(format!("unknown operation {other:?}"))),
            }
        }
        if m.send + m.update + m.add == 0 {
            return Err(LoadError::Setup("the mix is empty".into()));
        }
        Ok(m)
    }

    fn pick(&self, r: u32) -> Op {
        let r = r % (self.send + self.update + self.add);
        if r < self.send {
            Op::Send
        } else if r < self.send + self.update {
            Op::Update
        } else {
            Op::Add
        }
    }
}

/// Fresh clients waiting to be invited by `add` operations.
type Spares = Arc<Mutex<Vec<Client>>>;

/// Sets up the population, runs the load, writes the report and the plot.
pub async fn run(args: RunArgs) -> Result<(), LoadError> {
    let mix = Mix::parse(&args.mix)?;
    let rates = if args.sweep.is_empty() {
        vec![args.rate]
    } else {
        args.sweep.clone()
    };
    if args.prebuilt && (mix.update > 0 || mix.add > 0) {
        return Err(LoadError::Setup(
            "--prebuilt builds application messages ahead: use a send-only mix (commits \
             depend on the epoch at the moment they are made)"
                .into(),
        ));
    }
    if args.groups == 0
        || args.group_size < 2
        || rates.iter().any(|r| !r.is_finite() || *r <= 0.0)
        || args.duration == 0
    {
        return Err(LoadError::Setup(
            "need --groups >= 1, --group-size >= 2, --rate > 0 and --duration >= 1".into(),
        ));
    }
    let tmp = tempfile_dir(&args)?;
    let dir = tmp.path().to_owned();
    let total = rates.iter().sum::<f64>() * (args.duration + args.warmup) as f64;
    let weight = f64::from(mix.send + mix.update + mix.add);
    let expected_adds = (total * f64::from(mix.add) / weight).ceil() as usize;
    println!(
        "mimi-rm-load: {} groups x {} members ({} mode) at {:?} ops/s for {}+{} s against {}",
        args.groups, args.group_size, args.mode, rates, args.warmup, args.duration, args.url
    );
    let clients = population::register(
        &args.url,
        &dir,
        args.mode,
        args.groups * args.group_size,
        "m",
    )
    .await?;
    let groups = Arc::new(population::build_groups(clients, args.group_size).await?);
    let spares = population::register(&args.url, &dir, args.mode, expected_adds, "s").await?;
    if args.mode == DsMode::Rm {
        let per_client = (total / (args.groups * args.group_size) as f64 * 2.0) as usize + 8;
        population::prefill(&groups, per_client).await?;
    }
    if args.prebuilt {
        prebuilt::prime(&groups, args.message_bytes).await?;
    }
    let spares: Spares = Arc::new(Mutex::new(spares));
    // For the hub's /metrics: a hub that stopped answering leaves its counters out of the
    // report instead of holding the run forever.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.op_timeout_secs.max(1)))
        .build()
        .map_err(|e| LoadError::Setup(e.to_string()))?;
    let mut reports = Vec::new();
    for &rate in &rates {
        let report = measure(&args, &http, rate, &mix, groups.clone(), spares.clone()).await?;
        reports.push(report);
    }
    if !args.sweep.is_empty() {
        let mut path = args.out.as_os_str().to_owned();
        path.push("-sweep.svg");
        let path = PathBuf::from(path);
        plot::sweep(&reports, &path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// One measured run at `rate`: the hub's counters and both processes' CPU before and after,
/// the report printed and written (JSON and a timeline plot) next to `--out`.
async fn measure(
    args: &RunArgs,
    http: &reqwest::Client,
    rate: f64,
    mix: &Mix,
    groups: Arc<Vec<LoadGroup>>,
    spares: Spares,
) -> Result<Report, LoadError> {
    let schedule = Schedule::new(args, rate);
    let plan = if args.prebuilt {
        // The last send may wait up to the timeout before the hub reads it.
        let run_for = schedule.end + Duration::from_secs(args.op_timeout_secs.max(1));
        let freshness = Duration::from_secs(args.freshness_secs);
        let plan = prebuilt::build(
            &groups,
            schedule.count(),
            args.message_bytes,
            run_for,
            freshness,
        )
        .await?;
        println!(
            "built {} messages in {:.1?} ({:.0} µs each)",
            plan.arrivals.len(),
            plan.built_in,
            plan.built_in.as_secs_f64() * 1e6 / plan.arrivals.len().max(1) as f64
        );
        Some(plan)
    } else {
        None
    };
    let built_in = plan.as_ref().map(|p| p.built_in);
    let before = report::scrape_all(http, &args.url).await;
    let cpu = || {
        (
            report::cpu_seconds(None),
            sum_over(&args.hub_pid, |p| report::cpu_seconds(Some(p))),
        )
    };
    let io = || sum_over(&args.hub_pid, report::write_bytes);
    let wall = Instant::now();
    let db = || args.db_pid.and_then(report::tree_cpu_seconds);
    let cpu_before = cpu();
    let io_before = io();
    let db_before = db();
    let arrivals = plan.map(|p| p.arrivals.into_iter());
    let samples = drive(args, &schedule, mix, groups, spares, arrivals).await;
    let cpu_after = cpu();
    let io_after = io();
    let db_after = db();
    let wall = wall.elapsed();
    let after = report::scrape_all(http, &args.url).await;
    let mut report = Report::build(args, rate, samples, before, after);
    report.set_cpu(cpu_before, cpu_after, args.warmup, wall);
    report.set_io(io_before, io_after, args.warmup);
    report.set_db_cpu(db_before, db_after, args.warmup);
    report.prebuilt_in_s = built_in.map(|d| d.as_secs_f64());
    report.print();
    let stem = if !args.sweep.is_empty() {
        let mut s = args.out.as_os_str().to_owned();
        s.push(format!("-{rate}"));
        PathBuf::from(s)
    } else {
        args.out.clone()
    };
    report.save(&stem.with_extension("json"))?;
    plot::timeline(&report, &stem.with_extension("svg"))?;
    println!(
        "wrote {} and {}",
        stem.with_extension("json").display(),
        stem.with_extension("svg").display()
    );
    Ok(report)
}

/// The sum of `f` over `pids`; `None` if there are none or any is unreadable.
fn sum_over<T: std::iter::Sum<T>>(pids: &[u32], f: impl Fn(u32) -> Option<T>) -> Option<T> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| f(*p)).sum()
}

fn tempfile_dir(args: &RunArgs) -> Result<tempfile::TempDir, LoadError> {
    match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| LoadError::Io {
                what: d.display().to_string(),
                detail: e.to_string(),
            })?;
            tempfile::tempdir_in(d)
        }
        None => tempfile::tempdir(),
    }
    .map_err(|e| LoadError::Io {
        what: "client directory".into(),
        detail: e.to_string(),
    })
}

/// When the arrivals of one run are due: every `interval` from the start, warm-up first.
struct Schedule {
    rate: f64,
    interval: Duration,
    warmup: Duration,
    end: Duration,
}

impl Schedule {
    fn new(args: &RunArgs, rate: f64) -> Self {
        let warmup = Duration::from_secs(args.warmup);
        Self {
            rate,
            interval: Duration::from_secs_f64(1.0 / rate.max(0.001)),
            warmup,
            end: warmup + Duration::from_secs(args.duration),
        }
    }

    /// The `n`-th arrival's due time, if it falls within the run.
    fn due(&self, n: u64) -> Option<Duration> {
        let due = self.interval.mul_f64(n as f64);
        (due < self.end).then_some(due)
    }

    /// How many arrivals the run has.
    fn count(&self) -> usize {
        (0..).take_while(|n| self.due(*n).is_some()).count()
    }
}

/// Fires operations at their due times and collects one sample per measured operation. With
/// `prebuilt` arrivals, the `n`-th arrival sends the `n`-th prepared message instead of
/// building an operation from the mix.
async fn drive(
    args: &RunArgs,
    schedule: &Schedule,
    mix: &Mix,
    groups: Arc<Vec<LoadGroup>>,
    spares: Spares,
    mut prebuilt: Option<std::vec::IntoIter<Arrival>>,
) -> Vec<Sample> {
    let (rate, warmup, end) = (schedule.rate, schedule.warmup, schedule.end);
    let limit = Duration::from_secs(args.op_timeout_secs.max(1));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight));
    let pb = ProgressBar::new(end.as_secs());
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} s")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(format!("{rate} ops/s"));
    let start = Instant::now();
    let mut rng = rand::thread_rng();
    let mut dropped = 0u64;
    let mut n = 0u64;
    while let Some(due) = schedule.due(n) {
        n += 1;
        tokio::time::sleep_until((start + due).into()).await;
        pb.set_position(start.elapsed().as_secs().min(end.as_secs()));
        let measured = due >= warmup;
        let arrival = prebuilt.as_mut().and_then(Iterator::next);
        let op = if prebuilt.is_some() {
            Op::Send
        } else {
            mix.pick(rng.r#gen())
        };
        let g = rng.gen_range(0..groups.len());
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            if measured {
                dropped += 1;
                let _ = tx.send(Sample::dropped(op, due - warmup));
            }
            continue;
        };
        if let Some(Arrival { transport, request }) = arrival {
            let tx = tx.clone();
            tokio::spawn(async move {
                let send = async {
                    transport
                        .send_prepared(request)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                };
                let result = bounded(limit, send).await;
                let latency = start.elapsed().saturating_sub(due);
                drop(permit);
                if measured {
                    let _ = tx.send(Sample::done(op, due - warmup, latency, result));
                }
            });
            continue;
        }
        if prebuilt.is_some() {
            // Fewer prepared messages than arrivals: counted, never sent unpaid or unsigned.
            if measured {
                let _ = tx.send(Sample::done(
                    op,
                    due - warmup,
                    Duration::ZERO,
                    Err("no prepared message left".into()),
                ));
            }
            continue;
        }
        let member = rng.gen_range(0..groups[g].members.len());
        let (groups, spares, tx) = (groups.clone(), spares.clone(), tx.clone());
        let bytes = args.message_bytes;
        tokio::spawn(async move {
            // Unbounded: cancelling a commit while it waits for the hub would leave the member's
            // pending commit behind; the client's own retries end a live operation.
            let result = perform(op, &groups[g], member, &spares, bytes).await;
            let latency = start.elapsed().saturating_sub(due);
            drop(permit);
            if measured {
                let _ = tx.send(Sample::done(op, due - warmup, latency, result));
            }
        });
    }
    drop(tx);
    pb.set_message("draining");
    let mut samples = Vec::new();
    while let Some(s) = rx.recv().await {
        samples.push(s);
    }
    pb.finish_with_message("done");
    if dropped > 0 {
        eprintln!("{dropped} arrivals dropped: more than --max-in-flight operations were pending");
    }
    samples
}

/// `op`'s result, or an error once it has run for `limit`.
async fn bounded(
    limit: Duration,
    op: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(limit, op)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {limit:?}")))
}

/// How often a commit is retried after losing the race for its epoch.
const COMMIT_ATTEMPTS: usize = 3;

/// Runs one operation; `Err` carries the error text. A member that commits first reads its
/// queue (it may have been idle while others committed), as an app would before changing the
/// group, and retries when another member's commit took the epoch first.
async fn perform(
    op: Op,
    group: &LoadGroup,
    member: usize,
    spares: &Spares,
    bytes: usize,
) -> Result<(), String> {
    // Adding users is for admins, and only the creator (member 0) is one.
    let member = if op == Op::Add { 0 } else { member };
    let mut client = group.members[member].lock().await;
    if op == Op::Send {
        let text = vec![b'm'; bytes];
        return client
            .send(&group.handle, &text)
            .await
            .map_err(|e| e.to_string());
    }
    let joiner = match op {
        Op::Add => {
            let Some(mut joiner) = spares.lock().await.pop() else {
                return Err("no spare client left to invite".into());
            };
            joiner
                .add_contact(&client.contact_card().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let card = joiner.contact_card().map_err(|e| e.to_string())?;
            client.add_contact(&card).map_err(|e| e.to_string())?;
            Some(card)
        }
        _ => None,
    };
    let mut last = String::new();
    for _ in 0..COMMIT_ATTEMPTS {
        client.receive().await.map_err(|e| e.to_string())?;
        let result = match &joiner {
            Some(card) => client.invite(&group.handle, card).await.map(|_| ()),
            None => client.update(&group.handle).await.map(|_| ()),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(mimi_rm_protocol::ErrorCode::WrongEpoch) => {
                last = e.to_string();
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(last)
}
