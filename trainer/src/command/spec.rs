//! The run directory a command reads and writes:
//!
//! - `spec.json` (written): the interface (input name and shape, outputs
//!   with their kinds), the task and classes, the seed and settings, the
//!   files below and what to write;
//! - `train.csv` (written): a header `f0,…,f{n-1},label`, then the
//!   training rows, oldest first;
//! - `holdout.csv` (written): the held-out rows' features, same header
//!   without `label`;
//! - `model.onnx` (the command's): the trained model, with the interface
//!   above;
//! - `predictions.csv` (the command's): one line per held-out row, in
//!   order: the class probabilities (classification) or the value
//!   (regression), comma-separated; a header line is allowed;
//! - `libraries.json` (the command's, optional): `{"library": "version"}`,
//!   recorded in the lineage.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use super::{CommandError, Job};
use crate::onnx::OutputKind;
use crate::train::{Dataset, Task};

pub const SPEC_FILE: &str = "spec.json";
pub const TRAIN_FILE: &str = "train.csv";
pub const HOLDOUT_FILE: &str = "holdout.csv";
pub const MODEL_OUT: &str = "model.onnx";
pub const PREDICTIONS_FILE: &str = "predictions.csv";
pub const LIBRARIES_FILE: &str = "libraries.json";
/// The spec's own schema, for the command to check.
pub const SPEC_SCHEMA: u32 = 1;

/// Writes `spec.json` and the two CSV files into a fresh `dir`.
pub fn write(dir: &Path, job: &Job<'_>, train: &Dataset, held: &Dataset) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let m = job.model;
    let features = train.features;
    let outputs: Vec<serde_json::Value> = m
        .outputs
        .iter()
        .map(|o| {
            let (datatype, shape) = match o.kind {
                OutputKind::Probabilities => ("FP32", json!([-1, m.task.width()])),
                OutputKind::Label => ("INT64", json!([-1])),
                OutputKind::Value => ("FP32", json!([-1, 1])),
            };
            json!({"name": o.name, "kind": o.kind, "datatype": datatype, "shape": shape})
        })
        .collect();
    let (task, classes) = match m.task {
        Task::Classification { classes } => ("classification", Some(classes)),
        Task::Regression => ("regression", None),
    };
    let metadata: BTreeMap<&str, &str> = job
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let spec = json!({
        "schema": SPEC_SCHEMA,
        "model": m.name,
        "version": job.version,
        "run": job.run_id,
        "family": job.name,
        "task": task,
        "classes": classes,
        "input": {"name": m.input, "datatype": "FP32", "shape": [-1, features]},
        "outputs": outputs,
        "seed": m.seed,
        "config": {"params": job.settings.params, "timeout_ms": job.settings.timeout_ms},
        "train": {"path": TRAIN_FILE, "rows": train.rows(), "label": "label"},
        "holdout": {"path": HOLDOUT_FILE, "rows": held.rows()},
        "write": {"model": MODEL_OUT, "predictions": PREDICTIONS_FILE, "libraries": LIBRARIES_FILE},
        "metadata": metadata,
    });
    let spec = serde_json::to_vec_pretty(&spec).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(SPEC_FILE), spec)?;
    std::fs::write(dir.join(TRAIN_FILE), csv(train, true))?;
    std::fs::write(dir.join(HOLDOUT_FILE), csv(held, false))
}

fn csv(d: &Dataset, label: bool) -> String {
    let mut out = String::with_capacity(d.rows() * (d.features + 1) * 10);
    let header: Vec<String> = (0..d.features).map(|j| format!("f{j}")).collect();
    out.push_str(&header.join(","));
    out.push_str(if label { ",label\n" } else { "\n" });
    for i in 0..d.rows() {
        for (j, v) in d.row(i).iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            // Rust's shortest form reads back to the same f32.
            let _ = write!(out, "{v}");
        }
        if label {
            let _ = write!(out, ",{}", d.y[i]);
        }
        out.push('\n');
    }
    out
}

/// `model.onnx` and the predictions (`rows × width`).
pub fn read_outputs(
    dir: &Path,
    width: usize,
    rows: usize,
) -> Result<(Vec<u8>, Vec<f32>), CommandError> {
    let onnx = read_output(dir, MODEL_OUT)?;
    let text = String::from_utf8(read_output(dir, PREDICTIONS_FILE)?).map_err(|e| {
        CommandError::Output {
            file: PREDICTIONS_FILE,
            message: e.to_string(),
        }
    })?;
    let predictions =
        parse_predictions(&text, width, rows).map_err(|message| CommandError::Output {
            file: PREDICTIONS_FILE,
            message,
        })?;
    Ok((onnx, predictions))
}

fn read_output(dir: &Path, file: &'static str) -> Result<Vec<u8>, CommandError> {
    std::fs::read(dir.join(file)).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CommandError::Missing(file),
        _ => CommandError::Output {
            file,
            message: e.to_string(),
        },
    })
}

fn parse_predictions(text: &str, width: usize, rows: usize) -> Result<Vec<f32>, String> {
    let mut out = Vec::with_capacity(rows * width);
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let cells: Result<Vec<f32>, _> = line.split(',').map(|c| c.trim().parse::<f32>()).collect();
        let cells = match cells {
            Ok(c) => c,
            // A header line.
            Err(_) if i == 0 => continue,
            Err(e) => return Err(format!("line {}: {e}", i + 1)),
        };
        if cells.len() != width {
            return Err(format!(
                "line {} has {} values, the task wants {width}",
                i + 1,
                cells.len()
            ));
        }
        out.extend(cells);
        n += 1;
    }
    if n != rows {
        return Err(format!("{n} rows predicted, {rows} held out"));
    }
    Ok(out)
}

/// `libraries.json`, if the command wrote a valid one.
pub fn read_libraries(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read(dir.join(LIBRARIES_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_parse_with_or_without_a_header() {
        assert_eq!(
            parse_predictions("p0,p1\n0.25,0.75\n1,0\n", 2, 2).unwrap(),
            vec![0.25, 0.75, 1.0, 0.0]
        );
        assert_eq!(
            parse_predictions("0.5\n1.5\n", 1, 2).unwrap(),
            vec![0.5, 1.5]
        );
        let short = parse_predictions("0.5\n", 1, 2).unwrap_err();
        assert!(short.contains("1 rows predicted, 2 held out"), "{short}");
        let wide = parse_predictions("0.1,0.9,0\n", 2, 1).unwrap_err();
        assert!(wide.contains("has 3 values"), "{wide}");
        assert!(parse_predictions("0.1,0.9\nx,y\n", 2, 2).is_err());
    }

    #[test]
    fn the_csv_reads_back_exactly() {
        let mut d = Dataset::new(2);
        d.push(&[0.1, -3.25e-7], 1.0);
        d.push(&[1e10, 7.0], 0.0);
        let text = csv(&d, true);
        assert_eq!(text.lines().next(), Some("f0,f1,label"));
        let back: Vec<f32> = text
            .lines()
            .skip(1)
            .flat_map(|l| {
                l.split(',')
                    .map(|c| c.parse::<f32>().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(back, vec![0.1, -3.25e-7, 1.0, 1e10, 7.0, 0.0]);
        assert_eq!(csv(&d, false).lines().next(), Some("f0,f1"));
    }
}
