//! The gRPC door: `inference.GRPCInferenceService` (the Open Inference
//! Protocol over gRPC, as `tritonclient.grpc` and KServe's stubs speak it)
//! on its own port, over the same inference path as HTTP.
//!
//! - `service`: the RPCs;
//! - `convert`: protobuf messages ↔ requests and tensors;
//! - `serve` (here): the listener, with TLS when configured, HTTP/2
//!   limits, and graceful shutdown.

pub mod config;
mod convert;
mod service;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub use config::{GrpcConfig, GrpcSettings};

use crate::state::Gateway;
use crate::tls::{Conn, Door, Tls};

/// The generated messages and service trait (`proto/inference.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

/// tonic reports a message over the size limit as OUT_OF_RANGE; the
/// protocol's clients (and gRPC's own implementations) expect
/// RESOURCE_EXHAUSTED for it.
pub(crate) fn limit_status(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        Status::resource_exhausted(status.message().to_string())
    } else {
        status
    }
}

/// Serves gRPC on `listener` until `shutdown` resolves, then stops
/// accepting and lets the calls in flight finish.
pub async fn serve(
    gw: Arc<Gateway>,
    settings: GrpcSettings,
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service =
        proto::grpc_inference_service_server::GrpcInferenceServiceServer::new(service::Service {
            gw,
            stream_max_in_flight: settings.stream_max_in_flight,
        })
        .max_decoding_message_size(settings.max_message_bytes)
        .max_encoding_message_size(settings.max_message_bytes);
    let incoming = accept(listener, tls);
    tonic::transport::Server::builder()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .http2_keepalive_interval(settings.keepalive_interval)
        .http2_keepalive_timeout(Some(settings.keepalive_timeout))
        .layer(tower::util::MapResponseLayer::new(size_limit_code))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Rewrites a trailers-only OUT_OF_RANGE "message too large" answer (a
/// unary request over the limit, refused before it reached a handler) to
/// RESOURCE_EXHAUSTED.
fn size_limit_code<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    let too_large = headers.get("grpc-message").is_some_and(|v| {
        v.to_str()
            .is_ok_and(|m| m.contains("too%20large") || m.contains("too large"))
    });
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// Accepted connections, TLS-wrapped when configured. The handshake runs
/// on its own task, so a slow client never holds up the accept loop.
fn accept(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
) -> ReceiverStream<Result<Conn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    // Ends when the server stops reading the stream (at shutdown).
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match Conn::accept(stream, tls.as_deref(), Door::Grpc).await {
                    Ok(conn) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "gRPC connection refused at the TLS handshake")
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
