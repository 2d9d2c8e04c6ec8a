//! Events → the JSON records of `quiver_contract::records`. Tensors are
//! written by the same code as inference responses
//! ([`crate::tensor::json_out`]), so a logged input reads exactly as an
//! answer would show it.

use quiver_contract::records::{LabelRecord, RECORD_SCHEMA};

use super::PredictionEvent;
use crate::tensor::json_out;

/// The prediction record's JSON, one line (strings are escaped, so no raw
/// newline), written into `out` (cleared first): the writer reuses one
/// buffer, so a record costs no allocation or regrowth of its own. Keys
/// in the order `quiver_contract::records::PredictionRecord` declares.
pub fn prediction_into(out: &mut Vec<u8>, e: &PredictionEvent) {
    out.clear();
    out.extend_from_slice(b"{\"schema\":");
    json_out::uint(out, u64::from(RECORD_SCHEMA));
    out.extend_from_slice(b",\"id\":");
    json_out::string(out, &e.id);
    out.extend_from_slice(b",\"model\":");
    json_out::string(out, &e.model);
    out.extend_from_slice(b",\"version\":");
    json_out::uint(out, e.version);
    out.extend_from_slice(b",\"arm\":\"");
    out.extend_from_slice(e.arm.as_str().as_bytes());
    out.extend_from_slice(b"\",\"source\":\"");
    out.extend_from_slice(e.source.as_str().as_bytes());
    out.extend_from_slice(b"\",\"timestamp_ms\":");
    json_out::uint(out, e.timestamp_ms);
    out.extend_from_slice(b",\"latency_us\":");
    json_out::uint(out, e.latency_us);
    out.extend_from_slice(b",\"inputs\":");
    json_out::tensors(out, &e.inputs);
    out.extend_from_slice(b",\"outputs\":");
    json_out::tensors(out, &e.outputs);
    out.push(b'}');
}

pub fn label(l: &LabelRecord) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(l)
}

#[cfg(test)]
mod tests {
    use quiver_contract::records::{self, PredictionRecord, TensorValues};

    use super::*;
    use crate::prediction_log::Source;
    use crate::routing::Arm;
    use crate::tensor::{Tensor, TensorData};

    #[test]
    fn the_contract_reads_what_the_gateway_writes() {
        let e = PredictionEvent {
            id: "r\n1".into(),
            model: "m".into(),
            version: 4,
            arm: Arm::Canary,
            source: Source::Http,
            timestamp_ms: 1_700_000_000_123,
            latency_us: 250,
            inputs: vec![Tensor {
                name: "x".into(),
                shape: vec![2, 2],
                data: TensorData::Fp32(vec![0.1, -2.0, 3.25, 1e-7]),
            }],
            outputs: vec![
                Tensor {
                    name: "label".into(),
                    shape: vec![2],
                    data: TensorData::Int64(vec![1, 0]),
                },
                Tensor {
                    name: "flag".into(),
                    shape: vec![2],
                    data: TensorData::Bool(vec![true, false]),
                },
            ],
        };
        let mut bytes = Vec::new();
        prediction_into(&mut bytes, &e);
        assert!(!bytes.contains(&b'\n'));
        let r: PredictionRecord = records::parse(&bytes).unwrap();
        assert_eq!(r.id, "r\n1");
        assert_eq!(
            (r.version, r.arm.as_str(), r.source.as_str()),
            (4, "canary", "http")
        );
        assert_eq!(r.rows(), 2);
        let TensorValues::Numbers(x) = &r.inputs[0].data else {
            panic!("numbers expected");
        };
        // FP32 values come back as the f32 the client sent.
        let as_f32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        assert_eq!(as_f32, vec![0.1, -2.0, 3.25, 1e-7]);
        assert_eq!(r.outputs[0].data, TensorValues::Numbers(vec![1.0, 0.0]));
        assert_eq!(r.outputs[1].data, TensorValues::Bools(vec![true, false]));
    }
}
