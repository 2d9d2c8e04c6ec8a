//! The events log, `<state_dir>/events.jsonl`: one JSON object per line,
//! `{"ts": "<RFC 3339>", "ts_ms": <ms>, "model": "...", "event": "...",
//! "version": N, ...details}`, appended and flushed as they happen. The
//! demo's plot reads it; `trainer/README.md` lists the events.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

pub struct Events {
    file: File,
}

impl Events {
    pub fn open(state_dir: &Path) -> std::io::Result<Events> {
        std::fs::create_dir_all(state_dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(state_dir.join("events.jsonl"))?;
        Ok(Events { file })
    }

    /// Appends one event; `details` is merged into the line. A failed write
    /// is logged, never fatal: the events log is for people and plots.
    pub fn emit(
        &mut self,
        model: &str,
        event: &str,
        version: Option<u64>,
        details: serde_json::Value,
    ) {
        let mut line = serde_json::json!({
            "ts": quiver_contract::time::rfc3339_now(),
            "ts_ms": quiver_contract::records::now_ms(),
            "model": model,
            "event": event,
        });
        if let Some(v) = version {
            line["version"] = v.into();
        }
        if let (Some(obj), serde_json::Value::Object(extra)) = (line.as_object_mut(), details) {
            obj.extend(extra);
        }
        tracing::info!(model, event, version, "{line}");
        if let Err(e) = writeln!(self.file, "{line}").and_then(|()| self.file.flush()) {
            tracing::warn!(error = %e, "cannot append to the events log");
        }
    }
}
