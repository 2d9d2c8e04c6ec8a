//! The `command` family: the user's own training code. For a training run
//! the trainer writes the window's rows and a `spec.json` into a run
//! directory ([`spec`]), runs the configured command there ([`exec`]:
//! timeout, environment, its output kept), and reads back `model.onnx`,
//! its predictions for the held-out rows and the libraries it reports.
//! What happens next (the interface, parity in ONNX Runtime, the
//! comparison with stable) is `publish.rs`'s, as for the built-in
//! families.

pub mod exec;
pub mod spec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quiver_contract::manifest::{CommandLineage, sha256_bytes};
use quiver_contract::runs::CommandRun;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::train::Dataset;

/// `[models.commands.<name>]`: a training command, used as a family by
/// its name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSettings {
    /// The program and its arguments, run in the trainer's working
    /// directory with `QUIVER_RUN_DIR` (the run directory, holding
    /// `spec.json`) and `QUIVER_SPEC` (its path) in the environment.
    pub argv: Vec<String>,
    /// Killed (with everything it started) after this long: a failed run.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Environment variables added to the trainer's own.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The script whose SHA-256 goes into the lineage; left out, the
    /// first argument after the program that names a file (else the
    /// program itself when it is a file).
    #[serde(default)]
    pub script: Option<PathBuf>,
    /// Settings passed to the command as they are, in `spec.json`'s
    /// `config.params`.
    #[serde(default)]
    pub params: serde_json::Value,
    /// Run directories kept per model (the newest); older ones are removed.
    #[serde(default = "default_keep_runs")]
    pub keep_runs: usize,
}

fn default_timeout_ms() -> u64 {
    600_000
}
fn default_keep_runs() -> usize {
    3
}

impl CommandSettings {
    pub fn validate(&self, model: &str, name: &str) -> Result<(), String> {
        if self.argv.first().is_none_or(|p| p.is_empty()) {
            return Err(format!("{model}: command '{name}' has an empty argv"));
        }
        if self.timeout_ms == 0 {
            return Err(format!("{model}: command '{name}' has timeout_ms = 0"));
        }
        Ok(())
    }

    /// The script hashed into the lineage.
    fn script(&self) -> Option<PathBuf> {
        if let Some(s) = &self.script {
            return Some(s.clone());
        }
        let file = |a: &String| Path::new(a).is_file().then(|| PathBuf::from(a));
        self.argv
            .iter()
            .skip(1)
            .find_map(file)
            .or_else(|| self.argv.first().and_then(file))
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    #[error("run directory {0}: {1}")]
    RunDir(String, String),
    #[error("cannot start the command {argv:?}: {message}")]
    Start { argv: Vec<String>, message: String },
    #[error("the command {exit}{}", last_line(.stderr))]
    Failed { exit: String, stderr: String },
    #[error("the command wrote no {0}")]
    Missing(&'static str),
    #[error("the command's {file}: {message}")]
    Output { file: &'static str, message: String },
}

/// `: <the last line of stderr>`, when there is one.
fn last_line(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or(String::new(), |l| format!(": {}", l.trim()))
}

/// What one run of a command gave back.
pub struct Output {
    pub onnx: Vec<u8>,
    /// `held rows × task.width()`, as the command predicted them.
    pub predictions: Vec<f32>,
    pub lineage: CommandLineage,
}

/// A command's run: what ran and printed (when it started), and what it
/// gave back or why not.
pub struct Attempt {
    pub run: Option<CommandRun>,
    pub result: Result<Output, CommandError>,
}

/// Where, and for what, a command runs.
pub struct Job<'a> {
    pub model: &'a ModelConfig,
    /// The command's name (its family).
    pub name: &'a str,
    pub settings: &'a CommandSettings,
    /// `<state_dir>/command-runs/<model>`; the run gets a folder in it.
    pub runs_dir: PathBuf,
    pub run_id: &'a str,
    pub version: u64,
    pub metadata: &'a [(String, String)],
}

/// Writes the run directory, runs the command, reads its outputs.
pub fn train(job: &Job<'_>, train: &Dataset, held: &Dataset) -> Attempt {
    let dir = job.runs_dir.join(format!("{}-{}", job.run_id, job.name));
    let fail = |e: CommandError| Attempt {
        run: None,
        result: Err(e),
    };
    if let Err(e) = spec::write(&dir, job, train, held) {
        return fail(CommandError::RunDir(
            dir.display().to_string(),
            e.to_string(),
        ));
    }
    prune(&job.runs_dir, job.settings.keep_runs);
    let s = job.settings;
    let script = s.script();
    let script_sha256 = script
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .map(|b| sha256_bytes(&b));
    let mut env = s.env.clone();
    env.insert("QUIVER_RUN_DIR".into(), dir.display().to_string());
    env.insert(
        "QUIVER_SPEC".into(),
        dir.join(spec::SPEC_FILE).display().to_string(),
    );
    let exit = match exec::run(&s.argv, &env, None, Duration::from_millis(s.timeout_ms)) {
        Ok(exit) => exit,
        Err(e) => {
            return fail(CommandError::Start {
                argv: s.argv.clone(),
                message: e.to_string(),
            });
        }
    };
    let libraries = spec::read_libraries(&dir);
    let run = CommandRun {
        argv: s.argv.clone(),
        exit: exit.describe.clone(),
        seconds: exit.seconds,
        stdout: exit.stdout.clone(),
        stderr: exit.stderr.clone(),
        script_sha256: script_sha256.clone(),
        libraries: libraries.clone(),
    };
    let result = if exit.success {
        spec::read_outputs(&dir, job.model.task.width(), held.rows()).map(|(onnx, predictions)| {
            Output {
                onnx,
                predictions,
                lineage: CommandLineage {
                    name: job.name.to_string(),
                    argv: s.argv.clone(),
                    script: script.map(|p| p.display().to_string()),
                    script_sha256,
                    libraries,
                },
            }
        })
    } else {
        Err(CommandError::Failed {
            exit: exit.describe,
            stderr: exit.stderr,
        })
    };
    Attempt {
        run: Some(run),
        result,
    }
}

/// Keeps the newest `keep` run directories (their names sort by time).
fn prune(runs_dir: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(runs_dir) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let extra = dirs.len().saturating_sub(keep.max(1));
    for d in &dirs[..extra] {
        if let Err(e) = std::fs::remove_dir_all(d) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot remove an old run directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_last_line_of_stderr() {
        let e = CommandError::Failed {
            exit: "exit status 1".into(),
            stderr: "Traceback\n  File x\nValueError: bad input\n\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "the command exit status 1: ValueError: bad input"
        );
    }

    #[test]
    fn the_script_is_the_first_file_argument() {
        let dir = std::env::temp_dir().join(format!("quiver-cmd-script-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("train.py");
        std::fs::write(&script, "print()").unwrap();
        let s = CommandSettings {
            argv: vec![
                "python".into(),
                "-u".into(),
                script.display().to_string(),
                "--fast".into(),
            ],
            timeout_ms: 1000,
            env: BTreeMap::new(),
            script: None,
            params: serde_json::Value::Null,
            keep_runs: 3,
        };
        assert_eq!(s.script(), Some(script.clone()));
        let named = CommandSettings {
            script: Some("other.py".into()),
            ..s.clone()
        };
        assert_eq!(named.script(), Some(PathBuf::from("other.py")));
        for keep in ["0001-a", "0002-a", "0003-a", "0004-a"] {
            std::fs::create_dir_all(dir.join("runs").join(keep)).unwrap();
        }
        prune(&dir.join("runs"), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.join("runs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["0003-a", "0004-a"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
