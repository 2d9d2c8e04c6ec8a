//! Puts result files side by side: a Markdown table ([`markdown`]), SVG
//! plots ([`plot`]) and one combined JSON file, with the gateway's figures
//! as ratios to the transport and compute ceilings measured in the same run.

pub mod markdown;
pub mod plot;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::result::{InprocessRun, LoadRun, ResultFile};

/// Which result is which, by label.
#[derive(Debug, Clone)]
pub struct Roles {
    pub gateway: String,
    pub bare: String,
    pub inprocess: String,
    /// The rate at which p50/p99 are compared across servers; the highest
    /// rate every open-loop run measured when not given.
    pub fixed_rate: Option<f64>,
}

/// The gateway against its ceilings, from results of the same run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ratios {
    /// Gateway max req/s at p99 ≤ SLO ÷ the bare server's.
    pub vs_bare_at_slo: Option<f64>,
    /// Highest achieved req/s over all points, gateway ÷ bare server.
    pub vs_bare_saturation: Option<f64>,
    /// Gateway's highest achieved rows/s ÷ in-process rows/s at its best batch size.
    pub vs_inprocess_throughput: Option<f64>,
    /// Gateway p50 latency at idle (the `<gateway>-idle` run, else its
    /// lowest rate) minus the in-process time for a batch of one: what
    /// serving over HTTP adds, microseconds.
    pub idle_overhead_p50_us: Option<f64>,
}

/// The combined report, also written as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Combined {
    pub loads: Vec<LoadRun>,
    pub inprocess: Vec<InprocessRun>,
    pub ratios: Ratios,
    pub fixed_rate: Option<f64>,
}

pub fn read(paths: &[PathBuf]) -> Result<(Vec<LoadRun>, Vec<InprocessRun>)> {
    let mut loads = Vec::new();
    let mut inprocess = Vec::new();
    for p in paths {
        let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let value: serde_json::Value =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", p.display()))?;
        // A combined report from an earlier `report` (a glob over a results
        // folder picks it up) is an output, not an input.
        if value.get("kind").is_none() && value.get("loads").is_some() {
            continue;
        }
        match serde_json::from_value(value).with_context(|| format!("parsing {}", p.display()))? {
            ResultFile::Load(l) => loads.push(*l),
            ResultFile::Inprocess(i) => inprocess.push(i),
        }
    }
    Ok((loads, inprocess))
}

pub fn max_achieved(run: &LoadRun) -> f64 {
    run.points
        .iter()
        .map(|p| p.achieved_rps)
        .fold(0.0, f64::max)
}

pub fn ratios(loads: &[LoadRun], inprocess: &[InprocessRun], roles: &Roles) -> Ratios {
    let by = |label: &str| loads.iter().find(|l| l.label == label);
    let (Some(gw), bare) = (by(&roles.gateway), by(&roles.bare)) else {
        return Ratios::default();
    };
    let ort = inprocess.iter().find(|i| i.label == roles.inprocess);
    let div = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    // Idle: a run labelled `<gateway>-idle` (one connection, one request
    // at a time) when there is one, else the gateway's lightest point.
    let idle = by(&format!("{}-idle", roles.gateway)).unwrap_or(gw);
    let lowest = idle
        .points
        .iter()
        .filter(|p| p.ok > 0)
        .min_by(|a, b| a.achieved_rps.total_cmp(&b.achieved_rps));
    Ratios {
        vs_bare_at_slo: bare
            .and_then(|b| Some((gw.max_rate_held?, b.max_rate_held?)))
            .and_then(|(g, b)| div(g, b)),
        vs_bare_saturation: bare.and_then(|b| div(max_achieved(gw), max_achieved(b))),
        vs_inprocess_throughput: ort.and_then(|o| o.best()).and_then(|best| {
            div(
                max_achieved(gw) * gw.rows_per_request as f64,
                best.rows_per_s,
            )
        }),
        idle_overhead_p50_us: ort
            .and_then(|o| o.batches.iter().find(|b| b.batch_size == 1))
            .zip(lowest)
            .map(|(b1, p)| p.latency.p50_us - b1.time_per_batch.p50_us),
    }
}

/// The highest offered rate every open-loop run has a point at (its
/// percentiles then compare servers under the same, real load).
pub fn common_rate(loads: &[LoadRun]) -> Option<f64> {
    let open: Vec<&LoadRun> = loads.iter().filter(|l| l.mode == "open").collect();
    open.first()?
        .points
        .iter()
        .filter_map(|p| p.offered_rps)
        .filter(|r| {
            open.iter()
                .all(|l| l.points.iter().any(|p| p.offered_rps == Some(*r)))
        })
        .max_by(f64::total_cmp)
}

/// Writes `report.md`, `report.json`, `latency_vs_load.svg` and one
/// `timeline_<label>.svg` per load run into `out`.
pub fn write(out: &Path, paths: &[PathBuf], roles: &Roles) -> Result<Combined> {
    std::fs::create_dir_all(out)?;
    let (loads, inprocess) = read(paths)?;
    let fixed_rate = roles.fixed_rate.or_else(|| common_rate(&loads));
    let combined = Combined {
        ratios: ratios(&loads, &inprocess, roles),
        loads,
        inprocess,
        fixed_rate,
    };
    std::fs::write(
        out.join("report.json"),
        serde_json::to_vec_pretty(&combined)?,
    )?;
    std::fs::write(out.join("report.md"), markdown::render(&combined, roles))?;
    if combined
        .loads
        .iter()
        .any(|l| l.points.iter().any(|p| p.offered_rps.is_some()))
    {
        plot::latency_vs_load(&out.join("latency_vs_load.svg"), &combined.loads)?;
    }
    for l in &combined.loads {
        plot::timeline(&out.join(format!("timeline_{}.svg", l.label)), l)?;
    }
    Ok(combined)
}
