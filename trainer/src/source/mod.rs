//! Where records come from, behind [`RecordSource`]: [`LocalLog`] reads the
//! gateway's local log directories (`<log_dir>/<topic>/`) through
//! `quiver_contract::segments`; [`kafka::KafkaSource`] consumes a topic
//! when `[kafka] brokers` is set.
//!
//! A source's position is an opaque token (`segment:offset` for the local
//! log, `partition=offset,…` for Kafka). The loop persists it with the
//! state it produced and seeks back to it on start, and only then commits
//! it to the source: the commit-after-processing contract.

pub mod kafka;

use std::path::{Path, PathBuf};

use quiver_contract::segments::{self, LogPosition};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid position '{0}' (want segment:offset or partition=offset,…)")]
    Position(String),
    #[error("kafka: {0}")]
    Kafka(String),
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
    /// Tells the source the current position is persisted (the state file
    /// holding everything before it has been written). Kafka commits the
    /// consumer group's offsets here; the local log has nothing to do.
    fn commit(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
    /// Records not yet read, per partition (Kafka: the partitions' high
    /// watermarks, asked of the broker every few seconds, minus the next
    /// offsets); empty when it cannot tell.
    fn lag(&mut self) -> Vec<(i32, u64)> {
        Vec::new()
    }
}

/// The source for `topic`: Kafka when brokers are configured, else the
/// local log.
pub fn open(config: &Config, topic: &str) -> Result<Box<dyn RecordSource>, SourceError> {
    match config.kafka.as_ref().filter(|k| !k.brokers.is_empty()) {
        Some(k) => Ok(Box::new(kafka::KafkaSource::open(k, topic)?)),
        None => Ok(Box::new(LocalLog::open(&config.log_dir, topic))),
    }
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
