//! `quiver-bench stream` (the traffic generator), `stream-report` (summary
//! and plot of a run) and `stream-export` (a slice of a stream as CSV, e.g.
//! for the trainer's bootstrap).

use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::delay::LabelDelay;
use super::{generator, infer, plot, report};
use crate::http;
use crate::streams::{self, Stream};

/// Which stream, and which rows of it.
#[derive(Args, Debug)]
pub struct StreamChoice {
    /// `hyperplane` (synthetic), `rainfall` or `flights` (extracted by
    /// bench/datasets/extract.sh), or a path to a stream CSV.
    #[arg(long, default_value = "hyperplane")]
    stream: String,
    /// Where extracted streams are (default $QUIVER_CACHE_DIR/streams or
    /// ~/.cache/quiver/streams).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seed of the synthetic stream.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// First row: a row number, or a share of the stream like `10%`.
    #[arg(long, default_value = "0")]
    start: String,
    /// Rows from `start` (default: to the end), also a number or a share.
    #[arg(long)]
    rows: Option<String>,
}

impl StreamChoice {
    fn load(&self) -> Result<(Stream, Range<usize>)> {
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(streams::default_data_dir);
        let s = streams::load(&self.stream, &dir, self.seed)?;
        let n = s.rows.len();
        let start = rows_arg(&self.start, n)?.min(n);
        let len = match &self.rows {
            Some(r) => rows_arg(r, n)?,
            None => n,
        };
        Ok((s, start..(start.saturating_add(len)).min(n)))
    }
}

/// `1234` or `12.5%` of `n`.
fn rows_arg(s: &str, n: usize) -> Result<usize> {
    match s.strip_suffix('%') {
        Some(p) => {
            let p: f64 = p
                .trim()
                .parse()
                .with_context(|| format!("bad share '{s}'"))?;
            Ok((p / 100.0 * n as f64).round() as usize)
        }
        None => s
            .trim()
            .parse()
            .with_context(|| format!("bad row count '{s}'")),
    }
}

#[derive(Args, Debug)]
pub struct StreamArgs {
    #[command(flatten)]
    choice: StreamChoice,
    /// The gateway, e.g. http://127.0.0.1:8000.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    gateway: String,
    #[arg(long)]
    model: String,
    /// Rows (requests) per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// `natural` (the stream's own label times), `N` rows, or `Ns` seconds.
    #[arg(long, default_value = "natural")]
    label_delay: String,
    /// Keep-alive connections (about two rows each in flight at most).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Labels per feedback request, at most.
    #[arg(long, default_value_t = 256)]
    feedback_batch: usize,
    /// Longest a released label waits for its batch, ms.
    #[arg(long, default_value_t = 500)]
    feedback_every_ms: u64,
    /// Labelled predictions in the accuracy window (progress, report).
    #[arg(long, default_value_t = 1000)]
    window: usize,
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Where the run's files go.
    #[arg(long, default_value = ".quiver/stream")]
    out_dir: PathBuf,
    /// The trainer's events log(s), marked on the plot.
    #[arg(long)]
    trainer_events: Vec<PathBuf>,
    /// Recovered: window accuracy back within this of its pre-drift level.
    #[arg(long, default_value_t = 0.03)]
    tolerance: f64,
    /// Only write the run's files; no summary or plot.
    #[arg(long)]
    no_report: bool,
    /// Threads of the generator's async runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A `stream` run's output directory.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    trainer_events: Vec<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    window: usize,
    #[arg(long, default_value_t = 0.03)]
    tolerance: f64,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    choice: StreamChoice,
    /// The CSV to write.
    #[arg(long)]
    out: PathBuf,
    /// With the stream's times (`time,label_time,...`) and meta.json, for
    /// the baselines; without, the trainer's format (features, label last).
    #[arg(long)]
    with_times: bool,
}

pub fn stream(a: StreamArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run_stream(a))
}

async fn run_stream(a: StreamArgs) -> Result<()> {
    if a.rate.is_nan() || a.rate <= 0.0 {
        bail!("--rate must be > 0");
    }
    let (stream, rows) = a.choice.load()?;
    let addr = http::resolve(&a.gateway).await?;
    http::wait_ready(addr, Duration::from_secs(30)).await?;
    let meta = http::get_json(addr, &format!("/v2/models/{}", a.model)).await?;
    let (input, width) = infer::model_input(&meta)?;
    if let Some(w) = width.filter(|w| *w != stream.feature_names.len()) {
        bail!(
            "model '{}' takes {w} features, stream '{}' has {}",
            a.model,
            stream.name,
            stream.feature_names.len()
        );
    }
    eprintln!(
        "quiver-bench stream: {} rows {}..{} of '{}' ({} features, {:.1} % positive) → {} model '{}' at {} rows/s",
        rows.len(),
        rows.start,
        rows.end,
        stream.name,
        stream.feature_names.len(),
        stream.positive_rate() * 100.0,
        a.gateway,
        a.model,
        a.rate
    );
    let opts = generator::Options {
        addr,
        model: a.model.clone(),
        input,
        rate: a.rate,
        delay: LabelDelay::parse(&a.label_delay)?,
        connections: a.connections,
        feedback_batch: a.feedback_batch.max(1),
        feedback_every: Duration::from_millis(a.feedback_every_ms),
        window: a.window,
        routing_every: Duration::from_secs(1),
        timeout: Duration::from_millis(a.timeout_ms),
        out_dir: a.out_dir.clone(),
    };
    generator::run(Arc::new(stream), rows, opts).await?;
    if a.no_report {
        return Ok(());
    }
    write_report(&report::Options {
        dir: a.out_dir,
        trainer_events: a.trainer_events,
        window: a.window,
        tolerance: a.tolerance,
    })
}

/// Writes `summary.md`, `summary.json`, `series.csv` and `accuracy.svg`
/// into the run's directory and prints the summary on stdout.
fn write_report(opts: &report::Options) -> Result<()> {
    let s = report::summarize(opts)?;
    let svg = opts.dir.join("accuracy.svg");
    plot::accuracy_over_time(&svg, &s, opts.window)?;
    let md = report::render(&s, &svg);
    std::fs::write(opts.dir.join("summary.md"), &md)?;
    std::fs::write(
        opts.dir.join("summary.json"),
        serde_json::to_vec_pretty(&s)?,
    )?;
    std::fs::write(opts.dir.join("series.csv"), series_csv(&s))?;
    let mut out = std::io::stdout().lock();
    out.write_all(md.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Accuracy per serving version per time bucket (the plot's lines):
/// `t_s,version,accuracy`, `t_s` the bucket's middle.
fn series_csv(s: &report::Summary) -> String {
    let width = plot::bucket_width(plot::duration(s));
    let mut rows: Vec<(f64, u64, f64)> = plot::buckets(s, width, 1)
        .into_iter()
        .flat_map(|(v, pts)| pts.into_iter().map(move |(t, a)| (t, v, a)))
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut out = String::from("t_s,version,accuracy\n");
    for (t, v, a) in rows {
        out.push_str(&format!("{t:.2},{v},{a:.4}\n"));
    }
    out
}

pub fn stream_report(a: ReportArgs) -> Result<()> {
    write_report(&report::Options {
        dir: a.dir,
        trainer_events: a.trainer_events,
        window: a.window,
        tolerance: a.tolerance,
    })
}

pub fn export(a: ExportArgs) -> Result<()> {
    let (s, rows) = a.choice.load()?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    if a.with_times {
        // Onsets are rows of the whole stream; the slice counts from its start.
        let onsets = s
            .onsets
            .iter()
            .filter(|o| rows.contains(&o.row))
            .map(|o| streams::Onset {
                row: o.row - rows.start,
                ..o.clone()
            })
            .collect();
        let sub = Stream {
            rows: s.rows[rows.clone()].to_vec(),
            onsets,
            ..s
        };
        sub.write_stream_csv(&a.out)?;
    } else {
        s.write_training_csv(rows.clone(), &a.out)?;
    }
    eprintln!(
        "quiver-bench stream-export: rows {}..{} of '{}' → {}",
        rows.start,
        rows.end,
        a.choice.stream,
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_arguments() {
        assert_eq!(rows_arg("10%", 1000).unwrap(), 100);
        assert_eq!(rows_arg("250", 1000).unwrap(), 250);
        assert!(rows_arg("x", 10).is_err());
    }
}
