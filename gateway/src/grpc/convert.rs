//! Protobuf messages ↔ the transport-free request and tensors: typed
//! `contents` (one repeated field per family of datatypes) and raw
//! contents (the same little-endian layout as the HTTP binary extension).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use super::proto::model_infer_request::InferInputTensor;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
    infer_parameter::ParameterChoice,
};
use crate::error::ApiError;
use crate::protocol::{InferRequest, RequestedOutput};
use crate::tensor::{self, DataType, Tensor, TensorData, binary};

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

/// `name` and `version` of a request: an empty version is none.
pub fn version(v: &str) -> Result<Option<u64>, ApiError> {
    if v.is_empty() {
        return Ok(None);
    }
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(bad(format!(
            "model version '{v}' is not a positive integer"
        ))),
    }
}

/// A non-negative integer parameter, if the request has it; `unit` names
/// what the number counts, for the error.
fn u64_param(
    params: &HashMap<String, InferParameter>,
    name: &str,
    unit: &str,
) -> Result<Option<u64>, ApiError> {
    let Some(p) = params.get(name) else {
        return Ok(None);
    };
    match &p.parameter_choice {
        Some(ParameterChoice::Int64Param(n)) => u64::try_from(*n).ok(),
        Some(ParameterChoice::Uint64Param(n)) => Some(*n),
        _ => None,
    }
    .map(Some)
    .ok_or_else(|| {
        bad(format!(
            "parameter '{name}' must be a non-negative integer{unit}"
        ))
    })
}

/// The request's `timeout` parameter (microseconds, as Triton's clients
/// send it).
fn timeout(params: &HashMap<String, InferParameter>) -> Result<Option<Duration>, ApiError> {
    let us = u64_param(params, "timeout", " (microseconds)")?;
    Ok(us.filter(|&us| us > 0).map(Duration::from_micros))
}

/// The request's `priority` parameter (1 the highest; 0 or absent: the
/// model's default).
fn priority(params: &HashMap<String, InferParameter>) -> Result<Option<u32>, ApiError> {
    crate::protocol::priority(u64_param(params, "priority", "")?).map_err(|e| bad(e.0))
}

/// Decodes a `ModelInferRequest` into the request every door hands to
/// the inference path. Raw contents, when present, must cover every input.
pub fn infer_request(req: ModelInferRequest) -> Result<InferRequest, ApiError> {
    let ModelInferRequest {
        id,
        parameters,
        inputs,
        outputs,
        raw_input_contents,
        ..
    } = req;
    let raw = !raw_input_contents.is_empty();
    if raw && raw_input_contents.len() != inputs.len() {
        return Err(bad(format!(
            "raw_input_contents has {} entries for {} inputs; give one per input, in order",
            raw_input_contents.len(),
            inputs.len()
        )));
    }
    let mut raws = raw_input_contents.into_iter();
    let mut tensors = Vec::with_capacity(inputs.len());
    for input in inputs {
        let whose = format!("input '{}'", input.name);
        let datatype = DataType::parse(&input.datatype)
            .ok_or_else(|| bad(format!("{whose} has unknown datatype '{}'", input.datatype)))?;
        let count = tensor::element_count(&input.shape)
            .ok_or_else(|| bad(format!("{whose} has an invalid shape {:?}", input.shape)))?;
        let data = match (raws.next(), &input.contents) {
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "{whose} has typed contents while the request sends raw_input_contents; use one or the other"
                )));
            }
            (Some(bytes), None) => binary::decode(datatype, count, &bytes).map_err(|e| {
                bad(format!(
                    "{whose}: raw contents of {} bytes do not fit {datatype} {:?}: {e}",
                    bytes.len(),
                    input.shape
                ))
            })?,
            (None, Some(contents)) => typed(&whose, datatype, contents, count)?,
            (None, None) => return Err(bad(format!("{whose} has no contents"))),
        };
        let InferInputTensor { name, shape, .. } = input;
        tensors.push(Tensor { name, shape, data });
    }
    Ok(InferRequest {
        id: (!id.is_empty()).then_some(id),
        inputs: tensors,
        outputs: outputs
            .into_iter()
            .map(|o| RequestedOutput {
                name: o.name,
                binary: None,
            })
            .collect(),
        binary_output: false,
        timeout: timeout(&parameters)?,
        priority: priority(&parameters)?,
    })
}

/// Narrows typed contents to the datatype's element type, checking range
/// and count.
fn typed(
    whose: &str,
    dt: DataType,
    c: &InferTensorContents,
    count: usize,
) -> Result<TensorData, ApiError> {
    fn narrow<A: Copy + std::fmt::Display, B: TryFrom<A>>(
        whose: &str,
        dt: DataType,
        v: &[A],
    ) -> Result<Vec<B>, ApiError> {
        v.iter()
            .map(|&x| {
                B::try_from(x)
                    .map_err(|_| bad(format!("{whose}: value {x} is out of range for {dt}")))
            })
            .collect()
    }
    let (field, data) = match dt {
        DataType::Bool => ("bool_contents", TensorData::Bool(c.bool_contents.clone())),
        DataType::Int8 => (
            "int_contents",
            TensorData::Int8(narrow(whose, dt, &c.int_contents)?),
        ),
        DataType::Int16 => (
            "int_contents",
            TensorData::Int16(narrow(whose, dt, &c.int_contents)?),
        ),
        DataType::Int32 => ("int_contents", TensorData::Int32(c.int_contents.clone())),
        DataType::Int64 => (
            "int64_contents",
            TensorData::Int64(c.int64_contents.clone()),
        ),
        DataType::Uint8 => (
            "uint_contents",
            TensorData::Uint8(narrow(whose, dt, &c.uint_contents)?),
        ),
        DataType::Uint16 => (
            "uint_contents",
            TensorData::Uint16(narrow(whose, dt, &c.uint_contents)?),
        ),
        DataType::Uint32 => ("uint_contents", TensorData::Uint32(c.uint_contents.clone())),
        DataType::Uint64 => (
            "uint64_contents",
            TensorData::Uint64(c.uint64_contents.clone()),
        ),
        DataType::Fp32 => ("fp32_contents", TensorData::Fp32(c.fp32_contents.clone())),
        DataType::Fp64 => ("fp64_contents", TensorData::Fp64(c.fp64_contents.clone())),
        DataType::Bytes => (
            "bytes_contents",
            TensorData::Bytes(c.bytes_contents.clone()),
        ),
        DataType::Fp16 => {
            return Err(bad(format!(
                "{whose}: FP16 has no typed contents in the protocol; send it in raw_input_contents"
            )));
        }
    };
    if data.len() != count {
        return Err(bad(format!(
            "{whose} is {dt} with {count} elements by its shape, but {field} holds {}",
            data.len()
        )));
    }
    Ok(data)
}

/// Typed contents for an output; `None` for FP16, which has no field.
fn contents(data: &TensorData) -> Option<InferTensorContents> {
    let mut c = InferTensorContents::default();
    match data {
        TensorData::Bool(v) => c.bool_contents = v.clone(),
        TensorData::Int8(v) => c.int_contents = v.iter().map(|&x| i32::from(x)).collect(),
        TensorData::Int16(v) => c.int_contents = v.iter().map(|&x| i32::from(x)).collect(),
        TensorData::Int32(v) => c.int_contents = v.clone(),
        TensorData::Int64(v) => c.int64_contents = v.clone(),
        TensorData::Uint8(v) => c.uint_contents = v.iter().map(|&x| u32::from(x)).collect(),
        TensorData::Uint16(v) => c.uint_contents = v.iter().map(|&x| u32::from(x)).collect(),
        TensorData::Uint32(v) => c.uint_contents = v.clone(),
        TensorData::Uint64(v) => c.uint64_contents = v.clone(),
        TensorData::Fp32(v) => c.fp32_contents = v.clone(),
        TensorData::Fp64(v) => c.fp64_contents = v.clone(),
        TensorData::Bytes(v) => c.bytes_contents = v.clone(),
        TensorData::Fp16(_) => return None,
    }
    Some(c)
}

/// The response for `outputs`: raw contents when the request sent raw ones
/// (as Triton's clients expect) or when an output is FP16; typed otherwise.
pub fn infer_response(
    model: &str,
    version: u64,
    id: Option<&str>,
    outputs: &[&Tensor],
    raw: bool,
) -> ModelInferResponse {
    let raw = raw || outputs.iter().any(|t| t.datatype() == DataType::Fp16);
    let mut response = ModelInferResponse {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id: id.unwrap_or_default().to_string(),
        ..Default::default()
    };
    for t in outputs {
        response.outputs.push(InferOutputTensor {
            name: t.name.clone(),
            datatype: t.datatype().as_str().to_string(),
            shape: t.shape.clone(),
            parameters: HashMap::new(),
            contents: if raw { None } else { contents(&t.data) },
        });
        if raw {
            let mut buf = Vec::with_capacity(binary::encoded_len(&t.data));
            binary::encode(&t.data, &mut buf);
            response.raw_output_contents.push(Bytes::from(buf));
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::grpc::proto::model_infer_request::InferInputTensor;

    fn input(
        name: &str,
        dt: &str,
        shape: Vec<i64>,
        c: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: dt.into(),
            shape,
            parameters: HashMap::new(),
            contents: c,
        }
    }

    #[test]
    fn typed_contents_decode_by_datatype_and_check_count_and_range() {
        let c = InferTensorContents {
            int_contents: vec![1, -2, 3],
            ..Default::default()
        };
        let req = ModelInferRequest {
            inputs: vec![input("x", "INT8", vec![1, 3], Some(c.clone()))],
            ..Default::default()
        };
        let r = infer_request(req).unwrap();
        assert_eq!(r.inputs[0].data, TensorData::Int8(vec![1, -2, 3]));

        let req = ModelInferRequest {
            inputs: vec![input("x", "INT32", vec![2, 2], Some(c))],
            ..Default::default()
        };
        let e = infer_request(req).unwrap_err().to_string();
        assert!(
            e.contains("4 elements") && e.contains("int_contents holds 3"),
            "{e}"
        );

        let big = InferTensorContents {
            uint_contents: vec![300],
            ..Default::default()
        };
        let req = ModelInferRequest {
            inputs: vec![input("x", "UINT8", vec![1], Some(big))],
            ..Default::default()
        };
        let e = infer_request(req).unwrap_err().to_string();
        assert!(e.contains("out of range for UINT8"), "{e}");
    }

    #[test]
    fn raw_contents_must_match_inputs_and_sizes() {
        let req = ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![1, 2], None)],
            raw_input_contents: vec![Bytes::from_static(&[0; 7])],
            ..Default::default()
        };
        let e = infer_request(req).unwrap_err().to_string();
        assert!(e.contains("raw contents of 7 bytes"), "{e}");

        let mut fp16 = Vec::new();
        fp16.extend_from_slice(&f16::from_f32(1.5).to_le_bytes());
        let req = ModelInferRequest {
            inputs: vec![input("h", "FP16", vec![1], None)],
            raw_input_contents: vec![Bytes::from(fp16)],
            ..Default::default()
        };
        let r = infer_request(req).unwrap();
        assert_eq!(r.inputs[0].data, TensorData::Fp16(vec![f16::from_f32(1.5)]));

        let req = ModelInferRequest {
            inputs: vec![
                input("x", "FP32", vec![1], None),
                input("y", "FP32", vec![1], None),
            ],
            raw_input_contents: vec![Bytes::from_static(&[0; 4])],
            ..Default::default()
        };
        assert!(
            infer_request(req)
                .unwrap_err()
                .to_string()
                .contains("1 entries for 2 inputs")
        );
    }

    #[test]
    fn responses_are_raw_for_raw_requests_and_fp16() {
        let t = Tensor {
            name: "y".into(),
            shape: vec![1, 2],
            data: TensorData::Fp32(vec![1.0, 2.0]),
        };
        let typed = infer_response("m", 3, Some("r1"), &[&t], false);
        assert_eq!(
            typed.outputs[0].contents.as_ref().unwrap().fp32_contents,
            vec![1.0, 2.0]
        );
        assert!(typed.raw_output_contents.is_empty());
        assert_eq!(
            (typed.model_version.as_str(), typed.id.as_str()),
            ("3", "r1")
        );
        let raw = infer_response("m", 3, None, &[&t], true);
        assert!(raw.outputs[0].contents.is_none());
        assert_eq!(raw.raw_output_contents[0].len(), 8);
        let h = Tensor {
            name: "h".into(),
            shape: vec![1],
            data: TensorData::Fp16(vec![f16::from_f32(0.5)]),
        };
        assert_eq!(
            infer_response("m", 1, None, &[&h], false)
                .raw_output_contents
                .len(),
            1
        );
    }
}
