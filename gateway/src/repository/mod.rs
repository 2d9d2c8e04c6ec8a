//! The model repository as the manager sees it: `<model>/<version>/model.onnx`
//! (version a positive integer), an optional `<model>/config.toml` holding
//! the same keys as `[models]` in the gateway config plus
//! `[[input]]`/`[[output]]` overrides of what the ONNX graph declares, and
//! `<model>/routing.json`.
//!
//! It lives in a local directory or an object store (`quiver-registry`).
//! A directory is read whole at every poll, as cheap as a few `stat`s, so
//! files copied in by hand are found. An object store is polled with one
//! conditional GET of the registry index; a model's folder is listed only
//! when its revision moved, and the whole registry only every
//! `full_scan_interval` (to find versions uploaded by hand). Versions in an
//! object store are downloaded into a local cache and checked against
//! their manifest before loading.

pub mod config;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quiver_contract::fleet::{INDEX_FILE, RegistryIndex};
use quiver_contract::layout;
pub use quiver_contract::layout::{CONFIG_FILE, MANIFEST_FILE, MODEL_FILE};
use quiver_contract::manifest::{Manifest, sha256_bytes};
use quiver_registry::control::{self, ModelListing};
use quiver_registry::{Entry, Fresh, Registry, RegistryError, Tag};
use serde::Deserialize;

use crate::model_settings::{ModelDefaults, validate_model_settings};

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("cannot read model repository {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Size and a change tag of a file (modification time locally, the ETag on
/// an object store): a change in either means the file changed. Cheap
/// enough to take for every file at every poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub tag: u64,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        let tag = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Some(FileStamp {
            len: meta.len(),
            tag,
        })
    }

    fn of_entry(e: &Entry) -> FileStamp {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        e.tag.0.hash(&mut h);
        FileStamp {
            len: e.size,
            tag: h.finish(),
        }
    }
}

/// What a version directory holds now; equal fingerprints mean nothing in
/// it changed since the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub model: FileStamp,
    pub manifest: Option<FileStamp>,
}

/// Where a version's files are.
#[derive(Debug, Clone)]
pub enum VersionSource {
    /// A directory of the local repository, read in place.
    Local(PathBuf),
    /// An object store: downloaded into `cache` before loading.
    Remote { registry: Registry, cache: PathBuf },
}

/// A version directory with a model file.
#[derive(Debug, Clone)]
pub struct VersionDir {
    pub version: u64,
    pub source: VersionSource,
    pub fingerprint: Fingerprint,
}

/// A model directory as found in the repository.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub name: String,
    /// Ascending by version.
    pub versions: Vec<VersionDir>,
    pub config: Option<FileStamp>,
    pub routing: Option<FileStamp>,
}

/// The repository and what the last polls found.
pub struct Repository {
    registry: Registry,
    cache_dir: PathBuf,
    full_scan_interval: Option<Duration>,
    /// Object stores: the index as last read, and each model's listing.
    index_tag: Option<Tag>,
    revisions: BTreeMap<String, u64>,
    listings: BTreeMap<String, ModelListing>,
    last_full_scan: Option<Instant>,
}

impl Repository {
    pub fn new(
        registry: Registry,
        cache_dir: PathBuf,
        full_scan_interval: Option<Duration>,
    ) -> Self {
        Repository {
            registry,
            cache_dir,
            full_scan_interval,
            index_tag: None,
            revisions: BTreeMap::new(),
            listings: BTreeMap::new(),
            last_full_scan: None,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn is_local(&self) -> bool {
        self.registry.local_root().is_some()
    }

    /// Every model, or `None` when an object store's index says nothing
    /// changed since the last poll (one conditional GET, nothing listed).
    /// `full` lists the whole registry whatever the index says.
    pub fn poll(&mut self, full: bool) -> Result<Option<Vec<ModelDir>>, RepositoryError> {
        if let Some(root) = self.registry.local_root() {
            return scan(root).map(Some);
        }
        let due = self
            .full_scan_interval
            .is_some_and(|every| self.last_full_scan.is_none_or(|t| t.elapsed() >= every));
        let index = self
            .registry
            .get_if_changed(INDEX_FILE, self.index_tag.as_ref())?;
        // The tag read now is kept only once the listings it asks for
        // succeeded: a failed poll leaves the change to the next one.
        let (tag, revisions) = match index {
            Fresh::Changed(doc) => {
                // An unreadable index is only a lost change signal: list.
                let revisions = RegistryIndex::parse(&doc.bytes).ok().map(|i| i.models);
                (Some(doc.tag), revisions)
            }
            // No index (a store filled by hand): listed at the first poll,
            // when the index goes away, and every full-scan interval; never
            // at every poll.
            Fresh::Missing => {
                if !(self.index_tag.is_some() || full || due) {
                    return Ok(None);
                }
                (None, None)
            }
            Fresh::Unchanged if !(full || due) => return Ok(None),
            Fresh::Unchanged => (self.index_tag.clone(), Some(self.revisions.clone())),
        };
        match revisions {
            Some(revs) if !(full || due) => {
                let moved: Vec<String> = revs
                    .iter()
                    .filter(|(m, r)| self.revisions.get(*m) != Some(r))
                    .map(|(m, _)| m.clone())
                    .collect();
                for model in moved {
                    let mut listing = control::group(self.registry.list(&model)?);
                    match listing.remove(&model) {
                        Some(l) => self.listings.insert(model, l),
                        None => self.listings.remove(&model),
                    };
                }
                self.revisions = revs;
            }
            revs => {
                self.listings = control::group(self.registry.list("")?);
                self.last_full_scan = Some(Instant::now());
                if let Some(r) = revs {
                    self.revisions = r;
                }
            }
        }
        self.index_tag = tag;
        Ok(Some(
            self.listings
                .iter()
                .map(|(name, l)| self.remote_dir(name, l))
                .collect(),
        ))
    }

    /// One model, read now (after an admin action).
    pub fn model(&mut self, name: &str) -> Result<Option<ModelDir>, RepositoryError> {
        if let Some(root) = self.registry.local_root() {
            if !root.join(name).is_dir() {
                return Ok(None);
            }
            return scan_model(root, name).map(Some);
        }
        let mut listing = control::group(self.registry.list(name)?);
        let found = listing.remove(name);
        match &found {
            Some(l) => self.listings.insert(name.to_string(), l.clone()),
            None => self.listings.remove(name),
        };
        Ok(found.map(|l| self.remote_dir(name, &l)))
    }

    fn remote_dir(&self, name: &str, l: &ModelListing) -> ModelDir {
        let versions = l
            .versions
            .iter()
            .filter_map(|(&version, files)| {
                // Only a written manifest makes a version visible, and only
                // a changed manifest makes it load again.
                let manifest = FileStamp::of_entry(files.get(MANIFEST_FILE)?);
                files.get(MODEL_FILE)?;
                Some(VersionDir {
                    version,
                    source: VersionSource::Remote {
                        registry: self.registry.clone(),
                        cache: self.cache_dir.join(name),
                    },
                    fingerprint: Fingerprint {
                        model: manifest,
                        manifest: Some(manifest),
                    },
                })
            })
            .collect();
        ModelDir {
            name: name.to_string(),
            versions,
            config: l.config.as_ref().map(FileStamp::of_entry),
            routing: l.routing.as_ref().map(FileStamp::of_entry),
        }
    }

    /// The text of `<model>/config.toml`, `None` when there is none.
    pub fn read_config(&self, model: &str) -> Result<Option<String>, RepositoryError> {
        let key = control::config_key(model);
        match self.registry.get(&key)? {
            None => Ok(None),
            Some(doc) => {
                String::from_utf8(doc.bytes)
                    .map(Some)
                    .map_err(|_| RepositoryError::Config {
                        path: key.into(),
                        message: "not UTF-8".into(),
                    })
            }
        }
    }
}

impl VersionDir {
    /// The version's files on local disk, checked against the manifest
    /// (downloaded first from an object store): the directory and the
    /// manifest's path, if any.
    pub fn materialize(&self, model: &str) -> Result<(PathBuf, Option<PathBuf>), String> {
        match &self.source {
            VersionSource::Local(dir) => Ok((
                dir.clone(),
                self.fingerprint.manifest.map(|_| dir.join(MANIFEST_FILE)),
            )),
            VersionSource::Remote { registry, cache } => {
                download(registry, cache, model, self.version).map(|dir| {
                    let manifest = dir.join(MANIFEST_FILE);
                    (dir, Some(manifest))
                })
            }
        }
    }
}

/// Downloads a version into `<cache>/<version>-<manifest hash>/` unless a
/// checked copy is already there; other copies of the version go.
fn download(
    registry: &Registry,
    cache: &Path,
    model: &str,
    version: u64,
) -> Result<PathBuf, String> {
    let key = control::version_key(model, version, MANIFEST_FILE);
    let bytes = registry
        .get(&key)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{key} disappeared"))?
        .bytes;
    let manifest =
        Manifest::parse(&bytes, &key, Some((model, version))).map_err(|e| e.to_string())?;
    if !manifest.sha256.contains_key(MODEL_FILE) {
        return Err(format!("{key} lists no checksum for {MODEL_FILE}"));
    }
    let hash = sha256_bytes(&bytes);
    let name = format!("{version}-{}", &hash[..16]);
    let dir = cache.join(&name);
    if manifest.verify(&dir).is_ok() && dir.join(MANIFEST_FILE).is_file() {
        return Ok(dir);
    }
    let tmp = cache.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let io = |e: std::io::Error| format!("cache {}: {e}", tmp.display());
    std::fs::create_dir_all(&tmp).map_err(io)?;
    let result = (|| {
        for file in manifest.sha256.keys() {
            registry
                .download(&control::version_key(model, version, file), &tmp.join(file))
                .map_err(|e| e.to_string())?;
        }
        manifest.verify(&tmp).map_err(|e| e.to_string())?;
        layout::write_atomic(&tmp.join(MANIFEST_FILE), &bytes).map_err(io)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    // Older downloads of this version (its manifest changed) go.
    if let Ok(rd) = std::fs::read_dir(cache) {
        let prefix = format!("{version}-");
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) && n != name {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(dir)
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
fn scan(root: &Path) -> Result<Vec<ModelDir>, RepositoryError> {
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
fn scan_model(root: &Path, name: &str) -> Result<ModelDir, RepositoryError> {
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
            source: VersionSource::Local(dir),
        });
    }
    versions.sort_by_key(|v| v.version);
    Ok(ModelDir {
        name: name.to_string(),
        config: FileStamp::of(&path.join(CONFIG_FILE)),
        routing: FileStamp::of(&path.join(layout::ROUTING_FILE)),
        versions,
    })
}

fn read_dir(path: &Path) -> Result<std::fs::ReadDir, RepositoryError> {
    std::fs::read_dir(path).map_err(|source| RepositoryError::Read {
        path: path.into(),
        source,
    })
}

/// Reads a model's `config.toml` text over `defaults`; none means the
/// defaults.
pub fn load_model_config(
    model: &str,
    text: Option<&str>,
    defaults: &ModelDefaults,
) -> Result<ModelConfig, RepositoryError> {
    let path = PathBuf::from(model).join(CONFIG_FILE);
    let Some(text) = text else {
        return Ok(ModelConfig {
            settings: defaults.clone(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        });
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
    use crate::model_settings::VersionPolicy;

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
        let text = "max_batch_size = 8\nversion_policy = \"all\"\n[[input]]\nname = \"x\"\nshape = [-1, 4]\n";
        let cfg = load_model_config("m", Some(text), &ModelDefaults::default()).unwrap();
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
        let mut defaults = ModelDefaults::default();
        defaults.rollout.min_requests = 7;
        let cfg = load_model_config("m", Some("[rollout]\nenabled = true\n"), &defaults).unwrap();
        assert!(cfg.settings.rollout.enabled);
        assert_eq!(cfg.settings.rollout.min_requests, 7);
    }

    #[test]
    fn model_config_rejects_unknown_keys() {
        let err =
            load_model_config("m", Some("max_batch = 8\n"), &ModelDefaults::default()).unwrap_err();
        assert!(err.to_string().contains("max_batch"), "{err}");
    }
}
