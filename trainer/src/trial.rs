//! One training run's candidates: every configured family (the built-in
//! MLP and GBT, users' commands) trained on the same older rows of the
//! window and scored on the same newest held-out rows, the stable version
//! too (its ONNX file, in ONNX Runtime). The lowest held-out loss wins and
//! goes on to the comparison with stable (`publish.rs`).
//!
//! A built-in family is then refit on the whole window (`refit`, on by
//! default: the same settings, the MLP for the epochs early stopping
//! chose), exported and checked for parity against the trainer's own
//! forward pass. A command's model is loaded as it was written, checked
//! for the interface the clients use, and its ONNX Runtime output on the
//! held-out rows compared with the predictions the command wrote (it is
//! not refit: that would run it twice).

use std::collections::BTreeMap;
use std::path::PathBuf;

use quiver_contract::runs::{CandidateRun, Winner};

use crate::command::{self, Job};
use crate::config::{Family, ModelConfig};
use crate::monitor::psi::Reference;
use crate::onnx::Interface;
use crate::parity::{self, Foreign};
use crate::publish::{Candidate, PublishError};
use crate::train::gbt::Gbt;
use crate::train::metrics::{evaluate, primary_loss};
use crate::train::mlp::{Mlp, MlpSettings};
use crate::train::{Dataset, Task, Trained};

/// PSI bins per feature.
const PSI_BINS: usize = 10;

/// The least rows the stable version has not seen for the held-out slice
/// to be cut to those.
pub const MIN_FRESH_ROWS: usize = 50;

/// What a training run works on.
pub struct Inputs<'a> {
    pub model: &'a ModelConfig,
    /// The window, time-ordered.
    pub data: &'a Dataset,
    pub version: u64,
    /// Written into the graph's `metadata_props` (handed to commands).
    pub metadata: &'a [(String, String)],
    /// The serving version's ONNX bytes, scored on the same held-out rows.
    pub stable: Option<&'a [u8]>,
    /// The stable version trained on none of the rows from here on.
    pub stable_fresh_from: usize,
    pub run_id: &'a str,
    /// Where commands' run directories go.
    pub runs_dir: PathBuf,
}

/// Every family's result, and the winner.
pub struct Trial {
    /// One per family, in the configured order, for the run record.
    pub runs: Vec<CandidateRun>,
    pub winner: Option<Winner>,
    /// The winner, with the stable version's metrics on the same rows.
    pub best: Option<Candidate>,
    /// When no family succeeded: each one's reason.
    pub failures: Vec<String>,
}

impl Trial {
    /// Why no candidate came out of it.
    pub fn failure(&self) -> String {
        self.failures.join("; ")
    }
}

/// Trains every family of `inputs.model` on the same split.
pub fn run(inputs: &Inputs<'_>) -> Result<Trial, PublishError> {
    let model = inputs.model;
    let interface = model.interface().map_err(PublishError::Settings)?;
    let (train, held) = split(model, inputs.data, inputs.stable_fresh_from);
    let stable_offline = inputs.stable.and_then(|bytes| {
        parity::run_onnx(bytes, &held.x, inputs.data.features)
            .map_err(|e| tracing::warn!(model = %model.name, error = %e, "cannot score the stable version"))
            .ok()
            .and_then(|outs| outs.into_iter().next())
            .map(|out| evaluate(model.task, &out, &held.y))
    });
    let mut trial = Trial {
        runs: Vec::new(),
        winner: None,
        best: None,
        failures: Vec::new(),
    };
    let mut scored: Vec<(f64, Candidate)> = Vec::new();
    for name in model.families() {
        let Some(family) = model.family_named(name) else {
            return Err(PublishError::Settings(format!("unknown family '{name}'")));
        };
        let started = std::time::Instant::now();
        let (result, command_run) = match family {
            Family::Mlp | Family::Gbt => (builtin(inputs, family, &train, &held, &interface), None),
            Family::Command(name, settings) => {
                let job = Job {
                    model,
                    name,
                    settings,
                    runs_dir: inputs.runs_dir.clone(),
                    run_id: inputs.run_id,
                    version: inputs.version,
                    metadata: inputs.metadata,
                };
                let attempt = command::train(&job, &train, &held);
                let result = attempt
                    .result
                    .map_err(PublishError::from)
                    .and_then(|out| from_command(model, &interface, out, &train, &held));
                (result, attempt.run)
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let mut run = CandidateRun {
            family: name.to_string(),
            seconds,
            offline: BTreeMap::new(),
            parity_max_abs: None,
            error: None,
            command: command_run,
        };
        match result {
            Ok(mut c) => {
                c.seconds = seconds;
                c.stable_offline = stable_offline.clone();
                run.offline = c.offline.clone();
                run.parity_max_abs = Some(c.parity_max_abs);
                let loss = primary_loss(model.task, &c.offline);
                // NaN (a broken candidate) never wins.
                if loss.is_finite() {
                    scored.push((loss, c));
                } else {
                    run.error = Some("held-out loss is not finite".into());
                }
            }
            Err(e) => {
                tracing::warn!(model = %model.name, family = name, error = %e, "candidate failed");
                trial.failures.push(format!("{name}: {e}"));
                run.error = Some(e.to_string());
            }
        }
        trial.runs.push(run);
    }
    // Stable on ties: the first configured family wins an exact tie.
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut ranked = scored.into_iter();
    if let Some((loss, best)) = ranked.next() {
        let runner_up = ranked.next();
        trial.winner = Some(Winner {
            family: best.family.clone(),
            metric: metric_name(model.task).into(),
            loss,
            runner_up: runner_up.as_ref().map(|(_, c)| c.family.clone()),
            margin: runner_up.as_ref().map(|(l, _)| l - loss),
        });
        trial.best = Some(best);
    }
    Ok(trial)
}

fn metric_name(task: Task) -> &'static str {
    match task {
        Task::Classification { .. } => "log_loss",
        Task::Regression => "rmse",
    }
}

/// `(older, newest)`: the newest `holdout_fraction`, and none the stable
/// version trained on, since rows it has seen would flatter it (when too
/// few are left, the whole slice, which errs on stable's side). Without a
/// hold-out, both are the whole data.
fn split(model: &ModelConfig, data: &Dataset, stable_fresh_from: usize) -> (Dataset, Dataset) {
    let n = data.rows();
    if model.holdout_fraction <= 0.0 {
        return (data.clone(), data.clone());
    }
    let mut split = n - data.tail_rows(model.holdout_fraction);
    if stable_fresh_from > split && n.saturating_sub(stable_fresh_from) >= MIN_FRESH_ROWS {
        split = stable_fresh_from;
    }
    (data.slice(0..split), data.slice(split..n))
}

fn builtin(
    inputs: &Inputs<'_>,
    family: Family<'_>,
    train: &Dataset,
    held: &Dataset,
    interface: &Interface,
) -> Result<Candidate, PublishError> {
    let (model, data) = (inputs.model, inputs.data);
    let fit = |d: &Dataset, mlp: &MlpSettings| -> Result<Trained, PublishError> {
        Ok(match family {
            Family::Gbt => Trained::Gbt(Gbt::train(model.task, d, &model.gbt)?),
            _ => Trained::Mlp(Mlp::train(model.task, d, mlp, model.seed)?),
        })
    };
    let trained = fit(train, &model.mlp)?;
    let offline = evaluate(model.task, &trained.predict(&held.x), &held.y);
    // The held-out evaluation judged the recipe; the published model also
    // learns from the newest rows, which the next requests resemble most.
    let refit = model.refit && model.holdout_fraction > 0.0;
    let trained = if refit {
        let epochs = match &trained {
            Trained::Mlp(first) => first.best_epochs,
            Trained::Gbt(_) => model.mlp.max_epochs,
        };
        let settings = MlpSettings {
            max_epochs: epochs,
            validation_fraction: 0.0,
            ..model.mlp.clone()
        };
        fit(data, &settings)?
    } else {
        trained
    };
    let fitted_on = if refit { data } else { train };
    let onnx = trained.to_onnx(interface, inputs.version, inputs.metadata);
    let check = parity::check(&trained, &onnx, &held.x, model.parity_bound)?;
    let out = trained.predict(&fitted_on.x);
    Ok(Candidate {
        family: trained.family().to_string(),
        task: model.task,
        features: data.features,
        reference: reference(model.task, fitted_on, &out),
        trained: Some(trained),
        onnx,
        offline,
        stable_offline: None,
        held_rows: held.rows(),
        parity_max_abs: check.max_abs,
        rows: fitted_on.rows(),
        seconds: 0.0,
        command: None,
    })
}

/// A command's model: the interface, then ONNX Runtime against the
/// command's own predictions (parity), then ONNX Runtime's output scored:
/// what the gateway will serve is what is judged.
fn from_command(
    model: &ModelConfig,
    interface: &Interface,
    out: command::Output,
    train: &Dataset,
    held: &Dataset,
) -> Result<Candidate, PublishError> {
    let mut onnx_model = Foreign::load(&out.onnx, interface, train.features, model.task.width())?;
    let served = onnx_model.predict(&held.x)?;
    let max_abs = parity::compare(&out.predictions, &served, model.parity_bound)?;
    let offline = evaluate(model.task, &served, &held.y);
    let on_train = onnx_model.predict(&train.x)?;
    Ok(Candidate {
        family: out.lineage.name.clone(),
        task: model.task,
        features: train.features,
        reference: reference(model.task, train, &on_train),
        trained: None,
        onnx: out.onnx,
        offline,
        stable_offline: None,
        held_rows: held.rows(),
        parity_max_abs: max_abs,
        rows: train.rows(),
        seconds: 0.0,
        command: Some(out.lineage),
    })
}

/// The drift reference: the features it was fitted on and its last
/// output column (the positive class, or the value).
fn reference(task: Task, data: &Dataset, out: &[f32]) -> Reference {
    let last: Vec<f32> = out
        .chunks(task.width())
        .map(|r| *r.last().unwrap_or(&0.0))
        .collect();
    Reference::fit(&data.x, data.features, &last, PSI_BINS)
}
