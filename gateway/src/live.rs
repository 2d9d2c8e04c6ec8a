//! The live set: every model version the gateway serves, published as one
//! immutable value behind an `ArcSwap`. A request reads it once and keeps
//! its version even if the set is replaced meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::batcher::Batcher;
use crate::error::ApiError;
use crate::metrics::VersionMetrics;
use crate::model::ModelSpec;

/// A loaded, warmed-up model version and its batcher.
pub struct ServedVersion {
    pub spec: Arc<ModelSpec>,
    pub batcher: Batcher,
    pub metrics: VersionMetrics,
    /// Deadline for requests that send no `timeout`.
    pub default_timeout: Option<Duration>,
}

pub enum VersionStatus {
    Ready(Arc<ServedVersion>),
    /// Failed to load or validate; the reason is shown to operators.
    Failed(String),
}

#[derive(Default)]
pub struct ModelEntry {
    pub versions: BTreeMap<u64, VersionStatus>,
}

impl ModelEntry {
    /// The newest ready version: what a request without a version gets.
    pub fn default_version(&self) -> Option<&Arc<ServedVersion>> {
        self.versions.values().rev().find_map(|s| match s {
            VersionStatus::Ready(v) => Some(v),
            VersionStatus::Failed(_) => None,
        })
    }

    pub fn ready_versions(&self) -> impl Iterator<Item = &Arc<ServedVersion>> {
        self.versions.values().filter_map(|s| match s {
            VersionStatus::Ready(v) => Some(v),
            VersionStatus::Failed(_) => None,
        })
    }
}

#[derive(Default)]
pub struct LiveModels {
    pub models: BTreeMap<String, ModelEntry>,
    /// The repository has been read and every model tried at least once.
    pub loaded: bool,
}

impl LiveModels {
    /// The version a request for `model` (and optionally `version`) runs on.
    pub fn resolve(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Result<&Arc<ServedVersion>, ApiError> {
        let Some(entry) = self.models.get(model) else {
            if !self.loaded {
                return Err(ApiError::NotReady(
                    "the model repository is still loading".into(),
                ));
            }
            return Err(ApiError::NotFound(format!("unknown model '{model}'")));
        };
        match version {
            None => entry
                .default_version()
                .ok_or_else(|| ApiError::NotReady(format!("model '{model}' has no ready version"))),
            Some(v) => match entry.versions.get(&v) {
                Some(VersionStatus::Ready(s)) => Ok(s),
                Some(VersionStatus::Failed(why)) => Err(ApiError::NotReady(format!(
                    "model '{model}' version {v} failed to load: {why}"
                ))),
                None => Err(ApiError::NotFound(format!(
                    "model '{model}' has no version {v}"
                ))),
            },
        }
    }

    /// Ready when loading has finished and every model has a ready version.
    pub fn is_ready(&self) -> bool {
        self.loaded && self.models.values().all(|m| m.default_version().is_some())
    }

    pub fn served(&self) -> impl Iterator<Item = &Arc<ServedVersion>> {
        self.models.values().flat_map(ModelEntry::ready_versions)
    }
}
