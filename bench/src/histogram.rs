//! Latency histograms: an HdrHistogram of nanoseconds and the summary the
//! reports print (p50/p90/p99/p99.9/max in microseconds).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest value a histogram holds: one minute. Longer values are clamped
/// to it, so a stall is still counted (as at least a minute) rather than lost.
const MAX_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds, three significant digits (so every
/// percentile is within 0.1 % of the exact value).
#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    pub fn new() -> Latencies {
        // 1 ns .. 60 s at 3 significant digits; the bounds are constants, so
        // construction cannot fail, but fall back to an auto-resizing one
        // rather than panic.
        Latencies(
            Histogram::new_with_bounds(1, MAX_NS, 3)
                .or_else(|_| Histogram::new(3))
                .unwrap_or_else(|_| unreachable_histogram()),
        )
    }

    pub fn record_ns(&mut self, ns: u64) {
        // Zero is below the histogram's lowest discernible value; 1 ns stands in.
        let _ = self.0.record(ns.clamp(1, MAX_NS));
    }

    pub fn record_us(&mut self, us: u64) {
        self.record_ns(us.saturating_mul(1_000));
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at `quantile` (0..=1) in microseconds; 0 when empty.
    pub fn quantile_us(&self, quantile: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(quantile) as f64 / 1_000.0
    }

    pub fn summary(&self) -> Summary {
        let empty = self.0.is_empty();
        let us = |ns: u64| if empty { 0.0 } else { ns as f64 / 1_000.0 };
        Summary {
            count: self.0.len(),
            mean_us: if empty { 0.0 } else { self.0.mean() / 1_000.0 },
            p50_us: self.quantile_us(0.50),
            p90_us: self.quantile_us(0.90),
            p99_us: self.quantile_us(0.99),
            p999_us: self.quantile_us(0.999),
            max_us: us(self.0.max()),
        }
    }
}

/// `Histogram::new(3)` only fails for sigfig > 5; this is never reached.
fn unreachable_histogram() -> Histogram<u64> {
    let mut sigfig = 2;
    loop {
        if let Ok(h) = Histogram::new(sigfig) {
            return h;
        }
        sigfig = 1;
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b.abs() * 0.001 + 1e-9
    }

    #[test]
    fn percentiles_of_a_uniform_ramp() {
        let mut h = Latencies::new();
        for us in 1..=10_000u64 {
            h.record_us(us);
        }
        let s = h.summary();
        assert_eq!(s.count, 10_000);
        assert!(close(s.p50_us, 5_000.0), "{s:?}");
        assert!(close(s.p90_us, 9_000.0), "{s:?}");
        assert!(close(s.p99_us, 9_900.0), "{s:?}");
        assert!(close(s.p999_us, 9_990.0), "{s:?}");
        assert!(close(s.max_us, 10_000.0), "{s:?}");
        assert!(close(s.mean_us, 5_000.5), "{s:?}");
    }

    #[test]
    fn one_outlier_moves_only_the_tail() {
        let mut h = Latencies::new();
        for _ in 0..999 {
            h.record_us(100);
        }
        h.record_us(50_000);
        let s = h.summary();
        assert!(close(s.p50_us, 100.0) && close(s.p99_us, 100.0), "{s:?}");
        assert!(close(s.max_us, 50_000.0), "{s:?}");
        // p99.9 is the 999th value of 1000: still the common one.
        assert!(close(s.p999_us, 100.0), "{s:?}");
    }

    #[test]
    fn empty_histogram_summarises_to_zeros() {
        assert_eq!(Latencies::new().summary(), Summary::default());
    }

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record_us(10);
        b.record_us(1_000);
        b.record_us(1_000);
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 3);
        assert!(close(s.max_us, 1_000.0));
        assert!(close(s.p50_us, 1_000.0));
    }

    #[test]
    fn out_of_range_values_are_clamped_not_dropped() {
        let mut h = Latencies::new();
        h.record_ns(0);
        h.record_ns(u64::MAX);
        let s = h.summary();
        assert_eq!(s.count, 2);
        assert!(s.max_us >= 59_000_000.0, "{s:?}");
    }
}
