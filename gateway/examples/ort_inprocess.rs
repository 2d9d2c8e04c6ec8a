//! The compute ceiling: a model run in process through ONNX Runtime, the
//! same library and session settings the gateway uses, with no HTTP, queue
//! or batching around it. Prints the median time per batch and rows/s for
//! each batch size.
//!
//! cargo run --release -p quiver-gateway --example ort_inprocess -- examples/models/mlp/2/model.onnx 16 1,8,32

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use quiver_gateway::backend::Backend;
use quiver_gateway::backend::onnx::{OnnxBackend, SessionOptions, environment};
use quiver_gateway::config::ExecutionProvider;
use quiver_gateway::tensor::{Tensor, TensorData};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .context("usage: ort_inprocess MODEL.onnx FEATURES BATCH,SIZES")?;
    let features: usize = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let sizes: Vec<usize> = args
        .get(3)
        .map_or("1,8,32", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let env = environment(None)?;
    let options = SessionOptions {
        intra_op_threads: 1,
        execution_provider: ExecutionProvider::Cpu,
    };
    let mut backend = OnnxBackend::load(env, model.as_ref(), &options)?;
    let name = backend
        .input_specs()?
        .first()
        .context("model has no input")?
        .name
        .clone();
    println!("batch  median_us_per_batch  rows_per_s");
    for rows in sizes {
        let input = || Tensor {
            name: name.clone(),
            shape: vec![rows as i64, features as i64],
            data: TensorData::Fp32((0..rows * features).map(|i| (i % 7) as f32 * 0.1).collect()),
        };
        for _ in 0..200 {
            backend.run(vec![input()])?;
        }
        let mut times = Vec::new();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let x = vec![input()];
            let t = Instant::now();
            backend.run(x)?;
            times.push(t.elapsed());
        }
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "{rows:5}  {:19.1}  {:10.0}",
            median.as_secs_f64() * 1e6,
            rows as f64 / median.as_secs_f64()
        );
    }
    Ok(())
}
