//! The gRPC door end to end: the real gateway binary with `--grpc-addr`,
//! driven by the official `tritonclient.grpc` (tests/python/
//! tritonclient_grpc_check.py), every answer compared with ONNX Runtime's.

use std::path::Path;
use std::process::Output;

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
