//! The `command` family through `trial::run`: the two shipped examples
//! (LightGBM with onnxmltools, a scikit-learn pipeline with skl2onnx) run
//! in the project's venv (`QUIVER_PYTHON`), their models checked in ONNX
//! Runtime (`ORT_DYLIB_PATH`) against their own predictions; commands that
//! fail, hang, write the wrong interface or garbage are failed candidates
//! with their reason; and champion/challenger picks the family that is
//! better on the held-out rows.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::{Path, PathBuf};

use quiver_contract::manifest::sha256_bytes;
use quiver_trainer::config::{Config, ModelConfig};
use quiver_trainer::train::Dataset;
use quiver_trainer::train::rng::Rng;
use quiver_trainer::trial::{self, Inputs, Trial};

fn python() -> String {
    std::env::var("QUIVER_PYTHON")
        .expect("QUIVER_PYTHON must name the venv's python: eval \"$(scripts/setup.sh)\"")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/training")
}

/// A command table running `script` (a shipped example) in the venv.
fn example(name: &str, script: &str, params: &str) -> String {
    format!(
        "[models.commands.{name}]\nargv = [\"{}\", \"{}\"]\ntimeout_ms = 120000\nparams = {params}\n",
        python(),
        examples().join(script).display()
    )
}

fn model(candidates: &[&str], commands: &str) -> ModelConfig {
    let text = format!(
        r#"model_repository = "unused"
log_dir = "log"
state_dir = "state"
[[models]]
name = "m"
task = {{ kind = "classification", classes = 2 }}
input = "features"
outputs = [{{ name = "label", kind = "label" }}, {{ name = "probabilities", kind = "probabilities" }}]
candidates = {candidates:?}
holdout_fraction = 0.25
seed = 5
mlp = {{ hidden = [], max_epochs = 30 }}
gbt = {{ rounds = 60, max_depth = 4 }}
{commands}"#
    );
    let config: Config = toml::from_str(&text).unwrap();
    config.validate().unwrap();
    config.models[0].clone()
}

/// `linear`: y drawn with probability sigmoid(3 (x0 + x1)), which a
/// logistic regression models exactly and trees only approximate;
/// otherwise y = [x0 > 0] xor [x1 > 0], which no linear model can fit.
fn data(rows: usize, linear: bool, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let mut d = Dataset::new(4);
    for _ in 0..rows {
        let x: Vec<f32> = (0..4).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
        let y = if linear {
            let p = 1.0 / (1.0 + (-3.0 * f64::from(x[0] + x[1])).exp());
            rng.next_f64() < p
        } else {
            (x[0] > 0.0) != (x[1] > 0.0)
        };
        d.push(&x, f32::from(u8::from(y)));
    }
    d
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quiver-command-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn run(model: &ModelConfig, d: &Dataset, dir: &Path) -> Trial {
    let meta = vec![("quiver.version".to_string(), "2".to_string())];
    trial::run(&Inputs {
        model,
        data: d,
        version: 2,
        metadata: &meta,
        stable: None,
        stable_fresh_from: 0,
        run_id: "0000000000001",
        runs_dir: dir.to_path_buf(),
    })
    .unwrap()
}

#[test]
fn the_lightgbm_and_scikit_learn_examples_give_checked_candidates() {
    let dir = scratch("examples");
    let commands = format!(
        "{}{}",
        example("lightgbm", "lightgbm_train.py", "{ n_estimators = 50 }"),
        example(
            "sklearn",
            "sklearn_train.py",
            "{ estimator = \"logistic\" }"
        )
    );
    let m = model(&["lightgbm", "sklearn"], &commands);
    let t = run(&m, &data(2000, true, 1), &dir);
    assert!(t.failures.is_empty(), "{}", t.failure());
    for (run, lib, script) in [
        (&t.runs[0], "lightgbm", "lightgbm_train.py"),
        (&t.runs[1], "scikit-learn", "sklearn_train.py"),
    ] {
        let c = run.command.as_ref().unwrap();
        assert_eq!(c.exit, "exit status 0", "{}", c.stderr);
        assert!(
            c.stdout.contains("1500 training rows, 500 held out"),
            "{}",
            c.stdout
        );
        assert!(c.libraries.contains_key(lib) && c.libraries.contains_key("onnx"));
        let bytes = std::fs::read(examples().join(script)).unwrap();
        assert_eq!(
            c.script_sha256.as_deref(),
            Some(sha256_bytes(&bytes).as_str())
        );
        assert!(run.parity_max_abs.unwrap() <= 1e-4, "{run:?}");
        assert!(run.offline["accuracy"] > 0.7, "{run:?}");
    }
    assert_eq!(
        t.runs[0].command.as_ref().unwrap().libraries["lightgbm"],
        "4.7.0"
    );
    assert_eq!(
        t.runs[1].command.as_ref().unwrap().libraries["scikit-learn"],
        "1.9.1"
    );
    let best = t.best.unwrap();
    let winner = t.winner.unwrap();
    assert_eq!(best.family, winner.family);
    // The linear concept: the logistic regression wins.
    assert_eq!(winner.family, "sklearn");
    assert_eq!(winner.runner_up.as_deref(), Some("lightgbm"));
    assert!(winner.margin.unwrap() > 0.0);
    let lineage = best.command.unwrap();
    assert_eq!(lineage.name, "sklearn");
    assert_eq!(lineage.libraries["skl2onnx"], "1.20.0");
    assert!(best.trained.is_none() && !best.onnx.is_empty());
    // The run directory holds what was exchanged.
    let run_dir = dir.join("0000000000001-sklearn");
    for f in [
        "spec.json",
        "train.csv",
        "holdout.csv",
        "model.onnx",
        "predictions.csv",
    ] {
        assert!(run_dir.join(f).is_file(), "{f}");
    }
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("spec.json")).unwrap()).unwrap();
    assert_eq!(spec["input"]["name"], "features");
    assert_eq!(spec["input"]["shape"], serde_json::json!([-1, 4]));
    assert_eq!(spec["classes"], 2);
    assert_eq!(spec["seed"], 5);
    assert_eq!(spec["holdout"]["rows"], 500);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A failing command: `sh -c <script>` in the run directory's context.
fn sh(name: &str, script: &str, timeout_ms: u64) -> String {
    format!(
        "[models.commands.{name}]\nargv = [\"sh\", \"-c\", {script:?}]\ntimeout_ms = {timeout_ms}\n"
    )
}

/// A scikit-learn model exported with `input` as its input name.
fn python_wrong_input(name: &str) -> String {
    let code = format!(
        "import sys; sys.path.insert(0, {:?})\n\
         import quiver_command, skl2onnx\n\
         from skl2onnx.common.data_types import FloatTensorType\n\
         from sklearn.linear_model import LogisticRegression\n\
         spec, x, y, h = quiver_command.load()\n\
         m = LogisticRegression().fit(x, y)\n\
         o = skl2onnx.convert_sklearn(m, initial_types=[('input', FloatTensorType([None, x.shape[1]]))], options={{id(m): {{'zipmap': False}}}})\n\
         spec['input']['name'] = 'x'\n\
         quiver_command.finish(spec, o, m.predict_proba(h), {{}})\n",
        examples().display().to_string()
    );
    format!(
        "[models.commands.{name}]\nargv = [\"{}\", \"-c\", {code:?}]\ntimeout_ms = 120000\n",
        python()
    )
}

#[test]
fn failing_hung_wrong_and_garbage_commands_are_failed_candidates() {
    let dir = scratch("failing");
    let d = data(400, true, 2);
    let cases = [
        (
            sh(
                "fails",
                "echo working; echo 'ValueError: no' >&2; exit 3",
                60_000,
            ),
            "fails",
            "the command exit status 3: ValueError: no",
        ),
        (
            sh("hangs", "echo started; sleep 60", 500),
            "hangs",
            "killed after the 0.5 s timeout",
        ),
        (
            sh("silent", "echo did nothing", 60_000),
            "silent",
            "the command wrote no model.onnx",
        ),
        (
            sh(
                "garbage",
                "echo garbage > \"$QUIVER_RUN_DIR/model.onnx\"; \
                 i=0; while [ $i -lt 100 ]; do echo 0.5,0.5; i=$((i+1)); done > \"$QUIVER_RUN_DIR/predictions.csv\"",
                60_000,
            ),
            "garbage",
            "ONNX Runtime refused",
        ),
        (
            python_wrong_input("wrong"),
            "wrong",
            "the model's interface is wrong: its input is 'x', the config names 'features'",
        ),
    ];
    for (table, name, want) in cases {
        let m = model(&[name], &table);
        let t = run(&m, &d, &dir);
        assert!(t.best.is_none() && t.winner.is_none(), "{name}");
        let run = &t.runs[0];
        let error = run.error.as_deref().unwrap_or_default();
        assert!(error.contains(want), "{name}: {error}");
        assert!(
            t.failure().starts_with(&format!("{name}: ")),
            "{}",
            t.failure()
        );
        if name != "wrong" {
            let c = run.command.as_ref().unwrap();
            assert!(
                c.stdout.starts_with("working")
                    || c.stdout.starts_with("started")
                    || c.stdout.starts_with("did nothing")
                    || c.stdout.is_empty(),
                "{name}: {}",
                c.stdout
            );
        }
    }
    // With a working family beside it, a failed one costs only itself.
    let m = model(&["fails", "gbt"], &sh("fails", "exit 1", 60_000));
    let t = run(&m, &d, &dir);
    assert_eq!(t.best.unwrap().family, "gbt");
    assert!(t.runs[0].error.is_some() && t.runs[1].error.is_none());
    assert_eq!(t.winner.unwrap().runner_up, None);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Champion/challenger on two streams: where trees win (xor) and where a
/// linear model wins (a linear boundary, little data for trees).
#[test]
fn champion_challenger_picks_the_better_family_on_held_out_rows() {
    let dir = scratch("champion");
    let commands = example(
        "sklearn",
        "sklearn_train.py",
        "{ estimator = \"logistic\" }",
    );
    let m = model(&["mlp", "gbt", "sklearn"], &commands);
    let xor = run(&m, &data(3000, false, 3), &dir);
    let w = xor.winner.clone().unwrap();
    assert_eq!(w.family, "gbt", "{:#?}", xor.runs);
    assert!(w.margin.unwrap() > 0.1, "{w:?}");
    assert_eq!(xor.best.unwrap().family, "gbt");
    let linear = run(&m, &data(600, true, 4), &dir);
    let w = linear.winner.clone().unwrap();
    assert!(
        w.family == "sklearn" || w.family == "mlp",
        "{:#?}",
        linear.runs
    );
    assert!(w.runner_up.is_some() && w.margin.unwrap() >= 0.0);
    let gbt = linear.runs.iter().find(|r| r.family == "gbt").unwrap();
    assert!(gbt.offline["log_loss"] > w.loss, "{:#?}", linear.runs);
    assert_eq!(linear.runs.len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}
