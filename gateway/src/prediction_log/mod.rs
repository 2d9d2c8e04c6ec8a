//! The prediction log: every served prediction (and every label sent to the
//! feedback endpoint) becomes a record for the trainer, off the request's
//! critical path.
//!
//! - [`TrafficLog`] is the handle the handlers use: one bounded lock-free
//!   queue into the writer thread, which polls it, so a request never
//!   takes a lock or wakes a thread to log; a full queue drops the record
//!   and counts it (it should stay 0: the queue holds seconds of traffic).
//! - [`encode`] turns an event into the JSON record of `quiver_contract::records`.
//! - [`writer`] is the thread. With brokers configured it produces to Kafka
//!   ([`kafka`]) and, while the broker is slow or away, appends to the disk
//!   spool ([`spool`]) and replays it in order when the broker is back. With
//!   no brokers it appends to the local log, which the trainer reads.
//! - [`settings`]: the `[log]` and `[kafka]` configuration.

pub mod encode;
pub mod kafka;
pub mod settings;
pub mod spool;
pub mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use quiver_contract::records::LabelRecord;

use crate::routing::Arm;
use crate::tensor::Tensor;
pub use settings::{LogConfig, LogSettings};

/// One served prediction, as the handler knows it.
pub struct PredictionEvent {
    pub id: String,
    /// Shared with the served version: no copy of the name per record.
    pub model: Arc<str>,
    pub version: u64,
    pub arm: Arm,
    pub source: Source,
    pub timestamp_ms: u64,
    pub latency_us: u64,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Http,
    Grpc,
    Kafka,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Grpc => "grpc",
            Source::Kafka => "kafka",
        }
    }
}

/// The two record streams, each a topic (Kafka) or a directory (local).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Predictions,
    Labels,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::Predictions, Stream::Labels];

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Predictions => "predictions",
            Stream::Labels => "labels",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

pub(crate) enum Entry {
    Prediction(Box<PredictionEvent>),
    Labels(Vec<LabelRecord>),
}

/// What the handlers and the writer share.
struct Queue {
    entries: ArrayQueue<Entry>,
    /// Set at shutdown: nothing more is taken; the writer writes out what
    /// is queued and stops.
    closed: AtomicBool,
}

impl Queue {
    fn push(&self, entry: Entry) -> Result<(), LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        self.entries.push(entry).map_err(|_| LogError::Full)
    }
}

/// Why labels were not taken.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the label log is full; retry shortly")]
    Full,
    #[error("the label log is shut down")]
    Closed,
    #[error("cannot start the prediction log: {0}")]
    Start(String),
}

/// The `n`th made-up request id from `seed`: 32 hex digits, written
/// without the formatting machinery (one allocation, on every logged
/// request that came without an id).
fn request_id(seed: u64, n: u64) -> String {
    const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
    let a = splitmix(seed ^ n);
    let b = splitmix(a ^ n.rotate_left(32));
    let mut id = String::with_capacity(32);
    for word in [a, b] {
        for shift in (0..16).rev() {
            let nibble = (word >> (shift * 4)) & 0xf;
            id.push(char::from(HEX_DIGITS[nibble as usize]));
        }
    }
    id
}

/// The handlers' side of the log.
pub struct TrafficLog {
    queue: Arc<Queue>,
    predictions: bool,
    /// Requests whose key hash falls below this are logged.
    sample_below: u64,
    thread: Mutex<Option<JoinHandle<()>>>,
    sequence: AtomicU64,
    seed: u64,
}

impl TrafficLog {
    /// Starts the writer thread.
    pub fn start(settings: LogSettings) -> Result<Self, LogError> {
        let queue = Arc::new(Queue {
            entries: ArrayQueue::new(settings.queue_capacity.max(1)),
            closed: AtomicBool::new(false),
        });
        let rx = Arc::clone(&queue);
        let predictions = settings.predictions;
        let sample_below = sample_threshold(settings.sample_rate);
        let writer = writer::Writer::open(settings).map_err(|e| LogError::Start(e.to_string()))?;
        let thread = std::thread::Builder::new()
            .name("quiver-log".into())
            .spawn(move || run(writer, rx))
            .map_err(|e| LogError::Start(e.to_string()))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        Ok(TrafficLog {
            queue,
            predictions,
            sample_below,
            thread: Mutex::new(Some(thread)),
            sequence: AtomicU64::new(0),
            seed,
        })
    }

    /// Whether a request with this routing key hash is logged.
    pub fn sampled(&self, key_hash: u64) -> bool {
        self.predictions && key_hash <= self.sample_below
    }

    /// A request id for a request that came without one: unique within
    /// this process and, by the random start, across restarts.
    pub fn new_request_id(&self) -> String {
        request_id(self.seed, self.sequence.fetch_add(1, Ordering::Relaxed))
    }

    /// Queues a prediction; never blocks. A full queue drops it (counted).
    pub fn log_prediction(&self, event: PredictionEvent) {
        if self.queue.push(Entry::Prediction(Box::new(event))).is_err() {
            crate::metrics::log_records(Stream::Predictions.as_str(), "dropped", 1);
        }
    }

    /// Queues labels; a full queue is the caller's to retry (the feedback
    /// endpoint answers 503), so no label is lost silently.
    pub fn log_labels(&self, labels: Vec<LabelRecord>) -> Result<(), LogError> {
        self.queue.push(Entry::Labels(labels))
    }

    /// Writes out everything queued (to Kafka, else the spool; or the local
    /// log) and stops the writer. Blocks; call off the async runtime.
    pub fn shutdown(&self) {
        let Ok(mut slot) = self.thread.lock() else {
            return;
        };
        let Some(thread) = slot.take() else {
            return;
        };
        self.queue.closed.store(true, Ordering::Release);
        thread.thread().unpark();
        if thread.join().is_err() {
            tracing::error!("prediction log writer panicked");
        }
    }
}

/// The writer polls the queue: every [`BUSY_POLL`] while records come,
/// backing off to [`IDLE_POLL`] when none do. Nobody wakes it per record,
/// so logging costs a request one lock-free push.
fn run(mut writer: writer::Writer, queue: Arc<Queue>) {
    let mut nap = BUSY_POLL;
    loop {
        // Checked before draining: whatever was queued before the close is
        // written out below, and nothing can be queued after it.
        let stop = queue.closed.load(Ordering::Acquire);
        let taken = drain(&queue, &mut writer);
        if stop {
            // A push that saw the queue open just before the close lands
            // right after it (the doors have drained by now, so there are
            // none in practice): take those too.
            drain(&queue, &mut writer);
            writer.shutdown();
            return;
        }
        writer.tick();
        nap = if taken > 0 {
            BUSY_POLL
        } else {
            (nap * 2).min(IDLE_POLL)
        };
        std::thread::park_timeout(nap);
    }
}

/// Writes out everything queued now; returns how many entries it took.
fn drain(queue: &Queue, writer: &mut writer::Writer) -> usize {
    let mut taken = 0;
    while let Some(entry) = queue.entries.pop() {
        taken += 1;
        match entry {
            Entry::Prediction(event) => writer.prediction(&event),
            Entry::Labels(labels) => writer.labels(&labels),
        }
    }
    taken
}

/// How long records gather between bursts while traffic flows: what a
/// record may wait on top of the flush.
const BUSY_POLL: Duration = Duration::from_millis(5);
/// The longest nap of an idle writer (it also ticks the spool and flushes).
const IDLE_POLL: Duration = Duration::from_millis(50);

fn sample_threshold(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else if rate <= 0.0 {
        0
    } else {
        (rate * u64::MAX as f64) as u64
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_keeps_the_asked_share_of_keys() {
        assert_eq!(sample_threshold(1.0), u64::MAX);
        assert_eq!(sample_threshold(0.0), 0);
        let below = sample_threshold(0.25);
        let kept = (0..100_000u64)
            .filter(|&i| crate::routing::key_hash(&i.to_le_bytes()) <= below)
            .count();
        assert!((23_000..27_000).contains(&kept), "kept {kept}");
    }

    #[test]
    fn made_up_ids_are_two_zero_padded_hex_words() {
        let seed = 0x0123_4567_89ab_cdef;
        let mut seen = std::collections::HashSet::new();
        for n in 0..1000u64 {
            let a = splitmix(seed ^ n);
            let b = splitmix(a ^ n.rotate_left(32));
            let id = request_id(seed, n);
            assert_eq!(id, format!("{a:016x}{b:016x}"));
            assert!(seen.insert(id));
        }
        // Leading zeros are kept: every id has the same length.
        assert_eq!(request_id(0, 0).len(), 32);
    }
}
