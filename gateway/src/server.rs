//! The server as a library function: `run(settings, listener, shutdown)`.
//! It loads ONNX Runtime, starts the model manager (which loads the
//! repository off the serving threads and keeps watching it), serves HTTP
//! at once (ready once the first load ends), and on shutdown stops
//! accepting, drains connections, stops the manager, lets every batcher
//! finish its queue, joins the engine threads and flushes the prediction
//! log (to the broker, else the spool).

use std::future::Future;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::backend::onnx;
use crate::config::Settings;
use crate::live::LiveModels;
use crate::manager::ManagerHandle;
use crate::prediction_log::{LogError, TrafficLog};
use crate::shadow::Shadows;

/// State shared by every connection.
pub struct Gateway {
    pub live: ArcSwap<LiveModels>,
    pub settings: Settings,
    pub prometheus: PrometheusHandle,
    /// Set once at start; the admin API sends it commands.
    pub manager: OnceLock<ManagerHandle>,
    pub shadows: Shadows,
    /// Predictions and labels on their way to Kafka or the local log.
    pub traffic: TrafficLog,
    /// The live dashboard's charts and registry view.
    pub dashboard: crate::dashboard::Dashboard,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    OnnxRuntime(#[from] crate::backend::BackendError),
    #[error("model repository {0} is not a directory")]
    Repository(String),
    #[error(transparent)]
    Registry(#[from] quiver_registry::RegistryError),
    #[error("metrics recorder: {0}")]
    Metrics(String),
    #[error("cannot start the loader thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Ingress(crate::ingress::IngressError),
}

/// Serves until `shutdown` resolves, then shuts down in order.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let prometheus = crate::metrics::install().map_err(ServeError::Metrics)?;
    let env = onnx::environment(settings.ort_library.as_deref())?;
    let registry = quiver_registry::Registry::open(&settings.repository, &settings.s3)?;
    match registry.local_root() {
        Some(root) if !root.is_dir() => {
            return Err(ServeError::Repository(root.display().to_string()));
        }
        Some(_) => {}
        // An object store that cannot be reached now may be reachable at
        // the next poll: the gateway starts, unready, and says why.
        None => match registry.check() {
            Ok(()) => {
                tracing::info!(repository = %registry.describe(), "model repository reachable")
            }
            Err(e) => tracing::error!(repository = %registry.describe(), error = %e,
                "model repository not reachable; retrying at every poll"),
        },
    }
    let traffic = TrafficLog::start(settings.log.clone())?;
    crate::telemetry::start(&settings.tracing).map_err(ServeError::Thread)?;
    let gw = Arc::new(Gateway {
        traffic,
        dashboard: crate::dashboard::Dashboard::new(registry.clone(), &settings.dashboard),
        live: ArcSwap::from_pointee(LiveModels::default()),
        shadows: Shadows::new(
            settings.routing.shadow_max_in_flight,
            settings.routing.shadow_tolerance,
        ),
        settings,
        prometheus,
        manager: OnceLock::new(),
    });

    // Loading runs ONNX Runtime: on the manager's worker threads, never
    // a tokio worker.
    let manager =
        crate::manager::start(Arc::clone(&gw), env, registry).map_err(ServeError::Thread)?;
    if gw.manager.set(manager).is_err() {
        tracing::error!("model manager started twice");
    }
    crate::dashboard::start(&gw);

    let stop_ingress = Arc::new(tokio::sync::Notify::new());
    let ingress = match gw.settings.ingress.clone() {
        Some(settings) => Some(
            crate::ingress::start(Arc::clone(&gw), settings, Arc::clone(&stop_ingress))
                .map_err(ServeError::Ingress)?,
        ),
        None => None,
    };

    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "quiver-gateway listening on http://{addr}");
    }
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gw = Arc::clone(&gw);
                let service = service_fn(move |req| crate::http::route(Arc::clone(&gw), req));
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                // Tracked by `graceful`, which shutdown waits on below.
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: no longer accepting connections");
    drop(listener);
    // Kafka ingress stops reading and finishes what it read, while HTTP
    // connections drain; both need the batchers, which close after.
    stop_ingress.notify_one();
    let grace = gw.settings.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
    }
    if let Some(task) = ingress
        && tokio::time::timeout(grace, task).await.is_err()
    {
        tracing::warn!(
            ?grace,
            "Kafka ingress still answering after the grace period"
        );
    }
    // Queued requests have all been answered or abandoned by now; let each
    // batcher drain and join its engine threads off the async runtime.
    let gw2 = Arc::clone(&gw);
    let joined = tokio::task::spawn_blocking(move || {
        if let Some(m) = gw2.manager.get() {
            m.shutdown();
        }
        let live = gw2.live.load_full();
        for v in live.served() {
            v.batcher.close();
        }
        for v in live.served() {
            v.batcher.join();
        }
        // Every answer has been logged by now: flush the log last.
        gw2.traffic.shutdown();
        crate::telemetry::flush(std::time::Duration::from_secs(2));
    })
    .await;
    if joined.is_err() {
        tracing::error!("engine shutdown task failed");
    }
    tracing::info!("shutdown complete");
    Ok(())
}
