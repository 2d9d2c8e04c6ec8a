//! Joins predictions with labels by request id. Either may come first; a
//! label may arrive up to `window_ms` after its prediction (record time).
//! Unmatched records expire and are counted; a second label for an id is a
//! duplicate and is dropped. The joiner is plain data, persisted with the
//! consumer positions so a restart loses nothing.

use std::collections::{BTreeMap, HashMap};

use quiver_contract::records::{LabelRecord, PredictionRecord};
use serde::{Deserialize, Serialize};

/// One labelled row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub model: String,
    pub version: u64,
    pub arm: String,
    pub timestamp_ms: u64,
    pub features: Vec<f32>,
    /// What the serving version answered for this row (probabilities or a
    /// value), when the record carried it.
    pub served: Vec<f32>,
    pub label: f32,
    /// Where the prediction record starts in its source.
    pub at: String,
}

/// Which tensors of a prediction record to use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Columns {
    pub input: String,
    /// The probabilities (classifiers) or value (regressors) output.
    pub output: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingPrediction {
    model: String,
    version: u64,
    arm: String,
    timestamp_ms: u64,
    /// One entry per row.
    rows: Vec<(Vec<f32>, Vec<f32>)>,
    at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingLabel {
    values: Vec<f64>,
    timestamp_ms: u64,
}

/// Counts since start (persisted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinCounts {
    pub joined: u64,
    pub duplicate_labels: u64,
    pub expired_predictions: u64,
    pub expired_labels: u64,
    pub unusable: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Joiner {
    window_ms: u64,
    predictions: HashMap<String, PendingPrediction>,
    labels: HashMap<String, PendingLabel>,
    /// Ids already joined, with their time, to spot duplicate labels.
    done: HashMap<String, u64>,
    /// The newest record time seen: the clock expiry runs on.
    now_ms: u64,
    pub counts: JoinCounts,
}

impl Joiner {
    pub fn new(window_ms: u64) -> Self {
        Joiner {
            window_ms,
            ..Joiner::default()
        }
    }

    pub fn pending(&self) -> (usize, usize) {
        (self.predictions.len(), self.labels.len())
    }

    /// Takes a prediction; returns its examples if its label is here.
    pub fn prediction(
        &mut self,
        rec: &PredictionRecord,
        columns: &Columns,
        at: &str,
    ) -> Vec<Example> {
        self.tick(rec.timestamp_ms);
        let Some(rows) = rows_of(rec, columns) else {
            self.counts.unusable += 1;
            return Vec::new();
        };
        let p = PendingPrediction {
            model: rec.model.clone(),
            version: rec.version,
            arm: rec.arm.clone(),
            timestamp_ms: rec.timestamp_ms,
            rows,
            at: at.to_string(),
        };
        match self.labels.remove(&rec.id) {
            Some(l) => self.join(&rec.id, p, &l.values),
            None => {
                self.predictions.insert(rec.id.clone(), p);
                Vec::new()
            }
        }
    }

    /// Takes a label; returns the examples if its prediction is here.
    pub fn label(&mut self, rec: &LabelRecord) -> Vec<Example> {
        self.tick(rec.timestamp_ms);
        if self.done.contains_key(&rec.id) || self.labels.contains_key(&rec.id) {
            self.counts.duplicate_labels += 1;
            return Vec::new();
        }
        let values = rec.label.values().to_vec();
        match self.predictions.remove(&rec.id) {
            Some(p) => self.join(&rec.id, p, &values),
            None => {
                self.labels.insert(
                    rec.id.clone(),
                    PendingLabel {
                        values,
                        timestamp_ms: rec.timestamp_ms,
                    },
                );
                Vec::new()
            }
        }
    }

    fn join(&mut self, id: &str, p: PendingPrediction, labels: &[f64]) -> Vec<Example> {
        self.done.insert(id.to_string(), p.timestamp_ms);
        if labels.len() != p.rows.len() {
            self.counts.unusable += 1;
            return Vec::new();
        }
        self.counts.joined += 1;
        p.rows
            .into_iter()
            .zip(labels)
            .map(|((features, served), &label)| Example {
                model: p.model.clone(),
                version: p.version,
                arm: p.arm.clone(),
                timestamp_ms: p.timestamp_ms,
                features,
                served,
                label: label as f32,
                at: p.at.clone(),
            })
            .collect()
    }

    /// Advances the clock and drops what is older than the window.
    fn tick(&mut self, ts: u64) {
        if ts <= self.now_ms {
            return;
        }
        self.now_ms = ts;
        let horizon = ts.saturating_sub(self.window_ms);
        let before = self.predictions.len();
        self.predictions.retain(|_, p| p.timestamp_ms >= horizon);
        self.counts.expired_predictions += (before - self.predictions.len()) as u64;
        let before = self.labels.len();
        self.labels.retain(|_, l| l.timestamp_ms >= horizon);
        self.counts.expired_labels += (before - self.labels.len()) as u64;
        self.done.retain(|_, &mut t| t >= horizon);
    }
}

/// The rows of a record: (features, served output) each.
fn rows_of(rec: &PredictionRecord, columns: &Columns) -> Option<Vec<(Vec<f32>, Vec<f32>)>> {
    let input = rec.inputs.iter().find(|t| t.name == columns.input)?;
    let n = input.rows();
    let x = input.data.as_f64()?;
    if n == 0 || x.len() % n != 0 {
        return None;
    }
    let f = x.len() / n;
    let out: Option<Vec<f64>> = rec
        .outputs
        .iter()
        .find(|t| t.name == columns.output)
        .and_then(|t| t.data.as_f64());
    let w = out.as_ref().map_or(0, |o| o.len() / n);
    Some(
        (0..n)
            .map(|r| {
                let row = x[r * f..(r + 1) * f].iter().map(|&v| v as f32).collect();
                let served = out
                    .as_ref()
                    .map(|o| o[r * w..(r + 1) * w].iter().map(|&v| v as f32).collect())
                    .unwrap_or_default();
                (row, served)
            })
            .collect(),
    )
}

/// Groups by model, keeping order.
pub fn by_model(examples: Vec<Example>) -> BTreeMap<String, Vec<Example>> {
    let mut out: BTreeMap<String, Vec<Example>> = BTreeMap::new();
    for e in examples {
        out.entry(e.model.clone()).or_default().push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_contract::records::{Label, RecordTensor, TensorValues};

    fn prediction(id: &str, ts: u64, rows: usize) -> PredictionRecord {
        PredictionRecord {
            schema: 1,
            id: id.into(),
            model: "m".into(),
            version: 1,
            arm: "stable".into(),
            source: "http".into(),
            timestamp_ms: ts,
            latency_us: 1,
            inputs: vec![RecordTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![rows as i64, 2],
                data: TensorValues::Numbers((0..rows * 2).map(|v| v as f64).collect()),
            }],
            outputs: vec![RecordTensor {
                name: "p".into(),
                datatype: "FP32".into(),
                shape: vec![rows as i64, 2],
                data: TensorValues::Numbers(vec![0.5; rows * 2]),
            }],
        }
    }

    fn label(id: &str, ts: u64, v: Vec<f64>) -> LabelRecord {
        LabelRecord {
            schema: 1,
            id: id.into(),
            model: "m".into(),
            label: Label::PerRow(v),
            timestamp_ms: ts,
        }
    }

    fn cols() -> Columns {
        Columns {
            input: "x".into(),
            output: "p".into(),
        }
    }

    #[test]
    fn joins_in_either_order_and_per_row() {
        let mut j = Joiner::new(1000);
        assert!(
            j.prediction(&prediction("a", 10, 2), &cols(), "1:0")
                .is_empty()
        );
        let ex = j.label(&label("a", 20, vec![1.0, 0.0]));
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[1].features, vec![2.0, 3.0]);
        assert_eq!(ex[1].label, 0.0);
        assert_eq!(ex[0].served, vec![0.5, 0.5]);
        // Label first.
        assert!(j.label(&label("b", 30, vec![1.0])).is_empty());
        assert_eq!(
            j.prediction(&prediction("b", 31, 1), &cols(), "1:9").len(),
            1
        );
        assert_eq!(j.counts.joined, 2);
    }

    #[test]
    fn late_labels_within_the_window_join_and_expired_ones_are_counted() {
        let mut j = Joiner::new(100);
        j.prediction(&prediction("late", 0, 1), &cols(), "1:0");
        j.prediction(&prediction("lost", 0, 1), &cols(), "1:1");
        assert_eq!(j.label(&label("late", 100, vec![1.0])).len(), 1);
        // Time moves past the window: "lost" expires unlabelled.
        j.prediction(&prediction("c", 500, 1), &cols(), "1:2");
        assert_eq!(j.counts.expired_predictions, 1);
        assert!(j.label(&label("lost", 501, vec![1.0])).is_empty());
        j.prediction(&prediction("d", 1000, 1), &cols(), "1:3");
        assert_eq!(j.counts.expired_labels, 1);
        assert_eq!(j.counts.expired_predictions, 2); // "c" too
    }

    #[test]
    fn duplicate_and_malformed_labels_are_dropped() {
        let mut j = Joiner::new(1000);
        j.prediction(&prediction("a", 1, 1), &cols(), "1:0");
        assert_eq!(j.label(&label("a", 2, vec![1.0])).len(), 1);
        assert!(j.label(&label("a", 3, vec![0.0])).is_empty());
        assert!(j.label(&label("z", 3, vec![0.0])).is_empty());
        assert!(j.label(&label("z", 4, vec![0.0])).is_empty());
        assert_eq!(j.counts.duplicate_labels, 2);
        j.prediction(&prediction("two", 5, 2), &cols(), "1:1");
        assert!(j.label(&label("two", 6, vec![1.0])).is_empty());
        assert_eq!(j.counts.unusable, 1);
        // Survives a round trip through JSON (the persisted state).
        let again: Joiner = serde_json::from_str(&serde_json::to_string(&j).unwrap()).unwrap();
        assert_eq!(again.counts, j.counts);
    }
}
