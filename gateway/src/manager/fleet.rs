//! The manager's part in the fleet: every replica writes a report of its
//! routed traffic to the registry; one replica, the leader, holds a lease
//! there and takes the guardrail's decisions on the traffic of all.
//!
//! Reports go through the registry rather than Kafka: a report is a
//! compact cumulative document (a few hundred bytes per served version)
//! that the leader needs only the latest of, which is exactly what an
//! object overwritten in place gives; the registry is already every
//! replica's dependency, while Kafka is optional (the prediction log can
//! be a local directory). One small PUT per replica per interval, and the
//! leader's one LIST plus conditional GETs while a canary runs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use quiver_contract::fleet::{self, SCHEMA, TRAFFIC_DIR, TrafficReport, VersionTraffic};
use quiver_registry::{Fresh, Registry, Tag, control};

use super::fleet_config::FleetSettings;
use super::model::SourceKey;
use crate::live::LiveModels;
use crate::metrics::{FLEET_LEADER, FLEET_REPORTS};
use crate::rollout::stats::Snapshot;

/// Each source of a version's traffic and its cumulative counts.
pub(super) type Sources = BTreeMap<SourceKey, Snapshot>;

/// Reports not rewritten for this long belong to replicas gone for good;
/// the leader deletes them.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// How often a leader with no canary running reads the reports anyway, to
/// delete those of replicas gone for good.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub(super) struct Fleet {
    pub replica: String,
    boot: u64,
    lease_ttl: Duration,
    report_every: Duration,
    next_report: Instant,
    next_lease: Instant,
    next_sweep: Instant,
    /// The lease's term and end (ms since the epoch) while this replica
    /// leads.
    leading: Option<(u64, u64)>,
    /// Other replicas' reports as last read, by key.
    reports: BTreeMap<String, (Tag, TrafficReport)>,
    /// The counts this replica last reported: an idle replica writes
    /// nothing.
    reported: Option<BTreeMap<String, BTreeMap<u64, VersionTraffic>>>,
    problem: Option<String>,
}

impl Fleet {
    pub fn new(settings: &FleetSettings) -> Self {
        let now = Instant::now();
        Fleet {
            replica: settings.replica_id.clone(),
            boot: now_ms() ^ u64::from(std::process::id()) << 32,
            lease_ttl: settings.lease_ttl,
            report_every: settings.report_interval,
            next_report: now,
            next_lease: now,
            next_sweep: now + SWEEP_EVERY,
            leading: None,
            reports: BTreeMap::new(),
            reported: None,
            problem: None,
        }
    }

    /// The lease's term while this replica leads.
    pub fn term(&self) -> Option<u64> {
        let (term, until) = self.leading?;
        // Stop a little before the lease ends, so a slow tick never
        // decides on a lease another replica may already hold.
        (now_ms() + self.lease_ttl.as_millis() as u64 / 10 < until).then_some(term)
    }

    /// Whether the reports are due a read even with no canary running.
    pub fn sweep_due(&mut self, now: Instant) -> bool {
        if now < self.next_sweep {
            return false;
        }
        self.next_sweep = now + SWEEP_EVERY;
        true
    }

    /// Writes this replica's report and claims or renews the lease, each
    /// when due.
    pub fn tick(&mut self, registry: &Registry, live: &LiveModels, now: Instant) {
        if now >= self.next_report {
            self.next_report = now + self.report_every;
            let report = self.report(live);
            if self.reported.as_ref() != Some(&report.models) {
                let key = fleet::traffic_file(&self.replica);
                match registry.put(&key, &report.to_json()) {
                    Ok(_) => {
                        self.reported = Some(report.models);
                        self.ok();
                    }
                    Err(e) => self.failed(&format!("cannot write the traffic report: {e}")),
                }
            }
        }
        if now >= self.next_lease {
            self.next_lease = now + self.lease_ttl / 3;
            let was = self.leading.map(|(t, _)| t);
            match control::claim_lease(registry, &self.replica, self.lease_ttl, now_ms()) {
                Ok(lease) if lease.holder == self.replica => {
                    self.leading = Some((lease.term, lease.expires_at_ms));
                    if was != Some(lease.term) {
                        tracing::info!(replica = %self.replica, term = lease.term, "this replica now leads the fleet's rollout guardrail");
                    }
                    self.ok();
                }
                Ok(lease) => {
                    if was.is_some() {
                        tracing::warn!(replica = %self.replica, leader = %lease.holder, "lost the guardrail lease");
                    }
                    self.leading = None;
                    self.ok();
                }
                Err(e) => {
                    // Keep leading until the lease we hold runs out; term()
                    // stops us then.
                    self.failed(&format!("cannot claim or renew the guardrail lease: {e}"));
                }
            }
            metrics::gauge!(FLEET_LEADER).set(if self.term().is_some() { 1.0 } else { 0.0 });
        }
    }

    fn ok(&mut self) {
        if self.problem.take().is_some() {
            tracing::info!(replica = %self.replica, "registry reachable again for fleet documents");
        }
    }

    fn failed(&mut self, why: &str) {
        if self.problem.as_deref() != Some(why) {
            tracing::error!(replica = %self.replica, error = %why, "fleet");
        }
        self.problem = Some(why.to_string());
    }

    fn report(&self, live: &LiveModels) -> TrafficReport {
        let mut models: BTreeMap<String, BTreeMap<u64, VersionTraffic>> = BTreeMap::new();
        for (name, entry) in &live.models {
            for (version, v) in &entry.versions {
                let Some(served) = &v.served else { continue };
                let snap = served.stats.snapshot();
                models.entry(name.clone()).or_default().insert(
                    *version,
                    VersionTraffic {
                        instance: served.instance,
                        requests: snap.requests,
                        errors: snap.errors,
                        latency_us: snap.sparse_latency(),
                    },
                );
            }
        }
        TrafficReport {
            schema: SCHEMA,
            replica: self.replica.clone(),
            boot: self.boot,
            at_ms: now_ms(),
            models,
        }
    }

    /// Model → version → every source of its traffic: this replica's live
    /// counts and every other replica's latest report.
    pub fn traffic(
        &mut self,
        registry: &Registry,
        live: &LiveModels,
    ) -> BTreeMap<String, BTreeMap<u64, Sources>> {
        let mut out: BTreeMap<String, BTreeMap<u64, Sources>> = BTreeMap::new();
        let mut add =
            |replica: &str, boot: u64, report: &BTreeMap<String, BTreeMap<u64, VersionTraffic>>| {
                for (model, versions) in report {
                    for (version, t) in versions {
                        out.entry(model.clone())
                            .or_default()
                            .entry(*version)
                            .or_default()
                            .insert(
                                (replica.to_string(), boot, t.instance),
                                Snapshot::from_parts(t.requests, t.errors, &t.latency_us),
                            );
                    }
                }
            };
        let own = self.report(live);
        add(&self.replica, self.boot, &own.models);
        let own_key = fleet::traffic_file(&self.replica);
        let listed = match registry.list(TRAFFIC_DIR) {
            Ok(l) => l,
            Err(e) => {
                self.failed(&format!("cannot list traffic reports: {e}"));
                Vec::new()
            }
        };
        let keys: Vec<String> = listed
            .into_iter()
            .map(|e| e.key)
            .filter(|k| *k != own_key)
            .collect();
        self.reports.retain(|k, _| keys.contains(k));
        for key in keys {
            let known = self.reports.get(&key).map(|(t, _)| t.clone());
            match registry.get_if_changed(&key, known.as_ref()) {
                Ok(Fresh::Changed(doc)) => match TrafficReport::parse(&doc.bytes) {
                    Ok(r) => {
                        self.reports.insert(key, (doc.tag, r));
                    }
                    Err(e) => tracing::warn!(key, error = %e, "traffic report ignored"),
                },
                Ok(Fresh::Missing) => {
                    self.reports.remove(&key);
                }
                Ok(Fresh::Unchanged) => {}
                Err(e) => self.failed(&format!("cannot read {key}: {e}")),
            }
        }
        let now = now_ms();
        let forget = FORGET_AFTER.as_millis() as u64;
        for (key, (_, r)) in &self.reports {
            if now.saturating_sub(r.at_ms) > forget {
                // A replica gone for good; its counts no longer move.
                let _ = registry.delete(key);
                continue;
            }
            add(&r.replica, r.boot, &r.models);
        }
        metrics::gauge!(FLEET_REPORTS).set(self.reports.len() as f64 + 1.0);
        out
    }

    /// At shutdown: give the lease up, so another replica takes it at its
    /// next try rather than when it runs out, and withdraw the report.
    pub fn leave(&mut self, registry: &Registry) {
        if self.leading.take().is_some()
            && let Err(e) = control::release_lease(registry, &self.replica)
        {
            tracing::warn!(error = %e, "cannot release the guardrail lease; it lapses by itself");
        }
        let _ = registry.delete(&fleet::traffic_file(&self.replica));
    }
}

/// A window of merged traffic: counts since `marks` over every source, and
/// how many replicas it came from.
pub(super) fn window(sources: Option<&Sources>, marks: &Sources) -> (Snapshot, Vec<String>) {
    let mut total = Snapshot::default();
    let mut replicas: Vec<String> = Vec::new();
    for (key, now) in sources.into_iter().flatten() {
        let w = match marks.get(key) {
            Some(mark) => now.since(mark),
            None => now.clone(),
        };
        if w.requests > 0 && !replicas.contains(&key.0) {
            replicas.push(key.0.clone());
        }
        total.merge(&w);
    }
    (total, replicas)
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(requests: u64, errors: u64) -> Snapshot {
        Snapshot::from_parts(requests, errors, &[(40, requests)])
    }

    #[test]
    fn a_window_counts_each_source_since_its_mark_and_new_sources_whole() {
        let mut marks = Sources::new();
        marks.insert(("a".into(), 1, 1), snap(100, 1));
        marks.insert(("b".into(), 1, 1), snap(50, 0));
        let mut now = Sources::new();
        now.insert(("a".into(), 1, 1), snap(130, 4));
        // b restarted: a new boot, counted from zero.
        now.insert(("b".into(), 2, 1), snap(20, 10));
        // c idle since the mark: no traffic, not a contributing replica.
        marks.insert(("c".into(), 1, 1), snap(5, 0));
        now.insert(("c".into(), 1, 1), snap(5, 0));
        let (w, replicas) = window(Some(&now), &marks);
        assert_eq!((w.requests, w.errors), (50, 13));
        assert_eq!(replicas, vec!["a".to_string(), "b".to_string()]);
        let (empty, none) = window(None, &marks);
        assert_eq!((empty.requests, none.len()), (0, 0));
    }
}
