//! Metric names, described once, and the Prometheus endpoint (a small
//! HTTP server on its own thread: the trainer has no async runtime).

use std::io::{Read, Write};
use std::net::TcpListener;

use metrics::{describe_counter, describe_gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const ONLINE_ACCURACY: &str = "quiver_trainer_online_accuracy";
pub const ONLINE_LOG_LOSS: &str = "quiver_trainer_online_log_loss";
pub const ONLINE_MAE: &str = "quiver_trainer_online_mae";
pub const ONLINE_RMSE: &str = "quiver_trainer_online_rmse";
pub const LABELLED_ROWS: &str = "quiver_trainer_labelled_rows_total";
pub const FEATURE_PSI: &str = "quiver_trainer_feature_psi";
pub const PREDICTION_PSI: &str = "quiver_trainer_prediction_psi";
pub const JOIN_EVENTS: &str = "quiver_trainer_join_records_total";
pub const TRAININGS: &str = "quiver_trainer_trainings_total";
pub const TRAINING_SECONDS: &str = "quiver_trainer_training_duration_seconds";
pub const WINDOW_ROWS: &str = "quiver_trainer_window_rows";
pub const CONSUMER_LAG: &str = "quiver_trainer_consumer_lag_records";

pub fn describe() {
    describe_gauge!(
        CONSUMER_LAG,
        "Records in a topic partition not yet read by the trainer (Kafka: the high watermark of the last fetch minus the next offset), by topic and partition."
    );
    describe_gauge!(
        ONLINE_ACCURACY,
        "Accuracy of served answers on joined labels, by model and version."
    );
    describe_gauge!(
        ONLINE_LOG_LOSS,
        "Mean log loss of served answers on joined labels."
    );
    describe_gauge!(
        ONLINE_MAE,
        "Mean absolute error of served answers (regressors)."
    );
    describe_gauge!(
        ONLINE_RMSE,
        "Root mean squared error of served answers (regressors)."
    );
    describe_counter!(
        LABELLED_ROWS,
        "Rows joined with their label, by model and version."
    );
    describe_gauge!(
        FEATURE_PSI,
        "Population stability index of each input feature against the version's training reference."
    );
    describe_gauge!(
        PREDICTION_PSI,
        "Population stability index of the served prediction against the training reference."
    );
    describe_counter!(
        JOIN_EVENTS,
        "Join outcomes: joined, duplicate_label, expired_prediction, expired_label, unusable."
    );
    describe_counter!(
        TRAININGS,
        "Training runs by outcome: published, rejected, failed."
    );
    describe_gauge!(
        TRAINING_SECONDS,
        "Duration of the last training run, seconds."
    );
    describe_gauge!(WINDOW_ROWS, "Rows in the model's training window.");
}

/// Installs the recorder and serves `/metrics` on `addr`.
pub fn serve(addr: &str) -> std::io::Result<std::net::SocketAddr> {
    let handle = install()?;
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    // Detached on purpose: it only reads the recorder and dies with the
    // process.
    std::thread::spawn(move || {
        for mut stream in listener.incoming().filter_map(Result::ok) {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let body = handle.render();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(bound)
}

fn install() -> std::io::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(std::io::Error::other)?;
    describe();
    Ok(handle)
}
