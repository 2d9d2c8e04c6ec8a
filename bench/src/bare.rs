//! The transport ceiling: a server on the gateway's own HTTP stack (hyper on
//! tokio, same worker count) that decodes the same inference request body
//! with the gateway's decoder and answers a fixed response, with no model,
//! queue or batching. The gateway's throughput is reported as a ratio to it.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use quiver_gateway::protocol::{HEADER_CONTENT_LENGTH, encode_infer_response, parse_infer_request};
use quiver_gateway::tensor::{Tensor, TensorData};

use crate::workload::InputSpec;

/// What the server answers.
struct Answers {
    /// The fixed inference response.
    infer: Bytes,
    /// `GET /v2/models/{m}`, so the harness can discover the input.
    metadata: Bytes,
}

async fn answer(
    answers: Arc<Answers>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = if req.method() == Method::GET {
        if req.uri().path().starts_with("/v2/models/") {
            (StatusCode::OK, answers.metadata.clone())
        } else {
            (StatusCode::OK, Bytes::from_static(b"{}"))
        }
    } else {
        let header_len = req
            .headers()
            .get(HEADER_CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        match parse_infer_request(&body, header_len) {
            Ok(_) => (StatusCode::OK, answers.infer.clone()),
            Err(e) => (StatusCode::BAD_REQUEST, Bytes::from(e.0)),
        }
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Serves on `addr` until the process ends, printing
/// `listening on http://ADDR` on stderr once bound (as the gateway does).
pub fn serve(addr: &str, model: &str, input: &InputSpec, output: &InputSpec) -> Result<()> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let out = Tensor {
        name: output.name.clone(),
        shape: output.shape.iter().map(|&d| d.max(1)).collect(),
        data: TensorData::Fp32(vec![
            0.25;
            output
                .shape
                .iter()
                .map(|&d| d.max(1) as usize)
                .product()
        ]),
    };
    let infer = encode_infer_response(model, 1, None, &[(&out, false)]).body;
    let metadata = serde_json::json!({
        "name": model, "versions": ["1"], "platform": "bare",
        "inputs": [input], "outputs": [output],
    });
    let answers = Arc::new(Answers {
        infer: Bytes::from(infer),
        metadata: Bytes::from(serde_json::to_vec(&metadata)?),
    });
    let addr = addr.to_string();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            eprintln!("listening on http://{}", listener.local_addr()?);
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let answers = Arc::clone(&answers);
                // A benchmark-only server: each connection lives until the
                // client closes it, and the process is killed to stop.
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(Arc::clone(&answers), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
}
