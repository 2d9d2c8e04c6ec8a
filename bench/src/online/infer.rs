//! The gateway's wire formats the generator speaks: one OIP v2 JSON infer
//! request per stream row (its own id, so labels can refer to it), the
//! served probability read back from the answer, and feedback batches.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use serde_json::{Value, json};

/// The request id of stream row `seq`.
pub fn request_id(seq: u64) -> String {
    format!("s{seq}")
}

/// `POST /v2/models/{model}/infer` body for one row.
pub fn infer_body(seq: u64, input: &str, features: &[f32]) -> Bytes {
    let body = json!({
        "id": request_id(seq),
        "inputs": [{"name": input, "datatype": "FP32", "shape": [1, features.len()], "data": features}],
    });
    Bytes::from(body.to_string())
}

/// What one answer says: the version that served it and P(class 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    pub version: u64,
    pub p: f64,
}

/// Reads an infer answer. The probability comes from the output named like
/// `probabilities` (else the first floating-point output): with two values
/// per row the second; with one, that value (squashed by a sigmoid when it
/// is not a probability). A model with only a label output scores 0 or 1.
pub fn parse_answer(body: &[u8], header_version: Option<u32>) -> Result<Answer> {
    let v: Value = serde_json::from_slice(body).context("infer answer is not JSON")?;
    let version = v["model_version"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v["model_version"].as_u64())
        .or(header_version.map(u64::from))
        .context("infer answer has no model_version")?;
    let outputs = v["outputs"]
        .as_array()
        .context("infer answer has no outputs")?;
    let is_float = |o: &&Value| o["datatype"].as_str().is_some_and(|d| d.starts_with("FP"));
    let chosen = outputs
        .iter()
        .find(|o| o["name"].as_str().is_some_and(|n| n.contains("prob")))
        .or_else(|| outputs.iter().find(is_float))
        .or_else(|| outputs.first())
        .context("infer answer has no outputs")?;
    let data: Vec<f64> = chosen["data"]
        .as_array()
        .context("output without data")?
        .iter()
        .filter_map(|x| {
            x.as_f64()
                .or_else(|| x.as_bool().map(|b| f64::from(u8::from(b))))
        })
        .collect();
    let p = match data.as_slice() {
        [_, p1, ..] => *p1,
        [x] if (0.0..=1.0).contains(x) => *x,
        [x] => 1.0 / (1.0 + (-x).exp()),
        [] => bail!("output '{}' is empty", chosen["name"]),
    };
    Ok(Answer { version, p })
}

/// `POST /v2/models/{model}/feedback` body.
pub fn feedback_body(labels: &[(u64, u8)]) -> Bytes {
    let labels: Vec<Value> = labels
        .iter()
        .map(|(seq, label)| json!({"id": request_id(*seq), "label": label}))
        .collect();
    Bytes::from(json!({ "labels": labels }).to_string())
}

/// The input name and feature count a model takes, from its metadata.
pub fn model_input(metadata: &Value) -> Result<(String, Option<usize>)> {
    let input = metadata["inputs"]
        .as_array()
        .and_then(|a| a.first())
        .context("model metadata has no inputs")?;
    let name = input["name"]
        .as_str()
        .context("input without a name")?
        .to_string();
    let width = input["shape"]
        .as_array()
        .and_then(|s| s.last())
        .and_then(Value::as_i64)
        .filter(|d| *d > 0)
        .map(|d| d as usize);
    Ok((name, width))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(outputs: Value) -> Result<Answer> {
        let body = json!({"model_name": "m", "model_version": "3", "id": "s1", "outputs": outputs});
        parse_answer(body.to_string().as_bytes(), None)
    }

    #[test]
    fn reads_the_probability_of_class_one() {
        let two = json!([{"name": "label", "datatype": "INT64", "shape": [1], "data": [1]},
                         {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}]);
        assert_eq!(
            answer(two).unwrap(),
            Answer {
                version: 3,
                p: 0.75
            }
        );
        let one = json!([{"name": "y", "datatype": "FP32", "shape": [1, 1], "data": [0.4]}]);
        assert_eq!(answer(one).unwrap().p, 0.4);
        let logit = json!([{"name": "y", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]);
        assert_eq!(answer(logit).unwrap().p, 0.0);
        let big = json!([{"name": "y", "datatype": "FP32", "shape": [1, 1], "data": [2.0]}]);
        assert!((answer(big).unwrap().p - 0.8808).abs() < 1e-3);
        let label_only = json!([{"name": "label", "datatype": "INT64", "shape": [1], "data": [1]}]);
        assert_eq!(answer(label_only).unwrap().p, 1.0);
        assert!(answer(json!([])).is_err());
    }

    #[test]
    fn the_version_may_come_from_the_header() {
        let body = json!({"outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.5]}]});
        let a = parse_answer(body.to_string().as_bytes(), Some(7)).unwrap();
        assert_eq!(a.version, 7);
        assert!(parse_answer(body.to_string().as_bytes(), None).is_err());
    }

    #[test]
    fn bodies_carry_ids_features_and_labels() {
        let b: Value = serde_json::from_slice(&infer_body(12, "features", &[1.5, 2.0])).unwrap();
        assert_eq!(b["id"], "s12");
        assert_eq!(b["inputs"][0]["shape"], json!([1, 2]));
        assert_eq!(b["inputs"][0]["data"], json!([1.5, 2.0]));
        let f: Value = serde_json::from_slice(&feedback_body(&[(3, 1), (4, 0)])).unwrap();
        assert_eq!(
            f,
            json!({"labels": [{"id": "s3", "label": 1}, {"id": "s4", "label": 0}]})
        );
        let meta = json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 10]}]});
        assert_eq!(
            model_input(&meta).unwrap(),
            ("features".to_string(), Some(10))
        );
    }
}
