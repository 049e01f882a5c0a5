//! SVG plots of load reports (plotters).

use crate::LoadError;
use crate::report::{Op, Report};
use plotters::prelude::*;
use std::path::Path;

fn plot_err(path: &Path, e: impl std::fmt::Display) -> LoadError {
    LoadError::Io {
        what: path.display().to_string(),
        detail: e.to_string(),
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws the series labels of `chart` in a framed box at `position`.
fn legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    path: &Path,
) -> Result<(), LoadError>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| plot_err(path, e))
}

/// Throughput and p50/p99 latency over the measured phase of one run.
pub fn timeline(report: &Report, path: &Path) -> Result<(), LoadError> {
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let (top, bottom) = root.split_vertically(300);
    let t_max = report.duration_s.max(1) as f64;
    let lat_max = report.timeline.iter().map(|w| w.p99_ms).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("latency — {}", report.label), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..lat_max)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (i, (name, pick)) in [
        (
            "p50",
            (|w: &crate::report::Window| w.p50_ms) as fn(&_) -> f64,
        ),
        ("p99", |w: &crate::report::Window| w.p99_ms),
    ]
    .into_iter()
    .enumerate()
    {
        let color = COLORS[i];
        chart
            .draw_series(LineSeries::new(
                report.timeline.iter().map(|w| (w.t_s, pick(w))),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_err(path, e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight, path)?;
    let ops_max = report
        .timeline
        .iter()
        .map(|w| w.ops_per_s)
        .fold(report.target_rate, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("completed operations per second", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..ops_max)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ops/s")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(LineSeries::new(
            report.timeline.iter().map(|w| (w.t_s, w.ops_per_s)),
            COLORS[2].stroke_width(2),
        ))
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, report.target_rate), (t_max, report.target_rate)],
            BLACK.mix(0.4),
        ))
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}

/// The send-latency distribution (percentile against ms, log scale) of several runs, e.g. RM
/// against baseline at the same rate: the gap between the curves is the price of privacy.
pub fn compare(reports: &[Report], path: &Path) -> Result<(), LoadError> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let max = reports
        .iter()
        .filter_map(|r| r.ops.get(&Op::Send))
        .map(|s| s.max_ms)
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "application-message latency distribution",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..100.0, (0.05..max * 1.2).log_scale())
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency, ms (log)")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (i, r) in reports.iter().enumerate() {
        let Some(s) = r.ops.get(&Op::Send) else {
            continue;
        };
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.cdf_ms
                    .iter()
                    .enumerate()
                    .map(|(p, v)| (p as f64, v.max(0.05))),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_err(path, e))?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft, path)?;
    root.present().map_err(|e| plot_err(path, e))
}

/// Latency percentiles of application messages against the arrival rate, one line per
/// percentile, from a sweep: where the curves turn up is the hub's capacity.
pub fn sweep(reports: &[Report], path: &Path) -> Result<(), LoadError> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let points: Vec<(f64, &crate::report::OpStats)> = reports
        .iter()
        .filter_map(|r| r.ops.get(&Op::Send).map(|s| (r.target_rate, s)))
        .collect();
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = points.iter().map(|p| p.1.p99_ms).fold(1.0, f64::max) * 1.5;
    let label = reports.first().map(|r| r.label.clone()).unwrap_or_default();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("latency against arrival rate — {label}"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (0.1..y_max).log_scale())
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("arrival rate, application messages per second")
        .y_desc("latency, ms (log)")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    type Pick = fn(&crate::report::OpStats) -> f64;
    let lines: [(&str, Pick); 3] = [
        ("p50", |s| s.p50_ms),
        ("p99", |s| s.p99_ms),
        ("p99.9", |s| s.p999_ms),
    ];
    for (i, (name, pick)) in lines.into_iter().enumerate() {
        let color = COLORS[i];
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(r, s)| (*r, pick(s).max(0.1))),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_err(path, e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft, path)?;
    root.present().map_err(|e| plot_err(path, e))
}
