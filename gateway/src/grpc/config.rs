//! `[grpc]`: the gRPC listener's settings.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::error::InvalidSetting;

/// `[grpc]`: the gRPC listener. Off unless `addr` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Address to listen on, `HOST:PORT` (port 0 picks a free one); unset,
    /// there is no gRPC listener. `--grpc-addr` overrides it.
    pub addr: Option<String>,
    /// Largest message accepted or sent, in bytes. A larger request gets
    /// RESOURCE_EXHAUSTED, with the limit in the message.
    pub max_message_bytes: usize,
    /// HTTP/2 streams (calls) one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// How often an idle connection is pinged, in ms; 0 turns keep-alive off.
    pub keepalive_interval_ms: u64,
    /// How long a keep-alive ping may go unanswered before the connection
    /// is closed, in ms.
    pub keepalive_timeout_ms: u64,
    /// Requests one `ModelStreamInfer` stream may have in flight; past it
    /// the stream is not read until an answer goes out.
    pub stream_max_in_flight: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            addr: None,
            max_message_bytes: 64 << 20,
            max_concurrent_streams: 1024,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 20_000,
            stream_max_in_flight: 128,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcSettings {
    pub addr: SocketAddr,
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
    /// `None`: no keep-alive pings.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    pub stream_max_in_flight: usize,
}

impl GrpcConfig {
    /// `None` when gRPC is off.
    pub fn validate(self) -> Result<Option<GrpcSettings>, InvalidSetting> {
        let Some(addr) = self.addr.filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        let addr = addr
            .parse()
            .map_err(|e| InvalidSetting::new("grpc.addr", format!("'{addr}': {e}")))?;
        if self.max_message_bytes == 0
            || self.max_concurrent_streams == 0
            || self.stream_max_in_flight == 0
        {
            return Err(InvalidSetting::new(
                "grpc",
                "max_message_bytes, max_concurrent_streams and stream_max_in_flight must be at least 1",
            ));
        }
        Ok(Some(GrpcSettings {
            addr,
            max_message_bytes: self.max_message_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            keepalive_interval: (self.keepalive_interval_ms > 0)
                .then(|| Duration::from_millis(self.keepalive_interval_ms)),
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms.max(1)),
            stream_max_in_flight: self.stream_max_in_flight,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_is_off_unless_an_address_is_set() {
        assert!(GrpcConfig::default().validate().unwrap().is_none());
        let on = GrpcConfig {
            addr: Some("127.0.0.1:0".into()),
            ..GrpcConfig::default()
        }
        .validate()
        .unwrap()
        .unwrap();
        assert_eq!(on.max_message_bytes, 64 << 20);
        let bad = GrpcConfig {
            addr: Some("localhost".into()),
            ..GrpcConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "grpc.addr");
    }
}
