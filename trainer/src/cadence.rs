//! How often a model retrains and how many labelled rows a canary step
//! needs, when the config leaves them `auto`: derived from what the loop
//! observes (the label rate, how long a training takes, the window, a
//! concept change) instead of constants tuned per stream. Pure functions
//! of their inputs; the one clock-dependent part, [`LabelRate`], takes the
//! time as an argument.
//!
//! - Retrain cadence: a retrain once as many labelled rows came as arrive
//!   during one training (at least [`MIN_CYCLE_S`] worth), so trainings
//!   follow each other about as fast as they finish and a model is never
//!   staler than one training; at most a tenth of the window, so each
//!   training sees at least that much new data; and right after a window
//!   cut, at most half the rows the last training used, so the rows of the
//!   new concept grow by half from one retrain to the next.
//! - Canary samples: as many rows per arm as the steps can collect within
//!   about one retrain cycle (a canary slower than the retrains holds up
//!   every later candidate), between [`MIN_CANARY_SAMPLES`] and
//!   [`MAX_CANARY_SAMPLES`]; the least when the candidate beat stable on
//!   the held-out rows by a clear margin (stable is failing: every row of
//!   delay costs, and the test only has to rule out a clearly worse
//!   candidate).

use serde::{Deserialize, Serialize};

/// The fewest new labelled rows between two retrains.
pub const MIN_RETRAIN_ROWS: u64 = 100;
/// The shortest retrain cycle in seconds of labels: below it retraining
/// costs cores the gateway needs for little fresher data.
pub const MIN_CYCLE_S: f64 = 2.0;
/// The fewest labelled rows per arm and step: a worse candidate by about
/// 25 accuracy points is still told apart at alpha 0.01.
pub const MIN_CANARY_SAMPLES: u64 = 50;
/// The most labelled rows per arm and step.
pub const MAX_CANARY_SAMPLES: u64 = 500;
/// A candidate whose held-out loss is below this fraction of stable's on
/// the same rows beat it clearly.
pub const CLEAR_WIN: f64 = 0.8;
/// How fast the label rate follows a change: the weight of the last
/// second's rate after one second.
const RATE_WEIGHT_PER_S: f64 = 0.1;

/// Labelled rows joined per second, an exponentially weighted mean over
/// seconds of the stream's wall clock (the caller's `now_ms`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelRate {
    /// Rows per second, once a full second was seen.
    rate: Option<f64>,
    /// Start of the second being counted, and its rows so far.
    since_ms: u64,
    rows: u64,
}

impl LabelRate {
    /// Counts `rows` labelled rows joined at `now_ms`.
    pub fn observe(&mut self, now_ms: u64, rows: u64) {
        if self.since_ms == 0 || now_ms < self.since_ms {
            // The first rows, or a clock that went back: start afresh.
            self.since_ms = now_ms;
            self.rows = rows;
            return;
        }
        let elapsed_ms = now_ms - self.since_ms;
        if elapsed_ms >= 1000 {
            let seconds = elapsed_ms as f64 / 1000.0;
            let sample = self.rows as f64 / seconds;
            // Longer gaps weigh the new sample more: a mean over time.
            let w = 1.0 - (1.0 - RATE_WEIGHT_PER_S).powf(seconds);
            self.rate = Some(match self.rate {
                Some(r) => r + w * (sample - r),
                None => sample,
            });
            self.since_ms = now_ms;
            self.rows = 0;
        }
        self.rows += rows;
    }

    /// Rows per second, `None` before a full second was seen.
    pub fn per_second(&self) -> Option<f64> {
        self.rate
    }
}

/// What the cadence is derived from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    /// Labelled rows per second, if known.
    pub label_rate: Option<f64>,
    /// Seconds the last training run took, if any ran.
    pub training_s: Option<f64>,
    /// The window's capacity in rows.
    pub window_rows: usize,
    /// Rows the last training used, when it cut its window at a change.
    pub rows_after_cut: Option<usize>,
}

/// New labelled rows that trigger a retrain.
pub fn retrain_rows(o: &Observed) -> u64 {
    let mut most = (o.window_rows as u64 / 10).max(MIN_RETRAIN_ROWS);
    if let Some(rows) = o.rows_after_cut {
        most = most.min((rows as u64 / 2).max(MIN_RETRAIN_ROWS));
    }
    let by_rate = o.label_rate.filter(|r| *r > 0.0).map(|rate| {
        let cycle = o.training_s.unwrap_or(0.0).max(MIN_CYCLE_S);
        (rate * cycle).round() as u64
    });
    // Rate unknown yet: the most, the cautious choice on a stream of
    // unknown speed.
    by_rate.unwrap_or(most).clamp(MIN_RETRAIN_ROWS, most)
}

/// Did the candidate beat stable clearly on the same held-out rows (its
/// primary loss, then stable's)?
pub fn clear_win(held_out_loss: Option<(f64, f64)>) -> bool {
    held_out_loss
        .is_some_and(|(candidate, stable)| candidate.is_finite() && candidate < CLEAR_WIN * stable)
}

/// Labelled rows per arm each canary step needs before a verdict.
/// `held_out_loss` is the candidate's and stable's primary loss on the
/// same held-out rows, when stable was scored.
pub fn canary_samples(retrain_rows: u64, steps: &[f64], held_out_loss: Option<(f64, f64)>) -> u64 {
    if clear_win(held_out_loss) {
        return MIN_CANARY_SAMPLES;
    }
    // Rows of traffic per row of the smaller arm: a step at weight w gives
    // the candidate w of it and stable 1 − w; at the last step (all
    // traffic) only the candidate's sample is waited for.
    let per_sample: f64 = steps
        .iter()
        .map(|&w| {
            if w >= 1.0 {
                1.0
            } else {
                1.0 / w.min(1.0 - w).max(1e-3)
            }
        })
        .sum::<f64>()
        .max(1.0);
    ((retrain_rows as f64 / per_sample).round() as u64)
        .clamp(MIN_CANARY_SAMPLES, MAX_CANARY_SAMPLES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(rate: Option<f64>, training_s: Option<f64>, window: usize) -> Observed {
        Observed {
            label_rate: rate,
            training_s,
            window_rows: window,
            rows_after_cut: None,
        }
    }

    #[test]
    fn the_label_rate_is_learned_from_an_injected_clock() {
        let mut r = LabelRate::default();
        r.observe(10_000, 50);
        assert_eq!(r.per_second(), None, "less than a second seen");
        r.observe(10_500, 50);
        // 100 rows in the first second.
        r.observe(11_000, 20);
        assert_eq!(r.per_second(), Some(100.0));
        // Then 300 rows a second for a minute: the mean follows.
        let mut t = 11_000;
        for _ in 0..60 {
            r.observe(t + 500, 150);
            t += 1000;
            r.observe(t, 150);
        }
        let rate = r.per_second().unwrap();
        assert!((rate - 300.0).abs() < 2.0, "{rate}");
        // A pause of 10 s with nothing: the rate falls, weighted by time.
        r.observe(t + 10_000, 0);
        let paused = r.per_second().unwrap();
        assert!(paused < 0.7 * 300.0 && paused > 0.0, "{paused}");
        // A clock that goes back starts a new second, keeps the rate.
        r.observe(t, 5);
        assert_eq!(r.per_second(), Some(paused));
    }

    #[test]
    fn retraining_follows_the_label_rate_and_the_training_time() {
        // 100 labels/s and quick trainings: every 2 s of labels.
        assert_eq!(retrain_rows(&observed(Some(100.0), Some(0.5), 5000)), 200);
        // Trainings of 6 s at 300 labels/s: one training's worth.
        assert_eq!(
            retrain_rows(&observed(Some(300.0), Some(6.0), 20_000)),
            1800
        );
        // At most a tenth of the window ...
        assert_eq!(
            retrain_rows(&observed(Some(5000.0), Some(10.0), 20_000)),
            2000
        );
        // ... at least the floor ...
        assert_eq!(
            retrain_rows(&observed(Some(1.0), Some(0.1), 20_000)),
            MIN_RETRAIN_ROWS
        );
        assert_eq!(retrain_rows(&observed(Some(50.0), None, 100)), 100);
        // ... and the most while the rate is unknown.
        assert_eq!(retrain_rows(&observed(None, None, 20_000)), 2000);
        assert_eq!(retrain_rows(&observed(Some(0.0), None, 20_000)), 2000);
    }

    #[test]
    fn after_a_cut_the_new_concept_grows_by_half_each_retrain() {
        let mut o = observed(Some(1000.0), Some(10.0), 50_000);
        assert_eq!(retrain_rows(&o), 5000);
        o.rows_after_cut = Some(400);
        assert_eq!(retrain_rows(&o), 200);
        o.rows_after_cut = Some(3000);
        assert_eq!(retrain_rows(&o), 1500);
        o.rows_after_cut = Some(60);
        assert_eq!(retrain_rows(&o), MIN_RETRAIN_ROWS);
        // A slow stream is still bound by its rate.
        o.label_rate = Some(10.0);
        o.rows_after_cut = Some(3000);
        assert_eq!(retrain_rows(&o), 100);
    }

    #[test]
    fn the_canary_fits_in_one_retrain_cycle() {
        // Steps 0.5 → 1.0: 2 rows of traffic per sample, then 1.
        assert_eq!(canary_samples(600, &[0.5, 1.0], None), 200);
        // The default steps need 20 + 4 + 2 + 1 rows per sample.
        assert_eq!(canary_samples(2700, &[0.05, 0.25, 0.5, 1.0], None), 100);
        // Bounded both ways.
        assert_eq!(
            canary_samples(200, &[0.05, 0.25, 0.5, 1.0], None),
            MIN_CANARY_SAMPLES
        );
        assert_eq!(
            canary_samples(100_000, &[0.5, 1.0], None),
            MAX_CANARY_SAMPLES
        );
        // A step above one half: stable's arm is the smaller one.
        assert_eq!(canary_samples(600, &[0.75, 1.0], None), 120);
        assert_eq!(canary_samples(300, &[1.0], None), 300);
    }

    #[test]
    fn a_clearly_failing_stable_gets_the_quickest_canary() {
        // Held-out log loss 0.30 against stable's 0.69: stable is failing.
        assert_eq!(
            canary_samples(3000, &[0.5, 1.0], Some((0.30, 0.69))),
            MIN_CANARY_SAMPLES
        );
        // 0.60 against 0.69 is not clear: the usual sample.
        assert_eq!(canary_samples(3000, &[0.5, 1.0], Some((0.60, 0.69))), 500);
        assert_eq!(
            canary_samples(600, &[0.5, 1.0], Some((f64::NAN, 0.69))),
            200
        );
    }
}
