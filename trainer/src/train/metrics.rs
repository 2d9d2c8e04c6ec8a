//! Offline metrics of a forward pass against targets.

use std::collections::BTreeMap;

use super::Task;

/// Probabilities are clipped to this before the log, as scikit-learn does.
const EPS: f64 = 1e-15;

/// `accuracy` and `log_loss` for classifiers, `mae` and `rmse` for
/// regressors; `outputs` is `rows × task.width()`.
pub fn evaluate(task: Task, outputs: &[f32], y: &[f32]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let n = y.len().max(1) as f64;
    match task {
        Task::Classification { classes } => {
            let (mut correct, mut loss) = (0usize, 0.0f64);
            for (row, &label) in outputs.chunks(classes).zip(y) {
                let label = label as usize;
                if argmax(row) == label {
                    correct += 1;
                }
                let p = f64::from(row.get(label).copied().unwrap_or(0.0));
                loss -= p.clamp(EPS, 1.0).ln();
            }
            m.insert("accuracy".into(), correct as f64 / n);
            m.insert("log_loss".into(), loss / n);
        }
        Task::Regression => {
            let (mut abs, mut sq) = (0.0f64, 0.0f64);
            for (&p, &t) in outputs.iter().zip(y) {
                let d = f64::from(p) - f64::from(t);
                abs += d.abs();
                sq += d * d;
            }
            m.insert("mae".into(), abs / n);
            m.insert("rmse".into(), (sq / n).sqrt());
        }
    }
    m.insert("rows".into(), y.len() as f64);
    m
}

/// The loss a candidate must beat: log loss for classifiers, RMSE for
/// regressors (lower is better for both).
pub fn primary_loss(task: Task, metrics: &BTreeMap<String, f64>) -> f64 {
    let key = match task {
        Task::Classification { .. } => "log_loss",
        Task::Regression => "rmse",
    };
    metrics.get(key).copied().unwrap_or(f64::INFINITY)
}

pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier_and_regressor_metrics() {
        let task = Task::Classification { classes: 2 };
        let m = evaluate(task, &[0.9, 0.1, 0.2, 0.8], &[0.0, 0.0]);
        assert_eq!(m["accuracy"], 0.5);
        let want = -(0.9f64.ln() + 0.2f64.ln()) / 2.0;
        assert!((m["log_loss"] - want).abs() < 1e-6);
        let m = evaluate(Task::Regression, &[1.0, 3.0], &[2.0, 3.0]);
        assert_eq!(m["mae"], 0.5);
        assert!((m["rmse"] - 0.5f64.sqrt()).abs() < 1e-12);
    }
}
