//! Measures the two ways of serving a ZipMap output as a `[rows, classes]`
//! tensor, in process, on the same ONNX Runtime library and settings as
//! the gateway (one intra-op thread):
//!
//! - **rewrite**: the graph rewritten at load (`quiver_onnx::zipmap`), the
//!   probabilities read as a tensor — what the gateway ships;
//! - **after**: the model as exported, its sequence of maps read back and
//!   laid out in key order after every run (`backend::maps::dense`).
//!
//! It also times `zipmap = "raw"` (the maps as JSON text per row).
//!
//! ```sh
//! "$QUIVER_PYTHON" tests/python/export_models.py /tmp/exports
//! cargo run --release -p quiver-gateway --example zipmap_strategies -- /tmp/exports/models
//! ```

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor};
use quiver_gateway::backend::maps;
use quiver_gateway::backend::onnx::environment;

const ROWS: [usize; 4] = [1, 8, 64, 512];
/// Time spent per strategy and batch size.
const BUDGET: Duration = Duration::from_millis(600);

fn session(bytes: &[u8]) -> Result<Session> {
    let env = environment(None)?;
    let msg = |e: &dyn std::fmt::Display| anyhow!("{e}");
    Session::builder(env)
        .map_err(|e| msg(&e))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| msg(&e))?
        .with_intra_threads(1)
        .map_err(|e| msg(&e))?
        .with_inter_threads(1)
        .map_err(|e| msg(&e))?
        .commit_from_memory(bytes)
        .map_err(|e| msg(&e))
}

/// Runs `session` on `x` and reads its output `name` with `read`.
fn run<T>(
    session: &mut Session,
    input: &str,
    x: &[f32],
    features: usize,
    name: &str,
    read: impl Fn(&DynValue) -> Result<T>,
) -> Result<T> {
    let rows = x.len() / features;
    let tensor = Tensor::from_array(([rows, features], x.to_vec()))?;
    let outputs = session.run(ort::inputs![input => tensor])?;
    read(outputs.get(name).context("no such output")?)
}

/// Mean time of one call of `f`, over at least `BUDGET`.
fn time(mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    for _ in 0..50 {
        f()?;
    }
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < BUDGET {
        f()?;
        n += 1;
    }
    Ok(start.elapsed() / n)
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .context("usage: zipmap_strategies MODELS_DIR")?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "| model | rows | rewrite (µs/batch) | after ONNX Runtime (µs/batch) | after / rewrite | raw JSON rows (µs/batch) |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    for name in names {
        let file = Path::new(&dir).join(&name).join("1/model.onnx");
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        let unzipped = quiver_onnx::zipmap::unzip(&bytes)?;
        let (Some(rewritten), Some(zipped)) = (unzipped.model, unzipped.outputs.first()) else {
            continue;
        };
        let output = zipped.output.clone();
        let mut after = session(&bytes)?;
        let mut rewrite = session(&rewritten)?;
        let input = after.inputs()[0].name().to_string();
        let features = match after.inputs()[0].dtype() {
            ort::value::ValueType::Tensor { shape, .. } => {
                usize::try_from(shape.last().copied().unwrap_or(0)).unwrap_or(0)
            }
            _ => 0,
        };
        if features == 0 {
            bail!("{name}: input without a fixed feature count");
        }
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for rows in ROWS {
            let x: Vec<f32> = (0..rows * features)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 40) as f32 / (1u64 << 23) as f32 * 3.0 - 1.5
                })
                .collect();
            let dense = |v: &DynValue| Ok(maps::dense(&output, v)?.1);
            let tensor = |v: &DynValue| Ok(v.try_extract_tensor::<f32>()?.1.to_vec());
            let json = |v: &DynValue| Ok(maps::json_rows(&output, v)?);
            // Same answer both ways, first.
            let a = run(&mut after, &input, &x, features, &output, dense)?;
            let b = run(&mut rewrite, &input, &x, features, &output, tensor)?;
            let diff = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max);
            if a.len() != b.len() || diff > 0.0 {
                bail!(
                    "{name}: the strategies differ ({} vs {} values, max diff {diff})",
                    a.len(),
                    b.len()
                );
            }
            let t_rewrite =
                time(|| run(&mut rewrite, &input, &x, features, &output, tensor).map(drop))?;
            let t_after = time(|| run(&mut after, &input, &x, features, &output, dense).map(drop))?;
            let t_raw = time(|| run(&mut after, &input, &x, features, &output, json).map(drop))?;
            writeln!(
                out,
                "| {name} | {rows} | {} | {} | {:.2} | {} |",
                micros(t_rewrite),
                micros(t_after),
                t_after.as_secs_f64() / t_rewrite.as_secs_f64(),
                micros(t_raw)
            )?;
        }
    }
    Ok(())
}
