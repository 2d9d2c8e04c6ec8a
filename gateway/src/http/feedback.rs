//! `POST /v2/models/{m}/feedback`: ground truth for earlier predictions,
//! by request id. Labels are checked, then queued to the labels topic (or
//! the local log) next to the predictions they belong to.
//!
//! ```json
//! {"labels": [{"id": "<request id>", "label": 1}, {"id": "b", "label": [0, 2.5]}]}
//! ```
//!
//! `label` is a number for a one-row request, or one number per row (a
//! class index for classifiers, the target for regressors).
//! `timestamp_ms` (when the truth was observed) is optional.

use hyper::Request;
use hyper::body::Incoming;
use quiver_contract::records::{Label, LabelRecord, RECORD_SCHEMA, now_ms};
use serde::Deserialize;

use super::{Body, admin, reply};
use crate::error::ApiError;
use crate::state::Gateway;

/// Labels per call; more should be split.
pub const MAX_LABELS: usize = 10_000;
/// The longest request id accepted.
pub const MAX_ID_BYTES: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    labels: Vec<WireLabel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireLabel {
    id: String,
    label: Label,
    #[serde(default)]
    timestamp_ms: Option<u64>,
}

pub async fn feedback(
    gw: &Gateway,
    req: Request<Incoming>,
    model: &str,
) -> Result<hyper::Response<Body>, ApiError> {
    let result = accept(gw, req, model).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(ApiError::NotReady(_)) => "busy",
        Err(_) => "rejected",
    };
    metrics::counter!(crate::metrics::FEEDBACK_LABELS_TOTAL, "outcome" => outcome).increment(1);
    let n = result?;
    Ok(reply::json(200, &serde_json::json!({ "accepted": n })))
}

async fn accept(gw: &Gateway, req: Request<Incoming>, model: &str) -> Result<usize, ApiError> {
    // Labels for a model the gateway does not know are a client mistake.
    gw.live.load().resolve(model, None)?;
    let body: FeedbackBody = admin::read_json_limited(req, gw.settings.http.max_body_bytes).await?;
    let records = validate(model, body)?;
    let n = records.len();
    gw.traffic
        .log_labels(records)
        .map_err(|e| ApiError::NotReady(format!("labels not taken: {e}")))?;
    Ok(n)
}

fn validate(model: &str, body: FeedbackBody) -> Result<Vec<LabelRecord>, ApiError> {
    if body.labels.is_empty() {
        return Err(ApiError::BadRequest("'labels' is empty".into()));
    }
    if body.labels.len() > MAX_LABELS {
        return Err(ApiError::BadRequest(format!(
            "{} labels in one call; at most {MAX_LABELS}",
            body.labels.len()
        )));
    }
    let now = now_ms();
    body.labels
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            if l.id.is_empty() || l.id.len() > MAX_ID_BYTES {
                return Err(ApiError::BadRequest(format!(
                    "labels[{i}].id must be 1 to {MAX_ID_BYTES} bytes"
                )));
            }
            let values = l.label.values();
            if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
                return Err(ApiError::BadRequest(format!(
                    "labels[{i}].label must be a finite number or a non-empty list of them"
                )));
            }
            Ok(LabelRecord {
                schema: RECORD_SCHEMA,
                id: l.id,
                model: model.to_string(),
                label: l.label,
                timestamp_ms: l.timestamp_ms.unwrap_or(now),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> FeedbackBody {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn labels_are_checked_and_named() {
        let ok = validate(
            "m",
            body(
                r#"{"labels":[{"id":"a","label":1},{"id":"b","label":[0,2.5],"timestamp_ms":7}]}"#,
            ),
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].timestamp_ms, 7);
        assert_eq!(ok[0].model, "m");
        for (bad, needle) in [
            (r#"{"labels":[]}"#, "empty"),
            (r#"{"labels":[{"id":"","label":1}]}"#, "labels[0].id"),
            (
                r#"{"labels":[{"id":"a","label":1},{"id":"b","label":[]}]}"#,
                "labels[1].label",
            ),
        ] {
            let e = validate("m", body(bad)).err().unwrap().to_string();
            assert!(e.contains(needle), "{e}");
        }
        assert!(
            serde_json::from_str::<FeedbackBody>(r#"{"labels":[{"id":"a","label":"cat"}]}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<FeedbackBody>(r#"{"labels":[{"id":"a","label":1,"x":1}]}"#)
                .is_err()
        );
    }
}
