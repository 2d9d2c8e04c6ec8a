//! The exporter: one OS thread that takes finished traces from a bounded
//! queue, encodes them as an OTLP `ExportTraceServiceRequest` and POSTs it
//! to the endpoint (OTLP/HTTP, protobuf) every interval. A slow or absent
//! endpoint costs dropped spans, never a request's time.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use prost::Message;

use super::config::{Endpoint, TracingSettings};
use super::otlp;

/// What the exporter thread is sent.
pub enum Msg {
    Spans(Vec<otlp::Span>),
    /// Send what is queued now, then answer.
    Flush(SyncSender<()>),
}

pub fn run(settings: &TracingSettings, endpoint: &Endpoint, rx: &Receiver<Msg>) {
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
            if let Err(e) = post(endpoint, &request.encode_to_vec(), settings.timeout) {
                tracing::warn!(endpoint = %endpoint.authority, spans = n, error = %e, "trace export failed; spans dropped");
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

/// One POST on a fresh connection; an answer other than 2xx is an error.
fn post(endpoint: &Endpoint, body: &[u8], timeout: Duration) -> Result<(), String> {
    let addr = endpoint
        .authority
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("the endpoint's host has no address")?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        endpoint.path,
        endpoint.authority,
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut status = [0u8; 12];
    s.read_exact(&mut status).map_err(|e| e.to_string())?;
    match &status[9..12] {
        [b'2', _, _] => Ok(()),
        code => Err(format!(
            "the endpoint answered {}",
            String::from_utf8_lossy(code)
        )),
    }
}
