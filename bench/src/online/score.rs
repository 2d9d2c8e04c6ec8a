//! Prequential scoring: each labelled prediction is scored against the
//! version that served it, when its label arrives. Pure; the generator
//! feeds it, the report recomputes from the written predictions.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Probabilities are clipped so one confident mistake costs a finite loss.
const EPS: f64 = 1e-7;

/// One scored prediction, as written to `predictions.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// The row of the stream.
    pub seq: u64,
    /// Wall seconds from the start of the run to the answer.
    pub answered_s: f64,
    /// Wall seconds from the start of the run to the label's release.
    pub labelled_s: f64,
    pub version: u64,
    /// The served probability of class 1.
    pub p: f64,
    pub label: u8,
}

impl Scored {
    pub fn correct(&self) -> bool {
        u8::from(self.p >= 0.5) == self.label
    }

    pub fn log_loss(&self) -> f64 {
        let p = self.p.clamp(EPS, 1.0 - EPS);
        if self.label == 1 {
            -p.ln()
        } else {
            -(1.0 - p).ln()
        }
    }
}

/// Counts for one version, or for all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub n: u64,
    pub correct: u64,
    pub log_loss_sum: f64,
    pub positives: u64,
}

impl Totals {
    pub fn add(&mut self, s: &Scored) {
        self.n += 1;
        self.correct += u64::from(s.correct());
        self.log_loss_sum += s.log_loss();
        self.positives += u64::from(s.label);
    }

    pub fn accuracy(&self) -> Option<f64> {
        (self.n > 0).then(|| self.correct as f64 / self.n as f64)
    }

    pub fn log_loss(&self) -> Option<f64> {
        (self.n > 0).then(|| self.log_loss_sum / self.n as f64)
    }
}

/// Running totals, per version and over the last `window` labels.
#[derive(Debug)]
pub struct Scorer {
    window: usize,
    recent: VecDeque<(u64, bool)>,
    recent_correct: usize,
    pub all: Totals,
    pub by_version: BTreeMap<u64, Totals>,
}

impl Scorer {
    pub fn new(window: usize) -> Scorer {
        Scorer {
            window: window.max(1),
            recent: VecDeque::new(),
            recent_correct: 0,
            all: Totals::default(),
            by_version: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, s: &Scored) {
        self.all.add(s);
        self.by_version.entry(s.version).or_default().add(s);
        let ok = s.correct();
        self.recent.push_back((s.version, ok));
        self.recent_correct += usize::from(ok);
        if self.recent.len() > self.window
            && let Some((_, old)) = self.recent.pop_front()
        {
            self.recent_correct -= usize::from(old);
        }
    }

    /// Accuracy over the last `window` labels.
    pub fn window_accuracy(&self) -> Option<f64> {
        (!self.recent.is_empty()).then(|| self.recent_correct as f64 / self.recent.len() as f64)
    }

    /// Each version's share of the last `window` labels, largest first.
    pub fn window_versions(&self) -> Vec<(u64, f64)> {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for (v, _) in &self.recent {
            *counts.entry(*v).or_default() += 1;
        }
        let n = self.recent.len().max(1) as f64;
        let mut out: Vec<(u64, f64)> = counts.into_iter().map(|(v, c)| (v, c as f64 / n)).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}

/// Area under the ROC curve (ties counted half), `None` when one class is
/// absent.
pub fn roc_auc(scored: &[Scored]) -> Option<f64> {
    let mut v: Vec<(f64, u8)> = scored.iter().map(|s| (s.p, s.label)).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = v.iter().filter(|x| x.1 == 1).count() as f64;
    let neg = v.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    // Sum of the positives' ranks, tied scores sharing their mean rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += v[i..j].iter().filter(|x| x.1 == 1).count() as f64 * mean_rank;
        i = j;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(version: u64, p: f64, label: u8) -> Scored {
        Scored {
            seq: 0,
            answered_s: 0.0,
            labelled_s: 0.0,
            version,
            p,
            label,
        }
    }

    #[test]
    fn scores_by_serving_version_and_window() {
        let mut sc = Scorer::new(2);
        sc.add(&s(1, 0.9, 1));
        sc.add(&s(1, 0.9, 0));
        sc.add(&s(2, 0.2, 0));
        assert_eq!(sc.all.n, 3);
        assert_eq!(sc.by_version[&1].accuracy(), Some(0.5));
        assert_eq!(sc.by_version[&2].accuracy(), Some(1.0));
        assert_eq!(sc.window_accuracy(), Some(0.5));
        assert_eq!(sc.window_versions(), vec![(1, 0.5), (2, 0.5)]);
        let ll = sc.all.log_loss().unwrap();
        let want = (-(0.9f64.ln()) - (0.1f64.ln()) - (0.8f64.ln())) / 3.0;
        assert!((ll - want).abs() < 1e-12, "{ll} {want}");
    }

    #[test]
    fn certain_mistakes_cost_a_finite_loss() {
        assert!(s(1, 0.0, 1).log_loss().is_finite());
        assert!(s(1, 1.0, 0).log_loss() > 10.0);
    }

    #[test]
    fn auc_of_known_orderings() {
        let perfect = [s(1, 0.1, 0), s(1, 0.2, 0), s(1, 0.8, 1), s(1, 0.9, 1)];
        assert_eq!(roc_auc(&perfect), Some(1.0));
        let reversed = [s(1, 0.9, 0), s(1, 0.1, 1)];
        assert_eq!(roc_auc(&reversed), Some(0.0));
        let tied = [s(1, 0.5, 0), s(1, 0.5, 1)];
        assert_eq!(roc_auc(&tied), Some(0.5));
        assert_eq!(roc_auc(&[s(1, 0.5, 1)]), None);
    }
}
