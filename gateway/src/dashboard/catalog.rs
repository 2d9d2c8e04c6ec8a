//! What the dashboard reads from the registry: each version's manifest
//! (lineage, offline metrics) and each model's run records. Read only
//! while someone looks, at most every [`MAX_AGE`], and incrementally: a
//! manifest never changes once written, and a run record that has ended
//! (rejected, failed, or published with its rollout's result) neither.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use quiver_contract::manifest::Manifest;
use quiver_contract::runs::{Outcome, RunRecord};
use quiver_registry::Registry;
use quiver_registry::control::{read_run, run_ids, version_key};

/// How stale the registry's view may be when the dashboard is read.
pub const MAX_AGE: Duration = Duration::from_secs(3);

#[derive(Default, Clone)]
pub struct ModelCatalog {
    pub manifests: BTreeMap<u64, Manifest>,
    /// Oldest first.
    pub runs: BTreeMap<String, RunRecord>,
    /// What could not be read, in words.
    pub problems: Vec<String>,
}

#[derive(Default, Clone)]
pub struct Catalog {
    pub models: BTreeMap<String, ModelCatalog>,
    /// The trainer's online quality and drift; `None` when no trainer
    /// metrics URL is configured, an error when they could not be read.
    pub trainer: Option<Result<super::trainer::Quality, String>>,
    pub read_at: Option<Instant>,
}

impl Catalog {
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.read_at
            .is_some_and(|t| now.saturating_duration_since(t) < MAX_AGE)
    }

    /// A new view of `wanted` (model → its versions), reusing what cannot
    /// have changed since `self` was read, and the trainer's metrics from
    /// `trainer` if given. Blocking: registry and network I/O.
    pub fn refresh(
        &self,
        registry: &Registry,
        wanted: &BTreeMap<String, Vec<u64>>,
        trainer: Option<&crate::plain_http::Url>,
    ) -> Catalog {
        let models = wanted
            .iter()
            .map(|(model, versions)| {
                let known = self.models.get(model);
                (model.clone(), read_model(registry, model, versions, known))
            })
            .collect();
        Catalog {
            models,
            trainer: trainer.map(super::trainer::read),
            read_at: Some(Instant::now()),
        }
    }
}

fn read_model(
    registry: &Registry,
    model: &str,
    versions: &[u64],
    known: Option<&ModelCatalog>,
) -> ModelCatalog {
    let mut out = ModelCatalog::default();
    for &v in versions {
        if let Some(m) = known.and_then(|k| k.manifests.get(&v)) {
            out.manifests.insert(v, m.clone());
            continue;
        }
        let key = version_key(model, v, "manifest.json");
        match registry.get(&key) {
            Ok(Some(doc)) => match Manifest::parse(&doc.bytes, &key, Some((model, v))) {
                Ok(m) => {
                    out.manifests.insert(v, m);
                }
                Err(e) => out.problems.push(e.to_string()),
            },
            Ok(None) => {}
            Err(e) => out.problems.push(e.to_string()),
        }
    }
    let ids = match run_ids(registry, model) {
        Ok(ids) => ids,
        Err(e) => {
            out.problems.push(e.to_string());
            if let Some(k) = known {
                out.runs = k.runs.clone();
            }
            return out;
        }
    };
    for id in ids {
        if let Some(r) = known.and_then(|k| k.runs.get(&id)).filter(|r| ended(r)) {
            out.runs.insert(id, r.clone());
            continue;
        }
        match read_run(registry, model, &id) {
            Ok(Some(r)) => {
                out.runs.insert(id, r);
            }
            Ok(None) => {}
            Err(e) => out.problems.push(e.to_string()),
        }
    }
    out
}

/// A record that will not be written again.
fn ended(r: &RunRecord) -> bool {
    match r.outcome {
        Outcome::Running => false,
        Outcome::Published { .. } => r.rollout.is_some(),
        Outcome::Rejected { .. } | Outcome::Failed { .. } => true,
    }
}
