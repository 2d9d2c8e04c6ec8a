//! The server as a library function: `run(settings, listeners, shutdown)`.
//! It only wires the parts together: loads ONNX Runtime, builds the shared
//! state (`state::Gateway`), starts the model manager (which loads the
//! repository off the serving threads and keeps watching it), opens the
//! doors (HTTP, gRPC when configured, the Kafka ingress when configured),
//! and on shutdown closes them in order: stop accepting, drain HTTP and
//! gRPC calls and the ingress, stop the manager, let every batcher finish
//! its queue, join the engine threads, flush the prediction log.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::backend::onnx;
use crate::config::Settings;
use crate::live::LiveModels;
use crate::prediction_log::{LogError, TrafficLog};
use crate::shadow::Shadows;
use crate::state::Gateway;
use crate::tls::{Conn, Door, Tls, TlsError};

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
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("gRPC is configured but no gRPC listener was given")]
    NoGrpcListener,
}

/// The sockets the doors listen on, bound by the caller (port 0 in tests).
pub struct Listeners {
    pub http: TcpListener,
    /// Required when `settings.grpc` is set.
    pub grpc: Option<TcpListener>,
}

/// Serves until `shutdown` resolves, then shuts down in order.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let prometheus = crate::metrics::install().map_err(ServeError::Metrics)?;
    let env = onnx::environment(settings.ort_library.as_deref())?;
    let registry =
        quiver_registry::Registry::open(&settings.repository.path, &settings.repository.s3)?;
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
    let tls = settings.tls.clone().map(Tls::load).transpose()?;
    let grpc = match (settings.grpc.clone(), listeners.grpc) {
        (Some(s), Some(l)) => Some((s, l)),
        (Some(_), None) => return Err(ServeError::NoGrpcListener),
        (None, _) => None,
    };
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
        commands: OnceLock::new(),
    });

    // Loading runs ONNX Runtime: on the manager's worker threads, never
    // a tokio worker.
    let manager =
        crate::manager::start(Arc::clone(&gw), env, registry).map_err(ServeError::Thread)?;
    if gw.commands.set(manager.commands()).is_err() {
        tracing::error!("model manager started twice");
    }
    crate::dashboard::start(&gw);

    let stop_ingress = Arc::new(Notify::new());
    let ingress = match gw.settings.ingress.clone() {
        Some(settings) => Some(
            crate::ingress::start(Arc::clone(&gw), settings, Arc::clone(&stop_ingress))
                .map_err(ServeError::Ingress)?,
        ),
        None => None,
    };

    let (stop_doors, doors_open) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let reload = tls.clone().map(|tls| {
        // Ends with the doors: the watcher stops at shutdown.
        tokio::spawn(tls.watch(stopped(doors_open.clone())))
    });
    let grpc = grpc.map(|(s, listener)| {
        if let Ok(addr) = listener.local_addr() {
            let scheme = if tls.is_some() { "grpcs" } else { "grpc" };
            tracing::info!(%addr, "quiver-gateway gRPC listening on {scheme}://{addr}");
        }
        // Joined at shutdown, after it drained its calls.
        tokio::spawn(crate::grpc::serve(
            Arc::clone(&gw),
            s,
            listener,
            tls.clone(),
            stopped(doors_open.clone()),
        ))
    });

    let listener = listeners.http;
    if let Ok(addr) = listener.local_addr() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, "quiver-gateway listening on {scheme}://{addr}");
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
                let tls = tls.clone();
                let watcher = graceful.watcher();
                // Tracked by `graceful` once the handshake is done; shutdown
                // waits on it below.
                tokio::spawn(async move {
                    let conn = match Conn::accept(stream, tls.as_deref(), Door::Http).await {
                        Ok(conn) => conn,
                        Err(e) => {
                            tracing::debug!(error = %e, "connection refused at the TLS handshake");
                            return;
                        }
                    };
                    let service = service_fn(move |req| crate::http::route(Arc::clone(&gw), req));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(conn), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: no longer accepting connections");
    drop(listener);
    // The gRPC door stops accepting and drains its calls, the Kafka
    // ingress stops reading and finishes what it read, while HTTP
    // connections drain; all need the batchers, which close after.
    let _ = stop_doors.send(true);
    stop_ingress.notify_one();
    let grace = gw.settings.http.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
    }
    if let Some(task) = grpc {
        match tokio::time::timeout(grace, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "gRPC server failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "gRPC server task failed"),
            Err(_) => tracing::warn!(?grace, "gRPC calls still open after the grace period"),
        }
    }
    if let Some(task) = reload {
        task.abort();
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
        manager.shutdown();
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
