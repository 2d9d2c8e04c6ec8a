//! Kafka ingress: inference for Kafka producers. A consumer group reads
//! the requests topic; each record (an Open Inference Protocol v2 JSON
//! request plus `model_name`) is routed and batched exactly like an HTTP
//! request, and its answer is produced to the responses topic under the
//! same correlation id.
//!
//! - **At-least-once.** A record's offset is committed only after its answer
//!   (or its dead letter) is confirmed by the broker ([`offsets`]); a
//!   restarted consumer resumes from there.
//! - **Bounded.** At most `max_in_flight` records are being answered; at the
//!   cap the consumer reads nothing more until one is answered. While a
//!   model's queue is full it pauses its partitions (no fetching at all)
//!   and resumes when there is room.
//! - **Dead letters.** A record that cannot be read (not JSON, no
//!   `model_name`, not a valid request) goes to the dead-letter topic as it
//!   was, with a `quiver-error` header saying why. A readable request that
//!   fails (unknown model, wrong shape) is answered with an error response.

pub mod offsets;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_contract::records::{
    HEADER_CORRELATION_ID, HEADER_ERROR, HEADER_STATUS, IngressRequest,
};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

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

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("cannot create the ingress Kafka client: {0}")]
    Client(#[from] KafkaError),
}

/// State shared by the reading loop and the answering tasks.
struct Shared {
    gw: Arc<Gateway>,
    settings: IngressSettings,
    producer: FutureProducer,
    offsets: Mutex<Offsets>,
    /// Requests waiting for room in a full model queue.
    blocked: std::sync::atomic::AtomicUsize,
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
    let producer: FutureProducer = producer_config.create()?;
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
        offsets: Mutex::new(Offsets::default()),
        blocked: std::sync::atomic::AtomicUsize::new(0),
        room: Notify::new(),
    });
    Ok(tokio::spawn(run(shared, consumer, stop)))
}

async fn run(shared: Arc<Shared>, consumer: StreamConsumer, stop: Arc<Notify>) {
    let permits = Arc::new(Semaphore::new(shared.settings.max_in_flight));
    let mut tasks = JoinSet::new();
    let mut last_commit = Instant::now();
    let mut paused = false;
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        // A model queue refusing work pauses the partitions: no more
        // records are fetched until it has room.
        let blocked = shared.blocked.load(std::sync::atomic::Ordering::Acquire) > 0;
        if blocked != paused {
            set_paused(&consumer, blocked);
            paused = blocked;
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            commit(&shared, &consumer, CommitMode::Async);
            last_commit = Instant::now();
        }
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "ingress task failed");
            }
        }
        crate::metrics::ingress_in_flight(tasks.len());
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
        let permit = tokio::select! {
            () = &mut stopped => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = tokio::time::sleep(COMMIT_INTERVAL) => continue,
        };
        tokio::select! {
            () = &mut stopped => break,
            received = consumer.recv() => {
                let message = match received {
                    Ok(m) => m.detach(),
                    Err(e) => {
                        tracing::warn!(error = %e, "ingress consumer error");
                        continue;
                    }
                };
                if let Ok(mut o) = shared.offsets.lock() {
                    o.start(message.topic(), message.partition(), message.offset());
                }
                let shared = Arc::clone(&shared);
                tasks.spawn(async move {
                    answer(&shared, message).await;
                    drop(permit);
                    shared.room.notify_one();
                });
            }
            // A request found its queue full: pause before reading more.
            () = shared.room.notified() => {}
        }
    }
    tracing::info!(
        in_flight = tasks.len(),
        "Kafka ingress stopping: finishing requests already read"
    );
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "ingress task failed");
        }
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
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, next) in &points {
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
fn correlation_id(message: &OwnedMessage, request: Option<&IngressRequest>) -> Option<String> {
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
        .or_else(|| {
            request
                .and_then(|r| r.request.get("id"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
}

/// Answers one record and marks its offset finished once the answer (or
/// dead letter) is confirmed.
async fn answer(shared: &Shared, message: OwnedMessage) {
    let started = Instant::now();
    let traceparent = message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == crate::telemetry::TRACEPARENT))
        .and_then(|h| h.value);
    let mut trace =
        crate::telemetry::begin_with(traceparent, started, crate::telemetry::Door::Kafka);
    let delivered = match read(&message) {
        Err(why) => {
            crate::metrics::ingress_record("dead_lettered");
            dead_letter(shared, &message, &why).await
        }
        Ok((request, parsed, version)) => {
            crate::telemetry::decoded(&mut trace);
            let id = correlation_id(&message, Some(&request));
            let (status, body) = infer(
                shared,
                &request.model_name,
                version,
                id.as_deref(),
                parsed,
                (started, trace),
            )
            .await;
            crate::metrics::ingress_record(if status == 200 { "answered" } else { "failed" });
            respond(shared, id.as_deref(), status, &body).await
        }
    };
    match delivered {
        Ok(()) => {
            if let Ok(mut o) = shared.offsets.lock() {
                o.finish(message.topic(), message.partition(), message.offset());
            }
        }
        // Not finished, so never committed: after a restart or rebalance
        // the record is read and answered again.
        Err(e) => {
            tracing::error!(error = %e, offset = message.offset(), "cannot produce an ingress answer; its offset stays uncommitted")
        }
    }
}

type Parsed = (IngressRequest, protocol::InferRequest, Option<u64>);

/// A record's request, or why it cannot be read.
fn read(message: &OwnedMessage) -> Result<Parsed, String> {
    let value = message.payload().ok_or("the record has no value")?;
    let request: IngressRequest =
        serde_json::from_slice(value).map_err(|e| format!("not an ingress request: {e}"))?;
    let version = match &request.model_version {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("model_version '{v}' is not a positive integer")),
        },
    };
    let body = serde_json::to_vec(&request.request).map_err(|e| e.to_string())?;
    let parsed = protocol::parse_infer_request(&body, None).map_err(|e| e.0)?;
    Ok((request, parsed, version))
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
                    shared
                        .blocked
                        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
            }
            other => break other.map(|a| (route, a)),
        }
    };
    if blocked {
        shared
            .blocked
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        shared.room.notify_one();
    }
    match result {
        Ok((route, answer)) => {
            let encoded = answer.encode(&route);
            let elapsed = started.elapsed();
            inference::account(&route, Source::Kafka, "success", elapsed, false);
            match encoded {
                Ok(e) => {
                    let timing = crate::telemetry::Timing::of(&answer, started + elapsed);
                    inference::log(gw, &route, answer, Source::Kafka, elapsed);
                    crate::telemetry::finish(trace, &route, 200, "success", Some(timing));
                    (200, e.body)
                }
                Err(e) => error_body(&e, model, id),
            }
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

async fn respond(
    shared: &Shared,
    id: Option<&str>,
    status: u16,
    body: &[u8],
) -> Result<(), KafkaError> {
    let status_text = status.to_string();
    let mut headers = OwnedHeaders::new().insert(Header {
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
    send(shared, topic, id.map(str::as_bytes), Some(body), headers).await
}

/// Produces one record and waits for the broker's confirmation.
async fn send(
    shared: &Shared,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: OwnedHeaders,
) -> Result<(), KafkaError> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
    if let Some(v) = value {
        record = record.payload(v);
    }
    if let Some(k) = key {
        record = record.key(k);
    }
    shared
        .producer
        .send(record, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

async fn dead_letter(shared: &Shared, message: &OwnedMessage, why: &str) -> Result<(), KafkaError> {
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
    send(shared, topic, message.key(), message.payload(), headers).await
}
