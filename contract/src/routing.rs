//! `<model>/routing.json`: which version answers a request that names none,
//! whether the model is unloaded, and the recent rollout decisions. Every
//! replica applies it; every writer (the admin API on any replica, the
//! fleet's guardrail leader, the trainer) changes it by compare-and-swap
//! against the copy it read, so no update is lost when writers race.
//!
//! Schema 2 added `unloaded` and `history`; schema 1 files are read as
//! schema 2 with neither.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The routing schema this crate writes; it also reads schema 1.
pub const SCHEMA: u32 = 2;
/// The oldest routing schema this crate reads.
pub const MIN_SCHEMA: u32 = 1;
/// Decisions kept in `history`, oldest dropped first.
pub const HISTORY: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingState {
    pub schema: u32,
    /// The version most traffic goes to; none means the newest ready one.
    #[serde(default)]
    pub stable: Option<u64>,
    /// Canary version → share of keyed traffic in `[0, 1]`; the shares sum
    /// to at most 1 and the rest goes to `stable`.
    #[serde(default)]
    pub canary: BTreeMap<u64, f64>,
    /// Versions that get a copy of every routed request; their answers are
    /// measured, never returned.
    #[serde(default)]
    pub shadow: Vec<u64>,
    /// Index into the rollout steps of the running canary.
    #[serde(default)]
    pub step: usize,
    /// The canary weights of the running rollout, recorded by whoever
    /// started it so every writer advances it alike; empty: the serving
    /// policy's steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<f64>,
    /// Versions a rollout rolled back: never started again automatically.
    #[serde(default)]
    pub rolled_back: Vec<u64>,
    #[serde(default)]
    pub updated_by: String,
    /// RFC 3339, UTC.
    #[serde(default)]
    pub updated_at: String,
    /// Why the last change was made, for people reading the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unloaded through the admin API: no replica serves the model until
    /// it is loaded again (and a restart keeps it so).
    #[serde(default)]
    pub unloaded: bool,
    /// The recent decisions, newest last, at most [`HISTORY`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RoutingEvent>,
}

/// A rollout verdict: what the guardrail, the trainer or an operator
/// decided about one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Begin a canary of this version at the first step.
    Start,
    /// Move the canary to the next step (promote after the last).
    Advance,
    /// Make this version stable now.
    Promote,
    /// Take this canary or shadow out of traffic.
    Rollback,
}

/// The steps used when neither the state nor a policy names any.
pub const DEFAULT_STEPS: [f64; 4] = [0.05, 0.25, 0.5, 1.0];

/// One routing decision, as kept in `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingEvent {
    /// RFC 3339, UTC.
    pub at: String,
    /// `init`, `start`, `advance`, `promote`, `rollback`, `set`, `load`, `unload`.
    pub decision: String,
    /// Who decided: `rollout-guardrail@<replica>`, `quiver-trainer`, `api@<replica>`, ...
    pub by: String,
    pub reason: String,
    #[serde(default)]
    pub stable: Option<u64>,
    #[serde(default)]
    pub canary: BTreeMap<u64, f64>,
    #[serde(default)]
    pub step: usize,
    /// For guardrail decisions: the requests the decision weighed (canary
    /// and stable together) and how many replicas served them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

impl Default for RoutingState {
    fn default() -> Self {
        RoutingState {
            schema: SCHEMA,
            stable: None,
            canary: BTreeMap::new(),
            shadow: Vec::new(),
            step: 0,
            steps: Vec::new(),
            rolled_back: Vec::new(),
            updated_by: String::new(),
            updated_at: String::new(),
            reason: None,
            unloaded: false,
            history: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RoutingError {
    #[error("not valid routing JSON: {0}")]
    Json(String),
    #[error(
        "routing schema {0} is not supported; this build reads schemas {MIN_SCHEMA} to {SCHEMA}"
    )]
    Schema(u32),
    #[error("canary weight of version {version} is {weight}; weights must lie in [0, 1]")]
    Weight { version: u64, weight: f64 },
    #[error("canary weights sum to {0}, more than 1")]
    Sum(f64),
    #[error("version {0} is both stable and {1}")]
    Overlap(u64, &'static str),
    #[error("version 0 does not exist; versions start at 1")]
    Zero,
}

impl RoutingState {
    pub fn parse(bytes: &[u8]) -> Result<RoutingState, RoutingError> {
        let mut state: RoutingState =
            serde_json::from_slice(bytes).map_err(|e| RoutingError::Json(e.to_string()))?;
        if (MIN_SCHEMA..SCHEMA).contains(&state.schema) {
            state.schema = SCHEMA;
        }
        state.validate()?;
        Ok(state)
    }

    pub fn validate(&self) -> Result<(), RoutingError> {
        if self.schema != SCHEMA {
            return Err(RoutingError::Schema(self.schema));
        }
        let versions = self
            .stable
            .iter()
            .chain(self.canary.keys())
            .chain(&self.shadow);
        if versions.into_iter().any(|&v| v == 0) {
            return Err(RoutingError::Zero);
        }
        let mut sum = 0.0;
        for (&version, &weight) in &self.canary {
            if !(0.0..=1.0).contains(&weight) {
                return Err(RoutingError::Weight { version, weight });
            }
            sum += weight;
        }
        // Steps like 0.1 + 0.2 + 0.7 do not add to exactly 1 in binary.
        if sum > 1.0 + 1e-9 {
            return Err(RoutingError::Sum(sum));
        }
        if let Some(stable) = self.stable {
            if self.canary.contains_key(&stable) {
                return Err(RoutingError::Overlap(stable, "a canary"));
            }
            if self.shadow.contains(&stable) {
                return Err(RoutingError::Overlap(stable, "a shadow"));
            }
        }
        Ok(())
    }

    /// Every version this state sends traffic to; they must stay loaded.
    pub fn referenced(&self) -> impl Iterator<Item = u64> + '_ {
        self.stable
            .iter()
            .copied()
            .chain(self.canary.keys().copied())
            .chain(self.shadow.iter().copied())
    }

    /// The same routing, ignoring who wrote it and when.
    pub fn same_routing(&self, other: &RoutingState) -> bool {
        self.stable == other.stable
            && self.canary == other.canary
            && self.shadow == other.shadow
            && self.step == other.step
            && self.steps == other.steps
            && self.rolled_back == other.rolled_back
            && self.unloaded == other.unloaded
    }

    /// The steps of the running rollout: its own, else `policy`'s.
    fn active_steps<'a>(&'a self, policy: &'a [f64]) -> &'a [f64] {
        match (self.steps.is_empty(), policy.is_empty()) {
            (false, _) => &self.steps,
            (true, false) => policy,
            (true, true) => &DEFAULT_STEPS,
        }
    }

    /// Applies a verdict on `version`. `policy` is the writer's steps (used
    /// and recorded when a canary starts); `exists`: the version is in the
    /// registry. Returns the decision's name, or why it cannot apply to
    /// this state (nothing changed then).
    pub fn apply(
        &mut self,
        action: Action,
        version: u64,
        policy: &[f64],
        exists: bool,
    ) -> Result<&'static str, String> {
        let v = version;
        match action {
            Action::Start | Action::Promote if !exists => {
                Err(format!("there is no version {v} in the registry"))
            }
            Action::Start if self.stable == Some(v) => {
                Err(format!("version {v} is already stable"))
            }
            Action::Start => {
                self.steps = self.active_steps(policy).to_vec();
                self.canary.clear();
                self.canary.insert(v, self.steps[0]);
                self.shadow.retain(|s| *s != v);
                self.rolled_back.retain(|s| *s != v);
                self.step = 0;
                Ok("start")
            }
            Action::Advance if !self.canary.contains_key(&v) => {
                Err(format!("version {v} is not a canary"))
            }
            Action::Advance => {
                let steps = self.active_steps(policy).to_vec();
                if self.step + 1 >= steps.len() {
                    self.promote(v);
                    Ok("promote")
                } else {
                    self.step += 1;
                    self.canary.insert(v, steps[self.step]);
                    Ok("advance")
                }
            }
            Action::Promote => {
                self.promote(v);
                Ok("promote")
            }
            Action::Rollback if !self.canary.contains_key(&v) && !self.shadow.contains(&v) => {
                Err(format!("version {v} is neither a canary nor a shadow"))
            }
            Action::Rollback => {
                self.rollback(v);
                Ok("rollback")
            }
        }
    }

    /// Makes `v` stable and ends any canary.
    pub fn promote(&mut self, v: u64) {
        self.stable = Some(v);
        self.canary.clear();
        self.shadow.retain(|s| *s != v);
        self.step = 0;
        self.steps.clear();
    }

    /// Takes `v` out of traffic and remembers it was rolled back.
    pub fn rollback(&mut self, v: u64) {
        self.canary.remove(&v);
        self.shadow.retain(|s| *s != v);
        if !self.rolled_back.contains(&v) {
            self.rolled_back.push(v);
        }
        self.step = 0;
        if self.canary.is_empty() {
            self.steps.clear();
        }
    }

    /// Appends a decision to `history`, dropping the oldest past [`HISTORY`].
    pub fn record(&mut self, event: RoutingEvent) {
        self.history.push(event);
        let excess = self.history.len().saturating_sub(HISTORY);
        self.history.drain(..excess);
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shape() {
        let s = RoutingState::parse(
            br#"{"schema": 1, "stable": 6, "canary": {"7": 0.05}, "shadow": [], "step": 1,
                 "updated_by": "rollout-guardrail", "updated_at": "2026-11-24T10:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(s.stable, Some(6));
        assert_eq!(s.canary.get(&7), Some(&0.05));
        // Schema 1 reads as schema 2, loaded and without history.
        assert_eq!(s.schema, SCHEMA);
        assert!(!s.unloaded && s.history.is_empty());
        assert_eq!(s.referenced().collect::<Vec<_>>(), vec![6, 7]);
        let again = RoutingState::parse(&s.to_json()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn rejects_inconsistent_states() {
        let bad = |json: &str| RoutingState::parse(json.as_bytes()).unwrap_err();
        assert_eq!(bad(r#"{"schema": 3}"#), RoutingError::Schema(3));
        assert!(matches!(
            bad(r#"{"schema": 1, "canary": {"2": 1.5}}"#),
            RoutingError::Weight { .. }
        ));
        assert!(matches!(
            bad(r#"{"schema": 1, "canary": {"2": 0.6, "3": 0.6}}"#),
            RoutingError::Sum(_)
        ));
        assert_eq!(
            bad(r#"{"schema": 1, "stable": 2, "canary": {"2": 0.1}}"#),
            RoutingError::Overlap(2, "a canary")
        );
        assert_eq!(
            bad(r#"{"schema": 1, "stable": 2, "shadow": [2]}"#),
            RoutingError::Overlap(2, "a shadow")
        );
        assert_eq!(bad(r#"{"schema": 1, "stable": 0}"#), RoutingError::Zero);
        assert!(matches!(
            bad(r#"{"schema": 1, "stabel": 2}"#),
            RoutingError::Json(_)
        ));
        assert!(
            RoutingState::parse(br#"{"schema": 1, "canary": {"2": 0.1, "3": 0.2, "4": 0.7}}"#)
                .is_ok()
        );
    }

    #[test]
    fn verdicts_walk_the_recorded_steps() {
        let mut s = RoutingState {
            stable: Some(1),
            ..RoutingState::default()
        };
        assert_eq!(s.apply(Action::Start, 2, &[0.5, 1.0], true), Ok("start"));
        assert_eq!((s.canary[&2], s.steps.clone()), (0.5, vec![0.5, 1.0]));
        // A writer with other policy steps still follows the recorded ones.
        assert_eq!(
            s.apply(Action::Advance, 2, &[0.1, 0.2, 1.0], true),
            Ok("advance")
        );
        assert_eq!(s.canary[&2], 1.0);
        assert_eq!(s.apply(Action::Advance, 2, &[], true), Ok("promote"));
        assert_eq!((s.stable, s.canary.len(), s.steps.len()), (Some(2), 0, 0));
        assert!(s.apply(Action::Start, 3, &[], false).is_err());
        assert_eq!(s.apply(Action::Start, 3, &[], true), Ok("start"));
        assert_eq!(s.canary[&3], DEFAULT_STEPS[0]);
        assert_eq!(s.apply(Action::Rollback, 3, &[], true), Ok("rollback"));
        assert_eq!(s.rolled_back, vec![3]);
        assert!(s.apply(Action::Rollback, 3, &[], true).is_err());
        assert!(s.apply(Action::Advance, 3, &[], true).is_err());
        assert!(s.validate().is_ok());
    }

    #[test]
    fn history_keeps_the_newest_decisions() {
        let mut s = RoutingState::default();
        for i in 0..(HISTORY + 5) {
            s.record(RoutingEvent {
                at: String::new(),
                decision: "set".into(),
                by: "api".into(),
                reason: i.to_string(),
                stable: None,
                canary: BTreeMap::new(),
                step: 0,
                requests: None,
                replicas: None,
            });
        }
        assert_eq!(s.history.len(), HISTORY);
        assert_eq!(s.history[0].reason, "5");
        let again = RoutingState::parse(&s.to_json()).unwrap();
        assert_eq!(again, s);
    }
}
