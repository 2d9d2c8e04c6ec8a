//! The hot-swap scenario: while an open-loop run goes on, publish new
//! versions of the model into the gateway's repository the way the trainer
//! does (`model.onnx` first, `manifest.json` last by atomic rename), and
//! optionally ask the gateway to load it at once through the admin API.
//! The run's requests are then split into "during a swap" and "steady".

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use quiver_contract::layout;
use quiver_contract::manifest::{Manifest, sha256_bytes};

use crate::driver::Sample;
use crate::result::SwapEvent;

/// What to publish, and when.
#[derive(Debug, Clone)]
pub struct SwapPlan {
    /// The gateway's model repository.
    pub repository: PathBuf,
    pub model: String,
    /// The `.onnx` file each new version is a copy of.
    pub source: PathBuf,
    pub count: u32,
    /// Time between swaps; the first comes one interval after warm-up.
    pub every: Duration,
    /// Admin token for `POST /v2/repository/models/{m}/load`; without one
    /// the gateway's repository watcher is relied on.
    pub admin_token: Option<String>,
}

/// The highest version directory of `model` (0 when there is none).
pub fn latest_version(repository: &Path, model: &str) -> Result<u64> {
    let dir = repository.join(model);
    let mut latest = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        if let Some(v) = entry?.file_name().to_str().and_then(layout::parse_version) {
            latest = latest.max(v);
        }
    }
    Ok(latest)
}

/// Publishes `onnx` as `version` of `model` the way the trainer does,
/// through the contract crate: `model.onnx` first, then a `manifest.json`
/// carrying its checksum, each written atomically, so a watcher never sees
/// a manifest before the model it describes.
pub fn publish(repository: &Path, model: &str, version: u64, onnx: &[u8]) -> Result<()> {
    let dir = layout::version_dir(repository, model, version);
    std::fs::create_dir_all(&dir)?;
    layout::write_atomic(&dir.join(layout::MODEL_FILE), onnx)?;
    let mut manifest = Manifest::new(model, version);
    manifest
        .sha256
        .insert(layout::MODEL_FILE.into(), sha256_bytes(onnx));
    layout::write_atomic(&dir.join(layout::MANIFEST_FILE), &manifest.to_json())?;
    Ok(())
}

/// Runs the swaps of `plan` against the gateway at `addr`, starting at
/// `start + warmup`. Returns each swap's version, publish time and (if a
/// token was given) the admin API's status.
pub async fn run(
    plan: SwapPlan,
    addr: SocketAddr,
    start: Instant,
    warmup: Duration,
) -> Result<Vec<(u64, Duration, Option<u16>)>> {
    let onnx = std::fs::read(&plan.source)
        .with_context(|| format!("reading {}", plan.source.display()))?;
    let base = latest_version(&plan.repository, &plan.model)?;
    let mut events = Vec::new();
    for k in 1..=plan.count {
        tokio::time::sleep_until((start + warmup + plan.every * k).into()).await;
        let version = base + u64::from(k);
        let repo = plan.repository.clone();
        let model = plan.model.clone();
        let bytes = onnx.clone();
        // File writes are blocking; keep them off the workers sending load.
        tokio::task::spawn_blocking(move || publish(&repo, &model, version, &bytes)).await??;
        let at = start.elapsed();
        let status = match &plan.admin_token {
            Some(token) => {
                let path = format!("/v2/repository/models/{}/load", plan.model);
                let auth = [("authorization", format!("Bearer {token}"))];
                crate::http::send(addr, "POST", &path, &auth, Bytes::new())
                    .await
                    .ok()
                    .map(|r| r.status)
            }
            None => None,
        };
        events.push((version, at, status));
    }
    Ok(events)
}

/// Pairs each publish with the first answer that came from its version.
pub fn events(published: &[(u64, Duration, Option<u16>)], samples: &[Sample]) -> Vec<SwapEvent> {
    published
        .iter()
        .map(|&(version, at, load_status)| SwapEvent {
            version,
            published_s: at.as_secs_f64(),
            first_answer_s: samples
                .iter()
                .filter(|s| s.outcome.stages.version.map(u64::from) == Some(version))
                .map(|s| s.done)
                .min()
                .map(|d| d.as_secs_f64()),
            load_status,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Outcome, Stages, Status};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("quiver-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn publish_writes_the_model_then_the_manifest() {
        let repo = scratch("publish");
        std::fs::create_dir_all(repo.join("m/1")).unwrap();
        std::fs::create_dir_all(repo.join("m/notes")).unwrap();
        assert_eq!(latest_version(&repo, "m").unwrap(), 1);
        publish(&repo, "m", 2, b"onnx bytes").unwrap();
        assert_eq!(
            std::fs::read(repo.join("m/2/model.onnx")).unwrap(),
            b"onnx bytes"
        );
        // The gateway's own reader accepts it, checksum included.
        let manifest = Manifest::read(&repo.join("m/2/manifest.json"), Some(("m", 2))).unwrap();
        manifest.verify(&repo.join("m/2")).unwrap();
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(repo.join("m/2")).unwrap().count(), 2);
        assert_eq!(latest_version(&repo, "m").unwrap(), 2);
        let _ = std::fs::remove_dir_all(&repo);
    }

    #[test]
    fn first_answer_is_matched_by_version() {
        let s = |done_ms: u64, version: u32| Sample {
            due: Duration::ZERO,
            sent: Duration::ZERO,
            done: Duration::from_millis(done_ms),
            outcome: Outcome {
                status: Status::Answered(200),
                stages: Stages {
                    version: Some(version),
                    ..Stages::default()
                },
            },
        };
        let samples = [s(100, 1), s(300, 2), s(250, 2), s(400, 1)];
        let published = [
            (2, Duration::from_millis(200), Some(200)),
            (3, Duration::from_millis(350), None),
        ];
        let ev = events(&published, &samples);
        assert_eq!(ev[0].first_answer_s, Some(0.25));
        assert_eq!(ev[0].load_status, Some(200));
        assert_eq!(ev[1].first_answer_s, None);
    }
}
