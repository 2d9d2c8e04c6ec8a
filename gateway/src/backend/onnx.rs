//! ONNX Runtime through the `ort` crate, loaded at run time from the
//! `onnxruntime` wheel's shared library. One Environment per process, kept
//! in a `OnceLock`; one `Session` per model instance.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, ValueType};

use super::{Backend, BackendError};
use crate::model::TensorSpec;
use crate::model_settings::ExecutionProvider;
use crate::tensor::{DataType, Tensor, TensorData};

/// The ONNX Runtime release the project is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";
/// The command that installs the library where the gateway looks for it.
pub const SETUP_COMMAND: &str = "scripts/setup.sh";

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Where `scripts/setup.sh` installs the library.
pub fn setup_location() -> Option<PathBuf> {
    let cache = match std::env::var_os("QUIVER_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/quiver"),
    };
    Some(cache.join(format!(
        "onnxruntime-{ORT_VERSION}/onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}"
    )))
}

/// The library to load: the configured path, else `ORT_DYLIB_PATH`, else
/// the set-up location, else next to the running binary.
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf, BackendError> {
    let mut tried = Vec::new();
    let candidates = [
        configured.map(Path::to_path_buf),
        std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
        setup_location(),
        std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("libonnxruntime.so"))),
    ];
    for path in candidates.into_iter().flatten() {
        if path.is_file() {
            return Ok(path);
        }
        tried.push(path.display().to_string());
    }
    Err(BackendError::Library(format!(
        "libonnxruntime.so not found (looked at: {}). Run `{SETUP_COMMAND}` to install ONNX Runtime {ORT_VERSION}, \
         or point ORT_DYLIB_PATH at libonnxruntime.so",
        tried.join(", ")
    )))
}

/// Loads the library and creates the process's one Environment, once.
pub fn environment(configured: Option<&Path>) -> Result<&'static Environment, BackendError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let _guard = INIT
        .lock()
        .map_err(|_| BackendError::Library("initialisation lock poisoned".into()))?;
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let path = find_library(configured)?;
    let env = ort::init_from(&path)
        .map_err(|e| BackendError::Library(format!("{}: {e}", path.display())))?
        .with_name("quiver")
        .build()
        .map_err(|e| BackendError::Library(format!("{}: {e}", path.display())))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// How to build a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub intra_op_threads: usize,
    pub execution_provider: ExecutionProvider,
}

/// One ONNX Runtime session: a model instance.
pub struct OnnxBackend {
    session: Session,
    input_names: Vec<String>,
    outputs: Vec<TensorSpec>,
    /// Per output: whether ONNX Runtime gives a sequence of maps.
    maps: Vec<bool>,
}

impl OnnxBackend {
    /// A session on the model file as it is.
    pub fn load(
        env: &Environment,
        model: &Path,
        options: &SessionOptions,
    ) -> Result<Self, BackendError> {
        let load = |e: String| BackendError::Load(format!("{}: {e}", model.display()));
        let session = builder(env, options)
            .map_err(load)?
            .commit_from_file(model)
            .map_err(|e| load(e.to_string()))?;
        Self::new(session)
    }

    /// A session on model bytes (rewritten at load) read from `file`;
    /// external data files, if any, are found next to it.
    pub fn from_bytes(
        env: &Environment,
        bytes: &[u8],
        file: &Path,
        options: &SessionOptions,
    ) -> Result<Self, BackendError> {
        let load = |e: String| BackendError::Load(format!("{}: {e}", file.display()));
        let mut builder = builder(env, options).map_err(load)?;
        if let Some(dir) = file.parent().and_then(Path::to_str) {
            builder = builder
                .with_config_entry("session.model_external_initializers_file_folder_path", dir)
                .map_err(|e| load(e.to_string()))?;
        }
        let session = builder
            .commit_from_memory(bytes)
            .map_err(|e| load(e.to_string()))?;
        Self::new(session)
    }

    fn new(session: Session) -> Result<Self, BackendError> {
        let input_names = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let mut outputs = Vec::new();
        let mut maps = Vec::new();
        for o in session.outputs() {
            let is_maps = super::maps::is_readable(o.dtype());
            outputs.push(if is_maps {
                TensorSpec {
                    name: o.name().to_string(),
                    datatype: DataType::Bytes,
                    shape: vec![-1],
                }
            } else {
                spec(o.name(), o.dtype())?
            });
            maps.push(is_maps);
        }
        Ok(OnnxBackend {
            session,
            input_names,
            outputs,
            maps,
        })
    }

    /// The graph's inputs, as the protocol describes them.
    pub fn input_specs(&self) -> Result<Vec<TensorSpec>, BackendError> {
        self.session
            .inputs()
            .iter()
            .map(|i| spec(i.name(), i.dtype()))
            .collect()
    }

    /// The graph's outputs, as the protocol describes them; a sequence of
    /// maps is BYTES `[rows]`, one JSON object per row.
    pub fn output_specs(&self) -> &[TensorSpec] {
        &self.outputs
    }
}

fn builder(
    env: &Environment,
    options: &SessionOptions,
) -> Result<ort::session::builder::SessionBuilder, String> {
    let builder = Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| e.to_string())?
        .with_intra_threads(options.intra_op_threads)
        .map_err(|e| e.to_string())?
        .with_inter_threads(1)
        .map_err(|e| e.to_string())?;
    with_execution_provider(builder, options.execution_provider)
}

#[cfg(not(feature = "cuda"))]
fn with_execution_provider(
    builder: ort::session::builder::SessionBuilder,
    ep: ExecutionProvider,
) -> Result<ort::session::builder::SessionBuilder, String> {
    match ep {
        ExecutionProvider::Cpu => Ok(builder),
        other => Err(format!(
            "execution provider {other:?} needs a gateway built with `--features cuda` (or `tensorrt`)"
        )),
    }
}

#[cfg(feature = "cuda")]
fn with_execution_provider(
    builder: ort::session::builder::SessionBuilder,
    ep: ExecutionProvider,
) -> Result<ort::session::builder::SessionBuilder, String> {
    use ort::ep;
    let providers = match ep {
        ExecutionProvider::Cpu => return Ok(builder),
        ExecutionProvider::Cuda => vec![ep::CUDA::default().build().error_on_failure()],
        #[cfg(feature = "tensorrt")]
        ExecutionProvider::Tensorrt => {
            vec![
                ep::TensorRT::default().build().error_on_failure(),
                ep::CUDA::default().build().error_on_failure(),
            ]
        }
        #[cfg(not(feature = "tensorrt"))]
        ExecutionProvider::Tensorrt => {
            return Err("execution provider tensorrt needs `--features tensorrt`".into());
        }
    };
    builder
        .with_execution_providers(providers)
        .map_err(|e| e.to_string())
}

fn datatype_of(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn spec(name: &str, ty: &ValueType) -> Result<TensorSpec, BackendError> {
    let ValueType::Tensor {
        ty: elem, shape, ..
    } = ty
    else {
        return Err(BackendError::Unsupported(format!(
            "'{name}' is not a tensor ({ty})"
        )));
    };
    let datatype = datatype_of(*elem)
        .ok_or_else(|| BackendError::Unsupported(format!("'{name}' has element type {elem:?}")))?;
    let shape = shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect();
    Ok(TensorSpec {
        name: name.to_string(),
        datatype,
        shape,
    })
}

fn to_value(t: Tensor) -> Result<DynValue, BackendError> {
    let err = |e: ort::Error| BackendError::Run(format!("input '{}': {e}", t.name));
    let shape = t.shape;
    macro_rules! owned {
        ($v:expr) => {
            ort::value::Tensor::from_array((shape, $v))
                .map(|x| x.into_dyn())
                .map_err(err)
        };
    }
    match t.data {
        TensorData::Bool(v) => owned!(v),
        TensorData::Uint8(v) => owned!(v),
        TensorData::Uint16(v) => owned!(v),
        TensorData::Uint32(v) => owned!(v),
        TensorData::Uint64(v) => owned!(v),
        TensorData::Int8(v) => owned!(v),
        TensorData::Int16(v) => owned!(v),
        TensorData::Int32(v) => owned!(v),
        TensorData::Int64(v) => owned!(v),
        TensorData::Fp16(v) => owned!(v),
        TensorData::Fp32(v) => owned!(v),
        TensorData::Fp64(v) => owned!(v),
        TensorData::Bytes(v) => {
            // Admission has checked these are UTF-8; ONNX strings are text.
            let strings: Vec<String> = v
                .into_iter()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .collect();
            ort::value::Tensor::from_string_array((shape, strings.as_slice()))
                .map(|x| x.into_dyn())
                .map_err(err)
        }
    }
}

fn from_value(spec: &TensorSpec, value: &DynValue) -> Result<Tensor, BackendError> {
    let err = |e: ort::Error| BackendError::Run(format!("output '{}': {e}", spec.name));
    macro_rules! copy {
        ($variant:ident, $ty:ty) => {{
            let (shape, data) = value.try_extract_tensor::<$ty>().map_err(err)?;
            (shape.to_vec(), TensorData::$variant(data.to_vec()))
        }};
    }
    let (shape, data) = match spec.datatype {
        DataType::Bool => copy!(Bool, bool),
        DataType::Uint8 => copy!(Uint8, u8),
        DataType::Uint16 => copy!(Uint16, u16),
        DataType::Uint32 => copy!(Uint32, u32),
        DataType::Uint64 => copy!(Uint64, u64),
        DataType::Int8 => copy!(Int8, i8),
        DataType::Int16 => copy!(Int16, i16),
        DataType::Int32 => copy!(Int32, i32),
        DataType::Int64 => copy!(Int64, i64),
        DataType::Fp16 => copy!(Fp16, half::f16),
        DataType::Fp32 => copy!(Fp32, f32),
        DataType::Fp64 => copy!(Fp64, f64),
        DataType::Bytes => {
            let (shape, strings) = value.try_extract_strings().map_err(err)?;
            (
                shape.to_vec(),
                TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect()),
            )
        }
    };
    Ok(Tensor {
        name: spec.name.clone(),
        shape,
        data,
    })
}

impl Backend for OnnxBackend {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (name, tensor) in self.input_names.iter().zip(inputs) {
            feed.push((
                Cow::Borrowed(name.as_str()),
                SessionInputValue::Owned(to_value(tensor)?),
            ));
        }
        let outputs = self
            .session
            .run(feed)
            .map_err(|e| BackendError::Run(e.to_string()))?;
        self.outputs
            .iter()
            .zip(&self.maps)
            .map(|(spec, &maps)| {
                let value = outputs.get(&spec.name).ok_or_else(|| {
                    BackendError::Run(format!("ONNX Runtime returned no output '{}'", spec.name))
                })?;
                if maps {
                    let rows = super::maps::json_rows(&spec.name, value)?;
                    return Ok(Tensor {
                        name: spec.name.clone(),
                        shape: vec![rows.len() as i64],
                        data: TensorData::Bytes(rows),
                    });
                }
                from_value(spec, value)
            })
            .collect()
    }
}
