//! Which version answers a request that names none: the model's routing
//! state (stable, canary weights, shadows) resolved against the versions
//! that are ready, and a stable hash of the request's key that picks an arm.
//!
//! A key always lands on the same point of `[0, 1)`; canaries own the
//! first stretches of that line in version order and stable owns the rest.
//! So a caller stays on one arm, and raising a single canary's weight only
//! ever moves keys from stable onto the canary, never back.

use std::time::Duration;

use quiver_contract::routing::RoutingState;
use serde::Deserialize;

use crate::error::InvalidSetting;

/// How a request reached its version; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// The URL named the version.
    Pinned,
    Stable,
    Canary,
}

impl Arm {
    pub const ALL: [Arm; 3] = [Arm::Pinned, Arm::Stable, Arm::Canary];

    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Pinned => "pinned",
            Arm::Stable => "stable",
            Arm::Canary => "canary",
        }
    }
}

/// The routing state of one model, resolved against its ready versions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTable {
    /// What unkeyed and non-canary traffic gets.
    pub stable: Option<u64>,
    /// `(version, upper end of its stretch of [0, 1))`, ascending.
    canary: Vec<(u64, f64)>,
    /// Ready shadow versions.
    pub shadow: Vec<u64>,
}

impl RouteTable {
    /// `ready` lists the versions that can serve, ascending. Versions the
    /// state names but that are not ready get no traffic: a canary's share
    /// goes to stable, and a stable that is not ready gives way to the
    /// newest ready version that is neither canary nor shadow.
    pub fn build(state: &RoutingState, ready: &[u64]) -> RouteTable {
        let is_ready = |v: &u64| ready.contains(v);
        let side_arm = |v: &u64| state.canary.contains_key(v) || state.shadow.contains(v);
        let stable = state
            .stable
            .filter(is_ready)
            .or_else(|| ready.iter().rev().copied().find(|v| !side_arm(v)));
        let mut upper = 0.0;
        let mut canary = Vec::new();
        for (&version, &weight) in &state.canary {
            if is_ready(&version) && Some(version) != stable && weight > 0.0 {
                upper += weight;
                canary.push((version, upper.min(1.0)));
            }
        }
        let shadow = state
            .shadow
            .iter()
            .copied()
            .filter(|v| is_ready(v) && Some(*v) != stable)
            .collect();
        RouteTable {
            stable,
            canary,
            shadow,
        }
    }

    /// The version and arm for a request whose key hashes to `key_hash`.
    pub fn pick(&self, key_hash: u64) -> Option<(u64, Arm)> {
        let point = unit_interval(key_hash);
        for &(version, upper) in &self.canary {
            if point < upper {
                return Some((version, Arm::Canary));
            }
        }
        // With canaries at 100 % and no stable, the last canary takes it all.
        match self.stable {
            Some(v) => Some((v, Arm::Stable)),
            None => self.canary.last().map(|&(v, _)| (v, Arm::Canary)),
        }
    }

    pub fn canaries(&self) -> impl Iterator<Item = u64> + '_ {
        self.canary.iter().map(|&(v, _)| v)
    }
}

/// A stable 64-bit hash of a routing key: FNV-1a, then a SplitMix64
/// finaliser so that similar keys ("user-1", "user-2") spread over the
/// whole range. Fixed forever: changing it would move every caller.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The top 53 bits of `h` as a point of `[0, 1)`.
fn unit_interval(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// `[routing]`: traffic splitting, shadows and the rollout guardrail's clock.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Request header whose value keeps a caller on one arm (stable or a
    /// canary); without it the request's `id` is the key, and a request
    /// with neither is placed at random.
    pub key_header: String,
    /// Shadow copies in flight at once, over all models; past it shadow
    /// copies are skipped (and counted), never queued without bound.
    pub shadow_max_in_flight: usize,
    /// A shadow answer agrees with the served one when every output
    /// element is within this absolute tolerance (equal, for non-floats).
    pub shadow_tolerance: f64,
    /// How often the rollout guardrail looks at running canaries, in ms.
    pub rollout_interval_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            key_header: "x-quiver-key".into(),
            shadow_max_in_flight: 256,
            shadow_tolerance: 1e-4,
            rollout_interval_ms: 500,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RoutingSettings {
    /// Checked once here, so a request's lookup only hashes it.
    pub key_header: hyper::header::HeaderName,
    pub shadow_max_in_flight: usize,
    pub shadow_tolerance: f64,
    pub rollout_interval: Duration,
}

impl RoutingConfig {
    pub fn validate(self) -> Result<RoutingSettings, InvalidSetting> {
        let Ok(key_header) = hyper::header::HeaderName::from_bytes(self.key_header.as_bytes())
        else {
            return Err(InvalidSetting::new(
                "routing.key_header",
                format!("'{}' is not a valid header name", self.key_header),
            ));
        };
        if !(self.shadow_tolerance.is_finite() && self.shadow_tolerance >= 0.0) {
            return Err(InvalidSetting::new(
                "routing.shadow_tolerance",
                "must be a non-negative number",
            ));
        }
        Ok(RoutingSettings {
            key_header,
            shadow_max_in_flight: self.shadow_max_in_flight,
            shadow_tolerance: self.shadow_tolerance,
            rollout_interval: Duration::from_millis(self.rollout_interval_ms.max(10)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn state(stable: Option<u64>, canary: &[(u64, f64)], shadow: &[u64]) -> RoutingState {
        RoutingState {
            stable,
            canary: canary.iter().copied().collect(),
            shadow: shadow.to_vec(),
            ..Default::default()
        }
    }

    fn shares(table: &RouteTable, keys: usize) -> BTreeMap<u64, f64> {
        let mut counts = BTreeMap::new();
        for i in 0..keys {
            // No ready version at all: no pick, and no shares.
            if let Some((v, _)) = table.pick(key_hash(format!("caller-{i}").as_bytes())) {
                *counts.entry(v).or_insert(0.0) += 1.0;
            }
        }
        counts.values_mut().for_each(|c| *c /= keys as f64);
        counts
    }

    #[test]
    fn without_state_the_newest_ready_version_serves() {
        let t = RouteTable::build(&RoutingState::default(), &[1, 2, 3]);
        assert_eq!(t.pick(7), Some((3, Arm::Stable)));
        assert_eq!(
            RouteTable::build(&RoutingState::default(), &[]).pick(7),
            None
        );
    }

    #[test]
    fn versions_that_are_not_ready_get_no_traffic() {
        // Stable 5 failed to load; canary 4 is not ready either.
        let t = RouteTable::build(&state(Some(5), &[(4, 0.5)], &[3]), &[1, 2, 3]);
        assert_eq!(t.stable, Some(2), "newest ready that is not a side arm");
        assert_eq!(
            shares(&t, 1000).keys().copied().collect::<Vec<_>>(),
            vec![2]
        );
        assert!(t.shadow.contains(&3));
    }

    #[test]
    fn a_canary_at_full_weight_takes_everything() {
        let t = RouteTable::build(&state(Some(1), &[(2, 1.0)], &[]), &[1, 2]);
        assert_eq!(shares(&t, 2000).get(&2), Some(&1.0));
    }

    fn arb_case() -> impl Strategy<Value = (Option<u64>, Vec<(u64, f64)>, Vec<u64>)> {
        // Up to three canaries over versions 2..=6, weights summing to <= 1.
        (
            prop::option::of(1u64..=2),
            prop::collection::btree_map(2u64..=6, 0.0f64..0.34, 0..=3),
            prop::collection::btree_set(1u64..=6, 0..=6),
        )
            .prop_map(|(stable, canary, ready)| {
                let canary: Vec<_> = canary
                    .into_iter()
                    .filter(|(v, _)| Some(*v) != stable)
                    .collect();
                (stable, canary, ready.into_iter().collect())
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn weights_are_respected_and_keys_stick((stable, canary, ready) in arb_case()) {
            let st = state(stable, &canary, &[]);
            let table = RouteTable::build(&st, &ready);
            let keys = 20_000;
            let got = shares(&table, keys);
            let ready_canary: Vec<_> = canary.iter().filter(|(v, w)| ready.contains(v) && *w > 0.0).collect();
            if table.stable.is_none() {
                // Only canaries are ready: they serve everything rather
                // than nothing.
                prop_assert!(got.keys().all(|v| ready_canary.iter().any(|(c, _)| c == v)));
                return Ok(());
            }
            for (v, w) in &ready_canary {
                let share = got.get(v).copied().unwrap_or(0.0);
                // Binomial standard deviation at 20 000 keys is under 0.004.
                prop_assert!((share - w).abs() < 0.02, "canary {} share {} weight {}", v, share, w);
            }
            if ready.is_empty() {
                prop_assert!(got.is_empty());
            }
            if let Some(s) = table.stable {
                let expected = 1.0 - ready_canary.iter().map(|(_, w)| w).sum::<f64>();
                let share = got.get(&s).copied().unwrap_or(0.0);
                prop_assert!((share - expected).abs() < 0.02, "stable {} share {} expected {}", s, share, expected);
            }
            // Every version that got traffic is ready; nothing else does.
            prop_assert!(got.keys().all(|v| ready.contains(v)));
            // Sticky: the same key gives the same answer from a fresh table.
            let again = RouteTable::build(&st, &ready);
            for i in 0..200u64 {
                let k = key_hash(&i.to_le_bytes());
                prop_assert_eq!(table.pick(k), again.pick(k));
            }
        }

        #[test]
        fn raising_a_canary_only_moves_keys_onto_it(low in 0.0f64..1.0, extra in 0.0f64..1.0, seed in any::<u64>()) {
            let high = (low + extra).min(1.0);
            let before = RouteTable::build(&state(Some(1), &[(2, low)], &[]), &[1, 2]);
            let after = RouteTable::build(&state(Some(1), &[(2, high)], &[]), &[1, 2]);
            for i in 0..2_000u64 {
                let k = key_hash(&(seed ^ i).to_le_bytes());
                if before.pick(k) == Some((2, Arm::Canary)) {
                    prop_assert_eq!(after.pick(k), Some((2, Arm::Canary)));
                }
            }
        }
    }
}
