//! Exported graphs pass `onnx.checker.check_model(full_check=True)` (with
//! the project's Python venv, `QUIVER_PYTHON`) and give the trainer's own
//! outputs in ONNX Runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::process::Command;

use quiver_trainer::onnx::{Interface, OutputKind, OutputSpec};
use quiver_trainer::parity;
use quiver_trainer::train::gbt::{Gbt, GbtSettings};
use quiver_trainer::train::mlp::{Mlp, MlpSettings};
use quiver_trainer::train::rng::Rng;
use quiver_trainer::train::{Dataset, Task, Trained};

const CHECK: &str = r#"
import sys, onnx
m = onnx.load(sys.argv[1])
onnx.checker.check_model(m, full_check=True)
assert m.ir_version == 8, m.ir_version
ops = {o.domain: o.version for o in m.opset_import}
assert ops[""] == 17, ops
g = m.graph
assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
meta = {p.key: p.value for p in m.metadata_props}
assert meta["quiver.version"] == "3", meta
print(",".join([i.name for i in g.input] + [o.name for o in g.output]))
"#;

fn python_check(bytes: &[u8], tag: &str) -> String {
    let python = std::env::var("QUIVER_PYTHON")
        .expect("QUIVER_PYTHON must name the venv's python: eval \"$(scripts/setup.sh)\"");
    let path =
        std::env::temp_dir().join(format!("quiver-export-{tag}-{}.onnx", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new(python)
        .arg("-c")
        .arg(CHECK)
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(
        out.status.success(),
        "onnx.checker refused {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn data(task: Task, rows: usize, features: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let mut d = Dataset::new(features);
    for _ in 0..rows {
        let x: Vec<f32> = (0..features)
            .map(|j| (rng.next_f64() as f32 - 0.5) * (j + 1) as f32)
            .collect();
        let s = x[0] * 2.0 - x[1] + 0.5 * x[2] * x[2];
        let y = match task {
            Task::Classification { classes } => {
                ((s + 2.0).max(0.0) as usize).min(classes - 1) as f32
            }
            Task::Regression => s,
        };
        d.push(&x, y);
    }
    d
}

fn interface(task: Task) -> Interface {
    let outputs = match task {
        Task::Classification { .. } => vec![
            OutputSpec {
                name: "probabilities".into(),
                kind: OutputKind::Probabilities,
            },
            OutputSpec {
                name: "label".into(),
                kind: OutputKind::Label,
            },
        ],
        Task::Regression => vec![OutputSpec {
            name: "value".into(),
            kind: OutputKind::Value,
        }],
    };
    Interface {
        input: "features".into(),
        outputs,
    }
}

fn check_all(tag: &str, task: Task, model: Trained, d: &Dataset) {
    let meta = vec![("quiver.version".to_string(), "3".to_string())];
    let bytes = model.to_onnx(&interface(task), 3, &meta);
    let names = python_check(&bytes, tag);
    let want = match task {
        Task::Classification { .. } => "features,probabilities,label",
        Task::Regression => "features,value",
    };
    assert_eq!(names, want, "{tag}");
    let held = d.slice(d.rows() - 200..d.rows());
    let p = parity::check(&model, &bytes, &held.x, 1e-4).unwrap();
    assert_eq!(p.rows, 200);
    eprintln!("{tag}: parity max abs {:e}", p.max_abs);
}

#[test]
fn mlp_graphs_pass_the_checker_and_match_onnx_runtime() {
    for (tag, task, hidden) in [
        (
            "mlp-3class",
            Task::Classification { classes: 3 },
            vec![16, 8],
        ),
        ("logistic", Task::Classification { classes: 2 }, vec![]),
        ("mlp-regression", Task::Regression, vec![8]),
    ] {
        let d = data(task, 2000, 5, 1);
        let settings = MlpSettings {
            hidden,
            max_epochs: 3,
            ..MlpSettings::default()
        };
        let m = Mlp::train(task, &d, &settings, 1).unwrap();
        check_all(tag, task, Trained::Mlp(m), &d);
    }
}

#[test]
fn tree_ensembles_pass_the_checker_and_match_onnx_runtime() {
    for (tag, task) in [
        ("gbt-binary", Task::Classification { classes: 2 }),
        ("gbt-3class", Task::Classification { classes: 3 }),
        ("gbt-regression", Task::Regression),
    ] {
        let d = data(task, 2000, 5, 2);
        let settings = GbtSettings {
            rounds: 20,
            max_depth: 4,
            ..GbtSettings::default()
        };
        let m = Gbt::train(task, &d, &settings).unwrap();
        check_all(tag, task, Trained::Gbt(m), &d);
    }
}

/// The one candidate of a single-family model.
fn train_candidate(
    model: &quiver_trainer::config::ModelConfig,
    data: &Dataset,
    version: u64,
    metadata: &[(String, String)],
    stable: Option<&[u8]>,
    stable_fresh_from: usize,
) -> quiver_trainer::publish::Candidate {
    let trial = quiver_trainer::trial::run(&quiver_trainer::trial::Inputs {
        model,
        data,
        version,
        metadata,
        stable,
        stable_fresh_from,
        run_id: "test",
        runs_dir: std::env::temp_dir(),
    })
    .unwrap();
    assert_eq!(trial.runs.len(), 1);
    let why = trial.failure();
    trial.best.unwrap_or_else(|| panic!("{why}"))
}

/// A candidate is judged on the newest rows held out, then refitted on the
/// whole window (the MLP for the epochs early stopping kept) and that
/// model is the one exported and parity-checked; without `refit` the
/// held-out rows never reach the published model.
#[test]
fn candidates_are_refitted_on_the_whole_window() {
    use quiver_trainer::config::ModelConfig;
    let task = Task::Classification { classes: 2 };
    let d = data(task, 3000, 5, 3);
    for family in ["mlp", "gbt"] {
        for refit in [true, false] {
            let model: ModelConfig = toml::from_str(&format!(
                r#"
                name = "m"
                task = {{ kind = "classification", classes = 2 }}
                input = "features"
                outputs = [{{ name = "probabilities", kind = "probabilities" }}]
                family = "{family}"
                holdout_fraction = 0.2
                refit = {refit}
                mlp = {{ hidden = [8], max_epochs = 4 }}
                gbt = {{ rounds = 10, max_depth = 3 }}
                "#
            ))
            .unwrap();
            let c = train_candidate(&model, &d, 2, &[], None, 0);
            let want = if refit { 3000 } else { 2400 };
            assert_eq!(c.rows, want, "{family} refit={refit}");
            assert!(c.parity_max_abs <= 1e-4, "{family}: {}", c.parity_max_abs);
            assert!(c.offline["accuracy"] > 0.6, "{family}: {:?}", c.offline);
            assert_eq!(c.family, family);
            if let Some(Trained::Mlp(m)) = &c.trained {
                assert!(m.best_epochs >= 1 && m.best_epochs <= 4);
                if refit {
                    assert_eq!(m.epochs, m.best_epochs, "the refit runs the kept epochs");
                }
            }
        }
    }
}

/// The held-out slice (candidate against stable) is cut to rows stable
/// was not trained on, when enough of them are left.
#[test]
fn the_stable_comparison_uses_rows_stable_has_not_seen() {
    use quiver_trainer::config::ModelConfig;
    use quiver_trainer::trial::MIN_FRESH_ROWS;
    let task = Task::Classification { classes: 2 };
    let d = data(task, 3000, 5, 4);
    let model: ModelConfig = toml::from_str(
        r#"
        name = "m"
        task = { kind = "classification", classes = 2 }
        input = "features"
        outputs = [{ name = "probabilities", kind = "probabilities" }]
        family = "gbt"
        holdout_fraction = 0.2
        gbt = { rounds = 10, max_depth = 3 }
        "#,
    )
    .unwrap();
    // Stable saw rows 0..2700; the held-out slice is 2400..3000.
    let settings = GbtSettings {
        rounds: 10,
        max_depth: 3,
        ..GbtSettings::default()
    };
    let stable = Gbt::train(task, &d.slice(0..2700), &settings).unwrap();
    let iface = Interface {
        input: "features".into(),
        outputs: vec![OutputSpec {
            name: "probabilities".into(),
            kind: OutputKind::Probabilities,
        }],
    };
    let bytes = Trained::Gbt(stable).to_onnx(&iface, 1, &[]);
    for (fresh_from, rows) in [
        (2700, 300),
        (0, 600),
        (3000 - MIN_FRESH_ROWS + 1, 600),
        (1000, 600),
    ] {
        let c = train_candidate(&model, &d, 2, &[], Some(&bytes), fresh_from);
        assert_eq!(c.held_rows, rows, "fresh from {fresh_from}");
        let stable = c.stable_offline.unwrap();
        assert!(c.offline["accuracy"] > 0.6 && stable["accuracy"] > 0.6);
    }
}

/// A classifier ending in a ZipMap (skl2onnx's and onnxmltools' default)
/// runs in the parity check as the gateway serves it: the probabilities
/// tensor, columns in key order, whatever order the labels are listed in.
#[test]
fn parity_runs_zipmap_classifiers_as_their_probabilities() {
    use quiver_trainer::onnx::{Dim, GraphBuilder, attr_ints, attr_strings, proto};
    let x = [0.0f32, 1.0, 2.0, 2.0, 0.5, -1.0];
    let softmax = |row: &[f32]| {
        let e: Vec<f32> = row.iter().map(|v| v.exp()).collect();
        let s: f32 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect::<Vec<f32>>()
    };
    let p: Vec<Vec<f32>> = x.chunks(3).map(softmax).collect();
    let cases = [
        (attr_ints("classlabels_int64s", vec![3, 5, 7]), [0, 1, 2]),
        (
            attr_strings("classlabels_strings", &["emu", "cat", "dog"]),
            [1, 2, 0],
        ),
    ];
    for (labels, columns) in cases {
        let mut g = GraphBuilder::new("zipmap");
        g.input("x", proto::FLOAT, &[Dim::Batch, Dim::Fixed(3)]);
        g.node("Softmax", &["x"], &["probabilities"], vec![]);
        g.ml_node(
            "ZipMap",
            &["probabilities"],
            &["output_probability"],
            vec![labels],
        );
        // The builder declares tensors only; the rewrite replaces this
        // declaration (a sequence of maps in a real export) anyway.
        g.output(
            "output_probability",
            proto::FLOAT,
            &[Dim::Batch, Dim::Fixed(3)],
        );
        let got = parity::run_onnx(&g.finish(1, &[]), &x, 3).unwrap();
        let want: Vec<f32> = p
            .iter()
            .flat_map(|row| columns.iter().map(|&c| row[c]))
            .collect();
        assert_eq!(got.len(), 1);
        for (a, b) in got[0].iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}
