//! Compare-and-swap on one document: read it with its tag, compute the
//! next content from what was read, write it on condition that the tag is
//! still current, and start over from a fresh read when it is not. Every
//! writer of shared state (routing, the index, the lease) goes through
//! [`update`], so racing writers never lose an update: each change is
//! applied to the latest content, exactly once.

use std::time::Duration;

use crate::store::{Doc, Expect, Registry, RegistryError, Tag};

/// Attempts before a writer gives up on a document others keep changing.
pub const MAX_ATTEMPTS: u32 = 64;

/// What the change function wants done with the content it was shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Write(Vec<u8>),
    /// Nothing to change: the current content stands.
    Keep,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The change function refused the current content.
    #[error("{0}")]
    Refused(String),
    #[error("{key} is still being changed by others after {attempts} attempts")]
    Contended { key: String, attempts: u32 },
}

/// The outcome of [`update`]: the content now stored and its tag.
#[derive(Debug, Clone)]
pub struct Updated {
    pub bytes: Vec<u8>,
    pub tag: Option<Tag>,
    /// Whether this call wrote (false: the function said `Keep`).
    pub written: bool,
    /// Reads it took (1 without contention).
    pub attempts: u32,
}

/// The two operations the loop needs; the registry has them, and the
/// property test's model store too.
pub trait CasStore {
    fn read(&self, key: &str) -> Result<Option<Doc>, RegistryError>;
    fn write_if(&self, key: &str, bytes: &[u8], expect: &Expect) -> Result<Tag, RegistryError>;
}

impl CasStore for Registry {
    fn read(&self, key: &str) -> Result<Option<Doc>, RegistryError> {
        self.get(key)
    }

    fn write_if(&self, key: &str, bytes: &[u8], expect: &Expect) -> Result<Tag, RegistryError> {
        self.put_if(key, bytes, expect)
    }
}

/// Applies `change` to the current content of `key` (`None`: absent) and
/// writes the result by compare-and-swap, retrying with a fresh read and
/// a short jittered pause whenever another writer got there first.
pub fn update<S: CasStore + ?Sized>(
    store: &S,
    key: &str,
    mut change: impl FnMut(Option<&[u8]>) -> Result<Change, String>,
) -> Result<Updated, UpdateError> {
    for attempt in 1..=MAX_ATTEMPTS {
        let current = store.read(key)?;
        let next =
            change(current.as_ref().map(|d| d.bytes.as_slice())).map_err(UpdateError::Refused)?;
        let bytes = match next {
            Change::Keep => {
                return Ok(Updated {
                    tag: current.as_ref().map(|d| d.tag.clone()),
                    bytes: current.map(|d| d.bytes).unwrap_or_default(),
                    written: false,
                    attempts: attempt,
                });
            }
            Change::Write(b) => b,
        };
        let expect = match &current {
            None => Expect::Absent,
            Some(doc) => Expect::Tag(doc.tag.clone()),
        };
        match store.write_if(key, &bytes, &expect) {
            Ok(tag) => {
                return Ok(Updated {
                    bytes,
                    tag: Some(tag),
                    written: true,
                    attempts: attempt,
                });
            }
            Err(RegistryError::Conflict { .. }) => {
                tracing::debug!(key, attempt, "compare-and-swap lost a race; retrying");
                std::thread::sleep(backoff(attempt));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(UpdateError::Contended {
        key: key.into(),
        attempts: MAX_ATTEMPTS,
    })
}

/// Up to 2^attempt ms (capped at 100 ms), jittered so racing writers
/// spread out instead of colliding again in step.
fn backoff(attempt: u32) -> Duration {
    let cap_us = (1u64 << attempt.min(7)).min(100) * 1000;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    // The thread id decorrelates threads that woke at the same instant.
    let thread = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::thread::current().id().hash(&mut h);
        h.finish()
    };
    let jitter = (nanos ^ thread).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    Duration::from_micros(cap_us / 2 + jitter % (cap_us / 2 + 1))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// A plain in-memory store with S3's conditional-write rules, where
    /// an adversary may slip another writer's update in between any read
    /// and the write that follows it.
    struct ModelStore {
        docs: RefCell<BTreeMap<String, (Vec<u8>, u64)>>,
        next_tag: RefCell<u64>,
        /// Per write: whether an interfering write lands first.
        interfere: RefCell<std::vec::IntoIter<bool>>,
        /// Ids written by interfering writers, in the order they landed.
        interlopers: RefCell<Vec<u32>>,
    }

    impl ModelStore {
        fn raw_write(&self, key: &str, bytes: Vec<u8>) {
            let mut n = self.next_tag.borrow_mut();
            *n += 1;
            self.docs.borrow_mut().insert(key.into(), (bytes, *n));
        }
    }

    impl CasStore for ModelStore {
        fn read(&self, key: &str) -> Result<Option<Doc>, RegistryError> {
            Ok(self.docs.borrow().get(key).map(|(b, t)| Doc {
                bytes: b.clone(),
                tag: Tag(t.to_string()),
            }))
        }

        fn write_if(&self, key: &str, bytes: &[u8], expect: &Expect) -> Result<Tag, RegistryError> {
            if self.interfere.borrow_mut().next().unwrap_or(false) {
                let id = 1000 + self.interlopers.borrow().len() as u32;
                let mut list = self.read(key)?.map_or(Vec::new(), |d| parse(&d.bytes));
                list.push(id);
                self.raw_write(key, serde_json::to_vec(&list).unwrap());
                self.interlopers.borrow_mut().push(id);
            }
            let current = self.docs.borrow().get(key).map(|(_, t)| Tag(t.to_string()));
            let ok = match (expect, &current) {
                (Expect::Absent, None) => true,
                (Expect::Tag(want), Some(have)) => want == have,
                _ => false,
            };
            if !ok {
                return Err(RegistryError::Conflict { key: key.into() });
            }
            self.raw_write(key, bytes.to_vec());
            Ok(Tag(self.next_tag.borrow().to_string()))
        }
    }

    fn parse(bytes: &[u8]) -> Vec<u32> {
        serde_json::from_slice(bytes).unwrap()
    }

    fn append(id: u32) -> impl FnMut(Option<&[u8]>) -> Result<Change, String> {
        move |cur| {
            let mut list = cur.map_or(Vec::new(), parse);
            list.push(id);
            Ok(Change::Write(serde_json::to_vec(&list).unwrap()))
        }
    }

    proptest! {
        /// Whatever interleaving the adversary picks, every update lands
        /// exactly once, in commit order, and none is lost: the stored list
        /// is the model's list (our ids and the interlopers' ids in the
        /// order their writes succeeded).
        #[test]
        fn no_update_is_lost(
            writes in 1usize..30,
            interfere in proptest::collection::vec(proptest::bool::weighted(0.4), 0..200),
        ) {
            let store = ModelStore {
                docs: RefCell::new(BTreeMap::new()),
                next_tag: RefCell::new(0),
                interfere: RefCell::new(interfere.into_iter()),
                interlopers: RefCell::new(Vec::new()),
            };
            let mut model: Vec<u32> = Vec::new();
            for id in 0..writes as u32 {
                let before = store.interlopers.borrow().len();
                let done = update(&store, "k", append(id)).unwrap();
                prop_assert!(done.written);
                // The model: interlopers that landed during this update
                // come before it, then our id.
                model.extend_from_slice(&store.interlopers.borrow()[before..]);
                model.push(id);
                prop_assert_eq!(parse(&done.bytes), model.clone());
            }
            let stored = parse(&store.read("k").unwrap().unwrap().bytes);
            prop_assert_eq!(stored, model);
        }
    }

    #[test]
    fn a_refusal_writes_nothing_and_keep_returns_the_current_content() {
        let store = ModelStore {
            docs: RefCell::new(BTreeMap::new()),
            next_tag: RefCell::new(0),
            interfere: RefCell::new(Vec::new().into_iter()),
            interlopers: RefCell::new(Vec::new()),
        };
        update(&store, "k", append(1)).unwrap();
        let err = update(&store, "k", |_| Err("no".into())).unwrap_err();
        assert!(matches!(err, UpdateError::Refused(m) if m == "no"));
        let kept = update(&store, "k", |_| Ok(Change::Keep)).unwrap();
        assert!(!kept.written);
        assert_eq!(parse(&kept.bytes), vec![1]);
    }

    #[test]
    fn threads_racing_on_a_directory_lose_nothing() {
        let root = std::env::temp_dir().join(format!("quiver-cas-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let reg = Registry::open(root.to_str().unwrap(), &Default::default()).unwrap();
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let reg = reg.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        update(&reg, "m/routing.json", append(t * 1000 + i)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut list = parse(&reg.get("m/routing.json").unwrap().unwrap().bytes);
        assert_eq!(list.len(), 200);
        list.sort_unstable();
        list.dedup();
        assert_eq!(list.len(), 200);
        let _ = std::fs::remove_dir_all(&root);
    }
}
