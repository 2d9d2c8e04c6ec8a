//! Is the candidate worse than stable? One-sided tests with a minimum
//! sample size, on per-example losses (log loss for classifiers, squared
//! error for regressors) and on accuracy.
//!
//! - Accuracy: the two-proportion z-test with the pooled proportion.
//! - Mean loss: Welch's z (unequal variances; the samples are large by the
//!   time a verdict is allowed, so the normal approximation holds).
//!
//! The candidate is [`Verdict::Worse`] when either test rejects "not worse"
//! at `alpha`; [`Verdict::NotWorse`] once both have enough samples and
//! neither does.

use serde::{Deserialize, Serialize};

/// Running count, mean and sum of squared deviations (Welford).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    pub m2: f64,
}

impl Moments {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            self.m2 / (self.n - 1) as f64
        }
    }
}

/// One arm's labelled traffic during a canary step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmQuality {
    pub correct: u64,
    /// Per-example loss.
    pub loss: Moments,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    NotEnoughData,
    NotWorse,
    Worse,
}

/// Standard normal CDF (Abramowitz & Stegun 7.1.26, error < 1.5e-7).
pub fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// One-sided p-value that proportion `a` (candidate) is below `b` (stable).
pub fn proportion_worse_p(a_hits: u64, a_n: u64, b_hits: u64, b_n: u64) -> f64 {
    if a_n == 0 || b_n == 0 {
        return 1.0;
    }
    let (pa, pb) = (a_hits as f64 / a_n as f64, b_hits as f64 / b_n as f64);
    let pooled = (a_hits + b_hits) as f64 / (a_n + b_n) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / a_n as f64 + 1.0 / b_n as f64)).sqrt();
    if se == 0.0 {
        return if pa < pb { 0.0 } else { 1.0 };
    }
    normal_cdf((pa - pb) / se)
}

/// One-sided p-value that mean loss `a` (candidate) is above `b`.
pub fn mean_worse_p(a: &Moments, b: &Moments) -> f64 {
    if a.n < 2 || b.n < 2 {
        return 1.0;
    }
    let se = (a.variance() / a.n as f64 + b.variance() / b.n as f64).sqrt();
    if se == 0.0 {
        return if a.mean > b.mean { 0.0 } else { 1.0 };
    }
    1.0 - normal_cdf((a.mean - b.mean) / se)
}

/// The verdict on a candidate against stable.
pub fn compare(
    candidate: &ArmQuality,
    stable: &ArmQuality,
    min_samples: u64,
    alpha: f64,
    classifier: bool,
) -> Verdict {
    let (cn, sn) = (candidate.loss.n, stable.loss.n);
    let loss_p = mean_worse_p(&candidate.loss, &stable.loss);
    let acc_p = if classifier {
        proportion_worse_p(candidate.correct, cn, stable.correct, sn)
    } else {
        1.0
    };
    if cn < min_samples || sn < min_samples {
        return Verdict::NotEnoughData;
    }
    if loss_p < alpha || acc_p < alpha {
        Verdict::Worse
    } else {
        Verdict::NotWorse
    }
}

/// The verdict at one rollout step. `alone`: the candidate takes all
/// traffic after an earlier step was judged on shared traffic, so stable
/// has no rows of this step and only the candidate's sample size counts
/// (comparing with stable's rows from another time would be biased under
/// drift).
pub fn step_verdict(
    candidate: &ArmQuality,
    stable: &ArmQuality,
    alone: bool,
    min_samples: u64,
    alpha: f64,
    classifier: bool,
) -> Verdict {
    if !alone {
        compare(candidate, stable, min_samples, alpha, classifier)
    } else if candidate.loss.n >= min_samples {
        Verdict::NotWorse
    } else {
        Verdict::NotEnoughData
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(correct: u64, losses: &[f64]) -> ArmQuality {
        let mut q = ArmQuality {
            correct,
            ..ArmQuality::default()
        };
        for &l in losses {
            q.loss.add(l);
        }
        q
    }

    #[test]
    fn normal_cdf_matches_known_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-1.644_854) - 0.05).abs() < 1e-6);
    }

    #[test]
    fn two_proportion_test() {
        // 80 % vs 90 % on 500 each: z ≈ -4.56, clearly worse.
        assert!(proportion_worse_p(400, 500, 450, 500) < 1e-4);
        // Equal: p = 0.5; better: p > 0.5.
        assert!((proportion_worse_p(450, 500, 450, 500) - 0.5).abs() < 1e-9);
        assert!(proportion_worse_p(460, 500, 450, 500) > 0.5);
    }

    #[test]
    fn verdicts_need_samples_and_see_a_worse_candidate() {
        let good: Vec<f64> = (0..400).map(|i| 0.2 + (i % 10) as f64 * 0.01).collect();
        let bad: Vec<f64> = good.iter().map(|l| l + 0.3).collect();
        let stable = arm(360, &good);
        assert_eq!(
            compare(&arm(9, &bad[..10]), &stable, 100, 0.01, true),
            Verdict::NotEnoughData
        );
        assert_eq!(
            compare(&arm(300, &bad), &stable, 100, 0.01, true),
            Verdict::Worse
        );
        assert_eq!(
            compare(&arm(362, &good), &stable, 100, 0.01, true),
            Verdict::NotWorse
        );
        // Regressors: the loss test alone.
        assert_eq!(
            compare(&arm(0, &bad), &arm(0, &good), 100, 0.01, false),
            Verdict::Worse
        );
    }

    #[test]
    fn a_candidate_alone_needs_only_its_sample() {
        let none = ArmQuality::default();
        let bad = arm(10, &[2.0; 100]);
        assert_eq!(
            step_verdict(&bad, &none, true, 100, 0.01, true),
            Verdict::NotWorse,
            "stable has no rows of this step"
        );
        assert_eq!(
            step_verdict(&arm(5, &[0.1; 99]), &none, true, 100, 0.01, true),
            Verdict::NotEnoughData
        );
        let good = arm(90, &[0.3; 100]);
        assert_eq!(
            step_verdict(&bad, &good, false, 100, 0.01, true),
            Verdict::Worse,
            "shared traffic is compared"
        );
        assert_eq!(
            step_verdict(&bad, &none, false, 100, 0.01, true),
            Verdict::NotEnoughData
        );
    }
}
