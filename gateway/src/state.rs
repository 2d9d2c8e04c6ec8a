//! What every door shares: the live set, the settings, the metrics
//! renderer, the admin commands' channel, shadows and the prediction log.
//! HTTP, gRPC, the Kafka ingress and the manager all depend on this
//! module; it depends on none of them, and `server` only wires them.

use std::sync::OnceLock;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::commands::{Answer, Command, Commands};
use crate::config::Settings;
use crate::error::ApiError;
use crate::live::LiveModels;
use crate::prediction_log::TrafficLog;
use crate::shadow::Shadows;

/// State shared by every connection.
pub struct Gateway {
    pub live: ArcSwap<LiveModels>,
    pub settings: Settings,
    pub prometheus: PrometheusHandle,
    /// Set once the manager runs; the admin API sends it commands.
    pub commands: OnceLock<Commands>,
    pub shadows: Shadows,
    /// Predictions and labels on their way to Kafka or the local log.
    pub traffic: TrafficLog,
    /// The live dashboard's charts and registry view.
    pub dashboard: crate::dashboard::Dashboard,
}

impl Gateway {
    /// Runs an admin command on the manager.
    pub async fn command(&self, cmd: Command) -> Answer {
        match self.commands.get() {
            Some(c) => c.run(cmd).await,
            None => Err(ApiError::NotReady(
                "the model manager is not running".into(),
            )),
        }
    }
}
