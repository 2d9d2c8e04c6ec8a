//! Online quality and drift, which only the trainer measures: read from
//! its Prometheus endpoint (`[dashboard] trainer_metrics_url`) when the
//! dashboard's state is read, never on the inference path.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::InvalidSetting;
use crate::plain_http::{self, Url};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// The trainer's metrics endpoint, e.g. `http://quiver-trainer:9100/metrics`,
    /// for online quality (accuracy, log loss, MAE, RMSE) and drift (PSI)
    /// per version. Empty: the dashboard says they are not available.
    pub trainer_metrics_url: String,
}

#[derive(Debug, Clone, Default)]
pub struct DashboardSettings {
    pub trainer_metrics: Option<Url>,
}

impl DashboardConfig {
    pub fn validate(self) -> Result<DashboardSettings, InvalidSetting> {
        let trainer_metrics = match self.trainer_metrics_url.trim() {
            "" => None,
            url => Some(
                Url::parse(url, "/metrics").map_err(|message| InvalidSetting {
                    key: "dashboard.trainer_metrics_url",
                    message,
                })?,
            ),
        };
        Ok(DashboardSettings { trainer_metrics })
    }
}

/// What the trainer reports about one served version.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Online {
    pub accuracy: Option<f64>,
    pub log_loss: Option<f64>,
    pub mae: Option<f64>,
    pub rmse: Option<f64>,
    /// Labelled rows the figures above are computed on.
    pub labelled_rows: Option<f64>,
    /// PSI of the served prediction, and of each feature (by index),
    /// against the training window of this (stable) version.
    pub prediction_psi: Option<f64>,
    pub feature_psi: BTreeMap<String, f64>,
}

/// `(model, version)` → what the trainer reports.
pub type Quality = BTreeMap<(String, u64), Online>;

const TIMEOUT: Duration = Duration::from_secs(2);

/// Reads and parses the trainer's metrics. Blocking.
pub fn read(url: &Url) -> Result<Quality, String> {
    let body = plain_http::request(url, "GET", None, TIMEOUT)
        .map_err(|e| format!("trainer metrics at {url}: {e}"))?;
    Ok(parse(&String::from_utf8_lossy(&body)))
}

/// The `quiver_trainer_*` samples of a Prometheus text exposition.
pub fn parse(text: &str) -> Quality {
    let mut out = Quality::new();
    for line in text.lines().filter(|l| l.starts_with("quiver_trainer_")) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match key.split_once('{') {
            Some((n, rest)) => (n, labels_of(rest.trim_end_matches('}'))),
            None => (key, BTreeMap::new()),
        };
        let (Some(model), Some(version)) = (
            labels.get("model"),
            labels.get("version").and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let o = out.entry((model.clone(), version)).or_default();
        match name {
            "quiver_trainer_online_accuracy" => o.accuracy = Some(value),
            "quiver_trainer_online_log_loss" => o.log_loss = Some(value),
            "quiver_trainer_online_mae" => o.mae = Some(value),
            "quiver_trainer_online_rmse" => o.rmse = Some(value),
            "quiver_trainer_labelled_rows_total" => o.labelled_rows = Some(value),
            "quiver_trainer_prediction_psi" => o.prediction_psi = Some(value),
            "quiver_trainer_feature_psi" => {
                if let Some(f) = labels.get("feature") {
                    o.feature_psi.insert(f.clone(), value);
                }
            }
            _ => {}
        }
    }
    out.retain(|_, o| *o != Online::default());
    out
}

/// `a="x",b="y"` → a map (values without escaped quotes, as Quiver's
/// labels are).
fn labels_of(s: &str) -> BTreeMap<String, String> {
    s.split("\",")
        .filter_map(|kv| kv.split_once("=\""))
        .map(|(k, v)| (k.trim().to_string(), v.trim_end_matches('"').to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_quality_and_drift() {
        let text = "# HELP quiver_trainer_online_accuracy x\n\
            quiver_trainer_online_accuracy{model=\"m\",version=\"1\"} 0.75\n\
            quiver_trainer_online_log_loss{model=\"m\",version=\"1\"} 0.5\n\
            quiver_trainer_feature_psi{model=\"m\",version=\"1\",feature=\"0\"} 0.25\n\
            quiver_trainer_feature_psi{model=\"m\",version=\"1\",feature=\"1\"} 0.01\n\
            quiver_trainer_trainings_total{model=\"m\",outcome=\"published\"} 2\n\
            quiver_requests_total{model=\"m\",version=\"1\"} 9\n";
        let q = parse(text);
        assert_eq!(q.len(), 1);
        let o = &q[&("m".to_string(), 1)];
        assert_eq!(
            (o.accuracy, o.log_loss, o.mae),
            (Some(0.75), Some(0.5), None)
        );
        assert_eq!(o.feature_psi["0"], 0.25);
        assert_eq!(o.feature_psi.len(), 2);
    }
}
