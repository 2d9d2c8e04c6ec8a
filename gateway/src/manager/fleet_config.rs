//! `[fleet]`: this replica's name, the guardrail leader's lease and the
//! traffic reports' interval.

use std::time::Duration;

use serde::Deserialize;

use crate::error::InvalidSetting;

/// `[fleet]`: every replica watching one registry follows the routing it
/// stores; one of them, the leader, takes the guardrail's decisions on the
/// traffic of all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// This replica's name in the lease and the traffic reports; unique
    /// in the fleet (on Kubernetes, the pod name). Default: host name and
    /// process id.
    pub replica_id: Option<String>,
    /// How long the leader's lease lasts without renewal, in ms; a dead
    /// leader is replaced after at most this long. Renewed every third.
    pub lease_ttl_ms: u64,
    /// How often each replica writes its traffic report, in ms.
    pub report_interval_ms: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            replica_id: None,
            lease_ttl_ms: 10_000,
            report_interval_ms: 1000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub replica_id: String,
    pub lease_ttl: Duration,
    pub report_interval: Duration,
}

/// `<host>-<pid>`: unique among processes on a host, readable in the lease.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{}", std::process::id())
}

impl FleetConfig {
    pub fn validate(self) -> Result<FleetSettings, InvalidSetting> {
        if self.lease_ttl_ms < 100 || self.report_interval_ms == 0 {
            return Err(InvalidSetting::new(
                "fleet",
                "lease_ttl_ms must be at least 100 and report_interval_ms at least 1",
            ));
        }
        let replica_id = match self.replica_id.filter(|r| !r.is_empty()) {
            Some(id)
                if id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
            {
                id
            }
            Some(id) => {
                return Err(InvalidSetting::new(
                    "fleet.replica_id",
                    format!("'{id}' may hold only letters, digits, '-', '_' and '.'"),
                ));
            }
            None => default_replica_id(),
        };
        Ok(FleetSettings {
            replica_id,
            lease_ttl: Duration::from_millis(self.lease_ttl_ms),
            report_interval: Duration::from_millis(self.report_interval_ms),
        })
    }
}
