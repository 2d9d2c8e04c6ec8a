//! The writer thread's state: the local log, or Kafka with the spool.
//!
//! Kafka mode has two states. **Direct**: records go to librdkafka. A full
//! librdkafka queue or a failed delivery report switches to **spooling**:
//! from then on every record goes behind the spooled ones on disk, so the
//! order is kept, and the spool is replayed in batches. A batch moves the
//! spool cursor only when the broker confirmed all of it; a batch that
//! fails (broker still away) is retried after `retry_interval`. When the
//! spool is empty the writer goes back to direct.

use std::io;
use std::time::{Duration, Instant};

use quiver_contract::records::LabelRecord;
use quiver_contract::segments::{LogPosition, SegmentWriter, topic_dir};
use serde::Deserialize;

use super::kafka::{LogProducer, SendError};
use super::settings::{KafkaSettings, LogSettings};
use super::spool::Spool;
use super::{PredictionEvent, Stream, encode};

/// Records per replay batch once the broker answers; a probe of one record
/// while it does not.
const REPLAY_BATCH: usize = 5000;
const REPLAY_BYTES: usize = 8 << 20;

pub struct Writer {
    topics: [String; 2],
    fsync_interval: Duration,
    last_sync: Instant,
    sink: Sink,
    /// The record being encoded, reused.
    buf: Vec<u8>,
}

enum Sink {
    Local(Box<Local>),
    Kafka(Box<KafkaSink>),
}

struct Local {
    logs: [SegmentWriter; 2],
    retention_bytes: u64,
}

struct KafkaSink {
    producer: LogProducer,
    spools: [Spool; 2],
    spooling: bool,
    replay: Option<InFlight>,
    next_try: Instant,
    probe_only: bool,
    settings: KafkaSettings,
}

struct InFlight {
    stream: Stream,
    batch: u64,
    sent: u64,
    /// Every record of the batch was handed to librdkafka; a batch cut
    /// short never confirms.
    complete: bool,
    next: LogPosition,
    started: Instant,
}

impl Writer {
    pub fn open(s: LogSettings) -> io::Result<Self> {
        let sink = match &s.kafka {
            None => {
                let open = |i: usize| {
                    SegmentWriter::open(&topic_dir(&s.dir, &s.topics[i]), s.segment_bytes)
                };
                let logs = [open(0)?, open(1)?];
                tracing::info!(dir = %s.dir.display(), "prediction log: local directory (no brokers configured)");
                Sink::Local(Box::new(Local {
                    logs,
                    retention_bytes: s.retention_bytes,
                }))
            }
            Some(k) => {
                let producer = LogProducer::new(&k.producer).map_err(io::Error::other)?;
                let open = |i: usize| {
                    Spool::open(
                        &topic_dir(&k.spool_dir, &s.topics[i]),
                        s.segment_bytes,
                        k.spool_max_bytes,
                    )
                };
                let mut spools = [open(0)?, open(1)?];
                // Records left in the spool by an earlier run go first.
                let mut spooling = false;
                for spool in &mut spools {
                    spooling |= !spool.is_empty()?;
                }
                if spooling {
                    tracing::info!("prediction log: replaying records spooled by an earlier run");
                }
                tracing::info!(brokers = %k.brokers, spool = %k.spool_dir.display(), "prediction log: Kafka");
                Sink::Kafka(Box::new(KafkaSink {
                    producer,
                    spools,
                    spooling,
                    replay: None,
                    next_try: Instant::now(),
                    probe_only: false,
                    settings: k.clone(),
                }))
            }
        };
        Ok(Writer {
            topics: s.topics,
            fsync_interval: s.fsync_interval,
            last_sync: Instant::now(),
            sink,
            buf: Vec::with_capacity(4096),
        })
    }

    pub fn prediction(&mut self, e: &PredictionEvent) {
        let mut buf = std::mem::take(&mut self.buf);
        encode::prediction_into(&mut buf, e);
        self.record(Stream::Predictions, e.id.as_bytes(), &buf);
        self.buf = buf;
    }

    pub fn labels(&mut self, labels: &[LabelRecord]) {
        for l in labels {
            match encode::label(l) {
                Ok(bytes) => self.record(Stream::Labels, l.id.as_bytes(), &bytes),
                Err(err) => {
                    tracing::error!(error = %err, "cannot encode a label record");
                    crate::metrics::log_records(Stream::Labels.as_str(), "dropped", 1);
                }
            }
        }
    }

    fn record(&mut self, stream: Stream, key: &[u8], bytes: &[u8]) {
        match &mut self.sink {
            Sink::Local(local) => match local.logs[stream.index()].append(bytes) {
                Ok(_) => crate::metrics::log_records(stream.as_str(), "written", 1),
                Err(e) => {
                    tracing::error!(error = %e, stream = stream.as_str(), "cannot append to the local log");
                    crate::metrics::log_records(stream.as_str(), "dropped", 1);
                }
            },
            Sink::Kafka(k) => k.record(&self.topics, stream, key, bytes),
        }
    }

    /// After each burst: make records visible, force them to disk when due,
    /// and move the spool along.
    pub fn tick(&mut self) {
        let sync_due = self.last_sync.elapsed() >= self.fsync_interval;
        if sync_due {
            self.last_sync = Instant::now();
        }
        match &mut self.sink {
            Sink::Local(local) => local.tick(sync_due),
            Sink::Kafka(k) => k.tick(&self.topics, sync_due),
        }
    }

    pub fn shutdown(&mut self) {
        match &mut self.sink {
            Sink::Local(local) => local.tick(true),
            Sink::Kafka(k) => k.shutdown(),
        }
        tracing::info!("prediction log flushed");
    }
}

impl Local {
    fn tick(&mut self, sync: bool) {
        for (stream, log) in Stream::ALL.into_iter().zip(&mut self.logs) {
            let done = if sync { log.sync() } else { log.flush() };
            if let Err(e) = done {
                tracing::error!(error = %e, stream = stream.as_str(), "cannot write the local log");
            }
            match log.enforce_retention(self.retention_bytes) {
                Ok(deleted) if !deleted.is_empty() => {
                    tracing::warn!(
                        stream = stream.as_str(),
                        segments = deleted.len(),
                        retention_bytes = self.retention_bytes,
                        "local log over its retention: oldest segments deleted"
                    );
                    crate::metrics::log_segments_deleted(stream.as_str(), deleted.len() as u64);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot apply local log retention"),
            }
        }
    }
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

impl KafkaSink {
    fn record(&mut self, topics: &[String; 2], stream: Stream, key: &[u8], bytes: &[u8]) {
        if !self.spooling {
            match self
                .producer
                .send(stream, &topics[stream.index()], key, bytes, 0)
            {
                Ok(()) => return,
                Err(SendError::QueueFull) => {
                    self.start_spooling("the producer queue is full (broker slow or away)");
                }
                Err(SendError::Other(e)) => {
                    self.start_spooling(&format!("send failed: {e}"));
                }
            }
        }
        self.spool(stream, bytes);
    }

    fn spool(&mut self, stream: Stream, bytes: &[u8]) {
        let spool = &mut self.spools[stream.index()];
        let pushed = spool.push(bytes);
        // The size first, then the count: whoever sees a record counted as
        // spooled sees the spool holding it.
        crate::metrics::log_spool(stream.as_str(), spool.bytes(), spool.is_full());
        match pushed {
            Ok(true) => crate::metrics::log_records(stream.as_str(), "spooled", 1),
            Ok(false) => crate::metrics::log_records(stream.as_str(), "dropped", 1),
            Err(e) => {
                tracing::error!(error = %e, "cannot append to the spool");
                crate::metrics::log_records(stream.as_str(), "dropped", 1);
            }
        }
    }

    fn start_spooling(&mut self, why: &str) {
        if !self.spooling {
            tracing::warn!(
                reason = why,
                "prediction log: spooling to disk until the broker is back"
            );
            self.spooling = true;
            crate::metrics::log_spooling(true);
        }
    }

    fn tick(&mut self, topics: &[String; 2], sync: bool) {
        self.absorb_failed(sync);
        if self.spooling {
            self.replay_step(topics);
        }
    }

    /// Counts what the broker confirmed, spools what it refused, then
    /// flushes (or syncs) the spools.
    fn absorb_failed(&mut self, sync: bool) {
        for (stream, n) in Stream::ALL.into_iter().zip(self.producer.take_produced()) {
            if n > 0 {
                crate::metrics::log_records(stream.as_str(), "produced", n);
            }
        }
        let failed = self.producer.take_failed();
        if let Some(first) = failed.first() {
            let why = format!("delivery failed: {}", first.error);
            self.start_spooling(&why);
        }
        for f in failed {
            self.spool(f.stream, &f.payload);
        }
        for (stream, spool) in Stream::ALL.into_iter().zip(&mut self.spools) {
            let done = if sync { spool.sync() } else { spool.flush() };
            if let Err(e) = done {
                tracing::error!(error = %e, "cannot write the spool");
            }
            crate::metrics::log_spool(stream.as_str(), spool.bytes(), spool.is_full());
        }
    }

    /// Moves the replay one step: settle the batch in flight, or start the
    /// next, or go back to direct when nothing is left.
    fn replay_step(&mut self, topics: &[String; 2]) {
        if let Some(r) = &self.replay {
            let (ok, failed) = self.producer.replay_progress();
            let timeout = self.settings.retry_interval + Duration::from_secs(30);
            if ok + failed < r.sent && r.started.elapsed() < timeout {
                return;
            }
            let r = match self.replay.take() {
                Some(r) => r,
                None => return,
            };
            if r.complete && ok == r.sent {
                if let Err(e) = self.spools[r.stream.index()].confirm(r.next) {
                    tracing::error!(error = %e, "cannot persist the spool cursor");
                }
                crate::metrics::log_records(r.stream.as_str(), "replayed", ok);
                self.probe_only = false;
            } else {
                // Whatever the broker took of a failed batch is sent again.
                crate::metrics::log_records(r.stream.as_str(), "resent", ok);
                self.probe_only = true;
                self.next_try = Instant::now() + self.settings.retry_interval;
                let error = self.producer.last_replay_error().unwrap_or_default();
                tracing::debug!(ok, failed, batch = r.batch, %error, "spool replay failed; will retry");
                return;
            }
        }
        if Instant::now() < self.next_try {
            return;
        }
        for stream in Stream::ALL {
            let max = if self.probe_only { 1 } else { REPLAY_BATCH };
            let batch = match self.spools[stream.index()].next_batch(max, REPLAY_BYTES) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the spool");
                    self.next_try = Instant::now() + self.settings.retry_interval;
                    return;
                }
            };
            if batch.records.is_empty() {
                continue;
            }
            let id = self.producer.start_replay();
            let mut sent = 0u64;
            for rec in &batch.records {
                let key = serde_json::from_slice::<IdOnly>(rec)
                    .map(|i| i.id.into_owned())
                    .unwrap_or_default();
                if self
                    .producer
                    .send(stream, &topics[stream.index()], key.as_bytes(), rec, id)
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            self.replay = Some(InFlight {
                stream,
                batch: id,
                sent,
                complete: sent == batch.records.len() as u64,
                next: batch.next,
                started: Instant::now(),
            });
            return;
        }
        tracing::info!("prediction log: spool replayed; sending to the broker directly again");
        self.spooling = false;
        crate::metrics::log_spooling(false);
    }

    fn shutdown(&mut self) {
        let left = self.producer.drain(self.settings.shutdown_flush);
        // What the broker did not take by now is spooled, and on disk.
        self.absorb_failed(true);
        if left > 0 {
            tracing::warn!(left, "records without a delivery report at shutdown");
        }
    }
}
