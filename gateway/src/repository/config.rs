//! `[repository]`: where the models live and how the registry is watched.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::InvalidSetting;

/// `[repository]`: the model registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepositoryConfig {
    /// The model registry: a local directory, or `s3://bucket/prefix` on any
    /// S3-compatible store. Layout: `<model>/<version>/model.onnx`.
    pub path: Option<String>,
    /// How often the repository is read for new, changed and removed
    /// versions, config and routing files, in ms; 0 turns watching off
    /// (then only the repository API loads and unloads). On an object
    /// store a poll is one conditional GET of the registry index.
    pub poll_interval_ms: u64,
    /// Object stores: how often the whole registry is also listed, in ms,
    /// to find versions uploaded by hand without updating the index
    /// (Quiver's own publishers always update it); 0 turns it off.
    pub full_scan_interval_ms: u64,
    /// Object stores: where versions are downloaded and checked before
    /// loading; kept across restarts (a version whose manifest did not
    /// change is not downloaded again).
    pub cache_dir: PathBuf,
    /// Versions loading at once. Each load runs on its own thread, never on
    /// a serving thread; the cap bounds the CPU and memory taken from them.
    pub max_concurrent_loads: usize,
    /// How much lower than the serving threads a load's heavy part
    /// (checksums, ONNX Runtime session, batching probe, warm-up) runs: a
    /// nice increment, 0 to 19, so serving keeps the CPU during a hot
    /// swap. 0 loads at the serving threads' priority. A model with
    /// `intra_op_threads` other than 1 always loads at full priority
    /// (ONNX Runtime starts its thread pool during the load, and those
    /// threads serve).
    pub load_niceness: u8,
    /// Serve only versions that have a `manifest.json` (written last, with
    /// checksums). Off, a version without one is taken once its
    /// `model.onnx` has stayed unchanged for one poll interval. Object
    /// stores always require it.
    pub require_manifest: bool,
    /// Object stores: settings that override the standard `AWS_*`
    /// environment variables.
    pub s3: S3Config,
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            path: None,
            poll_interval_ms: 1000,
            full_scan_interval_ms: 60_000,
            cache_dir: std::env::temp_dir().join("quiver-cache"),
            max_concurrent_loads: 1,
            load_niceness: 19,
            require_manifest: false,
            s3: S3Config::default(),
        }
    }
}

/// `[repository.s3]`: each key left out falls back to its `AWS_*`
/// environment variable, as every S3 tool reads them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint of an on-prem or other S3-compatible store
    /// (`AWS_ENDPOINT_URL`), e.g. `http://minio:9000`.
    pub endpoint: Option<String>,
    /// Region (`AWS_REGION`).
    pub region: Option<String>,
    /// Allow a plain-HTTP endpoint (`AWS_ALLOW_HTTP`).
    pub allow_http: Option<bool>,
    /// Name of the environment variable holding the access key id
    /// (default `AWS_ACCESS_KEY_ID`); the key itself never goes here.
    pub access_key_id_env: Option<String>,
    /// Name of the environment variable holding the secret access key
    /// (default `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key_env: Option<String>,
    /// Per-request timeout in ms, retries included.
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct RepositorySettings {
    /// A local directory or `s3://bucket/prefix`.
    pub path: String,
    pub s3: quiver_registry::S3Settings,
    /// `None`: no full listings.
    pub full_scan_interval: Option<Duration>,
    pub cache_dir: PathBuf,
    /// `None`: no watching.
    pub poll_interval: Option<Duration>,
    pub max_concurrent_loads: usize,
    pub load_niceness: i32,
    pub require_manifest: bool,
}

impl RepositoryConfig {
    pub fn validate(self) -> Result<RepositorySettings, InvalidSetting> {
        let path = self.path.ok_or(InvalidSetting::new(
            "repository.path",
            "no model repository given (use --model-repository DIR or s3://BUCKET/PREFIX)",
        ))?;
        if self.max_concurrent_loads == 0 {
            return Err(InvalidSetting::new(
                "repository.max_concurrent_loads",
                "must be at least 1",
            ));
        }
        if self.load_niceness > 19 {
            return Err(InvalidSetting::new(
                "repository.load_niceness",
                "must be between 0 and 19",
            ));
        }
        let s3c = self.s3;
        let s3 = quiver_registry::S3Settings {
            endpoint: s3c.endpoint,
            region: s3c.region,
            allow_http: s3c.allow_http,
            access_key_id_env: s3c.access_key_id_env,
            secret_access_key_env: s3c.secret_access_key_env,
            timeout: s3c.timeout_ms.map(Duration::from_millis),
            credentials: None,
        };
        let every = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Ok(RepositorySettings {
            path,
            s3,
            full_scan_interval: every(self.full_scan_interval_ms),
            cache_dir: self.cache_dir,
            poll_interval: every(self.poll_interval_ms),
            max_concurrent_loads: self.max_concurrent_loads,
            load_niceness: i32::from(self.load_niceness),
            require_manifest: self.require_manifest,
        })
    }
}
