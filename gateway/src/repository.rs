//! The model repository on disk: `<root>/<model>/<version>/model.onnx`
//! (version a positive integer) and an optional `<root>/<model>/config.toml`
//! holding the same keys as `[models]` in the gateway config, plus
//! `[[input]]`/`[[output]]` overrides of what the ONNX graph declares.

use std::path::{Path, PathBuf};

use quiver_contract::layout;
pub use quiver_contract::layout::{CONFIG_FILE, MANIFEST_FILE, MODEL_FILE};
use serde::Deserialize;

use crate::config::{ModelDefaults, validate_model_settings};

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("cannot read model repository {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {path}: {message}")]
    Config { path: PathBuf, message: String },
}

/// Size and modification time of a file: a change in either means the
/// file changed. Cheap enough to take for every file at every poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        Some(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// What a version directory holds now; equal fingerprints mean nothing in
/// it changed since the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub model: FileStamp,
    pub manifest: Option<FileStamp>,
}

/// A version directory with a model file.
#[derive(Debug, Clone)]
pub struct VersionDir {
    pub version: u64,
    pub dir: PathBuf,
    pub fingerprint: Fingerprint,
}

impl VersionDir {
    pub fn model_file(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }

    pub fn manifest_file(&self) -> Option<PathBuf> {
        self.fingerprint
            .manifest
            .map(|_| self.dir.join(MANIFEST_FILE))
    }
}

/// A model directory as found on disk.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub name: String,
    pub path: PathBuf,
    /// Ascending by version.
    pub versions: Vec<VersionDir>,
    pub config: Option<FileStamp>,
    pub routing: Option<FileStamp>,
}

/// Declares (or narrows) an input or output of the ONNX graph.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TensorOverride {
    /// The tensor's name in the graph.
    pub name: String,
    /// Its datatype in protocol spelling; must match the graph.
    #[serde(default)]
    pub datatype: Option<String>,
    /// Its shape, -1 for a dynamic dimension; may pin dimensions the graph
    /// leaves dynamic, never contradict fixed ones.
    #[serde(default)]
    pub shape: Option<Vec<i64>>,
}

/// A model's resolved serving config.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub settings: ModelDefaults,
    pub inputs: Vec<TensorOverride>,
    pub outputs: Vec<TensorOverride>,
}

/// Lists the models under `root`; directories without any version are
/// listed with no versions (so the index can show them).
pub fn scan(root: &Path) -> Result<Vec<ModelDir>, RepositoryError> {
    let mut models = Vec::new();
    for entry in read_dir(root)?.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        // A model removed between the two reads is simply not listed.
        if let Ok(model) = scan_model(root, &name) {
            models.push(model);
        }
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

/// Reads one model directory.
pub fn scan_model(root: &Path, name: &str) -> Result<ModelDir, RepositoryError> {
    let path = root.join(name);
    let mut versions = Vec::new();
    for v in read_dir(&path)?.flatten() {
        let Some(version) = v.file_name().to_str().and_then(layout::parse_version) else {
            continue;
        };
        let dir = v.path();
        let Some(model) = FileStamp::of(&dir.join(MODEL_FILE)) else {
            continue;
        };
        versions.push(VersionDir {
            version,
            fingerprint: Fingerprint {
                model,
                manifest: FileStamp::of(&dir.join(MANIFEST_FILE)),
            },
            dir,
        });
    }
    versions.sort_by_key(|v| v.version);
    Ok(ModelDir {
        name: name.to_string(),
        config: FileStamp::of(&path.join(CONFIG_FILE)),
        routing: FileStamp::of(&path.join(layout::ROUTING_FILE)),
        path,
        versions,
    })
}

fn read_dir(path: &Path) -> Result<std::fs::ReadDir, RepositoryError> {
    std::fs::read_dir(path).map_err(|source| RepositoryError::Read {
        path: path.into(),
        source,
    })
}

/// Reads `<model>/config.toml` over `defaults`; no file means the defaults.
pub fn load_model_config(
    model_dir: &Path,
    defaults: &ModelDefaults,
) -> Result<ModelConfig, RepositoryError> {
    let path = model_dir.join(CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ModelConfig {
                settings: defaults.clone(),
                inputs: Vec::new(),
                outputs: Vec::new(),
            });
        }
        Err(source) => return Err(RepositoryError::Read { path, source }),
    };
    let invalid = |message: String| RepositoryError::Config {
        path: path.clone(),
        message,
    };
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
    let overrides =
        |table: &mut toml::Table, key: &str| -> Result<Vec<TensorOverride>, RepositoryError> {
            match table.remove(key) {
                None => Ok(Vec::new()),
                Some(v) => v
                    .try_into()
                    .map_err(|e: toml::de::Error| invalid(format!("[[{key}]]: {e}"))),
            }
        };
    let inputs = overrides(&mut table, "input")?;
    let outputs = overrides(&mut table, "output")?;
    let toml::Value::Table(mut merged) =
        toml::Value::try_from(defaults).map_err(|e| invalid(e.to_string()))?
    else {
        return Err(invalid("defaults did not serialise to a table".into()));
    };
    // One level deep, so `[rollout]` in a model's file overrides single
    // keys of the gateway's `[models.rollout]`, not the whole table.
    for (key, value) in table {
        match (merged.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => base.extend(over),
            (_, value) => {
                merged.insert(key, value);
            }
        }
    }
    let settings: ModelDefaults = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
    validate_model_settings(&settings)
        .map_err(|(key, message)| invalid(format!("{key}: {message}")))?;
    Ok(ModelConfig {
        settings,
        inputs,
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VersionPolicy;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("quiver-repo-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn scan_finds_numbered_versions_with_a_model_file() {
        let root = tempdir("scan");
        for v in ["1", "3", "0", "x", "2"] {
            std::fs::create_dir_all(root.join("m").join(v)).unwrap();
        }
        for v in ["1", "3", "0", "x"] {
            std::fs::write(root.join("m").join(v).join(MODEL_FILE), b"").unwrap();
        }
        std::fs::write(root.join("README"), b"").unwrap();
        let models = scan(&root).unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(
            models[0]
                .versions
                .iter()
                .map(|v| v.version)
                .collect::<Vec<_>>(),
            vec![1, 3]
        );
    }

    #[test]
    fn model_config_overrides_defaults_and_reads_tensors() {
        let root = tempdir("cfg");
        std::fs::write(
            root.join(CONFIG_FILE),
            "max_batch_size = 8\nversion_policy = \"all\"\n[[input]]\nname = \"x\"\nshape = [-1, 4]\n",
        )
        .unwrap();
        let cfg = load_model_config(&root, &ModelDefaults::default()).unwrap();
        assert_eq!(cfg.settings.max_batch_size, 8);
        assert_eq!(
            cfg.settings.max_queue_size,
            ModelDefaults::default().max_queue_size
        );
        assert_eq!(cfg.settings.version_policy, VersionPolicy::All);
        assert_eq!(cfg.inputs[0].shape, Some(vec![-1, 4]));
    }

    #[test]
    fn a_partial_rollout_table_keeps_the_other_defaults() {
        let root = tempdir("rollout");
        std::fs::write(root.join(CONFIG_FILE), "[rollout]\nenabled = true\n").unwrap();
        let mut defaults = ModelDefaults::default();
        defaults.rollout.min_requests = 7;
        let cfg = load_model_config(&root, &defaults).unwrap();
        assert!(cfg.settings.rollout.enabled);
        assert_eq!(cfg.settings.rollout.min_requests, 7);
    }

    #[test]
    fn model_config_rejects_unknown_keys() {
        let root = tempdir("bad");
        std::fs::write(root.join(CONFIG_FILE), "max_batch = 8\n").unwrap();
        let err = load_model_config(&root, &ModelDefaults::default()).unwrap_err();
        assert!(err.to_string().contains("max_batch"), "{err}");
    }
}
