//! The disk spool of one topic: records the broker could not take yet, in
//! the order they were meant to go, replayed from a persisted cursor.
//!
//! The spool is a segment log (`quiver_contract::segments`) plus a
//! `cursor.json` naming the first record not yet confirmed by the broker.
//! The cursor moves only after the broker has acknowledged a whole replayed
//! batch, so a crash mid-replay re-sends (at-least-once), never skips.
//! Fully replayed segments are deleted.

use std::io;
use std::path::{Path, PathBuf};

use quiver_contract::layout::write_atomic;
use quiver_contract::segments::{self, LogPosition, SegmentWriter};

const CURSOR_FILE: &str = "cursor.json";

/// A batch read for replay.
pub struct Replay {
    pub records: Vec<Vec<u8>>,
    /// The cursor once every record of the batch is confirmed.
    pub next: LogPosition,
}

pub struct Spool {
    writer: SegmentWriter,
    cursor: LogPosition,
    cursor_path: PathBuf,
    max_bytes: u64,
    /// Set while pushes are refused at the cap (logged once per episode).
    full_warned: bool,
}

impl Spool {
    pub fn open(dir: &Path, segment_bytes: u64, max_bytes: u64) -> io::Result<Self> {
        let writer = SegmentWriter::open(dir, segment_bytes)?;
        let cursor_path = dir.join(CURSOR_FILE);
        let cursor = match std::fs::read(&cursor_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => LogPosition::default(),
            Err(e) => return Err(e),
        };
        Ok(Spool {
            writer,
            cursor,
            cursor_path,
            max_bytes,
            full_warned: false,
        })
    }

    /// Appends a record; `Ok(false)` when the spool is at its cap (the
    /// record is not written).
    pub fn push(&mut self, record: &[u8]) -> io::Result<bool> {
        if self.writer.total_bytes() + record.len() as u64 + 1 > self.max_bytes {
            if !self.full_warned {
                tracing::error!(
                    dir = %self.writer.dir().display(),
                    max_bytes = self.max_bytes,
                    "spool is full: new records are dropped until the broker takes the spooled ones"
                );
                self.full_warned = true;
            }
            return Ok(false);
        }
        self.full_warned = false;
        self.writer.append(record)?;
        Ok(true)
    }

    pub fn is_full(&self) -> bool {
        self.full_warned
    }

    pub fn bytes(&self) -> u64 {
        self.writer.total_bytes()
    }

    /// Whether every spooled record is confirmed.
    pub fn is_empty(&mut self) -> io::Result<bool> {
        self.writer.flush()?;
        let probe = segments::read_batch(self.writer.dir(), self.cursor, 1, 1)?;
        Ok(probe.records.is_empty())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.writer.sync()
    }

    /// The next records to replay, oldest first (flushes first, so
    /// everything pushed is visible).
    pub fn next_batch(&mut self, max_records: usize, max_bytes: usize) -> io::Result<Replay> {
        self.writer.flush()?;
        let batch = segments::read_batch(self.writer.dir(), self.cursor, max_records, max_bytes)?;
        if batch.torn > 0 {
            tracing::warn!(
                torn = batch.torn,
                "spool: skipped a torn record left by a crash"
            );
        }
        Ok(Replay {
            records: batch.records.into_iter().map(|(_, r)| r).collect(),
            next: batch.next,
        })
    }

    /// The broker confirmed everything before `next`: persist the cursor and
    /// delete finished segments.
    pub fn confirm(&mut self, next: LogPosition) -> io::Result<()> {
        self.cursor = next;
        write_atomic(&self.cursor_path, &serde_json::to_vec(&next)?)?;
        self.writer.remove_before(next)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("quiver-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn replays_in_order_resumes_after_restart_and_respects_the_cap() {
        let dir = scratch("order");
        let mut s = Spool::open(&dir, 4096, 1 << 20).unwrap();
        assert!(s.is_empty().unwrap());
        for i in 0..10 {
            assert!(s.push(format!("r{i}").as_bytes()).unwrap());
        }
        assert!(!s.is_empty().unwrap());
        let b = s.next_batch(4, 1 << 20).unwrap();
        assert_eq!(
            b.records,
            vec![b"r0".to_vec(), b"r1".into(), b"r2".into(), b"r3".into()]
        );
        s.confirm(b.next).unwrap();
        // An unconfirmed batch is read again.
        let b = s.next_batch(3, 1 << 20).unwrap();
        assert_eq!(b.records[0], b"r4");
        drop(s);
        let mut s = Spool::open(&dir, 4096, 1 << 20).unwrap();
        let b = s.next_batch(100, 1 << 20).unwrap();
        assert_eq!(b.records.len(), 6);
        assert_eq!(b.records[0], b"r4");
        s.confirm(b.next).unwrap();
        assert!(s.is_empty().unwrap());
        drop(s);

        let mut small = Spool::open(&dir, 4096, 10).unwrap();
        assert!(small.push(b"12345").unwrap());
        assert!(!small.push(b"12345").unwrap());
        assert!(small.is_full());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
