//! Kafka ingress: inference for Kafka producers. A consumer group reads
//! the requests topic; each record (an Open Inference Protocol v2 JSON
//! request plus `model_name`) is routed and batched exactly like an HTTP
//! request, and its answer is produced to the responses topic under the
//! same correlation id.
//!
//! - **At-least-once.** A record's offset is committed only after its answer
//!   (or its dead letter) is confirmed by the broker ([`offsets`]); a
//!   restarted consumer resumes from there.
//! - **Bounded.** At most `max_in_flight` records are between being read
//!   and having their answer confirmed; at the cap the consumer reads
//!   nothing more until one is confirmed. While a model's queue is full it
//!   pauses its partitions (no fetching at all) and resumes when there is
//!   room.
//! - **Dead letters.** A record that cannot be read (not JSON, no
//!   `model_name`, not a valid request) goes to the dead-letter topic as it
//!   was, with a `quiver-error` header saying why. A readable request that
//!   fails (unknown model, wrong shape) is answered with an error response.
//!
//! Each record is one task from read to hand-off: the answer goes to
//! librdkafka with the record's place and its in-flight permit attached,
//! and the delivery report (on librdkafka's thread) marks the offset
//! finished and frees the permit, so no task waits on the broker.

pub mod offsets;

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_contract::records::{HEADER_CORRELATION_ID, HEADER_ERROR, HEADER_STATUS};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::error::ApiError;
use crate::inference;
use crate::prediction_log::Source;
use crate::prediction_log::settings::IngressSettings;
use crate::protocol;
use crate::state::Gateway;
use offsets::Offsets;

/// How often moved commit points are committed while running.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// How long a queue-full request waits before it tries again, at most.
const MAX_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How long an answer waits for room in librdkafka's queue before it is
/// given up (its offset stays uncommitted, so it is answered again later).
const SEND_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for the answers in flight to be confirmed.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("cannot create the ingress Kafka client: {0}")]
    Client(#[from] KafkaError),
}

/// A record's place, carried through librdkafka with its answer: the
/// delivery report finishes the offset, and dropping it frees the record's
/// in-flight permit.
struct Pending {
    partition: i32,
    offset: i64,
    _permit: OwnedSemaphorePermit,
}

/// The answer producer's delivery reports.
struct Deliveries {
    offsets: Arc<Mutex<Offsets>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        match result {
            Ok(_) => {
                if let Ok(mut o) = self.offsets.lock() {
                    o.finish(pending.partition, pending.offset);
                }
            }
            // Not finished, so never committed: after a restart or
            // rebalance the record is read and answered again.
            Err((e, _)) => tracing::error!(
                error = %e,
                partition = pending.partition,
                offset = pending.offset,
                "cannot produce an ingress answer; its offset stays uncommitted"
            ),
        }
    }
}

/// State shared by the reading loop and the answering tasks.
struct Shared {
    gw: Arc<Gateway>,
    settings: IngressSettings,
    producer: ThreadedProducer<Deliveries>,
    offsets: Arc<Mutex<Offsets>>,
    /// Requests waiting for room in a full model queue.
    blocked: AtomicUsize,
    room: Notify,
}

/// Starts the ingress consumer; it runs until `stop` is notified, then
/// finishes every request it read and commits.
pub fn start(
    gw: Arc<Gateway>,
    settings: IngressSettings,
    stop: Arc<Notify>,
) -> Result<tokio::task::JoinHandle<()>, IngressError> {
    let mut consumer_config = ClientConfig::new();
    for (k, v) in &settings.consumer {
        consumer_config.set(k, v);
    }
    // A paused consumer must not sit on a large prefetch: bounded memory.
    if !settings
        .consumer
        .iter()
        .any(|(k, _)| k == "queued.max.messages.kbytes")
    {
        consumer_config.set("queued.max.messages.kbytes", "1024");
    }
    let consumer: StreamConsumer = consumer_config.create()?;
    consumer.subscribe(&[settings.requests_topic.as_str()])?;
    let mut producer_config = ClientConfig::new();
    for (k, v) in &settings.producer {
        producer_config.set(k, v);
    }
    let offsets = Arc::new(Mutex::new(Offsets::default()));
    let producer = producer_config.create_with_context(Deliveries {
        offsets: Arc::clone(&offsets),
    })?;
    tracing::info!(
        topic = %settings.requests_topic,
        group = %settings.group_id,
        responses = %settings.responses_topic,
        "Kafka ingress consuming"
    );
    let shared = Arc::new(Shared {
        gw,
        settings,
        producer,
        offsets,
        blocked: AtomicUsize::new(0),
        room: Notify::new(),
    });
    Ok(tokio::spawn(run(shared, consumer, stop)))
}

async fn run(shared: Arc<Shared>, consumer: StreamConsumer, stop: Arc<Notify>) {
    let max_in_flight = shared.settings.max_in_flight;
    // One permit per record from read until its answer is confirmed; the
    // permits are what tracks the answering tasks (each is spawned with
    // one and frees it only through the delivery report), so shutdown
    // waits for all of them to come back.
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut last_commit = Instant::now();
    let mut paused = false;
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        // A model queue refusing work pauses the partitions: no more
        // records are fetched until it has room.
        let blocked = shared.blocked.load(Ordering::Acquire) > 0;
        if blocked != paused {
            set_paused(&consumer, blocked);
            paused = blocked;
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            commit(&shared, &consumer, CommitMode::Async);
            crate::metrics::ingress_in_flight(max_in_flight - permits.available_permits());
            last_commit = Instant::now();
        }
        if paused {
            tokio::select! {
                () = &mut stopped => break,
                () = shared.room.notified() => {}
                () = tokio::time::sleep(MAX_RETRY_BACKOFF) => {}
            }
            continue;
        }
        // At the in-flight cap, wait for a slot before reading on; what
        // librdkafka has prefetched meanwhile is bounded by
        // queued.max.messages.kbytes.
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => tokio::select! {
                () = &mut stopped => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = tokio::time::sleep(COMMIT_INTERVAL) => continue,
            },
        };
        let received = tokio::select! {
            biased;
            received = consumer.recv() => received,
            () = &mut stopped => break,
            // A request found its queue full: pause before reading more.
            () = shared.room.notified() => continue,
        };
        let message = match received {
            Ok(m) => m.detach(),
            Err(e) => {
                tracing::warn!(error = %e, "ingress consumer error");
                continue;
            }
        };
        if let Ok(mut o) = shared.offsets.lock() {
            o.start(message.partition(), message.offset());
        }
        let pending = Box::new(Pending {
            partition: message.partition(),
            offset: message.offset(),
            _permit: permit,
        });
        // Tracked by its permit (see above), not by a handle.
        tokio::spawn(answer(Arc::clone(&shared), message, pending));
    }
    tracing::info!(
        in_flight = max_in_flight - permits.available_permits(),
        "Kafka ingress stopping: finishing requests already read"
    );
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    match tokio::time::timeout(SHUTDOWN_FLUSH, permits.acquire_many(all)).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            left = max_in_flight - permits.available_permits(),
            "ingress answers still unconfirmed at shutdown; their offsets stay uncommitted"
        ),
    }
    commit(&shared, &consumer, CommitMode::Sync);
    crate::metrics::ingress_in_flight(0);
    tracing::info!("Kafka ingress stopped");
}

fn set_paused(consumer: &StreamConsumer, pause: bool) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let done = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(e) = done {
        tracing::warn!(error = %e, pause, "cannot pause or resume the ingress partitions");
    }
    crate::metrics::ingress_paused(pause);
}

fn commit(shared: &Shared, consumer: &StreamConsumer, mode: CommitMode) {
    let points = match shared.offsets.lock() {
        Ok(mut o) => o.to_commit(),
        Err(_) => return,
    };
    if points.is_empty() {
        return;
    }
    let topic = &shared.settings.requests_topic;
    let mut tpl = TopicPartitionList::new();
    for (partition, next) in &points {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            tracing::warn!(error = %e, "cannot build the commit list");
        }
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        // After a rebalance the partition may be another member's now; it
        // answers again from the last commit (at-least-once).
        tracing::warn!(error = %e, "ingress offset commit failed");
    }
}

/// The correlation id: the header, else the key, else the request `id`.
fn correlation_id(message: &OwnedMessage, request_id: Option<&str>) -> Option<String> {
    let from_header = message.headers().and_then(|h| {
        h.iter()
            .find(|x| x.key == HEADER_CORRELATION_ID)
            .and_then(|x| x.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    });
    from_header
        .or_else(|| {
            message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
        })
        .or_else(|| request_id.map(str::to_string))
}

/// Answers one record; its answer (or dead letter) carries `pending` to
/// the delivery report.
async fn answer(shared: Arc<Shared>, message: OwnedMessage, pending: Box<Pending>) {
    let started = Instant::now();
    let traceparent = message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == crate::telemetry::TRACEPARENT))
        .and_then(|h| h.value);
    let mut trace =
        crate::telemetry::begin_with(traceparent, started, crate::telemetry::Door::Kafka);
    match read(&message) {
        Err(why) => {
            crate::metrics::ingress_record("dead_lettered");
            dead_letter(&shared, &message, &why, pending).await;
        }
        Ok((model, version, parsed)) => {
            crate::telemetry::decoded(&mut trace);
            let id = correlation_id(&message, parsed.id.as_deref());
            let (status, body) = infer(
                &shared,
                &model,
                version,
                id.as_deref(),
                parsed,
                (started, trace),
            )
            .await;
            crate::metrics::ingress_record(if status == 200 { "answered" } else { "failed" });
            respond(&shared, id.as_deref(), status, &body, pending).await;
        }
    }
}

/// The ingress fields of a record; the rest is the protocol's request,
/// read by the same parser as an HTTP body (which skips these two).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    model_name: Cow<'a, str>,
    #[serde(default, borrow)]
    model_version: Option<Cow<'a, str>>,
}

type Parsed = (String, Option<u64>, protocol::InferRequest);

/// A record's request, or why it cannot be read.
fn read(message: &OwnedMessage) -> Result<Parsed, String> {
    let value = message.payload().ok_or("the record has no value")?;
    let head: Head<'_> =
        serde_json::from_slice(value).map_err(|e| format!("not an ingress request: {e}"))?;
    let version = match &head.model_version {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("model_version '{v}' is not a positive integer")),
        },
    };
    let parsed = protocol::parse_infer_request(value, None).map_err(|e| e.0)?;
    Ok((head.model_name.into_owned(), version, parsed))
}

/// Runs the request as HTTP would, waiting out full queues (the consumer
/// pauses meanwhile). Returns the status and the JSON body.
async fn infer(
    shared: &Shared,
    model: &str,
    version: Option<u64>,
    id: Option<&str>,
    mut request: protocol::InferRequest,
    (started, trace): (Instant, Option<crate::telemetry::RequestTrace>),
) -> (u16, Vec<u8>) {
    let gw = &shared.gw;
    if request.id.is_none() {
        request.id = id.map(str::to_string);
    }
    // Answers go out as JSON: a Kafka value has no binary section.
    request.binary_output = false;
    for o in &mut request.outputs {
        o.binary = Some(false);
    }
    let key = inference::key(
        id.map(|c| crate::routing::key_hash(c.as_bytes())),
        request.id.as_deref(),
    );
    let mut backoff = Duration::from_millis(1);
    let mut blocked = false;
    let result = loop {
        let route = match inference::route(gw, model, version, key) {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        // A queue-full retry needs the request again.
        let attempt = request.clone();
        match inference::predict(gw, &route, attempt, started).await {
            Err(ApiError::QueueFull { .. }) => {
                if !blocked {
                    blocked = true;
                    shared.blocked.fetch_add(1, Ordering::AcqRel);
                    // The reading loop pauses before it reads more.
                    shared.room.notify_one();
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
            }
            other => break other.map(|a| (route, a)),
        }
    };
    if blocked {
        shared.blocked.fetch_sub(1, Ordering::AcqRel);
        shared.room.notify_one();
    }
    match result {
        Ok((route, answer)) => {
            let encoded = answer.encode(&route);
            let elapsed = started.elapsed();
            inference::account(&route, Source::Kafka, "success", elapsed, false);
            let timing = crate::telemetry::Timing::of(&answer, started + elapsed);
            inference::log(gw, &route, answer, Source::Kafka, elapsed);
            crate::telemetry::finish(trace, &route, 200, "success", Some(timing));
            (200, encoded.body)
        }
        Err(e) => error_body(&e, model, id),
    }
}

fn error_body(e: &ApiError, model: &str, id: Option<&str>) -> (u16, Vec<u8>) {
    let (status, outcome) = e.status_and_outcome();
    crate::metrics::unrouted("kafka", outcome);
    let body = serde_json::json!({"error": e.to_string(), "model_name": model, "id": id});
    (status, serde_json::to_vec(&body).unwrap_or_default())
}

/// The `quiver-status` header's value: the common ones without formatting.
fn status_text(status: u16) -> Cow<'static, str> {
    match status {
        200 => Cow::Borrowed("200"),
        400 => Cow::Borrowed("400"),
        404 => Cow::Borrowed("404"),
        other => Cow::Owned(other.to_string()),
    }
}

async fn respond(
    shared: &Shared,
    id: Option<&str>,
    status: u16,
    body: &[u8],
    pending: Box<Pending>,
) {
    let status_text = status_text(status);
    let mut headers = OwnedHeaders::new_with_capacity(3).insert(Header {
        key: HEADER_STATUS,
        value: Some(status_text.as_bytes()),
    });
    if let Some(id) = id {
        headers = headers.insert(Header {
            key: HEADER_CORRELATION_ID,
            value: Some(id.as_bytes()),
        });
    }
    if status != 200 {
        headers = headers.insert(Header {
            key: HEADER_ERROR,
            value: Some(&b"inference failed; see the body"[..]),
        });
    }
    let topic = &shared.settings.responses_topic;
    send(
        shared,
        topic,
        id.map(str::as_bytes),
        Some(body),
        headers,
        pending,
    )
    .await;
}

/// Hands one record to librdkafka, waiting out a full queue; its delivery
/// report settles `pending`.
async fn send(
    shared: &Shared,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: OwnedHeaders,
    pending: Box<Pending>,
) {
    let mut record =
        BaseRecord::<[u8], [u8], Box<Pending>>::with_opaque_to(topic, pending).headers(headers);
    if let Some(v) = value {
        record = record.payload(v);
    }
    if let Some(k) = key {
        record = record.key(k);
    }
    let give_up = Instant::now() + SEND_QUEUE_TIMEOUT;
    let mut backoff = Duration::from_millis(1);
    loop {
        match shared.producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if Instant::now() < give_up =>
            {
                record = back;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
            }
            // Dropping the record frees its permit; its offset is never
            // finished, so it is answered again after a restart.
            Err((e, back)) => {
                tracing::error!(
                    error = %e,
                    partition = back.delivery_opaque.partition,
                    offset = back.delivery_opaque.offset,
                    "cannot produce an ingress answer; its offset stays uncommitted"
                );
                return;
            }
        }
    }
}

async fn dead_letter(shared: &Shared, message: &OwnedMessage, why: &str, pending: Box<Pending>) {
    tracing::warn!(
        error = why,
        partition = message.partition(),
        offset = message.offset(),
        "ingress record to the dead-letter topic"
    );
    let source = format!(
        "{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    let mut headers = message.headers().cloned().unwrap_or_else(OwnedHeaders::new);
    headers = headers
        .insert(Header {
            key: HEADER_ERROR,
            value: Some(why.as_bytes()),
        })
        .insert(Header {
            key: "quiver-source",
            value: Some(source.as_bytes()),
        });
    let topic = &shared.settings.dead_letter_topic;
    send(
        shared,
        topic,
        message.key(),
        message.payload(),
        headers,
        pending,
    )
    .await;
}
