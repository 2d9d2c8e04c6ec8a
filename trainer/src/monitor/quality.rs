//! Online quality of one (model, version) from joined labels: accuracy and
//! log loss for classifiers, MAE and RMSE for regressors, scored on what
//! the serving version answered (prequential).

use serde::{Deserialize, Serialize};

use super::stats::{ArmQuality, Moments};
use crate::train::Task;
use crate::train::metrics::argmax;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    pub arm: ArmQuality,
    pub abs_error: f64,
}

/// The per-example loss of a served answer: log loss or squared error;
/// `None` when the record did not carry the answer.
pub fn example_loss(task: Task, served: &[f32], label: f32) -> Option<(f64, bool, f64)> {
    match task {
        Task::Classification { classes } => {
            if served.len() != classes {
                return None;
            }
            let k = label as usize;
            let p = f64::from(*served.get(k)?).clamp(1e-15, 1.0);
            Some((-p.ln(), argmax(served) == k, 0.0))
        }
        Task::Regression => {
            let d = f64::from(*served.first()?) - f64::from(label);
            Some((d * d, false, d.abs()))
        }
    }
}

impl Quality {
    pub fn add(&mut self, task: Task, served: &[f32], label: f32) {
        if let Some((loss, correct, abs)) = example_loss(task, served, label) {
            self.arm.loss.add(loss);
            self.arm.correct += u64::from(correct);
            self.abs_error += abs;
        }
    }

    pub fn n(&self) -> u64 {
        self.arm.loss.n
    }

    pub fn accuracy(&self) -> f64 {
        self.arm.correct as f64 / self.n().max(1) as f64
    }

    /// Mean log loss (classifiers) or mean squared error (regressors).
    pub fn mean_loss(&self) -> f64 {
        self.arm.loss.mean
    }

    pub fn mae(&self) -> f64 {
        self.abs_error / self.n().max(1) as f64
    }

    pub fn loss_moments(&self) -> Moments {
        self.arm.loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_served_answers() {
        let task = Task::Classification { classes: 2 };
        let mut q = Quality::default();
        q.add(task, &[0.2, 0.8], 1.0);
        q.add(task, &[0.9, 0.1], 1.0);
        q.add(task, &[], 1.0); // no answer logged: skipped
        assert_eq!(q.n(), 2);
        assert_eq!(q.accuracy(), 0.5);
        assert!((q.mean_loss() - (-(0.8f64.ln()) - 0.1f64.ln()) / 2.0).abs() < 1e-6);
        let mut r = Quality::default();
        r.add(Task::Regression, &[3.0], 1.0);
        assert_eq!(r.mae(), 2.0);
        assert_eq!(r.mean_loss(), 4.0);
    }
}
