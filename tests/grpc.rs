//! The gRPC door end to end: the real gateway binary with `--grpc-addr`,
//! driven by the official `tritonclient.grpc` (tests/python/
//! tritonclient_grpc_check.py), every answer compared with ONNX Runtime's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use quiver_gateway::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use quiver_gateway::grpc::proto::infer_parameter::ParameterChoice;
use quiver_gateway::grpc::proto::model_infer_request::InferInputTensor;
use quiver_gateway::grpc::proto::{InferParameter, InferTensorContents, ModelInferRequest};
use quiver_tests::{Gateway, copy_model, scratch};

fn python() -> String {
    std::env::var("QUIVER_PYTHON")
        .expect("QUIVER_PYTHON must name the venv's python: eval \"$(scripts/setup.sh)\"")
}

async fn run_check(args: &[&str]) -> Output {
    let script = quiver_tests::root().join("tests/python/tritonclient_grpc_check.py");
    tokio::process::Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .await
        .expect("run the gRPC check script")
}

/// A repository with the examples the check uses, plus `types_typed`.
async fn repository(name: &str) -> std::path::PathBuf {
    let repo = scratch(name).unwrap();
    for model in ["mlp", "types", "slow"] {
        copy_model(model, &repo).unwrap();
    }
    let out = run_check(&["--write-typed-model", &repo.to_string_lossy()]).await;
    assert!(
        out.status.success(),
        "cannot write the typed model: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    repo
}

fn models_dir(repo: &Path) -> String {
    repo.to_string_lossy().into_owned()
}

/// The official Triton gRPC client, unmodified: health, metadata, config,
/// statistics, raw and typed contents for every datatype, requested
/// outputs, the streaming API, 2,000 concurrent calls batched together,
/// every bad input mapped to its status code, and the repository API with
/// and without the admin token.
#[tokio::test]
async fn tritonclient_grpc_talks_to_the_gateway() {
    let repo = repository("grpc-client").await;
    let max_message = (1u32 << 20).to_string();
    let gw = Gateway::start_ready(
        &repo,
        &["--grpc-addr", "127.0.0.1:0"],
        &[
            ("QUIVER_GRPC__MAX_MESSAGE_BYTES", max_message.as_str()),
            // Below the mlp queue's 1,024, so 2,000 calls on one channel
            // queue in the client rather than overflow the model's queue.
            ("QUIVER_GRPC__MAX_CONCURRENT_STREAMS", "1000"),
            // Small enough that a flood of slow requests overflows it.
            ("QUIVER_MODELS__MAX_QUEUE_SIZE", "4"),
            ("QUIVER_ADMIN_TOKEN", "s3cret"),
        ],
    )
    .await
    .unwrap();
    let grpc = gw
        .grpc_addr
        .expect("the gateway announces its gRPC address");
    let out = run_check(&[
        "--grpc",
        &grpc.to_string(),
        "--http",
        &gw.addr.to_string(),
        "--models-dir",
        &models_dir(&repo),
        "--max-message-bytes",
        &max_message,
        "--admin-token",
        "s3cret",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(" 0 failed"),
        "tritonclient grpc check failed:\n{stdout}\n{stderr}\ngateway log:\n{}",
        gw.log()
    );
}

/// One call of 8 rows to `slow` (about 20 ms of compute).
fn slow_request(i: u32) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "slow".into(),
        id: format!("c{i}"),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![8, 256],
            parameters: Default::default(),
            contents: Some(InferTensorContents {
                fp32_contents: vec![i as f32 / 10.0; 8 * 256],
                ..Default::default()
            }),
        }],
        ..Default::default()
    }
}

/// A repository with `slow` alone, batching one 8-row call at a time.
fn slow_repo(name: &str) -> std::path::PathBuf {
    let repo = scratch(name).unwrap();
    copy_model("slow", &repo).unwrap();
    std::fs::write(
        repo.join("slow/config.toml"),
        "max_batch_size = 8\nmax_queue_delay_us = 0\npreferred_batch_sizes = [8]\n",
    )
    .unwrap();
    repo
}

async fn channel(grpc: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A call whose deadline passes while it waits behind others is answered
/// DEADLINE_EXCEEDED by the gateway and never reaches the model. The
/// deadline is the protocol's `timeout` parameter: a `grpc-timeout` is
/// enforced the same way, but a client that sets one gives up at the same
/// instant itself, so which side reports it is a race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_is_answered_by_the_gateway() {
    let gw = Gateway::start_ready(
        &slow_repo("grpc-deadline"),
        &["--grpc-addr", "127.0.0.1:0"],
        &[],
    )
    .await
    .unwrap();
    let channel = channel(gw.grpc_addr.expect("gRPC address")).await;
    let mut backlog = Vec::new();
    for i in 0..6u32 {
        let mut client = GrpcInferenceServiceClient::new(channel.clone());
        backlog.push(tokio::spawn(async move {
            client.model_infer(slow_request(i)).await
        }));
    }
    // One call running and one queued behind it are 20 ms of work at the
    // least, four times the late call's budget; waiting for all six in
    // flight at once would race the first one's answer.
    assert!(gw.wait_in_flight("slow", 2.0).await.unwrap() >= 2.0);
    let mut late = slow_request(99);
    late.parameters.insert(
        "timeout".into(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::Int64Param(5_000)),
        },
    );
    let status = GrpcInferenceServiceClient::new(channel.clone())
        .model_infer(late)
        .await
        .expect_err("a call queued behind 20 ms of work or more cannot finish in 5 ms");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status}");
    assert!(status.message().contains("deadline"), "{status}");
    for call in backlog {
        call.await.unwrap().unwrap();
    }
    let expired = gw
        .metric(
            "quiver_dropped_requests_total",
            &["model=\"slow\"", "reason=\"expired\""],
        )
        .await
        .unwrap();
    assert_eq!(expired, 1.0, "the late call left the queue unrun");
}

/// SIGTERM with a gRPC stream in flight: every request on it is answered,
/// then the process exits cleanly and the port no longer accepts, as over
/// HTTP. Nothing here depends on timing: the stream is proven to be
/// served (its first request answered) before SIGTERM, and the rest of
/// its requests go out only once the gateway has stopped accepting
/// connections, so they reach the one slow instance during the shutdown
/// (one runs, the others queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_graceful_shutdown_finishes_calls_in_flight() {
    let mut gw = Gateway::start_ready(
        &slow_repo("grpc-shutdown"),
        &["--grpc-addr", "127.0.0.1:0"],
        &[],
    )
    .await
    .unwrap();
    let grpc = gw.grpc_addr.expect("gRPC address");
    let mut client = GrpcInferenceServiceClient::new(channel(grpc).await);
    let (requests, outbound) = tokio::sync::mpsc::channel(8);
    let mut answers = client
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await
        .expect("stream opened")
        .into_inner();
    requests.send(slow_request(0)).await.unwrap();
    let first = answers.message().await.unwrap().expect("first answer");
    assert_eq!(first.infer_response.unwrap().id, "c0");
    gw.terminate().unwrap();
    let mut refused = false;
    for _ in 0..3000 {
        if tokio::net::TcpStream::connect(grpc).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "gRPC port still accepting 30 s after SIGTERM");
    for i in 1..6u32 {
        requests.send(slow_request(i)).await.unwrap();
    }
    drop(requests);
    for i in 1..6u32 {
        let answer = answers
            .message()
            .await
            .unwrap_or_else(|s| panic!("in-flight request {i} failed: {s}"))
            .unwrap_or_else(|| panic!("the stream ended before answer {i}"));
        assert_eq!(answer.error_message, "", "request {i}");
        let answer = answer.infer_response.expect("an answer");
        assert_eq!(answer.id, format!("c{i}"));
        assert_eq!(answer.outputs[0].shape, vec![8, 256]);
    }
    assert!(
        answers.message().await.unwrap().is_none(),
        "the stream ends"
    );
    assert_eq!(gw.wait_exit(Duration::from_secs(30)).unwrap(), 0);
    assert!(gw.log().contains("shutdown complete"), "{}", gw.log());
}
