//! One version directory → a served version: manifest and checksums,
//! the model's ZipMap outputs rewritten into tensors, sessions, the
//! interface (read from the graph, narrowed by config, with the shapes
//! the batching probe saw), warm-up through every instance, then its
//! batcher. Runs on a load worker thread, the heavy part at a lower
//! priority ([`at_lower_priority`]); any failure comes back as the reason
//! the manager shows.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ort::environment::Environment;

use quiver_contract::manifest::{Manifest, TensorDecl};
use quiver_onnx::zipmap;

use crate::backend::Backend;
use crate::backend::onnx::{OnnxBackend, SessionOptions};
use crate::batcher::Batcher;
use crate::batcher::policy::BatchLimits;
use crate::live::ServedVersion;
use crate::metrics::VersionMetrics;
use crate::model::{ModelSpec, TensorSpec, apply_overrides};
use crate::model_settings::{Batching, ModelDefaults, ZipMapOutput};
use crate::probe;
use crate::repository::{MODEL_FILE, ModelConfig};
use crate::tensor::{DataType, Tensor, TensorData, element_count};

/// Prepares one version directory: checks its manifest (if any) against
/// the files, loads and warms up the model, and checks the interface the
/// manifest declares against the graph. [`Prepared::start`] then serves it.
pub fn prepare_checked(
    name: &str,
    version: u64,
    dir: &Path,
    manifest: Option<&Path>,
    cfg: &ModelConfig,
    env: &Environment,
) -> Result<Prepared, String> {
    let manifest = match manifest {
        Some(path) => {
            let m = Manifest::read(path, Some((name, version))).map_err(|e| e.to_string())?;
            m.verify(dir).map_err(|e| e.to_string())?;
            Some(m)
        }
        None => None,
    };
    let prepared = prepare_version(name, version, &dir.join(MODEL_FILE), cfg, env)?;
    if let Some(m) = manifest {
        declared_matches(&m.inputs, &prepared.spec.inputs, "input")?;
        declared_matches(&m.outputs, &prepared.spec.outputs, "output")?;
    }
    Ok(prepared)
}

/// Runs `work` (a load's heavy part) on its own thread, `niceness` steps
/// below the caller's priority, so that on a busy machine the serving
/// threads get the CPU first. Threads inherit their creator's priority:
/// `work` must start no thread that serves (the caller starts the
/// instance threads afterwards, at its own priority). A priority that
/// cannot be lowered is logged and the work runs anyway.
pub fn at_lower_priority<T: Send>(
    niceness: i32,
    work: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    if niceness <= 0 {
        return work();
    }
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("quiver-prepare".into())
            .spawn_scoped(scope, move || {
                if let Err(e) = lower_priority(niceness) {
                    tracing::warn!(error = %e, "cannot lower the load thread's priority; loading at full priority");
                }
                work()
            })
            .map_err(|e| format!("cannot start the load thread: {e}"))?;
        thread
            .join()
            .map_err(|_| "the load thread panicked".to_string())?
    })
}

/// Adds `niceness` to the calling thread's nice value (Linux: per thread).
fn lower_priority(niceness: i32) -> std::io::Result<()> {
    let me = Some(rustix::thread::gettid());
    let now = rustix::process::getpriority_process(me)?;
    rustix::process::setpriority_process(me, (now + niceness).min(19))?;
    Ok(())
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

/// A version loaded and warmed up, its instance threads not started yet.
pub struct Prepared {
    spec: Arc<ModelSpec>,
    backends: Vec<Box<dyn Backend>>,
    limits: BatchLimits,
    metrics: VersionMetrics,
    inline_max: Option<Duration>,
    default_timeout: Option<Duration>,
    priorities: crate::live::Priorities,
}

impl Prepared {
    /// Starts the instance threads, at the calling thread's priority.
    pub fn start(self) -> Result<ServedVersion, String> {
        let batcher = Batcher::start(
            Arc::clone(&self.spec),
            self.backends,
            self.limits,
            self.metrics.clone(),
            self.inline_max,
        )
        .map_err(|e| format!("cannot start instance threads: {e}"))?;
        Ok(ServedVersion {
            name: Arc::from(self.spec.name.as_str()),
            spec: self.spec,
            batcher,
            metrics: self.metrics,
            default_timeout: self.default_timeout,
            priorities: self.priorities,
            stats: Default::default(),
            instance: crate::live::next_instance(),
        })
    }
}

/// Loads one version: the model read and, unless `zipmap = "raw"`, its
/// ZipMap outputs rewritten into tensors; `instances` sessions; the
/// interface read from the graph (narrowed by config); the batching probe
/// on the first instance, then a warm-up batch through every other.
pub fn prepare_version(
    name: &str,
    version: u64,
    file: &Path,
    cfg: &ModelConfig,
    env: &Environment,
) -> Result<Prepared, String> {
    let s = &cfg.settings;
    let options = SessionOptions {
        intra_op_threads: s.intra_op_threads,
        execution_provider: s.execution_provider,
    };
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut class_labels = Vec::new();
    let mut rewritten = None;
    if s.zipmap == ZipMapOutput::Tensor {
        match zipmap::unzip(&bytes) {
            Ok(unzipped) => {
                for kept in &unzipped.kept {
                    tracing::warn!(model = name, version, "ZipMap kept as maps: {kept}");
                }
                class_labels = unzipped.outputs;
                rewritten = unzipped.model;
            }
            // ONNX Runtime says best what is wrong with a file it cannot read.
            Err(e) => tracing::debug!(model = name, version, "no ZipMap rewrite: {e}"),
        }
    }
    let model = rewritten.as_deref().unwrap_or(&bytes);
    let mut instances = Vec::with_capacity(s.instances);
    for _ in 0..s.instances {
        instances
            .push(OnnxBackend::from_bytes(env, model, file, &options).map_err(|e| e.to_string())?);
    }
    let first = instances.first_mut().ok_or("no instances configured")?;
    let inputs = apply_overrides(
        first.input_specs().map_err(|e| e.to_string())?,
        &cfg.inputs,
        "input",
    )?;
    let declared = apply_overrides(first.output_specs().to_vec(), &cfg.outputs, "output")?;
    let (outputs, unbatched) = probe_batching(first, &inputs, &declared, s, (name, version))?;
    for (d, o) in declared.iter().zip(&outputs) {
        if d.shape != o.shape {
            tracing::info!(model = name, version, output = %d.name, declared = ?d.shape, served = ?o.shape,
                "the graph declares another shape than the model gives");
        }
    }
    let spec = Arc::new(ModelSpec {
        name: name.to_string(),
        version,
        inputs,
        outputs,
        max_batch_size: if unbatched.is_none() {
            s.max_batch_size
        } else {
            0
        },
        unbatched,
        class_labels,
    });
    let mut backends: Vec<Box<dyn Backend>> = Vec::with_capacity(instances.len());
    for (i, mut instance) in instances.into_iter().enumerate() {
        if i > 0 {
            let out = instance
                .run(probe_inputs(&spec.inputs, 1))
                .map_err(|e| format!("warm-up failed: {e}"))?;
            check_outputs(&spec.outputs, &out)?;
        }
        backends.push(Box::new(instance));
    }
    let limits = BatchLimits {
        max_rows: spec.max_batch_size.max(1),
        max_queue_delay: Duration::from_micros(s.max_queue_delay_us),
        preferred: s.preferred_batch_sizes.clone(),
        capacity: s.max_queue_size,
        priority_levels: s.priority_levels,
        max_priority_wait: Duration::from_millis(s.max_priority_wait_ms),
    };
    let metrics = VersionMetrics::new(name, version);
    let inline_max =
        (s.inline_max_compute_us > 0).then(|| Duration::from_micros(s.inline_max_compute_us));
    let default_timeout =
        (s.default_timeout_ms > 0).then(|| Duration::from_millis(s.default_timeout_ms));
    let priorities = crate::live::Priorities {
        levels: s.priority_levels,
        default: if s.default_priority == 0 {
            s.priority_levels
        } else {
            s.default_priority
        },
    };
    Ok(Prepared {
        spec,
        backends,
        limits,
        metrics,
        inline_max,
        default_timeout,
        priorities,
    })
}

/// Warms `backend` up and decides batching from what it does (see
/// [`probe`]): the outputs as served, and why the model is not batched
/// (`None` when it is).
fn probe_batching(
    backend: &mut OnnxBackend,
    inputs: &[TensorSpec],
    declared: &[TensorSpec],
    s: &ModelDefaults,
    (model, version): (&str, u64),
) -> Result<(Vec<TensorSpec>, Option<String>), String> {
    let off = s.max_batch_size == 0 || s.batching == Batching::Off;
    let mut reason = if off {
        Some("batching is off in the model's config".to_string())
    } else {
        probe::input_blocker(inputs)
    };
    if s.batching == Batching::On
        && let Some(why) = &reason
    {
        return Err(format!("batching = \"on\", but {why}"));
    }
    let rows: &[i64] = if reason.is_some() { &[1] } else { &probe::ROWS };
    let mut runs = Vec::with_capacity(rows.len());
    for &n in rows {
        match backend.run(probe_inputs(inputs, n)) {
            Ok(out) => {
                check_datatypes(declared, &out)?;
                runs.push(probe::Run {
                    rows: n,
                    shapes: out.into_iter().map(|t| t.shape).collect(),
                });
            }
            Err(e) if runs.is_empty() => return Err(format!("warm-up failed: {e}")),
            Err(e) => {
                reason = Some(format!("the model fails on {n} rows of zeros: {e}"));
                break;
            }
        }
    }
    let reason = reason.or_else(|| probe::not_following(declared, &runs));
    let batched = s.batching == Batching::On || reason.is_none();
    if batched && let Some(why) = &reason {
        tracing::warn!(model, version, "batching = \"on\" although {why}");
    }
    let outputs = probe::served_shapes(declared, &runs, batched);
    if let Some(first) = runs.first() {
        check_shapes(&outputs, &first.shapes)?;
    }
    Ok((outputs, if batched { None } else { reason }))
}

/// `rows` rows of zeros (other dynamic dimensions set to 1) for every
/// input; the shapes as they are when the first dimension is fixed.
fn probe_inputs(inputs: &[TensorSpec], rows: i64) -> Vec<Tensor> {
    inputs
        .iter()
        .map(|s| {
            let shape: Vec<i64> = s
                .shape
                .iter()
                .enumerate()
                .map(|(k, &d)| match (k, d) {
                    (0, -1) => rows,
                    (_, -1) => 1,
                    _ => d,
                })
                .collect();
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

/// The warm-up answer must have the outputs' types, ranks and fixed
/// dimensions.
fn check_outputs(specs: &[TensorSpec], got: &[Tensor]) -> Result<(), String> {
    check_datatypes(specs, got)?;
    let shapes: Vec<Vec<i64>> = got.iter().map(|t| t.shape.clone()).collect();
    check_shapes(specs, &shapes)
}

fn check_datatypes(specs: &[TensorSpec], got: &[Tensor]) -> Result<(), String> {
    for (s, t) in specs.iter().zip(got) {
        if t.datatype() != s.datatype {
            return Err(format!(
                "warm-up output '{}' is {}, declared {}",
                s.name,
                t.datatype(),
                s.datatype
            ));
        }
    }
    Ok(())
}

fn check_shapes(specs: &[TensorSpec], got: &[Vec<i64>]) -> Result<(), String> {
    for (s, shape) in specs.iter().zip(got) {
        let fits = shape.len() == s.shape.len()
            && shape.iter().zip(&s.shape).all(|(&g, &w)| w == -1 || g == w);
        if !fits {
            return Err(format!(
                "warm-up output '{}' has shape {shape:?}, expected {:?}",
                s.name, s.shape
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn my_niceness() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    /// The work runs `niceness` below the caller, on its own thread; the
    /// caller (which starts the instance threads next) keeps its priority.
    #[test]
    fn load_work_runs_below_the_caller_and_leaves_the_caller_as_it_was() {
        let before = my_niceness();
        let inside = at_lower_priority(5, || Ok(my_niceness())).unwrap();
        assert_eq!(inside, (before + 5).min(19));
        assert_eq!(my_niceness(), before);
        assert_eq!(at_lower_priority(0, || Ok(my_niceness())).unwrap(), before);
        let failed: Result<(), String> = at_lower_priority(5, || Err("no model".into()));
        assert_eq!(failed.unwrap_err(), "no model");
    }
}
