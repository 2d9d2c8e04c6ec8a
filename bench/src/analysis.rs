//! From raw samples to a [`Point`]: the measured window, percentiles,
//! errors by status, achieved rate, stage breakdown, timeline, and whether
//! the point held its SLO.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::driver::{Plan, Sample};
use crate::histogram::Latencies;
use crate::result::{PhaseStats, Point, Slice, StageBreakdown};
use crate::schedule::latency;

/// A point holds when nothing failed, p99 is within the SLO, and the server
/// kept up (a server that answers fast but only half the offered requests
/// has not held the rate).
pub const MIN_ACHIEVED_FRACTION: f64 = 0.9;

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// Summarises one run of `plan`. Only requests due in the measured window
/// (after warm-up) count; `slice` sets the timeline's resolution.
pub fn point(plan: &Plan, samples: &[Sample], slo_p99: Duration, slice: Duration) -> Point {
    let window = plan.warmup..plan.length();
    let measured: Vec<&Sample> = samples.iter().filter(|s| window.contains(&s.due)).collect();
    let mut lat = Latencies::new();
    let mut service = Latencies::new();
    let mut lag = Latencies::new();
    let (mut queue, mut compute, mut total, mut outside) = (
        Latencies::new(),
        Latencies::new(),
        Latencies::new(),
        Latencies::new(),
    );
    let (mut batch_sum, mut batch_n) = (0u64, 0u64);
    let mut errors = BTreeMap::new();
    let mut versions = BTreeMap::new();
    let mut ok = 0u64;
    let mut ok_done_in_window = 0u64;
    for s in &measured {
        lag.record_ns(ns(s.sent.saturating_sub(s.due)));
        if !s.outcome.status.is_ok() {
            *errors.entry(s.outcome.status.key()).or_insert(0) += 1;
            continue;
        }
        ok += 1;
        if window.contains(&s.done) {
            ok_done_in_window += 1;
        }
        lat.record_ns(ns(latency(s.due, s.done)));
        let svc = s.done.saturating_sub(s.sent);
        service.record_ns(ns(svc));
        let st = s.outcome.stages;
        if let Some(v) = st.version {
            *versions.entry(v.to_string()).or_insert(0) += 1;
        }
        if let Some(q) = st.queue_us {
            queue.record_us(q.into());
        }
        if let Some(c) = st.compute_us {
            compute.record_us(c.into());
        }
        if let Some(t) = st.total_us {
            total.record_us(t.into());
            outside.record_ns(ns(svc.saturating_sub(Duration::from_micros(t.into()))));
        }
        if let Some(b) = st.batch_size {
            batch_sum += u64::from(b);
            batch_n += 1;
        }
    }
    // Closed loop has no schedule, so requests are counted by when they
    // finish rather than when they were due; the same window applies.
    let achieved_rps = ok_done_in_window as f64 / plan.duration.as_secs_f64().max(1e-9);
    let stages = (total.count() > 0).then(|| StageBreakdown {
        queue: queue.summary(),
        compute: compute.summary(),
        server_total: total.summary(),
        outside_server: outside.summary(),
        mean_batch_size: if batch_n == 0 {
            0.0
        } else {
            batch_sum as f64 / batch_n as f64
        },
    });
    let latency = lat.summary();
    let held = errors.is_empty()
        && ok > 0
        && latency.p99_us <= slo_p99.as_secs_f64() * 1e6
        && plan
            .rate
            .is_none_or(|r| achieved_rps >= MIN_ACHIEVED_FRACTION * r);
    Point {
        offered_rps: plan.rate,
        achieved_rps,
        requests: measured.len() as u64,
        ok,
        errors,
        latency,
        service: service.summary(),
        send_lag: lag.summary(),
        stages,
        versions,
        timeline: timeline(samples, slice),
        held,
    }
}

/// Per-slice counts and percentiles over the whole run (by due time).
pub fn timeline(samples: &[Sample], slice: Duration) -> Vec<Slice> {
    let width = slice.as_secs_f64().max(1e-3);
    let mut slices: Vec<(Latencies, u64, u64)> = Vec::new();
    for s in samples {
        let k = (s.due.as_secs_f64() / width) as usize;
        if slices.len() <= k {
            slices.resize_with(k + 1, || (Latencies::new(), 0, 0));
        }
        let (h, n, e) = &mut slices[k];
        *n += 1;
        if s.outcome.status.is_ok() {
            h.record_ns(ns(latency(s.due, s.done)));
        } else {
            *e += 1;
        }
    }
    slices
        .into_iter()
        .enumerate()
        .map(|(k, (h, n, e))| {
            let sum = h.summary();
            Slice {
                t_s: k as f64 * width,
                requests: n,
                errors: e,
                p50_us: sum.p50_us,
                p99_us: sum.p99_us,
                max_us: sum.max_us,
            }
        })
        .collect()
}

/// Splits the measured samples into those due within `window` after any of
/// `events` and the rest: (during, steady).
pub fn split_by_events(
    samples: &[Sample],
    measured: std::ops::Range<Duration>,
    events: &[Duration],
    window: Duration,
) -> (PhaseStats, PhaseStats) {
    let mut during = (Latencies::new(), 0u64, 0u64);
    let mut steady = (Latencies::new(), 0u64, 0u64);
    for s in samples.iter().filter(|s| measured.contains(&s.due)) {
        let in_swap = events.iter().any(|&e| s.due >= e && s.due < e + window);
        let (h, n, errs) = if in_swap { &mut during } else { &mut steady };
        *n += 1;
        if s.outcome.status.is_ok() {
            h.record_ns(ns(latency(s.due, s.done)));
        } else {
            *errs += 1;
        }
    }
    let stats = |(h, n, e): (Latencies, u64, u64)| PhaseStats {
        requests: n,
        errors: e,
        latency: h.summary(),
    };
    (stats(during), stats(steady))
}

/// Whether a sweep should stop: its last `patience` open-loop points all
/// failed to hold.
pub fn sweep_over(points: &[Point], patience: usize) -> bool {
    let open: Vec<&Point> = points.iter().filter(|p| p.offered_rps.is_some()).collect();
    let n = patience.max(1);
    open.len() >= n && open[open.len() - n..].iter().all(|p| !p.held)
}

/// The highest offered rate among points that held.
pub fn max_rate_held(points: &[Point]) -> Option<f64> {
    points
        .iter()
        .filter(|p| p.held)
        .filter_map(|p| p.offered_rps)
        .max_by(f64::total_cmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Outcome, Stages, Status};

    const MS: Duration = Duration::from_millis(1);

    fn sample(due_ms: u64, latency_ms: u64, status: Status) -> Sample {
        let due = MS * due_ms as u32;
        Sample {
            due,
            sent: due,
            done: due + MS * latency_ms as u32,
            outcome: Outcome {
                status,
                stages: Stages {
                    queue_us: Some(100),
                    compute_us: Some(200),
                    total_us: Some(400),
                    batch_size: Some(2),
                    version: Some(7),
                },
            },
        }
    }

    fn plan() -> Plan {
        Plan {
            rate: Some(1_000.0),
            connections: 1,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            drain: Duration::from_secs(1),
        }
    }

    /// 1 000 req/s for 2 s, the first second warm-up: only the second
    /// counts, errors are keyed by status, and counts add up.
    #[test]
    fn counts_add_up_and_warmup_is_excluded() {
        let samples: Vec<Sample> = (0..2_000)
            .map(|i| {
                let status = match i {
                    1_500 => Status::Answered(503),
                    1_501 | 1_502 => Status::Timeout,
                    // A failure during warm-up is not counted.
                    10 => Status::Answered(500),
                    _ => Status::Answered(200),
                };
                sample(i, 1, status)
            })
            .collect();
        let p = point(&plan(), &samples, MS * 5, Duration::from_secs(1));
        assert_eq!(p.requests, 1_000);
        assert_eq!(p.ok, 997);
        assert_eq!(p.errors.get("503"), Some(&1));
        assert_eq!(p.errors.get("timeout"), Some(&2));
        assert_eq!(p.errors.len(), 2);
        assert_eq!(p.ok + p.errors.values().sum::<u64>(), p.requests);
        assert_eq!(p.latency.count, 997);
        assert!(!p.held, "errors mean the point did not hold");
        let stages = p.stages.unwrap();
        assert_eq!(stages.mean_batch_size, 2.0);
        assert!((stages.outside_server.p50_us - 600.0).abs() < 1.0);
        assert_eq!(p.versions.get("7"), Some(&997));
        assert_eq!(p.timeline.len(), 2);
        assert_eq!(p.timeline[0].errors, 1);
        assert_eq!(p.timeline[1].requests, 1_000);
    }

    #[test]
    fn a_clean_fast_point_holds_and_a_slow_one_does_not() {
        let fast: Vec<Sample> = (0..2_000)
            .map(|i| sample(i, 1, Status::Answered(200)))
            .collect();
        let p = point(&plan(), &fast, MS * 5, Duration::from_secs(1));
        assert!(p.held, "{p:?}");
        assert!((p.achieved_rps - 999.0).abs() < 2.0, "{}", p.achieved_rps);
        let slow: Vec<Sample> = (0..2_000)
            .map(|i| sample(i, 6, Status::Answered(200)))
            .collect();
        assert!(!point(&plan(), &slow, MS * 5, Duration::from_secs(1)).held);
    }

    #[test]
    fn a_server_that_falls_behind_does_not_hold() {
        // Answers arrive fast but only for every other request due.
        let samples: Vec<Sample> = (0..2_000)
            .filter(|i| i % 2 == 0)
            .map(|i| sample(i, 1, Status::Answered(200)))
            .collect();
        let p = point(&plan(), &samples, MS * 5, Duration::from_secs(1));
        assert!(!p.held);
    }

    #[test]
    fn max_rate_held_is_the_highest_holding_rate() {
        let fast: Vec<Sample> = (0..2_000)
            .map(|i| sample(i, 1, Status::Answered(200)))
            .collect();
        let mut points = Vec::new();
        for (rate, held) in [(100.0, true), (300.0, true), (200.0, true), (400.0, false)] {
            let mut p = point(&plan(), &fast, MS * 5, Duration::from_secs(1));
            p.offered_rps = Some(rate);
            p.held = held;
            points.push(p);
        }
        assert_eq!(max_rate_held(&points), Some(300.0));
        assert_eq!(max_rate_held(&[]), None);
    }

    #[test]
    fn a_sweep_ends_after_enough_failures_in_a_row() {
        let fast: Vec<Sample> = (0..2_000)
            .map(|i| sample(i, 1, Status::Answered(200)))
            .collect();
        let p = point(&plan(), &fast, MS * 5, Duration::from_secs(1));
        let with = |held: &[bool]| -> Vec<Point> {
            held.iter()
                .map(|&h| Point {
                    held: h,
                    ..p.clone()
                })
                .collect()
        };
        assert!(!sweep_over(&with(&[true, false]), 2));
        assert!(!sweep_over(&with(&[false, true, false]), 2));
        assert!(sweep_over(&with(&[true, false, false]), 2));
        assert!(sweep_over(&with(&[true, false]), 1));
        assert!(!sweep_over(&with(&[]), 2));
    }

    #[test]
    fn swap_windows_split_requests() {
        let samples: Vec<Sample> = (0..3_000)
            .map(|i| {
                let slow = (1_500..1_600).contains(&i);
                let status = if i == 1_550 {
                    Status::Answered(503)
                } else {
                    Status::Answered(200)
                };
                sample(i, if slow { 20 } else { 1 }, status)
            })
            .collect();
        let measured = Duration::from_secs(1)..Duration::from_secs(3);
        let (during, steady) =
            split_by_events(&samples, measured, &[MS * 1_500, MS * 2_500], MS * 200);
        assert_eq!(during.requests, 400);
        assert_eq!(steady.requests, 1_600);
        assert_eq!(during.errors, 1);
        assert_eq!(steady.errors, 0);
        assert!(during.latency.p99_us > 19_000.0);
        assert!(steady.latency.p99_us < 1_100.0);
    }
}
