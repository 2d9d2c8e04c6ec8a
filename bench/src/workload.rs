//! The request every load point sends: one inference request for a model,
//! built once (JSON or binary tensors) and sent as the same bytes each time,
//! so the harness spends no time encoding during the run.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use serde_json::{Value, json};

/// How tensors travel in the request body.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `"data": [...]` in the JSON body.
    Json,
    /// The binary tensor data extension: a JSON header, then raw
    /// little-endian bytes; outputs asked for as binary too.
    Binary,
    /// gRPC: `raw_input_contents`, little-endian bytes per input (what
    /// `tritonclient.grpc` sends).
    Raw,
    /// gRPC: typed `contents` (`fp32_contents`, ...).
    Typed,
}

impl Format {
    /// Whether the format travels over gRPC (else HTTP).
    pub fn is_grpc(self) -> bool {
        matches!(self, Format::Raw | Format::Typed)
    }
}

/// One model input: name, datatype and shape (`-1` for dynamic dimensions).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputSpec {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

impl InputSpec {
    /// Parses `NAME:DATATYPE:D1xD2x...`, e.g. `features:FP32:-1x16`.
    pub fn parse(s: &str) -> Result<InputSpec> {
        let mut parts = s.splitn(3, ':');
        let (Some(name), Some(datatype), Some(dims)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("input '{s}' is not NAME:DATATYPE:D1xD2...");
        };
        let shape = dims
            .split('x')
            .map(|d| d.trim().parse::<i64>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("dimensions of input '{s}'"))?;
        Ok(InputSpec {
            name: name.to_string(),
            datatype: datatype.to_ascii_uppercase(),
            shape,
        })
    }

    /// The inputs of a model from its OIP v2 metadata (`GET /v2/models/{m}`).
    pub fn from_metadata(metadata: &Value) -> Result<Vec<InputSpec>> {
        let inputs = metadata["inputs"]
            .as_array()
            .context("model metadata has no 'inputs'")?;
        inputs
            .iter()
            .map(|i| {
                Ok(InputSpec {
                    name: i["name"]
                        .as_str()
                        .context("input without a name")?
                        .to_string(),
                    datatype: i["datatype"]
                        .as_str()
                        .context("input without a datatype")?
                        .to_string(),
                    shape: i["shape"]
                        .as_array()
                        .context("input without a shape")?
                        .iter()
                        .map(|d| d.as_i64().context("shape dimension is not an integer"))
                        .collect::<Result<_>>()?,
                })
            })
            .collect()
    }
}

/// A ready-to-send request.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub body: Bytes,
    /// `Inference-Header-Content-Length` for binary bodies.
    pub header_len: Option<usize>,
    /// Rows per request (the first dimension), for rows/s figures.
    pub rows: u64,
}

/// Builds the request for `model` (optionally a pinned `version`) with
/// `rows` rows: dynamic dimensions become `rows` in first position and 1
/// elsewhere. Values are a fixed pseudo-random pattern in [-1, 1).
pub fn build(
    model: &str,
    version: Option<&str>,
    inputs: &[InputSpec],
    rows: u64,
    format: Format,
) -> Result<Request> {
    let path = match version {
        Some(v) => format!("/v2/models/{model}/versions/{v}/infer"),
        None => format!("/v2/models/{model}/infer"),
    };
    let mut json_inputs = Vec::new();
    let mut raw = Vec::new();
    for (k, input) in inputs.iter().enumerate() {
        let (shape, count) = concrete_shape(&input.shape, rows);
        let values: Vec<f64> = (0..count).map(|i| pattern(k, i)).collect();
        let mut entry = json!({"name": input.name, "shape": shape, "datatype": input.datatype});
        match format {
            Format::Json => entry["data"] = json_values(&input.datatype, &values)?,
            Format::Raw | Format::Typed => {
                bail!("{format:?} is a gRPC format; HTTP bodies are json or binary")
            }
            Format::Binary => {
                let before = raw.len();
                encode_binary(&input.datatype, &values, &mut raw)?;
                entry["parameters"] = json!({"binary_data_size": raw.len() - before});
            }
        }
        json_inputs.push(entry);
    }
    let mut head = json!({"inputs": json_inputs});
    if format == Format::Binary {
        head["parameters"] = json!({"binary_data_output": true});
    }
    let mut body = serde_json::to_vec(&head)?;
    let header_len = (format == Format::Binary).then_some(body.len());
    body.extend_from_slice(&raw);
    Ok(Request {
        path,
        body: Bytes::from(body),
        header_len,
        rows,
    })
}

/// A model's shape with its dynamic dimensions filled in: `rows` for the
/// first, 1 for any other; and the element count.
pub fn concrete_shape(shape: &[i64], rows: u64) -> (Vec<i64>, usize) {
    let shape: Vec<i64> = shape
        .iter()
        .enumerate()
        .map(|(d, &n)| match n {
            n if n >= 0 => n,
            _ if d == 0 => rows as i64,
            _ => 1,
        })
        .collect();
    let count = shape.iter().product::<i64>().max(0) as usize;
    (shape, count)
}

/// Deterministic values in [-1, 1), different per input.
fn pattern(input: usize, i: usize) -> f64 {
    let x = (i as u64 + 1)
        .wrapping_mul(2_654_435_761)
        .wrapping_add(input as u64 * 97);
    (x % 2_000) as f64 / 1_000.0 - 1.0
}

fn json_values(datatype: &str, values: &[f64]) -> Result<Value> {
    Ok(match datatype {
        "FP16" | "FP32" | "FP64" => json!(values),
        "BOOL" => json!(values.iter().map(|v| *v > 0.0).collect::<Vec<_>>()),
        t if is_int(t) => json!(values.iter().map(|v| int_value(t, *v)).collect::<Vec<_>>()),
        other => bail!("the harness does not generate {other} inputs"),
    })
}

fn is_int(datatype: &str) -> bool {
    datatype.starts_with("INT") || datatype.starts_with("UINT")
}

/// Small non-negative integers for unsigned types, small signed ones otherwise.
fn int_value(datatype: &str, v: f64) -> i64 {
    let n = (v * 10.0) as i64;
    if datatype.starts_with('U') {
        n.abs()
    } else {
        n
    }
}

fn encode_binary(datatype: &str, values: &[f64], out: &mut Vec<u8>) -> Result<()> {
    for &v in values {
        match datatype {
            "FP32" => out.extend_from_slice(&(v as f32).to_le_bytes()),
            "FP64" => out.extend_from_slice(&v.to_le_bytes()),
            "INT64" => out.extend_from_slice(&int_value(datatype, v).to_le_bytes()),
            "INT32" => out.extend_from_slice(&(int_value(datatype, v) as i32).to_le_bytes()),
            "BOOL" => out.push(u8::from(v > 0.0)),
            other => bail!("the harness does not generate binary {other} inputs"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_gateway::protocol::parse_infer_request;
    use quiver_gateway::tensor::TensorData;

    fn mlp_input() -> Vec<InputSpec> {
        vec![InputSpec::parse("features:FP32:-1x16").unwrap()]
    }

    #[test]
    fn input_specs_parse() {
        let s = InputSpec::parse("x:fp32:-1x3x4").unwrap();
        assert_eq!(s.datatype, "FP32");
        assert_eq!(s.shape, vec![-1, 3, 4]);
        assert!(InputSpec::parse("x:FP32").is_err());
        assert!(InputSpec::parse("x:FP32:1xq").is_err());
    }

    #[test]
    fn inputs_come_from_metadata() {
        let meta = json!({"name": "mlp", "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}]});
        assert_eq!(InputSpec::from_metadata(&meta).unwrap(), mlp_input());
        assert!(InputSpec::from_metadata(&json!({})).is_err());
    }

    /// Both formats decode, with the gateway's own decoder, to the same tensor.
    #[test]
    fn json_and_binary_bodies_carry_the_same_tensor() {
        let mut seen = Vec::new();
        for format in [Format::Json, Format::Binary] {
            let r = build("mlp", None, &mlp_input(), 3, format).unwrap();
            assert_eq!(r.path, "/v2/models/mlp/infer");
            let req = parse_infer_request(&r.body, r.header_len).unwrap();
            assert_eq!(req.inputs[0].shape, vec![3, 16]);
            let TensorData::Fp32(v) = &req.inputs[0].data else {
                panic!("not FP32");
            };
            assert_eq!(v.len(), 48);
            assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
            assert_eq!(req.binary_output, format == Format::Binary);
            seen.push(v.clone());
        }
        assert_eq!(seen[0], seen[1]);
    }

    #[test]
    fn pinned_versions_use_the_versioned_path() {
        let r = build("mlp", Some("1"), &mlp_input(), 1, Format::Json).unwrap();
        assert_eq!(r.path, "/v2/models/mlp/versions/1/infer");
    }
}
