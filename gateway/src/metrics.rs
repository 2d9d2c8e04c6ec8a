//! Metric names, their descriptions, and the Prometheus recorder. Label
//! values come from closed sets (model names from the repository, version
//! numbers, outcomes), never from request contents.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Unit, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::histogram::{self, DURATION_BUCKETS, Histogram, SIZE_BUCKETS};
use crate::routing::Arm;

pub const REQUESTS_TOTAL: &str = "quiver_requests_total";
pub const REQUEST_DURATION: &str = "quiver_request_duration_seconds";
pub const QUEUE_DURATION: &str = "quiver_queue_duration_seconds";
pub const COMPUTE_DURATION: &str = "quiver_compute_duration_seconds";
pub const BATCH_SIZE: &str = "quiver_batch_size";
pub const QUEUE_DEPTH: &str = "quiver_queue_depth";
pub const DROPPED_TOTAL: &str = "quiver_dropped_requests_total";
pub const BUSY_INSTANCES: &str = "quiver_busy_instances";
pub const MODELS_LOADED: &str = "quiver_models_loaded";
pub const MODEL_LOADS_TOTAL: &str = "quiver_model_loads_total";
pub const MODEL_SWAPS_TOTAL: &str = "quiver_model_swaps_total";
pub const LIVE_VERSIONS: &str = "quiver_live_versions";
pub const ROUTED_TOTAL: &str = "quiver_routed_requests_total";
pub const ARM_REQUEST_DURATION: &str = "quiver_arm_request_duration_seconds";
pub const SHADOW_TOTAL: &str = "quiver_shadow_requests_total";
pub const SHADOW_AGREEMENT_TOTAL: &str = "quiver_shadow_agreement_total";
pub const SHADOW_DURATION: &str = "quiver_shadow_duration_seconds";
const REQUEST_DURATION_HELP: &str =
    "Server-side time per inference request, body read to response.";
const QUEUE_DURATION_HELP: &str = "Time a request waited in the batch queue.";
const COMPUTE_DURATION_HELP: &str = "Time the engine took per batch.";
const BATCH_SIZE_HELP: &str = "Rows per batch run by the engine.";
const ARM_REQUEST_DURATION_HELP: &str = "Server-side time per request by model, version and arm.";
const SHADOW_DURATION_HELP: &str = "Time from queueing a shadow copy to its answer.";

fn seconds(name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Histogram {
    histogram::register(name, help, &DURATION_BUCKETS, labels)
}

pub const ROLLOUT_DECISIONS_TOTAL: &str = "quiver_rollout_decisions_total";
pub const ROLLOUT_STABLE_VERSION: &str = "quiver_rollout_stable_version";
pub const ROLLOUT_CANARY_WEIGHT: &str = "quiver_rollout_canary_weight";
pub const ROLLOUT_STEP: &str = "quiver_rollout_step";
pub const LOG_RECORDS_TOTAL: &str = "quiver_log_records_total";
pub const LOG_SPOOL_BYTES: &str = "quiver_log_spool_bytes";
pub const LOG_SPOOL_FULL: &str = "quiver_log_spool_full";
pub const LOG_SPOOLING: &str = "quiver_log_spooling";
pub const LOG_SEGMENTS_DELETED_TOTAL: &str = "quiver_log_segments_deleted_total";
pub const FEEDBACK_LABELS_TOTAL: &str = "quiver_feedback_labels_total";
pub const INGRESS_RECORDS_TOTAL: &str = "quiver_ingress_records_total";
pub const INGRESS_IN_FLIGHT: &str = "quiver_ingress_in_flight";
pub const INGRESS_PAUSED: &str = "quiver_ingress_paused";
pub const INGRESS_PAUSES_TOTAL: &str = "quiver_ingress_pauses_total";
pub const REGISTRY_REQUESTS_TOTAL: &str = "quiver_registry_requests_total";
pub const REGISTRY_POLLS_TOTAL: &str = "quiver_registry_polls_total";
pub const REGISTRY_ERRORS_TOTAL: &str = "quiver_registry_errors_total";
pub const FLEET_LEADER: &str = "quiver_fleet_leader";
pub const FLEET_REPORTS: &str = "quiver_fleet_replicas_reporting";
pub const TLS_RELOADS_TOTAL: &str = "quiver_tls_reloads_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "quiver_tls_handshake_failures_total";
pub const GRPC_STREAMS_OPEN: &str = "quiver_grpc_streams_open";

/// The doors a request can come through; the `protocol` label's closed set.
pub const PROTOCOLS: [&str; 3] = ["http", "grpc", "kafka"];

/// Every outcome a request can have; the `outcome` label's closed set.
pub const OUTCOMES: [&str; 9] = [
    "success",
    "bad_request",
    "not_found",
    "too_large",
    "queue_full",
    "not_ready",
    "deadline_exceeded",
    "unauthorized",
    "error",
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once and returns the handle that renders it.
pub fn install() -> Result<PrometheusHandle, String> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    describe();
    register_log_records();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The whole `/metrics` text: the recorder's counters and gauges, then
/// the request path's histograms ([`crate::histogram`]).
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    crate::histogram::render(&mut out);
    out
}

fn describe() {
    describe_counter!(
        TLS_RELOADS_TOTAL,
        "TLS certificate reloads after the files changed, by outcome (loaded, failed)."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "Connections closed because their TLS handshake failed or timed out (plaintext to a TLS port among them)."
    );
    describe_gauge!(
        GRPC_STREAMS_OPEN,
        Unit::Count,
        "ModelStreamInfer streams open now."
    );
    describe_counter!(
        REQUESTS_TOTAL,
        "Inference requests by model, version, protocol (http, grpc, kafka) and outcome."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Requests waiting in a model version's queue."
    );
    describe_gauge!(
        BUSY_INSTANCES,
        Unit::Count,
        "Model instances running a batch now."
    );
    describe_counter!(
        DROPPED_TOTAL,
        "Requests taken out of the queue before the model: expired or cancelled."
    );
    describe_gauge!(
        MODELS_LOADED,
        Unit::Count,
        "Model versions loaded and serving."
    );
    describe_counter!(
        MODEL_LOADS_TOTAL,
        "Model version loads by model and outcome."
    );
    describe_counter!(
        REGISTRY_REQUESTS_TOTAL,
        "Requests made to the model registry's object store (0 on a local directory)."
    );
    describe_counter!(
        REGISTRY_POLLS_TOTAL,
        "Polls of the model registry, by what they found: unchanged or changed."
    );
    describe_counter!(
        REGISTRY_ERRORS_TOTAL,
        "Polls of the model registry that failed (store unreachable, credentials refused, ...)."
    );
    describe_gauge!(
        FLEET_LEADER,
        "1 while this replica holds the lease of the fleet's rollout guardrail."
    );
    describe_gauge!(
        FLEET_REPORTS,
        "Replicas whose traffic the guardrail leader merged last (itself included)."
    );
    describe_counter!(
        MODEL_SWAPS_TOTAL,
        "Changes of a model's served versions: load, unload, removed."
    );
    describe_gauge!(
        LIVE_VERSIONS,
        Unit::Count,
        "Versions of a model serving now."
    );
    describe_counter!(
        ROUTED_TOTAL,
        "Requests by model, version and arm (stable, canary, pinned) and outcome."
    );
    describe_counter!(
        SHADOW_TOTAL,
        "Shadow copies by outcome: success, error, skipped (shadow capacity or queue full)."
    );
    describe_counter!(
        SHADOW_AGREEMENT_TOTAL,
        "Shadow answers that agreed (or not) with the served answer."
    );
    describe_counter!(
        ROLLOUT_DECISIONS_TOTAL,
        "Routing changes by decision: init, start, advance, promote, rollback, set."
    );
    describe_gauge!(
        ROLLOUT_STABLE_VERSION,
        Unit::Count,
        "The stable version of a model."
    );
    describe_gauge!(
        ROLLOUT_CANARY_WEIGHT,
        Unit::Count,
        "Share of a model's keyed traffic routed to a canary version."
    );
    describe_gauge!(
        ROLLOUT_STEP,
        Unit::Count,
        "Index of the running canary's rollout step."
    );
    describe_counter!(
        LOG_RECORDS_TOTAL,
        "Prediction and label records by stream and outcome: produced (confirmed by the broker), \
         written (local log), spooled, replayed (confirmed from the spool), resent (sent again \
         after a failed replay batch), dropped (queue or spool full; should stay 0)."
    );
    describe_gauge!(
        LOG_SPOOL_BYTES,
        Unit::Bytes,
        "Bytes in the disk spool, by stream."
    );
    describe_gauge!(
        LOG_SPOOL_FULL,
        Unit::Count,
        "1 while the spool is at its cap and new records are dropped."
    );
    describe_gauge!(
        LOG_SPOOLING,
        Unit::Count,
        "1 while records go to the disk spool instead of the broker."
    );
    describe_counter!(
        LOG_SEGMENTS_DELETED_TOTAL,
        "Local log segments deleted by retention, by stream."
    );
    describe_counter!(
        FEEDBACK_LABELS_TOTAL,
        "Labels received by the feedback endpoint, by outcome (accepted, rejected, busy)."
    );
    describe_counter!(
        INGRESS_RECORDS_TOTAL,
        "Kafka ingress records by outcome: answered, failed (answered with an error), \
         dead_lettered."
    );
    describe_gauge!(
        INGRESS_IN_FLIGHT,
        Unit::Count,
        "Kafka ingress requests read and not yet answered."
    );
    describe_counter!(
        INGRESS_PAUSES_TOTAL,
        "Times the ingress consumer paused its partitions."
    );
    describe_gauge!(
        INGRESS_PAUSED,
        Unit::Count,
        "1 while the ingress consumer has paused its partitions (in-flight cap or full queue)."
    );
}

/// The log's streams and record outcomes: the labels' closed sets.
const LOG_STREAMS: [&str; 2] = ["predictions", "labels"];
const LOG_OUTCOMES: [&str; 6] = [
    "written", "produced", "spooled", "replayed", "resent", "dropped",
];

/// Handles for every (stream, outcome), registered with the recorder so
/// the writer, which counts each record, does not look them up by name.
static LOG_RECORDS: OnceLock<[[Counter; LOG_OUTCOMES.len()]; LOG_STREAMS.len()]> = OnceLock::new();

fn register_log_records() {
    LOG_RECORDS.get_or_init(|| {
        LOG_STREAMS.map(|s| {
            LOG_OUTCOMES.map(|o| counter!(LOG_RECORDS_TOTAL, "stream" => s, "outcome" => o))
        })
    });
}

/// Counts prediction log records by stream and outcome.
pub fn log_records(stream: &'static str, outcome: &'static str, n: u64) {
    let registered = LOG_RECORDS.get().and_then(|table| {
        let s = LOG_STREAMS.iter().position(|x| *x == stream)?;
        let o = LOG_OUTCOMES.iter().position(|x| *x == outcome)?;
        Some(&table[s][o])
    });
    match registered {
        Some(c) => c.increment(n),
        None => counter!(LOG_RECORDS_TOTAL, "stream" => stream, "outcome" => outcome).increment(n),
    }
}

pub fn log_segments_deleted(stream: &'static str, n: u64) {
    counter!(LOG_SEGMENTS_DELETED_TOTAL, "stream" => stream).increment(n);
}

pub fn log_spool(stream: &'static str, bytes: u64, full: bool) {
    gauge!(LOG_SPOOL_BYTES, "stream" => stream).set(bytes as f64);
    gauge!(LOG_SPOOL_FULL, "stream" => stream).set(f64::from(u8::from(full)));
}

pub fn ingress_record(outcome: &'static str) {
    counter!(INGRESS_RECORDS_TOTAL, "outcome" => outcome).increment(1);
}

pub fn ingress_in_flight(n: usize) {
    gauge!(INGRESS_IN_FLIGHT).set(n as f64);
}

pub fn ingress_paused(paused: bool) {
    gauge!(INGRESS_PAUSED).set(f64::from(u8::from(paused)));
    if paused {
        counter!(INGRESS_PAUSES_TOTAL).increment(1);
    }
}

pub fn log_spooling(on: bool) {
    gauge!(LOG_SPOOLING).set(f64::from(u8::from(on)));
}

/// Handles for one model version, registered once so the hot path does
/// not look metrics up by name.
#[derive(Clone)]
pub struct VersionMetrics {
    /// Per protocol (in [`PROTOCOLS`] order), per outcome.
    outcomes: [[Counter; OUTCOMES.len()]; PROTOCOLS.len()],
    pub request_duration: Histogram,
    pub queue_duration: Histogram,
    pub compute_duration: Histogram,
    pub batch_size: Histogram,
    pub queue_depth: Gauge,
    pub busy_instances: Gauge,
    pub expired: Counter,
    pub cancelled: Counter,
    /// Per arm (in [`Arm::ALL`] order), per outcome.
    routed: Vec<[Counter; OUTCOMES.len()]>,
    arm_duration: Vec<Histogram>,
    pub shadow_success: Counter,
    pub shadow_error: Counter,
    pub shadow_skipped: Counter,
    pub shadow_agree: Counter,
    pub shadow_disagree: Counter,
    pub shadow_duration: Histogram,
    /// The same traffic as plain cumulative totals, for the protocol's
    /// statistics endpoint.
    pub totals: Arc<Totals>,
    /// The same events as plain atomics the dashboard can read back.
    pub dashboard: std::sync::Arc<crate::dashboard::Counters>,
}

/// A count and the summed duration of what it counts.
#[derive(Default)]
pub struct Tally {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Tally {
    pub fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// `(count, nanoseconds)`.
    pub fn get(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.ns.load(Ordering::Relaxed),
        )
    }
}

/// Cumulative statistics of one loaded version (Triton's model statistics):
/// requests by result, time queued, batches run by size, rows served.
#[derive(Default)]
pub struct Totals {
    pub success: Tally,
    pub fail: Tally,
    pub queue: Tally,
    /// One per batch run.
    pub compute: Tally,
    /// Rows answered.
    pub rows: AtomicU64,
    /// Milliseconds since the epoch of the last answered request.
    pub last_ms: AtomicU64,
    /// Batches by their row count: `(count, compute nanoseconds)`.
    batches: Mutex<BTreeMap<usize, (u64, u64)>>,
}

impl Totals {
    /// A batch of `rows` ran in `compute` (on the engine thread).
    pub fn batch(&self, rows: usize, compute: Duration) {
        self.compute.add(compute);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        let ns = u64::try_from(compute.as_nanos()).unwrap_or(u64::MAX);
        let mut by_size = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        let e = by_size.entry(rows).or_default();
        e.0 += 1;
        e.1 = e.1.saturating_add(ns);
    }

    /// A request finished after `elapsed`.
    pub fn request(&self, ok: bool, elapsed: Duration, now_ms: u64) {
        if ok {
            self.success.add(elapsed);
        } else {
            self.fail.add(elapsed);
        }
        self.last_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// Batches by row count: `(rows, count, compute nanoseconds)`.
    pub fn batch_sizes(&self) -> Vec<(usize, u64, u64)> {
        let by_size = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        by_size.iter().map(|(r, (c, ns))| (*r, *c, *ns)).collect()
    }
}

impl VersionMetrics {
    pub fn new(model: &str, version: u64) -> Self {
        let (m, v) = (model.to_string(), version.to_string());
        VersionMetrics {
            outcomes: PROTOCOLS.map(|p| OUTCOMES.map(|o| counter!(REQUESTS_TOTAL, "model" => m.clone(), "version" => v.clone(), "protocol" => p, "outcome" => o))),
            request_duration: seconds(REQUEST_DURATION, REQUEST_DURATION_HELP, &[("model", &m), ("version", &v)]),
            queue_duration: seconds(QUEUE_DURATION, QUEUE_DURATION_HELP, &[("model", &m), ("version", &v)]),
            compute_duration: seconds(COMPUTE_DURATION, COMPUTE_DURATION_HELP, &[("model", &m), ("version", &v)]),
            batch_size: histogram::register(BATCH_SIZE, BATCH_SIZE_HELP, &SIZE_BUCKETS, &[("model", &m), ("version", &v)]),
            queue_depth: gauge!(QUEUE_DEPTH, "model" => m.clone(), "version" => v.clone()),
            busy_instances: gauge!(BUSY_INSTANCES, "model" => m.clone(), "version" => v.clone()),
            expired: counter!(DROPPED_TOTAL, "model" => m.clone(), "version" => v.clone(), "reason" => "expired"),
            cancelled: counter!(DROPPED_TOTAL, "model" => m.clone(), "version" => v.clone(), "reason" => "cancelled"),
            routed: Arm::ALL
                .iter()
                .map(|a| OUTCOMES.map(|o| counter!(ROUTED_TOTAL, "model" => m.clone(), "version" => v.clone(), "arm" => a.as_str(), "outcome" => o)))
                .collect(),
            arm_duration: Arm::ALL
                .iter()
                .map(|a| seconds(ARM_REQUEST_DURATION, ARM_REQUEST_DURATION_HELP, &[("model", &m), ("version", &v), ("arm", a.as_str())]))
                .collect(),
            shadow_success: counter!(SHADOW_TOTAL, "model" => m.clone(), "version" => v.clone(), "outcome" => "success"),
            shadow_error: counter!(SHADOW_TOTAL, "model" => m.clone(), "version" => v.clone(), "outcome" => "error"),
            shadow_skipped: counter!(SHADOW_TOTAL, "model" => m.clone(), "version" => v.clone(), "outcome" => "skipped"),
            shadow_agree: counter!(SHADOW_AGREEMENT_TOTAL, "model" => m.clone(), "version" => v.clone(), "agree" => "true"),
            shadow_disagree: counter!(SHADOW_AGREEMENT_TOTAL, "model" => m.clone(), "version" => v.clone(), "agree" => "false"),
            shadow_duration: seconds(SHADOW_DURATION, SHADOW_DURATION_HELP, &[("model", &m), ("version", &v)]),
            totals: Arc::new(Totals::default()),
            dashboard: std::sync::Arc::default(),
        }
    }

    /// Counts a request's arm, outcome and latency.
    pub fn routed(&self, arm: Arm, outcome: &str, seconds: f64) {
        let a = Arm::ALL.iter().position(|x| *x == arm).unwrap_or(0);
        if let (Some(per_outcome), Some(i)) = (
            self.routed.get(a),
            OUTCOMES.iter().position(|o| *o == outcome),
        ) {
            per_outcome[i].increment(1);
        }
        if let Some(h) = self.arm_duration.get(a) {
            h.record(seconds);
        }
    }

    /// Counts a request's outcome (one of [`OUTCOMES`]) by the door it
    /// came through (one of [`PROTOCOLS`]).
    pub fn outcome(&self, protocol: &str, outcome: &str) {
        if let (Some(p), Some(i)) = (
            PROTOCOLS.iter().position(|x| *x == protocol),
            OUTCOMES.iter().position(|o| *o == outcome),
        ) {
            self.outcomes[p][i].increment(1);
        }
    }
}

/// Counts a request that never reached a model version (unknown model,
/// malformed path), without putting the requested name in a label.
pub fn unrouted(protocol: &'static str, outcome: &'static str) {
    counter!(REQUESTS_TOTAL, "model" => "", "version" => "", "protocol" => protocol, "outcome" => outcome).increment(1);
}

/// Counts a change of a model's served versions.
pub fn swap(model: &str, kind: &'static str) {
    counter!(MODEL_SWAPS_TOTAL, "model" => model.to_string(), "kind" => kind).increment(1);
}

/// Counts a rollout decision or routing change.
pub fn rollout_decision(model: &str, decision: &'static str) {
    counter!(ROLLOUT_DECISIONS_TOTAL, "model" => model.to_string(), "decision" => decision)
        .increment(1);
}
