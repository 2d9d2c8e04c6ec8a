//! The local record log: a directory of append-only segment files, each a
//! run of JSON lines. The gateway writes its prediction and label records
//! here when no broker is configured (one directory per topic) and spools
//! here while the broker is away; the trainer reads the same directories.
//!
//! ```text
//! <dir>/00000000000000000001.jsonl   oldest segment
//! <dir>/00000000000000000002.jsonl   newest segment, still being written
//! ```
//!
//! A writer never appends to a segment it did not create: a crash can leave
//! a torn last line, so every writer starts a new segment. A reader takes
//! complete lines only; an incomplete tail of the newest segment is "not
//! written yet", an incomplete tail of an older one is torn and skipped
//! (and counted). A [`LogPosition`] (segment, byte offset) names a record
//! exactly, so a reader can resume and a training run can say which records
//! it used.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const SUFFIX: &str = ".jsonl";

/// Where a record starts, or where a reader resumes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogPosition {
    pub segment: u64,
    pub offset: u64,
}

impl std::fmt::Display for LogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}

/// The local log of one topic: `<log_dir>/<topic>/`. The gateway's
/// embedded mode writes predictions and labels there under the same topic
/// names it would use on Kafka.
pub fn topic_dir(log_dir: &Path, topic: &str) -> PathBuf {
    log_dir.join(topic)
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}{SUFFIX}"))
}

/// The segment numbers in `dir`, oldest first. A missing directory has none.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(SUFFIX)
            && stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = stem.parse::<u64>()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Bytes held by the segments in `dir`.
pub fn dir_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for s in list_segments(dir)? {
        match fs::metadata(segment_path(dir, s)) {
            Ok(m) => total += m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Appends records to the newest segment, rotating at a size. Buffered:
/// records reach the file on [`flush`](Self::flush) and the disk on
/// [`sync`](Self::sync); the owner decides how often.
pub struct SegmentWriter {
    dir: PathBuf,
    max_segment_bytes: u64,
    segment: u64,
    file: BufWriter<File>,
    segment_bytes: u64,
    /// Bytes in every segment of the directory, this one included.
    total_bytes: u64,
}

impl SegmentWriter {
    /// Opens `dir` (created if missing) and starts a new segment after the
    /// newest one there.
    pub fn open(dir: &Path, max_segment_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let segment = list_segments(dir)?.last().map_or(1, |s| s + 1);
        let total_bytes = dir_bytes(dir)?;
        let file = create_segment(dir, segment)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            max_segment_bytes: max_segment_bytes.max(1),
            segment,
            file,
            segment_bytes: 0,
            total_bytes,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record (a line without its newline; it must not contain
    /// one) and says where it starts.
    pub fn append(&mut self, record: &[u8]) -> io::Result<LogPosition> {
        if record.contains(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a record must not contain a newline",
            ));
        }
        if self.segment_bytes > 0 && self.segment_bytes >= self.max_segment_bytes {
            self.rotate()?;
        }
        let at = LogPosition {
            segment: self.segment,
            offset: self.segment_bytes,
        };
        self.file.write_all(record)?;
        self.file.write_all(b"\n")?;
        let n = record.len() as u64 + 1;
        self.segment_bytes += n;
        self.total_bytes += n;
        Ok(at)
    }

    /// Where the next record will start.
    pub fn end(&self) -> LogPosition {
        LogPosition {
            segment: self.segment,
            offset: self.segment_bytes,
        }
    }

    /// Hands buffered records to the OS, so readers see them.
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    /// Flushes and waits until the records are on disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn rotate(&mut self) -> io::Result<()> {
        // Complete lines only, and on disk, before a reader can take this
        // segment for an older one.
        self.sync()?;
        self.segment += 1;
        self.file = create_segment(&self.dir, self.segment)?;
        self.segment_bytes = 0;
        Ok(())
    }

    /// Deletes every segment older than `position.segment` (the ones a
    /// consumer has finished) and returns the bytes freed.
    pub fn remove_before(&mut self, position: LogPosition) -> io::Result<u64> {
        let mut freed = 0;
        for s in list_segments(&self.dir)? {
            if s >= position.segment || s >= self.segment {
                break;
            }
            freed += remove_segment(&self.dir, s)?;
        }
        self.total_bytes = self.total_bytes.saturating_sub(freed);
        Ok(freed)
    }

    /// Deletes the oldest segments (never the one being written) until the
    /// directory holds at most `max_bytes`; returns the segments deleted.
    pub fn enforce_retention(&mut self, max_bytes: u64) -> io::Result<Vec<u64>> {
        let mut deleted = Vec::new();
        if self.total_bytes <= max_bytes {
            return Ok(deleted);
        }
        for s in list_segments(&self.dir)? {
            if self.total_bytes <= max_bytes || s >= self.segment {
                break;
            }
            let freed = remove_segment(&self.dir, s)?;
            self.total_bytes = self.total_bytes.saturating_sub(freed);
            deleted.push(s);
        }
        Ok(deleted)
    }
}

fn create_segment(dir: &Path, segment: u64) -> io::Result<BufWriter<File>> {
    let file = fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, segment))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(BufWriter::with_capacity(256 * 1024, file))
}

fn remove_segment(dir: &Path, segment: u64) -> io::Result<u64> {
    let path = segment_path(dir, segment);
    let len = match fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    match fs::remove_file(&path) {
        Ok(()) => Ok(len),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// What one [`read_batch`] found.
#[derive(Debug, Default)]
pub struct Batch {
    /// Each record with the position it starts at.
    pub records: Vec<(LogPosition, Vec<u8>)>,
    /// Where the next read resumes.
    pub next: LogPosition,
    /// Torn tails of older segments that were skipped.
    pub torn: u64,
    /// Segments between the asked position and the oldest one present were
    /// already deleted (retention ran ahead of the reader).
    pub gap: bool,
}

/// Reads up to `max_records` complete records (and roughly `max_bytes`)
/// from `from` on.
pub fn read_batch(
    dir: &Path,
    from: LogPosition,
    max_records: usize,
    max_bytes: usize,
) -> io::Result<Batch> {
    let segments = list_segments(dir)?;
    let mut batch = Batch {
        next: from,
        ..Batch::default()
    };
    let Some(&newest) = segments.last() else {
        return Ok(batch);
    };
    let mut pos = from;
    if !segments.contains(&pos.segment) {
        match segments.iter().find(|&&s| s > pos.segment) {
            Some(&s) => {
                // Segment numbers are consecutive, so a missing number
                // between the two is a segment deleted before it was read.
                batch.gap = s > pos.segment + 1;
                pos = LogPosition {
                    segment: s,
                    offset: 0,
                };
            }
            None => return Ok(batch),
        }
    }
    let mut bytes_read = 0usize;
    loop {
        let path = segment_path(dir, pos.segment);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            // Deleted under us: resume at the next one.
            Err(e) if e.kind() == io::ErrorKind::NotFound => match next_after(&segments, pos) {
                Some(p) => {
                    pos = p;
                    continue;
                }
                None => break,
            },
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(pos.offset))?;
        let room = max_bytes.saturating_sub(bytes_read).max(1) as u64;
        let limit = room + 64 * 1024;
        let mut buf = Vec::new();
        (&mut file).take(limit).read_to_end(&mut buf)?;
        if buf.len() as u64 == limit && !buf.contains(&b'\n') {
            // One record longer than the budget: take all of it.
            file.read_to_end(&mut buf)?;
        }
        let mut start = 0usize;
        while let Some(n) = buf[start..].iter().position(|&b| b == b'\n') {
            batch.records.push((
                LogPosition {
                    segment: pos.segment,
                    offset: pos.offset + start as u64,
                },
                buf[start..start + n].to_vec(),
            ));
            start += n + 1;
            bytes_read += n + 1;
            if batch.records.len() >= max_records || bytes_read as u64 >= max_bytes as u64 {
                break;
            }
        }
        let buf_end = pos.offset + buf.len() as u64;
        pos.offset += start as u64;
        let full = batch.records.len() >= max_records || bytes_read >= max_bytes;
        if full || pos.segment == newest {
            break;
        }
        let len = file.metadata()?.len();
        if buf_end < len {
            // The buffer ended before the file did: read on from here.
            continue;
        }
        if pos.offset < len {
            // A partial line at the end of an older segment: torn.
            batch.torn += 1;
        }
        match next_after(&segments, pos) {
            Some(p) => pos = p,
            None => break,
        }
    }
    batch.next = pos;
    Ok(batch)
}

fn next_after(segments: &[u64], pos: LogPosition) -> Option<LogPosition> {
    segments
        .iter()
        .find(|&&s| s > pos.segment)
        .map(|&segment| LogPosition { segment, offset: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "quiver-segments-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn read_all(dir: &Path, from: LogPosition) -> (Vec<Vec<u8>>, LogPosition) {
        let mut out = Vec::new();
        let mut pos = from;
        loop {
            let b = read_batch(dir, pos, 3, 1 << 20).unwrap();
            if b.records.is_empty() {
                return (out, b.next);
            }
            out.extend(b.records.into_iter().map(|(_, r)| r));
            pos = b.next;
        }
    }

    #[test]
    fn records_come_back_in_order_across_rotations_and_restarts() {
        let dir = scratch("order");
        let mut w = SegmentWriter::open(&dir, 40).unwrap();
        let mut want = Vec::new();
        for i in 0..20 {
            let r = format!("{{\"n\":{i}}}").into_bytes();
            w.append(&r).unwrap();
            want.push(r);
        }
        w.flush().unwrap();
        drop(w);
        // A second writer starts a new segment after the newest.
        let mut w = SegmentWriter::open(&dir, 40).unwrap();
        w.append(b"last").unwrap();
        w.flush().unwrap();
        want.push(b"last".to_vec());
        let (got, end) = read_all(&dir, LogPosition::default());
        assert_eq!(got, want);
        assert_eq!(end, w.end());
        // Resuming mid-way gives exactly the rest.
        let b = read_batch(&dir, LogPosition::default(), 7, 1 << 20).unwrap();
        let (rest, _) = read_all(&dir, b.next);
        assert_eq!(rest, want[7..].to_vec());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_partial_tail_waits_in_the_newest_segment_and_is_torn_in_an_older_one() {
        let dir = scratch("torn");
        fs::create_dir_all(&dir).unwrap();
        fs::write(segment_path(&dir, 1), b"a\nb\nhalf").unwrap();
        let b = read_batch(&dir, LogPosition::default(), 10, 1 << 20).unwrap();
        assert_eq!(b.records.len(), 2);
        assert_eq!(
            b.next,
            LogPosition {
                segment: 1,
                offset: 4
            }
        );
        assert_eq!(b.torn, 0);
        // A restarted writer opens segment 2: the half line is now torn.
        let mut w = SegmentWriter::open(&dir, 1 << 20).unwrap();
        w.append(b"c").unwrap();
        w.flush().unwrap();
        let b = read_batch(&dir, b.next, 10, 1 << 20).unwrap();
        assert_eq!(b.records.len(), 1);
        assert_eq!(b.records[0].1, b"c");
        assert_eq!(b.torn, 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn retention_deletes_oldest_and_readers_see_the_gap() {
        let dir = scratch("retention");
        let mut w = SegmentWriter::open(&dir, 10).unwrap();
        for _ in 0..10 {
            w.append(b"0123456789").unwrap();
        }
        w.flush().unwrap();
        assert_eq!(w.total_bytes(), 110);
        let deleted = w.enforce_retention(50).unwrap();
        assert_eq!(deleted, (1..=6).collect::<Vec<_>>());
        assert_eq!(w.total_bytes(), 44);
        assert_eq!(dir_bytes(&dir).unwrap(), 44);
        let b = read_batch(
            &dir,
            LogPosition {
                segment: 2,
                offset: 0,
            },
            100,
            1 << 20,
        )
        .unwrap();
        assert!(b.gap);
        assert_eq!(b.records.len(), 4);
        let freed = w
            .remove_before(LogPosition {
                segment: 9,
                offset: 0,
            })
            .unwrap();
        assert_eq!(freed, 22);
        assert_eq!(list_segments(&dir).unwrap(), vec![9, 10]);
        assert!(w.append(b"no\nnewline").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn small_byte_budgets_still_make_progress() {
        let dir = scratch("budget");
        let mut w = SegmentWriter::open(&dir, 1 << 20).unwrap();
        let rec = vec![b'x'; 100_000];
        for _ in 0..3 {
            w.append(&rec).unwrap();
        }
        w.flush().unwrap();
        let mut pos = LogPosition::default();
        let mut n = 0;
        for _ in 0..10 {
            let b = read_batch(&dir, pos, 100, 10).unwrap();
            n += b.records.len();
            pos = b.next;
        }
        assert_eq!(n, 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    mod model {
        //! The segment log against a plain model of itself: a list of
        //! records. Whatever the interleaving of appends, flushes, writer
        //! restarts, reads with small budgets and deletion of consumed
        //! segments, a reader gets every record once, in order.

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Append(usize),
            Flush,
            Restart,
            Read { records: usize, bytes: usize },
            DropConsumed,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (1usize..40).prop_map(Op::Append),
                2 => Just(Op::Flush),
                1 => Just(Op::Restart),
                3 => (1usize..5, 1usize..120).prop_map(|(records, bytes)| Op::Read { records, bytes }),
                1 => Just(Op::DropConsumed),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn a_reader_sees_every_record_once_in_order(ops in proptest::collection::vec(op(), 1..80)) {
                let dir = scratch("model");
                let mut writer = Some(SegmentWriter::open(&dir, 64).unwrap());
                let mut written: Vec<Vec<u8>> = Vec::new();
                let mut flushed = 0usize;
                let mut read: Vec<Vec<u8>> = Vec::new();
                let mut pos = LogPosition::default();
                for (n, op) in ops.into_iter().enumerate() {
                    let w = writer.as_mut().unwrap();
                    match op {
                        Op::Append(len) => {
                            let rec = format!("{n:04}{}", "x".repeat(len)).into_bytes();
                            w.append(&rec).unwrap();
                            written.push(rec);
                        }
                        Op::Flush => {
                            w.flush().unwrap();
                            flushed = written.len();
                        }
                        Op::Restart => {
                            w.flush().unwrap();
                            flushed = written.len();
                            // The old writer closes before the new one opens.
                            drop(writer.take());
                            writer = Some(SegmentWriter::open(&dir, 64).unwrap());
                        }
                        Op::Read { records, bytes } => {
                            let b = read_batch(&dir, pos, records, bytes).unwrap();
                            prop_assert_eq!(b.torn, 0);
                            prop_assert!(!b.gap);
                            prop_assert!(b.records.len() <= records);
                            let got_none = b.records.is_empty();
                            read.extend(b.records.into_iter().map(|(_, r)| r));
                            pos = b.next;
                            // A prefix of what was written: in order, nothing twice.
                            prop_assert!(read.len() <= written.len());
                            prop_assert_eq!(&read[..], &written[..read.len()]);
                            // Everything flushed before the read is visible by
                            // the time a reader has caught up.
                            if got_none && read.len() < flushed {
                                prop_assert!(false, "flushed records not readable");
                            }
                        }
                        Op::DropConsumed => {
                            w.remove_before(pos).unwrap();
                        }
                    }
                }
                writer.as_mut().unwrap().flush().unwrap();
                loop {
                    let b = read_batch(&dir, pos, 7, 100).unwrap();
                    if b.records.is_empty() {
                        break;
                    }
                    read.extend(b.records.into_iter().map(|(_, r)| r));
                    pos = b.next;
                }
                prop_assert_eq!(read, written);
                fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
}
