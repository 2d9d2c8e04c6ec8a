//! The ONNX writer: [`proto`] (from `quiver-onnx`, shared with the
//! gateway) holds the protobuf messages, [`GraphBuilder`]
//! assembles a graph from them and encodes a model: opset 17 (plus
//! `ai.onnx.ml` 3 when a tree ensemble is used), IR version 8 (what ONNX
//! Runtime 1.31 and the gateway accept), one named dynamic batch dimension.
//! [`Interface`] carries the served model's tensor names, so a retrained
//! version is a drop-in replacement for clients.

pub use quiver_onnx::proto;

use prost::Message;
use serde::{Deserialize, Serialize};

use proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TensorTypeProto, TypeProto,
    ValueInfoProto,
};

pub const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 17;
pub const ML_DOMAIN: &str = "ai.onnx.ml";
pub const ML_OPSET: i64 = 3;
/// The name of the dynamic first dimension of every input and output.
pub const BATCH_DIM: &str = "batch";

/// What one graph output holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// FP32 `[batch, classes]`, rows sum to 1.
    Probabilities,
    /// INT64 `[batch]`, the most likely class.
    Label,
    /// FP32 `[batch, 1]`, a regression prediction.
    Value,
}

/// The names a served model's clients use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    pub kind: OutputKind,
}

/// The exported graph's interface: one FP32 `[batch, features]` input and
/// the outputs in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub input: String,
    pub outputs: Vec<OutputSpec>,
}

impl Interface {
    /// The interface as the manifest declares it.
    pub fn tensor_decls(
        &self,
        features: usize,
        classes: usize,
    ) -> (
        Vec<quiver_contract::manifest::TensorDecl>,
        Vec<quiver_contract::manifest::TensorDecl>,
    ) {
        use quiver_contract::manifest::TensorDecl;
        let inputs = vec![TensorDecl {
            name: self.input.clone(),
            datatype: "FP32".into(),
            shape: vec![-1, features as i64],
        }];
        let outputs = self
            .outputs
            .iter()
            .map(|o| {
                let (datatype, shape) = match o.kind {
                    OutputKind::Probabilities => ("FP32", vec![-1, classes as i64]),
                    OutputKind::Label => ("INT64", vec![-1]),
                    OutputKind::Value => ("FP32", vec![-1, 1]),
                };
                TensorDecl {
                    name: o.name.clone(),
                    datatype: datatype.into(),
                    shape,
                }
            })
            .collect();
        (inputs, outputs)
    }
}

/// A dimension of a declared input or output.
#[derive(Debug, Clone, Copy)]
pub enum Dim {
    Batch,
    Fixed(usize),
}

/// Builds one graph; node and initializer names are the caller's.
#[derive(Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    uses_ml: bool,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: GraphProto {
                name: Some(name.to_string()),
                ..GraphProto::default()
            },
            uses_ml: false,
        }
    }

    pub fn input(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.graph.input.push(value_info(name, elem_type, dims));
    }

    pub fn output(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.graph.output.push(value_info(name, elem_type, dims));
    }

    /// An FP32 initializer; returns its name.
    pub fn constant_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(name, dims, proto::FLOAT, raw)
    }

    /// An INT64 initializer; returns its name.
    pub fn constant_i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(name, dims, proto::INT64, raw)
    }

    fn push_initializer(&mut self, name: &str, dims: &[usize], ty: i32, raw: Vec<u8>) -> String {
        self.graph.initializer.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(ty),
            name: Some(name.to_string()),
            raw_data: Some(raw),
        });
        name.to_string()
    }

    /// A node of the default (`ai.onnx`) domain.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) {
        self.push_node(op, None, inputs, outputs, attributes);
    }

    /// A node of the `ai.onnx.ml` domain.
    pub fn ml_node(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) {
        self.uses_ml = true;
        self.push_node(op, Some(ML_DOMAIN), inputs, outputs, attributes);
    }

    fn push_node(
        &mut self,
        op: &str,
        domain: Option<&str>,
        inputs: &[&str],
        outputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) {
        let index = self.graph.node.len();
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(format!("{op}_{index}")),
            op_type: Some(op.to_string()),
            attribute,
            domain: domain.map(str::to_string),
        });
    }

    /// Encodes the model with `metadata` in `metadata_props`.
    pub fn finish(self, model_version: u64, metadata: &[(String, String)]) -> Vec<u8> {
        let mut opset_import = vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }];
        if self.uses_ml {
            opset_import.push(OperatorSetIdProto {
                domain: Some(ML_DOMAIN.to_string()),
                version: Some(ML_OPSET),
            });
        }
        let model = ModelProto {
            ir_version: Some(IR_VERSION),
            producer_name: Some("quiver-trainer".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            domain: Some("ai.quiver".into()),
            model_version: Some(i64::try_from(model_version).unwrap_or(i64::MAX)),
            doc_string: None,
            graph: Some(self.graph),
            opset_import,
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k.clone()),
                    value: Some(v.clone()),
                })
                .collect(),
        };
        model.encode_to_vec()
    }
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Dim::Batch => Dimension {
                dim_value: None,
                dim_param: Some(BATCH_DIM.into()),
            },
            Dim::Fixed(n) => Dimension {
                dim_value: Some(*n as i64),
                dim_param: None,
            },
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: Some(elem_type),
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

fn attribute(name: &str, ty: i32) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(ty),
        ..AttributeProto::default()
    }
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: Some(v),
        ..attribute(name, proto::ATTR_INT)
    }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: Some(v),
        ..attribute(name, proto::ATTR_FLOAT)
    }
}

pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        s: Some(v.as_bytes().to_vec()),
        ..attribute(name, proto::ATTR_STRING)
    }
}

pub fn attr_ints(name: &str, v: Vec<i64>) -> AttributeProto {
    AttributeProto {
        ints: v,
        ..attribute(name, proto::ATTR_INTS)
    }
}

pub fn attr_floats(name: &str, v: Vec<f32>) -> AttributeProto {
    AttributeProto {
        floats: v,
        ..attribute(name, proto::ATTR_FLOATS)
    }
}

pub fn attr_strings(name: &str, v: &[&str]) -> AttributeProto {
    AttributeProto {
        strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..attribute(name, proto::ATTR_STRINGS)
    }
}
