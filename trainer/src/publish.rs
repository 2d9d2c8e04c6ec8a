//! Training run to published version: train on the older part of the
//! data, evaluate on the newest held-out part (against the stable version
//! too, when there is one), refit on the whole window (`refit`, on by
//! default: the same settings, the MLP for the epochs early stopping
//! chose), export, check parity, then write the version into the
//! registry (a directory or an object store) through
//! `quiver_registry::control::publish_version`: its number claimed, files
//! first, `manifest.json` last, then the index bumped so replicas look.

use std::collections::BTreeMap;

use quiver_contract::layout::{MANIFEST_FILE, MODEL_FILE};
use quiver_contract::manifest::{Lineage, Manifest, sha256_bytes};
use quiver_registry::control::{self, version_key};
use quiver_registry::{Registry, RegistryError, UpdateError};

use crate::config::{Config, Family, ModelConfig};
use crate::monitor::psi::Reference;
use crate::parity::{self, ParityError};
use crate::train::gbt::Gbt;
use crate::train::metrics::{evaluate, primary_loss};
use crate::train::mlp::{Mlp, MlpSettings};
use crate::train::{Dataset, TrainError, Trained};

/// The training reference saved with each version, for drift.
pub const REFERENCE_FILE: &str = "reference.json";
/// PSI bins per feature.
const PSI_BINS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Parity(#[from] ParityError),
    #[error("cannot publish version {version} of '{model}': {source}")]
    Write {
        model: String,
        version: u64,
        source: UpdateError,
    },
    #[error("cannot read the model registry: {0}")]
    Repository(#[from] RegistryError),
    #[error("invalid model settings: {0}")]
    Settings(String),
}

/// A trained, exported, parity-checked candidate, not yet published.
pub struct Candidate {
    pub trained: Trained,
    pub onnx: Vec<u8>,
    pub reference: Reference,
    pub offline: BTreeMap<String, f64>,
    /// The stable version's metrics on the same held-out rows.
    pub stable_offline: Option<BTreeMap<String, f64>>,
    /// How many rows were held out.
    pub held_rows: usize,
    pub parity_max_abs: f64,
    pub rows: usize,
    pub seconds: f64,
}

impl Candidate {
    /// Better than stable by the margin (or no stable to beat)?
    pub fn beats_stable(&self, model: &ModelConfig) -> bool {
        let task = self.trained.task();
        self.stable_offline.as_ref().is_none_or(|s| {
            primary_loss(task, &self.offline) < primary_loss(task, s) - model.min_improvement
        })
    }
}

/// The least rows the stable version has not seen for the held-out slice
/// to be cut to those.
pub const MIN_FRESH_ROWS: usize = 50;

/// Trains and checks a candidate on `data` (time-ordered). `stable` is the
/// serving version's ONNX bytes, scored on the same held-out rows; it
/// trained on none of the rows from `stable_fresh_from` on.
pub fn train_candidate(
    model: &ModelConfig,
    data: &Dataset,
    version: u64,
    metadata: &[(String, String)],
    stable: Option<&[u8]>,
    stable_fresh_from: usize,
) -> Result<Candidate, PublishError> {
    let interface = model.interface().map_err(PublishError::Settings)?;
    let n = data.rows();
    let (train, held) = if model.holdout_fraction > 0.0 {
        // The newest rows, and none the stable version trained on: rows it
        // has seen would flatter it (when too few are left, the whole
        // slice, which errs on stable's side).
        let mut split = n - data.tail_rows(model.holdout_fraction);
        if stable_fresh_from > split && n.saturating_sub(stable_fresh_from) >= MIN_FRESH_ROWS {
            split = stable_fresh_from;
        }
        (data.slice(0..split), data.slice(split..n))
    } else {
        (data.clone(), data.clone())
    };
    let started = std::time::Instant::now();
    let trained = match model.family {
        Family::Mlp => Trained::Mlp(Mlp::train(model.task, &train, &model.mlp, model.seed)?),
        Family::Gbt => Trained::Gbt(Gbt::train(model.task, &train, &model.gbt)?),
    };
    let offline = evaluate(model.task, &trained.predict(&held.x), &held.y);
    // The held-out evaluation judged the recipe; the published model also
    // learns from the newest rows, which the next requests resemble most.
    let refit = model.refit && model.holdout_fraction > 0.0;
    let trained = if refit {
        match &trained {
            Trained::Mlp(first) => {
                let settings = MlpSettings {
                    max_epochs: first.best_epochs,
                    validation_fraction: 0.0,
                    ..model.mlp.clone()
                };
                Trained::Mlp(Mlp::train(model.task, data, &settings, model.seed)?)
            }
            Trained::Gbt(_) => Trained::Gbt(Gbt::train(model.task, data, &model.gbt)?),
        }
    } else {
        trained
    };
    let fitted_on = if refit { data } else { &train };
    let seconds = started.elapsed().as_secs_f64();
    let stable_offline = match stable {
        Some(bytes) => parity::run_onnx(bytes, &held.x, data.features)
            .ok()
            .and_then(|outs| outs.into_iter().next())
            .map(|out| evaluate(model.task, &out, &held.y)),
        None => None,
    };
    let onnx = trained.to_onnx(&interface, version, metadata);
    let check = parity::check(&trained, &onnx, &held.x, model.parity_bound)?;
    let train_out = trained.predict(&fitted_on.x);
    let first: Vec<f32> = train_out
        .chunks(model.task.width())
        .map(|r| *r.last().unwrap_or(&0.0))
        .collect();
    let reference = Reference::fit(&fitted_on.x, data.features, &first, PSI_BINS);
    Ok(Candidate {
        trained,
        onnx,
        reference,
        offline,
        stable_offline,
        held_rows: held.rows(),
        parity_max_abs: check.max_abs,
        rows: fitted_on.rows(),
        seconds,
    })
}

/// The next free version number: one past every number in use, published
/// or still being written (a version whose manifest is not there yet).
pub fn next_version(reg: &Registry, model: &str) -> Result<u64, PublishError> {
    let (_, in_use) = control::versions(reg, model)?;
    Ok(in_use.last().map_or(1, |v| v + 1))
}

/// A published version's file, `None` if it is not there.
pub fn read_file(
    reg: &Registry,
    model: &str,
    version: u64,
    file: &str,
) -> Result<Option<Vec<u8>>, PublishError> {
    Ok(reg
        .get(&version_key(model, version, file))?
        .map(|d| d.bytes))
}

/// A version's manifest, checked to name the version it sits in; `None`
/// if it is missing or invalid (logged).
pub fn read_manifest(reg: &Registry, model: &str, version: u64) -> Option<Manifest> {
    let key = version_key(model, version, MANIFEST_FILE);
    let bytes = match read_file(reg, model, version, MANIFEST_FILE) {
        Ok(b) => b?,
        Err(e) => {
            tracing::warn!(model, version, error = %e, "cannot read the manifest");
            return None;
        }
    };
    Manifest::parse(&bytes, &key, Some((model, version)))
        .map_err(|e| tracing::warn!(model, version, error = %e, "invalid manifest"))
        .ok()
}

/// The metadata written into the graph's `metadata_props`.
pub fn metadata(model: &str, version: u64, lineage: &Lineage) -> Vec<(String, String)> {
    vec![
        ("quiver.model".into(), model.into()),
        ("quiver.version".into(), version.to_string()),
        (
            "quiver.lineage".into(),
            serde_json::to_string(lineage).unwrap_or_default(),
        ),
    ]
}

/// Writes the version: model and reference first, the manifest last.
pub fn publish(
    reg: &Registry,
    model: &ModelConfig,
    version: u64,
    candidate: &Candidate,
    lineage: Lineage,
) -> Result<Manifest, PublishError> {
    let reference = serde_json::to_vec(&candidate.reference).unwrap_or_default();
    let mut m = Manifest::new(&model.name, version);
    m.sha256
        .insert(MODEL_FILE.into(), sha256_bytes(&candidate.onnx));
    m.sha256
        .insert(REFERENCE_FILE.into(), sha256_bytes(&reference));
    let interface = model.interface().map_err(PublishError::Settings)?;
    let (inputs, outputs) =
        interface.tensor_decls(candidate.trained.features(), model.task.width());
    m.inputs = inputs;
    m.outputs = outputs;
    m.lineage = Some(lineage);
    m.metrics
        .insert("offline".into(), candidate.offline.clone());
    if let Some(s) = &candidate.stable_offline {
        m.metrics.insert("offline_parent".into(), s.clone());
    }
    m.parity_max_abs = Some(candidate.parity_max_abs);
    let files: [(&str, &[u8]); 2] = [(MODEL_FILE, &candidate.onnx), (REFERENCE_FILE, &reference)];
    control::publish_version(reg, &m, &files).map_err(|source| PublishError::Write {
        model: model.name.clone(),
        version,
        source,
    })?;
    Ok(m)
}

/// The lineage of a training run; `data` names the exact records.
pub fn lineage(
    config_model: &ModelConfig,
    parent: Option<u64>,
    data: BTreeMap<String, String>,
    rows: usize,
) -> Lineage {
    Lineage {
        parent,
        data,
        rows: rows as u64,
        trained_through_ms: None,
        config_sha256: Some(Config::model_sha256(config_model)),
        code: Some(code_version()),
        seed: Some(config_model.seed),
        run: None,
    }
}

/// `quiver-trainer <version>[+<git sha>]`; the sha from `QUIVER_GIT_SHA`
/// at build time.
pub fn code_version() -> String {
    match option_env!("QUIVER_GIT_SHA") {
        Some(sha) => format!("quiver-trainer {}+{sha}", env!("CARGO_PKG_VERSION")),
        None => format!("quiver-trainer {}", env!("CARGO_PKG_VERSION")),
    }
}
