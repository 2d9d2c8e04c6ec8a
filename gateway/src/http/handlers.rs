//! The handlers: health, metadata, metrics and inference.

use std::sync::OnceLock;
use std::time::Instant;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use hyper::{Request, Response};
use serde::Serialize;

use super::{Body, reply};
use crate::error::ApiError;
use crate::inference::{
    self, Answer, HEADER_BATCH_SIZE, HEADER_COMPUTE_US, HEADER_MODEL_VERSION, HEADER_QUEUE_US,
    HEADER_REQUEST_ID, HEADER_TOTAL_US, Route,
};
use crate::model::TensorSpec;
use crate::prediction_log::Source;
use crate::protocol::{self, HEADER_CONTENT_LENGTH, InferRequest};
use crate::routing::key_hash;
use crate::state::Gateway;

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
    reply::bytes(
        200,
        "text/plain; version=0.0.4",
        crate::metrics::render(&gw.prometheus),
    )
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
    /// `{"classlabels": {output: [labels]}}` for outputs served in place
    /// of a ZipMap's maps.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<serde_json::Value>,
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
        None => live.ready_version_names(model),
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
            parameters: served.spec.parameters(),
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
    let header_key = req
        .headers()
        .get(&gw.settings.routing.key_header)
        .map(|v| key_hash(v.as_bytes()));
    let mut trace = crate::telemetry::begin(req.headers(), started);
    let request = match read_request(gw, req).await {
        Ok(r) => r,
        Err(e) => {
            crate::metrics::unrouted("http", e.status_and_outcome().1);
            return reply::error(&e);
        }
    };
    crate::telemetry::decoded(&mut trace);
    let key = inference::key(header_key, request.id.as_deref());
    let route = match inference::route(gw, model, version, key) {
        Ok(r) => r,
        Err(e) => {
            crate::metrics::unrouted("http", e.status_and_outcome().1);
            return reply::error(&e);
        }
    };
    let version = route.served.spec.version;
    let result = match inference::predict(gw, &route, request, started).await {
        Ok(answer) => Ok((encode(&route, &answer), answer)),
        Err(e) => Err(e),
    };
    let elapsed = started.elapsed();
    match result {
        Ok((mut response, answer)) => {
            response
                .headers_mut()
                .insert(TOTAL_US, int_header(micros(elapsed)));
            let timing = crate::telemetry::Timing::of(&answer, started + elapsed);
            inference::account(&route, Source::Http, "success", elapsed, false);
            inference::log(gw, &route, answer, Source::Http, elapsed);
            crate::telemetry::finish(trace, &route, 200, "success", Some(timing));
            response
        }
        Err(e) => {
            // Which version failed matters to whoever watches a rollout.
            let mut resp = reply::error(&e);
            resp.headers_mut().insert(
                HeaderName::from_static(HEADER_MODEL_VERSION),
                HeaderValue::from(version),
            );
            let server_error = resp.status().is_server_error();
            inference::account(
                &route,
                Source::Http,
                e.status_and_outcome().1,
                elapsed,
                server_error,
            );
            let status = resp.status().as_u16();
            crate::telemetry::finish(trace, &route, status, e.status_and_outcome().1, None);
            resp
        }
    }
}

async fn read_request(gw: &Gateway, req: Request<Incoming>) -> Result<InferRequest, ApiError> {
    let limit = gw.settings.http.max_body_bytes;
    let header_len = header_usize(&req, &INFERENCE_HEADER_LENGTH)?;
    if header_usize(&req, &CONTENT_LENGTH)?.is_some_and(|n| n > limit) {
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

/// The HTTP response for an answer: JSON, or JSON plus binary outputs.
/// The total time header is the caller's, set once the body is encoded.
fn encode(route: &Route, answer: &Answer) -> Response<Body> {
    let spec = &route.served.spec;
    let encoded = answer.encode(route);
    let content_type = if encoded.header_len.is_some() {
        "application/octet-stream"
    } else {
        "application/json"
    };
    let mut resp = reply::bytes(200, content_type, encoded.body);
    let headers = resp.headers_mut();
    if let Some(n) = encoded.header_len {
        headers.insert(INFERENCE_HEADER_LENGTH, int_header(n as u64));
    }
    headers.insert(MODEL_VERSION, int_header(spec.version));
    headers.insert(QUEUE_US, int_header(micros(answer.queue_time)));
    headers.insert(COMPUTE_US, int_header(micros(answer.compute_time)));
    headers.insert(BATCH_SIZE, int_header(answer.batch_rows as u64));
    if let Some(id) = &answer.id
        && let Ok(v) = HeaderValue::from_str(id)
    {
        headers.insert(REQUEST_ID, v);
    }
    resp
}

// Checked once, at compile time, rather than on every response.
const INFERENCE_HEADER_LENGTH: HeaderName = HeaderName::from_static(HEADER_CONTENT_LENGTH);
const MODEL_VERSION: HeaderName = HeaderName::from_static(HEADER_MODEL_VERSION);
const QUEUE_US: HeaderName = HeaderName::from_static(HEADER_QUEUE_US);
const COMPUTE_US: HeaderName = HeaderName::from_static(HEADER_COMPUTE_US);
const BATCH_SIZE: HeaderName = HeaderName::from_static(HEADER_BATCH_SIZE);
const TOTAL_US: HeaderName = HeaderName::from_static(HEADER_TOTAL_US);
const REQUEST_ID: HeaderName = HeaderName::from_static(HEADER_REQUEST_ID);

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A header value for an integer. Those below 4096 (versions, batch sizes,
/// most timings in µs) come from a table made once, as static values: no
/// allocation per response.
fn int_header(v: u64) -> HeaderValue {
    const SMALL: usize = 4096;
    static TABLE: OnceLock<Vec<&'static str>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut all = String::new();
        let mut ends = Vec::with_capacity(SMALL);
        for i in 0..SMALL {
            all.push_str(&i.to_string());
            ends.push(all.len());
        }
        let all: &'static str = String::leak(all);
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let s = &all[start..end];
                start = end;
                s
            })
            .collect()
    });
    match usize::try_from(v).ok().and_then(|i| table.get(i)) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(v),
    }
}

fn header_usize<B>(req: &Request<B>, name: &HeaderName) -> Result<Option<usize>, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_headers_read_as_their_decimal_value() {
        for v in [0u64, 7, 42, 999, 4095, 4096, 123_456, u64::MAX] {
            assert_eq!(int_header(v).to_str().unwrap(), v.to_string());
        }
    }
}
