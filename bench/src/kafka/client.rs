//! The Kafka mode's client: one producer of request records with
//! delivery reports, one consumer of the responses topic, and the
//! bookkeeping that matches answers to requests and counts every record
//! that was refused, never answered, answered with an error or twice.

use crate::driver::{Pacer, Plan, Sample};
use crate::endpoint::{Outcome, Status};
use crate::schedule::Schedule;
use anyhow::{Context, Result, bail};
use quiver_contract::records::HEADER_STATUS;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::retention::Retention;
use super::{KafkaArgs, KafkaPoint};

/// The delivery callback's record of refused records, by `(point, index)`.
#[derive(Default)]
pub(super) struct Deliveries {
    pub(super) failed: Mutex<Vec<(u32, u64)>>,
    pub(super) failed_count: AtomicU64,
}

pub(super) struct Context_ {
    pub(super) deliveries: Arc<Deliveries>,
}

impl rdkafka::ClientContext for Context_ {}

impl ProducerContext for Context_ {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        if result.is_err() {
            if let Ok(mut f) = self.deliveries.failed.lock() {
                f.push(unpack(opaque));
            }
            self.deliveries.failed_count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A record's `(point, index)` in the delivery opaque: the point in the
/// top bits, so no allocation travels with a record.
pub(super) const INDEX_BITS: u32 = 40;

pub(super) fn pack(point: u32, index: u64) -> usize {
    ((u64::from(point) << INDEX_BITS) | (index & ((1 << INDEX_BITS) - 1))) as usize
}

pub(super) fn unpack(opaque: usize) -> (u32, u64) {
    let v = opaque as u64;
    ((v >> INDEX_BITS) as u32, v & ((1 << INDEX_BITS) - 1))
}

/// The point number of readiness probes.
pub(super) const PROBE: u32 = (1 << (usize::BITS - INDEX_BITS)) - 1;

/// One answer as the consumer saw it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Answer {
    pub(super) point: u32,
    pub(super) index: u64,
    pub(super) at: Instant,
    pub(super) status: Status,
}

/// What the consumer thread shares with the producing side.
pub(super) struct Answers {
    /// This run's prefix of every correlation id; answers without it are
    /// someone else's.
    pub(super) nonce: String,
    pub(super) list: Mutex<Vec<Answer>>,
    /// The point being measured and its answers so far (for the window).
    pub(super) current: AtomicU32,
    pub(super) current_answered: AtomicU64,
    pub(super) foreign: AtomicU64,
    pub(super) stop: AtomicBool,
}

impl Answers {
    /// Reads `key` as `<nonce>.<point>.<index>` of this run.
    pub(super) fn parse_key(&self, key: &[u8]) -> Option<(u32, u64)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.nonce.as_str())?.strip_prefix('.')?;
        let (point, index) = rest.split_once('.')?;
        Some((point.parse().ok()?, index.parse().ok()?))
    }
}

/// The producer, the consumer thread and what they share.
pub(super) struct Client {
    pub(super) producer: ThreadedProducer<Context_>,
    pub(super) deliveries: Arc<Deliveries>,
    pub(super) answers: Arc<Answers>,
    pub(super) consumer: Option<std::thread::JoinHandle<()>>,
    pub(super) retention: Option<std::thread::JoinHandle<()>>,
    pub(super) requests_topic: String,
    pub(super) value: Vec<u8>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.answers.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.consumer.take() {
            let _ = c.join();
        }
        if let Some(r) = self.retention.take() {
            let _ = r.join();
        }
    }
}

pub(super) fn options(given: &[String]) -> Result<Vec<(String, String)>> {
    given
        .iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("option '{o}' is not KEY=VALUE"))
        })
        .collect()
}

impl Client {
    pub(super) fn new(a: &KafkaArgs, value: Vec<u8>) -> Result<Client> {
        let nonce = format!(
            "qb{:x}{:x}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let mut pc = ClientConfig::new();
        // librdkafka's own linger (what a typical producer sends with), no
        // compression: the gateway's work is measured, not the codec's.
        pc.set("bootstrap.servers", &a.brokers)
            .set("linger.ms", "5")
            .set("compression.type", "none")
            .set("queue.buffering.max.messages", "1000000");
        for (k, v) in options(&a.producer_options)? {
            pc.set(k, v);
        }
        let deliveries = Arc::new(Deliveries::default());
        let producer: ThreadedProducer<Context_> = pc
            .create_with_context(Context_ {
                deliveries: Arc::clone(&deliveries),
            })
            .context("cannot create the Kafka producer")?;
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &a.brokers)
            .set("group.id", format!("quiver-bench-{nonce}"))
            // Only this run's answers matter: start at the end.
            .set("auto.offset.reset", "latest")
            .set("enable.auto.commit", "false")
            // The responses topic may appear only with the first answer.
            .set("topic.metadata.refresh.interval.ms", "500")
            // An idle fetch returns this soon: a broker that does not answer
            // a waiting fetch when records arrive would otherwise add its
            // wait to the measured latency.
            .set("fetch.wait.max.ms", "2");
        for (k, v) in options(&a.consumer_options)? {
            cc.set(k, v);
        }
        let consumer: Arc<BaseConsumer> =
            Arc::new(cc.create().context("cannot create the Kafka consumer")?);
        consumer
            .subscribe(&[a.responses_topic.as_str()])
            .context("cannot subscribe to the responses topic")?;
        let answers = Arc::new(Answers {
            nonce,
            list: Mutex::new(Vec::new()),
            current: AtomicU32::new(PROBE),
            current_answered: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let retention = if a.delete_consumed {
            let r = Retention::new(
                &a.brokers,
                &a.gateway_group,
                &a.requests_topic,
                Arc::clone(&consumer),
            )?;
            let shared = Arc::clone(&answers);
            Some(
                std::thread::Builder::new()
                    .name("quiver-bench-kafka-retention".into())
                    .spawn(move || r.run(&shared))?,
            )
        } else {
            None
        };
        let reader = Arc::clone(&answers);
        let consumer = std::thread::Builder::new()
            .name("quiver-bench-kafka-reader".into())
            .spawn(move || read_answers(&consumer, &reader))?;
        Ok(Client {
            producer,
            deliveries,
            answers,
            consumer: Some(consumer),
            retention,
            requests_topic: a.requests_topic.clone(),
            value,
        })
    }

    /// Produces record `index` of `point`, waiting out a full local queue
    /// until `give_up`. False when it could not be handed over.
    pub(super) fn produce(&self, point: u32, index: u64, give_up: Instant) -> bool {
        let key = format!("{}.{point}.{index}", self.answers.nonce);
        let mut record = BaseRecord::with_opaque_to(&self.requests_topic, pack(point, index))
            .key(key.as_bytes())
            .payload(self.value.as_slice());
        loop {
            match self.producer.send(record) {
                Ok(()) => return true,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < give_up =>
                {
                    record = back;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(_) => return false,
            }
        }
    }

    /// Sends probes until one is answered: the gateway has joined its group
    /// and this consumer reads the responses topic. Returns how long it took.
    pub(super) fn ready(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut next_note = start + Duration::from_secs(5);
        let mut i = 0u64;
        loop {
            let now = Instant::now();
            if now > start + timeout {
                bail!(
                    "no answer on the responses topic within {:.0} s: is the gateway's Kafka \
                     ingress on, reading topic '{}' of these brokers?",
                    timeout.as_secs_f64(),
                    self.requests_topic
                );
            }
            if now >= next_note {
                progress(&format!(
                    "waiting for the gateway's first answer ({:.0} s)",
                    start.elapsed().as_secs_f64()
                ));
                next_note = now + Duration::from_secs(5);
            }
            if !self.produce(PROBE, i, now + Duration::from_secs(1)) {
                bail!(
                    "cannot produce to the requests topic '{}'",
                    self.requests_topic
                );
            }
            i += 1;
            let wait_until = Instant::now() + Duration::from_millis(250);
            while Instant::now() < wait_until {
                let answered = self
                    .answers
                    .list
                    .lock()
                    .map(|l| l.iter().any(|a| a.point == PROBE))
                    .unwrap_or(false);
                if answered {
                    return Ok(start.elapsed());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Runs one point: produces on schedule (or in a window), waits for the
    /// answers, and accounts for every record.
    pub(super) fn point(&self, number: u32, plan: &Plan, title: &str) -> (Vec<Sample>, KafkaPoint) {
        if let Ok(mut l) = self.answers.list.lock() {
            l.clear();
        }
        self.answers.current_answered.store(0, Ordering::Relaxed);
        self.answers.current.store(number, Ordering::Relaxed);
        let failed_before = self.deliveries.failed_count.load(Ordering::Relaxed);
        let failed = || self.deliveries.failed_count.load(Ordering::Relaxed) - failed_before;
        let start = Instant::now();
        let end = start + plan.length();
        let deadline = end + plan.drain;
        // (due, sent) of each produced record; sent is None when it could
        // not be handed to the producer.
        let mut sent: Vec<(Duration, Option<Duration>)> = Vec::new();
        let mut note = Note::new(start, title, plan.length());
        match plan.rate {
            Some(rate) => {
                let schedule = Schedule {
                    rate,
                    length: plan.length(),
                };
                sent.reserve(schedule.count() as usize);
                let mut pacer = Pacer::default();
                for i in 0..schedule.count() {
                    let due = start + schedule.due(i);
                    pacer.wait_until(due);
                    let at = Instant::now();
                    let ok = self.produce(number, i, deadline);
                    // Early sends count as due when sent (see driver::Worker::one).
                    let due = due.min(at) - start;
                    sent.push((due, ok.then(|| at - start)));
                    note.tick(sent.len() as u64, &self.answers, failed());
                }
            }
            None => {
                let window = plan.connections.max(1) as u64;
                while Instant::now() < end {
                    let done = self.answers.current_answered.load(Ordering::Relaxed) + failed();
                    let outstanding = (sent.len() as u64).saturating_sub(done);
                    if outstanding < window {
                        for _ in outstanding..window {
                            let at = Instant::now();
                            let ok = self.produce(number, sent.len() as u64, deadline);
                            sent.push((at - start, ok.then(|| at - start)));
                        }
                    } else {
                        std::thread::park_timeout(Duration::from_micros(200));
                    }
                    note.tick(sent.len() as u64, &self.answers, failed());
                }
            }
        }
        // Drain: wait for every answer, or the deadline.
        let produced = sent.len() as u64;
        while Instant::now() < deadline {
            let done = self.answers.current_answered.load(Ordering::Relaxed) + failed();
            if done >= produced {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
            note.tick(produced, &self.answers, failed());
        }
        let (answers, refused) = self.take_fates(number);
        account(number, plan, start, &sent, answers, &refused)
    }

    /// The answers read since the point began, and the indexes of its
    /// records the broker refused.
    pub(super) fn take_fates(&self, number: u32) -> (Vec<Answer>, Vec<u64>) {
        let answers = self
            .answers
            .list
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        let refused: Vec<u64> = self
            .deliveries
            .failed
            .lock()
            .map(|mut f| {
                let (mine, other): (Vec<_>, Vec<_>) = f.drain(..).partition(|x| x.0 == number);
                f.extend(other);
                mine.into_iter().map(|x| x.1).collect()
            })
            .unwrap_or_default();
        (answers, refused)
    }
}

/// Matches the answers and delivery failures of one point to its records
/// (`sent`: due and sent offsets, `None` when never handed over): each
/// record becomes one sample, and its fate is counted.
pub(super) fn account(
    number: u32,
    plan: &Plan,
    start: Instant,
    sent: &[(Duration, Option<Duration>)],
    answers: Vec<Answer>,
    refused: &[u64],
) -> (Vec<Sample>, KafkaPoint) {
    let mut k = KafkaPoint {
        produced: sent.iter().filter(|s| s.1.is_some()).count() as u64,
        ..KafkaPoint::default()
    };
    let mut first: Vec<Option<(Duration, Status)>> = vec![None; sent.len()];
    for a in answers {
        let slot = (a.point == number)
            .then(|| first.get_mut(a.index as usize))
            .flatten();
        match slot {
            None => k.stale += u64::from(a.point != PROBE),
            Some(Some(_)) => k.duplicates += 1,
            Some(s @ None) => *s = Some((a.at.saturating_duration_since(start), a.status)),
        }
    }
    let mut is_refused = vec![false; sent.len()];
    for &i in refused {
        if let Some(r) = is_refused.get_mut(i as usize) {
            *r = true;
        }
    }
    let end = plan.length() + plan.drain;
    let samples = sent
        .iter()
        .zip(first)
        .zip(is_refused)
        .map(|((&(due, sent_at), answer), refused)| {
            let sent = sent_at.unwrap_or(due);
            let (done, status) = match (sent_at, answer, refused) {
                (_, Some((done, status)), _) => {
                    k.answered += 1;
                    if !status.is_ok() {
                        k.error_answers += 1;
                    }
                    if done.saturating_sub(sent) > plan.timeout {
                        (done, Status::Timeout)
                    } else {
                        (done, status)
                    }
                }
                (None, None, _) | (_, None, true) => {
                    k.produce_failed += 1;
                    (end, Status::Io)
                }
                (Some(_), None, false) => {
                    k.unanswered += 1;
                    (end, Status::Timeout)
                }
            };
            Sample {
                due,
                sent,
                done,
                outcome: Outcome::failed(status),
            }
        })
        .collect();
    (samples, k)
}

/// The consumer thread: every answer of this run, with its arrival time.
pub(super) fn read_answers(consumer: &BaseConsumer, answers: &Answers) {
    let mut warned = false;
    while !answers.stop.load(Ordering::Relaxed) {
        let Some(received) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let at = Instant::now();
        let message = match received {
            Ok(m) => m,
            Err(e) => {
                // Typically the responses topic not existing yet.
                if !warned {
                    progress(&format!("responses consumer: {e}"));
                    warned = true;
                }
                continue;
            }
        };
        let Some((point, index)) = message.key().and_then(|k| answers.parse_key(k)) else {
            answers.foreign.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let status = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == HEADER_STATUS))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
            .map_or(Status::Io, Status::Answered);
        if let Ok(mut l) = answers.list.lock() {
            l.push(Answer {
                point,
                index,
                at,
                status,
            });
        }
        if point == answers.current.load(Ordering::Relaxed) {
            answers.current_answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A progress line on stderr every two seconds while a point runs.
pub(super) struct Note<'a> {
    pub(super) start: Instant,
    pub(super) next: Instant,
    pub(super) title: &'a str,
    pub(super) length: Duration,
}

impl<'a> Note<'a> {
    pub(super) fn new(start: Instant, title: &'a str, length: Duration) -> Note<'a> {
        Note {
            start,
            next: start + Duration::from_secs(2),
            title,
            length,
        }
    }

    pub(super) fn tick(&mut self, produced: u64, answers: &Answers, failed: u64) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + Duration::from_secs(2);
        progress(&format!(
            "{} {:5.1}/{:.0} s  produced {produced}  answered {}  refused {failed}",
            self.title,
            (now - self.start).as_secs_f64(),
            self.length.as_secs_f64(),
            answers.current_answered.load(Ordering::Relaxed),
        ));
    }
}

pub(super) fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "quiver-bench: {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opaque_keeps_point_and_index() {
        for (p, i) in [(0, 0), (3, 123_456), (PROBE, (1 << INDEX_BITS) - 1)] {
            assert_eq!(unpack(pack(p, i)), (p, i));
        }
    }

    #[test]
    fn keys_of_other_runs_are_not_ours() {
        let a = Answers {
            nonce: "qbabc".into(),
            list: Mutex::new(Vec::new()),
            current: AtomicU32::new(0),
            current_answered: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        };
        assert_eq!(a.parse_key(b"qbabc.2.17"), Some((2, 17)));
        assert_eq!(a.parse_key(b"qbabd.2.17"), None);
        assert_eq!(a.parse_key(b"qbabc.2"), None);
        assert_eq!(a.parse_key(b"qbabc.x.1"), None);
        assert_eq!(a.parse_key(&[0xff, 0xfe]), None);
    }

    /// Every record becomes one sample with its fate: answered (first
    /// answer wins, later ones are duplicates), refused by the broker,
    /// never handed over, or never answered; other points' answers are
    /// stale.
    #[test]
    fn every_record_is_accounted_for() {
        let ms = Duration::from_millis;
        let plan = Plan {
            rate: Some(1000.0),
            connections: 1,
            warmup: Duration::ZERO,
            duration: ms(10),
            timeout: ms(100),
            drain: ms(500),
        };
        let start = Instant::now();
        let sent: Vec<_> = (0..6u64)
            .map(|i| (ms(i), (i != 4).then(|| ms(i))))
            .collect();
        let answer = |point, index, at: u64, code| Answer {
            point,
            index,
            at: start + ms(at),
            status: Status::Answered(code),
        };
        let answers = vec![
            answer(2, 0, 3, 200),
            answer(2, 1, 4, 503),
            answer(2, 0, 9, 200),
            answer(1, 3, 5, 200),
            answer(PROBE, 0, 5, 200),
            answer(2, 5, 300, 200),
        ];
        let (samples, k) = account(2, &plan, start, &sent, answers, &[2]);
        assert_eq!(
            k,
            KafkaPoint {
                produced: 5,
                produce_failed: 2,
                answered: 3,
                error_answers: 1,
                unanswered: 1,
                duplicates: 1,
                stale: 1,
            }
        );
        let status: Vec<Status> = samples.iter().map(|s| s.outcome.status).collect();
        assert_eq!(
            status,
            [
                Status::Answered(200),
                Status::Answered(503),
                Status::Io,
                Status::Timeout,
                Status::Io,
                Status::Timeout,
            ]
        );
        assert_eq!(samples[0].done, ms(3));
        assert_eq!(samples[3].done, ms(510));
    }

    #[test]
    fn options_are_key_value() {
        assert_eq!(
            options(&["linger.ms=5".into()]).unwrap(),
            vec![("linger.ms".to_string(), "5".to_string())]
        );
        assert!(options(&["linger.ms".into()]).is_err());
    }
}
