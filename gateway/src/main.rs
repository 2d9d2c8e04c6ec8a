//! `quiver-gateway`: serve a folder of ONNX models over the Open Inference
//! Protocol v2.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use quiver_gateway::config::{ENV_PREFIX, GatewayConfig};

/// mimalloc rather than glibc's malloc: a request's buffers are allocated
/// on a serving thread and many are freed on another (the prediction
/// log's writer, the instance threads), the pattern glibc handles worst
/// (its arenas' locks and fastbin consolidation were a quarter of the
/// gateway's user time under load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serve ONNX models over HTTP and gRPC (Open Inference Protocol v2, as
/// Triton and KServe clients speak it), batching requests dynamically onto ONNX Runtime.
///
/// The model repository holds `<model>/<version>/model.onnx` (version: a
/// positive integer) and optionally `<model>/config.toml` for batching,
/// instances and threads. Inputs, outputs and shapes are read from the ONNX
/// graph.
///
/// Settings come from, lowest to highest: built-in defaults, the --config
/// file, QUIVER_<SECTION>__<KEY> environment variables (for example
/// QUIVER_MODELS__MAX_BATCH_SIZE=16), then these flags. ONNX Runtime's
/// library is found through ORT_DYLIB_PATH or the location scripts/setup.sh
/// installs it to.
#[derive(Parser, Debug)]
#[command(name = "quiver-gateway", version, about, long_about)]
struct Cli {
    /// The model repository: a folder or `s3://bucket/prefix` (overrides
    /// `repository.path`; S3 credentials and endpoint from the `AWS_*`
    /// environment variables).
    #[arg(long, value_name = "DIR|S3_URL")]
    model_repository: Option<String>,

    /// Address to listen on, e.g. 127.0.0.1:8000; port 0 picks a free port
    /// (overrides `http.addr`).
    #[arg(long, value_name = "HOST:PORT")]
    http_addr: Option<String>,

    /// Address for the gRPC listener (`inference.GRPCInferenceService`),
    /// e.g. 127.0.0.1:8001; port 0 picks a free port (overrides `grpc.addr`;
    /// unset in both, no gRPC).
    #[arg(long, value_name = "HOST:PORT")]
    grpc_addr: Option<String>,

    /// Gateway config file (TOML); see configs/gateway.toml for every key.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Path of libonnxruntime.so (overrides `onnxruntime.library_path`).
    #[arg(long, value_name = "FILE")]
    ort_library: Option<PathBuf>,

    /// Log filter, e.g. `info` or `quiver_gateway=debug` (RUST_LOG also works).
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).context("invalid log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();

    let env = std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX));
    let mut config = GatewayConfig::load(cli.config.as_deref(), env)?;
    if let Some(dir) = cli.model_repository {
        config.repository.path = Some(dir);
    }
    if let Some(addr) = cli.http_addr {
        config.http.addr = addr;
    }
    if let Some(addr) = cli.grpc_addr {
        config.grpc.addr = Some(addr);
    }
    if let Some(lib) = cli.ort_library {
        config.onnxruntime.library_path = Some(lib);
    }
    let settings = config.validate()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.http.workers)
        .thread_name("quiver-http")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let http = tokio::net::TcpListener::bind(settings.http.addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.http.addr))?;
        let grpc = match &settings.grpc {
            Some(g) => Some(
                tokio::net::TcpListener::bind(g.addr)
                    .await
                    .with_context(|| format!("cannot listen for gRPC on {}", g.addr))?,
            ),
            None => None,
        };
        let listeners = quiver_gateway::server::Listeners { http, grpc };
        quiver_gateway::run(settings, listeners, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
