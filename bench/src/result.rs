//! The result files: what a run writes as JSON and what `report` reads.
//! One file holds one target's run (a load run or an in-process run);
//! `report` puts several side by side.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::histogram::Summary;

/// Bumped when a field changes meaning or disappears.
pub const SCHEMA: u32 = 1;

/// One result file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ResultFile {
    Load(Box<LoadRun>),
    Inprocess(InprocessRun),
}

/// Where and when a run happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    /// 1-minute load average just before the run (Linux), to judge noise.
    pub load_avg_1m: Option<f64>,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// The exact command line.
    pub command: String,
}

/// A load run against one server: one point per offered rate (or one
/// closed-loop point).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadRun {
    pub schema: u32,
    /// The server's name in reports, e.g. `quiver` or `triton`.
    pub label: String,
    pub url: String,
    pub model: String,
    pub format: crate::workload::Format,
    pub rows_per_request: u64,
    /// `open` (constant arrival rate) or `closed` (N connections back to back).
    pub mode: String,
    pub connections: usize,
    pub client_threads: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// The p99 limit a point must stay under to hold, in milliseconds.
    pub slo_p99_ms: f64,
    pub machine: Machine,
    pub points: Vec<Point>,
    /// The highest offered rate that held (no errors, p99 within the SLO,
    /// achieved ≥ 90 % of offered): "max throughput at p99 ≤ SLO".
    pub max_rate_held: Option<f64>,
    /// Present when the hot-swap scenario ran.
    pub swap: Option<SwapReport>,
    /// Present for a Kafka ingress run: the fate of every record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<crate::kafka::KafkaReport>,
}

/// What a load run's result is made of, beside its points: where the
/// load went and how it was sent.
pub struct RunShape<'a> {
    pub label: &'a str,
    pub url: String,
    pub format: crate::workload::Format,
    pub request: &'a crate::cli::RequestArgs,
    pub timing: &'a crate::cli::PointArgs,
    /// Open-loop rates asked for; none means closed loop.
    pub open: bool,
    pub connections: usize,
    pub client_threads: usize,
}

impl LoadRun {
    /// A run's result from its shape and measured points.
    pub fn new(shape: RunShape<'_>, machine: Machine, points: Vec<Point>) -> LoadRun {
        LoadRun {
            schema: SCHEMA,
            label: shape.label.to_string(),
            url: shape.url,
            model: shape.request.model.clone(),
            format: shape.format,
            rows_per_request: shape.request.rows,
            mode: if shape.open { "open" } else { "closed" }.into(),
            connections: shape.connections,
            client_threads: shape.client_threads,
            warmup_s: shape.timing.warmup,
            duration_s: shape.timing.duration,
            slo_p99_ms: shape.timing.slo_p99_ms,
            machine,
            max_rate_held: crate::analysis::max_rate_held(&points),
            points,
            swap: None,
            kafka: None,
        }
    }
}

/// One load point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    /// Requests per second offered (open loop); `None` for closed loop.
    pub offered_rps: Option<f64>,
    /// Successful answers completed per second inside the measured window.
    pub achieved_rps: f64,
    /// Requests due in the measured window (warm-up excluded).
    pub requests: u64,
    pub ok: u64,
    /// Failed requests by HTTP status or transport failure
    /// (`connect`, `io`, `timeout`, `abandoned`).
    pub errors: BTreeMap<String, u64>,
    /// Client-side latency of successful requests, from the intended send
    /// time (open loop) — the figure that matters.
    pub latency: Summary,
    /// From the actual send: what the latency would look like if stalls
    /// could hide (coordinated omission), shown for comparison.
    pub service: Summary,
    /// How late the harness sent requests relative to the schedule; large
    /// values mean the load generator, not the server, was the bottleneck.
    pub send_lag: Summary,
    /// The server's own stage timings, when it reports them.
    pub stages: Option<StageBreakdown>,
    /// Answers by model version (from `x-quiver-model-version`).
    pub versions: BTreeMap<String, u64>,
    /// Per-slice view of the whole run, warm-up included.
    pub timeline: Vec<Slice>,
    pub held: bool,
}

/// Quiver's response headers, summarised over successful requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageBreakdown {
    pub queue: Summary,
    pub compute: Summary,
    /// Server time from request received to response ready.
    pub server_total: Summary,
    /// Client-measured service time minus server time: network, HTTP
    /// parsing and client overhead.
    pub outside_server: Summary,
    pub mean_batch_size: f64,
}

/// One time slice of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slice {
    /// Start of the slice, seconds since the run started (by due time).
    pub t_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// The hot-swap scenario: model versions published during an open-loop run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwapReport {
    pub swaps: Vec<SwapEvent>,
    /// How long after each publish requests count as "during a swap".
    pub window_s: f64,
    pub during: PhaseStats,
    pub steady: PhaseStats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwapEvent {
    pub version: u64,
    /// When the manifest was renamed into place, seconds since the start.
    pub published_s: f64,
    /// When the first answer from this version arrived; `None` if none did.
    pub first_answer_s: Option<f64>,
    /// The admin API's answer to the explicit load request, if one was sent.
    pub load_status: Option<u16>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseStats {
    pub requests: u64,
    pub errors: u64,
    pub latency: Summary,
}

/// The compute ceiling: the model run in process through ONNX Runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InprocessRun {
    pub schema: u32,
    pub label: String,
    pub model_path: String,
    pub intra_op_threads: usize,
    pub machine: Machine,
    pub batches: Vec<BatchPoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchPoint {
    pub batch_size: u64,
    pub runs: u64,
    pub time_per_batch: Summary,
    /// Rows per second at the median time per batch.
    pub rows_per_s: f64,
}

impl InprocessRun {
    /// The batch size with the most rows per second.
    pub fn best(&self) -> Option<&BatchPoint> {
        self.batches
            .iter()
            .max_by(|a, b| a.rows_per_s.total_cmp(&b.rows_per_s))
    }
}
