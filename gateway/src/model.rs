//! What a served model version looks like from outside: its inputs and
//! outputs (name, datatype, shape), whether it is batched, and the class
//! labels of the outputs rewritten from a ZipMap. Read from the ONNX graph,
//! narrowed by `[[input]]`/`[[output]]` in the model's config, with the
//! output shapes the warm-up probe saw.

pub use quiver_onnx::zipmap::{ClassLabels, Labels};

use crate::repository::TensorOverride;
use crate::tensor::DataType;

/// One input or output; -1 marks a dynamic dimension.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl serde::Serialize for DataType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A model version's interface.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub version: u64,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Most rows per batch; 0 when the model is not batched (its first
    /// dimension is fixed, an output does not follow the rows, or batching
    /// is turned off).
    pub max_batch_size: usize,
    /// Why the model is not batched; `None` when it is.
    pub unbatched: Option<String>,
    /// The labels of each output's columns, for outputs served as a tensor
    /// in place of a ZipMap's maps.
    pub class_labels: Vec<ClassLabels>,
}

impl ModelSpec {
    pub fn is_batched(&self) -> bool {
        self.max_batch_size > 0
    }

    /// The metadata's `parameters`: `{"classlabels": {output: [labels]}}`,
    /// `None` without class labels.
    pub fn parameters(&self) -> Option<serde_json::Value> {
        if self.class_labels.is_empty() {
            return None;
        }
        let labels: serde_json::Map<String, serde_json::Value> = self
            .class_labels
            .iter()
            .map(|c| {
                let list = match &c.labels {
                    Labels::Int64(v) => serde_json::json!(v),
                    Labels::Strings(v) => serde_json::json!(v),
                };
                (c.output.clone(), list)
            })
            .collect();
        Some(serde_json::json!({ "classlabels": labels }))
    }
}

/// Applies config overrides to the tensors read from the graph. An override
/// may pin a dynamic dimension but never change a datatype, a rank or a
/// fixed dimension, and must name a tensor the graph has.
pub fn apply_overrides(
    mut graph: Vec<TensorSpec>,
    overrides: &[TensorOverride],
    kind: &str,
) -> Result<Vec<TensorSpec>, String> {
    for o in overrides {
        let Some(spec) = graph.iter_mut().find(|t| t.name == o.name) else {
            let names: Vec<&str> = graph.iter().map(|t| t.name.as_str()).collect();
            return Err(format!(
                "config names {kind} '{}', but the model's {kind}s are {names:?}",
                o.name
            ));
        };
        if let Some(dt) = &o.datatype {
            let parsed = DataType::parse(dt)
                .ok_or_else(|| format!("{kind} '{}': unknown datatype '{dt}'", o.name))?;
            if parsed != spec.datatype {
                return Err(format!(
                    "{kind} '{}': config says {parsed} but the model has {}",
                    o.name, spec.datatype
                ));
            }
        }
        if let Some(shape) = &o.shape {
            let compatible = shape.len() == spec.shape.len()
                && shape
                    .iter()
                    .zip(&spec.shape)
                    .all(|(&c, &g)| g == -1 || c == g)
                && shape.iter().all(|&d| d == -1 || d > 0);
            if !compatible {
                return Err(format!(
                    "{kind} '{}': config shape {shape:?} does not fit the model's {:?}",
                    o.name, spec.shape
                ));
            }
            spec.shape.clone_from(shape);
        }
    }
    Ok(graph)
}

/// An FP32 tensor spec, for tests.
#[cfg(test)]
pub(crate) fn fp32_spec(name: &str, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype: DataType::Fp32,
        shape: shape.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::fp32_spec as spec;
    use super::*;

    #[test]
    fn overrides_pin_dynamic_dims_only() {
        let graph = vec![spec("x", &[-1, -1])];
        let o = |shape: Vec<i64>| TensorOverride {
            name: "x".into(),
            datatype: None,
            shape: Some(shape),
        };
        assert_eq!(
            apply_overrides(graph.clone(), &[o(vec![-1, 16])], "input").unwrap()[0].shape,
            vec![-1, 16]
        );
        assert!(apply_overrides(vec![spec("x", &[-1, 8])], &[o(vec![-1, 16])], "input").is_err());
        assert!(apply_overrides(graph.clone(), &[o(vec![-1])], "input").is_err());
        let wrong = TensorOverride {
            name: "y".into(),
            datatype: None,
            shape: None,
        };
        assert!(
            apply_overrides(graph.clone(), &[wrong], "input")
                .unwrap_err()
                .contains("\"x\"")
        );
        let dt = TensorOverride {
            name: "x".into(),
            datatype: Some("INT64".into()),
            shape: None,
        };
        assert!(
            apply_overrides(graph, &[dt], "input")
                .unwrap_err()
                .contains("INT64")
        );
    }
}
