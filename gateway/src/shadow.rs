//! Shadow traffic: a copy of a routed request goes to each shadow version
//! after the served answer is ready. The copy never delays or changes the
//! answer; its latency, errors and agreement with the served answer are
//! measured. Copies in flight are capped (a semaphore), and a full shadow
//! queue skips the copy, so shadows can never build a backlog.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Semaphore, oneshot};

use crate::admission;
use crate::batcher::Job;
use crate::live::ServedVersion;
use crate::tensor::{Tensor, TensorData};

pub struct Shadows {
    permits: Arc<Semaphore>,
    tolerance: f64,
}

impl Shadows {
    pub fn new(max_in_flight: usize, tolerance: f64) -> Self {
        Shadows {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            tolerance,
        }
    }

    /// Sends `inputs` to every shadow and returns at once; `served` is the
    /// answer the caller got, to compare with.
    pub fn send(
        &self,
        shadows: &[Arc<ServedVersion>],
        inputs: &[Tensor],
        served: &Arc<Vec<Tensor>>,
    ) {
        for shadow in shadows {
            let m = &shadow.metrics;
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                m.shadow_skipped.increment(1);
                continue;
            };
            let Ok(admitted) = admission::admit(&shadow.spec, inputs.to_vec()) else {
                m.shadow_error.increment(1);
                continue;
            };
            let (tx, rx) = oneshot::channel();
            let started = Instant::now();
            let job = Job {
                inputs: admitted.inputs,
                rows: admitted.rows,
                enqueued_at: started,
                deadline: None,
                // A copy for comparison never goes ahead of served traffic.
                priority: shadow.priorities.levels,
                keep_inputs: false,
                reply: tx,
            };
            // Queued, never run inline: the copy must not hold up the
            // answer to the request it copies.
            if shadow.batcher.enqueue(job).is_err() {
                m.shadow_skipped.increment(1);
                continue;
            }
            let shadow = Arc::clone(shadow);
            let served = Arc::clone(served);
            let tolerance = self.tolerance;
            // Detached on purpose: the permit bounds how many exist, and
            // each only awaits an answer its batcher always sends (or drops
            // when it closes), so none outlives shutdown for long.
            tokio::spawn(async move {
                let _permit = permit;
                let m = &shadow.metrics;
                match rx.await {
                    Ok(Ok(out)) => {
                        m.shadow_success.increment(1);
                        m.shadow_duration.record(started.elapsed().as_secs_f64());
                        let agreed = agrees(&out.outputs, &served, tolerance);
                        if agreed {
                            m.shadow_agree.increment(1);
                        } else {
                            m.shadow_disagree.increment(1);
                        }
                        m.dashboard.shadow(agreed);
                    }
                    _ => m.shadow_error.increment(1),
                }
            });
        }
    }
}

/// Every served output has a shadow output of the same name and shape whose
/// elements are within `tolerance` (floats) or equal (anything else).
pub fn agrees(shadow: &[Tensor], served: &[Tensor], tolerance: f64) -> bool {
    served.iter().all(|s| {
        shadow
            .iter()
            .find(|t| t.name == s.name)
            .is_some_and(|t| t.shape == s.shape && close(&t.data, &s.data, tolerance))
    })
}

fn close(a: &TensorData, b: &TensorData, tol: f64) -> bool {
    fn within<T: Copy>(a: &[T], b: &[T], tol: f64, f: impl Fn(T) -> f64) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (f(*x) - f(*y)).abs() <= tol)
    }
    match (a, b) {
        (TensorData::Fp16(x), TensorData::Fp16(y)) => within(x, y, tol, f64::from),
        (TensorData::Fp32(x), TensorData::Fp32(y)) => within(x, y, tol, f64::from),
        (TensorData::Fp64(x), TensorData::Fp64(y)) => within(x, y, tol, |v| v),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, data: Vec<f32>) -> Tensor {
        Tensor {
            name: name.into(),
            shape: vec![1, data.len() as i64],
            data: TensorData::Fp32(data),
        }
    }

    #[test]
    fn agreement_within_tolerance_by_name() {
        let served = [t("p", vec![0.1, 0.9])];
        assert!(agrees(&[t("p", vec![0.10001, 0.89999])], &served, 1e-4));
        assert!(!agrees(&[t("p", vec![0.2, 0.8])], &served, 1e-4));
        assert!(
            !agrees(&[t("q", vec![0.1, 0.9])], &served, 1e-4),
            "missing output"
        );
        assert!(!agrees(&[t("p", vec![0.1])], &served, 1e-4), "other shape");
        let ints = |v: Vec<i64>| Tensor {
            name: "c".into(),
            shape: vec![2],
            data: TensorData::Int64(v),
        };
        assert!(agrees(&[ints(vec![1, 2])], &[ints(vec![1, 2])], 0.5));
        assert!(
            !agrees(&[ints(vec![1, 3])], &[ints(vec![1, 2])], 5.0),
            "integers must be equal"
        );
    }
}
