//! The dashboard's JSON document (`GET /dashboard/api/v1/state`), built
//! from the live set, the charts' rings, the guardrail's last comparison
//! and the registry's manifests and run records. Its shape is documented
//! in `docs/dashboard.md`; scripts may rely on it (`schema` changes when
//! a field changes meaning or goes away).

use serde_json::{Value, json};

use super::catalog::{Catalog, ModelCatalog};
use super::guardrail;
use super::ring::{Rings, Sample};
use crate::live::{LiveModels, ModelEntry, VersionState};

/// The document's schema.
pub const SCHEMA: u32 = 1;

/// The whole document; `window_ms` of chart samples before `now_ms`, and
/// of those only the ones after `since_ms`.
pub fn state(
    live: &LiveModels,
    rings: &Rings,
    catalog: &Catalog,
    now_ms: u64,
    window_ms: u64,
    since_ms: Option<u64>,
) -> Value {
    let empty = ModelCatalog::default();
    let since = now_ms.saturating_sub(window_ms).max(since_ms.unwrap_or(0));
    let models: Vec<Value> = live
        .models
        .iter()
        .map(|(name, entry)| {
            let cat = catalog.models.get(name).unwrap_or(&empty);
            let online = |v: u64| match &catalog.trainer {
                Some(Ok(q)) => q.get(&(name.clone(), v)).map(|o| json!(o)),
                _ => None,
            };
            model(name, entry, rings, cat, &online, since)
        })
        .collect();
    json!({
        "schema": SCHEMA,
        "now_ms": now_ms,
        "sample_interval_ms": super::SAMPLE_INTERVAL.as_millis() as u64,
        "window_ms": window_ms,
        "since_ms": since_ms,
        "loaded": live.loaded,
        "trainer": match &catalog.trainer {
            None => json!({"configured": false, "error": null}),
            Some(Ok(_)) => json!({"configured": true, "error": null}),
            Some(Err(e)) => json!({"configured": true, "error": e}),
        },
        "models": models,
    })
}

fn model(
    name: &str,
    entry: &ModelEntry,
    rings: &Rings,
    cat: &ModelCatalog,
    online: &dyn Fn(u64) -> Option<Value>,
    since: u64,
) -> Value {
    let routing = &entry.routing;
    let canary_weight = |v: u64| {
        entry
            .table
            .canaries()
            .any(|c| c == v)
            .then(|| routing.canary.get(&v).copied())
            .flatten()
    };
    let mut numbers: Vec<u64> = entry.versions.keys().copied().collect();
    for v in rings.versions(name) {
        if !numbers.contains(&v) {
            numbers.push(v);
        }
    }
    numbers.sort_unstable();
    let versions: Vec<Value> = numbers
        .iter()
        .map(|&v| {
            let e = entry.versions.get(&v);
            let (state, reason) = match e {
                Some(e) => (
                    match e.state {
                        VersionState::Ready => "ready",
                        VersionState::Loading => "loading",
                        VersionState::Unavailable => "failed",
                    },
                    e.reason.clone(),
                ),
                None => ("removed", None),
            };
            let weight = canary_weight(v);
            let role = if entry.table.stable == Some(v) {
                "stable"
            } else if weight.is_some() {
                "canary"
            } else if entry.table.shadow.contains(&v) {
                "shadow"
            } else if routing.rolled_back.contains(&v) {
                "rolled_back"
            } else {
                "none"
            };
            let served = e.and_then(|e| e.served.as_ref());
            let totals = served.map(|s| s.metrics.dashboard.totals(&s.metrics.totals));
            let shadow = totals
                .as_ref()
                .filter(|t| t.shadow_agree + t.shadow_disagree > 0)
                .map(|t| {
                    json!({
                        "agree": t.shadow_agree,
                        "disagree": t.shadow_disagree,
                        "agreement": t.shadow_agree as f64 / (t.shadow_agree + t.shadow_disagree) as f64,
                    })
                });
            let manifest = cat.manifests.get(&v);
            json!({
                "version": v,
                "state": state,
                "reason": reason,
                "role": role,
                "weight": weight,
                "requests": totals.as_ref().map(|t| t.requests.requests),
                "errors": totals.as_ref().map(|t| t.requests.errors),
                "shadow": shadow,
                "online": online(v),
                "manifest": manifest.map(|m| json!({
                    "created_at": m.created_at,
                    "lineage": m.lineage,
                    "metrics": m.metrics,
                    "parity_max_abs": m.parity_max_abs,
                })),
                "run": manifest.and_then(|m| m.lineage.as_ref()).and_then(|l| l.run.clone()),
                "series": series(&rings.samples(name, v, since)),
            })
        })
        .collect();
    let running = entry.rollout.get("running").filter(|r| !r.is_null());
    let check = running.and_then(|r| {
        let canary = r.get("canary")?.as_u64()?;
        let step = r.get("step")?.as_u64()?;
        guardrail::last(name, canary, step as usize)
    });
    let runs: Vec<&quiver_contract::runs::RunRecord> = cat.runs.values().collect();
    json!({
        "name": name,
        "problem": entry.problem,
        "unloaded": entry.unloaded,
        "routing": {
            "stable": entry.table.stable,
            "canary": entry.table.canaries()
                .map(|v| json!({"version": v, "weight": routing.canary.get(&v)}))
                .collect::<Vec<_>>(),
            "shadow": entry.table.shadow,
            "rolled_back": routing.rolled_back,
            "step": routing.step,
            "steps": routing.steps,
            "updated_by": routing.updated_by,
            "updated_at": routing.updated_at,
            "reason": routing.reason,
        },
        "rollout": {
            "enabled": entry.rollout.get("enabled"),
            "steps": entry.rollout.get("steps"),
            "running": running,
            "guardrail": check,
        },
        "history": routing.history,
        "versions": versions,
        "runs": runs,
        "registry_problems": cat.problems,
    })
}

/// Samples as columns: one array per measure, aligned on `t_ms`.
fn series(samples: &[Sample]) -> Value {
    json!({
        "t_ms": samples.iter().map(|s| s.t_ms).collect::<Vec<_>>(),
        "rps": samples.iter().map(|s| s.rps).collect::<Vec<_>>(),
        "errors_ps": samples.iter().map(|s| s.errors_ps).collect::<Vec<_>>(),
        "p50_ms": samples.iter().map(|s| s.p50_ms).collect::<Vec<_>>(),
        "p99_ms": samples.iter().map(|s| s.p99_ms).collect::<Vec<_>>(),
        "batch_mean": samples.iter().map(|s| s.batch_mean).collect::<Vec<_>>(),
        "queue_depth": samples.iter().map(|s| s.queue_depth).collect::<Vec<_>>(),
    })
}
