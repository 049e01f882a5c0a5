//! Samples, latency statistics and the JSON report.

use crate::LoadError;
use crate::run::RunArgs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An operation kind of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// An application message.
    Send,
    /// A key-update commit.
    Update,
    /// An add commit with a Welcome (a join).
    Add,
}

/// One measured arrival.
#[derive(Debug, Clone)]
pub struct Sample {
    op: Op,
    /// When it was due, from the start of the measured phase.
    due: Duration,
    /// From due time to completion; `None` if it was dropped.
    latency: Option<Duration>,
    /// Completion, from the start of the measured phase.
    completed: Duration,
    error: Option<String>,
}

impl Sample {
    /// A completed operation.
    pub fn done(op: Op, due: Duration, latency: Duration, result: Result<(), String>) -> Self {
        Self {
            op,
            due,
            latency: Some(latency),
            completed: due + latency,
            error: result.err(),
        }
    }

    /// An arrival that found too many operations in flight.
    pub fn dropped(op: Op, due: Duration) -> Self {
        Self {
            op,
            due,
            latency: None,
            completed: due,
            error: Some("dropped".into()),
        }
    }
}

/// Latency statistics of one operation kind, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpStats {
    /// Arrivals in the measured phase.
    pub count: u64,
    /// Of which failed or were dropped.
    pub errors: u64,
    /// Successful operations per second of measured time.
    pub per_second: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Worst.
    pub max_ms: f64,
    /// Latency at each whole percentile 0..=100 (for CDF plots).
    pub cdf_ms: Vec<f64>,
    /// Up to five distinct error messages, with counts.
    pub error_kinds: BTreeMap<String, u64>,
}

/// One time window of the run (for the timeline plot).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Window {
    /// Window start, seconds into the measured phase.
    pub t_s: f64,
    /// Completed operations per second in the window.
    pub ops_per_s: f64,
    /// Median latency of operations due in the window.
    pub p50_ms: f64,
    /// 99th percentile of operations due in the window.
    pub p99_ms: f64,
}

/// Everything a run measured, as written to `<out>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Label for plots: mode and shape.
    pub label: String,
    /// Hub mode.
    pub mode: String,
    /// Hub URL.
    pub url: String,
    /// Groups driven.
    pub groups: usize,
    /// Members per group.
    pub group_size: usize,
    /// Target arrival rate (ops/s).
    pub target_rate: f64,
    /// Measured seconds.
    pub duration_s: u64,
    /// The mix as given.
    pub mix: String,
    /// Successful operations per second, all kinds, over the measured phase plus the time the
    /// last of its operations took to finish: below the target rate when the hub falls behind.
    pub achieved_ops_per_s: f64,
    /// Messages the hub enqueued per second (from its `/metrics`), if it exposes them.
    pub hub_enqueued_per_s: Option<f64>,
    /// CPU seconds the load generator itself used per wall-clock second, from the start of the
    /// warm-up until the last operation finished.
    pub generator_cpu_per_s: Option<f64>,
    /// CPU seconds the hub used per wall-clock second over the same span, if its pid was given.
    pub hub_cpu_per_s: Option<f64>,
    /// Hub CPU time per operation started (warm-up included), in microseconds.
    pub hub_cpu_us_per_op: Option<f64>,
    /// Bytes the hub process sent to storage per operation started (warm-up included): its
    /// `/proc/<pid>/io` `write_bytes`, which counts the log, the slot file, flushes and
    /// compactions alike.
    #[serde(default)]
    pub hub_write_bytes_per_op: Option<f64>,
    /// CPU time of the database server (a PostgreSQL postmaster and all its backends, if its
    /// pid was given) per operation started, warm-up included, in microseconds.
    #[serde(default)]
    pub db_cpu_us_per_op: Option<f64>,
    /// With `--prebuilt`: seconds spent building the run's messages before it started (not in
    /// the generator's CPU figure, which covers sending only).
    #[serde(default)]
    pub prebuilt_in_s: Option<f64>,
    /// Per operation kind.
    pub ops: BTreeMap<Op, OpStats>,
    /// Half-second windows.
    pub timeline: Vec<Window>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q`-quantile (0..=1) of sorted values.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn stats(samples: &[&Sample], seconds: f64) -> OpStats {
    let mut lat: Vec<f64> = samples
        .iter()
        .filter(|s| s.error.is_none())
        .filter_map(|s| s.latency.map(ms))
        .collect();
    lat.sort_by(f64::total_cmp);
    let mut error_kinds = BTreeMap::new();
    for s in samples {
        if let Some(e) = &s.error
            && (error_kinds.len() < 5 || error_kinds.contains_key(e))
        {
            *error_kinds.entry(e.clone()).or_insert(0) += 1;
        }
    }
    OpStats {
        count: samples.len() as u64,
        errors: samples.iter().filter(|s| s.error.is_some()).count() as u64,
        per_second: lat.len() as f64 / seconds.max(1e-9),
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        p999_ms: quantile(&lat, 0.999),
        max_ms: lat.last().copied().unwrap_or(0.0),
        cdf_ms: (0..=100)
            .map(|p| quantile(&lat, f64::from(p) / 100.0))
            .collect(),
        error_kinds,
    }
}

/// CPU seconds (user + system) used so far by process `pid`, or by this process; `None` where
/// `/proc` is not available.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Some(ticks / 100.0)
}

/// CPU seconds used so far by process `pid` and its children now running (a PostgreSQL
/// postmaster and its backends); `None` where `/proc` is not available.
pub fn tree_cpu_seconds(pid: u32) -> Option<f64> {
    let mut total = cpu_seconds(Some(pid))?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the command name.
        let parent = text
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(pid) {
            total += cpu_seconds(Some(child)).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// Bytes process `pid` has caused to be written to storage (`write_bytes` of `/proc/<pid>/io`);
/// `None` where that is not readable.
pub fn write_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The `mimi_messages_enqueued` counters of every hub in the comma-separated `urls`, summed
/// (None if any is unavailable).
pub async fn scrape_all(http: &reqwest::Client, urls: &str) -> Option<u64> {
    let mut sum = 0;
    for url in urls.split(',') {
        sum += scrape(http, url).await?;
    }
    Some(sum)
}

/// Reads the hub's `mimi_messages_enqueued` counter (None if unavailable).
pub async fn scrape(http: &reqwest::Client, url: &str) -> Option<u64> {
    let text = http
        .get(format!("{}/metrics", url.trim_end_matches('/')))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("mimi_messages_enqueued "))
        .and_then(|v| v.trim().parse().ok())
}

impl Report {
    /// Summarises the samples of a run.
    pub fn build(
        args: &RunArgs,
        rate: f64,
        samples: Vec<Sample>,
        before: Option<u64>,
        after: Option<u64>,
    ) -> Self {
        let seconds = args.duration as f64;
        let mut by_op: BTreeMap<Op, Vec<&Sample>> = BTreeMap::new();
        for s in &samples {
            by_op.entry(s.op).or_default().push(s);
        }
        let ops: BTreeMap<Op, OpStats> = by_op
            .iter()
            .map(|(op, v)| (*op, stats(v, seconds)))
            .collect();
        let ok = samples.iter().filter(|s| s.error.is_none()).count();
        let span = samples
            .iter()
            .map(|s| s.completed.as_secs_f64())
            .fold(seconds, f64::max);
        let window = 0.5;
        let windows = (seconds / window).ceil() as usize;
        let timeline = (0..windows)
            .map(|i| {
                let t = i as f64 * window;
                let mut lat: Vec<f64> = samples
                    .iter()
                    .filter(|s| s.error.is_none())
                    .filter(|s| (t..t + window).contains(&s.due.as_secs_f64()))
                    .filter_map(|s| s.latency.map(ms))
                    .collect();
                lat.sort_by(f64::total_cmp);
                Window {
                    t_s: t,
                    ops_per_s: lat.len() as f64 / window,
                    p50_ms: quantile(&lat, 0.5),
                    p99_ms: quantile(&lat, 0.99),
                }
            })
            .collect();
        Self {
            label: format!(
                "{} mode, {} x {} members, {} ops/s{}",
                args.mode,
                args.groups,
                args.group_size,
                rate,
                if args.prebuilt { ", prebuilt" } else { "" }
            ),
            mode: args.mode.to_string(),
            url: args.url.clone(),
            groups: args.groups,
            group_size: args.group_size,
            target_rate: rate,
            duration_s: args.duration,
            mix: args.mix.clone(),
            achieved_ops_per_s: ok as f64 / span.max(1e-9),
            // Includes the warm-up and the drain after the measured phase: an upper bound.
            hub_enqueued_per_s: before
                .zip(after)
                .map(|(b, a)| a.saturating_sub(b) as f64 / (args.duration + args.warmup) as f64),
            generator_cpu_per_s: None,
            hub_cpu_per_s: None,
            hub_cpu_us_per_op: None,
            hub_write_bytes_per_op: None,
            db_cpu_us_per_op: None,
            prebuilt_in_s: None,
            ops,
            timeline,
        }
    }

    /// Fills in the storage figure from the hub's written bytes before and after the run.
    pub fn set_io(&mut self, before: Option<u64>, after: Option<u64>, warmup_s: u64) {
        let ops = self.target_rate * (self.duration_s + warmup_s) as f64;
        self.hub_write_bytes_per_op = before
            .zip(after)
            .filter(|_| ops > 0.0)
            .map(|(b, a)| a.saturating_sub(b) as f64 / ops);
    }

    /// Fills in the CPU figures from `(generator, hub)` CPU seconds before and after the run.
    pub fn set_cpu(
        &mut self,
        before: (Option<f64>, Option<f64>),
        after: (Option<f64>, Option<f64>),
        warmup_s: u64,
        wall: Duration,
    ) {
        let wall = wall.as_secs_f64().max(1e-9);
        let delta = |b: Option<f64>, a: Option<f64>| b.zip(a).map(|(b, a)| (a - b).max(0.0));
        self.generator_cpu_per_s = delta(before.0, after.0).map(|d| d / wall);
        self.hub_cpu_per_s = delta(before.1, after.1).map(|d| d / wall);
        // Every operation started, warm-up included, finished inside the span.
        let ops = self.target_rate * (self.duration_s + warmup_s) as f64;
        self.hub_cpu_us_per_op = delta(before.1, after.1)
            .filter(|_| ops > 0.0)
            .map(|d| d / ops * 1e6);
    }

    /// Records the database server's CPU seconds before and after the run (see
    /// [`Report::db_cpu_us_per_op`]).
    pub fn set_db_cpu(&mut self, before: Option<f64>, after: Option<f64>, warmup_s: u64) {
        let ops = self.target_rate * (self.duration_s + warmup_s) as f64;
        self.db_cpu_us_per_op = before
            .zip(after)
            .filter(|_| ops > 0.0)
            .map(|(b, a)| (a - b).max(0.0) / ops * 1e6);
    }

    /// A human-readable summary on stdout.
    pub fn print(&self) {
        if let Some(b) = self.prebuilt_in_s {
            println!("  prebuilt: messages built in {b:.1} s before the run");
        }
        if let Some(d) = self.db_cpu_us_per_op {
            println!("  database: {d:.0} us CPU per op");
        }
        if let Some(b) = self.hub_write_bytes_per_op {
            println!("  storage: hub wrote {b:.0} bytes per op");
        }
        if let Some(h) = self.hub_cpu_per_s {
            println!(
                "  CPU: hub {:.2} cores ({:.0} us per op), generator {:.2} cores",
                h,
                self.hub_cpu_us_per_op.unwrap_or(0.0),
                self.generator_cpu_per_s.unwrap_or(0.0)
            );
        }
        println!("{}", self.label);
        println!(
            "  achieved {:.0} ops/s (target {:.0}); hub enqueued {} msgs/s",
            self.achieved_ops_per_s,
            self.target_rate,
            self.hub_enqueued_per_s
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "?".into())
        );
        for (op, s) in &self.ops {
            println!(
                "  {op:?}: {} ok/s, {} errors of {}; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
                s.per_second.round(),
                s.errors,
                s.count,
                s.p50_ms,
                s.p99_ms,
                s.p999_ms,
                s.max_ms
            );
            for (e, n) in &s.error_kinds {
                println!("    {n} x {e}");
            }
        }
    }

    /// Writes the report as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<(), LoadError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| io(path, e))?;
        std::fs::write(path, text).map_err(|e| io(path, e))
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> LoadError {
    LoadError::Io {
        what: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// Reads reports written by [`Report::save`].
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<Report>, LoadError> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| io(p, e))?;
            serde_json::from_str(&text).map_err(|e| io(p, e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_distribution() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 501.0);
        assert_eq!(quantile(&v, 0.99), 990.0);
        assert_eq!(quantile(&v, 1.0), 1000.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn errors_and_drops_are_counted_not_timed() {
        let ok = Sample::done(Op::Send, Duration::ZERO, Duration::from_millis(3), Ok(()));
        let bad = Sample::done(
            Op::Send,
            Duration::ZERO,
            Duration::from_millis(900),
            Err("refused".into()),
        );
        let dropped = Sample::dropped(Op::Send, Duration::ZERO);
        let s = stats(&[&ok, &bad, &dropped], 1.0);
        assert_eq!((s.count, s.errors), (3, 2));
        assert_eq!(
            s.max_ms, 3.0,
            "failed operations do not enter the latency statistics"
        );
        assert_eq!(s.error_kinds.get("refused"), Some(&1));
        assert_eq!(s.error_kinds.get("dropped"), Some(&1));
    }
}
