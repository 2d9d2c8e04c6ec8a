//! A checked candidate (from `trial.rs`) to published version: written
//! into the registry (a directory or an object store) through
//! `quiver_registry::control::publish_version`: its number claimed, files
//! first, `manifest.json` last, then the index bumped so replicas look.

use std::collections::BTreeMap;

use quiver_contract::layout::{MANIFEST_FILE, MODEL_FILE};
use quiver_contract::manifest::{CommandLineage, Lineage, Manifest, sha256_bytes};
use quiver_registry::control::{self, version_key};
use quiver_registry::{Registry, RegistryError, UpdateError};

use crate::command::CommandError;
use crate::config::{Config, ModelConfig};
use crate::monitor::psi::Reference;
use crate::parity::ParityError;
use crate::train::metrics::primary_loss;
use crate::train::{Task, TrainError, Trained};

/// The training reference saved with each version, for drift.
pub const REFERENCE_FILE: &str = "reference.json";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Parity(#[from] ParityError),
    #[error(transparent)]
    Command(#[from] CommandError),
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
    /// Every candidate family failed; each one's reason.
    #[error("{0}")]
    NoCandidate(String),
}

/// A trained, exported, parity-checked candidate, not yet published.
pub struct Candidate {
    /// `mlp`, `gbt` or the command's name.
    pub family: String,
    pub task: Task,
    pub features: usize,
    /// A built-in family's model (its own forward pass).
    pub trained: Option<Trained>,
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
    /// For a command's model: what ran, for the lineage.
    pub command: Option<CommandLineage>,
}

impl Candidate {
    /// Better than stable by the margin (or no stable to beat)?
    pub fn beats_stable(&self, model: &ModelConfig) -> bool {
        self.stable_offline.as_ref().is_none_or(|s| {
            primary_loss(self.task, &self.offline)
                < primary_loss(self.task, s) - model.min_improvement
        })
    }
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
    let (inputs, outputs) = interface.tensor_decls(candidate.features, model.task.width());
    m.inputs = inputs;
    m.outputs = outputs;
    let mut lineage = lineage;
    lineage.command = candidate.command.clone();
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
        command: None,
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
