//! `[http]`: the HTTP listener's settings.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::error::InvalidSetting;

/// `[http]`: the HTTP door.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on, `HOST:PORT`; port 0 picks a free port.
    pub addr: String,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Tokio worker threads for HTTP; 0 means one per CPU core. Model
    /// compute never runs on these threads.
    pub workers: usize,
    /// How long shutdown waits for open connections to finish, in seconds.
    pub shutdown_grace_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: "127.0.0.1:8000".into(),
            max_body_bytes: 64 << 20,
            workers: 0,
            shutdown_grace_secs: 30,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    pub max_body_bytes: usize,
    /// Tokio worker threads, resolved (never 0).
    pub workers: usize,
    pub shutdown_grace: Duration,
}

impl HttpConfig {
    pub fn validate(self) -> Result<HttpSettings, InvalidSetting> {
        let addr = self
            .addr
            .parse()
            .map_err(|e| InvalidSetting::new("http.addr", format!("'{}': {e}", self.addr)))?;
        let workers = match self.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Ok(HttpSettings {
            addr,
            max_body_bytes: self.max_body_bytes,
            workers,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        })
    }
}
