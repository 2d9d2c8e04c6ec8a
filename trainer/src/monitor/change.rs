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
/// side, if it clears [`MIN_SCORE`].
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
    best.filter(|c| c.score >= MIN_SCORE)
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
