//! The parity check: the exported bytes run in ONNX Runtime must give what
//! the trainer's own forward pass gives on held-out rows, within a bound.
//! A model that fails is never published.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

use crate::onnx::{Interface, OutputKind};
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
    #[error("the model's interface is wrong: {0}")]
    Interface(String),
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

/// A session on `model` (ONNX bytes), a ZipMap output (the default of
/// skl2onnx's and onnxmltools' classifiers) rewritten into the
/// `[rows, classes]` probabilities the gateway serves, columns in key
/// order.
fn session(model: &[u8]) -> Result<Session, ParityError> {
    let env = environment()?;
    let unzipped =
        quiver_onnx::zipmap::unzip(model).map_err(|e| ParityError::Load(e.to_string()))?;
    let model = unzipped.model.as_deref().unwrap_or(model);
    let load = |e: ort::Error| ParityError::Load(e.to_string());
    Session::builder(env)
        .map_err(load)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| ParityError::Load(e.to_string()))?
        .with_intra_threads(1)
        .map_err(|e| ParityError::Load(e.to_string()))?
        .commit_from_memory(model)
        .map_err(load)
}

fn is_float(t: &ort::value::ValueType) -> bool {
    matches!(
        t,
        ort::value::ValueType::Tensor {
            ty: ort::value::TensorElementType::Float32,
            ..
        }
    )
}

/// Runs `session` on `x` and returns the named FP32 outputs, flattened.
fn run_session(
    session: &mut Session,
    x: &[f32],
    features: usize,
    names: &[String],
) -> Result<Vec<Vec<f32>>, ParityError> {
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
    for name in names {
        let value = outputs
            .get(name.as_str())
            .ok_or_else(|| ParityError::Run(format!("no output '{name}'")))?;
        let (_, data) = value.try_extract_tensor::<f32>().map_err(run)?;
        out.push(data.to_vec());
    }
    Ok(out)
}

/// Runs `model` (ONNX bytes) on `x` (`rows × features`) and returns every
/// FP32 output, in graph order, flattened (a ZipMap as the gateway
/// serves it, see [`session`]).
pub fn run_onnx(model: &[u8], x: &[f32], features: usize) -> Result<Vec<Vec<f32>>, ParityError> {
    let mut session = session(model)?;
    let names: Vec<String> = session
        .outputs()
        .iter()
        .filter(|o| is_float(o.dtype()))
        .map(|o| o.name().to_string())
        .collect();
    run_session(&mut session, x, features, &names)
}

/// A model from elsewhere (a training command), loaded in ONNX Runtime and
/// checked against the interface the clients use.
pub struct Foreign {
    session: Session,
    /// The output compared and scored: the probabilities or the value.
    scored: String,
    features: usize,
}

impl Foreign {
    /// Loads `model` and checks it has exactly `interface`: one FP32
    /// input of that name taking `features` columns, and the named
    /// outputs of the right kinds, no more.
    pub fn load(
        model: &[u8],
        interface: &Interface,
        features: usize,
        width: usize,
    ) -> Result<Foreign, ParityError> {
        let session = session(model)?;
        let wrong = |why: String| Err(ParityError::Interface(why));
        let inputs: Vec<String> = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let [input] = session.inputs() else {
            return wrong(format!(
                "it has inputs {inputs:?}, the config names one: '{}'",
                interface.input
            ));
        };
        if input.name() != interface.input {
            return wrong(format!(
                "its input is '{}', the config names '{}'",
                input.name(),
                interface.input
            ));
        }
        if !is_float(input.dtype()) {
            return wrong(format!("its input '{}' is not FP32", input.name()));
        }
        if let Some(shape) = input.dtype().tensor_shape()
            && (shape.len() != 2 || (shape[1] > 0 && shape[1] as usize != features))
        {
            return wrong(format!(
                "its input has shape {:?}, the data has {features} features",
                &shape[..]
            ));
        }
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        for o in session.outputs() {
            let Some(spec) = interface.outputs.iter().find(|s| s.name == o.name()) else {
                return wrong(format!(
                    "it has output '{}', which the config does not name (it names {:?})",
                    o.name(),
                    interface
                        .outputs
                        .iter()
                        .map(|s| &s.name)
                        .collect::<Vec<_>>()
                ));
            };
            let ok = match spec.kind {
                OutputKind::Probabilities | OutputKind::Value => is_float(o.dtype()),
                OutputKind::Label => matches!(
                    o.dtype(),
                    ort::value::ValueType::Tensor {
                        ty: ort::value::TensorElementType::Int64,
                        ..
                    }
                ),
            };
            let dims = o.dtype().tensor_shape().map(|s| s.to_vec());
            if spec.kind != OutputKind::Label
                && let Some(d) = dims.as_deref().filter(|d| d.len() == 2 && d[1] > 0)
                && d[1] as usize != width
            {
                return wrong(format!(
                    "its output '{}' has {} columns, the task wants {width}",
                    o.name(),
                    d[1]
                ));
            }
            if !ok {
                return wrong(format!(
                    "its output '{}' has type {}, a {:?} output wants {}",
                    o.name(),
                    o.dtype(),
                    spec.kind,
                    if spec.kind == OutputKind::Label {
                        "INT64"
                    } else {
                        "FP32"
                    }
                ));
            }
        }
        for spec in &interface.outputs {
            if !outputs.contains(&spec.name) {
                return wrong(format!(
                    "it has no output '{}' (it has {outputs:?})",
                    spec.name
                ));
            }
        }
        let scored = interface
            .outputs
            .iter()
            .find(|o| matches!(o.kind, OutputKind::Probabilities | OutputKind::Value))
            .map(|o| o.name.clone())
            .ok_or_else(|| ParityError::Interface("the config names no scored output".into()))?;
        Ok(Foreign {
            session,
            scored,
            features,
        })
    }

    /// The scored output on `x` (`rows × width`).
    pub fn predict(&mut self, x: &[f32]) -> Result<Vec<f32>, ParityError> {
        let names = [self.scored.clone()];
        run_session(&mut self.session, x, self.features, &names)?
            .pop()
            .ok_or_else(|| ParityError::Run("no output".into()))
    }
}

/// The largest difference between `ours` and `theirs`, within `bound`.
pub fn compare(ours: &[f32], theirs: &[f32], bound: f64) -> Result<f64, ParityError> {
    if theirs.len() != ours.len() {
        return Err(ParityError::Run(format!(
            "ONNX Runtime gave {} values, the trainer {}",
            theirs.len(),
            ours.len()
        )));
    }
    let max_abs = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    // NaN compares false: treat it as a mismatch.
    if max_abs.is_nan() || max_abs > bound {
        return Err(ParityError::Mismatch { max_abs, bound });
    }
    Ok(max_abs)
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
    let max_abs = compare(&ours, first, bound)?;
    Ok(Parity {
        max_abs,
        rows: x.len() / features.max(1),
    })
}
