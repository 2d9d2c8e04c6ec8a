//! The loop's state file, `<state_dir>/state.json`: consumer positions,
//! pending joins, online quality, rollouts in progress, versions
//! published, and how far each model's window log goes, written by atomic
//! rename after each batch (the window rows themselves are appended to
//! their log just before, `window_log.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use quiver_contract::layout;
use serde::{Deserialize, Serialize};

use super::{RunError, Trainer};
use crate::cadence::LabelRate;
use crate::config::Config;
use crate::join::Joiner;
use crate::monitor::quality::Quality;
use crate::rollout::Rollout;
use crate::window::Window;
use crate::window_log::{self, LogMark};

pub(super) const STATE_FILE: &str = "state.json";
/// Schema 2 moved the window rows into the window logs; a schema 1 file
/// (rows inline) is read, and its rows written to a log at the next save.
const STATE_SCHEMA: u32 = 2;

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) schema: u32,
    pub(super) positions: BTreeMap<String, String>,
    pub(super) joiner: Joiner,
    pub(super) models: BTreeMap<String, ModelState>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct ModelState {
    pub(super) window: Window,
    /// Online quality per version, since the trainer started watching it.
    pub(super) online: BTreeMap<u64, Quality>,
    /// Quality of served answers since the last training run.
    pub(super) since_training: Quality,
    pub(super) last_training_ms: u64,
    pub(super) rollout: Option<Rollout>,
    pub(super) published: Vec<u64>,
    /// How much of the window log belongs to this state.
    #[serde(default)]
    pub(super) window_log: Option<LogMark>,
    /// Labelled rows joined per second (the retrain cadence follows it).
    #[serde(default)]
    pub(super) labels: LabelRate,
    /// Seconds the last training run took, start to end.
    #[serde(default)]
    pub(super) last_training_s: Option<f64>,
    /// The rows the last training used, when it cut its window at a
    /// concept change.
    #[serde(default)]
    pub(super) rows_after_cut: Option<usize>,
    /// A concept change is looked for among rows predicted after this time
    /// (ms): the start of the last change acted upon.
    #[serde(default)]
    pub(super) change_seen_ms: u64,
}

fn state_path(config: &Config) -> PathBuf {
    config.state_dir.join(STATE_FILE)
}

/// The saved state, or a fresh one when there is none.
pub(super) fn load(config: &Config) -> Result<State, RunError> {
    let path = state_path(config);
    let shown = path.display().to_string();
    let state = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<State>(&bytes)
            .map_err(|e| RunError::State(shown.clone(), e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
            schema: STATE_SCHEMA,
            joiner: Joiner::new(config.join_window_ms),
            ..State::default()
        },
        Err(e) => return Err(RunError::State(shown, e.to_string())),
    };
    if !(1..=STATE_SCHEMA).contains(&state.schema) {
        return Err(RunError::State(shown, format!("schema {}", state.schema)));
    }
    let mut state = state;
    state.schema = STATE_SCHEMA;
    for (model, ms) in &mut state.models {
        match &ms.window_log {
            Some(mark) => window_log::load(&config.state_dir, model, mark, &mut ms.window)
                .map_err(|e| RunError::State(shown.clone(), e.to_string()))?,
            // A schema 1 state held its rows inline: they go to a log at
            // the first save.
            None => ms.window.all_unsaved(),
        }
        tracing::info!(model = %model, rows = ms.window.len(), "window restored");
    }
    Ok(state)
}

impl Trainer {
    /// Appends each window's new rows to its log, then writes the state
    /// that covers them.
    pub(super) fn save(&mut self) -> Result<(), RunError> {
        let path = state_path(&self.config);
        let shown = path.display().to_string();
        let mut replaced = Vec::new();
        for (model, ms) in &mut self.state.models {
            let old = window_log::save(
                &self.config.state_dir,
                model,
                &mut ms.window_log,
                &mut ms.window,
            )
            .map_err(|e| RunError::State(shown.clone(), e.to_string()))?;
            replaced.extend(old);
        }
        let bytes = serde_json::to_vec(&self.state)
            .map_err(|e| RunError::State(shown.clone(), e.to_string()))?;
        std::fs::create_dir_all(&self.config.state_dir)
            .and_then(|()| layout::write_atomic(&path, &bytes))
            .map_err(|e| RunError::State(shown, e.to_string()))?;
        // The state names the new generation now.
        for old in replaced {
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!(file = %old.display(), error = %e, "cannot remove a compacted window log");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_1_state_with_inline_rows_is_read_and_its_rows_go_to_a_log() {
        let dir = std::env::temp_dir().join(format!("quiver-state-v1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config: Config = toml::from_str(crate::config::TEST_CONFIG).unwrap();
        config.state_dir = dir.clone();
        let row = |i: u64| {
            serde_json::json!({"model": "m", "version": 1, "arm": "stable", "timestamp_ms": i,
                "features": [0.5, 1.5], "served": [0.2, 0.8], "label": 1.0, "at": format!("0:{i}")})
        };
        let v1 = serde_json::json!({"schema": 1, "positions": {}, "joiner": Joiner::new(1000),
            "models": {"m": {"window": {"max_rows": 10, "rows": [row(1), row(2), row(3)], "new_rows": 3},
                "online": {}, "since_training": Quality::default(), "last_training_ms": 0,
                "rollout": null, "published": []}}});
        std::fs::write(dir.join(STATE_FILE), serde_json::to_vec(&v1).unwrap()).unwrap();
        let mut state = load(&config).unwrap();
        assert_eq!(state.schema, STATE_SCHEMA);
        let ms = state.models.get_mut("m").unwrap();
        assert_eq!(ms.window.len(), 3);
        assert!(ms.window_log.is_none());
        // The first save writes all three to a log.
        window_log::save(&dir, "m", &mut ms.window_log, &mut ms.window).unwrap();
        assert_eq!(ms.window_log.as_ref().map(|m| m.rows), Some(3));
        let text = serde_json::to_string(&ms.window).unwrap();
        assert!(!text.contains("rows\":["), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
