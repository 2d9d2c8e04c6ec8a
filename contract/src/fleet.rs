//! The fleet's shared documents, under `<root>/.quiver/` in the registry
//! (a dot-named folder, so no model can be called that):
//!
//! - [`RegistryIndex`] (`index.json`): a revision per model, bumped by
//!   compare-and-swap after every write under the model's folder. Replicas
//!   poll it with one conditional GET and read a model's folder only when
//!   its revision moved, whatever the number of models and versions.
//! - [`Lease`] (`leader.json`): which replica takes the fleet's guardrail
//!   decisions, until when. Renewed and taken over by compare-and-swap.
//! - [`TrafficReport`] (`traffic/<replica>.json`): each replica's
//!   cumulative per-version request, error and latency counts, which the
//!   leader merges to judge a canary on the traffic of every replica.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The schema of the documents in this module.
pub const SCHEMA: u32 = 1;

/// The folder of the fleet's documents, relative to the registry root.
pub const CONTROL_DIR: &str = ".quiver";
/// `<root>/.quiver/index.json`.
pub const INDEX_FILE: &str = ".quiver/index.json";
/// `<root>/.quiver/leader.json`.
pub const LEASE_FILE: &str = ".quiver/leader.json";
/// `<root>/.quiver/traffic/`, one report per replica.
pub const TRAFFIC_DIR: &str = ".quiver/traffic";

/// `<root>/.quiver/traffic/<replica>.json`.
pub fn traffic_file(replica: &str) -> String {
    format!("{TRAFFIC_DIR}/{replica}.json")
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FleetError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("schema {0} is not supported; this build reads schema {SCHEMA}")]
    Schema(u32),
}

fn parse<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    schema: impl Fn(&T) -> u32,
) -> Result<T, FleetError> {
    let doc: T = serde_json::from_slice(bytes).map_err(|e| FleetError::Json(e.to_string()))?;
    match schema(&doc) {
        SCHEMA => Ok(doc),
        other => Err(FleetError::Schema(other)),
    }
}

/// `index.json`: model → revision. A model's revision changes whenever
/// anything in its folder did (a version published, `config.toml` or
/// `routing.json` written); readers compare it with the one they saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryIndex {
    pub schema: u32,
    #[serde(default)]
    pub models: BTreeMap<String, u64>,
}

impl Default for RegistryIndex {
    fn default() -> Self {
        RegistryIndex {
            schema: SCHEMA,
            models: BTreeMap::new(),
        }
    }
}

impl RegistryIndex {
    pub fn parse(bytes: &[u8]) -> Result<Self, FleetError> {
        parse(bytes, |d: &Self| d.schema)
    }

    /// Marks `model` changed.
    pub fn bump(&mut self, model: &str) {
        *self.models.entry(model.to_string()).or_insert(0) += 1;
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// `leader.json`: the guardrail's leader and its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub schema: u32,
    /// The replica id of the leader.
    pub holder: String,
    /// Bumped at every change of holder: a decision names the term it was
    /// taken in.
    pub term: u64,
    /// Milliseconds since the Unix epoch when the lease lapses unless
    /// renewed; another replica may take it over after that.
    pub expires_at_ms: u64,
    /// RFC 3339, UTC, of the last renewal, for people reading the file.
    #[serde(default)]
    pub renewed_at: String,
}

impl Lease {
    pub fn parse(bytes: &[u8]) -> Result<Self, FleetError> {
        parse(bytes, |d: &Self| d.schema)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// One replica's traffic, cumulative since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficReport {
    pub schema: u32,
    pub replica: String,
    /// A fresh value at every start of the replica: counts restart from
    /// zero with it.
    pub boot: u64,
    /// Milliseconds since the Unix epoch when the report was taken.
    pub at_ms: u64,
    /// Model → version → counts.
    #[serde(default)]
    pub models: BTreeMap<String, BTreeMap<u64, VersionTraffic>>,
}

impl TrafficReport {
    pub fn parse(bytes: &[u8]) -> Result<Self, FleetError> {
        parse(bytes, |d: &Self| d.schema)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// Routed requests to one loaded instance of a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionTraffic {
    /// Which load of the version the counts belong to: a reload starts
    /// them again from zero.
    pub instance: u64,
    pub requests: u64,
    pub errors: u64,
    /// Latency histogram in the gateway's bucket layout, sparse:
    /// `[bucket, count]` pairs for the non-empty buckets.
    #[serde(default)]
    pub latency_us: Vec<(u32, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip_and_refuse_other_schemas() {
        let mut index = RegistryIndex::default();
        index.bump("fraud");
        index.bump("fraud");
        assert_eq!(
            RegistryIndex::parse(&index.to_json()).unwrap().models["fraud"],
            2
        );
        assert_eq!(
            RegistryIndex::parse(br#"{"schema": 2, "models": {}}"#),
            Err(FleetError::Schema(2))
        );
        let lease = Lease {
            schema: SCHEMA,
            holder: "gw-0".into(),
            term: 3,
            expires_at_ms: 10,
            renewed_at: String::new(),
        };
        assert_eq!(Lease::parse(&lease.to_json()).unwrap(), lease);
        let mut report = TrafficReport {
            schema: SCHEMA,
            replica: "gw-1".into(),
            boot: 7,
            at_ms: 1,
            models: BTreeMap::new(),
        };
        report.models.entry("m".into()).or_default().insert(
            2,
            VersionTraffic {
                instance: 1,
                requests: 10,
                errors: 1,
                latency_us: vec![(40, 9), (41, 1)],
            },
        );
        assert_eq!(TrafficReport::parse(&report.to_json()).unwrap(), report);
        assert!(matches!(
            TrafficReport::parse(b"{"),
            Err(FleetError::Json(_))
        ));
    }
}
