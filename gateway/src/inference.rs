//! One inference, whatever door it came through (HTTP or Kafka ingress):
//! route → admission → batcher → answer, then the bookkeeping every
//! answer gets (metrics, rollout statistics, the prediction log).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::admission;
use crate::batcher::{Job, JobOutput, Rejected, Submitted};
use crate::error::ApiError;
use crate::live::ServedVersion;
use crate::prediction_log::{PredictionEvent, Source};
use crate::protocol::{InferRequest, RequestedOutput};
use crate::routing::{Arm, key_hash};
use crate::state::Gateway;
use crate::tensor::Tensor;

/// Response headers (HTTP) and metadata keys (gRPC) that split server time
/// by stage, in microseconds.
pub const HEADER_QUEUE_US: &str = "x-quiver-queue-us";
pub const HEADER_COMPUTE_US: &str = "x-quiver-compute-us";
pub const HEADER_TOTAL_US: &str = "x-quiver-total-us";
pub const HEADER_BATCH_SIZE: &str = "x-quiver-batch-size";
pub const HEADER_MODEL_VERSION: &str = "x-quiver-model-version";
/// The request id the prediction was logged under (the client's `id`, or
/// one the gateway made up); labels refer to it.
pub const HEADER_REQUEST_ID: &str = "x-quiver-request-id";

/// Where routing sent a request.
pub struct Route {
    pub served: Arc<ServedVersion>,
    pub arm: Arm,
    pub shadows: Vec<Arc<ServedVersion>>,
    /// The request is logged (sampling decided by its key).
    pub logged: bool,
}

/// The routing key: the key header's hash if any, else the request id's,
/// else a counter (which spreads unkeyed requests evenly over the arms).
pub fn key(header_hash: Option<u64>, id: Option<&str>) -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    header_hash
        .or_else(|| id.map(|id| key_hash(id.as_bytes())))
        .unwrap_or_else(|| key_hash(&NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes()))
}

/// Reads the live set once and picks the version.
pub fn route(gw: &Gateway, model: &str, version: Option<u64>, key: u64) -> Result<Route, ApiError> {
    let live = gw.live.load();
    let r = live.route(model, version, key)?;
    Ok(Route {
        served: Arc::clone(r.served),
        arm: r.arm,
        shadows: r.shadows.into_iter().map(Arc::clone).collect(),
        logged: gw.traffic.sampled(key),
    })
}

/// A model's answer, before it is encoded for the door it goes out of.
pub struct Answer {
    /// The request's id, or the one made up for the log.
    pub id: Option<String>,
    pub outputs: Vec<Tensor>,
    pub wanted: Vec<RequestedOutput>,
    pub binary_output: bool,
    pub queue_time: Duration,
    pub compute_time: Duration,
    pub batch_rows: usize,
    /// When the batch left the queue, and when this answer came back (the
    /// batch's end unless traces are exported).
    pub batch_started: Instant,
    pub answered_at: Instant,
    /// The inputs as received (in the model's input order), kept for the
    /// prediction log.
    logged_inputs: Option<Vec<Tensor>>,
}

impl Answer {
    /// The outputs to return: all of them, or the ones asked for, each with
    /// whether it goes binary.
    pub fn selected(&self) -> Vec<(&Tensor, bool)> {
        if self.wanted.is_empty() {
            return self
                .outputs
                .iter()
                .map(|t| (t, self.binary_output))
                .collect();
        }
        self.wanted
            .iter()
            .filter_map(|w| {
                self.outputs
                    .iter()
                    .find(|t| t.name == w.name)
                    .map(|t| (t, w.binary.unwrap_or(self.binary_output)))
            })
            .collect()
    }

    /// The protocol's response body for this answer.
    pub fn encode(&self, route: &Route) -> crate::protocol::EncodedResponse {
        let spec = &route.served.spec;
        crate::protocol::encode_infer_response(
            &spec.name,
            spec.version,
            self.id.as_deref(),
            &self.selected(),
        )
    }
}

/// Runs the request on the routed version (and copies it to the shadows).
pub async fn predict(
    gw: &Gateway,
    route: &Route,
    request: InferRequest,
    started: Instant,
) -> Result<Answer, ApiError> {
    let InferRequest {
        id,
        inputs,
        outputs: wanted,
        binary_output,
        timeout,
        priority,
    } = request;
    let served = &route.served;
    let spec = &served.spec;
    admission::check_outputs(spec, &wanted)?;
    let priority = served
        .priorities
        .level(priority)
        .map_err(ApiError::BadRequest)?;
    // Shadows and the log need the inputs after the answer: the batcher
    // hands them back (in the model's input order).
    let keep_inputs = route.logged || !route.shadows.is_empty();
    let admitted = admission::admit(spec, inputs)?;
    let deadline = timeout.or(served.default_timeout).map(|t| started + t);
    let (tx, rx) = oneshot::channel();
    let job = Job {
        inputs: admitted.inputs,
        rows: admitted.rows,
        enqueued_at: Instant::now(),
        deadline,
        priority,
        keep_inputs,
        reply: tx,
    };
    match served.batcher.submit(job) {
        Ok(Submitted::Queued) => {}
        Ok(Submitted::Lead(leader)) => {
            // Let this thread read the requests already waiting on other
            // connections first: they join this batch.
            tokio::task::yield_now().await;
            leader.run();
        }
        Err(Rejected::Full(_)) => {
            return Err(ApiError::QueueFull {
                model: spec.name.clone(),
                version: spec.version,
                capacity: served.batcher.capacity(),
            });
        }
        Err(Rejected::Closed(_)) => {
            return Err(ApiError::NotReady(format!(
                "model '{}' is shutting down",
                spec.name
            )));
        }
    }
    let answer = match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), rx)
            .await
            .map_err(|_| ApiError::DeadlineExceeded)?,
        None => rx.await,
    };
    let JobOutput {
        outputs,
        queue_time,
        compute_time,
        batch_rows,
        batch_started,
        inputs,
    } = answer
        .map_err(|_| ApiError::Internal("the model instance dropped the request".into()))??;
    let outputs = if route.shadows.is_empty() {
        outputs
    } else {
        let outputs = Arc::new(outputs);
        gw.shadows.send(&route.shadows, &inputs, &outputs);
        Arc::unwrap_or_clone(outputs)
    };
    // A logged prediction needs an id for its labels to refer to.
    let id = match id {
        None if route.logged => Some(gw.traffic.new_request_id()),
        id => id,
    };
    Ok(Answer {
        id,
        outputs,
        wanted,
        binary_output,
        queue_time,
        compute_time,
        batch_rows,
        batch_started,
        // A clock read per request only when a trace will show it.
        answered_at: if crate::telemetry::enabled() {
            Instant::now()
        } else {
            batch_started + compute_time
        },
        logged_inputs: route.logged.then_some(inputs),
    })
}

/// Metrics and rollout statistics for a finished request.
pub fn account(
    route: &Route,
    source: Source,
    outcome: &str,
    elapsed: Duration,
    server_error: bool,
) {
    let served = &route.served;
    served.metrics.outcome(source.as_str(), outcome);
    served.metrics.totals.request(
        outcome == "success",
        elapsed,
        quiver_contract::records::now_ms(),
    );
    served
        .metrics
        .dashboard
        .request(elapsed, outcome != "success");
    served
        .metrics
        .request_duration
        .record(elapsed.as_secs_f64());
    served
        .metrics
        .routed(route.arm, outcome, elapsed.as_secs_f64());
    if route.arm != Arm::Pinned {
        served.stats.record(elapsed, server_error);
    }
}

/// Hands a served prediction to the log (a no-op for unsampled requests).
pub fn log(gw: &Gateway, route: &Route, answer: Answer, source: Source, elapsed: Duration) {
    let (Some(inputs), Some(id)) = (answer.logged_inputs, answer.id) else {
        return;
    };
    gw.traffic.log_prediction(PredictionEvent {
        id,
        model: Arc::clone(&route.served.name),
        version: route.served.spec.version,
        arm: route.arm,
        source,
        timestamp_ms: quiver_contract::records::now_ms(),
        latency_us: elapsed.as_micros() as u64,
        inputs,
        outputs: answer.outputs,
    });
}
