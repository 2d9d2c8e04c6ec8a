//! `[tracing]` in the gateway's config file.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

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
    pub endpoint: Option<Endpoint>,
    pub service_name: String,
    pub sample_ratio: f64,
    pub export_interval: Duration,
    pub queue_capacity: usize,
    pub timeout: Duration,
}

/// An `http://host:port/path` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, as connected to and sent in `Host`.
    pub authority: String,
    pub path: String,
}

impl TracingConfig {
    pub fn validate(self) -> Result<TracingSettings, ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid { key, message };
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
            url => Some(parse_endpoint(url).map_err(|m| invalid("tracing.otlp_endpoint", m))?),
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

fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!(
            "'{url}' is not an http:// URL (OTLP/HTTP; for TLS, export through a local collector)"
        )
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/v1/traces"),
    };
    if authority.is_empty() || !authority.contains(':') {
        return Err(format!("'{url}' must name a host and a port"));
    }
    Ok(Endpoint {
        authority: authority.to_string(),
        path: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = parse_endpoint("http://127.0.0.1:4318/v1/traces").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("127.0.0.1:4318", "/v1/traces")
        );
        assert_eq!(
            parse_endpoint("http://otel:4318").unwrap().path,
            "/v1/traces"
        );
        assert!(parse_endpoint("https://otel:4318/v1/traces").is_err());
        assert!(parse_endpoint("http://otel/v1/traces").is_err());
        let off = TracingConfig::default().validate().unwrap();
        assert!(off.endpoint.is_none());
        let bad = TracingConfig {
            sample_ratio: 2.0,
            ..TracingConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
