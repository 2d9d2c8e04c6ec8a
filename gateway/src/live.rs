//! The live set: every model version the gateway serves and how each
//! model's traffic is routed, published as one immutable value behind an
//! `ArcSwap` by the model manager. A request reads it once, and keeps the
//! version it was routed to even if the set is replaced meanwhile; a
//! version's engine threads stop after its last request lets go of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use quiver_contract::routing::RoutingState;

use crate::batcher::Batcher;
use crate::error::ApiError;
use crate::metrics::VersionMetrics;
use crate::model::ModelSpec;
use crate::rollout::stats::VersionStats;
use crate::routing::{Arm, RouteTable};

/// A loaded, warmed-up model version and its batcher.
pub struct ServedVersion {
    pub spec: Arc<ModelSpec>,
    pub batcher: Batcher,
    pub metrics: VersionMetrics,
    /// Deadline for requests that send no `timeout`.
    pub default_timeout: Option<Duration>,
    /// Routed (not pinned) traffic, for the rollout guardrail.
    pub stats: VersionStats,
    /// Which load this is, unique in the process: the fleet's guardrail
    /// counts each load's traffic from zero.
    pub instance: u64,
}

/// Numbers each loaded version.
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new load's number.
pub fn next_instance() -> u64 {
    INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A version's state as the repository index shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    Ready,
    Loading,
    /// Failed to load or validate, or left out by the version policy.
    Unavailable,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Ready => "READY",
            VersionState::Loading => "LOADING",
            VersionState::Unavailable => "UNAVAILABLE",
        }
    }
}

pub struct VersionEntry {
    pub served: Option<Arc<ServedVersion>>,
    pub state: VersionState,
    /// Why it is not ready, or why its last reload failed while it kept
    /// serving.
    pub reason: Option<String>,
}

#[derive(Default)]
pub struct ModelEntry {
    pub versions: BTreeMap<u64, VersionEntry>,
    /// The routing state as applied (`routing.json`).
    pub routing: RoutingState,
    /// `routing` resolved against the ready versions.
    pub table: RouteTable,
    /// Unloaded through the repository API; not served until loaded again.
    pub unloaded: bool,
    /// Why the model's config or routing file was not applied, if so.
    pub problem: Option<String>,
    /// The rollout guardrail's view (running canary, recent decisions).
    pub rollout: serde_json::Value,
}

impl ModelEntry {
    pub fn ready(&self, version: u64) -> Option<&Arc<ServedVersion>> {
        self.versions.get(&version).and_then(|e| e.served.as_ref())
    }

    pub fn ready_versions(&self) -> impl Iterator<Item = &Arc<ServedVersion>> {
        self.versions.values().filter_map(|e| e.served.as_ref())
    }

    /// What a request without a version and without a key gets.
    pub fn default_version(&self) -> Option<&Arc<ServedVersion>> {
        self.table.stable.and_then(|v| self.ready(v))
    }
}

/// Where a request goes: its version, the arm that chose it, and the
/// shadow versions that get a copy.
pub struct Routed<'a> {
    pub served: &'a Arc<ServedVersion>,
    pub arm: Arm,
    pub shadows: Vec<&'a Arc<ServedVersion>>,
}

#[derive(Default)]
pub struct LiveModels {
    pub models: BTreeMap<String, ModelEntry>,
    /// The repository has been read and every model tried at least once.
    pub loaded: bool,
}

impl LiveModels {
    fn entry(&self, model: &str) -> Result<&ModelEntry, ApiError> {
        match self.models.get(model) {
            Some(e) if e.unloaded => Err(ApiError::NotReady(format!(
                "model '{model}' is unloaded; load it through the repository API"
            ))),
            Some(e) => Ok(e),
            None if !self.loaded => Err(ApiError::NotReady(
                "the model repository is still loading".into(),
            )),
            None => Err(ApiError::NotFound(format!("unknown model '{model}'"))),
        }
    }

    /// The version a request for `model` runs on: the one named, else the
    /// routing table's pick for `key_hash`.
    pub fn route(
        &self,
        model: &str,
        version: Option<u64>,
        key_hash: u64,
    ) -> Result<Routed<'_>, ApiError> {
        let entry = self.entry(model)?;
        let Some(v) = version else {
            let (v, arm) = entry.table.pick(key_hash).ok_or_else(|| {
                ApiError::NotReady(format!("model '{model}' has no ready version"))
            })?;
            let served = entry.ready(v).ok_or_else(|| {
                ApiError::Internal(format!("routing names version {v}, which is not ready"))
            })?;
            let shadows = entry
                .table
                .shadow
                .iter()
                .filter_map(|s| entry.ready(*s))
                .collect();
            return Ok(Routed {
                served,
                arm,
                shadows,
            });
        };
        match entry.versions.get(&v) {
            Some(VersionEntry {
                served: Some(served),
                ..
            }) => Ok(Routed {
                served,
                arm: Arm::Pinned,
                shadows: Vec::new(),
            }),
            Some(e) if e.state == VersionState::Loading => Err(ApiError::NotReady(format!(
                "model '{model}' version {v} is loading"
            ))),
            Some(e) => Err(ApiError::NotReady(format!(
                "model '{model}' version {v} is unavailable: {}",
                e.reason.as_deref().unwrap_or("unknown reason")
            ))),
            None => Err(ApiError::NotFound(format!(
                "model '{model}' has no version {v}"
            ))),
        }
    }

    /// The version named, or the stable one.
    pub fn resolve(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Result<&Arc<ServedVersion>, ApiError> {
        let entry = self.entry(model)?;
        match version {
            None => entry
                .default_version()
                .ok_or_else(|| ApiError::NotReady(format!("model '{model}' has no ready version"))),
            Some(_) => self.route(model, version, 0).map(|r| r.served),
        }
    }

    /// Ready when loading has finished and every model that is not
    /// unloaded has a version serving.
    pub fn is_ready(&self) -> bool {
        self.loaded
            && self
                .models
                .values()
                .all(|m| m.unloaded || m.default_version().is_some())
    }

    pub fn served(&self) -> impl Iterator<Item = &Arc<ServedVersion>> {
        self.models.values().flat_map(ModelEntry::ready_versions)
    }
}
