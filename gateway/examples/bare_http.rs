//! The transport ceiling: a server on the gateway's own HTTP stack (hyper on
//! tokio, same worker count) that decodes the same inference request body
//! with the gateway's decoder and answers a fixed response, with no model,
//! queue or batching. Benchmarks report the gateway as a ratio to this.
//!
//! cargo run --release -p quiver-gateway --example bare_http -- 127.0.0.1:8001

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use quiver_gateway::protocol::{encode_infer_response, parse_infer_request};
use quiver_gateway::tensor::{Tensor, TensorData};

async fn answer(
    fixed: Arc<Vec<u8>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status = match parse_infer_request(&body, None) {
        Ok(_) => 200,
        Err(_) => 400,
    };
    let mut resp = Response::new(Full::new(Bytes::from(fixed.as_ref().clone())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn main() -> Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8001".into());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let out = Tensor {
        name: "probabilities".into(),
        shape: vec![1, 4],
        data: TensorData::Fp32(vec![0.1, 0.2, 0.3, 0.4]),
    };
    let fixed = Arc::new(encode_infer_response("mlp", 1, None, &[(&out, false)])?.body);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let fixed = Arc::clone(&fixed);
                // Benchmark-only server: connections live until the client closes them.
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(Arc::clone(&fixed), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
}
