//! Per-version counters the rollout guardrail compares: requests, errors
//! and a latency histogram, for routed traffic only (pinned requests are
//! someone's test, not the arm's users). Lock-free on the hot path; the
//! guardrail takes snapshots and works on their differences, so a window
//! is "since the step began" without ever resetting anything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Eight buckets per power of two: under 13 % relative error, 1 µs to
/// about 12 days in 304 buckets.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((40 - SUB_BITS as usize) + 1) * SUB as usize;

pub struct VersionStats {
    requests: AtomicU64,
    errors: AtomicU64,
    latency_us: Box<[AtomicU64]>,
}

impl Default for VersionStats {
    fn default() -> Self {
        VersionStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_us: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl VersionStats {
    pub fn record(&self, latency: Duration, error: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(b) = self.latency_us.get(bucket(us)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_us: self
                .latency_us
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Counts at one instant; `later.since(&earlier)` is the window between.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub requests: u64,
    pub errors: u64,
    latency_us: Vec<u64>,
}

impl Snapshot {
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency_us: self
                .latency_us
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.latency_us.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// Adds `other`'s counts: the traffic of two sources as one.
    pub fn merge(&mut self, other: &Snapshot) {
        self.requests += other.requests;
        self.errors += other.errors;
        if self.latency_us.len() < other.latency_us.len() {
            self.latency_us.resize(other.latency_us.len(), 0);
        }
        for (mine, theirs) in self.latency_us.iter_mut().zip(&other.latency_us) {
            *mine += theirs;
        }
    }

    /// The non-empty latency buckets as `(bucket, count)`, for reports.
    pub fn sparse_latency(&self) -> Vec<(u32, u64)> {
        self.latency_us
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (i as u32, *n))
            .collect()
    }

    /// A snapshot from a report's counts; buckets out of range are dropped.
    pub fn from_parts(requests: u64, errors: u64, sparse: &[(u32, u64)]) -> Snapshot {
        let mut latency_us = vec![0; BUCKETS];
        for &(i, n) in sparse {
            if let Some(b) = latency_us.get_mut(i as usize) {
                *b += n;
            }
        }
        Snapshot {
            requests,
            errors,
            latency_us,
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The `q` quantile of latency in microseconds (the upper edge of its
    /// bucket, so never optimistic); `None` without data.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.latency_us.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.latency_us.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(upper_edge(i));
            }
        }
        self.latency_us.len().checked_sub(1).map(upper_edge)
    }
}

fn bucket(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // >= SUB_BITS
    let sub = (us >> (exp - SUB_BITS)) & (SUB - 1);
    (((exp - SUB_BITS + 1) as u64 * SUB + sub) as usize).min(BUCKETS - 1)
}

/// The largest value that falls in bucket `i`.
fn upper_edge(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let exp = i / SUB - 1 + u64::from(SUB_BITS);
    let sub = i % SUB;
    ((SUB + sub + 1) << (exp - u64::from(SUB_BITS))) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order_with_bounded_error() {
        let mut last = 0;
        for us in (0..100_000u64).chain([1 << 30, 1 << 39]) {
            let b = bucket(us);
            assert!(b >= last, "buckets must not go down");
            last = b;
            let edge = upper_edge(b);
            assert!(edge >= us, "{us} above its bucket's edge {edge}");
            assert!(edge as f64 <= us as f64 * 1.13 + 1.0, "{us} → {edge}");
        }
    }

    #[test]
    fn windows_and_quantiles() {
        let s = VersionStats::default();
        for _ in 0..90 {
            s.record(Duration::from_micros(100), false);
        }
        let mid = s.snapshot();
        for _ in 0..10 {
            s.record(Duration::from_millis(10), true);
        }
        let end = s.snapshot();
        let all = end.since(&Snapshot::default());
        assert_eq!((all.requests, all.errors), (100, 10));
        assert!((100..=113).contains(&all.quantile_us(0.5).unwrap()));
        assert!((10_000..=11_300).contains(&all.quantile_us(0.99).unwrap()));
        let window = end.since(&mid);
        assert_eq!((window.requests, window.errors), (10, 10));
        assert_eq!(window.error_rate(), 1.0);
        assert!(window.quantile_us(0.5).unwrap() >= 10_000);
        assert_eq!(Snapshot::default().quantile_us(0.99), None);
    }

    #[test]
    fn reports_round_trip_and_sources_merge() {
        let a = VersionStats::default();
        let b = VersionStats::default();
        for _ in 0..50 {
            a.record(Duration::from_micros(100), false);
            b.record(Duration::from_millis(10), true);
        }
        let (sa, sb) = (a.snapshot(), b.snapshot());
        let back = Snapshot::from_parts(sb.requests, sb.errors, &sb.sparse_latency());
        assert_eq!(back, sb);
        let mut both = Snapshot::default();
        both.merge(&sa);
        both.merge(&back);
        assert_eq!((both.requests, both.errors), (100, 50));
        assert!((100..=113).contains(&both.quantile_us(0.5).unwrap()));
        assert!(both.quantile_us(0.99).unwrap() >= 10_000);
    }
}
