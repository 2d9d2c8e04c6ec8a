//! `<model>/<version>/manifest.json`: written last, it marks a version as
//! complete. It lists the version's files with their SHA-256 (a reader
//! refuses a version whose files do not match), the interface, and for
//! versions the trainer made, the lineage and offline metrics.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest schema this crate writes; it also reads schemas 1 and 2.
pub const SCHEMA: u32 = 3;
/// The oldest manifest schema this crate reads. Schema 2 added the
/// lineage's `run`, schema 3 its `command` (a version trained by a user's
/// own training code).
pub const MIN_SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub model: String,
    pub version: u64,
    /// File name (relative to the version directory) → lowercase hex SHA-256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sha256: BTreeMap<String, String>,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<TensorDecl>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<TensorDecl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// Metric set (e.g. `offline`) → metric name → value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, BTreeMap<String, f64>>,
    /// Largest absolute difference between ONNX Runtime's output and the
    /// trainer's own forward pass on held-out rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity_max_abs: Option<f64>,
}

/// A tensor as the Open Inference Protocol names it; -1 is a dynamic
/// dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorDecl {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// Where a trained version came from, enough to reproduce it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Lineage {
    /// The version it was trained to replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    /// Source name (e.g. `predictions`) → the exact ranges read from it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default)]
    pub rows: u64,
    /// Record time (ms since the Unix epoch) of the newest prediction in
    /// the training data: rows served after it are out of its sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_through_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
    /// The code version (git sha) of the trainer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The training run that made it: `<model>/runs/<run>.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// For a version trained by a user's command (the trainer's `command`
    /// family): what ran, and with which code and libraries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandLineage>,
}

/// The user's training code behind a version.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CommandLineage {
    /// The command's name in the trainer config (`[models.commands.<name>]`).
    pub name: String,
    /// The argument vector run, as configured.
    pub argv: Vec<String>,
    /// The script whose hash is recorded (a path as configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// Lowercase hex SHA-256 of the script's bytes when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_sha256: Option<String>,
    /// Library → version, as the command reported them (`libraries.json`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub libraries: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid manifest: {message}")]
    Invalid { path: String, message: String },
    #[error("{path} has schema {found}; this build reads schemas {MIN_SCHEMA} to {SCHEMA}")]
    Schema { path: String, found: u32 },
    #[error("checksum mismatch for {file}: manifest says {expected}, file has {actual}")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },
}

impl Manifest {
    /// A manifest for `model`/`version` with no files listed yet.
    pub fn new(model: &str, version: u64) -> Self {
        Manifest {
            schema: SCHEMA,
            model: model.to_string(),
            version,
            sha256: BTreeMap::new(),
            created_at: Some(crate::time::rfc3339_now()),
            inputs: Vec::new(),
            outputs: Vec::new(),
            lineage: None,
            metrics: BTreeMap::new(),
            parity_max_abs: None,
        }
    }

    /// Reads and checks `path`: valid JSON of a known schema, naming the
    /// model and version of the directory it sits in when those are given.
    pub fn read(path: &Path, expect: Option<(&str, u64)>) -> Result<Manifest, ManifestError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| ManifestError::Read {
            path: shown.clone(),
            source,
        })?;
        Manifest::parse(&text, &shown, expect)
    }

    /// Checks the bytes of a manifest, as [`Manifest::read`] does; `shown`
    /// names where they came from in errors.
    pub fn parse(
        text: &[u8],
        shown: &str,
        expect: Option<(&str, u64)>,
    ) -> Result<Manifest, ManifestError> {
        let shown = shown.to_string();
        let invalid = |message: String| ManifestError::Invalid {
            path: shown.clone(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| invalid(e.to_string()))?;
        let schema = value
            .get("schema")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| invalid("missing integer field 'schema'".into()))?;
        if !(u64::from(MIN_SCHEMA)..=u64::from(SCHEMA)).contains(&schema) {
            return Err(ManifestError::Schema {
                path: shown,
                found: u32::try_from(schema).unwrap_or(u32::MAX),
            });
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        if let Some((model, version)) = expect
            && (manifest.model != model || manifest.version != version)
        {
            return Err(invalid(format!(
                "it names {}/{} but sits in {model}/{version}",
                manifest.model, manifest.version
            )));
        }
        for file in manifest.sha256.keys() {
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(invalid(format!(
                    "file name '{file}' leaves the version directory"
                )));
            }
        }
        Ok(manifest)
    }

    /// Checks every listed file in `dir` against its checksum.
    pub fn verify(&self, dir: &Path) -> Result<(), ManifestError> {
        for (file, expected) in &self.sha256 {
            let actual = sha256_file(&dir.join(file))?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(ManifestError::Checksum {
                    file: file.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and maps with string keys cannot fail
        // to serialise; fall back to an empty object rather than panic.
        serde_json::to_vec_pretty(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// Lowercase hex SHA-256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String, ManifestError> {
    let read_err = |source| ManifestError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex SHA-256 of bytes in memory.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("quiver-manifest-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sha256_matches_the_standard_vector() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn round_trip_and_checksums() {
        let dir = scratch("ok");
        std::fs::write(dir.join("model.onnx"), b"graph").unwrap();
        let mut m = Manifest::new("fraud", 7);
        m.sha256.insert("model.onnx".into(), sha256_bytes(b"graph"));
        m.lineage = Some(Lineage {
            parent: Some(6),
            rows: 10,
            command: Some(CommandLineage {
                name: "lightgbm".into(),
                argv: vec!["python".into(), "train.py".into()],
                script: Some("train.py".into()),
                script_sha256: Some(sha256_bytes(b"print()")),
                libraries: BTreeMap::from([("lightgbm".into(), "4.7.0".into())]),
            }),
            ..Default::default()
        });
        std::fs::write(dir.join(crate::layout::MANIFEST_FILE), m.to_json()).unwrap();
        let read = Manifest::read(&dir.join("manifest.json"), Some(("fraud", 7))).unwrap();
        assert_eq!(read, m);
        read.verify(&dir).unwrap();

        std::fs::write(dir.join("model.onnx"), b"graph, truncated or changed").unwrap();
        assert!(matches!(
            read.verify(&dir),
            Err(ManifestError::Checksum { .. })
        ));
        assert!(Manifest::read(&dir.join("manifest.json"), Some(("fraud", 8))).is_err());
    }

    #[test]
    fn refuses_newer_schema_bad_json_and_escaping_names() {
        let dir = scratch("bad");
        let path = dir.join("manifest.json");
        std::fs::write(&path, br#"{"schema": 4, "model": "m", "version": 1}"#).unwrap();
        assert!(matches!(
            Manifest::read(&path, None),
            Err(ManifestError::Schema { found: 4, .. })
        ));
        // Schema 2 (no command in the lineage) is still read.
        std::fs::write(
            &path,
            br#"{"schema": 2, "model": "m", "version": 1, "lineage": {"rows": 3, "run": "1"}}"#,
        )
        .unwrap();
        assert!(
            Manifest::read(&path, None)
                .unwrap()
                .lineage
                .is_some_and(|l| l.command.is_none())
        );
        // Schema 1 (no run in the lineage) is still read.
        std::fs::write(&path, br#"{"schema": 1, "model": "m", "version": 1}"#).unwrap();
        assert!(Manifest::read(&path, None).is_ok());
        std::fs::write(&path, b"{\"schema\": 1, \"model\": ").unwrap();
        assert!(matches!(
            Manifest::read(&path, None),
            Err(ManifestError::Invalid { .. })
        ));
        std::fs::write(
            &path,
            br#"{"schema": 1, "model": "m", "version": 1, "sha256": {"../x": "00"}}"#,
        )
        .unwrap();
        let err = Manifest::read(&path, None).unwrap_err().to_string();
        assert!(err.contains("leaves the version directory"), "{err}");
    }
}
