//! When a model retrains: enough new labelled rows, a schedule, a
//! feature's PSI against the stable version's training reference, or
//! online quality fallen below the stable version's offline quality.

use quiver_contract::records::now_ms;

use super::Trainer;
use crate::config::ModelConfig;
use crate::metrics as m;
use crate::train::Task;

impl Trainer {
    pub(super) fn trigger(&mut self, model: &ModelConfig) -> Option<String> {
        let stable = self.stable_version(&model.name);
        let files = stable.map(|v| self.version_files(&model.name, v));
        let ms = self.state.models.get(&model.name)?;
        let t = &model.triggers;
        if ms.window.len() < t.min_rows.max(2) || ms.window.new_rows == 0 {
            return None;
        }
        if ms.window.new_rows >= t.new_rows {
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
}
