//! What a stream run leaves in its output directory, read back by
//! `stream-report`:
//!
//! - `run.json`: the options, the start time, counts and throughput;
//! - `predictions.csv`: one line per labelled prediction
//!   (`seq,answered_s,labelled_s,version,p,label`);
//! - `events.jsonl`: drift onsets and the gateway's rollout decisions,
//!   one [`Event`] per line.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::events::Event;
use super::score::{Scored, Totals};

pub const RUN: &str = "run.json";
pub const PREDICTIONS: &str = "predictions.csv";
pub const EVENTS: &str = "events.jsonl";
const HEADER: &str = "seq,answered_s,labelled_s,version,p,label";

/// `run.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub stream: String,
    pub model: String,
    pub gateway: String,
    pub rate: f64,
    pub label_delay: String,
    /// Wall time of the start, ms since the Unix epoch: seconds in
    /// `predictions.csv` count from here.
    pub start_ms: u64,
    pub seconds: f64,
    pub rows_sent: u64,
    pub answered: u64,
    /// Failed infer requests by HTTP status or `io`.
    pub errors: BTreeMap<String, u64>,
    /// Answers per second over the run.
    pub achieved_rate: f64,
    pub labels_sent: u64,
    pub labels_accepted: u64,
    pub feedback_errors: u64,
    pub overall: Totals,
    pub by_version: BTreeMap<u64, Totals>,
    /// The stream's documented onsets: row, and seconds into the run when
    /// that row was sent.
    pub onsets: Vec<(usize, f64, String)>,
}

/// Writes the run's files as it goes.
pub struct Writer {
    dir: PathBuf,
    predictions: BufWriter<File>,
    events: BufWriter<File>,
}

impl Writer {
    pub fn create(dir: &Path) -> Result<Writer> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let open = |name: &str| -> Result<BufWriter<File>> {
            let p = dir.join(name);
            Ok(BufWriter::new(
                File::create(&p).with_context(|| format!("creating {}", p.display()))?,
            ))
        };
        let mut predictions = open(PREDICTIONS)?;
        writeln!(predictions, "{HEADER}")?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            predictions,
            events: open(EVENTS)?,
        })
    }

    pub fn scored(&mut self, s: &Scored) -> Result<()> {
        writeln!(
            self.predictions,
            "{},{:.3},{:.3},{},{:.6},{}",
            s.seq, s.answered_s, s.labelled_s, s.version, s.p, s.label
        )?;
        Ok(())
    }

    pub fn event(&mut self, e: &Event) -> Result<()> {
        serde_json::to_writer(&mut self.events, e)?;
        writeln!(self.events)?;
        self.events.flush()?;
        Ok(())
    }

    pub fn finish(mut self, info: &RunInfo) -> Result<()> {
        self.predictions.flush()?;
        self.events.flush()?;
        std::fs::write(self.dir.join(RUN), serde_json::to_vec_pretty(info)?)?;
        Ok(())
    }
}

pub fn read_run(dir: &Path) -> Result<RunInfo> {
    let p = dir.join(RUN);
    serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
        .with_context(|| format!("parsing {}", p.display()))
}

pub fn read_predictions(dir: &Path) -> Result<Vec<Scored>> {
    let p = dir.join(PREDICTIONS);
    let file = File::open(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate().skip(1) {
        let line = line?;
        let c: Vec<&str> = line.split(',').collect();
        let parsed = (|| -> Option<Scored> {
            Some(Scored {
                seq: c.first()?.parse().ok()?,
                answered_s: c.get(1)?.parse().ok()?,
                labelled_s: c.get(2)?.parse().ok()?,
                version: c.get(3)?.parse().ok()?,
                p: c.get(4)?.parse().ok()?,
                label: c.get(5)?.parse().ok()?,
            })
        })();
        out.push(parsed.with_context(|| format!("{} line {}: '{line}'", p.display(), i + 1))?);
    }
    out.sort_by_key(|s| s.seq);
    Ok(out)
}

/// Events from a JSON-lines file: ours ([`Event`]) or, with `parse`, any
/// other shape (the trainer's log). Unreadable lines are skipped.
pub fn read_events(path: &Path, parse: impl Fn(&str) -> Option<Event>) -> Result<Vec<Event>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().filter_map(parse).collect())
}
