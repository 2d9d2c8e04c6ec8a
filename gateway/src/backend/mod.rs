//! The engine behind a model instance. The trait is small and synchronous:
//! each instance runs on its own OS thread (see `batcher`), never on the
//! async runtime. [`onnx`] is ONNX Runtime; [`maps`] reads the outputs it
//! gives as a sequence of maps (a ZipMap kept as it is).

pub mod maps;
pub mod onnx;

use std::path::PathBuf;

use serde::Deserialize;

use crate::tensor::Tensor;

/// Runs one batch. `inputs` come in the model's input order and already
/// match its spec; outputs come back in the model's output order.
pub trait Backend: Send {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError>;
}

/// A failure of the engine. `Clone`, so one failure can answer every
/// request of the batch.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum BackendError {
    #[error("ONNX Runtime library not available: {0}")]
    Library(String),
    #[error("cannot load model: {0}")]
    Load(String),
    #[error("model uses an unsupported tensor type: {0}")]
    Unsupported(String),
    #[error("inference failed: {0}")]
    Run(String),
}

/// `[onnxruntime]`: the engine behind every model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrtConfig {
    /// Path of `libonnxruntime.so`. Unset: `ORT_DYLIB_PATH`, then the
    /// location `scripts/setup.sh` installs to, then next to the binary.
    pub library_path: Option<PathBuf>,
}
