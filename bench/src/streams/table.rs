//! Real streams as plain numeric CSV, as `bench/datasets/extract.py`
//! writes them: a header, then one row per example in time order. The
//! columns `time` and `label_time` (optional: the row index and "at once"
//! when absent) give the stream clock; the last column is the 0/1 label;
//! every other column is a feature. A sidecar `<name>.meta.json` gives the
//! documented drift onsets and the time unit.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Onset, Row, Stream};

/// What the sidecar file says about a stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub onsets: Vec<Onset>,
    #[serde(default = "default_unit")]
    pub time_unit: String,
}

fn default_unit() -> String {
    "row".into()
}

pub fn meta_path(csv: &Path) -> PathBuf {
    csv.with_extension("meta.json")
}

pub fn read(path: &Path) -> Result<Stream> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let meta: Meta = match std::fs::read(meta_path(path)) {
        Ok(bytes) => serde_json::from_slice(&bytes).context("reading the stream's meta.json")?,
        Err(_) => Meta {
            time_unit: default_unit(),
            ..Meta::default()
        },
    };
    parse(&name, &text, meta)
}

pub fn parse(name: &str, text: &str, meta: Meta) -> Result<Stream> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty CSV")?
        .split(',')
        .map(str::trim)
        .collect();
    if header.len() < 2 {
        bail!("a stream needs at least one feature and the label");
    }
    let time_col = header.iter().position(|h| *h == "time");
    let label_time_col = header.iter().position(|h| *h == "label_time");
    let label_col = header.len() - 1;
    let feature_cols: Vec<usize> = (0..label_col)
        .filter(|c| Some(*c) != time_col && Some(*c) != label_time_col)
        .collect();
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            bail!(
                "line {}: {} cells, the header has {}",
                i + 2,
                cells.len(),
                header.len()
            );
        }
        let num = |c: usize| -> Result<f64> {
            cells[c]
                .trim()
                .parse::<f64>()
                .with_context(|| format!("line {}: '{}' is not a number", i + 2, cells[c]))
        };
        let time = time_col.map_or(Ok(i as f64), num)?;
        let label_time = label_time_col.map_or(Ok(time), num)?;
        let label = num(label_col)?;
        if label != 0.0 && label != 1.0 {
            bail!("line {}: the label must be 0 or 1, not {label}", i + 2);
        }
        let features = feature_cols
            .iter()
            .map(|&c| num(c).map(|v| v as f32))
            .collect::<Result<_>>()?;
        rows.push(Row {
            time,
            label_time: label_time.max(time),
            features,
            label: label as u8,
        });
    }
    Ok(Stream {
        name: name.to_string(),
        feature_names: feature_cols
            .iter()
            .map(|&c| header[c].to_string())
            .collect(),
        rows,
        onsets: meta.onsets,
        time_unit: meta.time_unit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_times_features_and_labels() {
        let s = parse(
            "t",
            "time,label_time,a,b,label\n1,5,0.5,2,1\n2,3,1.5,-1,0\n",
            Meta::default(),
        )
        .unwrap();
        assert_eq!(s.feature_names, ["a", "b"]);
        assert_eq!(
            s.rows[0],
            Row {
                time: 1.0,
                label_time: 5.0,
                features: vec![0.5, 2.0],
                label: 1
            }
        );
        assert_eq!(s.rows[1].label, 0);
    }

    #[test]
    fn without_times_the_row_index_is_the_clock() {
        let s = parse("t", "a,label\n3,1\n4,0\n", Meta::default()).unwrap();
        assert_eq!((s.rows[1].time, s.rows[1].label_time), (1.0, 1.0));
    }

    #[test]
    fn bad_rows_are_refused() {
        assert!(parse("t", "a,label\n3\n", Meta::default()).is_err());
        assert!(parse("t", "a,label\n3,2\n", Meta::default()).is_err());
        assert!(parse("t", "a,label\nx,1\n", Meta::default()).is_err());
    }

    #[test]
    fn a_written_stream_reads_back() {
        let s = crate::streams::hyperplane::Config {
            rows: 50,
            ..Default::default()
        }
        .generate(3);
        let dir = std::env::temp_dir().join(format!("quiver-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.csv");
        s.write_stream_csv(&path).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.rows, s.rows);
        assert_eq!(back.onsets, s.onsets);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
