//! Where a concept changed: the split of the window's served errors (in
//! time order) into a before and an after whose means differ the most, by
//! a two-sample t statistic. A change counts only when the errors rose
//! (the served version got worse: the concept moved away from it) and the
//! statistic clears a bar set high enough for the maximum over every split
//! of a steady stream to stay below it. The trainer then trains on the
//! rows after the change instead of waiting for the old concept to age
//! out of the window.

use crate::join::Example;
use crate::monitor::quality::example_loss;
use crate::train::Task;

/// The t statistic a change must clear. The largest of n correlated
/// two-sample statistics on a steady stream grows like sqrt(2 ln ln n);
/// for windows up to millions of rows that stays near 3 to 4.
pub const MIN_SCORE: f64 = 6.0;

/// A detected change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    /// The first row of the new concept.
    pub at: usize,
    /// Mean error before and after.
    pub before: f64,
    pub after: f64,
    /// The t statistic of the split.
    pub score: f64,
}

/// The most likely rise in `errors` with at least `min_side` rows on each
/// side, if it clears [`MIN_SCORE`] and more than `min_side` rows follow
/// it.
pub fn change_point(errors: &[f64], min_side: usize) -> Option<Change> {
    let n = errors.len();
    let min_side = min_side.max(2);
    if n < 2 * min_side {
        return None;
    }
    let mut sum = vec![0.0; n + 1];
    let mut sq = vec![0.0; n + 1];
    for (i, e) in errors.iter().enumerate() {
        sum[i + 1] = sum[i] + e;
        sq[i + 1] = sq[i] + e * e;
    }
    let mut best: Option<Change> = None;
    for k in min_side..=n - min_side {
        let (a, b) = (k as f64, (n - k) as f64);
        let m1 = sum[k] / a;
        let m2 = (sum[n] - sum[k]) / b;
        if m2 <= m1 {
            continue;
        }
        let v1 = (sq[k] / a - m1 * m1).max(0.0);
        let v2 = ((sq[n] - sq[k]) / b - m2 * m2).max(0.0);
        // Pooled variance, floored so that a perfectly clean segment does
        // not make any difference infinitely significant.
        let var = ((a * v1 + b * v2) / (a + b)).max(1e-4);
        let score = (m2 - m1) / (var * (1.0 / a + 1.0 / b)).sqrt();
        if best.is_none_or(|c| score > c.score) {
            best = Some(Change {
                at: k,
                before: m1,
                after: m2,
                score,
            });
        }
    }
    // The best split pinned at the last one allowed: the rise is in the
    // newest rows, fewer than `min_side` of them, and where it began is
    // not known yet.
    best.filter(|c| c.score >= MIN_SCORE && c.at < n - min_side)
}

/// A change among the rows predicted after `seen_ms` (the start of the
/// last change acted upon), with the prediction time of its first row.
/// Once acted upon, a change is not found again: after it the errors only
/// fall, as versions of the new concept take over.
pub fn change_since(
    task: Task,
    rows: &[&Example],
    seen_ms: u64,
    min_side: usize,
) -> Option<(Change, u64)> {
    let from = rows
        .iter()
        .position(|e| e.timestamp_ms > seen_ms)
        .unwrap_or(rows.len());
    let errors = served_errors(task, rows[from..].iter().copied());
    let c = change_point(&errors, min_side)?;
    Some((c, rows.get(from + c.at)?.timestamp_ms))
}

/// Each example's served error: wrong (1) or right (0) for classifiers,
/// the absolute error for regressors; rows whose record carried no answer
/// count as the mean of the rest (they move no split).
pub fn served_errors<'a>(task: Task, rows: impl Iterator<Item = &'a Example>) -> Vec<f64> {
    let raw: Vec<Option<f64>> = rows
        .map(|e| {
            example_loss(task, &e.served, e.label).map(|(_, correct, abs)| match task {
                Task::Classification { .. } => f64::from(u8::from(!correct)),
                Task::Regression => abs,
            })
        })
        .collect();
    let known: Vec<f64> = raw.iter().flatten().copied().collect();
    let fill = if known.is_empty() {
        0.0
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    raw.into_iter().map(|e| e.unwrap_or(fill)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::rng::Rng;

    fn bernoulli(rng: &mut Rng, n: usize, p: f64) -> Vec<f64> {
        (0..n)
            .map(|_| f64::from(u8::from(rng.next_f64() < p)))
            .collect()
    }

    #[test]
    fn finds_a_synthetic_switch() {
        for seed in 1..=20 {
            let mut rng = Rng::new(seed);
            // An old concept served at 5 % error, then a switch to 48 %.
            let mut errors = bernoulli(&mut rng, 3000, 0.05);
            errors.extend(bernoulli(&mut rng, 1200, 0.48));
            let c = change_point(&errors, 200).expect("a switch");
            assert!((2950..=3050).contains(&c.at), "seed {seed}: {c:?}");
            assert!(c.before < 0.07 && c.after > 0.4, "{c:?}");
        }
    }

    #[test]
    fn a_small_late_switch_is_found_with_enough_rows_after_it() {
        let mut rng = Rng::new(7);
        let mut errors = bernoulli(&mut rng, 5000, 0.1);
        errors.extend(bernoulli(&mut rng, 400, 0.3));
        let c = change_point(&errors, 200).expect("a switch");
        assert!((4900..=5100).contains(&c.at), "{c:?}");
    }

    /// Rows served at the given error rates, one per millisecond from `t0`.
    fn served(rng: &mut Rng, t0: u64, n: usize, p: f64) -> Vec<Example> {
        (0..n)
            .map(|i| {
                let wrong = rng.next_f64() < p;
                Example {
                    model: "m".into(),
                    version: 1,
                    arm: "stable".into(),
                    timestamp_ms: t0 + i as u64,
                    features: vec![0.0],
                    served: vec![0.2, 0.8],
                    label: if wrong { 0.0 } else { 1.0 },
                    at: String::new(),
                }
            })
            .collect()
    }

    fn view(rows: &[Example]) -> Vec<&Example> {
        rows.iter().collect()
    }

    #[test]
    fn a_switch_is_reported_once_then_the_next_one() {
        let task = Task::Classification { classes: 2 };
        let mut rng = Rng::new(5);
        // The old concept at 5 % error, the switch at t = 3000 (the old
        // version now at 50 %), then a version of the new concept at 4 %.
        let mut rows = served(&mut rng, 0, 3000, 0.05);
        rows.extend(served(&mut rng, 3000, 120, 0.5));
        // Too few rows after it: not yet.
        assert_eq!(change_since(task, &view(&rows), 0, 200), None);
        rows.extend(served(&mut rng, 3120, 280, 0.5));
        let (c, at) = change_since(task, &view(&rows), 0, 200).expect("the switch");
        assert!((2950..=3050).contains(&at), "{c:?} at {at}");
        // Acted upon: the same change is not reported again, while the old
        // version still serves or once new versions take over.
        rows.extend(served(&mut rng, 3400, 1400, 0.5));
        assert_eq!(change_since(task, &view(&rows), at, 200), None);
        rows.extend(served(&mut rng, 4800, 3000, 0.04));
        assert_eq!(change_since(task, &view(&rows), at, 200), None);
        // A second switch later is.
        rows.extend(served(&mut rng, 7800, 400, 0.45));
        let (_, again) = change_since(task, &view(&rows), at, 200).expect("the second switch");
        assert!((7700..=7900).contains(&again), "{again}");
        // A stream that never changed reports nothing.
        let steady = served(&mut rng, 0, 10_000, 0.2);
        assert_eq!(change_since(task, &view(&steady), 0, 200), None);
    }

    #[test]
    fn a_steady_stream_and_an_improvement_are_no_change() {
        for seed in 1..=50 {
            let mut rng = Rng::new(100 + seed);
            let steady = bernoulli(&mut rng, 20_000, 0.2);
            assert_eq!(change_point(&steady, 200), None, "seed {seed}");
        }
        let mut rng = Rng::new(3);
        // A better version took over: errors fell, nothing to cut.
        let mut better = bernoulli(&mut rng, 2000, 0.45);
        better.extend(bernoulli(&mut rng, 2000, 0.05));
        assert_eq!(change_point(&better, 200), None);
        assert_eq!(change_point(&[1.0; 100], 200), None);
    }
}
