//! The registry's shared documents, each written by compare-and-swap:
//! a model's routing state, the index that replicas poll, the guardrail
//! leader's lease; and versions, published files first, manifest last,
//! index after.

use std::collections::BTreeMap;
use std::time::Duration;

use quiver_contract::fleet::{INDEX_FILE, LEASE_FILE, Lease, RegistryIndex, SCHEMA};
use quiver_contract::layout::{self, CONFIG_FILE, MANIFEST_FILE, ROUTING_FILE};
use quiver_contract::manifest::Manifest;
use quiver_contract::routing::RoutingState;
use quiver_contract::runs::{RUNS_DIR, RunRecord, run_key};

use crate::cas::{Change, UpdateError, update};
use crate::store::{Entry, Expect, Registry, RegistryError, Tag};

/// `<model>/routing.json`.
pub fn routing_key(model: &str) -> String {
    format!("{model}/{ROUTING_FILE}")
}

/// `<model>/config.toml`.
pub fn config_key(model: &str) -> String {
    format!("{model}/{CONFIG_FILE}")
}

/// `<model>/<version>/<file>`.
pub fn version_key(model: &str, version: u64, file: &str) -> String {
    format!("{model}/{version}/{file}")
}

/// Reads a model's routing state; no file is the default state. An
/// invalid file is an error naming the problem.
pub fn read_routing(
    reg: &Registry,
    model: &str,
) -> Result<(RoutingState, Option<Tag>), RegistryError> {
    let key = routing_key(model);
    match reg.get(&key)? {
        None => Ok((RoutingState::default(), None)),
        Some(doc) => RoutingState::parse(&doc.bytes)
            .map(|s| (s, Some(doc.tag)))
            .map_err(|e| RegistryError::Invalid {
                key,
                message: e.to_string(),
            }),
    }
}

/// Changes a model's routing state by compare-and-swap: `change` is shown
/// the stored state (the default when there is none) and edits it, or
/// refuses it with a reason. Retries on every lost race, then marks the
/// model changed in the index. Returns the state now stored.
///
/// `replace_invalid`: a stored file that does not parse is handed over as
/// the default state (for writers that replace the whole state) instead of
/// refusing.
pub fn update_routing(
    reg: &Registry,
    model: &str,
    replace_invalid: bool,
    mut change: impl FnMut(&mut RoutingState) -> Result<(), String>,
) -> Result<RoutingState, UpdateError> {
    let key = routing_key(model);
    let done = update(reg, &key, |current| {
        let mut state = match current.map(RoutingState::parse) {
            None => RoutingState::default(),
            Some(Ok(s)) => s,
            Some(Err(_)) if replace_invalid => RoutingState::default(),
            Some(Err(e)) => return Err(format!("{key} is invalid ({e}); replace it first")),
        };
        let before = state.clone();
        change(&mut state)?;
        state.validate().map_err(|e| e.to_string())?;
        if state == before && current.is_some() {
            return Ok(Change::Keep);
        }
        Ok(Change::Write(state.to_json()))
    })?;
    if done.written {
        bump_index(reg, model)?;
    }
    RoutingState::parse(&done.bytes).map_err(|e| UpdateError::Refused(e.to_string()))
}

/// Marks `model` changed in `.quiver/index.json` (created if absent; an
/// unreadable index is rebuilt, it is only a change signal).
pub fn bump_index(reg: &Registry, model: &str) -> Result<(), UpdateError> {
    update(reg, INDEX_FILE, |current| {
        let mut index = current
            .and_then(|b| RegistryIndex::parse(b).ok())
            .unwrap_or_default();
        index.bump(model);
        Ok(Change::Write(index.to_json()))
    })
    .map(|_| ())
}

/// Writes `config.toml` of a model and marks it changed.
pub fn write_config(reg: &Registry, model: &str, text: &str) -> Result<(), UpdateError> {
    reg.put(&config_key(model), text.as_bytes())?;
    bump_index(reg, model)
}

/// Publishes a version: claims its number (a second publisher of the same
/// number fails instead of overwriting), writes every file, then the
/// manifest last, which makes the version visible, then marks the model
/// changed in the index.
pub fn publish_version(
    reg: &Registry,
    manifest: &Manifest,
    files: &[(&str, &[u8])],
) -> Result<(), UpdateError> {
    let (model, version) = (manifest.model.as_str(), manifest.version);
    let claim = version_key(model, version, "claim");
    let claimed = reg
        .put_if(
            &claim,
            manifest.created_at.as_deref().unwrap_or("").as_bytes(),
            &Expect::Absent,
        )
        .map(|_| ());
    match claimed {
        Err(RegistryError::Conflict { .. }) => {
            return Err(UpdateError::Refused(format!(
                "version {version} of '{model}' is already being published"
            )));
        }
        other => other?,
    }
    if reg
        .get(&version_key(model, version, MANIFEST_FILE))?
        .is_some()
    {
        return Err(UpdateError::Refused(format!(
            "version {version} of '{model}' already exists"
        )));
    }
    for (name, bytes) in files {
        reg.put(&version_key(model, version, name), bytes)?;
    }
    reg.put_if(
        &version_key(model, version, MANIFEST_FILE),
        &manifest.to_json(),
        &Expect::Absent,
    )?;
    bump_index(reg, model)
}

/// Writes (or rewrites) a run record. One trainer owns a model's runs, so
/// a plain write suffices.
pub fn write_run(reg: &Registry, run: &RunRecord) -> Result<(), RegistryError> {
    reg.put(&run_key(&run.model, &run.id), &run.to_json())
        .map(|_| ())
}

/// One run record, `None` when there is none by that id.
pub fn read_run(reg: &Registry, model: &str, id: &str) -> Result<Option<RunRecord>, RegistryError> {
    let key = run_key(model, id);
    match reg.get(&key)? {
        None => Ok(None),
        Some(doc) => RunRecord::parse(&doc.bytes)
            .map(Some)
            .map_err(|e| RegistryError::Invalid {
                key,
                message: e.to_string(),
            }),
    }
}

/// The ids of a model's run records, as listed.
pub fn run_ids(reg: &Registry, model: &str) -> Result<Vec<String>, RegistryError> {
    Ok(reg
        .list(&format!("{model}/{RUNS_DIR}"))?
        .into_iter()
        .filter_map(|e| {
            e.key
                .rsplit('/')
                .next()
                .and_then(|f| f.strip_suffix(".json"))
                .map(str::to_string)
        })
        .collect())
}

/// A model's run records, oldest first; unreadable ones are named in the
/// second list.
pub fn read_runs(
    reg: &Registry,
    model: &str,
) -> Result<(Vec<RunRecord>, Vec<RegistryError>), RegistryError> {
    let mut runs = Vec::new();
    let mut bad = Vec::new();
    for id in run_ids(reg, model)? {
        match read_run(reg, model, &id) {
            Ok(Some(r)) => runs.push(r),
            Ok(None) => {}
            Err(e) => bad.push(e),
        }
    }
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((runs, bad))
}

/// What one listing of the registry found, by model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelListing {
    pub config: Option<Entry>,
    pub routing: Option<Entry>,
    /// Version → its objects by file name.
    pub versions: BTreeMap<u64, BTreeMap<String, Entry>>,
}

/// Groups a listing of the root (or of one model's folder) by model.
/// Dot-named folders (`.quiver`) are not models.
pub fn group(entries: Vec<Entry>) -> BTreeMap<String, ModelListing> {
    let mut out: BTreeMap<String, ModelListing> = BTreeMap::new();
    for e in entries {
        let parts: Vec<&str> = e.key.split('/').collect();
        match parts.as_slice() {
            [model, ..] if model.starts_with('.') => {}
            [model, file] => {
                let m = out.entry((*model).to_string()).or_default();
                if *file == CONFIG_FILE {
                    m.config = Some(e.clone());
                } else if *file == ROUTING_FILE {
                    m.routing = Some(e.clone());
                }
            }
            [model, v, file] => {
                if let Some(version) = layout::parse_version(v) {
                    out.entry((*model).to_string())
                        .or_default()
                        .versions
                        .entry(version)
                        .or_default()
                        .insert((*file).to_string(), e.clone());
                }
            }
            _ => {}
        }
    }
    out
}

/// Versions of `model` whose manifest is written, ascending, and every
/// version number in use (for the next free one).
pub fn versions(reg: &Registry, model: &str) -> Result<(Vec<u64>, Vec<u64>), RegistryError> {
    let listing = group(reg.list(model)?);
    let Some(m) = listing.get(model) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let complete = m
        .versions
        .iter()
        .filter(|(_, files)| files.contains_key(MANIFEST_FILE))
        .map(|(v, _)| *v)
        .collect();
    Ok((complete, m.versions.keys().copied().collect()))
}

/// Takes the guardrail's lease for `me`, renews it if `me` holds it, or
/// leaves it to its holder until it expires. Returns the lease as stored:
/// `me` leads while `holder == me` and it has not expired.
pub fn claim_lease(
    reg: &Registry,
    me: &str,
    ttl: Duration,
    now_ms: u64,
) -> Result<Lease, UpdateError> {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let done = update(reg, LEASE_FILE, |current| {
        let held = current.and_then(|b| Lease::parse(b).ok());
        let next = match held {
            Some(l) if l.holder == me => Lease {
                expires_at_ms: now_ms.saturating_add(ttl_ms),
                renewed_at: quiver_contract::time::rfc3339_now(),
                ..l
            },
            Some(l) if l.expires_at_ms > now_ms => return Ok(Change::Keep),
            previous => Lease {
                schema: SCHEMA,
                holder: me.to_string(),
                term: previous.map_or(1, |l| l.term + 1),
                expires_at_ms: now_ms.saturating_add(ttl_ms),
                renewed_at: quiver_contract::time::rfc3339_now(),
            },
        };
        Ok(Change::Write(next.to_json()))
    })?;
    Lease::parse(&done.bytes).map_err(|e| UpdateError::Refused(e.to_string()))
}

/// Gives the lease up at shutdown, so another replica takes over at its
/// next try instead of after the lease runs out.
pub fn release_lease(reg: &Registry, me: &str) -> Result<(), UpdateError> {
    update(reg, LEASE_FILE, |current| {
        match current.and_then(|b| Lease::parse(b).ok()) {
            Some(l) if l.holder == me => Ok(Change::Write(
                Lease {
                    expires_at_ms: 0,
                    ..l
                }
                .to_json(),
            )),
            _ => Ok(Change::Keep),
        }
    })
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(tag: &str) -> Registry {
        let root =
            std::env::temp_dir().join(format!("quiver-control-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Registry::open(root.to_str().unwrap(), &Default::default()).unwrap()
    }

    #[test]
    fn routing_changes_bump_the_index_and_refusals_write_nothing() {
        let reg = registry("routing");
        let s = update_routing(&reg, "m", false, |s| {
            s.stable = Some(2);
            Ok(())
        })
        .unwrap();
        assert_eq!(s.stable, Some(2));
        let index = RegistryIndex::parse(&reg.get(INDEX_FILE).unwrap().unwrap().bytes).unwrap();
        assert_eq!(index.models["m"], 1);
        // An invalid result is refused by validation, before any write.
        let err = update_routing(&reg, "m", false, |s| {
            s.canary.insert(2, 0.5);
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("stable and a canary"), "{err}");
        // No change, no write, no bump.
        update_routing(&reg, "m", false, |_| Ok(())).unwrap();
        let index = RegistryIndex::parse(&reg.get(INDEX_FILE).unwrap().unwrap().bytes).unwrap();
        assert_eq!(index.models["m"], 1);
        // A broken file is refused unless the writer replaces it.
        reg.put(&routing_key("m"), b"{").unwrap();
        assert!(update_routing(&reg, "m", false, |_| Ok(())).is_err());
        let s = update_routing(&reg, "m", true, |s| {
            s.stable = Some(3);
            Ok(())
        })
        .unwrap();
        assert_eq!(s.stable, Some(3));
    }

    #[test]
    fn a_version_is_published_once_manifest_last() {
        let reg = registry("publish");
        let mut m = Manifest::new("m", 1);
        m.sha256.insert("model.onnx".into(), "00".into());
        publish_version(&reg, &m, &[("model.onnx", b"graph")]).unwrap();
        assert_eq!(versions(&reg, "m").unwrap(), (vec![1], vec![1]));
        let again = publish_version(&reg, &m, &[("model.onnx", b"other")]).unwrap_err();
        assert!(again.to_string().contains("already"), "{again}");
        assert_eq!(
            reg.get("m/1/model.onnx").unwrap().unwrap().bytes,
            b"graph".to_vec()
        );
        let listing = group(reg.list("").unwrap());
        assert_eq!(listing.keys().collect::<Vec<_>>(), vec!["m"]);
        assert!(listing["m"].versions[&1].contains_key(MANIFEST_FILE));
    }

    #[test]
    fn the_lease_has_one_holder_until_it_expires() {
        let reg = registry("lease");
        let ttl = Duration::from_millis(1000);
        let a = claim_lease(&reg, "a", ttl, 10_000).unwrap();
        assert_eq!((a.holder.as_str(), a.term), ("a", 1));
        let b = claim_lease(&reg, "b", ttl, 10_500).unwrap();
        assert_eq!(b.holder, "a", "b must wait while a's lease runs");
        let a = claim_lease(&reg, "a", ttl, 10_600).unwrap();
        assert_eq!(a.expires_at_ms, 11_600);
        let b = claim_lease(&reg, "b", ttl, 11_700).unwrap();
        assert_eq!((b.holder.as_str(), b.term), ("b", 2));
        release_lease(&reg, "b").unwrap();
        let c = claim_lease(&reg, "c", ttl, 11_800).unwrap();
        assert_eq!((c.holder.as_str(), c.term), ("c", 3));
    }
}
