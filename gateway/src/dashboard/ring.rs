//! The live charts' memory: per model version, one sample a second for
//! the last 15 minutes, in a bounded ring. Each sample is the difference
//! of the version's [`Counters`](super::Counters) since the previous one,
//! plus its queue depth at that instant.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use serde::Serialize;

use super::counters::Totals;
use crate::live::LiveModels;

/// Samples kept per version: 15 minutes at one a second.
pub const CAPACITY: usize = 900;

/// One second (or so) of one version's traffic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Unix time of the sample, in ms.
    pub t_ms: u64,
    /// Requests finished per second, and those that did not succeed.
    pub rps: f64,
    pub errors_ps: f64,
    /// Latency quantiles of the requests finished in the interval, in ms
    /// (bucket upper edges, so never optimistic); `None` without requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Mean rows per batch run in the interval; `None` without batches.
    pub batch_mean: Option<f64>,
    /// Requests waiting in the version's queue at the sample.
    pub queue_depth: u64,
}

struct Series {
    /// The load the counts belong to: a reload counts from zero.
    instance: u64,
    last: Totals,
    last_at: Instant,
    /// When the version was last seen served (Unix ms).
    seen_ms: u64,
    samples: VecDeque<Sample>,
}

/// Every version's ring. Versions no longer served keep their samples
/// until they age out of the window.
#[derive(Default)]
pub struct Rings {
    series: BTreeMap<(String, u64), Series>,
}

impl Rings {
    /// Takes one sample of every served version.
    pub fn sample(&mut self, live: &LiveModels, now: Instant, t_ms: u64) {
        for (name, entry) in &live.models {
            for served in entry.ready_versions() {
                let totals = served.metrics.dashboard.totals(&served.metrics.totals);
                let depth = served.batcher.queue_len() as u64;
                let key = (name.clone(), served.spec.version);
                let series = self.series.entry(key).or_insert_with(|| Series {
                    instance: served.instance,
                    last: totals.clone(),
                    last_at: now,
                    seen_ms: t_ms,
                    samples: VecDeque::with_capacity(CAPACITY),
                });
                series.seen_ms = t_ms;
                if series.instance != served.instance {
                    series.instance = served.instance;
                    series.last = Totals::default();
                }
                let secs = now.saturating_duration_since(series.last_at).as_secs_f64();
                if secs <= 0.0 {
                    continue;
                }
                let sample = difference(&totals, &series.last, secs, depth, t_ms);
                if series.samples.len() == CAPACITY {
                    series.samples.pop_front();
                }
                series.samples.push_back(sample);
                series.last = totals;
                series.last_at = now;
            }
        }
        let oldest = t_ms.saturating_sub(CAPACITY as u64 * 1000);
        self.series.retain(|_, s| s.seen_ms >= oldest);
    }

    /// A version's samples newer than `since_ms`, oldest first.
    pub fn samples(&self, model: &str, version: u64, since_ms: u64) -> Vec<Sample> {
        self.series
            .get(&(model.to_string(), version))
            .map(|s| {
                s.samples
                    .iter()
                    .filter(|x| x.t_ms > since_ms)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The versions with samples, for versions no longer served.
    pub fn versions(&self, model: &str) -> Vec<u64> {
        self.series
            .keys()
            .filter(|(m, _)| m == model)
            .map(|(_, v)| *v)
            .collect()
    }
}

/// The sample between two readings `secs` apart.
fn difference(now: &Totals, before: &Totals, secs: f64, depth: u64, t_ms: u64) -> Sample {
    let window = now.requests.since(&before.requests);
    let batches = now.batches.saturating_sub(before.batches);
    let rows = now.batch_rows.saturating_sub(before.batch_rows);
    Sample {
        t_ms,
        rps: window.requests as f64 / secs,
        errors_ps: window.errors as f64 / secs,
        p50_ms: window.quantile_us(0.5).map(|us| us as f64 / 1000.0),
        p99_ms: window.quantile_us(0.99).map(|us| us as f64 / 1000.0),
        batch_mean: (batches > 0).then(|| rows as f64 / batches as f64),
        queue_depth: depth,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dashboard::Counters;

    #[test]
    fn a_sample_is_the_difference_per_second() {
        let c = Counters::default();
        let engine = crate::metrics::Totals::default();
        let before = c.totals(&engine);
        for i in 0..10u64 {
            c.request(Duration::from_millis(1 + i), i == 9);
        }
        engine.batch(6, Duration::from_micros(30));
        engine.batch(4, Duration::from_micros(20));
        let s = difference(&c.totals(&engine), &before, 2.0, 3, 42);
        assert_eq!(s.rps, 5.0);
        assert_eq!(s.errors_ps, 0.5);
        assert_eq!(s.batch_mean, Some(5.0));
        assert_eq!(s.queue_depth, 3);
        let (p50, p99) = (s.p50_ms.unwrap(), s.p99_ms.unwrap());
        assert!((5.0..=6.5).contains(&p50), "{p50}");
        assert!((10.0..=11.5).contains(&p99), "{p99}");
        let idle = difference(&c.totals(&engine), &c.totals(&engine), 1.0, 0, 43);
        assert_eq!((idle.rps, idle.p99_ms, idle.batch_mean), (0.0, None, None));
    }
}
