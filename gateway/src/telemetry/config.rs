//! `[tracing]` in the gateway's config file.

use std::time::Duration;

use serde::Deserialize;

use crate::error::InvalidSetting;
use crate::plain_http::Url;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Where to send spans: an OTLP/HTTP (protobuf) traces endpoint such
    /// as an OpenTelemetry Collector's `http://127.0.0.1:4318/v1/traces`.
    /// Empty (the default) turns tracing off. Only `http://`: run a
    /// collector beside the gateway to reach a TLS endpoint.
    pub otlp_endpoint: String,
    /// `service.name` of the spans' resource.
    pub service_name: String,
    /// Share of requests traced when they carry no `traceparent` header,
    /// in `[0, 1]`; a request with one follows its sampled flag.
    pub sample_ratio: f64,
    /// How often finished spans are sent, in ms.
    pub export_interval_ms: u64,
    /// Traced requests waiting for the exporter; past this, new ones are
    /// dropped (never the request itself).
    pub queue_capacity: usize,
    /// Time to connect to and hear back from the endpoint, in ms.
    pub timeout_ms: u64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: String::new(),
            service_name: "quiver-gateway".into(),
            sample_ratio: 1.0,
            export_interval_ms: 1000,
            queue_capacity: 8192,
            timeout_ms: 2000,
        }
    }
}

/// Validated tracing settings; `endpoint: None` is off.
#[derive(Debug, Clone, Default)]
pub struct TracingSettings {
    pub endpoint: Option<Url>,
    pub service_name: String,
    pub sample_ratio: f64,
    pub export_interval: Duration,
    pub queue_capacity: usize,
    pub timeout: Duration,
}

impl TracingConfig {
    pub fn validate(self) -> Result<TracingSettings, InvalidSetting> {
        let invalid = |key, message: String| InvalidSetting { key, message };
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid("tracing.sample_ratio", "must lie in [0, 1]".into()));
        }
        if self.queue_capacity == 0 {
            return Err(invalid(
                "tracing.queue_capacity",
                "must be at least 1".into(),
            ));
        }
        let endpoint = match self.otlp_endpoint.trim() {
            "" => None,
            url => Some(Url::parse(url, "/v1/traces").map_err(|m| {
                invalid(
                    "tracing.otlp_endpoint",
                    format!("{m} (OTLP/HTTP; for TLS, export through a local collector)"),
                )
            })?),
        };
        Ok(TracingSettings {
            endpoint,
            service_name: self.service_name,
            sample_ratio: self.sample_ratio,
            export_interval: Duration::from_millis(self.export_interval_ms.max(10)),
            queue_capacity: self.queue_capacity,
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings() {
        let on = TracingConfig {
            otlp_endpoint: "http://otel:4318".into(),
            ..TracingConfig::default()
        };
        assert_eq!(on.validate().unwrap().endpoint.unwrap().path, "/v1/traces");
        let tls = TracingConfig {
            otlp_endpoint: "https://otel:4318".into(),
            ..TracingConfig::default()
        };
        assert!(tls.validate().is_err());
        let off = TracingConfig::default().validate().unwrap();
        assert!(off.endpoint.is_none());
        let bad = TracingConfig {
            sample_ratio: 2.0,
            ..TracingConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
