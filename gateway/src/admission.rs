//! Checks a decoded request against the model version's interface before
//! it may queue: every input present once and known, datatypes and shapes
//! as declared, rows within the batch limit, outputs that exist. Inputs
//! come out in the model's order, ready to concatenate.

use crate::error::ApiError;
use crate::model::ModelSpec;
use crate::protocol::RequestedOutput;
use crate::tensor::{DataType, Tensor, TensorData};

#[derive(Debug)]
pub struct Admitted {
    /// In the model's input order.
    pub inputs: Vec<Tensor>,
    /// Rows along the batch dimension (1 for an unbatched model).
    pub rows: usize,
}

pub fn admit(spec: &ModelSpec, mut inputs: Vec<Tensor>) -> Result<Admitted, ApiError> {
    let bad = |m: String| Err(ApiError::BadRequest(m));
    for (i, t) in inputs.iter().enumerate() {
        if !spec.inputs.iter().any(|s| s.name == t.name) {
            let names: Vec<&str> = spec.inputs.iter().map(|s| s.name.as_str()).collect();
            return bad(format!(
                "unknown input '{}'; model '{}' takes {names:?}",
                t.name, spec.name
            ));
        }
        if inputs[..i].iter().any(|o| o.name == t.name) {
            return bad(format!("input '{}' is given more than once", t.name));
        }
    }
    let mut ordered = Vec::with_capacity(spec.inputs.len());
    let mut rows: Option<usize> = None;
    for s in &spec.inputs {
        let Some(pos) = inputs.iter().position(|t| t.name == s.name) else {
            return bad(format!(
                "missing input '{}' ({} {:?})",
                s.name, s.datatype, s.shape
            ));
        };
        let t = inputs.swap_remove(pos);
        if t.datatype() != s.datatype {
            return bad(format!(
                "input '{}' has datatype {}, model expects {}",
                t.name,
                t.datatype(),
                s.datatype
            ));
        }
        let fits = t.shape.len() == s.shape.len()
            && t.shape
                .iter()
                .zip(&s.shape)
                .all(|(&got, &want)| want == -1 || got == want);
        if !fits {
            return bad(format!(
                "input '{}' has shape {:?}, model expects {:?} (-1: any size)",
                t.name, t.shape, s.shape
            ));
        }
        if spec.is_batched() {
            let r = usize::try_from(t.shape[0]).unwrap_or(0);
            if r == 0 {
                return bad(format!(
                    "input '{}' has no rows (shape {:?})",
                    t.name, t.shape
                ));
            }
            if r > spec.max_batch_size {
                return bad(format!(
                    "input '{}' has {r} rows, more than the model's max_batch_size {}",
                    t.name, spec.max_batch_size
                ));
            }
            match rows {
                Some(prev) if prev != r => {
                    return bad(format!(
                        "input '{}' has {r} rows but an earlier input has {prev}",
                        t.name
                    ));
                }
                _ => rows = Some(r),
            }
        }
        if t.datatype() == DataType::Bytes {
            check_text(&t)?;
        }
        ordered.push(t);
    }
    Ok(Admitted {
        inputs: ordered,
        rows: rows.unwrap_or(1),
    })
}

/// ONNX string tensors are text: BYTES elements must be UTF-8 without NUL
/// (ONNX Runtime's C API passes them as C strings).
fn check_text(t: &Tensor) -> Result<(), ApiError> {
    let TensorData::Bytes(elements) = &t.data else {
        return Ok(());
    };
    for (i, e) in elements.iter().enumerate() {
        if std::str::from_utf8(e).is_err() || e.contains(&0) {
            return Err(ApiError::BadRequest(format!(
                "input '{}' element {i} is not UTF-8 text without NUL bytes, which ONNX string tensors require",
                t.name
            )));
        }
    }
    Ok(())
}

pub fn check_outputs(spec: &ModelSpec, requested: &[RequestedOutput]) -> Result<(), ApiError> {
    for r in requested {
        if !spec.outputs.iter().any(|o| o.name == r.name) {
            let names: Vec<&str> = spec.outputs.iter().map(|s| s.name.as_str()).collect();
            return Err(ApiError::BadRequest(format!(
                "unknown output '{}'; model '{}' has {names:?}",
                r.name, spec.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TensorSpec;

    fn spec(max_batch_size: usize) -> ModelSpec {
        let t = |n: &str, dt, shape: &[i64]| TensorSpec {
            name: n.into(),
            datatype: dt,
            shape: shape.to_vec(),
        };
        ModelSpec {
            name: "m".into(),
            version: 1,
            inputs: vec![
                t("a", DataType::Fp32, &[-1, 2]),
                t("b", DataType::Bytes, &[-1]),
            ],
            outputs: vec![t("y", DataType::Fp32, &[-1])],
            max_batch_size,
            unbatched: None,
            class_labels: Vec::new(),
        }
    }

    fn a(rows: i64) -> Tensor {
        Tensor {
            name: "a".into(),
            shape: vec![rows, 2],
            data: TensorData::Fp32(vec![0.0; (rows * 2) as usize]),
        }
    }

    fn b(rows: usize) -> Tensor {
        Tensor {
            name: "b".into(),
            shape: vec![rows as i64],
            data: TensorData::Bytes(vec![b"x".to_vec(); rows]),
        }
    }

    #[test]
    fn orders_inputs_and_counts_rows() {
        let ok = admit(&spec(8), vec![b(3), a(3)]).unwrap();
        assert_eq!(ok.rows, 3);
        assert_eq!(ok.inputs[0].name, "a");
    }

    #[test]
    fn rejects_with_a_named_reason() {
        let cases: Vec<(Vec<Tensor>, &str)> = vec![
            (vec![a(1)], "missing input 'b'"),
            (
                vec![
                    a(1),
                    b(1),
                    Tensor {
                        name: "c".into(),
                        ..a(1)
                    },
                ],
                "unknown input 'c'",
            ),
            (vec![a(1), a(1), b(1)], "more than once"),
            (vec![a(2), b(1)], "has 1 rows but an earlier input has 2"),
            (vec![a(9), b(9)], "more than the model's max_batch_size 8"),
            (
                vec![
                    Tensor {
                        shape: vec![1, 3],
                        data: TensorData::Fp32(vec![0.0; 3]),
                        ..a(1)
                    },
                    b(1),
                ],
                "model expects [-1, 2]",
            ),
            (
                vec![
                    Tensor {
                        data: TensorData::Fp64(vec![0.0; 2]),
                        ..a(1)
                    },
                    b(1),
                ],
                "datatype FP64, model expects FP32",
            ),
            (
                vec![
                    a(1),
                    Tensor {
                        data: TensorData::Bytes(vec![vec![0xff]]),
                        ..b(1)
                    },
                ],
                "not UTF-8",
            ),
        ];
        for (inputs, needle) in cases {
            let err = admit(&spec(8), inputs).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
            assert_eq!(err.status_and_outcome().0, 400);
        }
    }

    #[test]
    fn unknown_outputs_are_rejected() {
        let r = |n: &str| RequestedOutput {
            name: n.into(),
            binary: None,
        };
        assert!(check_outputs(&spec(8), &[r("y")]).is_ok());
        assert!(
            check_outputs(&spec(8), &[r("z")])
                .unwrap_err()
                .to_string()
                .contains("unknown output 'z'")
        );
    }
}
