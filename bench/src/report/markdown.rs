//! The Markdown report: the side-by-side table first, then each server's
//! points, the gateway's stage breakdown, the ceilings and the swap scenario.

use std::fmt::Write;

use crate::histogram::Summary;
use crate::result::{LoadRun, Point};

use super::{Combined, Roles};

fn ms(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.0} ms", us / 1e3)
    } else {
        format!("{:.2} ms", us / 1e3)
    }
}

fn rate(r: f64) -> String {
    // Thousands separated by a thin comma, as in the README.
    let n = r.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn pct(x: Option<f64>) -> String {
    x.map_or("—".into(), |r| format!("{:.0} %", r * 100.0))
}

fn errors(p: &Point) -> String {
    if p.errors.is_empty() {
        return "0".into();
    }
    p.errors
        .iter()
        .map(|(k, v)| format!("{v}×{k}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn at_rate(run: &LoadRun, r: f64) -> Option<&Point> {
    run.points.iter().find(|p| p.offered_rps == Some(r))
}

fn percentiles(s: &Summary) -> String {
    format!(
        "{} | {} | {} | {} | {}",
        ms(s.p50_us),
        ms(s.p90_us),
        ms(s.p99_us),
        ms(s.p999_us),
        ms(s.max_us)
    )
}

pub fn render(c: &Combined, roles: &Roles) -> String {
    let mut o = String::new();
    let slo = c.loads.first().map_or(0.0, |l| l.slo_p99_ms);
    let _ = writeln!(o, "# quiver-bench report\n");
    // The header describes the gateway's run (else the first open-loop one).
    let main = c
        .loads
        .iter()
        .find(|l| l.label == roles.gateway)
        .or_else(|| c.loads.iter().find(|l| l.mode == "open"))
        .or(c.loads.first());
    if let Some(l) = main {
        let _ = writeln!(
            o,
            "{} cores, shared by the load generator and the server under test; model `{}`, {} row(s) per request as {:?}; {} s per point after {} s warm-up; latency from each request's intended send time.\n",
            l.machine.cores, l.model, l.rows_per_request, l.format, l.duration_s, l.warmup_s
        );
    }
    let gw = c.loads.iter().find(|l| l.label == roles.gateway);
    let _ = writeln!(
        o,
        "## Side by side\n\n| server | max req/s at p99 ≤ {slo} ms | p50 / p99 at {} req/s | vs {} (req/s at SLO) | max achieved req/s | load avg |\n|---|---:|---:|---:|---:|---:|",
        c.fixed_rate.map_or("—".into(), rate),
        roles.gateway
    );
    for l in &c.loads {
        // Variants of the gateway's own run (idle, hot swap) are rows for
        // their own figures, not peers to compare with.
        let variant = l.label.starts_with(&format!("{}-", roles.gateway));
        let held = match (l.mode.as_str(), l.max_rate_held) {
            _ if l.swap.is_some() => "— (hot-swap scenario)".into(),
            ("closed", _) => "— (closed loop)".into(),
            (_, Some(r)) => rate(r),
            (_, None) => "none held".into(),
        };
        let fixed = c
            .fixed_rate
            .and_then(|r| at_rate(l, r))
            .map_or("—".into(), |p| {
                format!("{} / {}", ms(p.latency.p50_us), ms(p.latency.p99_us))
            });
        let vs = match (gw.and_then(|g| g.max_rate_held), l.max_rate_held) {
            _ if variant || Some(l.label.as_str()) == gw.map(|g| g.label.as_str()) => "—".into(),
            (Some(g), Some(x)) if x > 0.0 => format!("{} = {:.2}×", roles.gateway, g / x),
            _ => "—".into(),
        };
        let load = l
            .machine
            .load_avg_1m
            .map_or("—".into(), |v| format!("{v:.2}"));
        let _ = writeln!(
            o,
            "| {} | {held} | {fixed} | {vs} | {} | {load} |",
            l.label,
            rate(super::max_achieved(l))
        );
    }
    let r = &c.ratios;
    let _ = writeln!(o, "\n## Against the ceilings\n");
    let _ = writeln!(
        o,
        "- transport (bare HTTP server, same stack, no model): {} at p99 ≤ {slo} ms, {} at saturation",
        pct(r.vs_bare_at_slo),
        pct(r.vs_bare_saturation)
    );
    let _ = writeln!(
        o,
        "- compute (ONNX Runtime in process, best batch size): {} of its rows/s",
        pct(r.vs_inprocess_throughput)
    );
    if let Some(us) = r.idle_overhead_p50_us {
        let _ = writeln!(
            o,
            "- overhead at batch 1, idle: p50 {us:.0} µs over the in-process run"
        );
    }
    for i in &c.inprocess {
        let _ = writeln!(
            o,
            "\n### In process: `{}` ({} intra-op thread(s))\n\n| batch | p50 per batch | p99 per batch | rows/s |\n|---:|---:|---:|---:|",
            i.model_path, i.intra_op_threads
        );
        for b in &i.batches {
            let _ = writeln!(
                o,
                "| {} | {:.1} µs | {:.1} µs | {} |",
                b.batch_size,
                b.time_per_batch.p50_us,
                b.time_per_batch.p99_us,
                rate(b.rows_per_s)
            );
        }
    }
    for l in &c.loads {
        render_run(&mut o, l);
    }
    o
}

fn render_run(o: &mut String, l: &LoadRun) {
    let _ = writeln!(
        o,
        "\n## {} ({}, {} connections)\n\n`{}`\n\n| offered | achieved | p50 | p90 | p99 | p99.9 | max | errors | held |\n|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
        l.label, l.mode, l.connections, l.machine.command
    );
    for p in &l.points {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            p.offered_rps.map_or("closed".into(), rate),
            rate(p.achieved_rps),
            percentiles(&p.latency),
            errors(p),
            if p.held { "yes" } else { "no" }
        );
    }
    if l.points.iter().any(|p| p.stages.is_some()) {
        let _ = writeln!(
            o,
            "\nStage breakdown from the server's headers (p50 / p99):\n\n| offered | client | server total | queue | compute | outside server | mean batch | send lag p99 |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for p in &l.points {
            let Some(s) = &p.stages else { continue };
            let pair = |x: &Summary| format!("{} / {}", ms(x.p50_us), ms(x.p99_us));
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {:.1} | {} |",
                p.offered_rps.map_or("closed".into(), rate),
                pair(&p.latency),
                pair(&s.server_total),
                pair(&s.queue),
                pair(&s.compute),
                pair(&s.outside_server),
                s.mean_batch_size,
                ms(p.send_lag.p99_us)
            );
        }
    }
    if let Some(s) = &l.swap {
        let _ = writeln!(
            o,
            "\nHot swap: {} versions published; requests due within {:.1} s of a publish count as during.\n\n| phase | requests | errors | p50 | p99 | max |\n|---|---:|---:|---:|---:|---:|",
            s.swaps.len(),
            s.window_s
        );
        for (name, ph) in [("during swaps", &s.during), ("steady", &s.steady)] {
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} | {} | {} |",
                ph.requests,
                ph.errors,
                ms(ph.latency.p50_us),
                ms(ph.latency.p99_us),
                ms(ph.latency.max_us)
            );
        }
        for e in &s.swaps {
            let _ = writeln!(
                o,
                "- version {} published at {:.2} s, first answer {}{}",
                e.version,
                e.published_s,
                e.first_answer_s.map_or("never".into(), |t| format!(
                    "at {t:.2} s ({:.0} ms later)",
                    (t - e.published_s) * 1e3
                )),
                e.load_status
                    .map_or(String::new(), |s| format!(", load API answered {s}"))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations_read_well() {
        assert_eq!(rate(91_193.4), "91,193");
        assert_eq!(rate(999.0), "999");
        assert_eq!(rate(1_000_000.0), "1,000,000");
        assert_eq!(ms(300.0), "0.30 ms");
        assert_eq!(ms(25_000.0), "25 ms");
        assert_eq!(pct(Some(0.8234)), "82 %");
    }
}
