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
use crate::metrics::{
    LIVE_VERSIONS, ROLLOUT_CANARY_WEIGHT, ROLLOUT_DECISIONS_TOTAL, ROLLOUT_STABLE_VERSION,
    ROLLOUT_STEP, VersionMetrics,
};
use crate::model::ModelSpec;
use crate::rollout::stats::VersionStats;
use crate::routing::{Arm, RouteTable};

/// A loaded, warmed-up model version and its batcher.
pub struct ServedVersion {
    pub spec: Arc<ModelSpec>,
    /// The model's name, shared by every record the log writes for it.
    pub name: Arc<str>,
    pub batcher: Batcher,
    pub metrics: VersionMetrics,
    /// Deadline for requests that send no `timeout`.
    pub default_timeout: Option<Duration>,
    pub priorities: Priorities,
    /// Routed (not pinned) traffic, for the rollout guardrail.
    pub stats: VersionStats,
    /// Which load this is, unique in the process: the fleet's guardrail
    /// counts each load's traffic from zero.
    pub instance: u64,
}

/// A version's priority levels (1 the highest) and the level of requests
/// that ask for none.
#[derive(Debug, Clone, Copy)]
pub struct Priorities {
    pub levels: u32,
    pub default: u32,
}

impl Priorities {
    /// The level a request runs at, or why it cannot ask for that one.
    pub fn level(&self, asked: Option<u32>) -> Result<u32, String> {
        match asked {
            None => Ok(self.default),
            Some(p) if p <= self.levels => Ok(p),
            Some(p) => Err(format!(
                "priority {p} is not within 1..={} (the model's priority_levels)",
                self.levels
            )),
        }
    }
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

/// One row of the repository index: a model version and its state, or a
/// model with no version and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexRow {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl LiveModels {
    /// Every model and version with its state, and why a version is not
    /// ready or not batched; with `ready`, only ready versions.
    pub fn index(&self, ready: bool) -> Vec<IndexRow> {
        let mut rows = Vec::new();
        for (name, entry) in &self.models {
            if entry.versions.is_empty() && !ready {
                rows.push(IndexRow {
                    name: name.clone(),
                    version: None,
                    state: VersionState::Unavailable.as_str(),
                    reason: Some(
                        entry
                            .problem
                            .clone()
                            .unwrap_or_else(|| "no version in the repository".into()),
                    ),
                });
            }
            for (v, e) in &entry.versions {
                if ready && e.served.is_none() {
                    continue;
                }
                let unbatched = e
                    .served
                    .as_ref()
                    .and_then(|s| s.spec.unbatched.as_ref())
                    .map(|why| format!("served unbatched: {why}"));
                let reasons: Vec<String> = (e.reason.as_ref().or(entry.problem.as_ref()).cloned())
                    .into_iter()
                    .chain(unbatched)
                    .collect();
                rows.push(IndexRow {
                    name: name.clone(),
                    version: Some(v.to_string()),
                    state: e.state.as_str(),
                    reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
                });
            }
        }
        rows
    }

    /// The ready versions of `model`, as the protocol's metadata lists
    /// them.
    pub fn ready_version_names(&self, model: &str) -> Vec<String> {
        self.models
            .get(model)
            .map(|e| {
                e.ready_versions()
                    .map(|s| s.spec.version.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl ModelEntry {
    /// Sets a model's live-version and routing gauges from its published entry.
    pub fn publish_gauges(&self, model: &str) {
        let entry = self;
        let m = model.to_string();
        metrics::gauge!(LIVE_VERSIONS, "model" => m.clone())
            .set(entry.ready_versions().count() as f64);
        metrics::gauge!(ROLLOUT_STABLE_VERSION, "model" => m.clone())
            .set(entry.table.stable.map_or(0.0, |v| v as f64));
        metrics::gauge!(ROLLOUT_STEP, "model" => m.clone()).set(entry.routing.step as f64);
        // Registered at zero, so dashboards see every decision before the first.
        for decision in [
            "init", "start", "advance", "promote", "rollback", "set", "load", "unload",
        ] {
            metrics::counter!(ROLLOUT_DECISIONS_TOTAL, "model" => m.clone(), "decision" => decision)
                .increment(0);
        }
        for (version, served) in &entry.versions {
            if served.served.is_some() {
                let w = entry.routing.canary.get(version).copied().unwrap_or(0.0);
                metrics::gauge!(ROLLOUT_CANARY_WEIGHT, "model" => m.clone(), "version" => version.to_string())
                    .set(w);
            }
        }
    }
}
