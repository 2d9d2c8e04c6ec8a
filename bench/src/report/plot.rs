//! SVG plots: latency percentiles against offered load, one line per server,
//! and latency over time for one run (swap events marked).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::combinators::WithKeyPoints;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::result::LoadRun;

/// Ten distinct colours (matplotlib's tab10, reordered): a closed-loop
/// run may serve many versions.
pub(crate) const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
];

pub(crate) fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

/// Log-scale bounds in milliseconds that contain every value.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi <= 0.0 {
        return (0.01, 1.0);
    }
    (lo / 2.0, hi * 2.0)
}

type Chart<'a> =
    ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, WithKeyPoints<LogCoord<f64>>>>;

/// Axis labels at 1, 2, 3, 5 × 10^k within `lo..hi` (1 and 3 when the
/// range spans more than three decades): plotters' own log axis labels only
/// whole decades, too few for a range like 0.3–2 ms.
fn key_points(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.max(1e-9).log10().floor());
    let steps: &[f64] = if hi / lo.max(1e-9) > 1e3 {
        &[1.0, 3.0]
    } else {
        &[1.0, 2.0, 3.0, 5.0]
    };
    while decade <= hi {
        for &m in steps {
            let v = m * decade;
            if v >= lo && v <= hi {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

/// A chart with a linear x axis and a log-scale latency axis.
fn chart<'a>(
    area: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    title: String,
    xmax: f64,
    (lo, hi): (f64, f64),
    (x_desc, y_desc): (&str, String),
) -> Result<Chart<'a>> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0f64..xmax,
            (lo..hi).log_scale().with_key_points(key_points(lo, hi)),
        )
        .map_err(err)?;
    let x_fmt = move |v: &f64| {
        if xmax > 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&x_fmt)
        .y_labels(12)
        .y_label_formatter(&|v: &f64| {
            // 0.30000000000000004 → 0.3
            let t = format!("{v:.3}");
            t.trim_end_matches('0').trim_end_matches('.').to_string()
        })
        .light_line_style(WHITE)
        .draw()
        .map_err(err)?;
    Ok(chart)
}

/// A line with a legend entry.
fn line(chart: &mut Chart<'_>, pts: Vec<(f64, f64)>, color: RGBColor, label: String) -> Result<()> {
    chart
        .draw_series(LineSeries::new(pts, color.stroke_width(2)))
        .map_err(err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    Ok(())
}

fn legend(chart: &mut Chart<'_>, position: SeriesLabelPosition) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// p50 (top) and p99 (bottom) against offered req/s.
pub fn latency_vs_load(path: &Path, runs: &[LoadRun]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let halves = root.split_evenly((2, 1));
    let xmax = runs
        .iter()
        .flat_map(|r| r.points.iter().filter_map(|p| p.offered_rps))
        .fold(1.0f64, f64::max)
        * 1.05;
    type Pick = fn(&crate::result::Point) -> f64;
    let picks: [(&str, Pick); 2] = [
        ("p50", |p| p.latency.p50_us / 1e3),
        ("p99", |p| p.latency.p99_us / 1e3),
    ];
    for (area, (name, pick)) in halves.iter().zip(picks) {
        let (lo, hi) = bounds(runs.iter().flat_map(|r| r.points.iter().map(pick)));
        let mut chart = chart(
            area,
            format!("{name} latency vs offered load"),
            xmax,
            (lo, hi),
            (
                "offered load (req/s)",
                format!("{name} (ms, from intended send)"),
            ),
        )?;
        let open = runs
            .iter()
            // Sweeps only: a scenario run (hot swap) is one point of another kind.
            .filter(|r| r.swap.is_none() && r.points.iter().any(|p| p.offered_rps.is_some()));
        for (i, run) in open.enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = run
                .points
                .iter()
                .filter_map(|p| Some((p.offered_rps?, (pick(p)).max(lo))))
                .collect();
            line(&mut chart, pts.clone(), color, run.label.clone())?;
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperMiddle)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Latency over time (p50, p99 per slice) of the run's last open-loop point
/// that held, or its last point when none did; vertical lines at swap publishes.
pub fn timeline(path: &Path, run: &LoadRun) -> Result<()> {
    let Some(point) = run
        .points
        .iter()
        .rev()
        .find(|p| p.held && p.offered_rps.is_some())
        .or_else(|| run.points.last())
    else {
        return Ok(());
    };
    let root = SVGBackend::new(path, (900, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let width = match point.timeline.as_slice() {
        [a, b, ..] => b.t_s - a.t_s,
        _ => 1.0,
    };
    let tmax = point.timeline.last().map_or(1.0, |s| s.t_s + width);
    let (lo, hi) = bounds(
        point
            .timeline
            .iter()
            .flat_map(|s| [s.p50_us / 1e3, s.p99_us / 1e3]),
    );
    let title = match point.offered_rps {
        Some(r) => format!("{}: latency over time at {r:.0} req/s", run.label),
        None => format!("{}: latency over time, closed loop", run.label),
    };
    let mut chart = chart(
        &root,
        title,
        tmax,
        (lo, hi),
        (
            "time since start (s, by intended send)",
            "latency (ms)".into(),
        ),
    )?;
    for (i, (name, get)) in [("p50", 0usize), ("p99", 1)].into_iter().enumerate() {
        let color = COLORS[i];
        let pts = point
            .timeline
            .iter()
            .filter(|s| s.requests > s.errors)
            .map(|s| {
                let v = if get == 0 { s.p50_us } else { s.p99_us };
                (s.t_s + width / 2.0, (v / 1e3).max(lo))
            });
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    if let Some(swap) = &run.swap {
        let color = COLORS[2];
        for e in &swap.swaps {
            chart
                .draw_series(LineSeries::new(
                    [(e.published_s, lo), (e.published_s, hi)],
                    color.stroke_width(1),
                ))
                .map_err(err)?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_points_follow_1_2_3_5_within_the_range() {
        assert_eq!(
            key_points(250.0, 2_500.0),
            vec![300.0, 500.0, 1_000.0, 2_000.0]
        );
        assert_eq!(bounds([].into_iter()), (0.01, 1.0));
        assert_eq!(bounds([10.0, 0.0, 40.0].into_iter()), (5.0, 80.0));
    }
}
