//! When a model retrains: a concept change in the served version's
//! errors, enough new labelled rows (the cadence: `cadence.rs` unless
//! set), a schedule, a feature's PSI against the stable version's
//! training reference, or online quality fallen below the stable
//! version's offline quality.

use quiver_contract::records::now_ms;

use super::Trainer;
use super::training::MIN_ROWS_AFTER_CUT;
use crate::cadence::{self, Observed};
use crate::config::ModelConfig;
use crate::join::Example;
use crate::metrics as m;
use crate::monitor::change::{self, Change};
use crate::train::Task;

impl Trainer {
    /// New labelled rows that trigger `model`'s next retrain.
    pub(super) fn retrain_rows(&self, model: &ModelConfig) -> u64 {
        model.triggers.new_rows.or_else(|| {
            let ms = self.state.models.get(&model.name);
            cadence::retrain_rows(&Observed {
                label_rate: ms.and_then(|s| s.labels.per_second()),
                training_s: ms.and_then(|s| s.last_training_s),
                window_rows: model.window_rows,
                rows_after_cut: ms.and_then(|s| s.rows_after_cut),
            })
        })
    }

    pub(super) fn trigger(&mut self, model: &ModelConfig) -> Option<String> {
        let new_rows = self.retrain_rows(model);
        if let Some(change) = self.find_change(model) {
            return Some(self.change_seen(model, change));
        }
        let stable = self.stable_version(&model.name);
        let files = stable.map(|v| self.version_files(&model.name, v));
        let ms = self.state.models.get(&model.name)?;
        let t = &model.triggers;
        if ms.window.len() < t.min_rows.max(2) || ms.window.new_rows == 0 {
            return None;
        }
        if ms.window.new_rows >= new_rows {
            return Some(format!("{} new labelled rows", ms.window.new_rows));
        }
        if t.schedule_ms > 0 && now_ms().saturating_sub(ms.last_training_ms) >= t.schedule_ms {
            return Some("schedule".into());
        }
        let recent = (ms.window.new_rows as usize).min(ms.window.len());
        if let Some(files) = &files
            && recent >= t.min_rows
        {
            if let Some(reference) = &files.reference {
                let rows: Vec<&[f32]> = ms
                    .window
                    .examples()
                    .skip(ms.window.len() - recent)
                    .map(|e| e.features.as_slice())
                    .collect();
                let psi = reference.feature_psi(rows.iter().copied());
                let version = stable.unwrap_or(0).to_string();
                for (j, p) in psi.iter().enumerate() {
                    metrics::gauge!(m::FEATURE_PSI, "model" => model.name.clone(), "version" => version.clone(), "feature" => j.to_string()).set(*p);
                }
                if let Some(pred) = &reference.prediction {
                    let served: Vec<f32> = ms
                        .window
                        .examples()
                        .skip(ms.window.len() - recent)
                        .filter_map(|e| e.served.last().copied())
                        .collect();
                    metrics::gauge!(m::PREDICTION_PSI, "model" => model.name.clone(), "version" => version).set(pred.psi(&served));
                }
                let worst = psi.iter().copied().fold(0.0, f64::max);
                if worst > t.drift_psi {
                    self.events.emit(
                        &model.name,
                        "drift_detected",
                        stable,
                        serde_json::json!({"max_feature_psi": worst}),
                    );
                    return Some(format!("feature drift (PSI {worst:.3})"));
                }
            }
            let offline = files
                .manifest
                .as_ref()
                .and_then(|m| m.metrics.get("offline").cloned());
            let q = &ms.since_training;
            if let Some(off) = offline
                && q.n() >= t.min_rows as u64
            {
                let dropped = match model.task {
                    Task::Classification { .. } => off
                        .get("accuracy")
                        .is_some_and(|a| a - q.accuracy() > t.quality_drop),
                    Task::Regression => off
                        .get("rmse")
                        .is_some_and(|r| q.mean_loss().sqrt() > r * (1.0 + t.quality_drop)),
                };
                if dropped {
                    self.events.emit(&model.name, "quality_drop", stable, serde_json::json!({"online_accuracy": q.accuracy(), "online_loss": q.mean_loss()}));
                    return Some("quality drop".into());
                }
            }
        }
        None
    }

    /// A rise in the served version's errors among the rows predicted
    /// since the last change acted upon: a concept change (its first
    /// row's prediction time, the statistic, and the rows after it). The
    /// features of such a change may not move at all, so PSI alone would
    /// miss it.
    pub(super) fn find_change(&self, model: &ModelConfig) -> Option<(Change, u64, usize)> {
        if !model.triggers.cut_at_change {
            return None;
        }
        let ms = self.state.models.get(&model.name)?;
        if ms.window.new_rows == 0 {
            return None;
        }
        let rows: Vec<&Example> = ms.window.examples().collect();
        let (c, at) =
            change::change_since(model.task, &rows, ms.change_seen_ms, MIN_ROWS_AFTER_CUT)?;
        let rows_after = rows.iter().filter(|e| e.timestamp_ms >= at).count();
        Some((c, at, rows_after))
    }

    /// Acts upon a change [`find_change`](Self::find_change) found:
    /// reported as a drift, not looked for again; the retrain's reason.
    pub(super) fn change_seen(
        &mut self,
        model: &ModelConfig,
        (c, at, rows_after): (Change, u64, usize),
    ) -> String {
        if let Some(ms) = self.state.models.get_mut(&model.name) {
            ms.change_seen_ms = ms.change_seen_ms.max(at);
        }
        let stable = self.stable_version(&model.name);
        self.events.emit(
            &model.name,
            "drift_detected",
            stable,
            serde_json::json!({"concept_change_at_ms": at, "error_before": c.before,
                "error_after": c.after, "score": c.score, "rows_after": rows_after}),
        );
        format!(
            "concept change (served error {:.2} → {:.2})",
            c.before, c.after
        )
    }
}
