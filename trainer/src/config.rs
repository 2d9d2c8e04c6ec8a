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
    /// The gateways' local prediction log, read when no broker is set.
    pub log_dir: PathBuf,
    /// The trainer's own state: `state.json`, the window logs, the events
    /// log and the training commands' run directories.
    pub state_dir: PathBuf,
    /// The topic of prediction records.
    #[serde(default = "default_predictions")]
    pub predictions_topic: String,
    /// The topic of label records.
    #[serde(default = "default_labels")]
    pub labels_topic: String,
    /// How long the loop sleeps when a poll found nothing, milliseconds.
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
    /// How long a prediction waits for its label (and a label for its
    /// prediction) before it is dropped, milliseconds.
    #[serde(default = "default_join_window")]
    pub join_window_ms: u64,
    /// Where the Prometheus metrics are served (`host:port`); none when
    /// left out.
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
    /// The model's name in the registry and in the records.
    pub name: String,
    /// `{ kind = "classification", classes = N }` or `{ kind = "regression" }`.
    pub task: Task,
    /// The name of the model's input tensor.
    pub input: String,
    /// The model's outputs, each a name and a kind (`probabilities`,
    /// `label`, `value`).
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
    /// The seed of every random choice in training (splits, initial
    /// weights), so a run can be repeated.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// The training window: the newest labelled rows kept, at most.
    #[serde(default = "default_window_rows")]
    pub window_rows: usize,
    /// The newest fraction of the training rows held out to compare the
    /// candidate with stable, in [0, 0.9).
    #[serde(default = "default_holdout")]
    pub holdout_fraction: f64,
    /// The largest difference allowed between ONNX Runtime's output and the
    /// trainer's (or the command's) own predictions.
    #[serde(default = "default_parity")]
    pub parity_bound: f64,
    /// How much lower the candidate's held-out loss must be than stable's
    /// to publish it; negative publishes a candidate unless it is worse by
    /// more than that (the canary still judges it on live traffic).
    #[serde(default)]
    pub min_improvement: f64,
    /// After the held-out evaluation, train once more on the whole window
    /// (the MLP for the epochs early stopping chose) and publish that: on a
    /// drifting stream the held-out rows are the newest, the ones the next
    /// rows resemble most.
    #[serde(default = "default_refit")]
    pub refit: bool,
    /// `[models.mlp]`: the built-in multilayer perceptron.
    #[serde(default)]
    pub mlp: MlpSettings,
    /// `[models.gbt]`: the built-in gradient-boosted trees.
    #[serde(default)]
    pub gbt: GbtSettings,
    /// `[models.triggers]`: when the model retrains.
    #[serde(default)]
    pub triggers: Triggers,
    /// `[models.canary]`: how a published candidate earns stable.
    #[serde(default)]
    pub canary: CanaryPolicy,
}

/// A setting that is either derived by the trainer (`"auto"`, the
/// default) or given as a value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Auto<T> {
    #[default]
    Auto,
    Set(T),
}

impl<T: Copy> Auto<T> {
    /// The value given, or `derived()` when auto.
    pub fn or_else(self, derived: impl FnOnce() -> T) -> T {
        match self {
            Auto::Auto => derived(),
            Auto::Set(v) => v,
        }
    }
}

impl<T: Serialize> Serialize for Auto<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Auto::Auto => s.serialize_str("auto"),
            Auto::Set(v) => v.serialize(s),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Auto<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            Value(T),
            Word(String),
        }
        match Either::<T>::deserialize(d)? {
            Either::Value(v) => Ok(Auto::Set(v)),
            Either::Word(w) if w == "auto" => Ok(Auto::Auto),
            Either::Word(w) => Err(serde::de::Error::custom(format!(
                "expected \"auto\" or a number, found \"{w}\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Triggers {
    /// No training before the window holds this many rows.
    pub min_rows: usize,
    /// Retrain after this many new labelled rows. `"auto"` (the default):
    /// about as many as arrive during one training (at least 2 s of
    /// labels), at most a tenth of the window, and right after a window
    /// cut at most half the rows the last training used (`cadence.rs`).
    pub new_rows: Auto<u64>,
    /// Retrain when online accuracy falls this far below the stable
    /// version's offline accuracy (regressors: RMSE above offline by this
    /// fraction).
    pub quality_drop: f64,
    /// Retrain when any feature's PSI against the stable version's
    /// training reference exceeds this.
    pub drift_psi: f64,
    /// Retrain at least this often, milliseconds; 0 = never on a schedule.
    pub schedule_ms: u64,
    /// Watch the served version's errors for a concept change (a rise by a
    /// two-sample t statistic over every split of the window, bar 6, with
    /// at least 200 rows after it), retrain as soon as one shows, and at
    /// each training run train on the rows after the change only instead
    /// of waiting for the old concept to age out of the window.
    pub cut_at_change: bool,
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers {
            min_rows: 500,
            new_rows: Auto::Auto,
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
    /// Labelled rows each arm (candidate, stable) needs in a step before a
    /// verdict. `"auto"` (the default): as many as the steps collect in
    /// about one retrain cycle, between 50 and 500; 50 when the
    /// candidate's held-out loss was below 0.8 of stable's on the same
    /// rows, and then one judged step on shared traffic promotes it
    /// (`cadence.rs`).
    pub min_samples: Auto<u64>,
    /// Significance of the one-sided "candidate is worse" tests.
    pub alpha: f64,
    /// The canary's share of traffic at each step, rising, the last 1.0.
    /// Recorded into `routing.json` when the trainer starts a canary, so
    /// every writer (and every gateway replica) walks the same steps.
    pub steps: Vec<f64>,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            min_samples: Auto::Auto,
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
    fn cadence_and_canary_samples_are_auto_unless_given() {
        let plain = test_model("");
        assert_eq!(plain.triggers.new_rows, Auto::Auto);
        assert_eq!(plain.canary.min_samples, Auto::Auto);
        let given = test_model(
            "[models.triggers]\nnew_rows = 300\n[models.canary]\nmin_samples = \"auto\"\n",
        );
        assert_eq!(given.triggers.new_rows, Auto::Set(300));
        assert_eq!(given.triggers.new_rows.or_else(|| 7), 300);
        assert_eq!(given.canary.min_samples.or_else(|| 7), 7);
        // Round trip through the lineage's JSON.
        let text = serde_json::to_string(&given.triggers).unwrap();
        assert!(text.contains("\"new_rows\":300"), "{text}");
        let text = serde_json::to_string(&given.canary).unwrap();
        assert!(text.contains("\"min_samples\":\"auto\""), "{text}");
        let err = toml::from_str::<Config>(&format!(
            "{TEST_CONFIG}[models.triggers]\nnew_rows = \"often\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("expected \"auto\" or a number"), "{err}");
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
