//! A numeric CSV with a header row: feature columns, then the label last.

use std::path::Path;

use crate::train::Dataset;

#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{path} line {line}: {message}")]
    Row {
        path: String,
        line: usize,
        message: String,
    },
}

/// The feature names and the rows.
pub fn read(path: &Path) -> Result<(Vec<String>, Dataset), CsvError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CsvError::Read(shown.clone(), e))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let bad = |line: usize, message: String| CsvError::Row {
        path: shown.clone(),
        line: line + 1,
        message,
    };
    let (_, header) = lines.next().ok_or_else(|| bad(0, "empty file".into()))?;
    let mut names: Vec<String> = header.split(',').map(|s| s.trim().to_string()).collect();
    if names.len() < 2 {
        return Err(bad(0, "need at least one feature and the label".into()));
    }
    names.pop();
    let mut data = Dataset::new(names.len());
    let mut row = Vec::with_capacity(names.len() + 1);
    for (i, line) in lines {
        row.clear();
        for cell in line.split(',') {
            row.push(
                cell.trim()
                    .parse::<f32>()
                    .map_err(|e| bad(i, format!("'{cell}': {e}")))?,
            );
        }
        if row.len() != names.len() + 1 {
            return Err(bad(
                i,
                format!("{} cells, want {}", row.len(), names.len() + 1),
            ));
        }
        let y = row[names.len()];
        data.push(&row[..names.len()], y);
    }
    Ok((names, data))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_features_and_label() {
        let path = std::env::temp_dir().join(format!("quiver-csv-{}.csv", std::process::id()));
        std::fs::write(&path, "a,b,y\n1,2,0\n3,4.5,1\n").unwrap();
        let (names, d) = super::read(&path).unwrap();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(d.x, vec![1.0, 2.0, 3.0, 4.5]);
        assert_eq!(d.y, vec![0.0, 1.0]);
        std::fs::write(&path, "a,y\n1,2,3\n").unwrap();
        assert!(super::read(&path).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
