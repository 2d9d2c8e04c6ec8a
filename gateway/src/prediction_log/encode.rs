//! Events → the JSON records of `quiver_contract::records`. Tensors are
//! written by the same serializer as inference responses, so a logged
//! input reads exactly as the client sent it.

use quiver_contract::records::{LabelRecord, RECORD_SCHEMA};
use serde::Serialize;

use super::PredictionEvent;
use crate::protocol::WireTensorOut;
use crate::tensor::Tensor;

#[derive(Serialize)]
struct WirePrediction<'a> {
    schema: u32,
    id: &'a str,
    model: &'a str,
    version: u64,
    arm: &'static str,
    source: &'static str,
    timestamp_ms: u64,
    latency_us: u64,
    inputs: Vec<WireTensorOut<'a>>,
    outputs: Vec<WireTensorOut<'a>>,
}

fn tensors(ts: &[Tensor]) -> Vec<WireTensorOut<'_>> {
    ts.iter().map(WireTensorOut::json).collect()
}

/// The prediction record's JSON, one line (serde_json escapes newlines),
/// written into `out` (cleared first): the writer reuses one buffer, so a
/// record costs no allocation or regrowth of its own.
pub fn prediction_into(out: &mut Vec<u8>, e: &PredictionEvent) -> Result<(), serde_json::Error> {
    out.clear();
    serde_json::to_writer(
        out,
        &WirePrediction {
            schema: RECORD_SCHEMA,
            id: &e.id,
            model: &e.model,
            version: e.version,
            arm: e.arm.as_str(),
            source: e.source.as_str(),
            timestamp_ms: e.timestamp_ms,
            latency_us: e.latency_us,
            inputs: tensors(&e.inputs),
            outputs: tensors(&e.outputs),
        },
    )
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
    use crate::tensor::TensorData;

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
        prediction_into(&mut bytes, &e).unwrap();
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
