//! Training runs recorded in the registry (`<model>/runs/<run>.json`):
//! every attempt, published or not, with its trigger, data, settings,
//! metrics against stable, parity and outcome; the rollout's end is added
//! when the trainer sees it. `quiver-trainer runs --model M` prints them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use quiver_contract::records::now_ms;
use quiver_contract::routing::RoutingState;
use quiver_contract::runs::{self, Outcome, RolloutEnd, RunRecord};
use quiver_contract::time::rfc3339_now;
use quiver_registry::{Registry, control};

use crate::config::{Config, ModelConfig};
use crate::publish::{Candidate, code_version};
use crate::train::metrics::primary_loss;
use crate::trial::Trial;

/// A record for an attempt starting now, `Running` until it ends.
pub fn start(
    model: &ModelConfig,
    trigger: &str,
    parent: Option<u64>,
    data: BTreeMap<String, String>,
    rows: usize,
) -> RunRecord {
    RunRecord {
        schema: runs::SCHEMA,
        id: runs::run_id(now_ms()),
        model: model.name.clone(),
        trigger: trigger.to_string(),
        started_at: rfc3339_now(),
        seconds: 0.0,
        rows_per_s: None,
        parent,
        data,
        rows: rows as u64,
        held_rows: 0,
        family: model.families().join(","),
        config: serde_json::to_value(model).unwrap_or_default(),
        config_sha256: Config::model_sha256(model),
        seed: model.seed,
        code: code_version(),
        offline: BTreeMap::new(),
        stable_offline: None,
        parity_max_abs: None,
        outcome: Outcome::Running,
        rollout: None,
        candidates: Vec::new(),
        winner: None,
    }
}

/// Takes what the run's candidates measured: each family's attempt, the
/// winner, and the winner's figures.
pub fn tried(run: &mut RunRecord, trial: &Trial) {
    run.candidates = trial.runs.clone();
    run.winner = trial.winner.clone();
    run.seconds = trial.runs.iter().map(|c| c.seconds).sum();
    if let Some(c) = &trial.best {
        trained(run, c);
        run.seconds = trial.runs.iter().map(|c| c.seconds).sum();
    }
}

/// Takes what a trained candidate measured.
fn trained(run: &mut RunRecord, c: &Candidate) {
    run.family = c.family.clone();
    run.seconds = c.seconds;
    run.rows = c.rows as u64;
    run.held_rows = c.held_rows as u64;
    run.rows_per_s = (c.seconds > 0.0).then(|| c.rows as f64 / c.seconds);
    run.offline = c.offline.clone();
    run.stable_offline = c.stable_offline.clone();
    run.parity_max_abs = Some(c.parity_max_abs);
}

/// Why a candidate that did not beat stable was not published.
pub fn rejection(model: &ModelConfig, c: &Candidate) -> String {
    let task = c.task;
    let mine = primary_loss(task, &c.offline);
    let theirs = c
        .stable_offline
        .as_ref()
        .map_or(f64::NAN, |s| primary_loss(task, s));
    format!(
        "held-out loss {mine:.4} against stable's {theirs:.4} on the same {} rows: not better by min_improvement {}",
        c.held_rows, model.min_improvement
    )
}

/// Writes the record; a registry that cannot take it costs the record,
/// never the training.
pub fn save(reg: &Registry, run: &RunRecord) {
    if let Err(e) = control::write_run(reg, run) {
        tracing::warn!(model = %run.model, run = %run.id, error = %e, "cannot write the run record");
    }
}

/// Marks a run still recorded as running as having published `version`
/// (the trainer died between publishing and recording it).
pub fn published(reg: &Registry, model: &str, run: &str, version: u64) {
    if let Ok(Some(mut record)) = control::read_run(reg, model, run)
        && record.outcome == Outcome::Running
    {
        record.outcome = Outcome::Published { version };
        save(reg, &record);
    }
}

/// Marks the model's runs still recorded as running as interrupted: at
/// start no run of this trainer is in flight, so those were cut short by a
/// stop (their training thread, or command, died with the trainer).
pub fn interrupted(reg: &Registry, model: &str) {
    let records = match control::read_runs(reg, model) {
        Ok((records, _)) => records,
        Err(e) => {
            tracing::warn!(model, error = %e, "cannot list run records");
            return;
        }
    };
    for mut r in records {
        if r.outcome == Outcome::Running {
            r.outcome = Outcome::Failed {
                reason: "interrupted: the trainer stopped while this run trained".into(),
            };
            save(reg, &r);
        }
    }
}

/// Adds how the rollout of the run's version ended, as the routing state
/// tells it.
pub fn rollout_ended(reg: &Registry, model: &str, run: &str, version: u64, routing: &RoutingState) {
    let result = if routing.stable == Some(version) {
        "promoted"
    } else if routing.rolled_back.contains(&version) {
        "rolled_back"
    } else {
        return;
    };
    let mut record = match control::read_run(reg, model, run) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(model, run, error = %e, "cannot read the run record");
            return;
        }
    };
    record.rollout = Some(RolloutEnd {
        result: result.into(),
        at: rfc3339_now(),
        by: routing.updated_by.clone(),
        reason: routing.reason.clone().unwrap_or_default(),
    });
    save(reg, &record);
}

/// The records as a table, oldest first.
pub fn table(records: &[RunRecord]) -> String {
    let mut out = String::from(
        "run            started               trigger                 family     won by   rows    seconds  loss     stable   parity    outcome\n",
    );
    for r in records {
        let loss = |m: &BTreeMap<String, f64>| {
            m.get("log_loss")
                .or_else(|| m.get("rmse"))
                .map_or("-".to_string(), |v| format!("{v:.4}"))
        };
        let outcome = match &r.outcome {
            Outcome::Running => "running".to_string(),
            Outcome::Published { version } => format!("published v{version}"),
            Outcome::Rejected { reason } => format!("rejected: {reason}"),
            Outcome::Failed { reason } => format!("failed: {reason}"),
        };
        let rollout = r
            .rollout
            .as_ref()
            .map_or(String::new(), |e| format!(", {}", e.result));
        let _ = writeln!(
            out,
            "{:<14} {:<21} {:<23} {:<10} {:<8} {:<7} {:<8.2} {:<8} {:<8} {:<9} {outcome}{rollout}",
            r.id,
            r.started_at.get(..19).unwrap_or(&r.started_at),
            r.trigger.chars().take(23).collect::<String>(),
            r.family.chars().take(10).collect::<String>(),
            // How much lower the winner's held-out loss was than the next
            // family's; `-` with one family.
            r.winner
                .as_ref()
                .and_then(|w| w.margin)
                .map_or("-".to_string(), |m| format!("{m:.4}")),
            r.rows,
            r.seconds,
            loss(&r.offline),
            r.stable_offline.as_ref().map_or("-".to_string(), loss),
            r.parity_max_abs
                .map_or("-".to_string(), |p| format!("{p:.1e}")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelConfig {
        crate::config::test_model("")
    }

    #[test]
    fn a_record_is_written_then_completed_by_the_rollout() {
        let root = std::env::temp_dir().join(format!("quiver-runs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let reg = Registry::open(root.to_str().unwrap(), &Default::default()).unwrap();
        let m = model();
        let mut run = start(&m, "new rows", Some(1), BTreeMap::new(), 1200);
        save(&reg, &run);
        let (read, bad) = control::read_runs(&reg, "m").unwrap();
        assert!(bad.is_empty());
        assert_eq!(read, vec![run.clone()]);
        assert_eq!(read[0].outcome, Outcome::Running);
        run.outcome = Outcome::Published { version: 2 };
        save(&reg, &run);
        // Not over yet: nothing added.
        let mut routing = RoutingState {
            stable: Some(1),
            ..RoutingState::default()
        };
        rollout_ended(&reg, "m", &run.id, 2, &routing);
        assert_eq!(
            control::read_run(&reg, "m", &run.id)
                .unwrap()
                .unwrap()
                .rollout,
            None
        );
        routing.stable = Some(2);
        routing.updated_by = "quiver-trainer".into();
        rollout_ended(&reg, "m", &run.id, 2, &routing);
        let done = control::read_run(&reg, "m", &run.id).unwrap().unwrap();
        assert_eq!(
            done.rollout.as_ref().map(|r| r.result.as_str()),
            Some("promoted")
        );
        let mut done = done;
        done.family = "lightgbm".into();
        done.winner = Some(quiver_contract::runs::Winner {
            family: "lightgbm".into(),
            metric: "log_loss".into(),
            loss: 0.2,
            runner_up: Some("mlp".into()),
            margin: Some(0.0125),
        });
        let table = table(&[done]);
        assert!(table.contains("published v2, promoted"), "{table}");
        assert!(table.contains("lightgbm   0.0125"), "{table}");
        assert!(table.contains("new rows"), "{table}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
