//! Training throughput, printed, never asserted (run with `--release
//! --ignored --nocapture`): the MLP 16→64→4 on 100k rows for 5 epochs, and
//! 100 trees of depth 5 on 100k×16 rows.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use quiver_trainer::train::gbt::{Gbt, GbtSettings};
use quiver_trainer::train::mlp::{Mlp, MlpSettings};
use quiver_trainer::train::rng::Rng;
use quiver_trainer::train::{Dataset, Task};

fn data(rows: usize) -> Dataset {
    let mut rng = Rng::new(1);
    let mut d = Dataset::new(16);
    for _ in 0..rows {
        let x: Vec<f32> = (0..16).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
        let s = x[0] + x[1] - x[2] * x[3];
        d.push(&x, ((s + 1.5).clamp(0.0, 3.99)) as u8 as f32);
    }
    d
}

#[test]
#[ignore = "a measurement, not a check"]
fn training_throughput() {
    let d = data(100_000);
    let task = Task::Classification { classes: 4 };
    for threads in [1, 0] {
        let s = MlpSettings {
            hidden: vec![64],
            max_epochs: 5,
            patience: 100,
            validation_fraction: 0.0,
            threads,
            ..MlpSettings::default()
        };
        let t = Instant::now();
        Mlp::train(task, &d, &s, 1).unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "mlp 16-64-4, 100k rows x 5 epochs, threads={threads}: {secs:.2} s, {:.0} examples/s",
            500_000.0 / secs
        );
    }
    let s = GbtSettings {
        rounds: 100,
        max_depth: 5,
        ..GbtSettings::default()
    };
    let t = Instant::now();
    Gbt::train(
        Task::Classification { classes: 2 },
        &{
            let mut b = d.clone();
            b.y.iter_mut()
                .for_each(|y| *y = f32::from(u8::from(*y >= 2.0)));
            b
        },
        &s,
    )
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "gbt 100 trees depth 5, 100k x 16: {secs:.2} s, {:.0} examples/s (rows x rounds / s)",
        100_000.0 * 100.0 / secs
    );
}
