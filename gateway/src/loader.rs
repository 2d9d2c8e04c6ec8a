//! One version directory → a served version: manifest and checksums,
//! sessions, the interface (read from the graph, narrowed by config),
//! warm-up through every instance, then its batcher. Runs on a load
//! worker thread; any failure comes back as the reason the manager shows.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ort::environment::Environment;

use crate::backend::Backend;
use crate::backend::onnx::{OnnxBackend, SessionOptions};
use crate::batcher::Batcher;
use crate::batcher::policy::BatchLimits;
use quiver_contract::manifest::{Manifest, TensorDecl};

use crate::live::ServedVersion;
use crate::metrics::VersionMetrics;
use crate::model::{ModelSpec, TensorSpec, apply_overrides, has_batch_dimension};
use crate::repository::{MODEL_FILE, ModelConfig};
use crate::tensor::{DataType, Tensor, TensorData, element_count};

/// Loads one version directory: checks its manifest (if any) against the
/// files, loads and warms up the model, and checks the interface the
/// manifest declares against the graph.
pub fn load_checked(
    name: &str,
    version: u64,
    dir: &Path,
    manifest: Option<&Path>,
    cfg: &ModelConfig,
    env: &Environment,
) -> Result<ServedVersion, String> {
    let manifest = match manifest {
        Some(path) => {
            let m = Manifest::read(path, Some((name, version))).map_err(|e| e.to_string())?;
            m.verify(dir).map_err(|e| e.to_string())?;
            Some(m)
        }
        None => None,
    };
    let served = load_version(name, version, &dir.join(MODEL_FILE), cfg, env)?;
    if let Some(m) = manifest {
        declared_matches(&m.inputs, &served.spec.inputs, "input")?;
        declared_matches(&m.outputs, &served.spec.outputs, "output")?;
    }
    Ok(served)
}

/// Each tensor the manifest declares must be in the graph as declared.
fn declared_matches(
    declared: &[TensorDecl],
    actual: &[TensorSpec],
    what: &str,
) -> Result<(), String> {
    for d in declared {
        let found = actual.iter().find(|a| a.name == d.name);
        let fits = found.is_some_and(|a| a.datatype.as_str() == d.datatype && a.shape == d.shape);
        if !fits {
            return Err(format!(
                "manifest declares {what} '{}' as {} {:?}; the model has {}",
                d.name,
                d.datatype,
                d.shape,
                found.map_or("no such tensor".into(), |a| format!(
                    "{} {:?}",
                    a.datatype, a.shape
                ))
            ));
        }
    }
    Ok(())
}

/// Loads one version: `instances` sessions, the interface read from the
/// graph (narrowed by config), a warm-up batch through every instance.
pub fn load_version(
    name: &str,
    version: u64,
    file: &Path,
    cfg: &ModelConfig,
    env: &Environment,
) -> Result<ServedVersion, String> {
    let s = &cfg.settings;
    let options = SessionOptions {
        intra_op_threads: s.intra_op_threads,
        execution_provider: s.execution_provider,
    };
    let mut instances = Vec::with_capacity(s.instances);
    for _ in 0..s.instances {
        instances.push(OnnxBackend::load(env, file, &options).map_err(|e| e.to_string())?);
    }
    let first = instances.first().ok_or("no instances configured")?;
    let inputs = apply_overrides(
        first.input_specs().map_err(|e| e.to_string())?,
        &cfg.inputs,
        "input",
    )?;
    let outputs = apply_overrides(first.output_specs().to_vec(), &cfg.outputs, "output")?;
    let batched = s.max_batch_size > 0 && has_batch_dimension(&inputs, &outputs);
    let spec = Arc::new(ModelSpec {
        name: name.to_string(),
        version,
        inputs,
        outputs,
        max_batch_size: if batched { s.max_batch_size } else { 0 },
    });
    let mut backends: Vec<Box<dyn Backend>> = Vec::with_capacity(instances.len());
    for mut instance in instances {
        let out = instance
            .run(warmup_inputs(&spec.inputs))
            .map_err(|e| format!("warm-up failed: {e}"))?;
        check_outputs(&spec.outputs, &out)?;
        backends.push(Box::new(instance));
    }
    let limits = BatchLimits {
        max_rows: spec.max_batch_size.max(1),
        max_queue_delay: Duration::from_micros(s.max_queue_delay_us),
        preferred: s.preferred_batch_sizes.clone(),
        capacity: s.max_queue_size,
    };
    let metrics = VersionMetrics::new(name, version);
    let batcher = Batcher::start(Arc::clone(&spec), backends, limits, metrics.clone())
        .map_err(|e| format!("cannot start instance threads: {e}"))?;
    let default_timeout =
        (s.default_timeout_ms > 0).then(|| Duration::from_millis(s.default_timeout_ms));
    Ok(ServedVersion {
        spec,
        batcher,
        metrics,
        default_timeout,
        stats: Default::default(),
        instance: crate::live::next_instance(),
    })
}

/// One row of zeros (dynamic dimensions set to 1) for every input.
fn warmup_inputs(inputs: &[TensorSpec]) -> Vec<Tensor> {
    inputs
        .iter()
        .map(|s| {
            let shape: Vec<i64> = s.shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
            let n = element_count(&shape).unwrap_or(0);
            Tensor {
                name: s.name.clone(),
                shape,
                data: zeros(s.datatype, n),
            }
        })
        .collect()
}

fn zeros(dt: DataType, n: usize) -> TensorData {
    match dt {
        DataType::Bool => TensorData::Bool(vec![false; n]),
        DataType::Uint8 => TensorData::Uint8(vec![0; n]),
        DataType::Uint16 => TensorData::Uint16(vec![0; n]),
        DataType::Uint32 => TensorData::Uint32(vec![0; n]),
        DataType::Uint64 => TensorData::Uint64(vec![0; n]),
        DataType::Int8 => TensorData::Int8(vec![0; n]),
        DataType::Int16 => TensorData::Int16(vec![0; n]),
        DataType::Int32 => TensorData::Int32(vec![0; n]),
        DataType::Int64 => TensorData::Int64(vec![0; n]),
        DataType::Fp16 => TensorData::Fp16(vec![half::f16::ZERO; n]),
        DataType::Fp32 => TensorData::Fp32(vec![0.0; n]),
        DataType::Fp64 => TensorData::Fp64(vec![0.0; n]),
        DataType::Bytes => TensorData::Bytes(vec![Vec::new(); n]),
    }
}

/// The warm-up answer must have the declared outputs, types and ranks.
fn check_outputs(specs: &[TensorSpec], got: &[Tensor]) -> Result<(), String> {
    for (s, t) in specs.iter().zip(got) {
        let fits = t.datatype() == s.datatype
            && t.shape.len() == s.shape.len()
            && t.shape
                .iter()
                .zip(&s.shape)
                .all(|(&g, &w)| w == -1 || g == w);
        if !fits {
            return Err(format!(
                "warm-up output '{}' is {} {:?}, declared {} {:?}",
                s.name,
                t.datatype(),
                t.shape,
                s.datatype,
                s.shape
            ));
        }
    }
    Ok(())
}
