//! Users' training code in the closed loop: the shipped LightGBM
//! (onnxmltools) and scikit-learn (skl2onnx) examples run as the trainer's
//! `command` family, their models published with parity and lineage and
//! promoted by the trainer's canary on the real gateway; then commands
//! that fail, hang, write a model with the wrong input name or garbage
//! make a failed run, publish nothing, and stable keeps serving.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use quiver_contract::manifest::{Manifest, sha256_bytes};
use quiver_contract::runs::{Outcome, RunRecord};
use quiver_tests::root;

use super::{applied, config, events, local_loop, scratch, versions};

/// The loop's config with `families` as candidates and `commands` tables.
fn with_commands(dir: &Path, tag: &str, families: &[&str], commands: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(config(dir, false, None)?)?;
    let text = text.replace(
        "seed = 7\n",
        &format!("seed = 7\ncandidates = {families:?}\n"),
    );
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, format!("{text}{commands}"))?;
    Ok(path)
}

fn example(name: &str, script: &str, params: &str) -> Result<String> {
    let python = std::env::var("QUIVER_PYTHON").context("QUIVER_PYTHON")?;
    Ok(format!(
        "[models.commands.{name}]\nargv = [\"{python}\", \"{}\"]\ntimeout_ms = 120000\nparams = {params}\n",
        root().join("examples/training").join(script).display()
    ))
}

fn sh(name: &str, script: &str, timeout_ms: u64) -> String {
    format!(
        "[models.commands.{name}]\nargv = [\"sh\", \"-c\", {script:?}]\ntimeout_ms = {timeout_ms}\n"
    )
}

/// Shell that writes one `0.5,0.5` line per held-out row.
const HALVES: &str = "n=$(($(wc -l < \"$QUIVER_RUN_DIR/holdout.csv\") - 1)); \
    i=0; while [ $i -lt $n ]; do echo 0.5,0.5; i=$((i+1)); done > \"$QUIVER_RUN_DIR/predictions.csv\"";

pub(super) fn run_records(dir: &Path) -> Result<Vec<RunRecord>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("repo/m/runs"))? {
        out.push(RunRecord::parse(&std::fs::read(e?.path())?)?);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The first version made by command `name` that was promoted.
fn promoted_from(dir: &Path, name: &str) -> Option<u64> {
    events(dir)
        .iter()
        .filter(|e| e["event"] == "promoted")
        .filter_map(|e| e["version"].as_u64())
        .find(|&v| {
            Manifest::read(
                &dir.join(format!("repo/m/{v}/manifest.json")),
                Some(("m", v)),
            )
            .ok()
            .and_then(|m| m.lineage?.command)
            .is_some_and(|c| c.name == name)
        })
}

/// Version `v`: made by command `name` (script, libraries in the lineage),
/// parity-checked, its run record naming the winner and promoted.
fn check_command_version(
    dir: &Path,
    v: u64,
    name: &str,
    script: &str,
    library: (&str, &str),
) -> Result<()> {
    let m = Manifest::read(
        &dir.join(format!("repo/m/{v}/manifest.json")),
        Some(("m", v)),
    )?;
    let lineage = m.lineage.context("lineage")?;
    assert!(lineage.parent.is_some_and(|p| p < v), "{lineage:?}");
    let command = lineage.command.context("no command in the lineage")?;
    assert_eq!(command.name, name);
    let bytes = std::fs::read(root().join("examples/training").join(script))?;
    assert_eq!(
        command.script_sha256.as_deref(),
        Some(sha256_bytes(&bytes).as_str())
    );
    assert_eq!(
        command.libraries.get(library.0).map(String::as_str),
        Some(library.1)
    );
    assert!(m.parity_max_abs.context("parity")? <= 1e-4);
    assert!(m.metrics["offline"]["log_loss"] < m.metrics["offline_parent"]["log_loss"]);
    let run = run_records(dir)?
        .into_iter()
        .find(|r| r.outcome == Outcome::Published { version: v })
        .context("no run record")?;
    assert_eq!(run.family, name);
    assert_eq!(run.winner.as_ref().map(|w| w.family.as_str()), Some(name));
    let c = run.candidates[0].command.as_ref().context("command run")?;
    assert_eq!(c.exit, "exit status 0", "{}", c.stderr);
    assert!(c.stdout.contains("training rows"), "{}", c.stdout);
    assert_eq!(lineage.run.as_deref(), Some(run.id.as_str()));
    assert_eq!(
        run.rollout.as_ref().map(|r| r.result.as_str()),
        Some("promoted")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lightgbm_and_scikit_learn_commands_publish_and_promote_and_failures_keep_stable()
-> Result<()> {
    let dir = scratch("commands")?;
    let (gw, mut traffic) = local_loop(&dir).await?;

    // Concept B: LightGBM, exported with onnxmltools, replaces the MLP.
    // (A version the canary rolls back, or one a later run replaces,
    // may come between: the test waits for the command's promotion.)
    let lgbm = example("lightgbm", "lightgbm_train.py", "{ n_estimators = 60 }")?;
    let cfg = with_commands(&dir, "lightgbm", &["lightgbm"], &lgbm)?;
    traffic
        .with_trainer(
            &gw,
            &dir,
            (&cfg, "a"),
            "a LightGBM version promoted",
            || promoted_from(&dir, "lightgbm").is_some(),
        )
        .await?;
    let v = promoted_from(&dir, "lightgbm").context("promoted")?;
    check_command_version(
        &dir,
        v,
        "lightgbm",
        "lightgbm_train.py",
        ("lightgbm", "4.7.0"),
    )?;

    // Back to concept A: a scikit-learn pipeline (scaler + logistic
    // regression), exported with skl2onnx, replaces LightGBM. Its first
    // candidate may still learn from concept B rows in the window (and be
    // rolled back); a later one learns concept A.
    traffic.drifted = false;
    let skl = example(
        "sklearn",
        "sklearn_train.py",
        "{ estimator = \"logistic\", C = 100.0 }",
    )?;
    let cfg = with_commands(&dir, "sklearn", &["sklearn"], &skl)?;
    traffic
        .with_trainer(
            &gw,
            &dir,
            (&cfg, "b"),
            "a scikit-learn version promoted",
            || promoted_from(&dir, "sklearn").is_some(),
        )
        .await?;
    let v = promoted_from(&dir, "sklearn").context("promoted")?;
    check_command_version(
        &dir,
        v,
        "sklearn",
        "sklearn_train.py",
        ("scikit-learn", "1.9.1"),
    )?;
    let before = versions(&dir);

    // Commands that fail four ways: a failed run with each reason.
    let slow = root().join("examples/models/slow/1/model.onnx");
    let failing = [
        sh("fails", "echo 'ValueError: no rows' >&2; exit 3", 60_000),
        sh("hangs", "sleep 60", 1000),
        sh(
            "wrong",
            &format!(
                "cp '{}' \"$QUIVER_RUN_DIR/model.onnx\"; {HALVES}",
                slow.display()
            ),
            60_000,
        ),
        sh(
            "garbage",
            &format!("echo garbage > \"$QUIVER_RUN_DIR/model.onnx\"; {HALVES}"),
            60_000,
        ),
    ]
    .concat();
    let cfg = with_commands(
        &dir,
        "failing",
        &["fails", "hangs", "wrong", "garbage"],
        &failing,
    )?;
    let failures = || {
        events(&dir)
            .iter()
            .filter(|e| e["event"] == "retrain_failed")
            .count()
    };
    let earlier = failures();
    traffic
        .with_trainer(&gw, &dir, (&cfg, "c"), "a failed run", || {
            failures() > earlier
        })
        .await?;
    let failed = run_records(&dir)?
        .into_iter()
        .find(|r| r.family == "fails,hangs,wrong,garbage")
        .context("no run of the failing commands")?;
    let Outcome::Failed { reason } = &failed.outcome else {
        unreachable!()
    };
    for (i, want) in [
        "the command exit status 3: ValueError: no rows",
        "killed after the 1.0 s timeout",
        "its input is 'x', the config names 'features'",
        "ONNX Runtime refused the exported graph",
    ]
    .iter()
    .enumerate()
    {
        assert!(reason.contains(want), "{want}: {reason}");
        let candidate = &failed.candidates[i];
        assert!(
            candidate.error.as_deref().is_some_and(|e| e.contains(want)),
            "{candidate:?}"
        );
        assert!(candidate.command.is_some());
    }
    assert!(failed.winner.is_none());
    assert_eq!(
        versions(&dir),
        before,
        "a failed run published; events: {:#?}",
        events(&dir)
    );
    // Stable keeps serving.
    let reg = quiver_registry::Registry::open(
        dir.join("repo").to_str().context("path")?,
        &Default::default(),
    )?;
    let (stored, _) = quiver_registry::control::read_routing(&reg, "m")?;
    let stable = stored.stable.context("no stable version")?;
    applied(&gw, "the stable version", |r| r["stable"] == stable).await?;
    let body = serde_json::json!({"inputs": [{"name": "features", "datatype": "FP32",
        "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]});
    let r = gw.post_json("/v2/models/m/infer", &body).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["model_version"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| before.contains(&v)),
        "{}",
        r.text()
    );
    // The gateway appends that request to its log in the directory: stop
    // it first, and give a training command the killed trainer left
    // behind a moment to end (it runs to its own end or timeout).
    drop(gw);
    let mut removed = std::fs::remove_dir_all(&dir);
    for _ in 0..25 {
        if removed.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        removed = std::fs::remove_dir_all(&dir);
    }
    removed?;
    Ok(())
}

/// Rows the trainer has joined, as its state file says.
fn joined(dir: &Path) -> u64 {
    std::fs::read(dir.join("state/state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|s| s["joiner"]["counts"]["joined"].as_u64())
        .unwrap_or(0)
}

/// Training runs off the consuming loop: while a command waits for a gate
/// file (it cannot end before the test creates it), the trainer keeps
/// joining predictions with labels and saving its state, and starts no
/// second training of the model; once the gate opens the run is taken up
/// and published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_go_on_while_a_slow_command_trains() -> Result<()> {
    let dir = scratch("slow-command")?;
    let (gw, mut traffic) = local_loop(&dir).await?;
    let gate = dir.join("gate");
    let python = std::env::var("QUIVER_PYTHON").context("QUIVER_PYTHON")?;
    let script = root().join("examples/training/sklearn_train.py");
    let gated = sh(
        "gated",
        &format!(
            "while [ ! -f '{}' ]; do sleep 0.05; done; exec '{python}' '{}'",
            gate.display(),
            script.display()
        ),
        600_000,
    );
    let cfg = with_commands(&dir, "gated", &["gated"], &gated)?;
    let mut t = super::trainer(&cfg, &dir, "a")?;
    let started = || {
        events(&dir)
            .iter()
            .filter(|e| e["event"] == "retrain_started")
            .count()
    };
    traffic
        .until(&gw, &dir, "a training started", || started() > 0)
        .await?;
    let at_start = joined(&dir);
    // Two triggers' worth of rows while the command waits.
    traffic
        .until(&gw, &dir, "joins while the command trains", || {
            joined(&dir) >= at_start + 1600
        })
        .await?;
    let seen = events(&dir);
    assert!(
        !seen
            .iter()
            .any(|e| e["event"] == "retrain_finished" || e["event"] == "retrain_failed"),
        "the gated run ended before its gate opened: {seen:#?}"
    );
    assert_eq!(started(), 1, "a second training of the model started");
    let running = run_records(&dir)?;
    assert_eq!(
        running.last().map(|r| &r.outcome),
        Some(&Outcome::Running),
        "{running:#?}"
    );
    std::fs::write(&gate, b"")?;
    traffic
        .until(&gw, &dir, "the gated run published", || {
            promoted_from(&dir, "gated").is_some()
                || events(&dir).iter().any(|e| e["event"] == "published")
        })
        .await?;
    t.kill()?;
    t.wait()?;
    let run = run_records(&dir)?
        .into_iter()
        .find(|r| r.family == "gated")
        .context("no gated run")?;
    assert!(matches!(run.outcome, Outcome::Published { .. }), "{run:#?}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
