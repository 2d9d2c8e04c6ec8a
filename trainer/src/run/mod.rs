//! The loop: poll predictions and labels → join → window and monitors →
//! triggers ([`trigger`]) → a training run on its own thread
//! ([`training`]: train, evaluate, check parity; publish when it ends) →
//! drive the canary (`rollout.rs`) through the routing state in the
//! registry. Polling goes on while a model trains; a model with a training
//! in flight is not triggered again, so it never trains twice at once.
//! The trainer reaches the fleet only through the registry and the record
//! topics.
//!
//! Everything the loop knows (consumer positions, pending joins, windows,
//! rollouts in progress, versions published) is one state file ([`state`]) written by
//! atomic rename after each batch is processed: a restart resumes from the
//! last write, and re-reads at most one batch. Positions are committed to
//! the source (Kafka's consumer group) only after that write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use quiver_contract::records::{self, LabelRecord, PredictionRecord};
use quiver_registry::{Registry, RegistryError, control};

use crate::config::{Config, ModelConfig};
use crate::events::Events;
use crate::join::{Columns, Example};
use crate::metrics as m;
use crate::monitor::quality::Quality;
use crate::publish;
use crate::rollout::{self, Rollout};
use crate::runs;
use crate::source::{self, RecordSource, SourceError};
use crate::train::Task;
use crate::window::Window;

mod state;
mod training;
mod trigger;
mod versions;

use state::{ModelState, State};
use training::InFlight;
use versions::VersionFiles;

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

pub struct Trainer {
    config: Config,
    state: State,
    predictions: Box<dyn RecordSource>,
    labels: Box<dyn RecordSource>,
    registry: Registry,
    /// (model, version) → its manifest and training reference.
    versions: BTreeMap<(String, u64), Arc<VersionFiles>>,
    events: Events,
    /// Model → its training run in flight (one at a time).
    training: BTreeMap<String, InFlight>,
}

impl Trainer {
    pub fn open(config: Config) -> Result<Trainer, RunError> {
        let mut state = state::load(&config)?;
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
            training: BTreeMap::new(),
        };
        trainer.adopt_orphans();
        // After the adoption, which finishes the records of published runs.
        for model in &trainer.config.models {
            runs::interrupted(&trainer.registry, &model.name);
        }
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
        // Stopping waits for trainings in flight (a command's own timeout
        // bounds it) and records how they ended.
        self.finish_all();
        self.save()
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
        let now = records::now_ms();
        for model in &self.config.models {
            let joined = examples.iter().filter(|e| e.model == model.name).count();
            if let Some(ms) = self.state.models.get_mut(&model.name) {
                ms.labels.observe(now, joined as u64);
            }
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
        for source in [&mut self.predictions, &mut self.labels] {
            for (partition, lag) in source.lag() {
                metrics::gauge!(m::CONSUMER_LAG, "topic" => source.name().to_string(), "partition" => partition.to_string()).set(lag as f64);
            }
        }
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

    fn step(&mut self, model: &ModelConfig) {
        if self.poll_training(model) {
            return;
        }
        let has_rollout = self
            .state
            .models
            .get(&model.name)
            .is_some_and(|s| s.rollout.is_some());
        if has_rollout && let Some(reason) = self.stale_candidate(model) {
            self.start_training(model, &reason);
        } else if has_rollout {
            self.step_rollout(model);
        } else if let Some(reason) = self.trigger(model) {
            self.start_training(model, &reason);
        }
    }

    /// A concept change after the newest row the candidate in rollout
    /// trained on: its canary would only compare two versions of the old
    /// concept while the stream serves the new one, so it ends here and a
    /// retrain on the rows after the change begins (the retrain's reason).
    fn stale_candidate(&mut self, model: &ModelConfig) -> Option<String> {
        let change = self.find_change(model)?;
        let r = self.state.models.get(&model.name)?.rollout.clone()?;
        if r.trained_through_ms.is_none_or(|t| t >= change.1) {
            return None;
        }
        let reason = self.change_seen(model, change);
        let why = "trained before a concept change";
        if !rollout::abandon(&self.registry, &mut self.events, model, &r, why) {
            return None;
        }
        if let Some(ms) = self.state.models.get_mut(&model.name) {
            ms.rollout = None;
        }
        Some(format!("{reason}; v{} {why}, rolled back", r.version))
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
    state_dir.join(state::STATE_FILE)
}
