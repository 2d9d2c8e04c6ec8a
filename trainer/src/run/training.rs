//! A training run, off the consuming loop: `start` gathers the window,
//! the stable version and the run record on the loop's thread, then
//! trains every candidate family on a thread of its own (a user's command
//! may take minutes); the loop keeps joining, monitoring and stepping
//! canaries meanwhile, and `finish` takes the result up on a later turn:
//! rejected, failed, or published with its rollout begun. One training
//! per model at a time: a model with a training in flight is not
//! triggered again.

use std::collections::BTreeMap;
use std::thread::JoinHandle;

use quiver_contract::layout::MODEL_FILE;
use quiver_contract::manifest::Lineage;
use quiver_contract::records::now_ms;
use quiver_contract::runs::{Outcome, RunRecord};

use super::{Trainer, command_runs_dir};
use crate::cadence;
use crate::config::{Auto, ModelConfig};
use crate::metrics as m;
use crate::monitor::change;
use crate::monitor::quality::Quality;
use crate::publish::{self, Candidate, PublishError};
use crate::rollout::Rollout;
use crate::runs;
use crate::source;
use crate::train::Dataset;
use crate::train::metrics::primary_loss;
use crate::trial::{self, Trial};

/// The fewest rows a window is cut to at a concept change (and the
/// fewest after a change before it counts): right after a switch a small
/// model of the new concept beats any amount of the old one.
pub(super) const MIN_ROWS_AFTER_CUT: usize = 200;

/// A training run in flight.
pub(super) struct InFlight {
    thread: JoinHandle<Result<Trial, PublishError>>,
    record: RunRecord,
    lineage: Lineage,
    stable: Option<u64>,
    version: u64,
    /// The window's new-row count when it started: what it consumed.
    new_rows: u64,
    started: std::time::Instant,
}

/// What the training thread owns.
struct Job {
    model: ModelConfig,
    data: Dataset,
    version: u64,
    metadata: Vec<(String, String)>,
    stable: Option<Vec<u8>>,
    stable_fresh_from: usize,
    run_id: String,
    runs_dir: std::path::PathBuf,
}

impl Job {
    fn run(self) -> Result<Trial, PublishError> {
        trial::run(&trial::Inputs {
            model: &self.model,
            data: &self.data,
            version: self.version,
            metadata: &self.metadata,
            stable: self.stable.as_deref(),
            stable_fresh_from: self.stable_fresh_from,
            run_id: &self.run_id,
            runs_dir: self.runs_dir,
        })
    }
}

impl Trainer {
    /// Starts a training run of `model` on its window, on its own thread.
    pub(super) fn start_training(&mut self, model: &ModelConfig, reason: &str) {
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
        let stable_bytes = stable.and_then(|v| {
            publish::read_file(&self.registry, &model.name, v, MODEL_FILE)
                .map_err(|e| tracing::warn!(model = %model.name, version = v, error = %e, "cannot read the stable model"))
                .ok()
                .flatten()
        });
        let labels_position = self.labels.position();
        let Some(ms) = self.state.models.get_mut(&model.name) else {
            return;
        };
        let new_rows = ms.window.new_rows;
        ms.since_training = Quality::default();
        ms.last_training_ms = now_ms();
        let features = ms.window.examples().last().map_or(0, |e| e.features.len());
        // A concept change in the window: the rows before it teach the old
        // concept, so they are left out.
        let change = model
            .triggers
            .cut_at_change
            .then(|| {
                let errors = change::served_errors(model.task, ms.window.examples());
                change::change_point(&errors, MIN_ROWS_AFTER_CUT)
            })
            .flatten();
        // Never before the change last acted upon: as versions of the new
        // concept take over, the best split of the served errors drifts
        // back into the old concept's rows.
        let seen = ms.change_seen_ms;
        let after_seen = (seen > 0)
            .then(|| ms.window.examples().position(|e| e.timestamp_ms >= seen))
            .flatten()
            .filter(|at| ms.window.len() - at >= MIN_ROWS_AFTER_CUT);
        let change = match (change, after_seen) {
            (Some(c), Some(at)) if at > c.at => Some(change::Change { at, ..c }),
            (c, _) => c,
        };
        let skip = change.map_or(0, |c| c.at);
        let data = ms.window.dataset_after(skip, features);
        ms.rows_after_cut = change.map(|_| data.rows());
        if let Some(at) = change.and_then(|c| ms.window.examples().nth(c.at)) {
            // Acted upon: the change monitor looks after it from now on.
            ms.change_seen_ms = ms.change_seen_ms.max(at.timestamp_ms);
        }
        let used = || ms.window.examples().skip(skip);
        let mut ranges = BTreeMap::new();
        let offsets = source::kafka::offset_ranges(used().map(|e| e.at.as_str()));
        if let Some(offsets) = offsets {
            ranges.insert(
                "predictions".to_string(),
                format!("{} {offsets}", self.config.predictions_topic),
            );
        } else if let (Some(first), Some(last)) = (used().next(), used().last()) {
            ranges.insert(
                "predictions".to_string(),
                format!(
                    "{} {}..={}",
                    self.config.predictions_topic, first.at, last.at
                ),
            );
        }
        ranges.insert(
            "labels".to_string(),
            format!("{} ..{labels_position}", self.config.labels_topic),
        );
        let mut lineage = publish::lineage(model, stable, ranges.clone(), data.rows());
        lineage.trained_through_ms = ms.window.examples().map(|e| e.timestamp_ms).max();
        // Held-out rows the stable version trained on would flatter it:
        // the comparison starts after the newest row it saw.
        let stable_through = stable_files
            .as_ref()
            .and_then(|f| f.manifest.as_ref())
            .and_then(|m| m.lineage.as_ref())
            .and_then(|l| l.trained_through_ms);
        let fresh_from = stable_through.map_or(0, |t| {
            used()
                .filter(|e| e.features.len() == features)
                .enumerate()
                .filter(|(_, e)| e.timestamp_ms <= t)
                .last()
                .map_or(0, |(i, _)| i + 1)
        });
        let reason = match change {
            Some(c) => {
                self.events.emit(
                    &model.name,
                    "window_cut",
                    stable,
                    serde_json::json!({"at": c.at, "rows_after": data.rows(),
                        "error_before": c.before, "error_after": c.after, "score": c.score}),
                );
                format!(
                    "{reason}; window cut at a change, {} rows after it",
                    data.rows()
                )
            }
            None => reason.to_string(),
        };
        self.events.emit(
            &model.name,
            "retrain_started",
            stable,
            serde_json::json!({"reason": reason, "rows": data.rows(), "families": model.families()}),
        );
        let record = runs::start(model, &reason, stable, ranges, data.rows());
        runs::save(&self.registry, &record);
        lineage.run = Some(record.id.clone());
        let job = Job {
            model: model.clone(),
            version,
            metadata: publish::metadata(&model.name, version, &lineage),
            stable: stable_bytes,
            stable_fresh_from: fresh_from,
            run_id: record.id.clone(),
            runs_dir: command_runs_dir(&self.config, &model.name),
            data,
        };
        let thread = std::thread::Builder::new()
            .name(format!("train-{}", model.name))
            .spawn(move || job.run());
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                let mut record = record;
                self.failed(model, &mut record, format!("cannot start a thread: {e}"));
                return;
            }
        };
        self.training.insert(
            model.name.clone(),
            InFlight {
                thread,
                record,
                lineage,
                stable,
                version,
                new_rows,
                started: std::time::Instant::now(),
            },
        );
    }

    /// Takes up `model`'s training run if it has ended; true while one is
    /// still in flight.
    pub(super) fn poll_training(&mut self, model: &ModelConfig) -> bool {
        if !self
            .training
            .get(&model.name)
            .is_some_and(|t| t.thread.is_finished())
        {
            return self.training.contains_key(&model.name);
        }
        if let Some(run) = self.training.remove(&model.name) {
            self.finish(model, run);
        }
        false
    }

    /// Waits for every training run in flight and takes it up.
    pub(super) fn finish_all(&mut self) {
        for model in self.config.models.clone() {
            if let Some(run) = self.training.remove(&model.name) {
                self.finish(&model, run);
            }
        }
    }

    fn finish(&mut self, model: &ModelConfig, run: InFlight) {
        let InFlight {
            thread,
            mut record,
            lineage,
            stable,
            version,
            new_rows,
            started,
        } = run;
        // Rows that came while it trained still count as new.
        if let Some(ms) = self.state.models.get_mut(&model.name) {
            ms.window.new_rows = ms.window.new_rows.saturating_sub(new_rows);
            ms.last_training_s = Some(started.elapsed().as_secs_f64());
        }
        let result = thread.join().unwrap_or_else(|_| {
            Err(PublishError::NoCandidate(
                "the training thread panicked".into(),
            ))
        });
        let candidate = result.and_then(|t| {
            runs::tried(&mut record, &t);
            let why = t.failure();
            t.best.ok_or(PublishError::NoCandidate(why))
        });
        match candidate {
            Ok(c) => self.judge(model, record, lineage, stable, version, c),
            Err(e) => self.failed(model, &mut record, e.to_string()),
        }
    }

    fn failed(&mut self, model: &ModelConfig, record: &mut RunRecord, reason: String) {
        metrics::counter!(m::TRAININGS, "model" => model.name.clone(), "outcome" => "failed")
            .increment(1);
        // The record first: whoever sees the event finds the run.
        record.outcome = Outcome::Failed {
            reason: reason.clone(),
        };
        runs::save(&self.registry, record);
        self.events.emit(
            &model.name,
            "retrain_failed",
            None,
            serde_json::json!({"error": reason}),
        );
    }

    /// The winner against stable: rejected, or published and its canary
    /// begun.
    fn judge(
        &mut self,
        model: &ModelConfig,
        mut record: RunRecord,
        mut lineage: Lineage,
        stable: Option<u64>,
        version: u64,
        candidate: Candidate,
    ) {
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
        let trained_through_ms = lineage.trained_through_ms;
        let held_out = candidate.stable_offline.as_ref().map(|s| {
            (
                primary_loss(candidate.task, &candidate.offline),
                primary_loss(candidate.task, s),
            )
        });
        let retrain_rows = self.retrain_rows(model);
        let (min_samples, clear_win) = match model.canary.min_samples {
            Auto::Set(n) => (n, false),
            Auto::Auto => {
                let n = cadence::canary_samples(retrain_rows, &model.canary.steps, held_out);
                (n, cadence::clear_win(held_out))
            }
        };
        match publish::publish(&self.registry, model, version, &candidate, lineage) {
            Ok(manifest) => {
                metrics::counter!(m::TRAININGS, "model" => model.name.clone(), "outcome" => "published").increment(1);
                record.outcome = Outcome::Published { version };
                runs::save(&self.registry, &record);
                if let Some(ms) = self.state.models.get_mut(&model.name) {
                    ms.published.push(version);
                    let mut rollout = Rollout::new(version, stable);
                    rollout.run = Some(record.id.clone());
                    rollout.min_samples = Some(min_samples);
                    rollout.clear_win = clear_win;
                    rollout.trained_through_ms = trained_through_ms;
                    ms.rollout = Some(rollout);
                }
                self.events.emit(&model.name, "published", Some(version), serde_json::json!({
                    "parent": stable, "lineage": manifest.lineage, "parity_max_abs": manifest.parity_max_abs,
                    "canary_min_samples": min_samples, "clear_win": clear_win, "retrain_rows": retrain_rows}));
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
}
