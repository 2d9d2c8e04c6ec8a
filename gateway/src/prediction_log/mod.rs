//! The prediction log: every served prediction (and every label sent to the
//! feedback endpoint) becomes a record for the trainer, off the request's
//! critical path.
//!
//! - [`TrafficLog`] is the handle the handlers use: one bounded channel
//!   into the writer thread; a full channel drops the record and counts it
//!   (it should stay 0: the channel holds seconds of traffic).
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

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use quiver_contract::records::LabelRecord;

use crate::routing::Arm;
use crate::tensor::Tensor;
pub use settings::{LogConfig, LogSettings};

/// One served prediction, as the handler knows it.
pub struct PredictionEvent {
    pub id: String,
    pub model: String,
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
    /// Finish everything queued before it, then stop.
    Shutdown,
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

/// The handlers' side of the log.
pub struct TrafficLog {
    tx: SyncSender<Entry>,
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
        let (tx, rx) = sync_channel(settings.queue_capacity);
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
            tx,
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
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let a = splitmix(self.seed ^ n);
        let b = splitmix(a ^ n.rotate_left(32));
        format!("{a:016x}{b:016x}")
    }

    /// Queues a prediction; never blocks. A full queue drops it (counted).
    pub fn log_prediction(&self, event: PredictionEvent) {
        match self.tx.try_send(Entry::Prediction(Box::new(event))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                crate::metrics::log_records(Stream::Predictions.as_str(), "dropped", 1);
            }
        }
    }

    /// Queues labels; a full queue is the caller's to retry (the feedback
    /// endpoint answers 503), so no label is lost silently.
    pub fn log_labels(&self, labels: Vec<LabelRecord>) -> Result<(), LogError> {
        match self.tx.try_send(Entry::Labels(labels)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(LogError::Full),
            Err(TrySendError::Disconnected(_)) => Err(LogError::Closed),
        }
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
        if self.tx.send(Entry::Shutdown).is_err() {
            tracing::warn!("prediction log writer was already gone");
        }
        if thread.join().is_err() {
            tracing::error!("prediction log writer panicked");
        }
    }
}

/// After a burst, how long the writer lets records gather before it takes
/// the next. A writer blocked on the channel must be woken for each record,
/// a futex call on the serving thread that logs it; one that sleeps here is
/// not, so under load records are handed over for the price of a queue
/// push, and each burst is one flush. Records reach Kafka this much later,
/// off every request's path.
const GATHER: Duration = Duration::from_millis(5);

fn run(mut writer: writer::Writer, rx: Receiver<Entry>) {
    let tick = Duration::from_millis(50);
    loop {
        let first = match rx.recv_timeout(tick) {
            Ok(e) => Some(e),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Some(Entry::Shutdown),
        };
        // Take what is queued now in one go: one flush per burst, not per
        // record. Anything queued behind Shutdown (nothing should be) still
        // goes out before the writer stops.
        let mut stop = false;
        let mut took = 0usize;
        for entry in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            took += 1;
            match entry {
                Entry::Prediction(event) => writer.prediction(&event),
                Entry::Labels(labels) => writer.labels(&labels),
                Entry::Shutdown => stop = true,
            }
        }
        if stop {
            writer.shutdown();
            return;
        }
        writer.tick();
        if took > 0 {
            // Idle, the next record wakes the writer at once (recv above).
            std::thread::sleep(GATHER);
        }
    }
}

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
}
