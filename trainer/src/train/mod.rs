//! Training: the data set shape, the two model families ([`mlp`], [`gbt`]),
//! offline metrics, and the [`Trained`] model that knows its own forward
//! pass (for parity and evaluation) and its ONNX export.

pub mod gbt;
pub mod metrics;
pub mod mlp;
pub mod rng;

use serde::{Deserialize, Serialize};

use crate::onnx::Interface;

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Task {
    /// Class indices `0..classes`.
    Classification {
        classes: usize,
    },
    Regression,
}

impl Task {
    /// Width of the forward pass's output: class probabilities or one value.
    pub fn width(self) -> usize {
        match self {
            Task::Classification { classes } => classes,
            Task::Regression => 1,
        }
    }
}

/// Rows of FP32 features (row-major) with one target each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    pub features: usize,
    pub x: Vec<f32>,
    pub y: Vec<f32>,
}

impl Dataset {
    pub fn new(features: usize) -> Self {
        Dataset {
            features,
            ..Dataset::default()
        }
    }

    pub fn rows(&self) -> usize {
        self.y.len()
    }

    pub fn push(&mut self, row: &[f32], y: f32) {
        self.x.extend_from_slice(row);
        self.y.push(y);
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.features..(i + 1) * self.features]
    }

    /// Rows `range`, in order.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Dataset {
        Dataset {
            features: self.features,
            x: self.x[range.start * self.features..range.end * self.features].to_vec(),
            y: self.y[range].to_vec(),
        }
    }

    /// How many of the newest rows `split_tail(fraction)` holds out: at
    /// least one (of two or more), at most half.
    pub fn tail_rows(&self, fraction: f64) -> usize {
        let n = self.rows();
        ((n as f64 * fraction).round() as usize).clamp(usize::from(n > 1), n / 2)
    }

    /// Splits off the newest `fraction` of rows (the data is time-ordered,
    /// so the held-out part is the most recent): `(older, newest)`.
    pub fn split_tail(&self, fraction: f64) -> (Dataset, Dataset) {
        let n = self.rows();
        let held = self.tail_rows(fraction);
        (self.slice(0..n - held), self.slice(n - held..n))
    }
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("no rows to train on")]
    Empty,
    #[error("label {0} is not a class index below {1}")]
    BadLabel(f32, usize),
    #[error("invalid training settings: {0}")]
    Settings(String),
    #[error("training diverged (a loss of {0})")]
    Diverged(f64),
}

/// A trained model of either family.
#[derive(Debug, Clone)]
pub enum Trained {
    Mlp(mlp::Mlp),
    Gbt(gbt::Gbt),
}

impl Trained {
    pub fn task(&self) -> Task {
        match self {
            Trained::Mlp(m) => m.task,
            Trained::Gbt(g) => g.task,
        }
    }

    pub fn features(&self) -> usize {
        match self {
            Trained::Mlp(m) => m.features(),
            Trained::Gbt(g) => g.features,
        }
    }

    /// The trainer's own forward pass: `rows × task.width()` outputs.
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        match self {
            Trained::Mlp(m) => m.predict(x),
            Trained::Gbt(g) => g.predict(x),
        }
    }

    /// The ONNX graph with `metadata` in `metadata_props`.
    pub fn to_onnx(
        &self,
        interface: &Interface,
        version: u64,
        metadata: &[(String, String)],
    ) -> Vec<u8> {
        match self {
            Trained::Mlp(m) => m.to_onnx(interface, version, metadata),
            Trained::Gbt(g) => g.to_onnx(interface, version, metadata),
        }
    }

    pub fn family(&self) -> &'static str {
        match self {
            Trained::Mlp(_) => "mlp",
            Trained::Gbt(_) => "gbt",
        }
    }
}

/// Checks labels against the task.
pub(crate) fn check_labels(task: Task, data: &Dataset) -> Result<(), TrainError> {
    if data.rows() == 0 {
        return Err(TrainError::Empty);
    }
    if let Task::Classification { classes } = task {
        for &y in &data.y {
            if y < 0.0 || y.fract() != 0.0 || y as usize >= classes {
                return Err(TrainError::BadLabel(y, classes));
            }
        }
    }
    Ok(())
}

/// Adds the output nodes after `scores` (FP32 `[batch, width]`; logits for
/// classifiers) that the interface asks for.
pub(crate) fn export_head(
    g: &mut crate::onnx::GraphBuilder,
    task: Task,
    interface: &Interface,
    scores: &str,
    softmax: bool,
) {
    use crate::onnx::{Dim, OutputKind, attr_int, proto};
    let named = |kind: OutputKind| {
        interface
            .outputs
            .iter()
            .find(|o| o.kind == kind)
            .map(|o| o.name.clone())
    };
    match task {
        Task::Classification { classes } => {
            let probs = named(OutputKind::Probabilities).unwrap_or_else(|| "probabilities".into());
            if softmax {
                g.node("Softmax", &[scores], &[&probs], vec![attr_int("axis", 1)]);
            } else {
                g.node("Identity", &[scores], &[&probs], vec![]);
            }
            if let Some(label) = named(OutputKind::Label) {
                g.node(
                    "ArgMax",
                    &[&probs],
                    &[&label],
                    vec![attr_int("axis", 1), attr_int("keepdims", 0)],
                );
            }
            for o in &interface.outputs {
                match o.kind {
                    OutputKind::Probabilities | OutputKind::Value => {
                        g.output(&o.name, proto::FLOAT, &[Dim::Batch, Dim::Fixed(classes)])
                    }
                    OutputKind::Label => g.output(&o.name, proto::INT64, &[Dim::Batch]),
                }
            }
        }
        Task::Regression => {
            let value = named(OutputKind::Value).unwrap_or_else(|| "value".into());
            g.node("Identity", &[scores], &[&value], vec![]);
            g.output(&value, proto::FLOAT, &[Dim::Batch, Dim::Fixed(1)]);
        }
    }
}

/// `0` means every core.
pub(crate) fn threads(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}
