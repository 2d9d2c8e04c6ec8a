//! The compute ceiling: the model run in process through ONNX Runtime, with
//! the gateway's own backend and session settings, and no HTTP, queue or
//! batching around it. Time per batch and rows/s for each batch size.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use quiver_gateway::backend::Backend;
use quiver_gateway::backend::onnx::{OnnxBackend, SessionOptions, environment};
use quiver_gateway::model_settings::ExecutionProvider;
use quiver_gateway::tensor::{Tensor, TensorData};

use crate::histogram::Latencies;
use crate::result::{BatchPoint, InprocessRun, Machine, SCHEMA};
use crate::workload::concrete_shape;

/// Runs each batch size for `seconds` after a short warm-up.
pub fn run(
    label: &str,
    model: &Path,
    threads: usize,
    batch_sizes: &[u64],
    seconds: Duration,
    machine: Machine,
) -> Result<InprocessRun> {
    let env = environment(None)?;
    let options = SessionOptions {
        intra_op_threads: threads,
        execution_provider: ExecutionProvider::Cpu,
    };
    let mut backend = OnnxBackend::load(env, model, &options)?;
    let specs = backend.input_specs()?;
    let mut batches = Vec::new();
    for &rows in batch_sizes {
        let inputs = || -> Vec<Tensor> {
            specs
                .iter()
                .map(|spec| {
                    let (shape, count) = concrete_shape(&spec.shape, rows);
                    Tensor {
                        name: spec.name.clone(),
                        shape,
                        data: TensorData::Fp32((0..count).map(|i| (i % 7) as f32 * 0.1).collect()),
                    }
                })
                .collect()
        };
        let warm_until = Instant::now() + seconds / 5;
        while Instant::now() < warm_until {
            backend.run(inputs())?;
        }
        let mut times = Latencies::new();
        let until = Instant::now() + seconds;
        while Instant::now() < until {
            // Building the input is outside the timed part, as in the
            // gateway, where the batcher hands the engine a ready batch.
            let x = inputs();
            let t = Instant::now();
            backend.run(x).context("running the model")?;
            times.record_ns(t.elapsed().as_nanos() as u64);
        }
        let summary = times.summary();
        batches.push(BatchPoint {
            batch_size: rows,
            runs: summary.count,
            time_per_batch: summary,
            rows_per_s: rows as f64 / (summary.p50_us / 1e6).max(1e-12),
        });
    }
    Ok(InprocessRun {
        schema: SCHEMA,
        label: label.to_string(),
        model_path: model.display().to_string(),
        intra_op_threads: threads,
        machine,
        batches,
    })
}
