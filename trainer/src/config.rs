//! `configs/trainer.toml`: one file, `deny_unknown_fields`, a comment on
//! every key there. Paths may be overridden on the command line (and by
//! `QUIVER_TRAINER_*` environment variables, see `main.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::onnx::{Interface, OutputKind, OutputSpec};
use crate::train::Task;
use crate::train::gbt::GbtSettings;
use crate::train::mlp::MlpSettings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, String),
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model_repository: PathBuf,
    pub log_dir: PathBuf,
    pub state_dir: PathBuf,
    #[serde(default = "default_predictions")]
    pub predictions_topic: String,
    #[serde(default = "default_labels")]
    pub labels_topic: String,
    pub gateway_url: String,
    #[serde(default = "default_token_env")]
    pub admin_token_env: String,
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
    #[serde(default = "default_join_window")]
    pub join_window_ms: u64,
    #[serde(default)]
    pub metrics_addr: Option<String>,
    /// Consume from Kafka instead of the local log (when `brokers` is set).
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

/// `[kafka]`: the topics `predictions_topic` and `labels_topic` are read
/// with one consumer each, sharing the group.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`; empty keeps the local log.
    #[serde(default)]
    pub brokers: String,
    /// The consumer group that holds the committed offsets.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// librdkafka consumer properties passed through as they are (except
    /// `enable.auto.commit`, which stays off).
    #[serde(default)]
    pub client: std::collections::BTreeMap<String, String>,
}

fn default_group() -> String {
    "quiver-trainer".into()
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            group_id: default_group(),
            client: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Mlp,
    Gbt,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub task: Task,
    pub input: String,
    pub outputs: Vec<OutputSpec>,
    #[serde(default = "default_family")]
    pub family: Family,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_window_rows")]
    pub window_rows: usize,
    #[serde(default = "default_holdout")]
    pub holdout_fraction: f64,
    #[serde(default = "default_parity")]
    pub parity_bound: f64,
    #[serde(default)]
    pub min_improvement: f64,
    /// After the held-out evaluation, train once more on the whole window
    /// (the MLP for the epochs early stopping chose) and publish that: on a
    /// drifting stream the held-out rows are the newest, the ones the next
    /// rows resemble most.
    #[serde(default = "default_refit")]
    pub refit: bool,
    #[serde(default)]
    pub mlp: MlpSettings,
    #[serde(default)]
    pub gbt: GbtSettings,
    #[serde(default)]
    pub triggers: Triggers,
    #[serde(default)]
    pub canary: CanaryPolicy,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Triggers {
    pub min_rows: usize,
    pub new_rows: u64,
    pub quality_drop: f64,
    pub drift_psi: f64,
    pub schedule_ms: u64,
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers {
            min_rows: 500,
            new_rows: 5000,
            quality_drop: 0.05,
            drift_psi: 0.25,
            schedule_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryPolicy {
    pub min_samples: u64,
    pub alpha: f64,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            min_samples: 200,
            alpha: 0.01,
        }
    }
}

fn default_predictions() -> String {
    quiver_contract::records::PREDICTIONS_TOPIC.into()
}
fn default_labels() -> String {
    quiver_contract::records::LABELS_TOPIC.into()
}
fn default_token_env() -> String {
    "QUIVER_ADMIN_TOKEN".into()
}
fn default_poll() -> u64 {
    500
}
fn default_join_window() -> u64 {
    600_000
}
fn default_family() -> Family {
    Family::Mlp
}
fn default_seed() -> u64 {
    42
}
fn default_window_rows() -> usize {
    20_000
}
fn default_refit() -> bool {
    true
}

fn default_holdout() -> f64 {
    0.2
}
fn default_parity() -> f64 {
    1e-4
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(shown.clone(), e))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(shown, e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for m in &self.models {
            m.interface().map_err(ConfigError::Invalid)?;
            if !(0.0..0.9).contains(&m.holdout_fraction) {
                return Err(ConfigError::Invalid(format!(
                    "{}: holdout_fraction must lie in [0, 0.9)",
                    m.name
                )));
            }
        }
        if !self.gateway_url.starts_with("http://") {
            return Err(ConfigError::Invalid(
                "gateway_url must start with http://".into(),
            ));
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(10))
    }

    /// The hash recorded in lineage: of the model's settings as JSON.
    pub fn model_sha256(model: &ModelConfig) -> String {
        let text = serde_json::to_string(model).unwrap_or_default();
        quiver_contract::manifest::sha256_bytes(text.as_bytes())
    }
}

impl ModelConfig {
    pub fn interface(&self) -> Result<Interface, String> {
        let want = match self.task {
            Task::Classification { .. } => OutputKind::Probabilities,
            Task::Regression => OutputKind::Value,
        };
        if !self.outputs.iter().any(|o| o.kind == want) {
            return Err(format!(
                "{}: outputs must include one of kind {want:?}",
                self.name
            ));
        }
        Ok(Interface {
            input: self.input.clone(),
            outputs: self.outputs.clone(),
        })
    }

    /// The output the join reads the served answer from.
    pub fn scored_output(&self) -> String {
        self.outputs
            .iter()
            .find(|o| matches!(o.kind, OutputKind::Probabilities | OutputKind::Value))
            .map(|o| o.name.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_loads_with_the_local_log() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/trainer.toml");
        let config = Config::load(&path).unwrap();
        let kafka = config.kafka.unwrap();
        assert!(kafka.brokers.is_empty());
        assert_eq!(kafka.group_id, "quiver-trainer");
    }
}
