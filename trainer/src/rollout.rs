//! Driving a published candidate's canary to stable, or back. The trainer
//! reads and writes the model's routing state in the registry with the
//! same compare-and-swap every other writer uses (the admin API on any
//! gateway replica, the fleet's guardrail leader), so it needs no gateway
//! URL and no racing writer loses an update. The verdict itself is the
//! contract's `RoutingState::apply`; this module decides when to give one,
//! from the quality of both arms on the traffic they share.

use quiver_contract::records::now_ms;
use quiver_contract::routing::{Action, RoutingEvent, RoutingState};
use quiver_contract::time::rfc3339_now;
use quiver_registry::control;
use quiver_registry::{Registry, UpdateError};
use serde::{Deserialize, Serialize};

use crate::cadence;
use crate::config::ModelConfig;
use crate::events::Events;
use crate::monitor::stats::{ArmQuality, Verdict, step_verdict};
use crate::train::Task;

/// Who the trainer's routing changes and history entries name.
pub const BY: &str = "quiver-trainer";

/// A published candidate's rollout, as the trainer's state file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollout {
    pub version: u64,
    pub stable: Option<u64>,
    pub started: bool,
    pub step: usize,
    /// When the current step began (ms since the Unix epoch): only
    /// predictions made since count for it, so both arms are judged on the
    /// same stretch of traffic even when labels arrive hours late.
    #[serde(default)]
    pub step_started_ms: u64,
    pub candidate: ArmQuality,
    pub stable_quality: ArmQuality,
    /// The run record of the training that made the version.
    #[serde(default)]
    pub run: Option<String>,
    /// Labelled rows per arm a step needs, fixed when it was published
    /// (`cadence::canary_samples`); `None`: the config's or derived anew.
    #[serde(default)]
    pub min_samples: Option<u64>,
    /// The candidate beat a failing stable clearly on held-out rows: one
    /// judged step on shared traffic promotes it.
    #[serde(default)]
    pub clear_win: bool,
    /// The prediction time of the newest row the candidate trained on.
    #[serde(default)]
    pub trained_through_ms: Option<u64>,
}

impl Rollout {
    /// A candidate just published (or found again after a restart).
    pub fn new(version: u64, stable: Option<u64>) -> Rollout {
        Rollout {
            version,
            stable,
            started: false,
            step: 0,
            step_started_ms: 0,
            candidate: ArmQuality::default(),
            stable_quality: ArmQuality::default(),
            run: None,
            min_samples: None,
            clear_win: false,
            trained_through_ms: None,
        }
    }
}

/// Applies a verdict on `version` to `model`'s routing state in the
/// registry, by compare-and-swap, and records it in the state's history.
/// `steps` are the trainer's canary steps (recorded when a canary starts).
/// Returns the decision taken (`start`, `advance`, `promote`, `rollback`)
/// and the state now stored; a verdict that does not apply to the stored
/// state is `UpdateError::Refused` with the reason, and nothing is written.
pub fn verdict(
    reg: &Registry,
    model: &str,
    action: Action,
    version: u64,
    steps: &[f64],
    reason: &str,
) -> Result<(&'static str, RoutingState), UpdateError> {
    let (published, _) = control::versions(reg, model)?;
    let exists = published.contains(&version);
    let mut decision = "";
    let state = control::update_routing(reg, model, false, |s| {
        decision = s.apply(action, version, steps, exists)?;
        let at = rfc3339_now();
        s.updated_by = BY.into();
        s.updated_at.clone_from(&at);
        s.reason = Some(reason.into());
        s.record(RoutingEvent {
            at,
            decision: decision.into(),
            by: BY.into(),
            reason: reason.into(),
            stable: s.stable,
            canary: s.canary.clone(),
            step: s.step,
            requests: None,
            replicas: None,
        });
        Ok(())
    })?;
    Ok((decision, state))
}

/// Ends `r`'s rollout before its verdict (its candidate learned a concept
/// the stream has left): rolled back if its canary began, dropped if not.
/// False when the registry refused (someone else decided meanwhile): the
/// rollout goes on and its next turn sees what they did.
pub fn abandon(
    reg: &Registry,
    events: &mut Events,
    model: &ModelConfig,
    r: &Rollout,
    reason: &str,
) -> bool {
    let name = model.name.as_str();
    if r.started {
        match verdict(
            reg,
            name,
            Action::Rollback,
            r.version,
            &model.canary.steps,
            reason,
        ) {
            Ok((_, state)) => {
                if let Some(run) = &r.run {
                    crate::runs::rollout_ended(reg, name, run, r.version, &state);
                }
            }
            Err(e) => {
                tracing::warn!(model = %name, version = r.version, error = %e, "rollback refused");
                return false;
            }
        }
    }
    events.emit(
        name,
        "rolled_back",
        Some(r.version),
        serde_json::json!({"why": reason}),
    );
    true
}

/// One turn of `r`'s rollout: notices a promotion or rollback made by
/// anyone, starts the canary, or judges the current step. Returns true
/// once the rollout is over.
pub fn step(reg: &Registry, events: &mut Events, model: &ModelConfig, r: &mut Rollout) -> bool {
    let name = model.name.as_str();
    let steps = model.canary.steps.as_slice();
    let routing = match control::read_routing(reg, name) {
        Ok((routing, _)) => routing,
        Err(e) => {
            tracing::warn!(model = %name, error = %e, "routing state unavailable");
            return false;
        }
    };
    // The run record learns how the rollout ended before anyone can see
    // the event.
    let ended = |r: &Rollout, state: &RoutingState| {
        if let Some(run) = &r.run {
            crate::runs::rollout_ended(reg, name, run, r.version, state);
        }
    };
    let promoted = |events: &mut Events, r: &Rollout, state: &RoutingState| {
        ended(r, state);
        events.emit(
            name,
            "promoted",
            Some(r.version),
            serde_json::json!({"steps": r.step}),
        );
    };
    if routing.stable == Some(r.version) {
        promoted(events, r, &routing);
        return true;
    }
    if routing.rolled_back.contains(&r.version) {
        ended(r, &routing);
        events.emit(
            name,
            "rolled_back",
            Some(r.version),
            serde_json::json!({"by": routing.updated_by, "reason": routing.reason}),
        );
        return true;
    }
    if !r.started {
        r.stable = routing.stable.or(r.stable);
        match verdict(
            reg,
            name,
            Action::Start,
            r.version,
            steps,
            "retrained candidate",
        ) {
            Ok(_) => {
                r.started = true;
                r.step_started_ms = now_ms();
                events.emit(
                    name,
                    "canary_started",
                    Some(r.version),
                    serde_json::json!({"stable": r.stable}),
                );
            }
            Err(e) => {
                tracing::info!(model = %name, version = r.version, error = %e, "canary not started yet");
            }
        }
        return false;
    }
    let classifier = matches!(model.task, Task::Classification { .. });
    // Quality is compared on concurrent traffic only: under drift, rows
    // from another time are a biased yardstick. Once the candidate takes
    // all traffic after a judged step, stable gets none; it then needs
    // only its sample (the latency and error guardrails stay the
    // gateway's).
    let full = routing.canary.get(&r.version).is_some_and(|&w| w >= 1.0);
    let alone = full && r.step > 0;
    let min_samples = r.min_samples.unwrap_or_else(|| {
        model.canary.min_samples.or_else(|| {
            let cycle = (model.window_rows as u64 / 10).max(cadence::MIN_RETRAIN_ROWS);
            cadence::canary_samples(cycle, steps, None)
        })
    });
    let judged = step_verdict(
        &r.candidate,
        &r.stable_quality,
        alone,
        min_samples,
        model.canary.alpha,
        classifier,
    );
    let stats = serde_json::json!({
        "min_samples": min_samples,
        "candidate_n": r.candidate.loss.n, "candidate_loss": r.candidate.loss.mean,
        "candidate_accuracy": r.candidate.correct as f64 / r.candidate.loss.n.max(1) as f64,
        "stable_n": r.stable_quality.loss.n, "stable_loss": r.stable_quality.loss.mean,
        "stable_accuracy": r.stable_quality.correct as f64 / r.stable_quality.loss.n.max(1) as f64});
    match judged {
        Verdict::NotEnoughData => false,
        Verdict::Worse => {
            let reason = "online quality worse than stable";
            match verdict(reg, name, Action::Rollback, r.version, steps, reason) {
                Ok((_, state)) => {
                    ended(r, &state);
                    events.emit(name, "rolled_back", Some(r.version), stats);
                    true
                }
                Err(e) => {
                    tracing::warn!(model = %name, error = %e, "rollback refused");
                    false
                }
            }
        }
        Verdict::NotWorse => {
            // A candidate that beat a failing stable clearly on held-out
            // rows and is not worse on shared traffic goes all the way:
            // every further step costs a label delay of the stale model.
            let (action, reason) = if alone {
                (
                    Action::Advance,
                    "all traffic after the judged steps, enough labelled rows",
                )
            } else if r.clear_win {
                (
                    Action::Promote,
                    "clearly better than a failing stable on held-out rows, not worse online",
                )
            } else {
                (Action::Advance, "online quality not worse than stable")
            };
            match verdict(reg, name, action, r.version, steps, reason) {
                Ok((_, state)) => {
                    r.step += 1;
                    // Each step judges both arms afresh, on the traffic
                    // they share at its weights.
                    r.candidate = ArmQuality::default();
                    r.stable_quality = ArmQuality::default();
                    r.step_started_ms = now_ms();
                    events.emit(name, "canary_step", Some(r.version), stats);
                    if state.stable == Some(r.version) {
                        promoted(events, r, &state);
                        return true;
                    }
                    false
                }
                Err(e) => {
                    tracing::warn!(model = %name, error = %e, "advance refused");
                    false
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use quiver_contract::fleet::{INDEX_FILE, RegistryIndex};
    use quiver_contract::layout::{MANIFEST_FILE, MODEL_FILE};
    use quiver_registry::S3Settings;

    use super::*;
    use crate::monitor::psi::Reference;
    use crate::publish::{self, Candidate, REFERENCE_FILE};
    use crate::train::mlp::{Mlp, MlpSettings};
    use crate::train::{Dataset, Trained};

    fn registry(tag: &str) -> (std::path::PathBuf, Registry) {
        let root =
            std::env::temp_dir().join(format!("quiver-trainer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let reg = Registry::open(root.to_str().unwrap(), &S3Settings::default()).unwrap();
        (root, reg)
    }

    fn model() -> ModelConfig {
        crate::config::test_model("[models.canary]\nsteps = [0.25, 0.5, 1.0]\n")
    }

    /// A small trained net, exported; parity is not checked here (that
    /// needs ONNX Runtime, see `tests/export.rs`).
    fn candidate(model: &ModelConfig, version: u64) -> Candidate {
        let mut data = Dataset::new(2);
        for i in 0..40 {
            let x = [i as f32 / 40.0, 1.0 - i as f32 / 40.0];
            data.push(&x, f32::from(u8::from(x[0] > x[1])));
        }
        let settings = MlpSettings {
            hidden: vec![4],
            max_epochs: 2,
            validation_fraction: 0.0,
            threads: 1,
            ..MlpSettings::default()
        };
        let trained = Trained::Mlp(Mlp::train(model.task, &data, &settings, 7).unwrap());
        let onnx = trained.to_onnx(&model.interface().unwrap(), version, &[]);
        let out = trained.predict(&data.x);
        let scores: Vec<f32> = out.chunks(2).map(|r| r[1]).collect();
        Candidate {
            reference: Reference::fit(&data.x, 2, &scores, 4),
            family: "mlp".into(),
            task: model.task,
            features: 2,
            trained: Some(trained),
            command: None,
            onnx,
            offline: BTreeMap::from([("log_loss".to_string(), 0.5)]),
            stable_offline: None,
            held_rows: 0,
            parity_max_abs: 0.0,
            rows: data.rows(),
            seconds: 0.0,
        }
    }

    fn publish_next(reg: &Registry, model: &ModelConfig) -> u64 {
        let version = publish::next_version(reg, &model.name).unwrap();
        let lineage = publish::lineage(
            model,
            version.checked_sub(1).filter(|&v| v > 0),
            BTreeMap::new(),
            40,
        );
        publish::publish(reg, model, version, &candidate(model, version), lineage).unwrap();
        version
    }

    #[test]
    fn versions_are_published_into_the_registry_manifest_last() {
        let (root, reg) = registry("publish");
        let model = model();
        assert_eq!(publish_next(&reg, &model), 1);
        assert_eq!(publish_next(&reg, &model), 2);
        assert_eq!(
            control::versions(&reg, "m").unwrap(),
            (vec![1, 2], vec![1, 2])
        );
        // A version being written (files, no manifest yet) takes its number.
        reg.put("m/3/model.onnx", b"partial").unwrap();
        assert_eq!(
            control::versions(&reg, "m").unwrap(),
            (vec![1, 2], vec![1, 2, 3])
        );
        assert_eq!(publish::next_version(&reg, "m").unwrap(), 4);
        let m2 = publish::read_manifest(&reg, "m", 2).unwrap();
        assert_eq!(m2.lineage.and_then(|l| l.parent), Some(1));
        for file in [MODEL_FILE, REFERENCE_FILE] {
            let bytes = publish::read_file(&reg, "m", 2, file).unwrap().unwrap();
            assert_eq!(
                m2.sha256[file],
                quiver_contract::manifest::sha256_bytes(&bytes)
            );
        }
        assert!(root.join("m/2").join(MANIFEST_FILE).is_file());
        assert!(
            publish::read_file(&reg, "m", 9, MODEL_FILE)
                .unwrap()
                .is_none()
        );
        // Publishing bumped the index replicas poll.
        let index = RegistryIndex::parse(&reg.get(INDEX_FILE).unwrap().unwrap().bytes).unwrap();
        assert_eq!(index.models["m"], 2);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn verdicts_go_through_the_registry_with_history() {
        let (root, reg) = registry("verdicts");
        let model = model();
        let steps = &model.canary.steps;
        publish_next(&reg, &model);
        publish_next(&reg, &model);
        control::update_routing(&reg, "m", false, |s| {
            s.stable = Some(1);
            Ok(())
        })
        .unwrap();
        // Neither an unpublished version nor an advance before a start.
        let err = verdict(&reg, "m", Action::Start, 3, steps, "x").unwrap_err();
        assert!(err.to_string().contains("no version 3"), "{err}");
        assert!(verdict(&reg, "m", Action::Advance, 2, steps, "x").is_err());

        let (d, s) = verdict(&reg, "m", Action::Start, 2, steps, "retrained candidate").unwrap();
        assert_eq!(
            (d, s.canary[&2], s.steps.clone()),
            ("start", 0.25, steps.clone())
        );
        let (d, s) = verdict(&reg, "m", Action::Advance, 2, steps, "not worse").unwrap();
        assert_eq!((d, s.canary[&2], s.step), ("advance", 0.5, 1));
        let (d, s) = verdict(&reg, "m", Action::Promote, 2, steps, "promoted by hand").unwrap();
        assert_eq!(d, "promote");

        let bytes = std::fs::read(root.join("m/routing.json")).unwrap();
        let stored = RoutingState::parse(&bytes).unwrap();
        assert_eq!(stored, s);
        assert_eq!(stored.stable, Some(2));
        assert!(stored.canary.is_empty() && stored.steps.is_empty());
        assert_eq!(stored.updated_by, BY);
        assert_eq!(stored.reason.as_deref(), Some("promoted by hand"));
        let history: Vec<(&str, &str, Option<u64>)> = stored
            .history
            .iter()
            .map(|e| (e.decision.as_str(), e.by.as_str(), e.stable))
            .collect();
        assert_eq!(
            history,
            vec![
                ("start", BY, Some(1)),
                ("advance", BY, Some(1)),
                ("promote", BY, Some(2)),
            ]
        );
        assert_eq!(stored.history[1].canary.get(&2), Some(&0.5));
        assert_eq!(stored.history[1].reason, "not worse");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_clear_win_is_promoted_after_one_step_and_a_stale_candidate_rolled_back() {
        let (root, reg) = registry("clear-win");
        let model = model();
        for _ in 0..3 {
            publish_next(&reg, &model);
        }
        control::update_routing(&reg, "m", false, |s| {
            s.stable = Some(1);
            Ok(())
        })
        .unwrap();
        let mut events = Events::open(&root.join("state")).unwrap();
        let mut r = Rollout::new(2, Some(1));
        r.min_samples = Some(50);
        r.clear_win = true;
        assert!(!step(&reg, &mut events, &model, &mut r));
        assert!(r.started);
        // Not enough rows yet: no verdict.
        for i in 0..60 {
            if i < 49 {
                r.candidate.correct += 1;
                r.candidate.loss.add(0.1);
            }
            r.stable_quality.correct += i % 2;
            r.stable_quality.loss.add(0.7);
        }
        assert!(!step(&reg, &mut events, &model, &mut r));
        r.candidate.correct += 1;
        r.candidate.loss.add(0.1);
        // At the first of three steps, one judged step promotes it.
        assert!(step(&reg, &mut events, &model, &mut r));
        let (routing, _) = control::read_routing(&reg, "m").unwrap();
        assert_eq!(routing.stable, Some(2));
        assert_eq!(
            routing.history.last().map(|e| e.decision.as_str()),
            Some("promote")
        );
        // Without the clear win the same numbers only advance a step.
        let mut r = Rollout::new(3, Some(2));
        r.min_samples = Some(50);
        assert!(!step(&reg, &mut events, &model, &mut r));
        r.candidate = routing_arm(50, 0.1);
        r.stable_quality = routing_arm(30, 0.7);
        assert!(!step(&reg, &mut events, &model, &mut r));
        let (routing, _) = control::read_routing(&reg, "m").unwrap();
        assert_eq!(
            (routing.stable, routing.canary.get(&3)),
            (Some(2), Some(&0.5))
        );
        // A candidate trained before a concept change is rolled back.
        assert!(abandon(
            &reg,
            &mut events,
            &model,
            &r,
            "trained before a concept change"
        ));
        let (routing, _) = control::read_routing(&reg, "m").unwrap();
        assert!(routing.canary.is_empty() && routing.rolled_back.contains(&3));
        assert_eq!(routing.stable, Some(2));
        // One whose canary never began is dropped without a verdict.
        assert!(abandon(
            &reg,
            &mut events,
            &model,
            &Rollout::new(9, Some(2)),
            "stale"
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn routing_arm(correct: u64, loss: f64) -> ArmQuality {
        let mut q = ArmQuality {
            correct,
            ..ArmQuality::default()
        };
        for _ in 0..50 {
            q.loss.add(loss);
        }
        q
    }
}
