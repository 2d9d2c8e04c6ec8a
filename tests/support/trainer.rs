//! The real `quiver-trainer` for end-to-end tests: a config over a scratch
//! directory (`repo/`, `log/`, `state/`) with one classification model
//! `m` on four features, and the process started in the background.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Result;

use crate::binary;

/// What differs between the tests' trainer configs.
pub struct ModelToml<'a> {
    pub seed: u64,
    pub window_rows: u64,
    pub max_epochs: u32,
    /// How much better than stable a candidate must be to publish.
    pub min_improvement: f64,
    /// New labelled rows that trigger a retraining.
    pub new_rows: u64,
    /// The body of `[models.canary]`.
    pub canary: &'a str,
}

/// The config's text; tests append sections (`[kafka]`) or edit keys.
pub fn config_text(dir: &Path, m: &ModelToml<'_>) -> String {
    format!(
        r#"model_repository = "{repo}"
log_dir = "{log}"
state_dir = "{state}"
poll_interval_ms = 50
join_window_ms = 600000

[[models]]
name = "m"
task = {{ kind = "classification", classes = 2 }}
input = "features"
outputs = [{{ name = "probabilities", kind = "probabilities" }}]
family = "mlp"
seed = {seed}
window_rows = {window}
holdout_fraction = 0.2
min_improvement = {margin}
[models.mlp]
hidden = [16]
max_epochs = {epochs}
[models.triggers]
min_rows = 300
new_rows = {new_rows}
drift_psi = 1000.0
quality_drop = 1.0
[models.canary]
{canary}"#,
        repo = dir.join("repo").display(),
        log = dir.join("log").display(),
        state = dir.join("state").display(),
        seed = m.seed,
        window = m.window_rows,
        margin = m.min_improvement,
        epochs = m.max_epochs,
        new_rows = m.new_rows,
        canary = m.canary,
    )
}

/// Starts `quiver-trainer --config <config> [args] run`, its log to `log`.
pub fn spawn(config: &Path, args: &[&str], log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    Ok(Command::new(binary("quiver-trainer")?)
        .args(["--config"])
        .arg(config)
        .args(args)
        .arg("run")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// Writes `rows` (four features, then the label) as `<dir>/a.csv`,
/// publishes the next version of `m` from it with
/// `quiver-trainer bootstrap`, then gives `m` the serving config
/// `model_toml` and a `routing.json` with version 1 stable.
pub fn bootstrap(
    config: &Path,
    dir: &Path,
    rows: &[(Vec<f32>, f32)],
    model_toml: &str,
) -> Result<()> {
    let mut csv = String::from("a,b,c,d,y\n");
    for (x, y) in rows {
        let cells: Vec<String> = x.iter().map(f32::to_string).collect();
        csv.push_str(&format!("{},{y}\n", cells.join(",")));
    }
    let data = dir.join("a.csv");
    std::fs::write(&data, csv)?;
    let status = Command::new(binary("quiver-trainer")?)
        .arg("--config")
        .arg(config)
        .args(["bootstrap", "--model", "m", "--data"])
        .arg(&data)
        .status()?;
    anyhow::ensure!(status.success(), "quiver-trainer bootstrap failed");
    std::fs::write(dir.join("repo/m/config.toml"), model_toml)?;
    std::fs::write(
        dir.join("repo/m/routing.json"),
        r#"{"schema": 1, "stable": 1}"#,
    )?;
    Ok(())
}
