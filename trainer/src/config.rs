//! `configs/trainer.toml`: one file, `deny_unknown_fields`, a comment on
//! every key there. Paths may be overridden on the command line (and by
//! `QUIVER_TRAINER_*` environment variables, see `main.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quiver_contract::routing::DEFAULT_STEPS;
use serde::{Deserialize, Serialize};

use crate::command::CommandSettings;
use crate::onnx::{Interface, OutputKind, OutputSpec};
use crate::train::Task;
use crate::train::gbt::GbtSettings;
use crate::train::mlp::MlpSettings;

/// Keys of earlier versions whose job moved elsewhere; an old config that
/// still has them gets a hint instead of only serde's unknown-field error.
const REMOVED: [&str; 2] = ["gateway_url", "admin_token_env"];

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
    /// The model registry: a local directory or `s3://bucket/prefix`. The
    /// trainer reaches the fleet only through it (versions, routing) and
    /// the record topics, never through a gateway's URL.
    pub model_repository: String,
    /// Object-store settings for an `s3://` repository; each one left out
    /// falls back to the standard `AWS_*` environment variable.
    #[serde(default)]
    pub s3: Option<S3Config>,
    pub log_dir: PathBuf,
    pub state_dir: PathBuf,
    #[serde(default = "default_predictions")]
    pub predictions_topic: String,
    #[serde(default = "default_labels")]
    pub labels_topic: String,
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

/// `[s3]`: how to reach an `s3://` model repository. Secrets are named by
/// environment variable, never written here.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// An S3-compatible endpoint URL (`AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `AWS_REGION`.
    #[serde(default)]
    pub region: Option<String>,
    /// Allow a plain-HTTP endpoint (`AWS_ALLOW_HTTP`).
    #[serde(default)]
    pub allow_http: Option<bool>,
    /// The environment variable holding the access key id
    /// (`AWS_ACCESS_KEY_ID` when left out).
    #[serde(default)]
    pub access_key_id_env: Option<String>,
    /// The environment variable holding the secret access key
    /// (`AWS_SECRET_ACCESS_KEY` when left out).
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
}

impl S3Config {
    pub fn settings(&self) -> quiver_registry::S3Settings {
        quiver_registry::S3Settings {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            allow_http: self.allow_http,
            access_key_id_env: self.access_key_id_env.clone(),
            secret_access_key_env: self.secret_access_key_env.clone(),
            ..quiver_registry::S3Settings::default()
        }
    }
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

/// A candidate family resolved from its name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Family<'a> {
    Mlp,
    Gbt,
    /// A user's training command, by its name.
    Command(&'a str, &'a CommandSettings),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub task: Task,
    pub input: String,
    pub outputs: Vec<OutputSpec>,
    /// The family trained at each retrain: `mlp`, `gbt`, or the name of
    /// a `[models.commands.<name>]` table (the user's own training code).
    /// Not used when `candidates` is set. Left out with no `candidates`:
    /// both built-in families, the better one on held-out rows kept.
    #[serde(default)]
    pub family: Option<String>,
    /// Champion/challenger: the families trained on the same window at
    /// each retrain and scored on the same held-out rows; the best goes on
    /// to the comparison with stable. Empty: `family` alone.
    #[serde(default)]
    pub candidates: Vec<String>,
    /// Training commands by name (`[models.commands.lightgbm]`), each a
    /// family.
    #[serde(default)]
    pub commands: BTreeMap<String, CommandSettings>,
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
    /// At each training run, look for the point in the window where the
    /// served version's errors rose (a concept change) and train on the
    /// rows after it only, when at least `min_rows` are left, instead of
    /// waiting for the old concept to age out of the window.
    pub cut_at_change: bool,
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers {
            min_rows: 500,
            new_rows: 5000,
            quality_drop: 0.05,
            drift_psi: 0.25,
            schedule_ms: 0,
            cut_at_change: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryPolicy {
    pub min_samples: u64,
    pub alpha: f64,
    /// The canary's share of traffic at each step, rising, the last 1.0.
    /// Recorded into `routing.json` when the trainer starts a canary, so
    /// every writer (and every gateway replica) walks the same steps.
    pub steps: Vec<f64>,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            min_samples: 200,
            alpha: 0.01,
            steps: DEFAULT_STEPS.to_vec(),
        }
    }
}

impl CanaryPolicy {
    fn validate(&self, model: &str) -> Result<(), ConfigError> {
        let invalid = |why: &str| {
            Err(ConfigError::Invalid(format!(
                "{model}: canary steps {:?} {why}",
                self.steps
            )))
        };
        if self.steps.is_empty() {
            return invalid("are empty; give at least [1.0]");
        }
        if self.steps.iter().any(|w| !(*w > 0.0 && *w <= 1.0)) {
            return invalid("must each lie in (0, 1]");
        }
        if self.steps.windows(2).any(|p| p[1] <= p[0]) {
            return invalid("must rise strictly");
        }
        if self.steps.last() != Some(&1.0) {
            return invalid("must end at 1.0 (all traffic before promotion)");
        }
        Ok(())
    }
}

fn default_predictions() -> String {
    quiver_contract::records::PREDICTIONS_TOPIC.into()
}
fn default_labels() -> String {
    quiver_contract::records::LABELS_TOPIC.into()
}
fn default_poll() -> u64 {
    500
}
fn default_join_window() -> u64 {
    600_000
}
/// The families of a model that names none: whichever fits the stream.
const DEFAULT_FAMILIES: [&str; 2] = ["mlp", "gbt"];
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
        let config: Config = toml::from_str(&text).map_err(|e| {
            let mut message = e.to_string();
            if REMOVED
                .iter()
                .any(|k| message.contains(&format!("unknown field `{k}`")))
            {
                message.push_str(
                    "\nThe trainer no longer calls a gateway: it reads and writes routing \
                     state through the model registry (`model_repository`, `[s3]`). \
                     Remove `gateway_url` and `admin_token_env`.",
                );
            }
            ConfigError::Parse(shown, message)
        })?;
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
            m.canary.validate(&m.name)?;
            for (name, c) in &m.commands {
                if matches!(name.as_str(), "mlp" | "gbt") {
                    return Err(ConfigError::Invalid(format!(
                        "{}: a command may not be named '{name}' (a built-in family)",
                        m.name
                    )));
                }
                c.validate(&m.name, name).map_err(ConfigError::Invalid)?;
            }
            for f in m.families() {
                if m.family_named(f).is_none() {
                    return Err(ConfigError::Invalid(format!(
                        "{}: family '{f}' is neither mlp, gbt nor a [models.commands.{f}] table",
                        m.name
                    )));
                }
            }
        }
        if self.model_repository.is_empty() {
            return Err(ConfigError::Invalid("model_repository is empty".into()));
        }
        Ok(())
    }

    /// The `[s3]` table as the registry takes it (all unset without one).
    pub fn s3_settings(&self) -> quiver_registry::S3Settings {
        self.s3.as_ref().map(S3Config::settings).unwrap_or_default()
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

    /// The families trained at each retrain, in order.
    pub fn families(&self) -> Vec<&str> {
        match (&self.family, self.candidates.is_empty()) {
            (_, false) => self.candidates.iter().map(String::as_str).collect(),
            (Some(f), true) => vec![f.as_str()],
            (None, true) => DEFAULT_FAMILIES.to_vec(),
        }
    }

    /// A family by name: built in, or one of `commands`.
    pub fn family_named<'a>(&'a self, name: &'a str) -> Option<Family<'a>> {
        match name {
            "mlp" => Some(Family::Mlp),
            "gbt" => Some(Family::Gbt),
            _ => self.commands.get(name).map(|c| Family::Command(name, c)),
        }
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

/// A one-model classifier config for tests; more TOML may follow it.
#[cfg(test)]
pub(crate) const TEST_CONFIG: &str = r#"
model_repository = "s3://bucket/models"
log_dir = "log"
state_dir = "state"
[[models]]
name = "m"
task = { kind = "classification", classes = 2 }
input = "features"
outputs = [{ name = "probabilities", kind = "probabilities" }]
"#;

/// The model of [`TEST_CONFIG`], with `extra` added to its table.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_model(extra: &str) -> ModelConfig {
    let config: Config = toml::from_str(&format!("{TEST_CONFIG}{extra}")).unwrap();
    config.models[0].clone()
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
        assert!(config.s3.is_none());
        assert_eq!(config.models[0].canary.steps, DEFAULT_STEPS.to_vec());
    }

    #[test]
    fn the_shipped_commands_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/trainer-commands.toml");
        let config = Config::load(&path).unwrap();
        let m = &config.models[0];
        assert_eq!(m.families(), ["gbt", "lightgbm", "sklearn"]);
        let Some(Family::Command(_, c)) = m.family_named("lightgbm") else {
            panic!("no lightgbm command");
        };
        assert_eq!(c.argv[1], "examples/training/lightgbm_train.py");
        assert_eq!(c.params["n_estimators"], 200);
        assert_eq!(c.env["OMP_NUM_THREADS"], "2");
    }

    fn with_steps(steps: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(&format!("{TEST_CONFIG}[models.canary]\nsteps = {steps}\n")).unwrap();
        config.validate().map(|()| config)
    }

    #[test]
    fn canary_steps_rise_to_one() {
        assert_eq!(
            with_steps("[0.5, 1.0]").unwrap().models[0].canary.steps,
            vec![0.5, 1.0]
        );
        assert_eq!(
            with_steps("[1.0]").unwrap().models[0].canary.steps,
            vec![1.0]
        );
        for (bad, why) in [
            ("[]", "empty"),
            ("[0.5, 0.9]", "end at 1.0"),
            ("[0.5, 0.5, 1.0]", "rise"),
            ("[0.5, 0.25, 1.0]", "rise"),
            ("[0.0, 1.0]", "(0, 1]"),
            ("[-0.1, 1.0]", "(0, 1]"),
            ("[0.5, 1.5]", "(0, 1]"),
            ("[nan, 1.0]", "(0, 1]"),
        ] {
            let err = with_steps(bad).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains("m: canary steps"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn families_are_built_in_or_named_commands() {
        let model = |extra: &str| -> Result<Config, ConfigError> {
            let config: Config = toml::from_str(&format!("{TEST_CONFIG}{extra}"))
                .map_err(|e| ConfigError::Parse("toml".into(), e.to_string()))?;
            config.validate().map(|()| config)
        };
        let c = model("").unwrap();
        assert_eq!(c.models[0].families(), ["mlp", "gbt"]);
        let c = model("family = \"gbt\"\n").unwrap();
        assert_eq!(c.models[0].families(), ["gbt"]);
        let c = model(
            "candidates = [\"gbt\", \"lgbm\"]\n[models.commands.lgbm]\nargv = [\"python\", \"t.py\"]\n",
        )
        .unwrap();
        let m = &c.models[0];
        assert_eq!(m.families(), ["gbt", "lgbm"]);
        assert!(
            matches!(m.family_named("lgbm"), Some(Family::Command("lgbm", s)) if s.timeout_ms == 600_000)
        );
        let err = model("family = \"xgb\"\n").unwrap_err().to_string();
        assert!(err.contains("family 'xgb' is neither"), "{err}");
        let err = model("[models.commands.x]\nargv = []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty argv"), "{err}");
        let err = model("[models.commands.gbt]\nargv = [\"t\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("built-in"), "{err}");
        assert!(model("[models.commands.x]\nargv = [\"t\"]\nbogus = 1\n").is_err());
    }

    #[test]
    fn the_s3_table_maps_to_the_registry_settings() {
        let config: Config = toml::from_str(&format!(
            "{TEST_CONFIG}[s3]\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"eu-west-1\"\n\
             allow_http = true\naccess_key_id_env = \"MY_KEY\"\nsecret_access_key_env = \"MY_SECRET\"\n"
        ))
        .unwrap();
        config.validate().unwrap();
        let s = config.s3_settings();
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s.allow_http, Some(true));
        assert_eq!(s.access_key_id_env.as_deref(), Some("MY_KEY"));
        assert_eq!(s.secret_access_key_env.as_deref(), Some("MY_SECRET"));
        // Left out: every setting falls back to the AWS_* variables.
        let plain: Config = toml::from_str(TEST_CONFIG).unwrap();
        let s = plain.s3_settings();
        assert!(s.endpoint.is_none() && s.region.is_none() && s.allow_http.is_none());
        // Secrets themselves have no key.
        assert!(
            toml::from_str::<Config>(&format!("{TEST_CONFIG}[s3]\nsecret_access_key = \"x\"\n"))
                .is_err()
        );
    }

    #[test]
    fn an_old_config_with_a_gateway_url_is_told_why() {
        let dir =
            std::env::temp_dir().join(format!("quiver-trainer-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("old.toml");
        std::fs::write(
            &path,
            format!("gateway_url = \"http://127.0.0.1:8000\"\n{TEST_CONFIG}"),
        )
        .unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("unknown field `gateway_url`"), "{err}");
        assert!(err.contains("through the model registry"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
