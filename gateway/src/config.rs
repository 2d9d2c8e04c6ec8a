//! The gateway's one configuration file (TOML), environment overrides with
//! the `QUIVER_` prefix, and `validate()` into the runtime `Settings`.
//!
//! An environment variable `QUIVER_<SECTION>__<KEY>` overrides `<key>` in
//! `[<section>]`, e.g. `QUIVER_HTTP__ADDR=0.0.0.0:8000` or
//! `QUIVER_MODELS__MAX_BATCH_SIZE=16`. Values are read as TOML (numbers,
//! booleans, arrays), falling back to a plain string.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::prediction_log::settings::{IngressSettings, KafkaConfig};
use crate::prediction_log::{LogConfig, LogSettings};
use crate::rollout::RolloutPolicy;

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "QUIVER_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The gateway configuration file. Every field has a default, so an empty
/// file (or none) is valid.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The HTTP listener.
    pub http: HttpConfig,
    /// Where the models live.
    pub repository: RepositoryConfig,
    /// Defaults for every model; a model's own `config.toml` overrides them.
    pub models: ModelDefaults,
    /// ONNX Runtime, the engine behind every model.
    pub onnxruntime: OrtConfig,
    /// Traffic splitting, shadows and the rollout guardrail's clock.
    pub routing: RoutingConfig,
    /// The mutating API (repository load/unload, routing, rollout verdicts).
    pub admin: AdminConfig,
    /// The prediction log: what is logged, and the local log used without
    /// a broker.
    pub log: LogConfig,
    /// Kafka: the brokers the prediction log goes to, its disk spool, and
    /// the ingress consumer for Kafka producers.
    pub kafka: KafkaConfig,
    /// Running as one of several replicas on one registry: the guardrail
    /// leader's lease and the traffic reports it merges.
    pub fleet: FleetConfig,
    /// OpenTelemetry traces of inference requests (off by default).
    pub tracing: crate::telemetry::TracingConfig,
    /// The live dashboard at `/dashboard`.
    pub dashboard: crate::dashboard::DashboardConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on, `HOST:PORT`; port 0 picks a free port.
    pub addr: String,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Tokio worker threads for HTTP; 0 means one per CPU core. Model
    /// compute never runs on these threads.
    pub workers: usize,
    /// How long shutdown waits for open connections to finish, in seconds.
    pub shutdown_grace_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: "127.0.0.1:8000".into(),
            max_body_bytes: 64 << 20,
            workers: 0,
            shutdown_grace_secs: 30,
        }
    }
}

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

/// `[fleet]`: every replica watching one registry follows the routing it
/// stores; one of them, the leader, takes the guardrail's decisions on the
/// traffic of all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// This replica's name in the lease and the traffic reports; unique
    /// in the fleet (on Kubernetes, the pod name). Default: host name and
    /// process id.
    pub replica_id: Option<String>,
    /// How long the leader's lease lasts without renewal, in ms; a dead
    /// leader is replaced after at most this long. Renewed every third.
    pub lease_ttl_ms: u64,
    /// How often each replica writes its traffic report, in ms.
    pub report_interval_ms: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            replica_id: None,
            lease_ttl_ms: 10_000,
            report_interval_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Request header whose value keeps a caller on one arm (stable or a
    /// canary); without it the request's `id` is the key, and a request
    /// with neither is placed at random.
    pub key_header: String,
    /// Shadow copies in flight at once, over all models; past it shadow
    /// copies are skipped (and counted), never queued without bound.
    pub shadow_max_in_flight: usize,
    /// A shadow answer agrees with the served one when every output
    /// element is within this absolute tolerance (equal, for non-floats).
    pub shadow_tolerance: f64,
    /// How often the rollout guardrail looks at running canaries, in ms.
    pub rollout_interval_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            key_header: "x-quiver-key".into(),
            shadow_max_in_flight: 256,
            shadow_tolerance: 1e-4,
            rollout_interval_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Name of the environment variable that holds the admin bearer token
    /// (the token itself never goes in this file). Mutating endpoints
    /// require `Authorization: Bearer <token>`.
    pub token_env: String,
    /// With no token set, leave mutating endpoints open (for a laptop).
    /// Off, they answer 403 until a token is set.
    pub open_without_token: bool,
    /// Require the token for reads too (index, routing state).
    pub protect_reads: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token_env: "QUIVER_ADMIN_TOKEN".into(),
            open_without_token: false,
            protect_reads: false,
        }
    }
}

/// Serving settings, as defaults (`[models]` here) or per model (the
/// model's `config.toml`, which uses the same keys).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelDefaults {
    /// Most rows one batch may hold; 0 turns batching off.
    pub max_batch_size: usize,
    /// Whether requests are batched together: `"auto"` runs 1, 2 and 3
    /// rows of zeros through the model at warm-up and batches it when
    /// every output follows the rows, whatever shapes the graph declares;
    /// `"on"` batches it whatever the probe saw (its inputs still need a
    /// dynamic first dimension); `"off"` never batches it.
    pub batching: Batching,
    /// Outputs that are a sequence of maps (a classifier's ZipMap, the
    /// default of skl2onnx and onnxmltools): `"tensor"` serves them as FP32
    /// `[batch, classes]`, columns in class-label order, with the labels
    /// in the model's metadata (`parameters.classlabels`); `"raw"` serves
    /// ONNX Runtime's maps as BYTES `[batch]`, one JSON object per row.
    pub zipmap: ZipMapOutput,
    /// While the model is busy, how long a queued request may wait for
    /// others to join its batch, in microseconds. An idle model never waits.
    pub max_queue_delay_us: u64,
    /// Batch sizes (rows) the batcher prefers to cut at, e.g. `[8, 16, 32]`.
    pub preferred_batch_sizes: Vec<usize>,
    /// Requests waiting per model version; past it requests get 429 at once.
    pub max_queue_size: usize,
    /// Deadline for requests that do not send a `timeout` parameter, in
    /// milliseconds; 0 means none. Expired requests never reach the model.
    pub default_timeout_ms: u64,
    /// ONNX Runtime sessions per model version, each on its own OS thread.
    pub instances: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_op_threads: usize,
    /// `cpu`, `cuda` or `tensorrt` (the last two need a GPU build).
    pub execution_provider: ExecutionProvider,
    /// Which versions to load: `"all"`, `{ latest = N }` or
    /// `{ specific = [1, 3] }`. Versions that routing names (stable,
    /// canaries, shadows) stay loaded whatever the policy says.
    pub version_policy: VersionPolicy,
    /// Accept a new version whose inputs or outputs differ from the
    /// version serving now. Off, such a version is refused: it would break
    /// every client at the swap.
    pub allow_interface_change: bool,
    /// Canary rollout with automatic promotion and rollback.
    pub rollout: RolloutPolicy,
}

impl Default for ModelDefaults {
    fn default() -> Self {
        ModelDefaults {
            max_batch_size: 64,
            batching: Batching::Auto,
            zipmap: ZipMapOutput::Tensor,
            max_queue_delay_us: 500,
            preferred_batch_sizes: Vec::new(),
            max_queue_size: 1024,
            default_timeout_ms: 0,
            instances: 1,
            intra_op_threads: 1,
            execution_provider: ExecutionProvider::Cpu,
            version_policy: VersionPolicy::default(),
            allow_interface_change: false,
            rollout: RolloutPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Batching {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZipMapOutput {
    Tensor,
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
    Tensorrt,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum VersionPolicy {
    All,
    Latest(usize),
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to load out of those present (sorted ascending).
    pub fn select(&self, present: &[u64]) -> Vec<u64> {
        match self {
            VersionPolicy::All => present.to_vec(),
            VersionPolicy::Latest(n) => present[present.len().saturating_sub(*n)..].to_vec(),
            VersionPolicy::Specific(wanted) => present
                .iter()
                .copied()
                .filter(|v| wanted.contains(v))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrtConfig {
    /// Path of `libonnxruntime.so`. Unset: `ORT_DYLIB_PATH`, then the
    /// location `scripts/setup.sh` installs to, then next to the binary.
    pub library_path: Option<PathBuf>,
}

/// Settings after validation, in runtime types.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http_addr: SocketAddr,
    pub max_body_bytes: usize,
    pub http_workers: usize,
    pub shutdown_grace: Duration,
    /// A local directory or `s3://bucket/prefix`.
    pub repository: String,
    pub s3: quiver_registry::S3Settings,
    /// `None`: no full listings.
    pub full_scan_interval: Option<Duration>,
    pub cache_dir: PathBuf,
    pub fleet: FleetSettings,
    /// `None`: no watching.
    pub poll_interval: Option<Duration>,
    pub max_concurrent_loads: usize,
    pub require_manifest: bool,
    pub models: ModelDefaults,
    pub ort_library: Option<PathBuf>,
    pub routing: RoutingSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
    /// `None`: no Kafka ingress.
    pub ingress: Option<IngressSettings>,
    pub tracing: crate::telemetry::TracingSettings,
    pub dashboard: crate::dashboard::DashboardSettings,
}

#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub replica_id: String,
    pub lease_ttl: Duration,
    pub report_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct RoutingSettings {
    /// Lowercase, as hyper stores header names.
    pub key_header: String,
    pub shadow_max_in_flight: usize,
    pub shadow_tolerance: f64,
    pub rollout_interval: Duration,
}

#[derive(Clone)]
pub struct AdminSettings {
    /// `None`: no token is set.
    pub token: Option<String>,
    pub token_env: String,
    pub open_without_token: bool,
    pub protect_reads: bool,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("token_env", &self.token_env)
            .field("open_without_token", &self.open_without_token)
            .field("protect_reads", &self.protect_reads)
            .finish()
    }
}

impl GatewayConfig {
    /// Reads `path` (if any), applies `QUIVER_*` overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (mut table, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.into(),
                    source,
                })?;
                let table: toml::Table =
                    text.parse()
                        .map_err(|e: toml::de::Error| ConfigError::Parse {
                            origin: p.display().to_string(),
                            message: e.to_string(),
                        })?;
                (table, p.display().to_string())
            }
            None => (toml::Table::new(), "(defaults)".to_string()),
        };
        apply_env_overrides(&mut table, env);
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin,
                message: e.to_string(),
            })
    }

    /// Checks every setting; `env` looks up the admin token's variable.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        self.validate_with(|name| std::env::var(name).ok())
    }

    pub fn validate_with(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let http_addr = self.http.addr.parse().map_err(|e| ConfigError::Invalid {
            key: "http.addr",
            message: format!("'{}': {e}", self.http.addr),
        })?;
        let repository = self.repository.path.ok_or(ConfigError::Invalid {
            key: "repository.path",
            message: "no model repository given (use --model-repository DIR or s3://BUCKET/PREFIX)"
                .into(),
        })?;
        let f = &self.fleet;
        if f.lease_ttl_ms < 100 || f.report_interval_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "fleet",
                message: "lease_ttl_ms must be at least 100 and report_interval_ms at least 1"
                    .into(),
            });
        }
        let replica_id = match f.replica_id.clone().filter(|r| !r.is_empty()) {
            Some(id)
                if id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
            {
                id
            }
            Some(id) => {
                return Err(ConfigError::Invalid {
                    key: "fleet.replica_id",
                    message: format!("'{id}' may hold only letters, digits, '-', '_' and '.'"),
                });
            }
            None => default_replica_id(),
        };
        let fleet = FleetSettings {
            replica_id,
            lease_ttl: Duration::from_millis(f.lease_ttl_ms),
            report_interval: Duration::from_millis(f.report_interval_ms),
        };
        let s3c = &self.repository.s3;
        let s3 = quiver_registry::S3Settings {
            endpoint: s3c.endpoint.clone(),
            region: s3c.region.clone(),
            allow_http: s3c.allow_http,
            access_key_id_env: s3c.access_key_id_env.clone(),
            secret_access_key_env: s3c.secret_access_key_env.clone(),
            timeout: s3c.timeout_ms.map(Duration::from_millis),
            credentials: None,
        };
        validate_model_settings(&self.models)
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        let http_workers = match self.http.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        if self.repository.max_concurrent_loads == 0 {
            return Err(ConfigError::Invalid {
                key: "repository.max_concurrent_loads",
                message: "must be at least 1".into(),
            });
        }
        let r = self.routing;
        let key_header = r.key_header.to_ascii_lowercase();
        if hyper::header::HeaderName::from_bytes(key_header.as_bytes()).is_err() {
            return Err(ConfigError::Invalid {
                key: "routing.key_header",
                message: format!("'{}' is not a valid header name", r.key_header),
            });
        }
        if !(r.shadow_tolerance.is_finite() && r.shadow_tolerance >= 0.0) {
            return Err(ConfigError::Invalid {
                key: "routing.shadow_tolerance",
                message: "must be a non-negative number".into(),
            });
        }
        let token = env(&self.admin.token_env).filter(|t| !t.is_empty());
        let (log, ingress) = crate::prediction_log::settings::validate(self.log, self.kafka)?;
        let tracing = self.tracing.validate()?;
        let dashboard = self.dashboard.validate()?;
        Ok(Settings {
            http_addr,
            max_body_bytes: self.http.max_body_bytes,
            http_workers,
            shutdown_grace: Duration::from_secs(self.http.shutdown_grace_secs),
            repository,
            s3,
            full_scan_interval: (self.repository.full_scan_interval_ms > 0)
                .then(|| Duration::from_millis(self.repository.full_scan_interval_ms)),
            cache_dir: self.repository.cache_dir,
            fleet,
            poll_interval: (self.repository.poll_interval_ms > 0)
                .then(|| Duration::from_millis(self.repository.poll_interval_ms)),
            max_concurrent_loads: self.repository.max_concurrent_loads,
            require_manifest: self.repository.require_manifest,
            models: self.models,
            ort_library: self.onnxruntime.library_path,
            routing: RoutingSettings {
                key_header,
                shadow_max_in_flight: r.shadow_max_in_flight,
                shadow_tolerance: r.shadow_tolerance,
                rollout_interval: Duration::from_millis(r.rollout_interval_ms.max(10)),
            },
            admin: AdminSettings {
                token,
                token_env: self.admin.token_env,
                open_without_token: self.admin.open_without_token,
                protect_reads: self.admin.protect_reads,
            },
            log,
            ingress,
            tracing,
            dashboard,
        })
    }
}

/// `<host>-<pid>`: unique among processes on a host, readable in the lease.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{}", std::process::id())
}

/// Checks the serving settings that would make a model unservable.
pub fn validate_model_settings(m: &ModelDefaults) -> Result<(), (&'static str, String)> {
    if m.instances == 0 {
        return Err(("instances", "must be at least 1".into()));
    }
    if m.intra_op_threads == 0 {
        return Err(("intra_op_threads", "must be at least 1".into()));
    }
    if m.max_queue_size == 0 {
        return Err(("max_queue_size", "must be at least 1".into()));
    }
    if m.batching == Batching::On && m.max_batch_size == 0 {
        return Err(("batching", "\"on\" needs max_batch_size above 0".into()));
    }
    m.rollout.validate().map_err(|e| ("rollout", e))?;
    if let Some(p) = m
        .preferred_batch_sizes
        .iter()
        .find(|&&p| p == 0 || (m.max_batch_size > 0 && p > m.max_batch_size))
    {
        return Err((
            "preferred_batch_sizes",
            format!("{p} is not within 1..={}", m.max_batch_size),
        ));
    }
    Ok(())
}

fn apply_env_overrides(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) {
    for (name, raw) in env {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if keys.len() < 2 || keys.iter().any(String::is_empty) {
            continue;
        }
        set_path(table, &keys, parse_env_value(&raw));
    }
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) {
    match keys {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(next) = entry {
                set_path(next, rest, value);
            }
        }
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_reach_nested_keys_with_types() {
        let env = [
            ("QUIVER_HTTP__ADDR".to_string(), "0.0.0.0:9000".to_string()),
            (
                "QUIVER_MODELS__MAX_BATCH_SIZE".to_string(),
                "16".to_string(),
            ),
            (
                "QUIVER_MODELS__PREFERRED_BATCH_SIZES".to_string(),
                "[4, 8]".to_string(),
            ),
            (
                "QUIVER_REPOSITORY__PATH".to_string(),
                "/srv/models".to_string(),
            ),
            ("UNRELATED".to_string(), "1".to_string()),
        ];
        let settings = GatewayConfig::load(None, env).unwrap().validate().unwrap();
        assert_eq!(settings.http_addr.port(), 9000);
        assert_eq!(settings.models.max_batch_size, 16);
        assert_eq!(settings.models.preferred_batch_sizes, vec![4, 8]);
        assert_eq!(settings.repository, "/srv/models");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = std::env::temp_dir().join(format!("quiver-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gateway.toml");
        std::fs::write(&file, "[http]\nadress = \"x\"\n").unwrap();
        let err = GatewayConfig::load(Some(&file), []).unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
    }

    #[test]
    fn the_shipped_example_parses() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/gateway.toml");
        let cfg = GatewayConfig::load(Some(&file), []).unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn version_policy_selects() {
        let present = [1, 2, 5];
        assert_eq!(VersionPolicy::Latest(1).select(&present), vec![5]);
        assert_eq!(VersionPolicy::Latest(9).select(&present), vec![1, 2, 5]);
        assert_eq!(VersionPolicy::All.select(&present), vec![1, 2, 5]);
        assert_eq!(
            VersionPolicy::Specific(vec![2, 7]).select(&present),
            vec![2]
        );
    }

    #[test]
    fn invalid_model_settings_are_named() {
        let m = ModelDefaults {
            preferred_batch_sizes: vec![128],
            max_batch_size: 64,
            ..Default::default()
        };
        assert_eq!(
            validate_model_settings(&m).unwrap_err().0,
            "preferred_batch_sizes"
        );
    }
}
