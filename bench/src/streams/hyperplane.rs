//! The rotating hyperplane (Hulten et al. 2001, as in MOA and river): `d`
//! features uniform in [0, 1); the label is 1 when `Σ wᵢ (xᵢ − ½) > 0`,
//! flipped with probability `noise`. The weights define the concept:
//!
//! - rows `0 .. sudden_at`: concept A, random weights;
//! - from `sudden_at`: concept B, A with the first half of its weights
//!   negated, at once (sudden drift; a model of A is near chance on B);
//! - from `gradual_at`, over `gradual_width` rows: the weights move linearly
//!   from B to C, A with every other weight negated (gradual drift), then
//!   stay at C.
//!
//! Stream time is the row index; a label is known `label_delay` rows later.

use super::{Onset, Row, Stream};
use quiver_trainer::train::rng::Rng;

pub const NAME: &str = "hyperplane";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub features: usize,
    pub rows: usize,
    pub noise: f64,
    pub sudden_at: usize,
    pub gradual_at: usize,
    pub gradual_width: usize,
    pub label_delay: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            features: 10,
            rows: 60_000,
            noise: 0.05,
            sudden_at: 20_000,
            gradual_at: 40_000,
            gradual_width: 10_000,
            label_delay: 200,
        }
    }
}

impl Config {
    /// The three concepts' weights: A, B, C.
    fn concepts(&self, rng: &mut Rng) -> [Vec<f64>; 3] {
        let a: Vec<f64> = (0..self.features)
            .map(|_| {
                let w = 0.2 + 0.8 * rng.next_f64();
                if rng.next_f64() < 0.5 { -w } else { w }
            })
            .collect();
        let half = self.features / 2;
        let b = a
            .iter()
            .enumerate()
            .map(|(i, w)| if i < half { -w } else { *w })
            .collect();
        let c = a
            .iter()
            .enumerate()
            .map(|(i, w)| if i % 2 == 0 { -w } else { *w })
            .collect();
        [a, b, c]
    }

    /// The weights in force at `row`.
    fn weights(&self, row: usize, [a, b, c]: &[Vec<f64>; 3]) -> Vec<f64> {
        if row < self.sudden_at {
            return a.clone();
        }
        if row < self.gradual_at {
            return b.clone();
        }
        let t = ((row - self.gradual_at) as f64 / self.gradual_width.max(1) as f64).min(1.0);
        b.iter()
            .zip(c)
            .map(|(b, c)| (1.0 - t) * b + t * c)
            .collect()
    }

    pub fn generate(&self, seed: u64) -> Stream {
        let mut rng = Rng::new(seed);
        let concepts = self.concepts(&mut rng);
        let rows = (0..self.rows)
            .map(|i| {
                let w = self.weights(i, &concepts);
                let features: Vec<f32> =
                    (0..self.features).map(|_| rng.next_f64() as f32).collect();
                let score: f64 = w
                    .iter()
                    .zip(&features)
                    .map(|(w, x)| w * (f64::from(*x) - 0.5))
                    .sum();
                let clean = u8::from(score > 0.0);
                let label = if rng.next_f64() < self.noise {
                    1 - clean
                } else {
                    clean
                };
                Row {
                    time: i as f64,
                    label_time: (i + self.label_delay) as f64,
                    features,
                    label,
                }
            })
            .collect();
        Stream {
            name: NAME.to_string(),
            feature_names: (0..self.features).map(|i| format!("x{i}")).collect(),
            rows,
            onsets: vec![
                Onset {
                    row: self.sudden_at,
                    width: 0,
                    label: "sudden drift".into(),
                },
                Onset {
                    row: self.gradual_at,
                    width: self.gradual_width,
                    label: "gradual drift".into(),
                },
            ],
            time_unit: "row".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Config {
        Config {
            rows: 6000,
            sudden_at: 2000,
            gradual_at: 4000,
            gradual_width: 1000,
            ..Config::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let a = small().generate(7);
        let b = small().generate(7);
        assert_eq!(a.rows, b.rows);
        assert_ne!(a.rows, small().generate(8).rows);
        assert_eq!(a.rows.len(), 6000);
        assert!(
            a.rows
                .iter()
                .all(|r| r.features.len() == 10 && r.label <= 1)
        );
        let p = a.positive_rate();
        assert!((0.4..0.6).contains(&p), "{p}");
    }

    /// The concept before the sudden drift labels the rows after it no
    /// better than a coin would, and each concept fits its own rows up to
    /// the noise.
    #[test]
    fn the_sudden_drift_breaks_the_old_concept() {
        let cfg = small();
        let s = cfg.generate(1);
        let concepts = cfg.concepts(&mut Rng::new(1));
        let agree = |range: std::ops::Range<usize>, w: &[f64]| {
            let n = range.len() as f64;
            s.rows[range]
                .iter()
                .filter(|r| {
                    let score: f64 = w
                        .iter()
                        .zip(&r.features)
                        .map(|(w, x)| w * (f64::from(*x) - 0.5))
                        .sum();
                    u8::from(score > 0.0) == r.label
                })
                .count() as f64
                / n
        };
        assert!(agree(0..2000, &concepts[0]) > 0.9);
        assert!(agree(2000..4000, &concepts[1]) > 0.9);
        assert!(agree(2000..4000, &concepts[0]) < 0.7);
        assert!(agree(5000..6000, &concepts[2]) > 0.9);
    }
}
