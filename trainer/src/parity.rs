//! The parity check: the exported bytes run in ONNX Runtime must give what
//! the trainer's own forward pass gives on held-out rows, within a bound.
//! A model that fails is never published.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

use crate::train::Trained;

/// The ONNX Runtime release the project is built against (the gateway's).
const ORT_VERSION: &str = "1.31.1";

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, thiserror::Error)]
pub enum ParityError {
    #[error("ONNX Runtime library: {0}")]
    Library(String),
    #[error("ONNX Runtime refused the exported graph: {0}")]
    Load(String),
    #[error("ONNX Runtime failed to run the exported graph: {0}")]
    Run(String),
    #[error("ONNX Runtime and the trainer differ by {max_abs:e}, more than {bound:e}")]
    Mismatch { max_abs: f64, bound: f64 },
}

/// The result of a passed check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Parity {
    pub max_abs: f64,
    pub rows: usize,
}

/// `ORT_DYLIB_PATH`, else where `scripts/setup.sh` installs the library.
fn library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    let cache = match std::env::var_os("QUIVER_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/quiver"),
    };
    Some(cache.join(format!(
        "onnxruntime-{ORT_VERSION}/onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}"
    )))
}

/// The process's one ONNX Runtime environment.
pub fn environment() -> Result<&'static Environment, ParityError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let _guard = INIT
        .lock()
        .map_err(|_| ParityError::Library("initialisation lock poisoned".into()))?;
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let path = library().ok_or_else(|| ParityError::Library("set ORT_DYLIB_PATH".into()))?;
    let shown =
        |e: &dyn std::fmt::Display| ParityError::Library(format!("{}: {e}", path.display()));
    let env = ort::init_from(Path::new(&path))
        .map_err(|e| shown(&e))?
        .with_name("quiver-trainer")
        .build()
        .map_err(|e| shown(&e))?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// Runs `model` (ONNX bytes) on `x` (`rows × features`) and returns every
/// FP32 output, in graph order, flattened. A ZipMap output (the default
/// of skl2onnx's and onnxmltools' classifiers) is run as the gateway
/// serves it: the `[rows, classes]` probabilities, columns in key order.
pub fn run_onnx(model: &[u8], x: &[f32], features: usize) -> Result<Vec<Vec<f32>>, ParityError> {
    let env = environment()?;
    let unzipped =
        quiver_onnx::zipmap::unzip(model).map_err(|e| ParityError::Load(e.to_string()))?;
    let model = unzipped.model.as_deref().unwrap_or(model);
    let load = |e: ort::Error| ParityError::Load(e.to_string());
    let mut session: Session = Session::builder(env)
        .map_err(load)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| ParityError::Load(e.to_string()))?
        .with_intra_threads(1)
        .map_err(|e| ParityError::Load(e.to_string()))?
        .commit_from_memory(model)
        .map_err(load)?;
    let names: Vec<(String, bool)> = session
        .outputs()
        .iter()
        .map(|o| {
            let float = matches!(
                o.dtype(),
                ort::value::ValueType::Tensor {
                    ty: ort::value::TensorElementType::Float32,
                    ..
                }
            );
            (o.name().to_string(), float)
        })
        .collect();
    let input_name = session
        .inputs()
        .first()
        .map(|i| i.name().to_string())
        .ok_or_else(|| ParityError::Load("the graph has no input".into()))?;
    let rows = x.len() / features.max(1);
    let run = |e: ort::Error| ParityError::Run(e.to_string());
    let tensor = Tensor::from_array(([rows, features], x.to_vec())).map_err(run)?;
    let outputs = session
        .run(ort::inputs![input_name.as_str() => tensor])
        .map_err(run)?;
    let mut out = Vec::new();
    for (name, float) in names.iter().filter(|(_, f)| *f) {
        let _ = float;
        let value = outputs
            .get(name.as_str())
            .ok_or_else(|| ParityError::Run(format!("no output '{name}'")))?;
        let (_, data) = value.try_extract_tensor::<f32>().map_err(run)?;
        out.push(data.to_vec());
    }
    Ok(out)
}

/// Checks the exported `model` against `trained` on `x`.
pub fn check(
    trained: &Trained,
    model: &[u8],
    x: &[f32],
    bound: f64,
) -> Result<Parity, ParityError> {
    let features = trained.features();
    let ours = trained.predict(x);
    let theirs = run_onnx(model, x, features)?;
    let first = theirs
        .first()
        .ok_or_else(|| ParityError::Run("the graph has no FP32 output".into()))?;
    if first.len() != ours.len() {
        return Err(ParityError::Run(format!(
            "ONNX Runtime gave {} values, the trainer {}",
            first.len(),
            ours.len()
        )));
    }
    let max_abs = ours
        .iter()
        .zip(first)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    // NaN compares false: treat it as a mismatch.
    if max_abs.is_nan() || max_abs > bound {
        return Err(ParityError::Mismatch { max_abs, bound });
    }
    Ok(Parity {
        max_abs,
        rows: x.len() / features.max(1),
    })
}
