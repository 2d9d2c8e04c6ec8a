//! Batchability from behaviour, not declarations. Converters declare
//! shapes the model does not have (onnxmltools declares LightGBM's `label`
//! as `[1]`, then answers 5 rows with 5 labels). At warm-up the loader
//! runs 1, 2 and 3 rows of zeros through one instance; [`not_following`]
//! reads from those runs whether every output follows the rows, and
//! [`served_shapes`] gives the shapes the model is then served and
//! described with. Pure functions of the runs, tested below.

use crate::model::TensorSpec;

/// The rows of the probe's runs; the first is the warm-up every model gets.
pub const ROWS: [i64; 3] = [1, 2, 3];

/// One run that succeeded: the rows sent, each output's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub rows: i64,
    pub shapes: Vec<Vec<i64>>,
}

/// Why the inputs alone rule batching out: requests are concatenated along
/// the first dimension, which ONNX Runtime refuses to vary when the graph
/// fixes it.
pub fn input_blocker(inputs: &[TensorSpec]) -> Option<String> {
    inputs.iter().find_map(|t| match t.shape.first() {
        None => Some(format!("input '{}' is a scalar", t.name)),
        Some(&d) if d != -1 => Some(format!(
            "input '{}' has a fixed first dimension {d}",
            t.name
        )),
        Some(_) => None,
    })
}

/// Why the outputs cannot be split back into requests: the first output
/// whose first dimension is not the rows of some run. `None` when every
/// output follows the rows in every run.
pub fn not_following(outputs: &[TensorSpec], runs: &[Run]) -> Option<String> {
    for run in runs {
        for (spec, shape) in outputs.iter().zip(&run.shapes) {
            match shape.first() {
                None => return Some(format!("output '{}' is a scalar", spec.name)),
                Some(&d) if d != run.rows => {
                    return Some(format!(
                        "output '{}' has {d} rows when the input has {}",
                        spec.name, run.rows
                    ));
                }
                Some(_) => {}
            }
        }
    }
    None
}

/// The outputs as served. When `batched`, the first dimension is -1;
/// otherwise, when the runs had different rows, it is what they agree on
/// (-1 if they differ). Other dimensions keep a declared -1 (the probe
/// holds every other input dimension at 1, so it learns nothing about
/// them); a declared size the runs contradict, or a wrong declared rank,
/// gives way to the runs' size (-1 where the runs differ).
pub fn served_shapes(declared: &[TensorSpec], runs: &[Run], batched: bool) -> Vec<TensorSpec> {
    declared
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let seen: Vec<&[i64]> = runs
                .iter()
                .filter_map(|r| r.shapes.get(i).map(Vec::as_slice))
                .collect();
            TensorSpec {
                shape: served_shape(&d.shape, &seen, batched),
                ..d.clone()
            }
        })
        .collect()
}

fn served_shape(declared: &[i64], seen: &[&[i64]], batched: bool) -> Vec<i64> {
    let Some(first) = seen.first() else {
        return declared.to_vec();
    };
    if seen.iter().any(|s| s.len() != first.len()) {
        return declared.to_vec();
    }
    let rank_fits = declared.len() == first.len();
    let rows_varied = seen.len() > 1;
    (0..first.len())
        .map(|k| {
            let agreed = seen.iter().all(|s| s[k] == first[k]);
            let kept_dynamic = rank_fits && declared[k] == -1 && !(k == 0 && rows_varied);
            if (batched && k == 0) || kept_dynamic || !agreed {
                -1
            } else {
                first[k]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fp32_spec as spec;

    fn runs(shapes: impl Fn(i64) -> Vec<Vec<i64>>) -> Vec<Run> {
        ROWS.iter()
            .map(|&rows| Run {
                rows,
                shapes: shapes(rows),
            })
            .collect()
    }

    #[test]
    fn a_declared_shape_that_lies_is_batched_with_the_real_shape() {
        // onnxmltools' LightGBM classifier: `label` declared [1].
        let declared = [spec("label", &[1]), spec("probabilities", &[-1, 3])];
        let runs = runs(|n| vec![vec![n], vec![n, 3]]);
        assert_eq!(not_following(&declared, &runs), None);
        let served = served_shapes(&declared, &runs, true);
        assert_eq!(served[0].shape, vec![-1]);
        assert_eq!(served[1].shape, vec![-1, 3]);
    }

    #[test]
    fn a_wrong_or_unknown_rank_takes_the_runs_shape() {
        let declared = [spec("p", &[]), spec("q", &[-1])];
        let runs = runs(|n| vec![vec![n, 4], vec![n, 2, n]]);
        assert_eq!(not_following(&declared, &runs), None);
        let served = served_shapes(&declared, &runs, true);
        assert_eq!(served[0].shape, vec![-1, 4]);
        // A dimension that varies with the rows is dynamic.
        assert_eq!(served[1].shape, vec![-1, 2, -1]);
    }

    #[test]
    fn an_output_that_does_not_follow_the_rows_is_named() {
        let declared = [spec("y", &[-1, 2]), spec("total", &[-1])];
        let runs = runs(|n| vec![vec![n, 2], vec![1]]);
        let why = not_following(&declared, &runs).unwrap();
        assert_eq!(why, "output 'total' has 1 rows when the input has 2");
        let served = served_shapes(&declared, &runs, false);
        assert_eq!(served[0].shape, vec![-1, 2]);
        // One row whatever the rows: that is its shape.
        assert_eq!(served[1].shape, vec![1]);
        let scalar = runs_of_one(vec![vec![]]);
        assert_eq!(
            not_following(&[spec("s", &[])], &scalar).unwrap(),
            "output 's' is a scalar"
        );
    }

    fn runs_of_one(shapes: Vec<Vec<i64>>) -> Vec<Run> {
        vec![Run { rows: 1, shapes }]
    }

    #[test]
    fn unbatched_models_keep_what_the_warm_up_confirms() {
        // `fixed`: [2, 3] everywhere, one run.
        let declared = [spec("sum", &[2, 3])];
        let one = runs_of_one(vec![vec![2, 3]]);
        assert_eq!(served_shapes(&declared, &one, false)[0].shape, vec![2, 3]);
        // A declared fixed dimension the run contradicts is replaced.
        let one = runs_of_one(vec![vec![2, 4]]);
        assert_eq!(served_shapes(&declared, &one, false)[0].shape, vec![2, 4]);
        // No run (never happens: the warm-up is one): the declaration.
        assert_eq!(served_shapes(&declared, &[], false)[0].shape, vec![2, 3]);
    }

    #[test]
    fn inputs_need_a_dynamic_first_dimension() {
        assert_eq!(
            input_blocker(&[spec("x", &[-1, 4]), spec("s", &[-1])]),
            None
        );
        assert_eq!(
            input_blocker(&[spec("x", &[-1, 4]), spec("a", &[2, 3])]).unwrap(),
            "input 'a' has a fixed first dimension 2"
        );
        assert_eq!(
            input_blocker(&[spec("k", &[])]).unwrap(),
            "input 'k' is a scalar"
        );
    }
}
