//! Population stability index per feature against a reference saved with
//! the version: PSI = Σ (a − e) · ln(a / e) over quantile bins of the
//! training data. Rules of thumb: < 0.1 stable, 0.1–0.25 moderate, > 0.25
//! a shift.

use serde::{Deserialize, Serialize};

/// Proportions are floored at this so an empty bin does not give ∞.
const FLOOR: f64 = 1e-4;

/// Bin edges and expected shares of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnReference {
    /// Inner edges, rising; bin `i` holds values `<= edges[i]`.
    pub edges: Vec<f32>,
    pub expected: Vec<f64>,
}

/// The reference of a version: one column per feature, plus the
/// prediction (the first output column) for prediction drift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub features: Vec<ColumnReference>,
    pub prediction: Option<ColumnReference>,
}

impl ColumnReference {
    pub fn fit(values: &[f32], bins: usize) -> Self {
        let mut v: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f32::total_cmp);
        let mut edges: Vec<f32> = (1..bins.max(2))
            .filter_map(|q| v.get(q * v.len() / bins.max(2)).copied())
            .collect();
        edges.dedup();
        let expected = shares(&edges, values);
        ColumnReference { edges, expected }
    }

    pub fn psi(&self, values: &[f32]) -> f64 {
        psi(&self.expected, &shares(&self.edges, values))
    }
}

fn shares(edges: &[f32], values: &[f32]) -> Vec<f64> {
    let mut counts = vec![0u64; edges.len() + 1];
    for &v in values {
        counts[edges.partition_point(|&e| e < v)] += 1;
    }
    let n = values.len().max(1) as f64;
    counts.iter().map(|&c| c as f64 / n).collect()
}

/// PSI of `actual` shares against `expected` shares.
pub fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let (e, a) = (e.max(FLOOR), a.max(FLOOR));
            (a - e) * (a / e).ln()
        })
        .sum()
}

impl Reference {
    /// From rows (`rows × features`) and the first output column.
    pub fn fit(x: &[f32], features: usize, predictions: &[f32], bins: usize) -> Self {
        let rows = x.len() / features.max(1);
        let features = (0..features)
            .map(|j| {
                let col: Vec<f32> = (0..rows).map(|r| x[r * features + j]).collect();
                ColumnReference::fit(&col, bins)
            })
            .collect();
        let prediction = (!predictions.is_empty()).then(|| ColumnReference::fit(predictions, bins));
        Reference {
            features,
            prediction,
        }
    }

    /// PSI of each feature for `rows` (each a feature vector).
    pub fn feature_psi<'a>(&self, rows: impl Iterator<Item = &'a [f32]> + Clone) -> Vec<f64> {
        self.features
            .iter()
            .enumerate()
            .map(|(j, c)| {
                let col: Vec<f32> = rows.clone().filter_map(|r| r.get(j).copied()).collect();
                c.psi(&col)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_distribution_is_near_zero_and_a_shift_is_large() {
        let base: Vec<f32> = (0..10_000).map(|i| (i % 1000) as f32).collect();
        let r = ColumnReference::fit(&base, 10);
        assert_eq!(r.expected.len(), 10);
        assert!(r.psi(&base) < 1e-9);
        let shifted: Vec<f32> = base.iter().map(|v| v + 300.0).collect();
        assert!(r.psi(&shifted) > 0.25, "{}", r.psi(&shifted));
    }

    #[test]
    fn the_formula_on_known_shares() {
        let v = psi(&[0.5, 0.5], &[0.25, 0.75]);
        let want = (0.25 - 0.5) * (0.5f64).ln() + (0.75 - 0.5) * (1.5f64).ln();
        assert!((v - want).abs() < 1e-12);
    }
}
