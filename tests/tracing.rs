//! OpenTelemetry tracing end to end: the real gateway exports to an OTLP
//! receiver started here (OTLP/HTTP; what arrives is decoded with the
//! `opentelemetry-proto` crate's messages, generated from the published
//! protobufs). A request with a sampled `traceparent` becomes a server
//! span under the caller's span, with one child per stage carrying the
//! model, version and batch size; an unsampled one leaves no span; one
//! without the header starts a trace of its own. A Kafka ingress record
//! (through a real Kafka-protocol broker) is traced under the
//! `traceparent` in its headers, and a gRPC call under the one in its
//! metadata.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use quiver_contract::records::REQUESTS_TOPIC;
use quiver_tests::kafka::{Broker, Outgoing, produce};
use quiver_tests::{Gateway, copy_model, mlp_body, scratch, send};

/// An OTLP/HTTP traces receiver on a free port; every span received, and
/// the `service.name` of their resource.
struct Receiver {
    addr: String,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

impl Receiver {
    fn start() -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&spans);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let Ok(request) = read_request(&mut conn) else {
                    continue;
                };
                let reply = match ExportTraceServiceRequest::decode(request.as_slice()) {
                    Ok(export) => {
                        let mut all = sink.lock().unwrap_or_else(|p| p.into_inner());
                        for rs in export.resource_spans {
                            let service = rs
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|kv| kv.key == "service.name")
                                .and_then(|kv| kv.value.as_ref())
                                .and_then(|v| match &v.value {
                                    Some(Value::StringValue(s)) => Some(s.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default();
                            for ss in rs.scope_spans {
                                all.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
                            }
                        }
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
                    }
                    Err(_) => "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
                };
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        Ok(Receiver { addr, spans })
    }

    /// The spans of `trace_id` once `n` have arrived.
    fn wait(&self, trace_id: &[u8], n: usize) -> Vec<Span> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let got: Vec<Span> = self
                .spans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(_, s)| s.trace_id == trace_id)
                .map(|(_, s)| s.clone())
                .collect();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < until, "{} of {n} spans arrived", got.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The body of one HTTP/1.1 POST, checked to be OTLP protobuf.
fn read_request(conn: &mut std::net::TcpStream) -> Result<Vec<u8>> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    anyhow::ensure!(line.starts_with("POST /v1/traces "), "{line}");
    let mut len = 0;
    let mut protobuf = false;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse()?;
        }
        protobuf |= l == "content-type: application/x-protobuf";
    }
    anyhow::ensure!(protobuf, "not application/x-protobuf");
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok(body)
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.clone())
}

/// A trace id written in hex, as bytes.
fn unhex(trace: &str) -> Result<Vec<u8>> {
    Ok((0..trace.len() / 2)
        .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()?)
}

/// The span called `name`.
fn named<'a>(spans: &'a [Span], name: &str) -> Result<&'a Span> {
    spans.iter().find(|s| s.name == name).with_context(|| {
        format!(
            "no {name} span in {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

/// The names of `root`'s children, sorted.
fn children<'a>(spans: &'a [Span], root: &Span) -> Vec<&'a str> {
    let mut names: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id == root.span_id)
        .map(|s| s.name.as_str())
        .collect();
    names.sort_unstable();
    names
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn infer(gw: &Gateway, traceparent: Option<&str>) -> Result<()> {
    let headers: Vec<(&str, String)> = traceparent
        .map(|t| vec![("traceparent", t.to_string())])
        .unwrap_or_default();
    let body = Bytes::from(mlp_body(&[0.5; 16]).to_string());
    let r = send(gw.addr, "POST", "/v2/models/mlp/infer", &headers, body).await?;
    anyhow::ensure!(r.status == 200, "{}", r.text());
    // The per-request timing headers stay as they were.
    anyhow::ensure!(r.header("x-quiver-queue-us").is_some());
    Ok(())
}

/// A receiver, and a gateway serving `mlp` that exports to it every 50 ms,
/// started with `args` and the extra environment `env`.
async fn traced_gateway(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(Receiver, Gateway)> {
    let receiver = Receiver::start()?;
    let repo = scratch(name)?;
    copy_model("mlp", &repo)?;
    let endpoint = format!("http://{}/v1/traces", receiver.addr);
    let mut all = vec![
        ("QUIVER_TRACING__OTLP_ENDPOINT", endpoint.as_str()),
        ("QUIVER_TRACING__EXPORT_INTERVAL_MS", "50"),
    ];
    all.extend_from_slice(env);
    let gw = Gateway::start_ready(&repo, args, &all).await?;
    Ok((receiver, gw))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_per_stage_reach_an_otlp_receiver_under_the_callers_span() -> Result<()> {
    let (receiver, gw) = traced_gateway(
        "tracing-repo",
        &[],
        &[("QUIVER_TRACING__SERVICE_NAME", "quiver-under-test")],
    )
    .await?;

    let unsampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    infer(&gw, Some(&format!("00-{unsampled}-00f067aa0ba902b7-00"))).await?;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller = "b7ad6b7169203331";
    infer(&gw, Some(&format!("00-{trace}-{caller}-01"))).await?;

    let trace_id = unhex(trace)?;
    let spans = receiver.wait(&trace_id, 7);
    let by_name = |name: &str| named(&spans, name);
    let root = by_name("infer")?;
    assert_eq!(
        hex(&root.parent_span_id),
        caller,
        "the server span's parent is the caller's"
    );
    assert_eq!(root.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(
        attr(root, "quiver.model"),
        Some(Value::StringValue("mlp".into()))
    );
    assert_eq!(attr(root, "quiver.version"), Some(Value::IntValue(2)));
    assert_eq!(
        attr(root, "quiver.arm"),
        Some(Value::StringValue("stable".into()))
    );
    assert_eq!(
        attr(root, "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    assert_eq!(attr(root, "quiver.batch_size"), Some(Value::IntValue(1)));
    for stage in ["decode", "queue", "batch", "encode", "log"] {
        let s = by_name(stage)?;
        assert_eq!(
            s.parent_span_id, root.span_id,
            "{stage} is a child of infer"
        );
        assert!(
            s.start_time_unix_nano >= root.start_time_unix_nano
                && s.end_time_unix_nano <= root.end_time_unix_nano
                && s.start_time_unix_nano <= s.end_time_unix_nano,
            "{stage} lies within infer"
        );
    }
    let batch = by_name("batch")?;
    let compute = by_name("compute")?;
    assert_eq!(
        compute.parent_span_id, batch.span_id,
        "compute is a child of batch"
    );
    assert_eq!(attr(compute, "quiver.batch_size"), Some(Value::IntValue(1)));
    assert_eq!(
        attr(compute, "quiver.model"),
        Some(Value::StringValue("mlp".into()))
    );
    let queue = by_name("queue")?;
    assert!(queue.end_time_unix_nano <= batch.start_time_unix_nano);
    let mut ids: Vec<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), spans.len(), "span ids are unique");

    // Exports arrive in order: the unsampled request, sent first, left none.
    let all = receiver
        .spans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert!(all.iter().all(|(_, s)| hex(&s.trace_id) != unsampled));
    assert!(
        all.iter()
            .all(|(service, _)| service == "quiver-under-test")
    );

    // Without a traceparent the request starts a trace of its own.
    let before = all.len();
    infer(&gw, None).await?;
    let until = Instant::now() + Duration::from_secs(30);
    let fresh = loop {
        let all = receiver
            .spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((_, s)) = all[before..].iter().find(|(_, s)| s.name == "infer") {
            break s.clone();
        }
        assert!(
            Instant::now() < until,
            "no span for the request without traceparent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(fresh.parent_span_id.is_empty());
    assert_ne!(fresh.trace_id, trace_id);
    assert_eq!(fresh.trace_id.len(), 16);
    Ok(())
}

/// A Kafka ingress record with a `traceparent` header is traced like an
/// HTTP request, as a consumer span under the producer's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_ingress_record_is_traced_under_its_traceparent_header() -> Result<()> {
    let broker = Broker::start()?;
    let spool = scratch("tracing-kafka-spool")?;
    let bootstrap = broker.bootstrap();
    let env = [
        ("QUIVER_KAFKA__BROKERS", bootstrap.as_str()),
        ("QUIVER_KAFKA__SPOOL_DIR", spool.to_str().context("path")?),
        ("QUIVER_KAFKA__INGRESS__ENABLED", "true"),
        ("QUIVER_KAFKA__INGRESS__GROUP_ID", "tracing"),
    ];
    let (receiver, gw) = traced_gateway("tracing-kafka-repo", &[], &env).await?;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let producer_span = "c7ad6b7169203332";
    let traceparent = format!("00-{trace}-{producer_span}-01");
    let value = serde_json::json!({"model_name": "mlp", "id": "traced",
        "inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": vec![0.5_f32; 16]}]});
    produce(
        &bootstrap,
        REQUESTS_TOPIC,
        &[Outgoing {
            key: Some("traced"),
            value: value.to_string().into_bytes(),
            headers: vec![("traceparent", traceparent.as_str())],
        }],
    )?;
    let trace_id = unhex(trace)?;
    let spans = tokio::task::spawn_blocking(move || receiver.wait(&trace_id, 7)).await?;
    let root = named(&spans, "infer")?;
    assert_eq!(hex(&root.parent_span_id), producer_span);
    assert_eq!(root.kind, 5, "SPAN_KIND_CONSUMER");
    assert_eq!(attr(root, "quiver.status_code"), Some(Value::IntValue(200)));
    assert_eq!(
        attr(root, "quiver.model"),
        Some(Value::StringValue("mlp".into()))
    );
    assert_eq!(
        children(&spans, root),
        ["batch", "decode", "encode", "log", "queue"]
    );
    drop(gw);
    Ok(())
}

/// A gRPC call with a `traceparent` in its metadata is traced like an HTTP
/// request: a server span under the caller's, one child per stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_is_traced_under_its_traceparent_metadata() -> Result<()> {
    use quiver_gateway::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    use quiver_gateway::grpc::proto::model_infer_request::InferInputTensor;
    use quiver_gateway::grpc::proto::{InferTensorContents, ModelInferRequest};

    let (receiver, gw) =
        traced_gateway("tracing-grpc-repo", &["--grpc-addr", "127.0.0.1:0"], &[]).await?;
    let grpc = gw.grpc_addr.context("gRPC address")?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
        .connect()
        .await?;
    let mut client = GrpcInferenceServiceClient::new(channel);
    let trace = "6cf92f3577b34da6a3ce929d0e0e4738";
    let caller = "d7ad6b7169203333";
    let mut request = tonic::Request::new(ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![1, 16],
            parameters: Default::default(),
            contents: Some(InferTensorContents {
                fp32_contents: vec![0.5; 16],
                ..Default::default()
            }),
        }],
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("traceparent", format!("00-{trace}-{caller}-01").parse()?);
    client.model_infer(request).await?;
    let trace_id = unhex(trace)?;
    let spans = tokio::task::spawn_blocking(move || receiver.wait(&trace_id, 7)).await?;
    let root = named(&spans, "infer")?;
    assert_eq!(hex(&root.parent_span_id), caller);
    assert_eq!(root.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(attr(root, "quiver.status_code"), Some(Value::IntValue(200)));
    assert_eq!(
        children(&spans, root),
        ["batch", "decode", "encode", "log", "queue"]
    );
    drop(gw);
    Ok(())
}
