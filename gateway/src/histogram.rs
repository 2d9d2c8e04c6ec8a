//! Prometheus histograms for the request path: fixed buckets of atomic
//! counters, read only when `/metrics` is scraped.
//!
//! The Prometheus recorder's own histograms keep every sample in a
//! lock-free list until an upkeep or a scrape folds them into buckets: an
//! allocation-prone push per sample on the request path, and a burst of
//! folding work every upkeep (half a million samples at saturation) that
//! shows in the tail latency. Here a sample is two relaxed atomic
//! additions, and nothing runs between scrapes.
//!
//! Series live as long as the process, as the recorder's do: a version
//! loaded again under the same labels continues its series.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bucket bounds (upper, inclusive) for durations in seconds.
pub const DURATION_BUCKETS: [f64; 17] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Bucket bounds for batch sizes in rows.
pub const SIZE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

struct Series {
    /// Rendered once: `model="m",version="1"`.
    labels: String,
    bounds: &'static [f64],
    /// One counter per bound, then the one past the last bound (+Inf).
    buckets: Box<[AtomicU64]>,
    /// The sum of the samples, as `f64` bits.
    sum: AtomicU64,
}

/// One histogram series; cheap to clone (a shared handle).
#[derive(Clone)]
pub struct Histogram(Arc<Series>);

impl Histogram {
    pub fn record(&self, value: f64) {
        let s = &*self.0;
        // The first bucket whose bound the value does not exceed.
        let i = s.bounds.partition_point(|b| *b < value);
        if let Some(b) = s.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let mut current = s.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match s
                .sum
                .compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
    }

    /// `(count, sum)` so far.
    pub fn snapshot(&self) -> (u64, f64) {
        let count = self
            .0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum();
        (count, f64::from_bits(self.0.sum.load(Ordering::Relaxed)))
    }
}

struct Family {
    name: &'static str,
    help: &'static str,
    series: Vec<Histogram>,
}

/// Every family, in the order first registered.
static FAMILIES: Mutex<Vec<Family>> = Mutex::new(Vec::new());

/// The series of `name` with these labels, made on first use.
pub fn register(
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    labels: &[(&str, &str)],
) -> Histogram {
    let mut rendered = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            rendered.push(',');
        }
        rendered.push_str(k);
        rendered.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => rendered.push_str("\\\\"),
                '"' => rendered.push_str("\\\""),
                '\n' => rendered.push_str("\\n"),
                c => rendered.push(c),
            }
        }
        rendered.push('"');
    }
    let mut families = FAMILIES.lock().unwrap_or_else(|p| p.into_inner());
    let family = match families.iter().position(|f| f.name == name) {
        Some(i) => &mut families[i],
        None => {
            families.push(Family {
                name,
                help,
                series: Vec::new(),
            });
            let last = families.len() - 1;
            &mut families[last]
        }
    };
    if let Some(h) = family.series.iter().find(|h| h.0.labels == rendered) {
        return h.clone();
    }
    let h = Histogram(Arc::new(Series {
        labels: rendered,
        bounds,
        buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
        sum: AtomicU64::new(0f64.to_bits()),
    }));
    family.series.push(h.clone());
    h
}

/// Appends every family in Prometheus' text format.
pub fn render(out: &mut String) {
    let families = FAMILIES.lock().unwrap_or_else(|p| p.into_inner());
    for f in families.iter().filter(|f| !f.series.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} histogram", f.name);
        for h in &f.series {
            let s = &*h.0;
            let sep = if s.labels.is_empty() { "" } else { "," };
            let mut cumulative = 0u64;
            for (i, b) in s.buckets.iter().enumerate() {
                cumulative += b.load(Ordering::Relaxed);
                match s.bounds.get(i) {
                    Some(bound) => {
                        let _ = writeln!(
                            out,
                            "{}_bucket{{{}{sep}le=\"{bound}\"}} {cumulative}",
                            f.name, s.labels
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "{}_bucket{{{}{sep}le=\"+Inf\"}} {cumulative}",
                            f.name, s.labels
                        );
                    }
                }
            }
            let sum = f64::from_bits(s.sum.load(Ordering::Relaxed));
            let _ = writeln!(out, "{}_sum{{{}}} {sum}", f.name, s.labels);
            let _ = writeln!(out, "{}_count{{{}}} {cumulative}", f.name, s.labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(name: &str) -> Vec<String> {
        let mut out = String::new();
        render(&mut out);
        out.lines()
            .filter(|l| l.contains(name))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn samples_fall_in_le_buckets_and_render_cumulatively() {
        const BOUNDS: [f64; 3] = [1.0, 2.5, 10.0];
        let h = register(
            "test_hist_render",
            "A test histogram.",
            &BOUNDS,
            &[("model", "m\"x"), ("version", "3")],
        );
        for v in [0.5, 1.0, 2.0, 2.5, 7.0, 11.0, 1e9] {
            h.record(v);
        }
        assert_eq!(h.snapshot(), (7, 0.5 + 1.0 + 2.0 + 2.5 + 7.0 + 11.0 + 1e9));
        let labels = r#"model="m\"x",version="3""#;
        assert_eq!(
            lines_of("test_hist_render"),
            vec![
                "# HELP test_hist_render A test histogram.".to_string(),
                "# TYPE test_hist_render histogram".to_string(),
                format!("test_hist_render_bucket{{{labels},le=\"1\"}} 2"),
                format!("test_hist_render_bucket{{{labels},le=\"2.5\"}} 4"),
                format!("test_hist_render_bucket{{{labels},le=\"10\"}} 5"),
                format!("test_hist_render_bucket{{{labels},le=\"+Inf\"}} 7"),
                format!("test_hist_render_sum{{{labels}}} 1000000024"),
                format!("test_hist_render_count{{{labels}}} 7"),
            ]
        );
    }

    #[test]
    fn the_same_labels_continue_one_series_and_threads_lose_no_sample() {
        let a = register("test_hist_shared", "h", &SIZE_BUCKETS, &[("v", "1")]);
        let b = register("test_hist_shared", "h", &SIZE_BUCKETS, &[("v", "1")]);
        let other = register("test_hist_shared", "h", &SIZE_BUCKETS, &[("v", "2")]);
        std::thread::scope(|s| {
            for h in [&a, &b] {
                s.spawn(move || {
                    for i in 0..10_000 {
                        h.record(f64::from(i % 4));
                    }
                });
            }
        });
        assert_eq!(a.snapshot(), (20_000, 30_000.0));
        assert_eq!(other.snapshot(), (0, 0.0));
        let lines = lines_of("test_hist_shared");
        assert_eq!(lines.iter().filter(|l| l.starts_with("# TYPE")).count(), 1);
        assert!(lines.contains(&r#"test_hist_shared_count{v="1"} 20000"#.to_string()));
        assert!(lines.contains(&r#"test_hist_shared_count{v="2"} 0"#.to_string()));
        // le="1" holds the zeros and the ones: half of the samples.
        assert!(lines.contains(&r#"test_hist_shared_bucket{v="1",le="1"} 10000"#.to_string()));
    }
}
