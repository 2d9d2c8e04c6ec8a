//! A model version's serving settings: batching, queue, instances, the
//! execution provider, which versions load, and the rollout policy. The
//! gateway's `[models]` section holds the defaults; a model's own
//! `config.toml` overrides them with the same keys.

use serde::{Deserialize, Serialize};

use crate::rollout::RolloutPolicy;

/// Serving settings, as defaults (`[models]` here) or per model (the
/// model's `config.toml`, which uses the same keys).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelDefaults {
    /// Most rows one batch may hold; 0 turns batching off.
    pub max_batch_size: usize,
    /// Whether requests are batched together: `"auto"` runs 1, 2 and 3
    /// rows of zeros through the model at warm-up and batches it when
    /// every output follows the rows, whatever shapes the graph declares;
    /// `"on"` batches it whatever the probe saw (its inputs still need a
    /// dynamic first dimension); `"off"` never batches it.
    pub batching: Batching,
    /// Outputs that are a sequence of maps (a classifier's ZipMap, the
    /// default of skl2onnx and onnxmltools): `"tensor"` serves them as FP32
    /// `[batch, classes]`, columns in class-label order, with the labels
    /// in the model's metadata (`parameters.classlabels`); `"raw"` serves
    /// ONNX Runtime's maps as BYTES `[batch]`, one JSON object per row.
    pub zipmap: ZipMapOutput,
    /// While the model is busy, how long a queued request may wait for
    /// others to join its batch, in microseconds. An idle model never waits.
    pub max_queue_delay_us: u64,
    /// Batch sizes (rows) the batcher prefers to cut at, e.g. `[8, 16, 32]`.
    pub preferred_batch_sizes: Vec<usize>,
    /// Requests waiting per model version; past it requests get 429 at once.
    pub max_queue_size: usize,
    /// Deadline for requests that do not send a `timeout` parameter, in
    /// milliseconds; 0 means none. Expired requests never reach the model.
    pub default_timeout_ms: u64,
    /// Priority levels a request may ask for with its `priority` parameter,
    /// 1 the highest (as Triton's dynamic batcher counts them). Higher
    /// levels are batched first; 1 means no priorities (plain FIFO).
    pub priority_levels: u32,
    /// The level of a request that asks for none (or for 0); 0 here means
    /// the lowest level.
    pub default_priority: u32,
    /// How long a request without a deadline may wait behind higher
    /// priorities before it goes ahead of them, in milliseconds. A request
    /// with a deadline goes ahead once half its time budget is gone.
    pub max_priority_wait_ms: u64,
    /// A request runs on the thread that received it, with no hand-off to an
    /// instance thread, when an instance is free and the model's measured
    /// compute time for the batch it would take is at most this many
    /// microseconds: at once when the model is quiet; under load after its task
    /// has yielded once, so that the requests already waiting join its batch,
    /// and that thread then also takes what queued meanwhile, for at most this
    /// long in all. 0 never runs inline (every batch goes to the instance
    /// threads). Kept small, so a heavy model never holds up the async runtime.
    pub inline_max_compute_us: u64,
    /// ONNX Runtime sessions per model version, each on its own OS thread.
    pub instances: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_op_threads: usize,
    /// `cpu`, `cuda` or `tensorrt` (the last two need a GPU build).
    pub execution_provider: ExecutionProvider,
    /// Which versions to load: `"all"`, `{ latest = N }` or
    /// `{ specific = [1, 3] }`. Versions that routing names (stable,
    /// canaries, shadows) stay loaded whatever the policy says.
    pub version_policy: VersionPolicy,
    /// Accept a new version whose inputs or outputs differ from the
    /// version serving now. Off, such a version is refused: it would break
    /// every client at the swap.
    pub allow_interface_change: bool,
    /// Canary rollout with automatic promotion and rollback.
    pub rollout: RolloutPolicy,
}

impl Default for ModelDefaults {
    fn default() -> Self {
        ModelDefaults {
            max_batch_size: 64,
            batching: Batching::Auto,
            zipmap: ZipMapOutput::Tensor,
            max_queue_delay_us: 500,
            preferred_batch_sizes: Vec::new(),
            max_queue_size: 1024,
            default_timeout_ms: 0,
            inline_max_compute_us: 50,
            priority_levels: 1,
            default_priority: 0,
            max_priority_wait_ms: 100,
            instances: 1,
            intra_op_threads: 1,
            execution_provider: ExecutionProvider::Cpu,
            version_policy: VersionPolicy::default(),
            allow_interface_change: false,
            rollout: RolloutPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Batching {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZipMapOutput {
    Tensor,
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
    Tensorrt,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum VersionPolicy {
    All,
    Latest(usize),
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to load out of those present (sorted ascending).
    pub fn select(&self, present: &[u64]) -> Vec<u64> {
        match self {
            VersionPolicy::All => present.to_vec(),
            VersionPolicy::Latest(n) => present[present.len().saturating_sub(*n)..].to_vec(),
            VersionPolicy::Specific(wanted) => present
                .iter()
                .copied()
                .filter(|v| wanted.contains(v))
                .collect(),
        }
    }
}

/// Checks the serving settings that would make a model unservable.
pub fn validate_model_settings(m: &ModelDefaults) -> Result<(), (&'static str, String)> {
    if m.instances == 0 {
        return Err(("instances", "must be at least 1".into()));
    }
    if m.intra_op_threads == 0 {
        return Err(("intra_op_threads", "must be at least 1".into()));
    }
    if m.max_queue_size == 0 {
        return Err(("max_queue_size", "must be at least 1".into()));
    }
    if m.batching == Batching::On && m.max_batch_size == 0 {
        return Err(("batching", "\"on\" needs max_batch_size above 0".into()));
    }
    m.rollout.validate().map_err(|e| ("rollout", e))?;
    if m.priority_levels == 0 {
        return Err(("priority_levels", "must be at least 1".into()));
    }
    if m.default_priority > m.priority_levels {
        return Err((
            "default_priority",
            format!(
                "{} is not within 0..={} (priority_levels)",
                m.default_priority, m.priority_levels
            ),
        ));
    }
    if let Some(p) = m
        .preferred_batch_sizes
        .iter()
        .find(|&&p| p == 0 || (m.max_batch_size > 0 && p > m.max_batch_size))
    {
        return Err((
            "preferred_batch_sizes",
            format!("{p} is not within 1..={}", m.max_batch_size),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_policy_selects() {
        let present = [1, 2, 5];
        assert_eq!(VersionPolicy::Latest(1).select(&present), vec![5]);
        assert_eq!(VersionPolicy::Latest(9).select(&present), vec![1, 2, 5]);
        assert_eq!(VersionPolicy::All.select(&present), vec![1, 2, 5]);
        assert_eq!(
            VersionPolicy::Specific(vec![2, 7]).select(&present),
            vec![2]
        );
    }

    #[test]
    fn invalid_model_settings_are_named() {
        let m = ModelDefaults {
            preferred_batch_sizes: vec![128],
            max_batch_size: 64,
            ..Default::default()
        };
        assert_eq!(
            validate_model_settings(&m).unwrap_err().0,
            "preferred_batch_sizes"
        );
    }
}
