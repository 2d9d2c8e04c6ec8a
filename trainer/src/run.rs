//! The loop: poll predictions and labels → join → window and monitors →
//! triggers → train, evaluate, check parity → publish → drive the canary
//! (`rollout.rs`) through the routing state in the registry. One thread; a
//! training run blocks polling while it runs, so one model never trains
//! twice at once. The trainer reaches the fleet only through the registry
//! and the record topics.
//!
//! Everything the loop knows (consumer positions, pending joins, windows,
//! rollouts in progress, versions published) is one state file written by
//! atomic rename after each batch is processed: a restart resumes from the
//! last write, and re-reads at most one batch. Positions are committed to
//! the source (Kafka's consumer group) only after that write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use quiver_contract::layout::{self, MODEL_FILE};
use quiver_contract::manifest::Manifest;
use quiver_contract::records::{self, LabelRecord, PredictionRecord, now_ms};
use quiver_contract::runs::Outcome;
use quiver_registry::{Registry, RegistryError, control};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ModelConfig};
use crate::events::Events;
use crate::join::{Columns, Example, Joiner};
use crate::metrics as m;
use crate::monitor::psi::Reference;
use crate::monitor::quality::Quality;
use crate::publish::{self, PublishError, REFERENCE_FILE};
use crate::rollout::{self, Rollout};
use crate::runs;
use crate::source::{self, RecordSource, SourceError};
use crate::train::Task;
use crate::trial;
use crate::window::Window;

const STATE_FILE: &str = "state.json";
const STATE_SCHEMA: u32 = 1;
const POLL_RECORDS: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("state file {0}: {1}")]
    State(String, String),
    #[error("events log: {0}")]
    Events(std::io::Error),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    schema: u32,
    positions: BTreeMap<String, String>,
    joiner: Joiner,
    models: BTreeMap<String, ModelState>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ModelState {
    window: Window,
    /// Online quality per version, since the trainer started watching it.
    online: BTreeMap<u64, Quality>,
    /// Quality of served answers since the last training run.
    since_training: Quality,
    last_training_ms: u64,
    rollout: Option<Rollout>,
    published: Vec<u64>,
}

/// What the trainer reads of a published version, kept once read: a
/// version never changes after its manifest is written.
#[derive(Debug, Default)]
struct VersionFiles {
    manifest: Option<Manifest>,
    reference: Option<Reference>,
}

pub struct Trainer {
    config: Config,
    state: State,
    predictions: Box<dyn RecordSource>,
    labels: Box<dyn RecordSource>,
    registry: Registry,
    /// (model, version) → its manifest and training reference.
    versions: BTreeMap<(String, u64), Arc<VersionFiles>>,
    events: Events,
}

fn state_path(config: &Config) -> PathBuf {
    config.state_dir.join(STATE_FILE)
}

impl Trainer {
    pub fn open(config: Config) -> Result<Trainer, RunError> {
        let path = state_path(&config);
        let shown = path.display().to_string();
        let mut state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes)
                .map_err(|e| RunError::State(shown.clone(), e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                schema: STATE_SCHEMA,
                joiner: Joiner::new(config.join_window_ms),
                ..State::default()
            },
            Err(e) => return Err(RunError::State(shown, e.to_string())),
        };
        if state.schema != STATE_SCHEMA {
            return Err(RunError::State(shown, format!("schema {}", state.schema)));
        }
        let mut predictions = source::open(&config, &config.predictions_topic)?;
        let mut labels = source::open(&config, &config.labels_topic)?;
        if let Some(p) = state.positions.get(&config.predictions_topic) {
            predictions.seek(p)?;
        }
        if let Some(p) = state.positions.get(&config.labels_topic) {
            labels.seek(p)?;
        }
        for model in &config.models {
            state
                .models
                .entry(model.name.clone())
                .or_insert_with(|| ModelState {
                    window: Window::new(model.window_rows),
                    ..ModelState::default()
                });
        }
        let registry = Registry::open(&config.model_repository, &config.s3_settings())?;
        match registry.check() {
            Ok(()) => {}
            // Worth retrying from the loop: the store may come back, a
            // local directory is created by the first publish.
            Err(e @ (RegistryError::Unreachable { .. } | RegistryError::Io { .. })) => {
                tracing::warn!(registry = %registry.describe(), error = %e, "model registry not reachable yet");
            }
            Err(e) => return Err(e.into()),
        }
        let events = Events::open(&config.state_dir).map_err(RunError::Events)?;
        let mut trainer = Trainer {
            config,
            state,
            predictions,
            labels,
            registry,
            versions: BTreeMap::new(),
            events,
        };
        trainer.adopt_orphans();
        Ok(trainer)
    }

    /// A version this trainer published but whose state write was lost
    /// (killed in between) is taken up again, never published twice.
    fn adopt_orphans(&mut self) {
        for model in &self.config.models {
            let Some(ms) = self.state.models.get_mut(&model.name) else {
                continue;
            };
            let known = ms.published.iter().copied().max().unwrap_or(0);
            let published = match control::versions(&self.registry, &model.name) {
                Ok((published, _)) => published,
                Err(e) => {
                    tracing::warn!(model = %model.name, error = %e, "cannot list versions; orphans not adopted");
                    continue;
                }
            };
            for v in published {
                if v <= known {
                    continue;
                }
                let manifest = publish::read_manifest(&self.registry, &model.name, v);
                let lineage = manifest.as_ref().and_then(|m| m.lineage.as_ref());
                let ours = lineage
                    .and_then(|l| l.code.as_deref())
                    .is_some_and(|c| c.starts_with("quiver-trainer"))
                    && manifest
                        .as_ref()
                        .is_some_and(|m| m.metrics.contains_key("offline_parent"));
                if ours && ms.rollout.is_none() {
                    ms.published.push(v);
                    let mut rollout = Rollout::new(v, None);
                    // Killed between publishing and recording it: the run
                    // is named in the lineage; finish its record.
                    rollout.run = lineage.and_then(|l| l.run.clone());
                    if let Some(run) = &rollout.run {
                        runs::published(&self.registry, &model.name, run, v);
                    }
                    ms.rollout = Some(rollout);
                    self.events
                        .emit(&model.name, "resumed", Some(v), serde_json::json!({}));
                }
            }
        }
    }

    /// Runs until `stop` is set.
    pub fn run(&mut self, stop: &Arc<AtomicBool>) -> Result<(), RunError> {
        while !stop.load(Ordering::Relaxed) {
            let busy = self.poll_once()?;
            for i in 0..self.config.models.len() {
                let model = self.config.models[i].clone();
                self.step(&model);
            }
            self.save()?;
            // Only now is everything read so far persisted.
            for s in [&mut self.predictions, &mut self.labels] {
                if let Err(e) = s.commit() {
                    tracing::warn!(topic = s.name(), error = %e, "cannot commit offsets");
                }
            }
            if !busy {
                std::thread::sleep(self.config.poll_interval());
            }
        }
        Ok(())
    }

    /// Reads one batch from each source and processes it; true if any.
    pub fn poll_once(&mut self) -> Result<bool, RunError> {
        let preds = self.predictions.poll(POLL_RECORDS)?;
        let labels = self.labels.poll(POLL_RECORDS)?;
        let busy = !preds.is_empty() || !labels.is_empty();
        let mut examples = Vec::new();
        let before = self.state.joiner.counts.clone();
        for p in &preds {
            let Ok(rec) = records::parse::<PredictionRecord>(&p.bytes) else {
                continue;
            };
            let Some(model) = self.config.models.iter().find(|m| m.name == rec.model) else {
                continue;
            };
            let columns = Columns {
                input: model.input.clone(),
                output: model.scored_output(),
            };
            examples.extend(self.state.joiner.prediction(&rec, &columns, &p.at));
        }
        for l in &labels {
            if let Ok(rec) = records::parse::<LabelRecord>(&l.bytes) {
                examples.extend(self.state.joiner.label(&rec));
            }
        }
        let after = &self.state.joiner.counts;
        for (outcome, d) in [
            ("joined", after.joined - before.joined),
            (
                "duplicate_label",
                after.duplicate_labels - before.duplicate_labels,
            ),
            (
                "expired_prediction",
                after.expired_predictions - before.expired_predictions,
            ),
            (
                "expired_label",
                after.expired_labels - before.expired_labels,
            ),
            ("unusable", after.unusable - before.unusable),
        ] {
            metrics::counter!(m::JOIN_EVENTS, "outcome" => outcome).increment(d);
        }
        for e in examples {
            self.take(e);
        }
        self.state.positions.insert(
            self.predictions.name().to_string(),
            self.predictions.position(),
        );
        self.state
            .positions
            .insert(self.labels.name().to_string(), self.labels.position());
        Ok(busy)
    }

    fn take(&mut self, e: Example) {
        let Some(model) = self.config.models.iter().find(|m| m.name == e.model) else {
            return;
        };
        let Some(ms) = self.state.models.get_mut(&e.model) else {
            return;
        };
        let task = model.task;
        let q = ms.online.entry(e.version).or_default();
        q.add(task, &e.served, e.label);
        export_quality(&e.model, e.version, task, q);
        ms.since_training.add(task, &e.served, e.label);
        // Rows predicted before the step began (their labels came late)
        // would give stable an older, different sample.
        if let Some(r) = ms
            .rollout
            .as_mut()
            .filter(|r| r.started && e.timestamp_ms >= r.step_started_ms)
        {
            let mut one = Quality::default();
            one.add(task, &e.served, e.label);
            let target = if e.version == r.version {
                Some(&mut r.candidate)
            } else if Some(e.version) == r.stable {
                Some(&mut r.stable_quality)
            } else {
                None
            };
            if let Some(t) = target
                && one.n() == 1
            {
                t.correct += one.arm.correct;
                t.loss.add(one.mean_loss());
            }
        }
        ms.window.push(e);
        metrics::gauge!(m::WINDOW_ROWS, "model" => model.name.clone()).set(ms.window.len() as f64);
    }

    fn save(&self) -> Result<(), RunError> {
        let path = state_path(&self.config);
        let shown = path.display().to_string();
        let bytes = serde_json::to_vec(&self.state)
            .map_err(|e| RunError::State(shown.clone(), e.to_string()))?;
        std::fs::create_dir_all(&self.config.state_dir)
            .and_then(|()| layout::write_atomic(&path, &bytes))
            .map_err(|e| RunError::State(shown, e.to_string()))
    }

    /// The routing state's stable version, else the newest published one.
    fn stable_version(&self, model: &str) -> Option<u64> {
        control::read_routing(&self.registry, model)
            .map_err(|e| tracing::warn!(model, error = %e, "cannot read the routing state"))
            .ok()
            .and_then(|(r, _)| r.stable)
            .or_else(|| {
                control::versions(&self.registry, model)
                    .map_err(|e| tracing::warn!(model, error = %e, "cannot list versions"))
                    .ok()
                    .and_then(|(published, _)| published.last().copied())
            })
    }

    /// A published version's manifest and training reference, read from
    /// the registry once (a failed read is tried again next time).
    fn version_files(&mut self, model: &str, version: u64) -> Arc<VersionFiles> {
        let key = (model.to_string(), version);
        if let Some(files) = self.versions.get(&key) {
            return files.clone();
        }
        let Some(manifest) = publish::read_manifest(&self.registry, model, version) else {
            return Arc::default();
        };
        let reference = match publish::read_file(&self.registry, model, version, REFERENCE_FILE) {
            Ok(bytes) => bytes.and_then(|b| serde_json::from_slice::<Reference>(&b).ok()),
            Err(e) => {
                tracing::warn!(model, version, error = %e, "cannot read the training reference");
                return Arc::new(VersionFiles {
                    manifest: Some(manifest),
                    reference: None,
                });
            }
        };
        let files = Arc::new(VersionFiles {
            manifest: Some(manifest),
            reference,
        });
        self.versions.insert(key, files.clone());
        files
    }

    fn step(&mut self, model: &ModelConfig) {
        let has_rollout = self
            .state
            .models
            .get(&model.name)
            .is_some_and(|s| s.rollout.is_some());
        if has_rollout {
            self.step_rollout(model);
        } else if let Some(reason) = self.trigger(model) {
            self.retrain(model, &reason);
        }
    }

    fn trigger(&mut self, model: &ModelConfig) -> Option<String> {
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

    fn retrain(&mut self, model: &ModelConfig, reason: &str) {
        let stable = self.stable_version(&model.name);
        let version = match publish::next_version(&self.registry, &model.name) {
            Ok(v) => v,
            Err(e) => {
                // The trigger still holds: tried again next turn.
                tracing::warn!(model = %model.name, error = %e, "cannot number the next version");
                return;
            }
        };
        let stable_files = stable.map(|v| self.version_files(&model.name, v));
        let Some(ms) = self.state.models.get_mut(&model.name) else {
            return;
        };
        ms.window.new_rows = 0;
        ms.since_training = Quality::default();
        ms.last_training_ms = now_ms();
        let features = ms.window.examples().last().map_or(0, |e| e.features.len());
        let data = ms.window.dataset(features);
        let mut ranges = BTreeMap::new();
        let offsets = source::kafka::offset_ranges(ms.window.examples().map(|e| e.at.as_str()));
        if let Some(offsets) = offsets {
            ranges.insert(
                "predictions".to_string(),
                format!("{} {offsets}", self.config.predictions_topic),
            );
        } else if let Some((first, last)) = ms.window.range() {
            ranges.insert(
                "predictions".to_string(),
                format!("{} {first}..={last}", self.config.predictions_topic),
            );
        }
        ranges.insert(
            "labels".to_string(),
            format!("{} ..{}", self.config.labels_topic, self.labels.position()),
        );
        self.events.emit(
            &model.name,
            "retrain_started",
            stable,
            serde_json::json!({"reason": reason, "rows": data.rows()}),
        );
        let mut record = runs::start(model, reason, stable, ranges.clone(), data.rows());
        runs::save(&self.registry, &record);
        let mut lineage = publish::lineage(model, stable, ranges, data.rows());
        lineage.run = Some(record.id.clone());
        lineage.trained_through_ms = ms.window.examples().map(|e| e.timestamp_ms).max();
        // Held-out rows the stable version trained on would flatter it:
        // the comparison starts after the newest row it saw.
        let stable_through = stable_files
            .as_ref()
            .and_then(|f| f.manifest.as_ref())
            .and_then(|m| m.lineage.as_ref())
            .and_then(|l| l.trained_through_ms);
        let fresh_from = stable_through.map_or(0, |t| {
            ms.window
                .examples()
                .filter(|e| e.features.len() == features)
                .enumerate()
                .filter(|(_, e)| e.timestamp_ms <= t)
                .last()
                .map_or(0, |(i, _)| i + 1)
        });
        let meta = publish::metadata(&model.name, version, &lineage);
        let stable_bytes = stable.and_then(|v| {
            publish::read_file(&self.registry, &model.name, v, MODEL_FILE)
                .map_err(|e| tracing::warn!(model = %model.name, version = v, error = %e, "cannot read the stable model"))
                .ok()
                .flatten()
        });
        let inputs = trial::Inputs {
            model,
            data: &data,
            version,
            metadata: &meta,
            stable: stable_bytes.as_deref(),
            stable_fresh_from: fresh_from,
            run_id: &record.id,
            runs_dir: command_runs_dir(&self.config, &model.name),
        };
        let outcome = trial::run(&inputs).and_then(|t| {
            runs::tried(&mut record, &t);
            let why = t.failure();
            t.best.ok_or(PublishError::NoCandidate(why))
        });
        let candidate = match outcome {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!(m::TRAININGS, "model" => model.name.clone(), "outcome" => "failed").increment(1);
                // The record first: whoever sees the event finds the run.
                let reason = e.to_string();
                record.outcome = Outcome::Failed {
                    reason: reason.clone(),
                };
                runs::save(&self.registry, &record);
                self.events.emit(
                    &model.name,
                    "retrain_failed",
                    None,
                    serde_json::json!({"error": reason}),
                );
                return;
            }
        };
        metrics::gauge!(m::TRAINING_SECONDS, "model" => model.name.clone()).set(candidate.seconds);
        self.events.emit(
            &model.name,
            "retrain_finished",
            None,
            serde_json::json!({
            "family": candidate.family, "winner": record.winner,
            "seconds": candidate.seconds, "rows": candidate.rows, "offline": candidate.offline,
            "stable_offline": candidate.stable_offline, "held_rows": candidate.held_rows,
            "parity_max_abs": candidate.parity_max_abs}),
        );
        if !candidate.beats_stable(model) {
            metrics::counter!(m::TRAININGS, "model" => model.name.clone(), "outcome" => "rejected")
                .increment(1);
            record.outcome = Outcome::Rejected {
                reason: runs::rejection(model, &candidate),
            };
            runs::save(&self.registry, &record);
            self.events.emit(
                &model.name,
                "rejected",
                None,
                serde_json::json!({"why": "not better than stable by min_improvement"}),
            );
            return;
        }
        lineage.rows = candidate.rows as u64;
        match publish::publish(&self.registry, model, version, &candidate, lineage) {
            Ok(manifest) => {
                metrics::counter!(m::TRAININGS, "model" => model.name.clone(), "outcome" => "published").increment(1);
                record.outcome = Outcome::Published { version };
                runs::save(&self.registry, &record);
                if let Some(ms) = self.state.models.get_mut(&model.name) {
                    ms.published.push(version);
                    let mut rollout = Rollout::new(version, stable);
                    rollout.run = Some(record.id.clone());
                    ms.rollout = Some(rollout);
                }
                self.events.emit(&model.name, "published", Some(version), serde_json::json!({
                    "parent": stable, "lineage": manifest.lineage, "parity_max_abs": manifest.parity_max_abs}));
                // Recorded before any traffic moves, so a restart never publishes it again.
                if let Err(e) = self.save() {
                    tracing::error!(error = %e, "cannot save state after publishing");
                }
            }
            Err(e) => {
                record.outcome = Outcome::Failed {
                    reason: e.to_string(),
                };
                runs::save(&self.registry, &record);
                self.events.emit(
                    &model.name,
                    "publish_failed",
                    Some(version),
                    serde_json::json!({"error": e.to_string()}),
                );
            }
        }
    }

    fn step_rollout(&mut self, model: &ModelConfig) {
        let Some(mut r) = self
            .state
            .models
            .get(&model.name)
            .and_then(|s| s.rollout.clone())
        else {
            return;
        };
        let done = rollout::step(&self.registry, &mut self.events, model, &mut r);
        if let Some(ms) = self.state.models.get_mut(&model.name) {
            ms.rollout = if done { None } else { Some(r) };
        }
    }
}

fn export_quality(model: &str, version: u64, task: Task, q: &Quality) {
    let (model, version) = (model.to_string(), version.to_string());
    metrics::counter!(m::LABELLED_ROWS, "model" => model.clone(), "version" => version.clone())
        .increment(1);
    match task {
        Task::Classification { .. } => {
            metrics::gauge!(m::ONLINE_ACCURACY, "model" => model.clone(), "version" => version.clone()).set(q.accuracy());
            metrics::gauge!(m::ONLINE_LOG_LOSS, "model" => model, "version" => version)
                .set(q.mean_loss());
        }
        Task::Regression => {
            metrics::gauge!(m::ONLINE_MAE, "model" => model.clone(), "version" => version.clone())
                .set(q.mae());
            metrics::gauge!(m::ONLINE_RMSE, "model" => model, "version" => version)
                .set(q.mean_loss().sqrt());
        }
    }
}

/// Where a model's training commands get their run directories.
pub fn command_runs_dir(config: &Config, model: &str) -> PathBuf {
    config.state_dir.join("command-runs").join(model)
}

/// The state file's path, for tests and tools.
pub fn state_file(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}
