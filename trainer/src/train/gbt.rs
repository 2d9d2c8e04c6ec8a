//! Gradient-boosted trees, XGBoost-style: features binned at quantiles,
//! trees grown depth-first on gradient/hessian histograms, second-order
//! leaf weights with L2 regularisation. Squared error for regressors,
//! logistic loss for two classes, softmax (one tree per class per round)
//! for more. Exported as an `ai.onnx.ml` `TreeEnsembleRegressor` giving
//! the raw scores (one target per output), then Sigmoid or Softmax.
//!
//! Written here rather than taken from `forust-ml`: the export needs the
//! exact split thresholds and leaf values in the form ONNX wants, and ~300
//! lines cost less build time than a dependency tree with its own rayon.
//! Histograms of one node are built on several threads by feature.

use serde::{Deserialize, Serialize};

use super::{Dataset, Task, TrainError, check_labels, export_head};
use crate::onnx::{
    Dim, GraphBuilder, Interface, attr_floats, attr_int, attr_ints, attr_string, attr_strings,
    proto,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GbtSettings {
    /// Boosting rounds (trees per output).
    pub rounds: usize,
    pub max_depth: usize,
    /// Shrinkage of each tree's leaf values.
    pub learning_rate: f32,
    /// L2 regularisation of leaf values.
    pub lambda: f32,
    /// Least hessian sum in a child.
    pub min_child_weight: f32,
    /// Quantile bins per feature (at most 256).
    pub bins: usize,
    /// Threads building histograms; 0 = all cores.
    pub threads: usize,
}

impl Default for GbtSettings {
    fn default() -> Self {
        GbtSettings {
            rounds: 100,
            max_depth: 5,
            learning_rate: 0.1,
            lambda: 1.0,
            min_child_weight: 1.0,
            bins: 64,
            threads: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// Rows with `x[feature] <= threshold` go left.
    Split {
        feature: usize,
        threshold: f32,
        left: usize,
        right: usize,
    },
    Leaf(f32),
}

/// A trained ensemble.
#[derive(Debug, Clone)]
pub struct Gbt {
    pub task: Task,
    pub features: usize,
    /// Scores per row before any tree: one per output.
    base: Vec<f32>,
    /// Round-major: tree `r * outputs + k` adds to output `k`.
    trees: Vec<Vec<Node>>,
}

/// Per-row gradient and hessian, and the rows' bins.
struct Work<'a> {
    bins: &'a [u8],
    features: usize,
    nbins: usize,
    grad: &'a [f32],
    hess: &'a [f32],
    thresholds: &'a [Vec<f32>],
    settings: &'a GbtSettings,
    threads: usize,
}

impl Gbt {
    fn outputs(task: Task) -> usize {
        match task {
            Task::Classification { classes } if classes > 2 => classes,
            _ => 1,
        }
    }

    pub fn train(task: Task, data: &Dataset, settings: &GbtSettings) -> Result<Gbt, TrainError> {
        check_labels(task, data)?;
        if settings.bins < 2 || settings.bins > 256 || settings.max_depth == 0 {
            return Err(TrainError::Settings(
                "bins must lie in 2..=256 and max_depth be positive".into(),
            ));
        }
        let (n, f) = (data.rows(), data.features);
        let k = Self::outputs(task);
        let thresholds: Vec<Vec<f32>> =
            (0..f).map(|j| cut_points(data, j, settings.bins)).collect();
        let mut bins = vec![0u8; n * f];
        for r in 0..n {
            for (j, &v) in data.row(r).iter().enumerate() {
                bins[r * f + j] = bin_of(&thresholds[j], v);
            }
        }
        let base = match task {
            Task::Regression => {
                vec![(data.y.iter().map(|&y| f64::from(y)).sum::<f64>() / n as f64) as f32]
            }
            Task::Classification { classes: 2 } => {
                let p = (data.y.iter().map(|&y| f64::from(y)).sum::<f64>() / n as f64)
                    .clamp(1e-6, 1.0 - 1e-6);
                vec![(p / (1.0 - p)).ln() as f32]
            }
            Task::Classification { classes } => vec![0.0; classes],
        };
        let threads = super::threads(settings.threads);
        let mut scores: Vec<f32> = (0..n).flat_map(|_| base.iter().copied()).collect();
        let mut model = Gbt {
            task,
            features: f,
            base,
            trees: Vec::new(),
        };
        let (mut grad, mut hess) = (vec![0f32; n], vec![0f32; n]);
        for _ in 0..settings.rounds {
            let round_scores = scores.clone();
            for out in 0..k {
                for r in 0..n {
                    let (g, h) = gradient(task, &round_scores[r * k..(r + 1) * k], out, data.y[r]);
                    grad[r] = g;
                    hess[r] = h;
                }
                let work = Work {
                    bins: &bins,
                    features: f,
                    nbins: settings.bins,
                    grad: &grad,
                    hess: &hess,
                    thresholds: &thresholds,
                    settings,
                    threads,
                };
                let mut nodes = Vec::new();
                let rows: Vec<u32> = (0..n as u32).collect();
                grow(&work, rows, 0, &mut nodes);
                for r in 0..n {
                    scores[r * k + out] += leaf_value(&nodes, data.row(r));
                }
                model.trees.push(nodes);
            }
        }
        Ok(model)
    }

    /// Probabilities (classifiers) or values, `rows × task.width()`.
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        let k = Self::outputs(self.task);
        let rows = x.len() / self.features.max(1);
        let mut out = Vec::with_capacity(rows * self.task.width());
        for r in 0..rows {
            let row = &x[r * self.features..(r + 1) * self.features];
            let mut s = self.base.clone();
            for (t, tree) in self.trees.iter().enumerate() {
                s[t % k] += leaf_value(tree, row);
            }
            match self.task {
                Task::Regression => out.push(s[0]),
                Task::Classification { classes: 2 } => {
                    let p = 1.0 / (1.0 + (-s[0]).exp());
                    out.extend([1.0 - p, p]);
                }
                Task::Classification { .. } => out.extend(softmax(&s)),
            }
        }
        out
    }

    pub fn to_onnx(
        &self,
        interface: &Interface,
        version: u64,
        metadata: &[(String, String)],
    ) -> Vec<u8> {
        let k = Self::outputs(self.task);
        let mut g = GraphBuilder::new("quiver_gbt");
        g.input(
            &interface.input,
            proto::FLOAT,
            &[Dim::Batch, Dim::Fixed(self.features)],
        );
        let mut a = TreeAttrs::default();
        for (t, tree) in self.trees.iter().enumerate() {
            for (id, node) in tree.iter().enumerate() {
                a.tree_ids.push(t as i64);
                a.node_ids.push(id as i64);
                match *node {
                    Node::Split {
                        feature,
                        threshold,
                        left,
                        right,
                    } => {
                        a.feature_ids.push(feature as i64);
                        a.values.push(threshold);
                        a.modes.push("BRANCH_LEQ");
                        a.true_ids.push(left as i64);
                        a.false_ids.push(right as i64);
                    }
                    Node::Leaf(v) => {
                        a.feature_ids.push(0);
                        a.values.push(0.0);
                        a.modes.push("LEAF");
                        a.true_ids.push(0);
                        a.false_ids.push(0);
                        a.leaf_tree_ids.push(t as i64);
                        a.leaf_node_ids.push(id as i64);
                        a.leaf_targets.push((t % k) as i64);
                        a.leaf_weights.push(v);
                    }
                }
            }
        }
        let nodes = vec![
            attr_ints("nodes_treeids", a.tree_ids),
            attr_ints("nodes_nodeids", a.node_ids),
            attr_ints("nodes_featureids", a.feature_ids),
            attr_floats("nodes_values", a.values),
            attr_strings("nodes_modes", &a.modes),
            attr_ints("nodes_truenodeids", a.true_ids),
            attr_ints("nodes_falsenodeids", a.false_ids),
        ];
        let mut attrs = nodes;
        attrs.extend([
            attr_ints("target_treeids", a.leaf_tree_ids),
            attr_ints("target_nodeids", a.leaf_node_ids),
            attr_ints("target_ids", a.leaf_targets),
            attr_floats("target_weights", a.leaf_weights),
            attr_int("n_targets", k as i64),
            attr_floats("base_values", self.base.clone()),
            attr_string("aggregate_function", "SUM"),
            attr_string("post_transform", "NONE"),
        ]);
        // Raw scores from the regressor, probabilities from standard ops:
        // exact, where the classifier's post-transforms differ between
        // ONNX Runtime releases for two classes.
        g.ml_node(
            "TreeEnsembleRegressor",
            &[&interface.input],
            &["scores"],
            attrs,
        );
        match self.task {
            Task::Classification { classes: 2 } => {
                let one = g.constant_f32("one", &[1], &[1.0]);
                g.node("Sigmoid", &["scores"], &["p1"], vec![]);
                g.node("Sub", &[&one, "p1"], &["p0"], vec![]);
                g.node(
                    "Concat",
                    &["p0", "p1"],
                    &["probs2"],
                    vec![attr_int("axis", 1)],
                );
                export_head(&mut g, self.task, interface, "probs2", false);
            }
            Task::Classification { .. } => {
                export_head(&mut g, self.task, interface, "scores", true)
            }
            Task::Regression => export_head(&mut g, self.task, interface, "scores", false),
        }
        g.finish(version, metadata)
    }
}

#[derive(Default)]
struct TreeAttrs {
    tree_ids: Vec<i64>,
    node_ids: Vec<i64>,
    feature_ids: Vec<i64>,
    values: Vec<f32>,
    modes: Vec<&'static str>,
    true_ids: Vec<i64>,
    false_ids: Vec<i64>,
    leaf_tree_ids: Vec<i64>,
    leaf_node_ids: Vec<i64>,
    leaf_targets: Vec<i64>,
    leaf_weights: Vec<f32>,
}

fn softmax(s: &[f32]) -> Vec<f32> {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let e: Vec<f32> = s.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

fn gradient(task: Task, s: &[f32], out: usize, y: f32) -> (f32, f32) {
    match task {
        Task::Regression => (s[0] - y, 1.0),
        Task::Classification { classes: 2 } => {
            let p = 1.0 / (1.0 + (-s[0]).exp());
            (p - y, (p * (1.0 - p)).max(1e-6))
        }
        Task::Classification { .. } => {
            let p = softmax(s)[out];
            let t = f32::from(u8::from(y as usize == out));
            (p - t, (p * (1.0 - p)).max(1e-6))
        }
    }
}

/// Up to `bins - 1` distinct cut points at quantiles of feature `j`.
fn cut_points(data: &Dataset, j: usize, bins: usize) -> Vec<f32> {
    let n = data.rows();
    let step = (n / 20_000).max(1);
    let mut v: Vec<f32> = (0..n)
        .step_by(step)
        .map(|r| data.row(r)[j])
        .filter(|v| v.is_finite())
        .collect();
    v.sort_by(f32::total_cmp);
    let mut cuts: Vec<f32> = (1..bins)
        .filter_map(|q| v.get(q * v.len() / bins).copied())
        .collect();
    cuts.dedup();
    // The largest value needs no cut: everything is below it.
    if cuts.last() == v.last() {
        cuts.pop();
    }
    cuts
}

/// The bin of `v`: the first cut it does not exceed, else the last bin.
fn bin_of(cuts: &[f32], v: f32) -> u8 {
    cuts.partition_point(|&c| c < v) as u8
}

fn leaf_value(tree: &[Node], row: &[f32]) -> f32 {
    let mut i = 0;
    loop {
        match tree.get(i) {
            Some(&Node::Split {
                feature,
                threshold,
                left,
                right,
            }) => {
                i = if row[feature] <= threshold {
                    left
                } else {
                    right
                };
            }
            Some(&Node::Leaf(v)) => return v,
            None => return 0.0,
        }
    }
}

/// Gradient and hessian sums per bin for features `from..to`.
fn histograms(w: &Work, rows: &[u32], from: usize, to: usize) -> Vec<(f64, f64)> {
    let mut h = vec![(0.0f64, 0.0f64); (to - from) * w.nbins];
    for &r in rows {
        let r = r as usize;
        let (g, hs) = (f64::from(w.grad[r]), f64::from(w.hess[r]));
        let bins = &w.bins[r * w.features + from..r * w.features + to];
        for (j, &b) in bins.iter().enumerate() {
            let cell = &mut h[j * w.nbins + usize::from(b)];
            cell.0 += g;
            cell.1 += hs;
        }
    }
    h
}

/// Grows the subtree for `rows` into `nodes`; returns its index.
fn grow(w: &Work, rows: Vec<u32>, depth: usize, nodes: &mut Vec<Node>) -> usize {
    let lambda = f64::from(w.settings.lambda);
    let (g, h) = rows.iter().fold((0.0, 0.0), |(g, h), &r| {
        (
            g + f64::from(w.grad[r as usize]),
            h + f64::from(w.hess[r as usize]),
        )
    });
    let leaf = (-g / (h + lambda)) as f32 * w.settings.learning_rate;
    let index = nodes.len();
    nodes.push(Node::Leaf(leaf));
    if depth >= w.settings.max_depth || rows.len() < 2 {
        return index;
    }
    let hist = if w.threads > 1 && rows.len() >= 4096 && w.features > 1 {
        let per = w.features.div_ceil(w.threads);
        std::thread::scope(|scope| {
            let parts: Vec<_> = (0..w.features)
                .step_by(per)
                .map(|from| {
                    let to = (from + per).min(w.features);
                    let rows = &rows;
                    scope.spawn(move || histograms(w, rows, from, to))
                })
                .collect();
            parts
                .into_iter()
                .filter_map(|p| p.join().ok())
                .flatten()
                .collect::<Vec<_>>()
        })
    } else {
        histograms(w, &rows, 0, w.features)
    };
    let parent = g * g / (h + lambda);
    let mcw = f64::from(w.settings.min_child_weight);
    let mut best: Option<(f64, usize, usize)> = None;
    for j in 0..w.features {
        let (mut gl, mut hl) = (0.0, 0.0);
        for b in 0..w.thresholds[j].len() {
            let (cg, ch) = hist[j * w.nbins + b];
            gl += cg;
            hl += ch;
            let (gr, hr) = (g - gl, h - hl);
            if hl < mcw || hr < mcw {
                continue;
            }
            let gain = gl * gl / (hl + lambda) + gr * gr / (hr + lambda) - parent;
            if gain > 1e-9 && best.is_none_or(|(bg, _, _)| gain > bg) {
                best = Some((gain, j, b));
            }
        }
    }
    let Some((_, feature, bin)) = best else {
        return index;
    };
    let (left_rows, right_rows): (Vec<u32>, Vec<u32>) = rows
        .into_iter()
        .partition(|&r| usize::from(w.bins[r as usize * w.features + feature]) <= bin);
    let left = grow(w, left_rows, depth + 1, nodes);
    let right = grow(w, right_rows, depth + 1, nodes);
    nodes[index] = Node::Split {
        feature,
        threshold: w.thresholds[feature][bin],
        left,
        right,
    };
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::metrics::evaluate;
    use crate::train::rng::Rng;

    #[test]
    fn boosts_a_nonlinear_boundary_and_a_regression() {
        let mut rng = Rng::new(5);
        let mut c = Dataset::new(3);
        let mut r = Dataset::new(3);
        for _ in 0..3000 {
            let x: Vec<f32> = (0..3).map(|_| rng.next_f64() as f32).collect();
            let inside = (x[0] - 0.5).powi(2) + (x[1] - 0.5).powi(2) < 0.1;
            c.push(&x, f32::from(u8::from(inside)));
            r.push(&x, (x[0] * 6.0).sin() + x[2]);
        }
        let settings = GbtSettings {
            rounds: 40,
            ..GbtSettings::default()
        };
        let task = Task::Classification { classes: 2 };
        let m = Gbt::train(task, &c, &settings).unwrap();
        let e = evaluate(task, &m.predict(&c.x), &c.y);
        assert!(e["accuracy"] > 0.95, "{e:?}");
        let m = Gbt::train(Task::Regression, &r, &settings).unwrap();
        let e = evaluate(Task::Regression, &m.predict(&r.x), &r.y);
        assert!(e["rmse"] < 0.1, "{e:?}");
    }

    #[test]
    fn bins_follow_cut_points() {
        assert_eq!(bin_of(&[1.0, 2.0], 0.5), 0);
        assert_eq!(bin_of(&[1.0, 2.0], 1.0), 0);
        assert_eq!(bin_of(&[1.0, 2.0], 1.5), 1);
        assert_eq!(bin_of(&[1.0, 2.0], 9.0), 2);
    }
}
