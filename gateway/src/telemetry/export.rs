//! The exporter: one OS thread that takes finished traces from a bounded
//! queue, encodes them as an OTLP `ExportTraceServiceRequest` and POSTs it
//! to the endpoint (OTLP/HTTP, protobuf) every interval. A slow or absent
//! endpoint costs dropped spans, never a request's time.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use prost::Message;

use super::config::TracingSettings;
use super::otlp;
use crate::plain_http::{self, Url};

/// What the exporter thread is sent.
pub enum Msg {
    Spans(Vec<otlp::Span>),
    /// Send what is queued now, then answer.
    Flush(SyncSender<()>),
}

pub fn run(settings: &TracingSettings, endpoint: &Url, rx: &Receiver<Msg>) {
    let resource = otlp::Resource {
        attributes: vec![
            otlp::KeyValue::string("service.name", settings.service_name.clone()),
            otlp::KeyValue::string("service.version", env!("CARGO_PKG_VERSION")),
        ],
    };
    let mut pending: Vec<otlp::Span> = Vec::new();
    let mut next = Instant::now() + settings.export_interval;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        let flushed = match rx.recv_timeout(wait) {
            Ok(Msg::Spans(spans)) => {
                pending.extend(spans);
                None
            }
            Ok(Msg::Flush(ack)) => Some(ack),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if (flushed.is_some() || Instant::now() >= next) && !pending.is_empty() {
            let spans = std::mem::take(&mut pending);
            let n = spans.len();
            let request = otlp::ExportTraceServiceRequest {
                resource_spans: vec![otlp::ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![otlp::ScopeSpans {
                        scope: Some(otlp::InstrumentationScope {
                            name: "quiver-gateway".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                        }),
                        spans,
                    }],
                }],
            };
            let body = request.encode_to_vec();
            let sent = request_of(endpoint, &body, settings.timeout);
            if let Err(e) = sent {
                tracing::warn!(%endpoint, spans = n, error = %e, "trace export failed; spans dropped");
            }
        }
        if Instant::now() >= next {
            next = Instant::now() + settings.export_interval;
        }
        if let Some(ack) = flushed {
            let _ = ack.send(());
        }
    }
}

fn request_of(endpoint: &Url, body: &[u8], timeout: Duration) -> Result<(), String> {
    plain_http::request(
        endpoint,
        "POST",
        Some(("application/x-protobuf", body)),
        timeout,
    )
    .map(|_| ())
}
