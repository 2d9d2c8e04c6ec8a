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
