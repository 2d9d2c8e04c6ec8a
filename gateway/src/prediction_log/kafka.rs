//! The Kafka producer of the prediction log (librdkafka through `rdkafka`).
//!
//! librdkafka batches, compresses and retries by itself; what it cannot do
//! is keep records across an outage longer than `message.timeout.ms` or
//! beyond its queue. So every delivery report comes back here: a record
//! sent directly that fails is handed to the writer, which spools it; a
//! replayed batch is counted, and the spool cursor moves only when the
//! whole batch is confirmed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};

use super::Stream;
use quiver_contract::records::{HEADER_SCHEMA, RECORD_SCHEMA};

/// A record the broker did not take.
pub struct Failed {
    pub stream: Stream,
    pub payload: Vec<u8>,
    pub error: String,
}

/// Delivery reports, shared with librdkafka's polling thread.
#[derive(Default)]
pub struct Reports {
    failed: Mutex<Vec<Failed>>,
    /// The replay batch being counted; 0 is "direct".
    replay_batch: AtomicU64,
    replay_ok: AtomicU64,
    replay_failed: AtomicU64,
    last_replay_error: Mutex<Option<String>>,
    /// Direct records confirmed, per stream, not yet added to the metric:
    /// counted here on librdkafka's thread and handed over once per burst,
    /// so a delivery report costs no metric lookup.
    produced: [AtomicU64; 2],
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    /// `(batch << 1) | stream`: which stream, and which replay batch (0 for
    /// a record sent directly).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let stream = if opaque & 1 == 0 {
            Stream::Predictions
        } else {
            Stream::Labels
        };
        let batch = (opaque >> 1) as u64;
        match result {
            Ok(_) => {
                if batch == 0 {
                    self.produced[stream.index()].fetch_add(1, Ordering::Relaxed);
                } else if batch == self.replay_batch.load(Ordering::Acquire) {
                    self.replay_ok.fetch_add(1, Ordering::AcqRel);
                }
            }
            Err((error, message)) => {
                if batch == 0 {
                    let payload = message.payload().unwrap_or_default().to_vec();
                    if let Ok(mut f) = self.failed.lock() {
                        f.push(Failed {
                            stream,
                            payload,
                            error: error.to_string(),
                        });
                    }
                } else if batch == self.replay_batch.load(Ordering::Acquire) {
                    if let Ok(mut e) = self.last_replay_error.lock() {
                        *e = Some(error.to_string());
                    }
                    self.replay_failed.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }
}

/// Why a record could not be handed to librdkafka.
#[derive(Debug)]
pub enum SendError {
    /// librdkafka's queue is full: the broker is slow or away.
    QueueFull,
    Other(KafkaError),
}

pub struct LogProducer {
    inner: ThreadedProducer<Reports>,
    next_batch: u64,
    /// The `quiver-schema` header's value, the same on every record.
    schema: String,
}

impl LogProducer {
    pub fn new(options: &[(String, String)]) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        for (k, v) in options {
            config.set(k, v);
        }
        let inner = config.create_with_context(Reports::default())?;
        Ok(LogProducer {
            inner,
            next_batch: 1,
            schema: RECORD_SCHEMA.to_string(),
        })
    }

    fn reports(&self) -> &Reports {
        self.inner.context()
    }

    /// Hands one record to librdkafka; `batch` 0 is a direct send, else the
    /// replay batch from [`start_replay`](Self::start_replay).
    pub fn send(
        &self,
        stream: Stream,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        batch: u64,
    ) -> Result<(), SendError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: HEADER_SCHEMA,
            value: Some(self.schema.as_bytes()),
        });
        let opaque = ((batch as usize) << 1) | stream.index();
        let record = BaseRecord::with_opaque_to(topic, opaque)
            .key(key)
            .payload(payload)
            .headers(headers);
        match self.inner.send(record) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SendError::QueueFull)
            }
            Err((e, _)) => Err(SendError::Other(e)),
        }
    }

    /// Direct records confirmed since the last call, per stream.
    pub fn take_produced(&self) -> [u64; 2] {
        let p = &self.reports().produced;
        [
            p[0].swap(0, Ordering::Relaxed),
            p[1].swap(0, Ordering::Relaxed),
        ]
    }

    /// Direct sends that failed since the last call.
    pub fn take_failed(&self) -> Vec<Failed> {
        self.reports()
            .failed
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }

    /// Starts counting a new replay batch and returns its number.
    pub fn start_replay(&mut self) -> u64 {
        let batch = self.next_batch;
        self.next_batch += 1;
        let r = self.reports();
        r.replay_ok.store(0, Ordering::Release);
        r.replay_failed.store(0, Ordering::Release);
        r.replay_batch.store(batch, Ordering::Release);
        batch
    }

    /// `(confirmed, failed)` of the current replay batch.
    pub fn replay_progress(&self) -> (u64, u64) {
        let r = self.reports();
        (
            r.replay_ok.load(Ordering::Acquire),
            r.replay_failed.load(Ordering::Acquire),
        )
    }

    /// Why the last replayed record failed, if one did.
    pub fn last_replay_error(&self) -> Option<String> {
        self.reports()
            .last_replay_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
    }

    /// Waits up to `timeout` for everything queued to be confirmed; what is
    /// left is purged, so its delivery reports (failures) come back to be
    /// spooled. Returns the records still unreported.
    pub fn drain(&self, timeout: Duration) -> i32 {
        if self.inner.flush(timeout).is_ok() {
            return 0;
        }
        self.inner.purge(PurgeConfig::default().queue().inflight());
        // The polling thread delivers the purge reports.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.inner.in_flight_count() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.inner.in_flight_count()
    }
}
