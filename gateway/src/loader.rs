//! Repository → live set: reads every model folder, loads the versions its
//! policy selects (sessions, interface, warm-up through every instance),
//! and starts their batchers. A version that fails is recorded with its
//! reason and never serves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ort::environment::Environment;

use crate::backend::Backend;
use crate::backend::onnx::{OnnxBackend, SessionOptions};
use crate::batcher::Batcher;
use crate::batcher::policy::BatchLimits;
use crate::config::Settings;
use crate::live::{LiveModels, ModelEntry, ServedVersion, VersionStatus};
use crate::metrics::{MODEL_LOADS_TOTAL, MODELS_LOADED, VersionMetrics};
use crate::model::{ModelSpec, TensorSpec, apply_overrides, has_batch_dimension};
use crate::repository::{self, ModelConfig, RepositoryError};
use crate::tensor::{DataType, Tensor, TensorData, element_count};

pub fn load_repository(
    settings: &Settings,
    env: &Environment,
) -> Result<LiveModels, RepositoryError> {
    let mut live = LiveModels {
        models: Default::default(),
        loaded: true,
    };
    for dir in repository::scan(&settings.repository)? {
        let mut entry = ModelEntry::default();
        match repository::load_model_config(&dir.path, &settings.models) {
            Err(e) => {
                tracing::error!(model = %dir.name, error = %e, "model config invalid; model not loaded");
                for (v, _) in &dir.versions {
                    entry
                        .versions
                        .insert(*v, VersionStatus::Failed(e.to_string()));
                }
            }
            Ok(cfg) => {
                let present: Vec<u64> = dir.versions.iter().map(|(v, _)| *v).collect();
                for version in cfg.settings.version_policy.select(&present) {
                    let Some((_, file)) = dir.versions.iter().find(|(v, _)| *v == version) else {
                        continue;
                    };
                    let started = std::time::Instant::now();
                    let status = match load_version(&dir.name, version, file, &cfg, env) {
                        Ok(served) => {
                            metrics::counter!(MODEL_LOADS_TOTAL, "outcome" => "success")
                                .increment(1);
                            tracing::info!(
                                model = %dir.name, version, batched = served.spec.is_batched(),
                                max_batch_size = served.spec.max_batch_size, instances = cfg.settings.instances,
                                elapsed_ms = started.elapsed().as_millis() as u64, "model version ready"
                            );
                            VersionStatus::Ready(Arc::new(served))
                        }
                        Err(why) => {
                            metrics::counter!(MODEL_LOADS_TOTAL, "outcome" => "failure")
                                .increment(1);
                            tracing::error!(model = %dir.name, version, error = %why, "model version failed to load");
                            VersionStatus::Failed(why)
                        }
                    };
                    entry.versions.insert(version, status);
                }
            }
        }
        live.models.insert(dir.name, entry);
    }
    metrics::gauge!(MODELS_LOADED).set(live.served().count() as f64);
    Ok(live)
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
