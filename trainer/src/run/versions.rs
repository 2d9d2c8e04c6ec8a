//! What the loop reads of published versions: the stable one, and each
//! version's manifest and training reference (read once: a version never
//! changes after its manifest is written).

use std::sync::Arc;

use quiver_contract::manifest::Manifest;
use quiver_registry::control;

use super::Trainer;
use crate::monitor::psi::Reference;
use crate::publish::{self, REFERENCE_FILE};

/// What the trainer reads of a published version, kept once read.
#[derive(Debug, Default)]
pub(super) struct VersionFiles {
    pub manifest: Option<Manifest>,
    pub reference: Option<Reference>,
}

impl Trainer {
    /// The routing state's stable version, else the newest published one.
    pub(super) fn stable_version(&self, model: &str) -> Option<u64> {
        control::read_routing(&self.registry, model)
            .map_err(|e| tracing::warn!(model, error = %e, "cannot read the routing state"))
            .ok()
            .and_then(|(r, _)| r.stable)
            .or_else(|| {
                control::versions(&self.registry, model)
                    .map_err(|e| tracing::warn!(model, error = %e, "cannot list versions"))
                    .ok()
                    .and_then(|(published, _)| published.last().copied())
            })
    }

    /// A published version's manifest and training reference, read from
    /// the registry once (a failed read is tried again next time).
    pub(super) fn version_files(&mut self, model: &str, version: u64) -> Arc<VersionFiles> {
        let key = (model.to_string(), version);
        if let Some(files) = self.versions.get(&key) {
            return files.clone();
        }
        let Some(manifest) = publish::read_manifest(&self.registry, model, version) else {
            return Arc::default();
        };
        let reference = match publish::read_file(&self.registry, model, version, REFERENCE_FILE) {
            Ok(bytes) => bytes.and_then(|b| serde_json::from_slice::<Reference>(&b).ok()),
            Err(e) => {
                tracing::warn!(model, version, error = %e, "cannot read the training reference");
                return Arc::new(VersionFiles {
                    manifest: Some(manifest),
                    reference: None,
                });
            }
        };
        let files = Arc::new(VersionFiles {
            manifest: Some(manifest),
            reference,
        });
        self.versions.insert(key, files.clone());
        files
    }
}
