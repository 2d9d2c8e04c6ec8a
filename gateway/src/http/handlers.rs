//! The handlers: health, metadata, metrics and inference.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use hyper::{Request, Response};
use serde::Serialize;
use tokio::sync::oneshot;

use super::{Body, reply};
use crate::admission;
use crate::batcher::{Job, JobOutput, Rejected};
use crate::error::ApiError;
use crate::live::ServedVersion;
use crate::model::TensorSpec;
use crate::protocol::{self, HEADER_CONTENT_LENGTH, InferRequest};
use crate::routing::{Arm, key_hash};
use crate::server::Gateway;
use crate::tensor::Tensor;

/// Response headers that split server time by stage, in microseconds.
pub const HEADER_QUEUE_US: &str = "x-quiver-queue-us";
pub const HEADER_COMPUTE_US: &str = "x-quiver-compute-us";
pub const HEADER_TOTAL_US: &str = "x-quiver-total-us";
pub const HEADER_BATCH_SIZE: &str = "x-quiver-batch-size";
pub const HEADER_MODEL_VERSION: &str = "x-quiver-model-version";

pub fn server_ready(gw: &Gateway) -> Response<Body> {
    let live = gw.live.load();
    if live.is_ready() {
        reply::json(200, &serde_json::json!({"ready": true}))
    } else {
        let why = if live.loaded {
            "a model has no ready version"
        } else {
            "models are still loading"
        };
        reply::json(503, &serde_json::json!({"ready": false, "error": why}))
    }
}

pub fn server_metadata() -> Response<Body> {
    reply::json(
        200,
        &serde_json::json!({
            "name": "quiver",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": ["binary_tensor_data"],
        }),
    )
}

pub fn metrics(gw: &Gateway) -> Response<Body> {
    reply::bytes(200, "text/plain; version=0.0.4", gw.prometheus.render())
}

#[derive(Serialize)]
struct ModelMetadata<'a> {
    name: &'a str,
    versions: Vec<String>,
    platform: &'static str,
    inputs: &'a [TensorSpec],
    outputs: &'a [TensorSpec],
    /// Not in the protocol; Triton's model config carries it.
    max_batch_size: usize,
}

pub fn model_metadata(
    gw: &Gateway,
    model: &str,
    version: Option<u64>,
) -> Result<Response<Body>, ApiError> {
    let live = gw.live.load();
    let served = live.resolve(model, version)?;
    let versions = match version {
        Some(v) => vec![v.to_string()],
        None => live
            .models
            .get(model)
            .map(|e| {
                e.ready_versions()
                    .map(|s| s.spec.version.to_string())
                    .collect()
            })
            .unwrap_or_default(),
    };
    Ok(reply::json(
        200,
        &ModelMetadata {
            name: model,
            versions,
            platform: "onnxruntime_onnx",
            inputs: &served.spec.inputs,
            outputs: &served.spec.outputs,
            max_batch_size: served.spec.max_batch_size,
        },
    ))
}

pub fn model_ready(
    gw: &Gateway,
    model: &str,
    version: Option<u64>,
) -> Result<Response<Body>, ApiError> {
    let live = gw.live.load();
    let served = live.resolve(model, version)?;
    Ok(reply::json(
        200,
        &serde_json::json!({"name": model, "version": served.spec.version.to_string(), "ready": true}),
    ))
}

/// `POST /v2/models/{m}[/versions/{v}]/infer`. The body is read and parsed
/// first, because the request `id` may be the routing key; then the live
/// set is read once and routes the request.
pub async fn infer(
    gw: &Gateway,
    req: Request<Incoming>,
    model: &str,
    version: Option<u64>,
) -> Response<Body> {
    let started = Instant::now();
    let key = req
        .headers()
        .get(gw.settings.routing.key_header.as_str())
        .map(|v| key_hash(v.as_bytes()));
    let request = match read_request(gw, req).await {
        Ok(r) => r,
        Err(e) => {
            crate::metrics::unrouted(e.status_and_outcome().1);
            return reply::error(&e);
        }
    };
    let key = key
        .or_else(|| request.id.as_deref().map(|id| key_hash(id.as_bytes())))
        .unwrap_or_else(unkeyed);
    let live = gw.live.load();
    let (served, arm, shadows) = match live.route(model, version, key) {
        Ok(r) => (
            Arc::clone(r.served),
            r.arm,
            r.shadows.into_iter().map(Arc::clone).collect::<Vec<_>>(),
        ),
        Err(e) => {
            crate::metrics::unrouted(e.status_and_outcome().1);
            return reply::error(&e);
        }
    };
    drop(live);
    let result = run_infer(gw, &served, request, &shadows, started).await;
    let (response, outcome) = match result {
        Ok(resp) => (resp, "success"),
        Err(e) => {
            // Which version failed matters to whoever watches a rollout.
            let mut resp = reply::error(&e);
            resp.headers_mut().insert(
                HeaderName::from_static(HEADER_MODEL_VERSION),
                HeaderValue::from(served.spec.version),
            );
            (resp, e.status_and_outcome().1)
        }
    };
    let elapsed = started.elapsed();
    served.metrics.outcome(outcome);
    served
        .metrics
        .request_duration
        .record(elapsed.as_secs_f64());
    served.metrics.routed(arm, outcome, elapsed.as_secs_f64());
    if arm != Arm::Pinned {
        let server_error = response.status().is_server_error();
        served.stats.record(elapsed, server_error);
    }
    response
}

/// A request with neither key header nor `id` lands anywhere: a counter
/// through the key hash spreads such requests evenly over the arms.
fn unkeyed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    key_hash(&NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes())
}

async fn read_request(gw: &Gateway, req: Request<Incoming>) -> Result<InferRequest, ApiError> {
    let limit = gw.settings.max_body_bytes;
    let header_len = header_usize(&req, HEADER_CONTENT_LENGTH)?;
    if header_usize(&req, CONTENT_LENGTH.as_str())?.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let body = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::BadRequest(format!("cannot read request body: {e}"))
            }
        })?;
    let body = body.to_bytes();
    protocol::parse_infer_request(&body, header_len).map_err(|e| ApiError::BadRequest(e.0))
}

async fn run_infer(
    gw: &Gateway,
    served: &ServedVersion,
    request: InferRequest,
    shadows: &[Arc<ServedVersion>],
    started: Instant,
) -> Result<Response<Body>, ApiError> {
    let InferRequest {
        id,
        inputs,
        outputs: wanted,
        binary_output,
        timeout,
    } = request;
    let spec = &served.spec;
    admission::check_outputs(spec, &wanted)?;
    // Shadows need the inputs after the served answer; copy only then.
    let shadow_inputs = (!shadows.is_empty()).then(|| inputs.clone());
    let admitted = admission::admit(spec, inputs)?;
    let deadline = timeout.or(served.default_timeout).map(|t| started + t);
    let (tx, rx) = oneshot::channel();
    let job = Job {
        inputs: admitted.inputs,
        rows: admitted.rows,
        enqueued_at: Instant::now(),
        deadline,
        reply: tx,
    };
    match served.batcher.submit(job) {
        Ok(()) => {}
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
    } = answer
        .map_err(|_| ApiError::Internal("the model instance dropped the request".into()))??;
    let outputs = match shadow_inputs {
        Some(inputs) => {
            let outputs = Arc::new(outputs);
            gw.shadows.send(shadows, &inputs, &outputs);
            Arc::unwrap_or_clone(outputs)
        }
        None => outputs,
    };

    let selected: Vec<(&Tensor, bool)> = if wanted.is_empty() {
        outputs.iter().map(|t| (t, binary_output)).collect()
    } else {
        wanted
            .iter()
            .filter_map(|w| {
                outputs
                    .iter()
                    .find(|t| t.name == w.name)
                    .map(|t| (t, w.binary.unwrap_or(binary_output)))
            })
            .collect()
    };
    let encoded =
        protocol::encode_infer_response(&spec.name, spec.version, id.as_deref(), &selected)
            .map_err(|e| ApiError::Internal(format!("cannot encode response: {e}")))?;
    let content_type = if encoded.header_len.is_some() {
        "application/octet-stream"
    } else {
        "application/json"
    };
    let mut resp = reply::bytes(200, content_type, encoded.body);
    let headers = resp.headers_mut();
    let mut set = |name: &'static str, value: u128| {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from(value as u64),
        );
    };
    if let Some(n) = encoded.header_len {
        set(HEADER_CONTENT_LENGTH, n as u128);
    }
    set(HEADER_MODEL_VERSION, u128::from(spec.version));
    set(HEADER_QUEUE_US, queue_time.as_micros());
    set(HEADER_COMPUTE_US, compute_time.as_micros());
    set(HEADER_BATCH_SIZE, batch_rows as u128);
    set(HEADER_TOTAL_US, started.elapsed().as_micros());
    Ok(resp)
}

fn header_usize<B>(req: &Request<B>, name: &str) -> Result<Option<usize>, ApiError> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::BadRequest(format!("header {name} must be a non-negative integer"))
            }),
    }
}
