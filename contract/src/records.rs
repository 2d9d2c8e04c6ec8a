//! The records the gateway logs and the trainer consumes, the same on Kafka
//! and in the local log (`segments`):
//!
//! - [`PredictionRecord`], one per served inference request, on the
//!   predictions topic, keyed by the request id;
//! - [`LabelRecord`], the ground truth for a request id, on the labels topic,
//!   keyed by the same id, written by the gateway's feedback endpoint or by
//!   any producer;
//! - [`IngressRequest`], the value of a record on the requests topic that
//!   Kafka producers use to ask for an inference.
//!
//! All are JSON. Every record carries `schema`; a reader refuses a newer one.
//! Tensors have the Open Inference Protocol's shape (`name`, `datatype`,
//! `shape`, flat row-major `data`), so a logged input can be sent back to the
//! gateway as it is.

use serde::{Deserialize, Serialize};

/// The record schema this crate writes and the newest it reads.
pub const RECORD_SCHEMA: u32 = 1;

/// Default topic names; each is configurable on both sides.
pub const PREDICTIONS_TOPIC: &str = "quiver.predictions";
pub const LABELS_TOPIC: &str = "quiver.labels";
pub const REQUESTS_TOPIC: &str = "quiver.requests";
pub const RESPONSES_TOPIC: &str = "quiver.responses";
pub const DEAD_LETTER_TOPIC: &str = "quiver.requests.dlq";

/// Header names on Kafka records.
pub const HEADER_SCHEMA: &str = "quiver-schema";
/// The correlation id of an ingress request, copied onto its response.
pub const HEADER_CORRELATION_ID: &str = "quiver-correlation-id";
/// Why a record went to the dead-letter topic, or why a response is an error.
pub const HEADER_ERROR: &str = "quiver-error";
/// The HTTP status the same request would have had over HTTP.
pub const HEADER_STATUS: &str = "quiver-status";

/// One served prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    pub schema: u32,
    /// The request id: the client's `id`, or one the gateway made up and
    /// returned in the response's `id`. Labels refer to it.
    pub id: String,
    pub model: String,
    pub version: u64,
    /// How routing chose the version: `stable`, `canary` or `pinned`.
    pub arm: String,
    /// Where the request came from: `http` or `kafka`.
    pub source: String,
    /// When the answer was ready, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Time in the gateway, from the request's arrival to its answer.
    pub latency_us: u64,
    pub inputs: Vec<RecordTensor>,
    pub outputs: Vec<RecordTensor>,
}

/// A tensor in the Open Inference Protocol's JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordTensor {
    pub name: String,
    /// `FP32`, `INT64`, `BOOL`, `BYTES`, …
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: TensorValues,
}

/// A tensor's elements, flat and row-major. Every numeric type reads as
/// `Numbers` (exact for integers up to 2^53).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TensorValues {
    Numbers(Vec<f64>),
    Bools(Vec<bool>),
    Texts(Vec<String>),
}

impl TensorValues {
    pub fn len(&self) -> usize {
        match self {
            Self::Numbers(v) => v.len(),
            Self::Bools(v) => v.len(),
            Self::Texts(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as numbers (booleans as 0/1); `None` for text.
    pub fn as_f64(&self) -> Option<Vec<f64>> {
        match self {
            Self::Numbers(v) => Some(v.clone()),
            Self::Bools(v) => Some(v.iter().map(|&b| f64::from(u8::from(b))).collect()),
            Self::Texts(_) => None,
        }
    }
}

impl RecordTensor {
    /// The number of rows: the first dimension, 1 for a scalar.
    pub fn rows(&self) -> usize {
        self.shape.first().map_or(1, |&d| d.max(0) as usize)
    }
}

impl PredictionRecord {
    /// The number of rows the request carried (the first dimension of its
    /// first input).
    pub fn rows(&self) -> usize {
        self.inputs.first().map_or(0, RecordTensor::rows)
    }
}

/// The ground truth for one request: one value per row of the request
/// (a class index for classifiers, the target for regressors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelRecord {
    pub schema: u32,
    /// The request id the label belongs to.
    pub id: String,
    pub model: String,
    /// One value per row; a single-row request may give a bare number.
    pub label: Label,
    /// When the label was observed, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A label: a number, or one number per row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Label {
    One(f64),
    PerRow(Vec<f64>),
}

impl Label {
    pub fn values(&self) -> &[f64] {
        match self {
            Self::One(v) => std::slice::from_ref(v),
            Self::PerRow(v) => v,
        }
    }
}

/// The value of a record on the requests topic: an Open Inference Protocol
/// v2 JSON request plus the model it is for. The correlation id comes from
/// the record's `quiver-correlation-id` header, else its key, else the
/// request's `id`; the response carries it back the same way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngressRequest {
    pub model_name: String,
    /// Pins a version; otherwise routing picks one as for HTTP.
    #[serde(default)]
    pub model_version: Option<String>,
    /// The rest of the body: `id`, `inputs`, `outputs`, `parameters`.
    #[serde(flatten)]
    pub request: serde_json::Map<String, serde_json::Value>,
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is not valid JSON for its schema: {0}")]
    Json(#[from] serde_json::Error),
    #[error("record schema {found} is newer than {RECORD_SCHEMA}, the newest this build reads")]
    NewerSchema { found: u32 },
}

#[derive(Deserialize)]
struct SchemaOnly {
    schema: u32,
}

/// Parses a record, refusing a schema newer than [`RECORD_SCHEMA`].
pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    let head: SchemaOnly = serde_json::from_slice(bytes)?;
    if head.schema > RECORD_SCHEMA {
        return Err(RecordError::NewerSchema { found: head.schema });
    }
    Ok(serde_json::from_slice(bytes)?)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prediction_round_trips_and_reads_gateway_json() {
        // The gateway writes tensors with its own serializer; this is its
        // shape, with FP32 printed shortest and INT64 as integers.
        let wire =
            br#"{"schema":1,"id":"r1","model":"m","version":3,"arm":"canary","source":"http",
            "timestamp_ms":1700000000000,"latency_us":412,
            "inputs":[{"name":"x","datatype":"FP32","shape":[2,2],"data":[0.1,2,3.5,-4]}],
            "outputs":[{"name":"y","datatype":"INT64","shape":[2],"data":[1,0]},
                       {"name":"ok","datatype":"BOOL","shape":[2],"data":[true,false]}]}"#;
        let r: PredictionRecord = parse(wire).unwrap();
        assert_eq!(r.rows(), 2);
        assert_eq!(
            r.inputs[0].data,
            TensorValues::Numbers(vec![0.1, 2.0, 3.5, -4.0])
        );
        assert_eq!(r.outputs[1].data.as_f64().unwrap(), vec![1.0, 0.0]);
        let again: PredictionRecord = parse(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn labels_take_a_number_or_one_per_row() {
        let one: LabelRecord =
            parse(br#"{"schema":1,"id":"a","model":"m","label":1,"timestamp_ms":5}"#).unwrap();
        assert_eq!(one.label.values(), &[1.0]);
        let rows: LabelRecord =
            parse(br#"{"schema":1,"id":"a","model":"m","label":[0,2.5],"timestamp_ms":5}"#)
                .unwrap();
        assert_eq!(rows.label.values(), &[0.0, 2.5]);
    }

    #[test]
    fn newer_schema_and_bad_json_are_refused() {
        let newer = parse::<LabelRecord>(
            br#"{"schema":2,"id":"a","model":"m","label":1,"timestamp_ms":5}"#,
        );
        assert!(matches!(newer, Err(RecordError::NewerSchema { found: 2 })));
        assert!(matches!(
            parse::<LabelRecord>(br#"{"schema":1,"id":"a"}"#),
            Err(RecordError::Json(_))
        ));
    }

    #[test]
    fn ingress_request_keeps_the_protocol_body() {
        let r: IngressRequest = serde_json::from_slice(
            br#"{"model_name":"m","id":"c1","inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}"#,
        )
        .unwrap();
        assert_eq!(r.model_name, "m");
        assert!(r.model_version.is_none());
        assert!(r.request.contains_key("inputs"));
        assert_eq!(r.request["id"], "c1");
    }
}
