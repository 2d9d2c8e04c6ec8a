//! One model as the manager sees it: its config and routing files, the
//! versions on disk, and a slot per version it wants loaded (what serves,
//! what is loading, what failed and why). `reconcile` turns a fresh look
//! at the directory into load tasks; `entry` turns the state into the
//! model's part of the next live set.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use quiver_contract::routing::RoutingState;
use quiver_registry::control;

use super::{Answer, LoadTask, Reply, Target};
use crate::error::ApiError;
use crate::live::{ModelEntry, ServedVersion, VersionEntry, VersionState};
use crate::model::TensorSpec;
use crate::model_settings::ModelDefaults;
use crate::repository::{self, FileStamp, Fingerprint, ModelConfig, ModelDir, Repository};
use crate::rollout::stats::Snapshot;
use crate::routing::RouteTable;

/// What an admin request waits for before it is answered.
pub(super) enum Wait {
    /// The model's loads to finish; then ready or the reasons it is not.
    Load,
    /// The versions a new routing state names to finish loading.
    Routing,
}

#[derive(Default)]
pub(super) struct Slot {
    pub served: Option<(Arc<ServedVersion>, Target)>,
    pub loading: Option<Target>,
    /// The last failed load, so the same files are not retried each poll.
    pub failed: Option<(Target, String)>,
}

/// The guardrail's window on a running canary step: where each source of
/// traffic (a replica's loaded instance of a version) stood when the step
/// began. A source that appears later (a reload, a new replica) counts
/// from zero, which is exactly its traffic since then.
pub(super) struct Run {
    pub canary: u64,
    pub step: usize,
    pub stable: Option<u64>,
    pub since: std::time::Instant,
    pub canary_mark: BTreeMap<SourceKey, Snapshot>,
    pub stable_mark: BTreeMap<SourceKey, Snapshot>,
}

/// One loaded instance of a version on one run of one replica.
pub(super) type SourceKey = (String, u64, u64);

pub(super) struct ModelState {
    pub config: Result<ModelConfig, String>,
    /// `None` until first read; then the stamp of the file (or its absence).
    config_stamp: Option<Option<FileStamp>>,
    pub config_gen: u64,
    config_problem: Option<String>,
    pub routing: RoutingState,
    pub routing_stamp: Option<Option<FileStamp>>,
    routing_problem: Option<String>,
    /// Every version directory at the last look, to tell settled files.
    seen: BTreeMap<u64, Fingerprint>,
    /// Versions whose files are complete.
    present: BTreeSet<u64>,
    pub slots: BTreeMap<u64, Slot>,
    pub unloaded: bool,
    pub dirty: bool,
    pub waiters: Vec<(Wait, Reply)>,
    pub run: Option<Run>,
    /// Stable's last window with enough traffic to compare a canary with.
    pub baseline: Option<Snapshot>,
}

impl ModelState {
    pub fn new() -> Self {
        ModelState {
            config: Err("not read yet".into()),
            config_stamp: None,
            config_gen: 0,
            config_problem: None,
            routing: RoutingState::default(),
            routing_stamp: None,
            routing_problem: None,
            seen: BTreeMap::new(),
            present: BTreeSet::new(),
            slots: BTreeMap::new(),
            unloaded: false,
            dirty: true,
            waiters: Vec::new(),
            run: None,
            baseline: None,
        }
    }

    /// Re-reads `config.toml` if it changed; true when a new config took
    /// effect (every version then reloads with it). A broken file keeps the
    /// previous config serving and is reported.
    pub fn read_config(
        &mut self,
        dir: &ModelDir,
        defaults: &ModelDefaults,
        repo: &Repository,
    ) -> bool {
        if self.config_stamp == Some(dir.config) {
            return false;
        }
        self.config_stamp = Some(dir.config);
        self.dirty = true;
        let loaded = match dir.config {
            None => repository::load_model_config(&dir.name, None, defaults),
            Some(_) => repo
                .read_config(&dir.name)
                .and_then(|t| repository::load_model_config(&dir.name, t.as_deref(), defaults)),
        };
        match loaded {
            Ok(cfg) => {
                if self.config.is_ok() {
                    tracing::info!(model = %dir.name, "config.toml changed; reloading every version with it");
                }
                self.config = Ok(cfg);
                self.config_problem = None;
                true
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(model = %dir.name, error = %why, "model config invalid");
                if self.config.is_ok() {
                    self.config_problem =
                        Some(format!("{why} (still serving with the previous config)"));
                } else {
                    self.config = Err(why);
                }
                false
            }
        }
    }

    /// Re-reads `routing.json` if it changed. An invalid file is reported
    /// and the routing in force stays. An unload recorded there is honoured
    /// (and undone) here, so every replica and every restart follows it.
    pub fn read_routing(&mut self, dir: &ModelDir, repo: &Repository) {
        if self.routing_stamp == Some(dir.routing) {
            return;
        }
        let next = match dir.routing {
            None => Ok(RoutingState::default()),
            Some(_) => control::read_routing(repo.registry(), &dir.name)
                .map(|(s, _)| s)
                .map_err(|e| e.to_string()),
        };
        match next {
            Ok(state) => {
                self.routing_stamp = Some(dir.routing);
                self.adopt_routing(&dir.name, state);
            }
            Err(why) => {
                // Not stamped: an unreachable store is tried again next poll.
                if self.routing_problem.as_deref() != Some(why.as_str()) {
                    tracing::error!(model = %dir.name, error = %why, "routing file ignored");
                }
                self.routing_problem = Some(format!("{why} (the routing in force stays)"));
                self.dirty = true;
            }
        }
    }

    /// Takes `state` as the routing in force (read from the registry, or
    /// just written to it).
    pub fn adopt_routing(&mut self, name: &str, state: RoutingState) {
        self.routing_problem = None;
        if !state.same_routing(&self.routing) {
            tracing::info!(model = %name, stable = ?state.stable, canary = ?state.canary, shadow = ?state.shadow,
                unloaded = state.unloaded, by = %state.updated_by, "routing changed in the registry");
            self.run = None;
        }
        if state.unloaded && !self.unloaded {
            tracing::info!(model = %name, "model unloaded (recorded in the registry)");
            crate::metrics::swap(name, "unload");
            self.unload();
        } else if !state.unloaded && self.unloaded {
            tracing::info!(model = %name, "model loaded again (recorded in the registry)");
            self.unloaded = false;
        }
        self.routing = state;
        self.dirty = true;
    }

    /// Compares the directory with the slots: versions to load, versions
    /// to drop. A version without a manifest counts as complete once its
    /// files have not changed between two looks (or at once when
    /// `settle_all`).
    pub fn reconcile(
        &mut self,
        dir: &ModelDir,
        settle_all: bool,
        require_manifest: bool,
    ) -> Vec<LoadTask> {
        let settled: BTreeSet<u64> = dir
            .versions
            .iter()
            .filter(|v| {
                v.fingerprint.manifest.is_some()
                    || (!require_manifest
                        && (settle_all || self.seen.get(&v.version) == Some(&v.fingerprint)))
            })
            .map(|v| v.version)
            .collect();
        self.seen = dir
            .versions
            .iter()
            .map(|v| (v.version, v.fingerprint))
            .collect();
        if self.unloaded {
            return Vec::new();
        }
        let Ok(cfg) = &self.config else {
            return Vec::new();
        };
        // A version being rewritten keeps serving its old files meanwhile.
        let mut present = settled.clone();
        present.extend(
            self.slots
                .iter()
                .filter(|(v, s)| s.served.is_some() && self.seen.contains_key(v))
                .map(|(v, _)| *v),
        );
        if present != self.present {
            self.dirty = true;
        }
        self.present = present;
        // A version that failed on these very files is not a candidate, so
        // the policy falls back to the versions that work.
        let failed: BTreeSet<u64> = dir
            .versions
            .iter()
            .filter(|v| {
                self.slots.get(&v.version).is_some_and(|s| {
                    s.served.is_none()
                        && s.failed.as_ref().is_some_and(|(t, _)| {
                            t.fingerprint == v.fingerprint && t.config_gen == self.config_gen
                        })
                })
            })
            .map(|v| v.version)
            .collect();
        let candidates: Vec<u64> = self.present.difference(&failed).copied().collect();
        let mut wanted: BTreeSet<u64> = cfg
            .settings
            .version_policy
            .select(&candidates)
            .into_iter()
            .collect();
        wanted.extend(
            self.routing
                .referenced()
                .filter(|v| self.present.contains(v)),
        );
        let mut tasks = Vec::new();
        for v in &dir.versions {
            if !wanted.contains(&v.version) || !settled.contains(&v.version) {
                continue;
            }
            let target = Target {
                fingerprint: v.fingerprint,
                config_gen: self.config_gen,
            };
            let slot = self.slots.entry(v.version).or_default();
            let known = slot.served.as_ref().is_some_and(|(_, t)| *t == target)
                || slot.loading == Some(target)
                || slot.failed.as_ref().is_some_and(|(t, _)| *t == target);
            if known {
                continue;
            }
            slot.loading = Some(target);
            self.dirty = true;
            tasks.push(LoadTask {
                model: dir.name.clone(),
                version: v.clone(),
                target,
                config: cfg.clone(),
            });
        }
        // Versions leaving the wanted set keep serving until every wanted
        // version has finished loading: a swap never leaves a gap. Failed
        // slots stay (not serving) so the same files are not retried.
        let settling = wanted
            .iter()
            .any(|v| self.slots.get(v).is_some_and(|s| s.loading.is_some()));
        if !settling {
            let before = self.slots.len();
            self.slots
                .retain(|v, s| wanted.contains(v) || (failed.contains(v) && s.served.is_none()));
            if self.slots.len() != before {
                tracing::info!(model = %dir.name, versions = ?wanted, "versions left the wanted set; unloaded");
                crate::metrics::swap(&dir.name, "unload");
                self.dirty = true;
            }
        }
        tasks
    }

    /// Takes a finished load. `Ok(true)`: the version now serves;
    /// `Ok(false)`: the result was stale (files or config changed since, or
    /// the version is no longer wanted) and is dropped; `Err`: refused.
    pub fn accept(
        &mut self,
        version: u64,
        target: Target,
        result: Result<ServedVersion, String>,
    ) -> Result<bool, String> {
        let reference = self.interface_reference(version);
        let allow_change = self
            .config
            .as_ref()
            .is_ok_and(|c| c.settings.allow_interface_change);
        let Some(slot) = self.slots.get_mut(&version) else {
            return Ok(false);
        };
        if slot.loading != Some(target) {
            return Ok(false);
        }
        slot.loading = None;
        let checked = result.and_then(|served| match reference {
            Some((v, inputs, outputs)) if !allow_change => interface_matches(
                &served.spec.inputs,
                &inputs,
                "input",
            )
            .and_then(|()| interface_matches(&served.spec.outputs, &outputs, "output"))
            .map_err(|e| {
                format!(
                    "{e}, unlike version {v} serving now (set allow_interface_change to accept)"
                )
            })
            .map(|()| served),
            _ => Ok(served),
        });
        match checked {
            Ok(served) => {
                slot.served = Some((Arc::new(served), target));
                slot.failed = None;
                Ok(true)
            }
            Err(why) => {
                slot.failed = Some((target, why.clone()));
                Err(why)
            }
        }
    }

    /// The interface new versions must keep: the stable version's, or else
    /// the newest serving version's.
    fn interface_reference(&self, except: u64) -> Option<(u64, Vec<TensorSpec>, Vec<TensorSpec>)> {
        let table = self.table();
        let pick = table
            .stable
            .filter(|v| *v != except)
            .or_else(|| self.ready_list().into_iter().rev().find(|v| *v != except))?;
        let served = self.served(pick)?;
        Some((
            pick,
            served.spec.inputs.clone(),
            served.spec.outputs.clone(),
        ))
    }

    pub fn served(&self, version: u64) -> Option<&Arc<ServedVersion>> {
        self.slots
            .get(&version)
            .and_then(|s| s.served.as_ref())
            .map(|(s, _)| s)
    }

    pub fn ready_list(&self) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|(_, s)| s.served.is_some())
            .map(|(v, _)| *v)
            .collect()
    }

    pub fn table(&self) -> RouteTable {
        RouteTable::build(&self.routing, &self.ready_list())
    }

    pub fn is_present(&self, version: u64) -> bool {
        self.present.contains(&version) || self.seen.contains_key(&version)
    }

    fn loading(&self) -> bool {
        self.slots.values().any(|s| s.loading.is_some())
    }

    pub fn unload(&mut self) {
        self.unloaded = true;
        self.slots.clear();
        self.run = None;
        self.dirty = true;
        for (_, reply) in self.waiters.drain(..) {
            let _ = reply.send(Err(ApiError::NotReady("the model was unloaded".into())));
        }
    }

    pub fn fail_waiters(self, why: &str) {
        for (_, reply) in self.waiters {
            let _ = reply.send(Err(ApiError::NotFound(why.to_string())));
        }
    }

    /// Answers admin requests whose loads have all finished.
    pub fn answer_waiters(&mut self, name: &str) {
        if self.waiters.is_empty() || self.loading() {
            return;
        }
        let table = self.table();
        for (wait, reply) in std::mem::take(&mut self.waiters) {
            let answer: Answer = match wait {
                Wait::Load => match table.stable {
                    Some(stable) => Ok(serde_json::json!({
                        "name": name, "ready": true, "stable": stable,
                        "versions": self.ready_list(),
                    })),
                    None => Err(ApiError::BadRequest(format!(
                        "failed to load model '{name}': {}",
                        self.reasons()
                    ))),
                },
                Wait::Routing => Ok(self.routing_view(name)),
            };
            let _ = reply.send(answer);
        }
    }

    fn reasons(&self) -> String {
        let mut why: Vec<String> = self
            .slots
            .iter()
            .filter_map(|(v, s)| s.failed.as_ref().map(|(_, e)| format!("version {v}: {e}")))
            .collect();
        if let Err(e) = &self.config {
            why.push(e.clone());
        }
        if why.is_empty() {
            why.push("no complete version in the repository".into());
        }
        why.join("; ")
    }

    /// The model's part of the next live set.
    pub fn entry(&self, name: &str) -> ModelEntry {
        let mut versions = BTreeMap::new();
        for v in self.seen.keys() {
            let entry = match self.slots.get(v) {
                Some(Slot {
                    served: Some((s, _)),
                    failed,
                    ..
                }) => VersionEntry {
                    served: Some(Arc::clone(s)),
                    state: VersionState::Ready,
                    reason: failed
                        .as_ref()
                        .map(|(_, e)| format!("reload failed, previous files still serve: {e}")),
                },
                Some(Slot {
                    loading: Some(_), ..
                }) => VersionEntry {
                    served: None,
                    state: VersionState::Loading,
                    reason: None,
                },
                Some(Slot {
                    failed: Some((_, e)),
                    ..
                }) => VersionEntry {
                    served: None,
                    state: VersionState::Unavailable,
                    reason: Some(e.clone()),
                },
                _ => VersionEntry {
                    served: None,
                    state: VersionState::Unavailable,
                    reason: Some(match (&self.config, self.unloaded) {
                        (_, true) => "model unloaded".into(),
                        (Err(e), _) => e.clone(),
                        _ if self.present.contains(v) => {
                            "not selected by the version policy".into()
                        }
                        _ => "incomplete: waiting for manifest.json or for the files to settle"
                            .into(),
                    }),
                },
            };
            versions.insert(*v, entry);
        }
        let entry = ModelEntry {
            versions,
            routing: self.routing.clone(),
            table: self.table(),
            unloaded: self.unloaded,
            problem: self
                .config_problem
                .clone()
                .or_else(|| self.routing_problem.clone()),
            rollout: self.rollout_view(),
        };
        entry.publish_gauges(name);
        entry
    }

    pub fn rollout_view(&self) -> serde_json::Value {
        let policy = self.config.as_ref().ok().map(|c| &c.settings.rollout);
        let running = self.run.as_ref().map(|r| {
            serde_json::json!({
                "canary": r.canary, "step": r.step, "stable": r.stable,
                "step_age_ms": r.since.elapsed().as_millis() as u64,
            })
        });
        serde_json::json!({
            "enabled": policy.is_some_and(|p| p.enabled),
            "steps": policy.map(|p| p.steps.clone()),
            "running": running,
            "history": self.routing.history,
        })
    }

    pub fn routing_view(&self, name: &str) -> serde_json::Value {
        let table = self.table();
        serde_json::json!({
            "name": name,
            "routing": self.routing,
            "effective": {
                "stable": table.stable,
                "canary": table.canaries().collect::<Vec<_>>(),
                "shadow": table.shadow,
            },
            "rollout": self.rollout_view(),
        })
    }
}

fn interface_matches(got: &[TensorSpec], want: &[TensorSpec], what: &str) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "it has {} {what}s where {} are served",
            got.len(),
            want.len()
        ));
    }
    for w in want {
        let Some(g) = got.iter().find(|g| g.name == w.name) else {
            return Err(format!("it has no {what} '{}'", w.name));
        };
        if g.datatype != w.datatype || g.shape != w.shape {
            return Err(format!(
                "its {what} '{}' is {} {:?} where {} {:?} is served",
                w.name, g.datatype, g.shape, w.datatype, w.shape
            ));
        }
    }
    Ok(())
}
