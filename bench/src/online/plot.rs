//! The accuracy-over-time plot of a stream run: one line per serving
//! version (accuracy of its labelled predictions in each time bucket), the
//! accuracy of all traffic over a sliding window, and vertical marks for
//! drift onsets, the trainer's detections and retrains, publishes, canary
//! steps, promotions and rollbacks.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::events::Kind;
use super::report::Summary;
use crate::report::plot::{COLORS, err};

/// Versions named in the legend at most.
const MAX_LEGEND_VERSIONS: usize = 12;

/// How each kind of event is marked: colour, and whether the line is drawn
/// full height (important) or only along the bottom band.
fn mark(kind: Kind) -> (RGBColor, bool) {
    match kind {
        Kind::DriftOnset => (RGBColor(230, 0, 140), true),
        Kind::DriftDetected => (RGBColor(255, 140, 0), false),
        Kind::RetrainStarted | Kind::RetrainFinished => (RGBColor(120, 120, 120), false),
        Kind::Published => (RGBColor(128, 0, 160), false),
        Kind::CanaryStep => (RGBColor(90, 170, 230), false),
        Kind::Promoted => (RGBColor(0, 150, 0), true),
        Kind::RolledBack => (RGBColor(120, 0, 0), true),
    }
}

/// Per version, (bucket middle, accuracy) for buckets with at least
/// `min_n` labelled predictions of that version.
pub fn buckets(s: &Summary, width: f64, min_n: u64) -> BTreeMap<u64, Vec<(f64, f64)>> {
    let mut counts: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
    for p in &s.predictions {
        let b = (p.answered_s / width) as u64;
        let c = counts.entry((p.version, b)).or_default();
        c.0 += 1;
        c.1 += u64::from(p.correct());
    }
    let mut out: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
    for ((v, b), (n, ok)) in counts {
        if n >= min_n {
            out.entry(v)
                .or_default()
                .push(((b as f64 + 0.5) * width, ok as f64 / n as f64));
        }
    }
    out
}

/// Seconds from the start to the last answer (at least 1).
pub fn duration(s: &Summary) -> f64 {
    s.predictions
        .iter()
        .map(|p| p.answered_s)
        .fold(s.run.seconds, f64::max)
        .max(1.0)
}

/// About 60 buckets over the run, at least a second each.
pub fn bucket_width(tmax: f64) -> f64 {
    (tmax / 60.0).max(1.0)
}

/// Accuracy of all traffic over the last `window` predictions, one point
/// per `step` predictions.
fn rolling(s: &Summary, window: usize) -> Vec<(f64, f64)> {
    let p = &s.predictions;
    let w = window.max(1);
    let step = (p.len() / 400).max(1);
    let mut ok = 0u64;
    let mut out = Vec::new();
    for (i, x) in p.iter().enumerate() {
        ok += u64::from(x.correct());
        if i >= w {
            ok -= u64::from(p[i - w].correct());
        }
        if i + 1 >= w && i % step == 0 {
            out.push((x.answered_s, ok as f64 / w as f64));
        }
    }
    out
}

/// One legend entry: a horizontal line (series) or a vertical tick (event).
struct Entry {
    label: String,
    color: RGBColor,
    tick: bool,
}

/// The legend in its own column right of the chart, so it never hides
/// data or marks.
fn legend(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    entries: &[Entry],
) -> Result<()> {
    for (i, e) in entries.iter().enumerate() {
        let y = 50 + 20 * i as i32;
        let shape = if e.tick {
            vec![(20, y - 7), (20, y + 7)]
        } else {
            vec![(10, y), (30, y)]
        };
        area.draw(&PathElement::new(shape, e.color.stroke_width(2)))
            .map_err(err)?;
        area.draw(&Text::new(e.label.clone(), (38, y - 7), ("sans-serif", 13)))
            .map_err(err)?;
    }
    Ok(())
}

pub fn accuracy_over_time(path: &Path, s: &Summary, window: usize) -> Result<()> {
    let root = SVGBackend::new(path, (1200, 550)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (root, side) = root.split_horizontally(1000);
    let mut entries = Vec::new();
    let tmax = duration(s);
    let width = bucket_width(tmax);
    let per_version = buckets(s, width, 20);
    let overall = rolling(s, window);
    let lo = per_version
        .values()
        .flatten()
        .chain(&overall)
        .map(|p| p.1)
        .fold(1.0f64, f64::min)
        .min(0.5)
        - 0.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: online accuracy per serving version (prequential, labels late)",
                s.run.stream
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..tmax, lo.max(0.0)..1.0f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the stream started")
        .x_label_formatter(&|v: &f64| format!("{v:.0}"))
        .y_desc("accuracy")
        .light_line_style(WHITE)
        .draw()
        .map_err(err)?;
    let black = RGBColor(40, 40, 40);
    chart
        .draw_series(LineSeries::new(overall, black.stroke_width(1)))
        .map_err(err)?;
    entries.push(Entry {
        label: format!("all traffic, last {window}"),
        color: black,
        tick: false,
    });
    let versions = per_version.len();
    for (i, (v, pts)) in per_version.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?;
        // The legend column holds about two dozen lines: past a dozen
        // versions the rest are summed up in one.
        if versions <= MAX_LEGEND_VERSIONS || i + 1 < MAX_LEGEND_VERSIONS {
            entries.push(Entry {
                label: format!("v{v} (bucketed)"),
                color,
                tick: false,
            });
        } else if i + 1 == MAX_LEGEND_VERSIONS {
            entries.push(Entry {
                label: format!("… {} more versions", versions - i),
                color: WHITE,
                tick: false,
            });
        }
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 2, color.filled())))
            .map_err(err)?;
    }
    let y0 = lo.max(0.0);
    let band = y0 + (1.0 - y0) * 0.12;
    let mut kinds = Vec::new();
    for (t, e) in &s.timeline {
        if *t < 0.0 || *t > tmax {
            continue;
        }
        let (color, full) = mark(e.kind);
        let top = if full { 1.0 } else { band };
        chart
            .draw_series(LineSeries::new(
                [(*t, y0), (*t, top)],
                color.stroke_width(2),
            ))
            .map_err(err)?;
        if !kinds.contains(&e.kind) {
            kinds.push(e.kind);
        }
    }
    kinds.sort();
    entries.extend(kinds.into_iter().map(|k| Entry {
        label: k.label().into(),
        color: mark(k).0,
        tick: true,
    }));
    legend(&side, &entries)?;
    root.present().map_err(err)?;
    Ok(())
}
