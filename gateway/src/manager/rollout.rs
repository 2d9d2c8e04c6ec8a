//! The manager's rollout duties: start canaries when a policy says so,
//! run the guardrail over each running canary (on the leader only, on the
//! traffic of every replica), and apply verdicts and routing changes from
//! the admin API. Every change is a compare-and-swap on the model's
//! `routing.json` in the registry against the state the decision was
//! based on: a decision taken on a state someone else has changed since
//! is dropped, never applied twice. Each one is logged, counted and kept
//! in the stored history.

use std::time::Instant;

use quiver_contract::routing::{RoutingEvent, RoutingState};
use quiver_registry::{Registry, UpdateError, control};

use super::fleet::{self, Sources};
use super::model::{ModelState, Run, Wait};
use super::{Manager, Reply, Verdict};
use crate::error::ApiError;
use crate::rollout::{Decision, decide};

/// Who the guardrail is in `updated_by` and the history.
const GUARDRAIL: &str = "rollout-guardrail";

impl Manager {
    pub(super) fn guard_rollouts(&mut self, now: Instant) {
        let Some(term) = self.fleet.term() else {
            // Followers judge nothing; a run is started afresh on taking
            // the lease.
            for state in self.models.values_mut() {
                state.run = None;
            }
            return;
        };
        let running = self.models.values().any(|s| !s.routing.canary.is_empty());
        let traffic = if running || self.fleet.sweep_due(now) {
            let live = self.gw.live.load();
            self.fleet.traffic(self.repo.registry(), &live)
        } else {
            Default::default()
        };
        let by = format!("{GUARDRAIL}@{} (term {term})", self.fleet.replica);
        let registry = self.repo.registry().clone();
        for (name, state) in &mut self.models {
            guard(&registry, &by, name, state, traffic.get(name), now);
        }
    }

    pub(super) fn set_routing(&mut self, name: String, routing: RoutingState, reply: Reply) {
        let registry = self.repo.registry().clone();
        let by = self.api_writer(routing.updated_by.as_str());
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
        let reason = routing
            .reason
            .clone()
            .unwrap_or_else(|| "routing set through the API".into());
        let result = commit(
            &registry,
            &name,
            state,
            &Writer {
                by: &by,
                reason: &reason,
                weighed: None,
            },
            true,
            |s| {
                let mut next = routing.clone();
                next.rolled_back.sort_unstable();
                next.rolled_back.dedup();
                next.history = std::mem::take(&mut s.history);
                next.unloaded = s.unloaded;
                *s = next;
                Ok("set")
            },
        );
        self.after_api_change(name, result, reply);
    }

    pub(super) fn verdict(&mut self, name: String, verdict: Verdict, reply: Reply) {
        let registry = self.repo.registry().clone();
        let by = self.api_writer(verdict.by.as_deref().unwrap_or(""));
        let Some(state) = self.models.get_mut(&name) else {
            let _ = reply.send(Err(ApiError::NotFound(format!("unknown model '{name}'"))));
            return;
        };
        let steps = state
            .config
            .as_ref()
            .map(|c| c.settings.rollout.steps.clone())
            .unwrap_or_default();
        let v = verdict.version;
        let exists = state.is_present(v);
        let reason = verdict
            .reason
            .clone()
            .unwrap_or_else(|| "external verdict".into());
        let result = commit(
            &registry,
            &name,
            state,
            &Writer {
                by: &by,
                reason: &reason,
                weighed: None,
            },
            false,
            |s| s.apply(verdict.action, v, &steps, exists),
        );
        if let Ok(label) = &result
            && *label == "promote"
            && let Some(s) = self.models.get_mut(&name)
        {
            s.baseline = None;
        }
        self.after_api_change(name, result, reply);
    }

    /// Records an unload (`unloaded: true`) or a load in the registry, so
    /// every replica and every restart honours it.
    pub(super) fn record_unloaded(&mut self, name: &str, unloaded: bool) -> Result<(), ApiError> {
        let registry = self.repo.registry().clone();
        let by = self.api_writer("");
        let Some(state) = self.models.get_mut(name) else {
            return Err(ApiError::NotFound(format!("unknown model '{name}'")));
        };
        if state.routing.unloaded == unloaded {
            return Ok(());
        }
        let (decision, reason) = if unloaded {
            ("unload", "unloaded through the API")
        } else {
            ("load", "loaded through the API")
        };
        commit(
            &registry,
            name,
            state,
            &Writer {
                by: &by,
                reason,
                weighed: None,
            },
            false,
            |s| {
                s.unloaded = unloaded;
                Ok(decision)
            },
        )
        .map(|_| ())
    }

    /// The caller's own name if it gave one, else `api@<replica>`.
    fn api_writer(&self, given: &str) -> String {
        if given.is_empty() {
            format!("api@{}", self.fleet.replica)
        } else {
            given.to_string()
        }
    }

    fn after_api_change(
        &mut self,
        name: String,
        result: Result<&'static str, ApiError>,
        reply: Reply,
    ) {
        match result {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(_) => {
                if let Some(state) = self.models.get_mut(&name) {
                    state.waiters.push((Wait::Routing, reply));
                }
                self.rescan(&name);
            }
        }
    }

    /// Reads one model's folder now rather than at the next poll: to
    /// load what a routing change names, or to retire what a finished load
    /// replaces.
    pub(super) fn rescan(&mut self, name: &str) {
        match self.repo.model(name) {
            Ok(Some(dir)) => self.observe(dir, false),
            Ok(None) => {}
            Err(e) => tracing::warn!(model = %name, error = %e, "cannot read the model's folder"),
        }
    }
}

/// Who makes a routing change and why; for the guardrail, the requests it
/// weighed and how many replicas served them.
struct Writer<'a> {
    by: &'a str,
    reason: &'a str,
    weighed: Option<(u64, u32)>,
}

/// Writes a routing change by compare-and-swap: `change` edits the state
/// as stored now and names the decision, or refuses it. On success the
/// stored state is taken as the one in force and the decision is logged,
/// counted and recorded in the history with who took it and why.
fn commit(
    registry: &Registry,
    name: &str,
    state: &mut ModelState,
    writer: &Writer,
    replace_invalid: bool,
    mut change: impl FnMut(&mut RoutingState) -> Result<&'static str, String>,
) -> Result<&'static str, ApiError> {
    let Writer {
        by,
        reason,
        weighed,
    } = *writer;
    let mut decision = "";
    let result = control::update_routing(registry, name, replace_invalid, |s| {
        decision = change(s)?;
        s.updated_by = by.to_string();
        s.updated_at = quiver_contract::time::rfc3339_now();
        s.reason = Some(reason.to_string());
        let event = RoutingEvent {
            at: s.updated_at.clone(),
            decision: decision.to_string(),
            by: by.to_string(),
            reason: reason.to_string(),
            stable: s.stable,
            canary: s.canary.clone(),
            step: s.step,
            requests: weighed.map(|w| w.0),
            replicas: weighed.map(|w| w.1),
        };
        s.record(event);
        Ok(())
    });
    let stored = match result {
        Ok(s) => s,
        Err(UpdateError::Refused(why)) => return Err(ApiError::BadRequest(why)),
        Err(e) => {
            tracing::error!(model = %name, error = %e, "cannot write the routing state; the change is not applied");
            return Err(ApiError::NotReady(format!(
                "the model registry did not take the change: {e}"
            )));
        }
    };
    if decision == "rollback" {
        tracing::warn!(model = %name, by, reason, "rollout: rollback");
    } else {
        tracing::info!(model = %name, by, reason, stable = ?stored.stable, canary = ?stored.canary, "rollout: {decision}");
    }
    crate::metrics::rollout_decision(name, decision);
    state.adopt_routing(name, stored);
    Ok(decision)
}

/// The guardrail's decision on a state differs from the stored one: it was
/// changed by someone else since this replica last read it.
const CHANGED: &str = "the routing state changed since it was read";

/// Applies `edit` only to the state the guardrail looked at.
fn guarded<'a>(
    seen: &'a RoutingState,
    edit: impl Fn(&mut RoutingState) -> &'static str + 'a,
) -> impl FnMut(&mut RoutingState) -> Result<&'static str, String> + 'a {
    move |s: &mut RoutingState| {
        if !s.same_routing(seen) {
            return Err(CHANGED.to_string());
        }
        Ok(edit(s))
    }
}

/// One guardrail pass over one model, on the leader.
fn guard(
    registry: &Registry,
    by: &str,
    name: &str,
    state: &mut ModelState,
    traffic: Option<&std::collections::BTreeMap<u64, Sources>>,
    now: Instant,
) {
    if state.unloaded {
        return;
    }
    let Ok(cfg) = &state.config else { return };
    let seen = state.routing.clone();
    // A running rollout follows the steps recorded when it started (the
    // trainer may have started it with its own).
    let mut policy = cfg.settings.rollout.clone();
    if !seen.steps.is_empty() {
        policy.steps = seen.steps.clone();
    }
    let ready = state.ready_list();
    let report = |result: Result<&'static str, ApiError>| {
        if let Err(e) = result {
            tracing::info!(model = %name, error = %e, "guardrail decision dropped; it is taken again on the state in force");
        }
    };
    if policy.enabled && seen.canary.is_empty() {
        match seen.stable {
            None => {
                if let Some(&v) = ready.last() {
                    let why = format!("version {v} is the first stable version");
                    report(commit(
                        registry,
                        name,
                        state,
                        &Writer {
                            by,
                            reason: &why,
                            weighed: None,
                        },
                        false,
                        guarded(&seen, |s| {
                            s.stable = Some(v);
                            "init"
                        }),
                    ));
                }
            }
            Some(stable) => {
                let next = ready.iter().rev().copied().find(|v| {
                    *v > stable && !seen.rolled_back.contains(v) && !seen.shadow.contains(v)
                });
                if let Some(v) = next {
                    let why = format!(
                        "version {v} is ready; canary at {:.0} %",
                        policy.weight(0) * 100.0
                    );
                    let steps = policy.steps.clone();
                    report(commit(
                        registry,
                        name,
                        state,
                        &Writer {
                            by,
                            reason: &why,
                            weighed: None,
                        },
                        false,
                        guarded(&seen, |s| {
                            s.steps = steps.clone();
                            s.canary.insert(v, s.steps.first().copied().unwrap_or(1.0));
                            s.step = 0;
                            "start"
                        }),
                    ));
                    state.run = None;
                }
            }
        }
        return;
    }
    let mut canaries = seen.canary.keys().copied();
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
        let why = format!("version {c} failed to load: {why}");
        report(commit(
            registry,
            name,
            state,
            &Writer {
                by,
                reason: &why,
                weighed: None,
            },
            false,
            guarded(&seen, |s| {
                s.rollback(c);
                "rollback"
            }),
        ));
        state.run = None;
        return;
    }
    if state.served(c).is_none() {
        return; // still loading here
    }
    let table = state.table();
    let step = seen.step;
    let empty = Sources::new();
    let canary_sources = traffic.and_then(|t| t.get(&c));
    let stable_sources = table.stable.and_then(|v| traffic.and_then(|t| t.get(&v)));
    let fresh = !state
        .run
        .as_ref()
        .is_some_and(|r| r.canary == c && r.step == step && r.stable == table.stable);
    if fresh {
        state.run = Some(Run {
            canary: c,
            step,
            stable: table.stable,
            since: now,
            canary_mark: canary_sources.cloned().unwrap_or_default(),
            stable_mark: stable_sources.cloned().unwrap_or_default(),
        });
        state.dirty = true;
        return;
    }
    let Some(run) = &state.run else { return };
    let (canary_window, canary_replicas) = fleet::window(canary_sources, &run.canary_mark);
    let (stable_window, stable_replicas) = match table.stable {
        Some(_) => fleet::window(stable_sources, &run.stable_mark),
        None => fleet::window(None, &empty),
    };
    let dwell = now.saturating_duration_since(run.since);
    if stable_window.requests >= policy.min_requests {
        state.baseline = Some(stable_window.clone());
    }
    let decision = decide(
        &policy,
        step,
        &canary_window,
        state.baseline.as_ref(),
        dwell,
    );
    let mut replicas = canary_replicas;
    for r in stable_replicas {
        if !replicas.contains(&r) {
            replicas.push(r);
        }
    }
    crate::dashboard::guardrail::record(
        name,
        &crate::dashboard::guardrail::Weighed {
            policy: &policy,
            canary: c,
            stable: table.stable,
            step,
            canary_window: &canary_window,
            stable_window: &stable_window,
            baseline: state.baseline.as_ref(),
            dwell,
            replicas: replicas.len(),
            decision: &decision,
        },
    );
    let weighed = Some((
        canary_window.requests + stable_window.requests,
        replicas.len() as u32,
    ));
    let summary = format!(
        "canary v{c}: {} requests, {:.2} % errors, p99 {} µs; stable: {}; from {} replica(s)",
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
        replicas.len(),
    );
    let result = match decision {
        Decision::Hold => return,
        Decision::Advance => {
            let w = policy.weight(step + 1);
            let why = format!("step held ({summary}); canary at {:.0} %", w * 100.0);
            let steps = policy.steps.clone();
            commit(
                registry,
                name,
                state,
                &Writer {
                    by,
                    reason: &why,
                    weighed,
                },
                false,
                guarded(&seen, |s| {
                    s.apply(quiver_contract::routing::Action::Advance, c, &steps, true)
                        .unwrap_or("advance")
                }),
            )
        }
        Decision::Promote => {
            let why = format!("last step held ({summary}); version {c} is stable");
            let result = commit(
                registry,
                name,
                state,
                &Writer {
                    by,
                    reason: &why,
                    weighed,
                },
                false,
                guarded(&seen, |s| {
                    s.promote(c);
                    "promote"
                }),
            );
            if result.is_ok() {
                state.baseline = None;
            }
            result
        }
        Decision::Rollback(why) => {
            let why = format!("{why} ({summary}); version {c} rolled back");
            commit(
                registry,
                name,
                state,
                &Writer {
                    by,
                    reason: &why,
                    weighed,
                },
                false,
                guarded(&seen, |s| {
                    s.rollback(c);
                    "rollback"
                }),
            )
        }
    };
    report(result);
    state.run = None;
}
