//! The guardrail's last comparison of a running canary with stable, as
//! the dashboard shows it. The guardrail runs inside the model manager
//! (on the fleet's leader only), which hands each comparison here; it is
//! a process-wide table because the manager's guardrail pass has no
//! handle on the gateway, and one process serves one gateway.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::rollout::stats::Snapshot;
use crate::rollout::{Decision, RolloutPolicy};

static CHECKS: Mutex<BTreeMap<String, Check>> = Mutex::new(BTreeMap::new());

/// What the guardrail weighed, borrowed from its pass.
pub struct Weighed<'a> {
    pub policy: &'a RolloutPolicy,
    pub canary: u64,
    pub stable: Option<u64>,
    pub step: usize,
    /// The canary's and stable's traffic since the step began, fleet-wide.
    pub canary_window: &'a Snapshot,
    pub stable_window: &'a Snapshot,
    /// The stable traffic the canary is held to: the latest window with
    /// enough requests, if any.
    pub baseline: Option<&'a Snapshot>,
    pub dwell: Duration,
    pub replicas: usize,
    pub decision: &'a Decision,
}

/// One arm of the comparison.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Arm {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
}

impl Arm {
    fn of(s: &Snapshot) -> Arm {
        Arm {
            requests: s.requests,
            errors: s.errors,
            error_rate: s.error_rate(),
            p99_ms: s.quantile_us(0.99).map(|us| us as f64 / 1000.0),
        }
    }
}

/// The last comparison, ready to serialize.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub at_ms: u64,
    pub canary: u64,
    pub stable: Option<u64>,
    pub step: usize,
    pub dwell_ms: u64,
    pub min_dwell_ms: u64,
    pub min_requests: u64,
    pub canary_arm: Arm,
    pub stable_arm: Arm,
    /// What the canary was held to; `None`: stable has had too little
    /// traffic, so it counts as error-free and latency is not compared.
    pub baseline: Option<Arm>,
    /// Highest canary error rate and p99 (ms) that pass, given stable.
    pub max_error_rate: f64,
    pub max_p99_ms: Option<f64>,
    pub replicas: usize,
    /// `hold`, `advance`, `promote` or `rollback`, and why for a rollback.
    pub decision: &'static str,
    pub reason: Option<String>,
}

/// Keeps the guardrail's comparison for `model`.
pub fn record(model: &str, w: &Weighed<'_>) {
    let baseline = w.baseline.map(Arm::of);
    let stable_rate = baseline.as_ref().map_or(0.0, |a| a.error_rate);
    let check = Check {
        at_ms: quiver_contract::records::now_ms(),
        canary: w.canary,
        stable: w.stable,
        step: w.step,
        dwell_ms: w.dwell.as_millis() as u64,
        min_dwell_ms: w.policy.min_dwell_ms,
        min_requests: w.policy.min_requests,
        canary_arm: Arm::of(w.canary_window),
        max_error_rate: stable_rate + w.policy.max_error_rate_increase,
        max_p99_ms: baseline
            .as_ref()
            .and_then(|a| a.p99_ms)
            .map(|p| p * (1.0 + w.policy.max_p99_increase) + w.policy.p99_slack_ms),
        stable_arm: Arm::of(w.stable_window),
        baseline,
        replicas: w.replicas,
        decision: w.decision.label(),
        reason: match w.decision {
            Decision::Rollback(why) => Some(why.clone()),
            _ => None,
        },
    };
    CHECKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(model.to_string(), check);
}

/// The last comparison for `model`'s canary `canary` at `step`, if the
/// guardrail made one on this replica.
pub fn last(model: &str, canary: u64, step: usize) -> Option<Check> {
    CHECKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(model)
        .filter(|c| c.canary == canary && c.step == step)
        .cloned()
}
