//! Building responses: JSON bodies and `{"error": "..."}` for failures.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use super::Body;
use crate::error::ApiError;

pub fn bytes(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    // Room for an inference answer's headers, so they never regrow the map.
    *resp.headers_mut() = HeaderMap::with_capacity(16);
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => bytes(status, "application/json", body),
        Err(e) => error(&ApiError::Internal(format!("cannot encode response: {e}"))),
    }
}

pub fn error(e: &ApiError) -> Response<Body> {
    let (status, _) = e.status_and_outcome();
    let body =
        serde_json::to_vec(&serde_json::json!({ "error": e.to_string() })).unwrap_or_default();
    bytes(status, "application/json", body)
}
