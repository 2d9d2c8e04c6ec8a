//! Windows on disk: each model's rows in an append-only log,
//! `<state_dir>/windows/<model>.<generation>.jsonl`, one example per line.
//! After each batch the rows added since the last save are appended and
//! synced; only then does the state file record the log's new length (a
//! [`LogMark`]). A restart reads the log up to that length: rows appended
//! for a batch whose state write never happened lie beyond it and are cut
//! off (the batch is read again from the source). So the resume guarantee
//! of the one state file holds, while a batch writes its own rows instead
//! of the whole window. When the log holds twice the window, the window is
//! written to the next generation's file and the state moves to it; the old
//! file is removed once the state no longer names it.

use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::join::Example;
use crate::window::Window;

const WINDOWS_DIR: &str = "windows";

/// How much of a model's window log the state covers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogMark {
    pub generation: u64,
    /// Bytes and rows of the log that belong to the state.
    pub bytes: u64,
    pub rows: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("window log {0}: {1}")]
    Io(String, std::io::Error),
    #[error("window log {0} holds {1} bytes, the state says {2}")]
    Short(String, u64, u64),
    #[error("window log {0} line {1}: {2}")]
    Line(String, usize, String),
}

fn path(state_dir: &Path, model: &str, generation: u64) -> PathBuf {
    state_dir
        .join(WINDOWS_DIR)
        .join(format!("{model}.{generation}.jsonl"))
}

/// Writes `window`'s unsaved rows to its log (or the whole window to a new
/// generation, when there is no log yet or it has grown to twice the
/// window) and moves `mark` on. Returns a file to remove once the state
/// with the new mark is written.
pub fn save(
    state_dir: &Path,
    model: &str,
    mark: &mut Option<LogMark>,
    window: &mut Window,
) -> Result<Option<PathBuf>, LogError> {
    let compact = match mark {
        None => true,
        Some(m) => {
            m.rows >= 2 * window.max_rows().max(1) as u64
                || !path(state_dir, model, m.generation).exists()
        }
    };
    if compact {
        let generation = mark.as_ref().map_or(0, |m| m.generation + 1);
        let new = path(state_dir, model, generation);
        let shown = new.display().to_string();
        let io = |e| LogError::Io(shown.clone(), e);
        std::fs::create_dir_all(state_dir.join(WINDOWS_DIR)).map_err(io)?;
        let mut bytes = Vec::new();
        for e in window.examples() {
            line(&mut bytes, e);
        }
        quiver_contract::layout::write_atomic(&new, &bytes).map_err(io)?;
        window.take_unsaved().for_each(drop);
        let old = mark.as_ref().map(|m| path(state_dir, model, m.generation));
        *mark = Some(LogMark {
            generation,
            bytes: bytes.len() as u64,
            rows: window.len() as u64,
        });
        return Ok(old);
    }
    let Some(m) = mark else {
        return Ok(None);
    };
    let file = path(state_dir, model, m.generation);
    let shown = file.display().to_string();
    let io = |e| LogError::Io(shown.clone(), e);
    let mut bytes = Vec::new();
    let mut rows = 0u64;
    for e in window.take_unsaved() {
        line(&mut bytes, e);
        rows += 1;
    }
    if rows == 0 {
        return Ok(None);
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .map_err(io)?;
    // Rows of a batch whose state was never written go.
    f.set_len(m.bytes).map_err(io)?;
    f.seek(std::io::SeekFrom::End(0)).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_data().map_err(io)?;
    m.bytes += bytes.len() as u64;
    m.rows += rows;
    Ok(None)
}

fn line(out: &mut Vec<u8>, e: &Example) {
    // An example is numbers and strings: it always serialises.
    if serde_json::to_writer(&mut *out, e).is_ok() {
        out.push(b'\n');
    }
}

/// Reads the rows `mark` covers back into `window`.
pub fn load(
    state_dir: &Path,
    model: &str,
    mark: &LogMark,
    window: &mut Window,
) -> Result<(), LogError> {
    let file = path(state_dir, model, mark.generation);
    let shown = file.display().to_string();
    let bytes = std::fs::read(&file).map_err(|e| LogError::Io(shown.clone(), e))?;
    if (bytes.len() as u64) < mark.bytes {
        return Err(LogError::Short(shown, bytes.len() as u64, mark.bytes));
    }
    let covered = &bytes[..mark.bytes as usize];
    for (i, l) in covered.lines().enumerate() {
        let l = l.map_err(|e| LogError::Io(shown.clone(), e))?;
        let e: Example = serde_json::from_str(&l)
            .map_err(|e| LogError::Line(shown.clone(), i + 1, e.to_string()))?;
        window.restore(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(i: u64) -> Example {
        Example {
            model: "m".into(),
            version: 1,
            arm: "stable".into(),
            timestamp_ms: i,
            features: vec![i as f32, 0.5],
            served: vec![0.25, 0.75],
            label: 1.0,
            at: format!("1:{i}"),
        }
    }

    fn times(w: &Window) -> Vec<u64> {
        w.examples().map(|e| e.timestamp_ms).collect()
    }

    #[test]
    fn appends_cuts_unrecorded_rows_and_compacts() {
        let dir = std::env::temp_dir().join(format!("quiver-window-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = Window::new(4);
        let mut mark = None;
        for i in 0..3 {
            w.push(ex(i));
        }
        assert_eq!(save(&dir, "m", &mut mark, &mut w).unwrap(), None);
        assert_eq!(mark.as_ref().map(|m| (m.generation, m.rows)), Some((0, 3)));
        for i in 3..6 {
            w.push(ex(i));
        }
        save(&dir, "m", &mut mark, &mut w).unwrap();
        let recorded = mark.clone().unwrap();
        assert_eq!(recorded.rows, 6);
        // A batch appended whose state write never happened...
        w.push(ex(6));
        let mut unrecorded = Some(recorded.clone());
        save(&dir, "m", &mut unrecorded, &mut w).unwrap();
        // ...is not read back with the recorded mark,
        let mut back = Window::new(4);
        load(&dir, "m", &recorded, &mut back).unwrap();
        assert_eq!(times(&back), vec![2, 3, 4, 5]);
        assert_eq!(back.new_rows, 0);
        // and the next append from that mark replaces it.
        back.push(ex(7));
        let mut m2 = Some(recorded.clone());
        save(&dir, "m", &mut m2, &mut back).unwrap();
        let mut again = Window::new(10);
        load(&dir, "m", m2.as_ref().unwrap(), &mut again).unwrap();
        assert_eq!(times(&again), vec![0, 1, 2, 3, 4, 5, 7]);
        // Twice the window in the log: the next save writes the window
        // to generation 1 and hands back generation 0 to remove.
        back.push(ex(8));
        assert_eq!(save(&dir, "m", &mut m2, &mut back).unwrap(), None);
        assert_eq!(m2.as_ref().map(|m| m.rows), Some(8));
        back.push(ex(9));
        let old = save(&dir, "m", &mut m2, &mut back).unwrap();
        assert_eq!(old, Some(path(&dir, "m", 0)));
        let m3 = m2.unwrap();
        assert_eq!((m3.generation, m3.rows), (1, 4));
        let mut compacted = Window::new(4);
        load(&dir, "m", &m3, &mut compacted).unwrap();
        assert_eq!(times(&compacted), vec![5, 7, 8, 9]);
        // A log shorter than the state says is an error, not a silent loss.
        let short = LogMark {
            bytes: m3.bytes + 1,
            ..m3
        };
        assert!(matches!(
            load(&dir, "m", &short, &mut Window::new(4)),
            Err(LogError::Short(..))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
