//! A multilayer perceptron over `ndarray`: ReLU hidden layers (none =
//! logistic / linear regression), softmax + cross-entropy for classifiers,
//! squared error for regressors, mini-batch Adam, early stopping on a
//! held-out slice, seeded.
//!
//! Each mini-batch is split into row chunks whose gradients are computed on
//! `threads` OS threads and summed in chunk order, so a run is reproducible
//! for a given seed and thread count.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::rng::Rng;
use super::{Dataset, Task, TrainError, check_labels, export_head};
use crate::onnx::{Dim, GraphBuilder, Interface, attr_int, proto};

/// Below this many rows a chunk is not worth a thread.
const MIN_ROWS_PER_THREAD: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpSettings {
    /// Width of each hidden layer; empty = logistic / linear regression.
    pub hidden: Vec<usize>,
    /// Adam's step size.
    pub learning_rate: f32,
    /// Rows per mini-batch.
    pub batch_size: usize,
    /// Most passes over the data.
    pub max_epochs: usize,
    /// Stop after this many epochs without a better held-out loss.
    pub patience: usize,
    /// Share of the (newest) training rows held out for early stopping.
    pub validation_fraction: f64,
    /// Threads computing each mini-batch's gradient; 0 = all cores.
    pub threads: usize,
}

impl Default for MlpSettings {
    fn default() -> Self {
        MlpSettings {
            hidden: vec![64],
            learning_rate: 1e-2,
            batch_size: 256,
            max_epochs: 30,
            patience: 3,
            validation_fraction: 0.1,
            threads: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Layer {
    /// `inputs × outputs`.
    w: Array2<f32>,
    b: Array1<f32>,
}

/// A trained MLP; standardisation is part of the model.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub task: Task,
    mean: Array1<f32>,
    inv_std: Array1<f32>,
    layers: Vec<Layer>,
    /// Epochs run, for the log.
    pub epochs: usize,
    /// The epoch whose weights were kept (the best validation loss; the
    /// last epoch without a validation slice).
    pub best_epochs: usize,
}

struct Grads {
    w: Vec<Array2<f32>>,
    b: Vec<Array1<f32>>,
    loss: f64,
}

impl Mlp {
    pub fn features(&self) -> usize {
        self.mean.len()
    }

    /// Trains on `data` (time-ordered; the newest rows are the validation
    /// slice).
    pub fn train(
        task: Task,
        data: &Dataset,
        settings: &MlpSettings,
        seed: u64,
    ) -> Result<Mlp, TrainError> {
        check_labels(task, data)?;
        if settings.batch_size == 0 || settings.hidden.contains(&0) {
            return Err(TrainError::Settings(
                "batch_size and hidden widths must be positive".into(),
            ));
        }
        let f = data.features;
        let (train, valid) = if settings.validation_fraction > 0.0 && data.rows() >= 4 {
            data.split_tail(settings.validation_fraction)
        } else {
            (data.clone(), Dataset::new(f))
        };
        let (mean, inv_std) = standardisation(&train);
        let mut rng = Rng::new(seed);
        let mut widths = vec![f];
        widths.extend(&settings.hidden);
        widths.push(task.width());
        let layers = widths
            .windows(2)
            .map(|w| {
                let bound = (6.0 / (w[0] + w[1]) as f64).sqrt();
                Layer {
                    w: Array2::from_shape_fn((w[0], w[1]), |_| {
                        ((rng.next_f64() * 2.0 - 1.0) * bound) as f32
                    }),
                    b: Array1::zeros(w[1]),
                }
            })
            .collect();
        let mut model = Mlp {
            task,
            mean,
            inv_std,
            layers,
            epochs: 0,
            best_epochs: 0,
        };
        let xs = model.standardise(&train.x, train.rows());
        let xv = model.standardise(&valid.x, valid.rows());
        let threads = super::threads(settings.threads);
        let mut adam = Adam::new(&model.layers, settings.learning_rate);
        let mut order: Vec<usize> = (0..train.rows()).collect();
        let mut best = (f64::INFINITY, model.layers.clone());
        let mut since_best = 0;
        for epoch in 0..settings.max_epochs {
            rng.shuffle(&mut order);
            for batch in order.chunks(settings.batch_size) {
                let xb = xs.select(Axis(0), batch);
                let yb: Vec<f32> = batch.iter().map(|&i| train.y[i]).collect();
                let g = model.gradients(xb.view(), &yb, threads);
                if !g.loss.is_finite() {
                    return Err(TrainError::Diverged(g.loss));
                }
                adam.step(&mut model.layers, &g, batch.len());
            }
            model.epochs = epoch + 1;
            if valid.rows() == 0 {
                model.best_epochs = model.epochs;
                continue;
            }
            let loss = model.loss(xv.view(), &valid.y);
            if loss < best.0 - 1e-6 {
                best = (loss, model.layers.clone());
                model.best_epochs = epoch + 1;
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= settings.patience.max(1) {
                    break;
                }
            }
        }
        if best.0.is_finite() {
            model.layers = best.1;
        }
        Ok(model)
    }

    fn standardise(&self, x: &[f32], rows: usize) -> Array2<f32> {
        let f = self.features();
        let mut a = Array2::from_shape_vec((rows, f), x.to_vec())
            .unwrap_or_else(|_| Array2::zeros((rows, f)));
        a -= &self.mean;
        a *= &self.inv_std;
        a
    }

    /// Pre-activations of every layer, the last one being the scores.
    fn forward(&self, x: ArrayView2<f32>) -> Vec<Array2<f32>> {
        let mut acts = Vec::with_capacity(self.layers.len() + 1);
        let mut a = x.to_owned();
        for (i, l) in self.layers.iter().enumerate() {
            let mut z = a.dot(&l.w);
            z += &l.b;
            acts.push(a);
            if i + 1 < self.layers.len() {
                z.mapv_inplace(|v| v.max(0.0));
            }
            a = z;
        }
        acts.push(a);
        acts
    }

    fn head(&self, scores: &mut Array2<f32>) {
        if let Task::Classification { .. } = self.task {
            for mut row in scores.rows_mut() {
                let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                row.mapv_inplace(|v| (v - max).exp());
                let sum = row.sum();
                row /= sum;
            }
        }
    }

    /// Loss summed over rows, and the output gradient per row.
    fn loss_and_delta(&self, out: &Array2<f32>, y: &[f32]) -> (f64, Array2<f32>) {
        let mut delta = out.clone();
        let mut loss = 0.0;
        for (i, mut row) in delta.rows_mut().into_iter().enumerate() {
            match self.task {
                Task::Classification { .. } => {
                    let k = y[i] as usize;
                    loss -= f64::from(row[k]).max(1e-15).ln();
                    row[k] -= 1.0;
                }
                Task::Regression => {
                    let d = row[0] - y[i];
                    loss += 0.5 * f64::from(d * d);
                    row[0] = d;
                }
            }
        }
        (loss, delta)
    }

    fn loss(&self, x: ArrayView2<f32>, y: &[f32]) -> f64 {
        let mut acts = self.forward(x);
        let mut out = acts.pop().unwrap_or_default();
        self.head(&mut out);
        self.loss_and_delta(&out, y).0 / y.len().max(1) as f64
    }

    fn gradients(&self, x: ArrayView2<f32>, y: &[f32], threads: usize) -> Grads {
        let rows = y.len();
        let chunks = threads.min(rows / MIN_ROWS_PER_THREAD).max(1);
        if chunks == 1 {
            return self.chunk_gradients(x, y);
        }
        let per = rows.div_ceil(chunks);
        let parts: Vec<Grads> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..chunks)
                .map(|c| {
                    let (lo, hi) = (c * per, ((c + 1) * per).min(rows));
                    let xc = x.slice_axis(Axis(0), ndarray::Slice::from(lo..hi));
                    let yc = &y[lo..hi];
                    scope.spawn(move || self.chunk_gradients(xc, yc))
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let mut total: Option<Grads> = None;
        for p in parts {
            total = Some(match total {
                None => p,
                Some(mut t) => {
                    for (a, b) in t.w.iter_mut().zip(&p.w) {
                        *a += b;
                    }
                    for (a, b) in t.b.iter_mut().zip(&p.b) {
                        *a += b;
                    }
                    t.loss += p.loss;
                    t
                }
            });
        }
        total.unwrap_or_else(|| self.chunk_gradients(x, y))
    }

    /// Gradients summed (not averaged) over the rows of one chunk.
    fn chunk_gradients(&self, x: ArrayView2<f32>, y: &[f32]) -> Grads {
        let mut acts = self.forward(x);
        let mut out = acts.pop().unwrap_or_default();
        self.head(&mut out);
        let (loss, mut delta) = self.loss_and_delta(&out, y);
        let n = self.layers.len();
        let mut w = vec![Array2::zeros((0, 0)); n];
        let mut b = vec![Array1::zeros(0); n];
        for i in (0..n).rev() {
            w[i] = acts[i].t().dot(&delta);
            b[i] = delta.sum_axis(Axis(0));
            if i > 0 {
                let mut back = delta.dot(&self.layers[i].w.t());
                // ReLU: the activation is positive exactly where it passed.
                ndarray::Zip::from(&mut back)
                    .and(&acts[i])
                    .for_each(|d, &a| {
                        if a <= 0.0 {
                            *d = 0.0;
                        }
                    });
                delta = back;
            }
        }
        Grads { w, b, loss }
    }

    /// The forward pass on raw (unstandardised) rows: probabilities or
    /// values, `rows × task.width()`.
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        let rows = x.len() / self.features().max(1);
        let xs = self.standardise(x, rows);
        let mut acts = self.forward(xs.view());
        let mut out = acts.pop().unwrap_or_default();
        self.head(&mut out);
        out.iter().copied().collect()
    }

    /// Sub → Mul (standardisation) → (Gemm → Relu)* → Gemm → Softmax.
    pub fn to_onnx(
        &self,
        interface: &Interface,
        version: u64,
        metadata: &[(String, String)],
    ) -> Vec<u8> {
        let f = self.features();
        let mut g = GraphBuilder::new("quiver_mlp");
        g.input(&interface.input, proto::FLOAT, &[Dim::Batch, Dim::Fixed(f)]);
        let mean = g.constant_f32("mean", &[f], self.mean.as_slice().unwrap_or(&[]));
        let inv = g.constant_f32("inv_std", &[f], self.inv_std.as_slice().unwrap_or(&[]));
        g.node("Sub", &[&interface.input, &mean], &["centred"], vec![]);
        g.node("Mul", &["centred", &inv], &["h0"], vec![]);
        let mut prev = "h0".to_string();
        for (i, l) in self.layers.iter().enumerate() {
            let (fi, fo) = l.w.dim();
            let w: Vec<f32> = l.w.iter().copied().collect();
            let wn = g.constant_f32(&format!("w{i}"), &[fi, fo], &w);
            let bn = g.constant_f32(&format!("b{i}"), &[fo], &l.b.to_vec());
            let z = format!("z{}", i + 1);
            g.node(
                "Gemm",
                &[&prev, &wn, &bn],
                &[&z],
                vec![attr_int("transB", 0)],
            );
            prev = if i + 1 < self.layers.len() {
                let h = format!("h{}", i + 1);
                g.node("Relu", &[&z], &[&h], vec![]);
                h
            } else {
                z
            };
        }
        export_head(&mut g, self.task, interface, &prev, true);
        g.finish(version, metadata)
    }
}

/// Per-feature mean and 1/std; a constant feature gets 1/std = 1.
fn standardisation(data: &Dataset) -> (Array1<f32>, Array1<f32>) {
    let f = data.features;
    let n = data.rows().max(1) as f64;
    let mut mean = vec![0.0f64; f];
    for r in 0..data.rows() {
        for (m, &v) in mean.iter_mut().zip(data.row(r)) {
            *m += f64::from(v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0f64; f];
    for r in 0..data.rows() {
        for ((s, &v), m) in var.iter_mut().zip(data.row(r)).zip(&mean) {
            *s += (f64::from(v) - m).powi(2);
        }
    }
    let inv = var
        .iter()
        .map(|s| {
            let sd = (s / n).sqrt();
            if sd > 1e-12 { (1.0 / sd) as f32 } else { 1.0 }
        })
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), inv)
}

struct Adam {
    lr: f32,
    t: i32,
    m: Vec<(Array2<f32>, Array1<f32>)>,
    v: Vec<(Array2<f32>, Array1<f32>)>,
}

impl Adam {
    const B1: f32 = 0.9;
    const B2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    fn new(layers: &[Layer], lr: f32) -> Self {
        let zeros: Vec<_> = layers
            .iter()
            .map(|l| (Array2::zeros(l.w.dim()), Array1::zeros(l.b.len())))
            .collect();
        Adam {
            lr,
            t: 0,
            m: zeros.clone(),
            v: zeros,
        }
    }

    fn step(&mut self, layers: &mut [Layer], g: &Grads, rows: usize) {
        self.t += 1;
        let scale = 1.0 / rows.max(1) as f32;
        let c1 = 1.0 - Self::B1.powi(self.t);
        let c2 = 1.0 - Self::B2.powi(self.t);
        let lr = self.lr;
        let update = |p: &mut f32, g: f32, m: &mut f32, v: &mut f32| {
            let g = g * scale;
            *m = Self::B1 * *m + (1.0 - Self::B1) * g;
            *v = Self::B2 * *v + (1.0 - Self::B2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + Self::EPS);
        };
        for (i, l) in layers.iter_mut().enumerate() {
            let (mw, mb) = &mut self.m[i];
            let (vw, vb) = &mut self.v[i];
            ndarray::Zip::from(&mut l.w)
                .and(&g.w[i])
                .and(mw)
                .and(vw)
                .for_each(|p, &g, m, v| update(p, g, m, v));
            ndarray::Zip::from(&mut l.b)
                .and(&g.b[i])
                .and(mb)
                .and(vb)
                .for_each(|p, &g, m, v| update(p, g, m, v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::metrics::evaluate;

    /// Two Gaussian-ish blobs separated along a hyperplane.
    pub fn blobs(rows: usize, features: usize, seed: u64) -> Dataset {
        let mut rng = Rng::new(seed);
        let mut d = Dataset::new(features);
        for _ in 0..rows {
            let row: Vec<f32> = (0..features)
                .map(|_| (rng.next_f64() * 4.0 - 2.0) as f32 * 10.0 + 5.0)
                .collect();
            let s: f32 = row.iter().take(3).sum::<f32>() - 15.0;
            d.push(&row, f32::from(u8::from(s > 0.0)));
        }
        d
    }

    #[test]
    fn learns_a_hyperplane_and_is_reproducible() {
        let data = blobs(4000, 8, 1);
        let task = Task::Classification { classes: 2 };
        let settings = MlpSettings {
            hidden: vec![16],
            max_epochs: 20,
            ..MlpSettings::default()
        };
        let a = Mlp::train(task, &data, &settings, 7).unwrap();
        let m = evaluate(task, &a.predict(&data.x), &data.y);
        assert!(m["accuracy"] > 0.95, "{m:?}");
        let b = Mlp::train(task, &data, &settings, 7).unwrap();
        assert_eq!(a.predict(&data.x[..80]), b.predict(&data.x[..80]));
    }

    #[test]
    fn zero_hidden_layers_is_linear_regression() {
        let mut rng = Rng::new(3);
        let mut d = Dataset::new(2);
        for _ in 0..2000 {
            let (a, b) = (rng.next_f64() as f32, rng.next_f64() as f32 * 100.0);
            d.push(&[a, b], 3.0 * a - 0.02 * b + 1.0);
        }
        let settings = MlpSettings {
            hidden: vec![],
            max_epochs: 60,
            patience: 60,
            ..MlpSettings::default()
        };
        let m = Mlp::train(Task::Regression, &d, &settings, 1).unwrap();
        let e = evaluate(Task::Regression, &m.predict(&d.x), &d.y);
        assert!(e["rmse"] < 0.05, "{e:?}");
    }
}
