//! The training window of one model: the newest joined examples, bounded.
//! Its rows are persisted in an append-only log (`window_log.rs`), the
//! rest with the trainer state. It knows which records it holds, so a
//! training run can name its exact data.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::join::Example;
use crate::train::Dataset;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Window {
    max_rows: usize,
    /// In the window log, not the state file; read from a state file of
    /// schema 1, which held them.
    #[serde(default, skip_serializing)]
    rows: VecDeque<Example>,
    /// Examples added since the last training run started.
    pub new_rows: u64,
    /// The newest rows not yet appended to the window log.
    #[serde(skip)]
    unsaved: usize,
}

impl Window {
    pub fn new(max_rows: usize) -> Self {
        Window {
            max_rows: max_rows.max(1),
            ..Window::default()
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn push(&mut self, e: Example) {
        self.restore(e);
        self.new_rows += 1;
        self.unsaved += 1;
    }

    /// Puts back a row read from the window log.
    pub fn restore(&mut self, e: Example) {
        if self.rows.len() == self.max_rows {
            self.rows.pop_front();
        }
        self.rows.push_back(e);
    }

    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// The rows not yet in the log (the newest), now counted as saved.
    pub fn take_unsaved(&mut self) -> impl Iterator<Item = &Example> {
        let n = self.unsaved.min(self.rows.len());
        self.unsaved = 0;
        self.rows.iter().skip(self.rows.len() - n)
    }

    /// Every row counts as not yet in the log (a log to write afresh).
    pub fn all_unsaved(&mut self) {
        self.unsaved = self.rows.len();
    }

    pub fn examples(&self) -> impl Iterator<Item = &Example> {
        self.rows.iter()
    }

    /// The examples as a data set (rows of another width are skipped).
    pub fn dataset(&self, features: usize) -> Dataset {
        self.dataset_after(0, features)
    }

    /// The examples from the `skip`-th on, as a data set.
    pub fn dataset_after(&self, skip: usize, features: usize) -> Dataset {
        let mut d = Dataset::new(features);
        for e in self
            .rows
            .iter()
            .skip(skip)
            .filter(|e| e.features.len() == features)
        {
            d.push(&e.features, e.label);
        }
        d
    }

    /// `first..last` prediction positions held, for lineage.
    pub fn range(&self) -> Option<(String, String)> {
        Some((self.rows.front()?.at.clone(), self.rows.back()?.at.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(at: &str) -> Example {
        Example {
            model: "m".into(),
            version: 1,
            arm: "stable".into(),
            timestamp_ms: 0,
            features: vec![1.0, 2.0],
            served: vec![],
            label: 1.0,
            at: at.into(),
        }
    }

    #[test]
    fn keeps_the_newest_rows_and_names_them() {
        let mut w = Window::new(2);
        for at in ["1:0", "1:10", "1:20"] {
            w.push(ex(at));
        }
        assert_eq!(w.len(), 2);
        assert_eq!(w.range(), Some(("1:10".into(), "1:20".into())));
        assert_eq!(w.new_rows, 3);
        assert_eq!(w.dataset(2).rows(), 2);
        assert_eq!(w.dataset(3).rows(), 0);
    }
}
