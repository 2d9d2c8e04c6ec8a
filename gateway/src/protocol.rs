//! The Open Inference Protocol v2 on the wire: inference requests (JSON,
//! optionally followed by the binary tensor data extension) in, responses
//! out. Checking a request against a model's inputs is `admission`'s job.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::tensor::{self, DataType, Tensor, binary, json_out};

/// The header that splits a body into its JSON part and its binary part.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// A decoded inference request.
#[derive(Debug, Clone)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// The outputs asked for; empty means all.
    pub outputs: Vec<RequestedOutput>,
    /// `binary_data_output`: return every output as binary unless the output
    /// itself says otherwise.
    pub binary_output: bool,
    /// The `timeout` parameter (microseconds on the wire, as Triton's clients send).
    pub timeout: Option<Duration>,
    /// The `priority` parameter: 1 is the highest level; absent or 0 means
    /// the model's default.
    pub priority: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct RequestedOutput {
    pub name: String,
    /// The output's own `binary_data` parameter, when given.
    pub binary: Option<bool>,
}

/// Why a request body could not be decoded; always the client's fault (400).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct ProtocolError(pub String);

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<WireInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<WireOutput>>,
}

#[derive(Deserialize)]
struct WireInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

fn param<'a>(params: &'a Option<Map<String, Value>>, key: &str) -> Option<&'a Value> {
    params.as_ref().and_then(|p| p.get(key))
}

/// Names a tensor in an error message ("input 'x'"), formatted only
/// when an error is.
struct Named<'a>(&'static str, &'a str);

impl std::fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} '{}'", self.0, self.1)
    }
}

fn bool_param(
    params: &Option<Map<String, Value>>,
    key: &str,
    whose: impl std::fmt::Display,
) -> Result<Option<bool>, ProtocolError> {
    match param(params, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ProtocolError(format!(
            "parameter '{key}' of {whose} must be a boolean, got {other}"
        ))),
    }
}

fn u64_param(
    params: &Option<Map<String, Value>>,
    key: &str,
    whose: impl std::fmt::Display,
) -> Result<Option<u64>, ProtocolError> {
    match param(params, key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ProtocolError(format!(
                "parameter '{key}' of {whose} must be a non-negative integer, got {v}"
            ))
        }),
    }
}

/// Decodes a request body. `header_len` is the value of
/// `Inference-Header-Content-Length`, when the client sent one.
pub fn parse_infer_request(
    body: &[u8],
    header_len: Option<usize>,
) -> Result<InferRequest, ProtocolError> {
    let (json_part, mut binary_part) = match header_len {
        Some(n) if n > body.len() => {
            return Err(ProtocolError(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let wire: WireRequest<'_> = serde_json::from_slice(json_part)
        .map_err(|e| ProtocolError(format!("malformed inference request JSON: {e}")))?;

    let binary_output =
        bool_param(&wire.parameters, "binary_data_output", "the request")?.unwrap_or(false);
    let timeout = u64_param(&wire.parameters, "timeout", "the request")?
        .filter(|&us| us > 0)
        .map(Duration::from_micros);
    let priority = priority(u64_param(&wire.parameters, "priority", "the request")?)?;

    let mut inputs = Vec::with_capacity(wire.inputs.len());
    for input in wire.inputs {
        let whose = Named("input", &input.name);
        let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
            ProtocolError(format!("{whose} has unknown datatype '{}'", input.datatype))
        })?;
        let count = tensor::element_count(&input.shape).ok_or_else(|| {
            ProtocolError(format!("{whose} has an invalid shape {:?}", input.shape))
        })?;
        let data = match (
            u64_param(&input.parameters, "binary_data_size", &whose)?,
            input.data,
        ) {
            (Some(_), Some(_)) => {
                return Err(ProtocolError(format!(
                    "{whose} has both 'data' and 'binary_data_size'"
                )));
            }
            (Some(size), None) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary_part.len() {
                    return Err(ProtocolError(format!(
                        "{whose} declares binary_data_size {size} but only {} binary bytes remain",
                        binary_part.len()
                    )));
                }
                let (mine, rest) = binary_part.split_at(size);
                binary_part = rest;
                binary::decode(datatype, count, mine)
                    .map_err(|e| ProtocolError(format!("{whose}: {e}")))?
            }
            (None, Some(raw)) => {
                let data = tensor::json::decode(datatype, raw, count)
                    .map_err(|e| ProtocolError(format!("{whose}: {e}")))?;
                if data.len() != count {
                    return Err(ProtocolError(format!(
                        "{whose} has {} elements but shape {:?} needs {count}",
                        data.len(),
                        input.shape
                    )));
                }
                data
            }
            (None, None) => {
                return Err(ProtocolError(format!(
                    "{whose} has no 'data' and no 'binary_data_size'"
                )));
            }
        };
        inputs.push(Tensor {
            name: input.name,
            shape: input.shape,
            data,
        });
    }
    if !binary_part.is_empty() {
        return Err(ProtocolError(format!(
            "{} bytes of binary data follow the JSON header but no input claims them",
            binary_part.len()
        )));
    }

    let mut outputs = Vec::new();
    for output in wire.outputs.unwrap_or_default() {
        let binary = bool_param(
            &output.parameters,
            "binary_data",
            Named("output", &output.name),
        )?;
        outputs.push(RequestedOutput {
            name: output.name,
            binary,
        });
    }
    Ok(InferRequest {
        id: wire.id,
        inputs,
        outputs,
        binary_output,
        timeout,
        priority,
    })
}

/// The `priority` parameter's value: 0 (as Triton's clients send by
/// default) means none was asked for.
pub fn priority(value: Option<u64>) -> Result<Option<u32>, ProtocolError> {
    match value {
        None | Some(0) => Ok(None),
        Some(p) => u32::try_from(p).map(Some).map_err(|_| {
            ProtocolError(format!("parameter 'priority' {p} is not a priority level"))
        }),
    }
}

/// An encoded response: the body and, when any output went binary, the
/// length of its JSON header.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub header_len: Option<usize>,
}

/// Encodes a response (`model_name`, `model_version`, `id` when there is
/// one, `outputs`); each output goes binary when its flag says so.
pub fn encode_infer_response(
    model: &str,
    version: u64,
    id: Option<&str>,
    outputs: &[(&Tensor, bool)],
) -> EncodedResponse {
    let binary_len: usize = outputs
        .iter()
        .filter(|(_, b)| *b)
        .map(|(t, _)| binary::encoded_len(&t.data))
        .sum();
    let mut body = Vec::with_capacity(256 + binary_len);
    body.extend_from_slice(b"{\"model_name\":");
    json_out::string(&mut body, model);
    body.extend_from_slice(b",\"model_version\":\"");
    json_out::uint(&mut body, version);
    body.push(b'"');
    if let Some(id) = id {
        body.extend_from_slice(b",\"id\":");
        json_out::string(&mut body, id);
    }
    body.extend_from_slice(b",\"outputs\":[");
    for (i, (t, binary)) in outputs.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        json_out::tensor(&mut body, t, binary.then(|| binary::encoded_len(&t.data)));
    }
    body.extend_from_slice(b"]}");
    let header_len = body.len();
    for (t, _) in outputs.iter().filter(|(_, b)| *b) {
        binary::encode(&t.data, &mut body);
    }
    EncodedResponse {
        body,
        header_len: outputs.iter().any(|(_, b)| *b).then_some(header_len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    #[test]
    fn json_request_decodes() {
        let body = br#"{"id":"r1","parameters":{"timeout":2500,"custom":"x"},
            "inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}],
            "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let req = parse_infer_request(body, None).unwrap();
        assert_eq!(req.id.as_deref(), Some("r1"));
        assert_eq!(req.timeout, Some(Duration::from_micros(2500)));
        assert_eq!(
            req.inputs[0].data,
            TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0])
        );
        assert_eq!(req.outputs[0].binary, Some(true));
    }

    #[test]
    fn binary_request_decodes_in_input_order() {
        let header = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},
            {"name":"b","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&7i32.to_le_bytes());
        body.extend_from_slice(&(-1i32).to_le_bytes());
        body.extend_from_slice(&[3, 0, 0, 0, b'a', b'b', b'c']);
        let req = parse_infer_request(&body, Some(header.len())).unwrap();
        assert_eq!(req.inputs[0].data, TensorData::Int32(vec![7, -1]));
        assert_eq!(req.inputs[1].data, TensorData::Bytes(vec![b"abc".to_vec()]));
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let cases: &[(&[u8], Option<usize>, &str)] = &[
            (b"{", None, "malformed inference request JSON"),
            (br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FLOAT","data":[1,2]}]}"#, None, "unknown datatype 'FLOAT'"),
            (br#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#, None, "has 2 elements but shape [3] needs 3"),
            (br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#, None, "invalid shape"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#, None, "no 'data'"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#, None, "only 0 binary bytes remain"),
            (br#"{"inputs":[]}"#, Some(100), "Inference-Header-Content-Length is 100"),
            (br#"{"inputs":[],"parameters":{"binary_data_output":"yes"}}"#, None, "must be a boolean"),
        ];
        for (body, header, needle) in cases {
            let err = parse_infer_request(body, *header).unwrap_err();
            assert!(
                err.0.contains(needle),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn leftover_binary_bytes_are_an_error() {
        let header = br#"{"inputs":[]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[1, 2, 3]);
        let err = parse_infer_request(&body, Some(header.len())).unwrap_err();
        assert!(err.0.contains("3 bytes of binary data"), "{err}");
    }

    #[test]
    fn response_mixes_json_and_binary_outputs() {
        let a = Tensor {
            name: "a".into(),
            shape: vec![2],
            data: TensorData::Fp32(vec![1.0, 2.0]),
        };
        let b = Tensor {
            name: "b".into(),
            shape: vec![1],
            data: TensorData::Int64(vec![9]),
        };
        let enc = encode_infer_response("m", 3, Some("id7"), &[(&a, false), (&b, true)]);
        let header_len = enc.header_len.unwrap();
        assert_eq!(
            std::str::from_utf8(&enc.body[..header_len]).unwrap(),
            r#"{"model_name":"m","model_version":"3","id":"id7","outputs":[{"name":"a","datatype":"FP32","shape":[2],"data":[1.0,2.0]},{"name":"b","datatype":"INT64","shape":[1],"parameters":{"binary_data_size":8}}]}"#
        );
        let header: Value = serde_json::from_slice(&enc.body[..header_len]).unwrap();
        assert_eq!(header["model_version"], "3");
        assert_eq!(header["id"], "id7");
        assert_eq!(header["outputs"][0]["data"], serde_json::json!([1.0, 2.0]));
        assert_eq!(header["outputs"][1]["parameters"]["binary_data_size"], 8);
        assert_eq!(&enc.body[header_len..], &9i64.to_le_bytes());
    }

    #[test]
    fn response_without_id_escapes_names_and_has_no_binary_part() {
        let a = Tensor {
            name: "out\"1".into(),
            shape: vec![1, 2],
            data: TensorData::Bool(vec![true, false]),
        };
        let enc = encode_infer_response("m\\odel", 12, None, &[(&a, false)]);
        assert_eq!(enc.header_len, None);
        assert_eq!(
            std::str::from_utf8(&enc.body).unwrap(),
            r#"{"model_name":"m\\odel","model_version":"12","outputs":[{"name":"out\"1","datatype":"BOOL","shape":[1,2],"data":[true,false]}]}"#
        );
        let back: Value = serde_json::from_slice(&enc.body).unwrap();
        assert_eq!(back["model_name"], "m\\odel");
    }

    #[test]
    fn priority_parameter_is_read_and_zero_means_the_default() {
        let req = |p: &str| {
            let body = format!(r#"{{"parameters":{{"priority":{p}}},"inputs":[]}}"#);
            parse_infer_request(body.as_bytes(), None)
        };
        assert_eq!(req("2").unwrap().priority, Some(2));
        assert_eq!(req("0").unwrap().priority, None);
        assert!(req("-1").unwrap_err().0.contains("priority"));
        assert!(req("99999999999").unwrap_err().0.contains("priority"));
        let levels = crate::live::Priorities {
            levels: 3,
            default: 3,
        };
        assert_eq!(levels.level(None), Ok(3));
        assert_eq!(levels.level(Some(1)), Ok(1));
        assert!(levels.level(Some(4)).unwrap_err().contains("1..=3"));
    }
}
