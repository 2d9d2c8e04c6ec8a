//! `<model>/runs/<run>.json`: one record per training attempt of the
//! trainer, whatever its end (published, rejected, failed), with what
//! triggered it, the data it read, the settings, the offline metrics
//! against the stable version, parity, and later the rollout's result. A
//! published version's lineage names its run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The run record schema this crate writes.
pub const SCHEMA: u32 = 2;
/// The oldest run record schema this crate reads. Schema 2 added the
/// `candidates` (every family trained on the window, a command's output)
/// and the `winner`.
pub const MIN_SCHEMA: u32 = 1;

/// The folder of a model's run records.
pub const RUNS_DIR: &str = "runs";

/// `<model>/runs/<run>.json`.
pub fn run_key(model: &str, run: &str) -> String {
    format!("{model}/{RUNS_DIR}/{run}.json")
}

/// A run id from its start time: sorts in time order.
pub fn run_id(started_ms: u64) -> String {
    format!("{started_ms:013}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    pub schema: u32,
    pub id: String,
    pub model: String,
    /// What started it: `bootstrap`, `drift (psi 0.31)`, `quality drop`,
    /// `new rows`, `schedule`...
    pub trigger: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// Training, evaluation, export and parity, in seconds.
    #[serde(default)]
    pub seconds: f64,
    /// Training rows per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_per_s: Option<f64>,
    /// The stable version when it started: the one it must beat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    /// Source name → the exact ranges read (as in the manifest's lineage).
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Rows in the training window, and of those held out for evaluation.
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub held_rows: u64,
    /// The model family (`mlp`, `gbt`).
    pub family: String,
    /// The model's whole trainer config, as it was.
    pub config: serde_json::Value,
    pub config_sha256: String,
    pub seed: u64,
    /// The trainer's code version.
    pub code: String,
    /// The candidate's held-out metrics, and the stable version's on the
    /// same rows.
    #[serde(default)]
    pub offline: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_offline: Option<BTreeMap<String, f64>>,
    /// Largest difference between ONNX Runtime and the trainer's own
    /// forward pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity_max_abs: Option<f64>,
    pub outcome: Outcome,
    /// For a published version, how its rollout ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutEnd>,
    /// Every candidate family trained on this window and scored on the
    /// same held-out rows, in the configured order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CandidateRun>,
    /// The candidate taken forward (compared with stable, maybe published)
    /// and by how much it beat the next best.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<Winner>,
}

/// One candidate family's attempt within a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateRun {
    /// `mlp`, `gbt`, or a command's name.
    pub family: String,
    /// Its own training, export and checks, in seconds.
    #[serde(default)]
    pub seconds: f64,
    /// Held-out metrics (of ONNX Runtime's output for a command's model).
    #[serde(default)]
    pub offline: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity_max_abs: Option<f64>,
    /// Why it failed (training, the command, the interface, parity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For a command: what ran and what it printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandRun>,
}

/// A user's training command as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRun {
    pub argv: Vec<String>,
    /// `exit status 0`, `exit status 2`, `killed after the 60 s timeout`...
    pub exit: String,
    #[serde(default)]
    pub seconds: f64,
    /// The end of its standard output (progress) and error, bounded.
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_sha256: Option<String>,
    /// Library → version, as the command reported them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub libraries: BTreeMap<String, String>,
}

/// The candidate a run took forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Winner {
    pub family: String,
    /// The metric compared (`log_loss` or `rmse`) and its held-out value.
    pub metric: String,
    pub loss: f64,
    /// The next best candidate and how much lower the winner's loss was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_up: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
}

/// How a training attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// Still training (a record written at the start).
    Running,
    Published {
        version: u64,
    },
    /// Trained, not better than stable (or refused by a check).
    Rejected {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

/// The end of a published version's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutEnd {
    /// `promoted` or `rolled_back`.
    pub result: String,
    /// RFC 3339, UTC, when the trainer saw it.
    pub at: String,
    /// Who decided, from the routing state.
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RunError {
    #[error("not a valid run record: {0}")]
    Json(String),
    #[error(
        "run record schema {0} is not supported; this build reads schemas {MIN_SCHEMA} to {SCHEMA}"
    )]
    Schema(u32),
}

impl RunRecord {
    pub fn parse(bytes: &[u8]) -> Result<RunRecord, RunError> {
        let r: RunRecord =
            serde_json::from_slice(bytes).map_err(|e| RunError::Json(e.to_string()))?;
        if !(MIN_SCHEMA..=SCHEMA).contains(&r.schema) {
            return Err(RunError::Schema(r.schema));
        }
        Ok(r)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_each_outcome() {
        let mut r = RunRecord {
            schema: SCHEMA,
            id: run_id(1_764_000_000_000),
            model: "m".into(),
            trigger: "new rows".into(),
            started_at: "2026-12-01T00:00:00Z".into(),
            seconds: 1.5,
            rows_per_s: Some(1000.0),
            parent: Some(3),
            data: BTreeMap::new(),
            rows: 1500,
            held_rows: 300,
            family: "gbt".into(),
            config: serde_json::json!({"name": "m"}),
            config_sha256: "00".into(),
            seed: 7,
            code: "quiver-trainer 0.1.0".into(),
            offline: BTreeMap::new(),
            stable_offline: None,
            parity_max_abs: Some(1e-7),
            outcome: Outcome::Published { version: 4 },
            rollout: Some(RolloutEnd {
                result: "promoted".into(),
                at: "2026-12-01T00:01:00Z".into(),
                by: "quiver-trainer".into(),
                reason: String::new(),
            }),
            candidates: vec![CandidateRun {
                family: "lightgbm".into(),
                seconds: 1.0,
                offline: BTreeMap::from([("log_loss".into(), 0.3)]),
                parity_max_abs: Some(1e-7),
                error: None,
                command: Some(CommandRun {
                    argv: vec!["python".into(), "train.py".into()],
                    exit: "exit status 0".into(),
                    seconds: 0.9,
                    stdout: "iteration 10\n".into(),
                    stderr: String::new(),
                    script_sha256: Some("ab".into()),
                    libraries: BTreeMap::from([("lightgbm".into(), "4.7.0".into())]),
                }),
            }],
            winner: Some(Winner {
                family: "lightgbm".into(),
                metric: "log_loss".into(),
                loss: 0.3,
                runner_up: Some("mlp".into()),
                margin: Some(0.02),
            }),
        };
        assert_eq!(RunRecord::parse(&r.to_json()).unwrap(), r);
        for outcome in [
            Outcome::Running,
            Outcome::Rejected {
                reason: "not better".into(),
            },
            Outcome::Failed {
                reason: "parity".into(),
            },
        ] {
            r.outcome = outcome;
            assert_eq!(RunRecord::parse(&r.to_json()).unwrap(), r);
        }
        let json = String::from_utf8(r.to_json()).unwrap();
        assert!(json.contains(r#""kind": "failed""#), "{json}");
        assert_eq!(run_key("m", &r.id), "m/runs/1764000000000.json");
        assert!(matches!(RunRecord::parse(b"{}"), Err(RunError::Json(_))));
        // A schema 1 record (no candidates, no winner) is still read.
        let mut old: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        let o = old.as_object_mut().unwrap();
        o.remove("candidates");
        o.remove("winner");
        o.insert("schema".into(), 1.into());
        let read = RunRecord::parse(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(read.candidates.is_empty() && read.winner.is_none());
        old["schema"] = 3.into();
        assert_eq!(
            RunRecord::parse(&serde_json::to_vec(&old).unwrap()),
            Err(RunError::Schema(3))
        );
    }
}
