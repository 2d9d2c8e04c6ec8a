//! OpenTelemetry tracing of inference requests, off by default
//! (`[tracing] otlp_endpoint`). A traced request becomes one trace: a
//! server span `infer` (a child of the caller's span when the request
//! carries a W3C `traceparent`), and under it one span per stage:
//! `decode` (body read and parsed), `queue` (waiting in the version's
//! batch queue), `batch` (from the batch's start to this request's
//! answer) with `compute` (the engine run) under it, `encode` (the
//! response body) and `log` (handing the prediction to the log). Spans
//! carry the model, version, arm, batch size and status. A Kafka ingress
//! record is traced alike (a consumer span, `traceparent` from the
//! record's headers). The exporter
//! ([`export`]) sends them over OTLP/HTTP in protobuf ([`otlp`]).
//!
//! Off, a request costs one load of an unset `OnceLock` and carries an
//! `Option` of a `Copy` struct that stays `None`: nothing is allocated.
//! The stage timings come from instants the request path takes anyway.

mod config;
mod export;
mod otlp;
mod traceparent;

use std::cell::Cell;
use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use config::{TracingConfig, TracingSettings};
pub use traceparent::{Parent, parse as parse_traceparent};

use hyper::HeaderMap;

use crate::inference::{Answer, Route};

/// The W3C header a caller's span arrives in.
pub const TRACEPARENT: &str = "traceparent";

struct Tracer {
    tx: SyncSender<export::Msg>,
    sample_ratio: f64,
    dropped: AtomicU64,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Whether traces are exported (an endpoint is configured).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Starts the exporter thread when an endpoint is configured. Once per
/// process: the tracer is global, as `tracing`'s subscriber is.
pub fn start(settings: &TracingSettings) -> std::io::Result<()> {
    let Some(endpoint) = settings.endpoint.clone() else {
        return Ok(());
    };
    if TRACER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(settings.queue_capacity);
    let s = settings.clone();
    std::thread::Builder::new()
        .name("quiver-otlp".into())
        .spawn(move || export::run(&s, &endpoint, &rx))?;
    let _ = TRACER.set(Tracer {
        tx,
        sample_ratio: settings.sample_ratio,
        dropped: AtomicU64::new(0),
    });
    if let Some(e) = &settings.endpoint {
        tracing::info!(endpoint = %e, "OpenTelemetry tracing on");
    }
    Ok(())
}

/// Sends the spans still queued, waiting at most `timeout` (shutdown).
pub fn flush(timeout: Duration) {
    let Some(t) = TRACER.get() else { return };
    let (ack, done) = std::sync::mpsc::sync_channel(1);
    if t.tx.send(export::Msg::Flush(ack)).is_ok() {
        let _ = done.recv_timeout(timeout);
    }
    let dropped = t.dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "traced requests dropped: the exporter's queue was full"
        );
    }
}

/// Which door a traced request came through: its `infer` span's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// HTTP: `SPAN_KIND_SERVER`.
    Http,
    /// A Kafka ingress record: `SPAN_KIND_CONSUMER`.
    Kafka,
    /// A gRPC call (or one request of a stream): `SPAN_KIND_SERVER`.
    Grpc,
}

/// A traced request so far. `Copy`, so it owns nothing on the heap.
#[derive(Debug, Clone, Copy)]
pub struct RequestTrace {
    door: Door,
    trace_id: [u8; 16],
    /// The caller's span, from `traceparent`.
    parent: Option<[u8; 8]>,
    root: [u8; 8],
    start: Instant,
    start_unix_ns: u64,
    decoded: Option<Instant>,
}

/// An HTTP request's trace, if tracing is on and the request is sampled.
#[inline]
pub fn begin(headers: &HeaderMap, started: Instant) -> Option<RequestTrace> {
    TRACER.get()?;
    begin_with(
        headers.get(TRACEPARENT).map(|v| v.as_bytes()),
        started,
        Door::Http,
    )
}

/// The trace of a request whose `traceparent` (if any) came some other
/// way (a Kafka record's header, gRPC metadata).
#[inline]
pub fn begin_with(
    traceparent: Option<&[u8]>,
    started: Instant,
    door: Door,
) -> Option<RequestTrace> {
    let tracer = TRACER.get()?;
    let parent = traceparent.and_then(traceparent::parse);
    match parent {
        Some(p) if !p.sampled => return None,
        None if tracer.sample_ratio < 1.0
            && (random() >> 11) as f64 / (1u64 << 53) as f64 >= tracer.sample_ratio =>
        {
            return None;
        }
        _ => {}
    }
    let trace_id = parent.map_or_else(
        || {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&random().to_be_bytes());
            id[8..].copy_from_slice(&random().to_be_bytes());
            id
        },
        |p| p.trace_id,
    );
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let since = started.elapsed().as_nanos() as u64;
    Some(RequestTrace {
        door,
        trace_id,
        parent: parent.map(|p| p.span_id),
        root: span_id(),
        start: started,
        start_unix_ns: unix.saturating_sub(since),
        decoded: None,
    })
}

/// The request body has been read and parsed.
#[inline]
pub fn decoded(trace: &mut Option<RequestTrace>) {
    if let Some(t) = trace {
        t.decoded = Some(Instant::now());
    }
}

/// The instants of an answered request's stages after decoding.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    queue_time: Duration,
    compute_time: Duration,
    batch_started: Instant,
    answered: Instant,
    encoded: Instant,
    batch_rows: usize,
}

impl Timing {
    /// `encoded`: when the response body was ready.
    pub fn of(answer: &Answer, encoded: Instant) -> Timing {
        Timing {
            queue_time: answer.queue_time,
            compute_time: answer.compute_time,
            batch_started: answer.batch_started,
            answered: answer.answered_at,
            encoded,
            batch_rows: answer.batch_rows,
        }
    }
}

/// Ends the request's trace and queues its spans for export; `timing` is
/// `None` for a request that got no answer from the model.
pub fn finish(
    trace: Option<RequestTrace>,
    route: &Route,
    status: u16,
    outcome: &str,
    timing: Option<Timing>,
) {
    let (Some(t), Some(tracer)) = (trace, TRACER.get()) else {
        return;
    };
    let end = Instant::now();
    let spec = &route.served.spec;
    let common = [
        otlp::KeyValue::string("quiver.model", spec.name.clone()),
        otlp::KeyValue::int("quiver.version", spec.version as i64),
    ];
    let mut root_attrs = common.to_vec();
    root_attrs.extend([
        otlp::KeyValue::string("quiver.arm", route.arm.as_str()),
        otlp::KeyValue::string("quiver.outcome", outcome),
        otlp::KeyValue::int(
            match t.door {
                Door::Http => "http.response.status_code",
                // The HTTP status the outcome maps to.
                Door::Kafka | Door::Grpc => "quiver.status_code",
            },
            i64::from(status),
        ),
    ]);
    if let Some(tm) = &timing {
        root_attrs.push(otlp::KeyValue::int(
            "quiver.batch_size",
            tm.batch_rows as i64,
        ));
    }
    let error = status >= 500;
    let mut spans = vec![otlp::Span {
        trace_id: t.trace_id.to_vec(),
        span_id: t.root.to_vec(),
        parent_span_id: t.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: "infer".into(),
        kind: match t.door {
            Door::Http | Door::Grpc => 2,
            Door::Kafka => 5,
        },
        start_time_unix_nano: t.at(t.start),
        end_time_unix_nano: t.at(end),
        attributes: root_attrs,
        status: Some(otlp::Status {
            message: if error {
                outcome.to_string()
            } else {
                String::new()
            },
            code: if error { 2 } else { 0 },
        }),
        flags: 1,
    }];
    let mut child =
        |name: &str, parent: [u8; 8], from: Instant, to: Instant, attrs: Vec<otlp::KeyValue>| {
            let id = span_id();
            spans.push(otlp::Span {
                trace_id: t.trace_id.to_vec(),
                span_id: id.to_vec(),
                parent_span_id: parent.to_vec(),
                name: name.into(),
                kind: 1,
                start_time_unix_nano: t.at(from),
                end_time_unix_nano: t.at(to.max(from)),
                attributes: attrs,
                status: None,
                flags: 1,
            });
            id
        };
    if let Some(decoded) = t.decoded {
        child("decode", t.root, t.start, decoded, Vec::new());
    }
    if let Some(tm) = timing {
        let queued = tm
            .batch_started
            .checked_sub(tm.queue_time)
            .unwrap_or(tm.batch_started);
        child("queue", t.root, queued, tm.batch_started, common.to_vec());
        let mut batch_attrs = common.to_vec();
        batch_attrs.push(otlp::KeyValue::int(
            "quiver.batch_size",
            tm.batch_rows as i64,
        ));
        let batch = child(
            "batch",
            t.root,
            tm.batch_started,
            tm.answered,
            batch_attrs.clone(),
        );
        child(
            "compute",
            batch,
            tm.batch_started,
            tm.batch_started + tm.compute_time,
            batch_attrs,
        );
        child("encode", t.root, tm.answered, tm.encoded, Vec::new());
        child("log", t.root, tm.encoded, end, Vec::new());
    }
    match tracer.tx.try_send(export::Msg::Spans(spans)) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            tracer.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl RequestTrace {
    /// Unix time in ns of an instant of this request.
    fn at(&self, i: Instant) -> u64 {
        match i.checked_duration_since(self.start) {
            Some(d) => self.start_unix_ns + d.as_nanos() as u64,
            None => self
                .start_unix_ns
                .saturating_sub(self.start.duration_since(i).as_nanos() as u64),
        }
    }
}

/// A non-zero random span id.
fn span_id() -> [u8; 8] {
    random().max(1).to_be_bytes()
}

/// xorshift64* per thread, seeded from the standard library's random
/// hasher keys: ids need to be unique, not secret.
fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1,
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-request state owns nothing on the heap: `Copy` types cannot.
    const _: fn() = || {
        fn is_copy<T: Copy>() {}
        is_copy::<Option<RequestTrace>>();
        is_copy::<Timing>();
    };

    #[test]
    fn off_means_no_trace_and_no_allocation() {
        // No exporter is started in this test binary: tracing is off.
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            hyper::header::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let started = Instant::now();
        let mut traces = Vec::with_capacity(1000);
        let info = allocation_counter::measure(|| {
            for _ in 0..1000 {
                let mut t = begin(&headers, started);
                decoded(&mut t);
                traces.push(t);
            }
        });
        assert_eq!(info.count_total, 0, "{info:?}");
        assert!(traces.iter().all(Option::is_none));
        // The counter does see this thread's allocations.
        let one = allocation_counter::measure(|| drop(std::hint::black_box(Box::new(1u8))));
        assert_eq!(one.count_total, 1);
    }

    #[test]
    fn ids_are_distinct_and_non_zero() {
        let ids: std::collections::BTreeSet<[u8; 8]> = (0..1000).map(|_| span_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&[0; 8]));
    }
}
