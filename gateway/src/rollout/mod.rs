//! Rollout guardrails: a canary climbs the model's weight steps (say 5 % →
//! 25 % → 50 % → 100 %) while it is no worse than stable, and is rolled
//! back the moment it is. The decision is a pure function of the policy
//! and two windows of counts ([`decide`]); the model manager owns the
//! clock, the windows and the routing file, and applies what this says.

pub mod stats;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use stats::Snapshot;

/// A model's rollout policy (`[rollout]` in its `config.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutPolicy {
    /// Start a canary by itself when a newer version becomes ready. Off,
    /// new versions serve only when routing names them (or, with no
    /// routing at all, the newest ready version serves).
    pub enabled: bool,
    /// The canary's share of traffic at each step, rising, ending at 1.0;
    /// promotion to stable follows the last step.
    pub steps: Vec<f64>,
    /// Least time a step lasts before the canary may advance, in ms.
    pub min_dwell_ms: u64,
    /// Least canary requests in a step before any verdict (advance or
    /// roll back) is taken on it.
    pub min_requests: u64,
    /// Roll back when the canary's error rate exceeds stable's by more
    /// than this (absolute, 0.01 = one percentage point). Errors are
    /// server-side failures (5xx), not client mistakes.
    pub max_error_rate_increase: f64,
    /// Roll back when the canary's p99 latency exceeds stable's by more
    /// than this fraction (0.5 = 50 % slower) plus `p99_slack_ms`.
    pub max_p99_increase: f64,
    /// Latency difference always tolerated, in ms, so that microsecond
    /// jitter on a fast model cannot fail a rollout.
    pub p99_slack_ms: f64,
    /// Advance and promote on latency and errors alone. Off, the canary
    /// holds each step until an external verdict (the trainer's, on model
    /// quality) advances it; rollbacks stay automatic either way.
    pub auto_advance: bool,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            enabled: false,
            steps: vec![0.05, 0.25, 0.5, 1.0],
            min_dwell_ms: 30_000,
            min_requests: 200,
            max_error_rate_increase: 0.01,
            max_p99_increase: 0.5,
            p99_slack_ms: 1.0,
            auto_advance: true,
        }
    }
}

impl RolloutPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("rollout.steps must list at least one weight".into());
        }
        if self.steps.iter().any(|w| !(*w > 0.0 && *w <= 1.0)) {
            return Err("rollout.steps must lie in (0, 1]".into());
        }
        if self.steps.windows(2).any(|w| w[0] >= w[1]) {
            return Err("rollout.steps must rise".into());
        }
        if self.steps.last() != Some(&1.0) {
            return Err("rollout.steps must end at 1.0".into());
        }
        if self.min_requests == 0 {
            return Err("rollout.min_requests must be at least 1".into());
        }
        for (key, v) in [
            ("max_error_rate_increase", self.max_error_rate_increase),
            ("max_p99_increase", self.max_p99_increase),
            ("p99_slack_ms", self.p99_slack_ms),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("rollout.{key} must be a non-negative number"));
            }
        }
        Ok(())
    }

    pub fn weight(&self, step: usize) -> f64 {
        self.steps
            .get(step)
            .or(self.steps.last())
            .copied()
            .unwrap_or(1.0)
    }

    pub fn is_last(&self, step: usize) -> bool {
        step + 1 >= self.steps.len()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not enough evidence yet.
    Hold,
    Advance,
    Promote,
    Rollback(String),
}

impl Decision {
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Hold => "hold",
            Decision::Advance => "advance",
            Decision::Promote => "promote",
            Decision::Rollback(_) => "rollback",
        }
    }
}

/// The guardrail. `canary` is the canary's window in the current step,
/// `stable` the stable version's over a comparable window (when stable
/// gets no traffic, at the 100 % step, the manager passes the last window
/// in which it had some), `dwell` the time spent in this step.
pub fn decide(
    policy: &RolloutPolicy,
    step: usize,
    canary: &Snapshot,
    stable: Option<&Snapshot>,
    dwell: Duration,
) -> Decision {
    if canary.requests < policy.min_requests {
        return Decision::Hold;
    }
    // Without enough stable traffic to compare with, stable counts as
    // error-free and latency is not compared.
    let stable = stable.filter(|s| s.requests >= policy.min_requests);
    let stable_rate = stable.map_or(0.0, Snapshot::error_rate);
    let canary_rate = canary.error_rate();
    if canary_rate > stable_rate + policy.max_error_rate_increase {
        return Decision::Rollback(format!(
            "error rate {:.2} % vs stable {:.2} % (margin {:.2} points) over {} requests",
            canary_rate * 100.0,
            stable_rate * 100.0,
            policy.max_error_rate_increase * 100.0,
            canary.requests
        ));
    }
    if let (Some(s), Some(c99)) = (stable, canary.quantile_us(0.99))
        && let Some(s99) = s.quantile_us(0.99)
    {
        let allowed = s99 as f64 * (1.0 + policy.max_p99_increase) + policy.p99_slack_ms * 1000.0;
        if c99 as f64 > allowed {
            return Decision::Rollback(format!(
                "p99 {:.2} ms vs stable {:.2} ms (allowed {:.2} ms)",
                c99 as f64 / 1000.0,
                s99 as f64 / 1000.0,
                allowed / 1000.0
            ));
        }
    }
    if !policy.auto_advance || dwell < Duration::from_millis(policy.min_dwell_ms) {
        Decision::Hold
    } else if policy.is_last(step) {
        Decision::Promote
    } else {
        Decision::Advance
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stats::VersionStats;

    fn window(requests: u64, errors: u64, latency: Duration) -> Snapshot {
        let s = VersionStats::default();
        for i in 0..requests {
            s.record(latency, i < errors);
        }
        s.snapshot()
    }

    fn policy() -> RolloutPolicy {
        RolloutPolicy {
            enabled: true,
            steps: vec![0.1, 0.5, 1.0],
            min_dwell_ms: 1000,
            min_requests: 50,
            ..Default::default()
        }
    }

    #[test]
    fn holds_until_enough_requests_and_dwell() {
        let p = policy();
        let ok = window(100, 0, Duration::from_micros(300));
        let few = window(10, 10, Duration::from_micros(300));
        let long = Duration::from_secs(2);
        assert_eq!(
            decide(&p, 0, &few, Some(&ok), long),
            Decision::Hold,
            "10 failures are not yet evidence"
        );
        assert_eq!(
            decide(&p, 0, &ok, Some(&ok), Duration::from_millis(10)),
            Decision::Hold
        );
        assert_eq!(decide(&p, 0, &ok, Some(&ok), long), Decision::Advance);
        assert_eq!(decide(&p, 2, &ok, Some(&ok), long), Decision::Promote);
        let manual = RolloutPolicy {
            auto_advance: false,
            ..p
        };
        assert_eq!(decide(&manual, 0, &ok, Some(&ok), long), Decision::Hold);
    }

    #[test]
    fn rolls_back_on_errors_even_before_the_dwell() {
        let p = policy();
        let stable = window(200, 2, Duration::from_micros(300)); // 1 %
        let canary = window(100, 5, Duration::from_micros(300)); // 5 %
        let d = decide(&p, 0, &canary, Some(&stable), Duration::ZERO);
        assert!(
            matches!(d, Decision::Rollback(ref why) if why.contains("error rate")),
            "{d:?}"
        );
        // Within the margin: 1.5 % against 1 %.
        let close = window(200, 3, Duration::from_micros(300));
        assert_eq!(
            decide(&p, 0, &close, Some(&stable), Duration::from_secs(2)),
            Decision::Advance
        );
        // No stable traffic to compare with: errors still count.
        assert!(matches!(
            decide(&p, 2, &canary, None, Duration::ZERO),
            Decision::Rollback(_)
        ));
    }

    #[test]
    fn rolls_back_on_latency_beyond_ratio_and_slack() {
        let p = policy();
        let stable = window(200, 0, Duration::from_millis(4));
        let slow = window(100, 0, Duration::from_millis(9));
        assert!(
            matches!(decide(&p, 1, &slow, Some(&stable), Duration::ZERO), Decision::Rollback(ref w) if w.contains("p99"))
        );
        // Twice as slow but inside the 1 ms slack: microsecond jitter.
        let fast_stable = window(200, 0, Duration::from_micros(100));
        let fast_canary = window(100, 0, Duration::from_micros(200));
        assert_eq!(
            decide(
                &p,
                1,
                &fast_canary,
                Some(&fast_stable),
                Duration::from_secs(2)
            ),
            Decision::Advance
        );
    }

    #[test]
    fn policy_validation() {
        assert!(RolloutPolicy::default().validate().is_ok());
        for steps in [
            vec![],
            vec![0.5],
            vec![0.5, 0.2, 1.0],
            vec![0.0, 1.0],
            vec![0.5, 1.5],
        ] {
            let p = RolloutPolicy {
                steps,
                ..Default::default()
            };
            assert!(p.validate().is_err(), "{:?}", p.steps);
        }
        let p = policy();
        assert_eq!((p.weight(0), p.weight(2), p.weight(9)), (0.1, 1.0, 1.0));
    }
}
