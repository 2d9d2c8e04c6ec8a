//! The manager's rollout duties: start canaries when a policy says so,
//! run the guardrail over each running canary, and apply verdicts and
//! routing changes from the admin API. Every change is written back to
//! `routing.json` (so a restart resumes where it was), logged, counted and
//! kept in the model's recent history.

use std::time::Instant;

use quiver_contract::layout::{self, ROUTING_FILE};
use quiver_contract::routing::RoutingState;

use super::model::{ModelState, Run, Wait};
use super::{Manager, Reply, Verdict, VerdictAction};
use crate::error::ApiError;
use crate::repository::{self, FileStamp};
use crate::rollout::{Decision, decide};

impl Manager {
    pub(super) fn guard_rollouts(&mut self, now: Instant) {
        for (name, state) in &mut self.models {
            guard(name, state, now);
        }
    }

    pub(super) fn set_routing(&mut self, name: String, mut routing: RoutingState, reply: Reply) {
        let Some(state) = self.models.get_mut(&name) else {
            let _ = reply.send(Err(ApiError::NotFound(format!("unknown model '{name}'"))));
            return;
        };
        if let Err(e) = routing.validate() {
            let _ = reply.send(Err(ApiError::BadRequest(e.to_string())));
            return;
        }
        if let Some(v) = routing.referenced().find(|v| !state.is_present(*v)) {
            let _ = reply.send(Err(ApiError::BadRequest(format!(
                "model '{name}' has no version {v} in the repository"
            ))));
            return;
        }
        let by = if routing.updated_by.is_empty() {
            "api".to_string()
        } else {
            routing.updated_by.clone()
        };
        let reason = routing.reason.take();
        routing.rolled_back.sort_unstable();
        routing.rolled_back.dedup();
        state.routing = routing;
        state.run = None;
        commit(
            &name,
            state,
            &by,
            reason.as_deref().unwrap_or("routing set through the API"),
            "set",
        );
        state.waiters.push((Wait::Routing, reply));
        self.rescan(&name);
    }

    pub(super) fn verdict(&mut self, name: String, verdict: Verdict, reply: Reply) {
        let Some(state) = self.models.get_mut(&name) else {
            let _ = reply.send(Err(ApiError::NotFound(format!("unknown model '{name}'"))));
            return;
        };
        let steps = state
            .config
            .as_ref()
            .map(|c| c.settings.rollout.clone())
            .unwrap_or_default();
        let v = verdict.version;
        let on_disk = state.is_present(v);
        let r = &mut state.routing;
        let bad = |m: String| Err(ApiError::BadRequest(m));
        let outcome: Result<&'static str, ApiError> = match verdict.action {
            VerdictAction::Start if !on_disk => bad(format!(
                "model '{name}' has no version {v} in the repository"
            )),
            VerdictAction::Start if r.stable == Some(v) => {
                bad(format!("version {v} is already stable"))
            }
            VerdictAction::Start => {
                r.canary.clear();
                r.canary.insert(v, steps.weight(0));
                r.shadow.retain(|s| *s != v);
                r.rolled_back.retain(|s| *s != v);
                r.step = 0;
                Ok("start")
            }
            VerdictAction::Advance if !r.canary.contains_key(&v) => {
                bad(format!("version {v} is not a canary"))
            }
            VerdictAction::Advance if steps.is_last(r.step) => {
                promote(r, v);
                Ok("promote")
            }
            VerdictAction::Advance => {
                r.step += 1;
                r.canary.insert(v, steps.weight(r.step));
                Ok("advance")
            }
            VerdictAction::Promote if !on_disk => bad(format!(
                "model '{name}' has no version {v} in the repository"
            )),
            VerdictAction::Promote => {
                promote(r, v);
                Ok("promote")
            }
            VerdictAction::Rollback if !r.canary.contains_key(&v) && !r.shadow.contains(&v) => {
                bad(format!("version {v} is neither a canary nor a shadow"))
            }
            VerdictAction::Rollback => {
                rollback(r, v);
                Ok("rollback")
            }
        };
        match outcome {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(label) => {
                state.run = None;
                if label == "promote" {
                    state.baseline = None;
                }
                let by = verdict.by.as_deref().unwrap_or("api");
                let reason = verdict.reason.as_deref().unwrap_or("external verdict");
                commit(&name, state, by, reason, label);
                state.waiters.push((Wait::Routing, reply));
                self.rescan(&name);
            }
        }
    }

    /// Reads one model's directory now rather than at the next poll: to
    /// load what a routing change names, or to retire what a finished load
    /// replaces.
    pub(super) fn rescan(&mut self, name: &str) {
        if let Ok(dir) = repository::scan_model(&self.gw.settings.repository, name) {
            self.observe(dir, false);
        }
    }
}

fn promote(r: &mut RoutingState, v: u64) {
    r.stable = Some(v);
    r.canary.clear();
    r.shadow.retain(|s| *s != v);
    r.step = 0;
}

fn rollback(r: &mut RoutingState, v: u64) {
    r.canary.remove(&v);
    r.shadow.retain(|s| *s != v);
    if !r.rolled_back.contains(&v) {
        r.rolled_back.push(v);
    }
    r.step = 0;
}

/// One guardrail pass over one model.
fn guard(name: &str, state: &mut ModelState, now: Instant) {
    if state.unloaded {
        return;
    }
    let Ok(cfg) = &state.config else { return };
    let policy = cfg.settings.rollout.clone();
    let ready = state.ready_list();
    if policy.enabled && state.routing.canary.is_empty() {
        match state.routing.stable {
            None => {
                if let Some(&v) = ready.last() {
                    state.routing.stable = Some(v);
                    commit(
                        name,
                        state,
                        "rollout-guardrail",
                        &format!("version {v} is the first stable version"),
                        "init",
                    );
                }
            }
            Some(stable) => {
                let r = &state.routing;
                let next =
                    ready.iter().rev().copied().find(|v| {
                        *v > stable && !r.rolled_back.contains(v) && !r.shadow.contains(v)
                    });
                if let Some(v) = next {
                    state.routing.canary.insert(v, policy.weight(0));
                    state.routing.step = 0;
                    state.run = None;
                    let why = format!(
                        "version {v} is ready; canary at {:.0} %",
                        policy.weight(0) * 100.0
                    );
                    commit(name, state, "rollout-guardrail", &why, "start");
                }
            }
        }
        return;
    }
    let mut canaries = state.routing.canary.keys().copied();
    let (Some(c), None) = (canaries.next(), canaries.next()) else {
        // None, or several set by hand: the guardrail manages one at a time.
        state.run = None;
        return;
    };
    let failed = state
        .slots
        .get(&c)
        .and_then(|s| match (&s.served, &s.failed) {
            (None, Some((_, e))) => Some(e.clone()),
            _ => None,
        });
    if let Some(why) = failed {
        rollback(&mut state.routing, c);
        state.run = None;
        commit(
            name,
            state,
            "rollout-guardrail",
            &format!("version {c} failed to load: {why}"),
            "rollback",
        );
        return;
    }
    let Some(canary) = state.served(c).cloned() else {
        return; // still loading
    };
    let table = state.table();
    let stable = table.stable.and_then(|v| state.served(v).cloned());
    let step = state.routing.step;
    let instance = std::sync::Arc::as_ptr(&canary) as usize;
    let fresh = !state.run.as_ref().is_some_and(|r| {
        r.canary == c && r.step == step && r.stable == table.stable && r.canary_instance == instance
    });
    if fresh {
        state.run = Some(Run {
            canary: c,
            step,
            stable: table.stable,
            since: now,
            canary_mark: canary.stats.snapshot(),
            stable_mark: stable.as_ref().map(|s| s.stats.snapshot()),
            canary_instance: instance,
        });
        state.dirty = true;
        return;
    }
    let Some(run) = &state.run else { return };
    let canary_window = canary.stats.snapshot().since(&run.canary_mark);
    let stable_window = match (&stable, &run.stable_mark) {
        (Some(s), Some(mark)) => Some(s.stats.snapshot().since(mark)),
        _ => None,
    };
    let dwell = now.saturating_duration_since(run.since);
    if let Some(w) = &stable_window
        && w.requests >= policy.min_requests
    {
        state.baseline = Some(w.clone());
    }
    let decision = decide(
        &policy,
        step,
        &canary_window,
        state.baseline.as_ref(),
        dwell,
    );
    let summary = format!(
        "canary v{c}: {} requests, {:.2} % errors, p99 {} µs; stable: {}",
        canary_window.requests,
        canary_window.error_rate() * 100.0,
        canary_window.quantile_us(0.99).unwrap_or(0),
        state
            .baseline
            .as_ref()
            .map_or("no traffic to compare".into(), |b| format!(
                "{} requests, {:.2} % errors, p99 {} µs",
                b.requests,
                b.error_rate() * 100.0,
                b.quantile_us(0.99).unwrap_or(0)
            )),
    );
    match decision {
        Decision::Hold => return,
        Decision::Advance => {
            state.routing.step += 1;
            let w = policy.weight(state.routing.step);
            state.routing.canary.insert(c, w);
            commit(
                name,
                state,
                "rollout-guardrail",
                &format!("step held ({summary}); canary at {:.0} %", w * 100.0),
                "advance",
            );
        }
        Decision::Promote => {
            promote(&mut state.routing, c);
            state.baseline = None;
            commit(
                name,
                state,
                "rollout-guardrail",
                &format!("last step held ({summary}); version {c} is stable"),
                "promote",
            );
        }
        Decision::Rollback(why) => {
            rollback(&mut state.routing, c);
            commit(
                name,
                state,
                "rollout-guardrail",
                &format!("{why}; version {c} rolled back"),
                "rollback",
            );
        }
    }
    state.run = None;
}

/// Records a routing change: written to `routing.json`, logged, counted,
/// and kept in the model's history.
fn commit(name: &str, state: &mut ModelState, by: &str, reason: &str, decision: &'static str) {
    let r = &mut state.routing;
    r.updated_by = by.to_string();
    r.updated_at = quiver_contract::time::rfc3339_now();
    r.reason = Some(reason.to_string());
    let path = state.dir.join(ROUTING_FILE);
    match layout::write_atomic(&path, &r.to_json()) {
        Ok(()) => state.routing_stamp = Some(FileStamp::of(&path)),
        Err(e) => tracing::error!(model = %name, error = %e, path = %path.display(),
            "cannot write the routing file; the change holds until restart only"),
    }
    if decision == "rollback" {
        tracing::warn!(model = %name, by, reason, "rollout: rollback");
    } else {
        tracing::info!(model = %name, by, reason, stable = ?r.stable, canary = ?r.canary, "rollout: {decision}");
    }
    crate::metrics::rollout_decision(name, decision);
    state.history.push_back(serde_json::json!({
        "at": r.updated_at, "decision": decision, "by": by, "reason": reason,
        "stable": r.stable, "canary": r.canary, "step": r.step,
    }));
    while state.history.len() > super::model::HISTORY {
        state.history.pop_front();
    }
    state.dirty = true;
}
