//! Where records come from. [`RecordSource`] is the seam a Kafka consumer
//! slots into; [`LocalLog`] reads the gateway's local log directories
//! (`<log_dir>/<topic>/`) through `quiver_contract::segments`.
//!
//! A source's position is an opaque token (`segment:offset` here; a Kafka
//! consumer would write `partition=offset,…`). The loop persists it with
//! the state it produced and seeks back to it on start, which is the
//! commit-after-processing contract.

use std::path::{Path, PathBuf};

use quiver_contract::segments::{self, LogPosition};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid position '{0}' (want segment:offset)")]
    Position(String),
}

/// One record and the position it starts at.
#[derive(Debug, Clone)]
pub struct Polled {
    pub at: String,
    pub bytes: Vec<u8>,
}

pub trait RecordSource: Send {
    /// The topic (or directory) name, for logs and lineage.
    fn name(&self) -> &str;
    /// Up to `max` records after the current position; advances it.
    fn poll(&mut self, max: usize) -> Result<Vec<Polled>, SourceError>;
    /// Where the next poll starts, as a token for [`seek`](Self::seek).
    fn position(&self) -> String;
    fn seek(&mut self, token: &str) -> Result<(), SourceError>;
}

/// One topic of the local log.
pub struct LocalLog {
    name: String,
    dir: PathBuf,
    next: LogPosition,
    /// Records lost to retention or torn lines, for the log.
    pub skipped: u64,
}

impl LocalLog {
    pub fn open(log_dir: &Path, topic: &str) -> Self {
        LocalLog {
            name: topic.to_string(),
            dir: segments::topic_dir(log_dir, topic),
            next: LogPosition::default(),
            skipped: 0,
        }
    }
}

impl RecordSource for LocalLog {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self, max: usize) -> Result<Vec<Polled>, SourceError> {
        let batch = segments::read_batch(&self.dir, self.next, max, 8 << 20).map_err(|source| {
            SourceError::Io {
                path: self.dir.display().to_string(),
                source,
            }
        })?;
        if batch.gap || batch.torn > 0 {
            self.skipped += batch.torn + u64::from(batch.gap);
            tracing::warn!(topic = %self.name, torn = batch.torn, gap = batch.gap, "records lost before they were read");
        }
        self.next = batch.next;
        Ok(batch
            .records
            .into_iter()
            .map(|(at, bytes)| Polled {
                at: at.to_string(),
                bytes,
            })
            .collect())
    }

    fn position(&self) -> String {
        self.next.to_string()
    }

    fn seek(&mut self, token: &str) -> Result<(), SourceError> {
        self.next = parse_position(token)?;
        Ok(())
    }
}

pub fn parse_position(token: &str) -> Result<LogPosition, SourceError> {
    let bad = || SourceError::Position(token.to_string());
    let (s, o) = token.split_once(':').ok_or_else(bad)?;
    Ok(LogPosition {
        segment: s.parse().map_err(|_| bad())?,
        offset: o.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_contract::segments::SegmentWriter;

    #[test]
    fn resumes_from_a_sought_position() {
        let dir = std::env::temp_dir().join(format!("quiver-source-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = SegmentWriter::open(&dir.join("t"), 1 << 20).unwrap();
        for i in 0..5 {
            w.append(format!("{{\"n\":{i}}}").as_bytes()).unwrap();
        }
        w.flush().unwrap();
        let mut s = LocalLog::open(&dir, "t");
        assert_eq!(s.poll(2).unwrap().len(), 2);
        let token = s.position();
        assert_eq!(s.poll(10).unwrap().len(), 3);
        let mut again = LocalLog::open(&dir, "t");
        again.seek(&token).unwrap();
        let rest = again.poll(10).unwrap();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].bytes, b"{\"n\":2}");
        assert!(again.seek("nope").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
