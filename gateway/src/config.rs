//! The gateway's one configuration file (TOML), environment overrides with
//! the `QUIVER_` prefix, and `validate()` into the runtime `Settings`.
//! Each section belongs to the subsystem it configures, which validates it;
//! this module only assembles them.
//!
//! An environment variable `QUIVER_<SECTION>__<KEY>` overrides `<key>` in
//! `[<section>]`, e.g. `QUIVER_HTTP__ADDR=0.0.0.0:8000` or
//! `QUIVER_MODELS__MAX_BATCH_SIZE=16`. Values are read as TOML (numbers,
//! booleans, arrays), falling back to a plain string.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::{AdminConfig, AdminSettings};
use crate::backend::OrtConfig;
use crate::error::InvalidSetting;
use crate::grpc::config::{GrpcConfig, GrpcSettings};
use crate::http::config::{HttpConfig, HttpSettings};
use crate::manager::fleet_config::{FleetConfig, FleetSettings};
use crate::model_settings::{ModelDefaults, validate_model_settings};
use crate::prediction_log::settings::{IngressSettings, KafkaConfig};
use crate::prediction_log::{LogConfig, LogSettings};
use crate::repository::config::{RepositoryConfig, RepositorySettings};
use crate::routing::{RoutingConfig, RoutingSettings};
use crate::tls::{TlsConfig, TlsSettings};

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
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
}

/// The gateway configuration file. Every field has a default, so an empty
/// file (or none) is valid.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The HTTP listener.
    pub http: HttpConfig,
    /// The gRPC listener (`inference.GRPCInferenceService`); off unless
    /// `grpc.addr` is set.
    pub grpc: GrpcConfig,
    /// TLS for the HTTP and gRPC listeners; off unless a certificate is set.
    pub tls: TlsConfig,
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

/// Settings after validation, in runtime types.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpSettings,
    /// `None`: no gRPC listener.
    pub grpc: Option<GrpcSettings>,
    /// `None`: plaintext.
    pub tls: Option<TlsSettings>,
    pub repository: RepositorySettings,
    pub fleet: FleetSettings,
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
        validate_model_settings(&self.models)
            .map_err(|(key, message)| InvalidSetting { key, message })?;
        let (log, ingress) = crate::prediction_log::settings::validate(self.log, self.kafka)?;
        let tracing = self.tracing.validate()?;
        let dashboard = self.dashboard.validate()?;
        Ok(Settings {
            http: self.http.validate()?,
            grpc: self.grpc.validate()?,
            tls: self.tls.validate()?,
            repository: self.repository.validate()?,
            fleet: self.fleet.validate()?,
            models: self.models,
            ort_library: self.onnxruntime.library_path,
            routing: self.routing.validate()?,
            admin: self.admin.validate(env),
            log,
            ingress,
            tracing,
            dashboard,
        })
    }
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
        assert_eq!(settings.http.addr.port(), 9000);
        assert_eq!(settings.models.max_batch_size, 16);
        assert_eq!(settings.models.preferred_batch_sizes, vec![4, 8]);
        assert_eq!(settings.repository.path, "/srv/models");
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
}
