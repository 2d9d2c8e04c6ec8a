//! ZipMap outputs served as tensors. Classifiers exported by skl2onnx and
//! onnxmltools end, by default, in `ai.onnx.ml.ZipMap`: it turns the
//! `[batch, classes]` probabilities into a sequence of maps, one
//! `{label: probability}` per row, which no tensor protocol carries.
//! [`unzip`] rewrites the graph, in memory, so that the same output is the
//! probabilities tensor itself: the ZipMap node becomes an `Identity` (a
//! `Gather` putting the columns in key order when the labels are not
//! sorted already), the output is declared FLOAT `[batch, classes]`, and
//! the class labels come back for the model's metadata. Every other byte
//! of the model is copied as it was.

use prost::Message;

use crate::proto::{
    self, AttributeProto, Dimension, NodeProto, TensorProto, TensorShapeProto, TensorTypeProto,
    TypeProto, ValueInfoProto,
};
use crate::wire::{self, Field, WireError};

// Field numbers of `onnx-ml.proto` read here.
const MODEL_GRAPH: u32 = 7;
const GRAPH_NODE: u32 = 1;
const GRAPH_OUTPUT: u32 = 12;
const GRAPH_VALUE_INFO: u32 = 13;
const NODE_INPUT: u32 = 1;
const NODE_OUTPUT: u32 = 2;
const NODE_OP_TYPE: u32 = 4;
const NODE_DOMAIN: u32 = 7;
const VALUE_INFO_NAME: u32 = 1;

const ML_DOMAIN: &str = "ai.onnx.ml";

/// A model that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the ONNX model: {0}")]
pub struct UnzipError(String);

impl From<WireError> for UnzipError {
    fn from(e: WireError) -> Self {
        UnzipError(e.to_string())
    }
}

/// A ZipMap's class labels, one per column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Labels {
    Int64(Vec<i64>),
    Strings(Vec<String>),
}

impl Labels {
    pub fn len(&self) -> usize {
        match self {
            Labels::Int64(v) => v.len(),
            Labels::Strings(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The positions of the labels in key order (strings by bytes, as ONNX
    /// Runtime's maps order them), or `None` when two labels are equal.
    fn key_order(&self) -> Option<Vec<usize>> {
        fn order<T: Ord>(v: &[T]) -> Option<Vec<usize>> {
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by(|&a, &b| v[a].cmp(&v[b]));
            let distinct = idx.windows(2).all(|w| v[w[0]] != v[w[1]]);
            distinct.then_some(idx)
        }
        match self {
            Labels::Int64(v) => order(v),
            Labels::Strings(v) => order(v),
        }
    }

    fn permuted(&self, order: &[usize]) -> Labels {
        match self {
            Labels::Int64(v) => Labels::Int64(order.iter().map(|&i| v[i]).collect()),
            Labels::Strings(v) => Labels::Strings(order.iter().map(|&i| v[i].clone()).collect()),
        }
    }
}

/// One rewritten output and the labels of its columns, in column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassLabels {
    pub output: String,
    pub labels: Labels,
}

/// What [`unzip`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unzipped {
    /// The rewritten model; `None` when nothing was rewritten.
    pub model: Option<Vec<u8>>,
    /// The outputs that are now tensors.
    pub outputs: Vec<ClassLabels>,
    /// Graph outputs fed by a ZipMap that stay maps, and why.
    pub kept: Vec<String>,
}

/// Rewrites every ZipMap that feeds a graph output (and nothing else)
/// into the tensor it zips.
pub fn unzip(model: &[u8]) -> Result<Unzipped, UnzipError> {
    let top = wire::fields(model)?;
    let graphs: Vec<usize> = (0..top.len())
        .filter(|&i| top[i].tag == MODEL_GRAPH)
        .collect();
    let mut unzipped = Unzipped {
        model: None,
        outputs: Vec::new(),
        kept: Vec::new(),
    };
    let g = match graphs[..] {
        [] => return Ok(unzipped),
        [g] => g,
        _ => return Err(UnzipError("the graph is split over several fields".into())),
    };
    let graph = top[g]
        .payload
        .ok_or_else(|| UnzipError("the graph is not a message".into()))?;
    let Some(rewritten) = rewrite_graph(graph, &mut unzipped)? else {
        return Ok(unzipped);
    };
    let mut out = Vec::with_capacity(model.len() + 256);
    for (i, f) in top.iter().enumerate() {
        if i == g {
            wire::put(MODEL_GRAPH, &rewritten, &mut out);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    unzipped.model = Some(out);
    Ok(unzipped)
}

/// A node's names, read without decoding its attributes.
struct NodeView<'a> {
    op_type: &'a str,
    domain: &'a str,
    inputs: Vec<&'a str>,
    outputs: Vec<&'a str>,
}

fn node_view(node: &[u8]) -> Result<NodeView<'_>, WireError> {
    let mut v = NodeView {
        op_type: "",
        domain: "",
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    for f in wire::fields(node)? {
        match f.tag {
            NODE_INPUT => v.inputs.push(f.text()?),
            NODE_OUTPUT => v.outputs.push(f.text()?),
            NODE_OP_TYPE => v.op_type = f.text()?,
            NODE_DOMAIN => v.domain = f.text()?,
            _ => {}
        }
    }
    Ok(v)
}

fn value_info_name<'a>(f: &Field<'a>) -> Result<&'a str, WireError> {
    let bytes = f
        .payload
        .ok_or_else(|| WireError(format!("graph field {} is not a message", f.tag)))?;
    let mut name = "";
    for field in wire::fields(bytes)? {
        if field.tag == VALUE_INFO_NAME {
            name = field.text()?;
        }
    }
    Ok(name)
}

/// A ZipMap to replace: the node's field index, what it reads and writes.
struct Plan {
    field: usize,
    node: NodeProto,
    input: String,
    output: String,
    labels: Labels,
}

/// The graph with its ZipMaps replaced, or `None` when there is none to
/// replace.
fn rewrite_graph(graph: &[u8], found: &mut Unzipped) -> Result<Option<Vec<u8>>, UnzipError> {
    let fields = wire::fields(graph)?;
    let mut nodes = Vec::new();
    let mut graph_outputs = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        match f.tag {
            GRAPH_NODE => {
                let bytes = f
                    .payload
                    .ok_or_else(|| UnzipError("a node is not a message".into()))?;
                nodes.push((i, node_view(bytes)?));
            }
            GRAPH_OUTPUT => graph_outputs.push(value_info_name(f)?),
            _ => {}
        }
    }
    let mut plans = Vec::new();
    for (i, view) in &nodes {
        if view.op_type != "ZipMap" || view.domain != ML_DOMAIN {
            continue;
        }
        let ([input], [output]) = (&view.inputs[..], &view.outputs[..]) else {
            continue;
        };
        if !graph_outputs.contains(output) {
            continue;
        }
        let mut keep = |why: &str| found.kept.push(format!("output '{output}': {why}"));
        if nodes.iter().any(|(_, n)| n.inputs.contains(output)) {
            keep("another node reads the ZipMap's maps");
            continue;
        }
        let payload = fields[*i].payload.unwrap_or_default();
        let node = NodeProto::decode(payload).map_err(|e| UnzipError(e.to_string()))?;
        let Some(labels) = labels_of(&node) else {
            keep("the ZipMap has no class labels");
            continue;
        };
        if labels.is_empty() || labels.key_order().is_none() {
            keep("the ZipMap's class labels are empty or repeat");
            continue;
        }
        plans.push(Plan {
            field: *i,
            node,
            input: input.to_string(),
            output: output.to_string(),
            labels,
        });
    }
    if plans.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(graph.len() + 256 * plans.len());
    for (i, f) in fields.iter().enumerate() {
        if let Some(plan) = plans.iter().find(|p| p.field == i) {
            let (nodes, labels) = replacement(plan);
            for n in nodes {
                wire::put(GRAPH_NODE, &n.encode_to_vec(), &mut out);
            }
            found.outputs.push(ClassLabels {
                output: plan.output.clone(),
                labels,
            });
            continue;
        }
        if matches!(f.tag, GRAPH_OUTPUT | GRAPH_VALUE_INFO) {
            let name = value_info_name(f)?;
            if let Some(plan) = plans.iter().find(|p| p.output == name) {
                if f.tag == GRAPH_OUTPUT {
                    let info = probabilities_info(&plan.output, plan.labels.len());
                    wire::put(GRAPH_OUTPUT, &info.encode_to_vec(), &mut out);
                }
                // A value_info entry would still say "sequence of maps".
                continue;
            }
        }
        out.extend_from_slice(f.raw);
    }
    Ok(Some(out))
}

fn labels_of(node: &NodeProto) -> Option<Labels> {
    let attr = |name: &str| {
        node.attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
    };
    match (attr("classlabels_int64s"), attr("classlabels_strings")) {
        (Some(a), None) => Some(Labels::Int64(a.ints.clone())),
        (None, Some(a)) => a
            .strings
            .iter()
            .map(|s| String::from_utf8(s.clone()).ok())
            .collect::<Option<Vec<_>>>()
            .map(Labels::Strings),
        _ => None,
    }
}

/// The nodes that take the ZipMap's place, and the labels of the columns
/// they give.
fn replacement(plan: &Plan) -> (Vec<NodeProto>, Labels) {
    let name = plan.node.name.clone().unwrap_or_else(|| "ZipMap".into());
    let order = plan
        .labels
        .key_order()
        .unwrap_or_else(|| (0..plan.labels.len()).collect());
    let node = |op: &str, name: String, inputs: Vec<String>, output: String| NodeProto {
        input: inputs,
        output: vec![output],
        name: Some(name),
        op_type: Some(op.to_string()),
        ..NodeProto::default()
    };
    if order.iter().enumerate().all(|(i, &o)| i == o) {
        let identity = node(
            "Identity",
            name,
            vec![plan.input.clone()],
            plan.output.clone(),
        );
        return (vec![identity], plan.labels.clone());
    }
    let order_name = format!("{}_key_order", plan.output);
    let raw: Vec<u8> = order
        .iter()
        .flat_map(|&i| (i as i64).to_le_bytes())
        .collect();
    let constant = NodeProto {
        attribute: vec![AttributeProto {
            name: Some("value".into()),
            r#type: Some(proto::ATTR_TENSOR),
            t: Some(TensorProto {
                dims: vec![order.len() as i64],
                data_type: Some(proto::INT64),
                name: Some(order_name.clone()),
                raw_data: Some(raw),
            }),
            ..AttributeProto::default()
        }],
        ..node(
            "Constant",
            format!("{name}_key_order"),
            Vec::new(),
            order_name.clone(),
        )
    };
    let gather = NodeProto {
        attribute: vec![AttributeProto {
            name: Some("axis".into()),
            r#type: Some(proto::ATTR_INT),
            i: Some(1),
            ..AttributeProto::default()
        }],
        ..node(
            "Gather",
            name,
            vec![plan.input.clone(), order_name],
            plan.output.clone(),
        )
    };
    (vec![constant, gather], plan.labels.permuted(&order))
}

/// FLOAT `[batch, classes]`, the batch dimension unnamed.
fn probabilities_info(name: &str, classes: usize) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: Some(proto::FLOAT),
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension::default(),
                        Dimension {
                            dim_value: Some(classes as i64),
                            dim_param: None,
                        },
                    ],
                }),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{GraphProto, ModelProto};

    fn zipmap(input: &str, output: &str, labels: AttributeProto) -> NodeProto {
        NodeProto {
            input: vec![input.into()],
            output: vec![output.into()],
            name: Some("ZipMap".into()),
            op_type: Some("ZipMap".into()),
            domain: Some(ML_DOMAIN.into()),
            attribute: vec![labels],
        }
    }

    fn ints(v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: Some("classlabels_int64s".into()),
            r#type: Some(proto::ATTR_INTS),
            ints: v.to_vec(),
            ..AttributeProto::default()
        }
    }

    fn strings(v: &[&str]) -> AttributeProto {
        AttributeProto {
            name: Some("classlabels_strings".into()),
            r#type: Some(proto::ATTR_STRINGS),
            strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
            ..AttributeProto::default()
        }
    }

    fn named(name: &str) -> ValueInfoProto {
        ValueInfoProto {
            name: Some(name.into()),
            r#type: None,
        }
    }

    fn producer() -> NodeProto {
        NodeProto {
            input: vec!["X".into()],
            output: vec!["label".into(), "probabilities".into()],
            op_type: Some("TreeEnsembleClassifier".into()),
            domain: Some(ML_DOMAIN.into()),
            ..NodeProto::default()
        }
    }

    /// A classifier graph as skl2onnx writes it, plus `extra` graph bytes
    /// (fields these messages do not declare) after the outputs.
    fn model(nodes: Vec<NodeProto>, extra: &[u8]) -> Vec<u8> {
        let graph = GraphProto {
            node: nodes,
            name: Some("g".into()),
            input: vec![named("X")],
            output: vec![named("label"), named("output_probability")],
            ..GraphProto::default()
        };
        let mut graph = graph.encode_to_vec();
        graph.extend_from_slice(extra);
        let mut out = ModelProto {
            ir_version: Some(8),
            ..ModelProto::default()
        }
        .encode_to_vec();
        wire::put(MODEL_GRAPH, &graph, &mut out);
        out
    }

    fn graph_of(model: &[u8]) -> GraphProto {
        ModelProto::decode(model).unwrap().graph.unwrap()
    }

    /// An initializer with its values in `float_data` (field 4), which
    /// `proto::TensorProto` does not declare.
    fn float_data_initializer() -> Vec<u8> {
        let mut tensor = Vec::new();
        wire::put(8, b"weights", &mut tensor);
        let floats: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|f| f.to_le_bytes()).collect();
        wire::put(4, &floats, &mut tensor);
        let mut field = Vec::new();
        wire::put(5, &tensor, &mut field);
        field
    }

    #[test]
    fn sorted_labels_become_an_identity_and_other_bytes_stay() {
        let extra = float_data_initializer();
        let nodes = vec![
            producer(),
            zipmap("probabilities", "output_probability", ints(&[0, 1, 2])),
        ];
        let before = model(nodes, &extra);
        let u = unzip(&before).unwrap();
        let after = u.model.unwrap();
        assert_eq!(
            u.outputs,
            vec![ClassLabels {
                output: "output_probability".into(),
                labels: Labels::Int64(vec![0, 1, 2]),
            }]
        );
        assert!(u.kept.is_empty());
        let g = graph_of(&after);
        assert_eq!(g.node[0], producer());
        let n = &g.node[1];
        assert_eq!(n.op_type.as_deref(), Some("Identity"));
        assert_eq!(n.domain, None);
        assert_eq!(
            (&n.input[..], &n.output[..]),
            (
                &["probabilities".to_string()][..],
                &["output_probability".to_string()][..]
            )
        );
        let out = &g.output[1];
        assert_eq!(out.name.as_deref(), Some("output_probability"));
        let tt = out.r#type.as_ref().unwrap().tensor_type.as_ref().unwrap();
        assert_eq!(tt.elem_type, Some(proto::FLOAT));
        let dims = &tt.shape.as_ref().unwrap().dim;
        assert_eq!(dims.len(), 2);
        assert_eq!(
            (dims[0].dim_value, dims[0].dim_param.as_ref()),
            (None, None)
        );
        assert_eq!(dims[1].dim_value, Some(3));
        assert_eq!(g.output[0], named("label"));
        // The undeclared initializer bytes come through as they were.
        assert!(after.windows(extra.len()).any(|w| w == extra));
        assert_eq!(graph_of(&before).name, g.name);
    }

    #[test]
    fn unsorted_labels_are_put_in_key_order_by_a_gather() {
        let nodes = vec![
            producer(),
            zipmap(
                "probabilities",
                "output_probability",
                strings(&["emu", "cat", "dog"]),
            ),
        ];
        let u = unzip(&model(nodes, &[])).unwrap();
        assert_eq!(
            u.outputs[0].labels,
            Labels::Strings(vec!["cat".into(), "dog".into(), "emu".into()])
        );
        let g = graph_of(&u.model.unwrap());
        let (constant, gather) = (&g.node[1], &g.node[2]);
        assert_eq!(constant.op_type.as_deref(), Some("Constant"));
        let t = constant.attribute[0].t.as_ref().unwrap();
        let order: Vec<i64> = t
            .raw_data
            .as_ref()
            .unwrap()
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(order, vec![1, 2, 0]);
        assert_eq!(gather.op_type.as_deref(), Some("Gather"));
        assert_eq!(
            gather.input,
            vec!["probabilities".to_string(), constant.output[0].clone()]
        );
        assert_eq!(gather.output, vec!["output_probability".to_string()]);
        assert_eq!(gather.attribute[0].i, Some(1));
    }

    #[test]
    fn zipmaps_that_cannot_be_rewritten_are_kept() {
        let reader = NodeProto {
            input: vec!["output_probability".into()],
            output: vec!["other".into()],
            op_type: Some("Identity".into()),
            ..NodeProto::default()
        };
        let read_elsewhere = vec![
            producer(),
            zipmap("probabilities", "output_probability", ints(&[0, 1])),
            reader,
        ];
        let repeated = vec![
            producer(),
            zipmap("probabilities", "output_probability", ints(&[1, 1])),
        ];
        let mut unlabelled = zipmap("probabilities", "output_probability", ints(&[]));
        unlabelled.attribute.clear();
        for (nodes, why) in [
            (read_elsewhere, "another node reads"),
            (repeated, "repeat"),
            (vec![producer(), unlabelled], "no class labels"),
        ] {
            let u = unzip(&model(nodes, &[])).unwrap();
            assert_eq!(u.model, None);
            assert!(u.kept[0].contains(why), "{:?}", u.kept);
        }
    }

    #[test]
    fn models_without_zipmap_are_left_alone() {
        let u = unzip(&model(vec![producer()], &[])).unwrap();
        assert_eq!((u.model, u.outputs.len(), u.kept.len()), (None, 0, 0));
        // A ZipMap whose maps are not a graph output is not ours to change.
        let inner = zipmap("probabilities", "internal", ints(&[0, 1]));
        let u = unzip(&model(vec![producer(), inner], &[])).unwrap();
        assert_eq!((u.model, u.kept.len()), (None, 0));
        assert_eq!(unzip(&[]).unwrap().model, None);
    }

    #[test]
    fn malformed_bytes_are_an_error() {
        let good = model(vec![zipmap("p", "output_probability", ints(&[0, 1]))], &[]);
        let err = unzip(&good[..good.len() - 3]).unwrap_err();
        assert!(
            err.to_string().contains("cannot read the ONNX model"),
            "{err}"
        );
        assert!(unzip(b"not a model at all").is_err());
    }
}
