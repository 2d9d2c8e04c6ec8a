//! What the dashboard's charts are drawn from: a few relaxed atomic adds
//! per request and per batch, next to the Prometheus handles (which can be
//! written but not read back). Nothing else happens on the inference path;
//! the sampler reads these once a second off it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::rollout::stats::{Snapshot, VersionStats};

/// One model version's cumulative counts since it was loaded. Batches and
/// their rows are the engine's totals (`metrics::Totals`), counted once for
/// the protocol's statistics and the dashboard alike.
#[derive(Default)]
pub struct Counters {
    /// Every request (routed and pinned): count, non-successes, latency.
    requests: VersionStats,
    shadow_agree: AtomicU64,
    shadow_disagree: AtomicU64,
}

/// The counts at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub requests: Snapshot,
    pub batches: u64,
    pub batch_rows: u64,
    pub shadow_agree: u64,
    pub shadow_disagree: u64,
}

impl Counters {
    /// A finished request; `failed` for any outcome but success.
    pub fn request(&self, elapsed: Duration, failed: bool) {
        self.requests.record(elapsed, failed);
    }

    /// A shadow answer compared with the served one.
    pub fn shadow(&self, agreed: bool) {
        let c = if agreed {
            &self.shadow_agree
        } else {
            &self.shadow_disagree
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now, with the batches from the version's `engine` totals.
    pub fn totals(&self, engine: &crate::metrics::Totals) -> Totals {
        Totals {
            requests: self.requests.snapshot(),
            batches: engine.compute.get().0,
            batch_rows: engine.rows.load(Ordering::Relaxed),
            shadow_agree: self.shadow_agree.load(Ordering::Relaxed),
            shadow_disagree: self.shadow_disagree.load(Ordering::Relaxed),
        }
    }
}
