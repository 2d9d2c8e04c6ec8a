//! The registry layout:
//!
//! ```text
//! <root>/<model>/config.toml          serving config (optional)
//! <root>/<model>/routing.json         routing state (optional)
//! <root>/<model>/<version>/model.onnx the graph
//! <root>/<model>/<version>/manifest.json  written last: the version is complete
//! ```
//!
//! A version is a positive integer. Writers put every file of a version in
//! place first and the manifest last, each through [`write_atomic`], so a
//! reader never sees half a file and never sees a manifest before the files
//! it lists.

use std::io::Write;
use std::path::{Path, PathBuf};

pub const MODEL_FILE: &str = "model.onnx";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const CONFIG_FILE: &str = "config.toml";
pub const ROUTING_FILE: &str = "routing.json";

/// `<root>/<model>/<version>`.
pub fn version_dir(root: &Path, model: &str, version: u64) -> PathBuf {
    root.join(model).join(version.to_string())
}

/// Parses a directory name as a version: a positive integer, nothing else.
pub fn parse_version(name: &str) -> Option<u64> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse::<u64>().ok().filter(|&v| v > 0)
}

/// Writes `bytes` to `path` so that readers see the old content or the new,
/// never a part: a temporary file in the same directory, flushed to disk,
/// then renamed over `path`, then the directory flushed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Dot-prefixed so a directory scan skips it; pid-suffixed so two
    // writers never share one.
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the directory is flushed.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_positive_integers_only() {
        assert_eq!(parse_version("7"), Some(7));
        assert_eq!(parse_version("007"), Some(7));
        for bad in [
            "0",
            "",
            "-1",
            "+1",
            "1a",
            " 1",
            ".1.tmp",
            "18446744073709551616",
        ] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("quiver-contract-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routing.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("routing.json")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
