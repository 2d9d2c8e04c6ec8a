//! The two backends of the registry and the one API over them.
//!
//! A local directory is read and written with plain files: writes by
//! atomic rename, conditional writes under an exclusive lock on a lock file
//! next to the document, tags from the content (small documents) or size
//! and modification time (listings). An object store is reached through
//! `object_store`'s S3 client on a small runtime of its own, so callers
//! stay plain threads: tags are ETags, conditional reads and writes are
//! the HTTP preconditions S3 implements.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};
use quiver_contract::layout;
use sha2::{Digest, Sha256};

/// An opaque version of a stored document: S3's ETag, or locally a hash of
/// the content. Equal tags mean the same content was read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub String);

/// A document and the tag it was read at.
#[derive(Debug, Clone)]
pub struct Doc {
    pub bytes: Vec<u8>,
    pub tag: Tag,
}

/// The answer to a conditional read.
#[derive(Debug)]
pub enum Fresh {
    /// The tag given is still current: nothing was transferred.
    Unchanged,
    Missing,
    Changed(Doc),
}

/// One object found by [`Registry::list`]; `key` is relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    pub tag: Tag,
}

/// What a conditional write expects to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Nothing: the key must not exist.
    Absent,
    /// The document as read at this tag.
    Tag(Tag),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid model repository '{0}': {1}")]
    Location(String, String),
    #[error("object store {store} unreachable: {message}")]
    Unreachable { store: String, message: String },
    #[error("object store {store} refused the credentials: {message}")]
    Denied { store: String, message: String },
    #[error("bucket '{bucket}' does not exist at {store}")]
    NoBucket { store: String, bucket: String },
    #[error("{key} changed since it was read")]
    Conflict { key: String },
    #[error("cannot access {path}: {message}")]
    Io { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl RegistryError {
    fn io(path: &Path, e: &std::io::Error) -> Self {
        RegistryError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// S3 settings from the config file; each one left unset falls back to
/// the standard `AWS_*` environment variable.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// `AWS_ENDPOINT_URL`: an on-prem or other S3-compatible store.
    pub endpoint: Option<String>,
    /// `AWS_REGION`.
    pub region: Option<String>,
    /// `AWS_ALLOW_HTTP`: allow a plain-HTTP endpoint.
    pub allow_http: Option<bool>,
    /// Names of the environment variables holding the access key id and
    /// the secret (defaults `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    pub access_key_id_env: Option<String>,
    pub secret_access_key_env: Option<String>,
    /// Per request; the store is retried within it.
    pub timeout: Option<Duration>,
    /// Credentials given by a program rather than read from the
    /// environment (configs name variables instead, never secrets).
    pub credentials: Option<(String, String)>,
}

/// The registry: where it is and how to reach it. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    backend: Arc<Backend>,
    requests: Arc<AtomicU64>,
}

enum Backend {
    Local(PathBuf),
    Object(ObjectBackend),
}

struct ObjectBackend {
    store: AmazonS3,
    bucket: String,
    prefix: String,
    /// Shown in errors and logs: `s3://bucket/prefix at endpoint`.
    shown: String,
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for ObjectBackend {
    fn drop(&mut self) {
        // A runtime dropped inside another runtime's task would panic;
        // shutting it down in the background never does.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Registry {
    /// A local directory (a path) or `s3://bucket/prefix`. Nothing is
    /// contacted yet: [`Registry::check`] does that.
    pub fn open(location: &str, s3: &S3Settings) -> Result<Registry, RegistryError> {
        let backend = match location.strip_prefix("s3://") {
            Some(rest) => Backend::Object(ObjectBackend::open(location, rest, s3)?),
            None if location.contains("://") => {
                return Err(RegistryError::Location(
                    location.into(),
                    "only local paths and s3:// URLs are supported".into(),
                ));
            }
            None if location.is_empty() => {
                return Err(RegistryError::Location(location.into(), "empty".into()));
            }
            None => Backend::Local(PathBuf::from(location)),
        };
        Ok(Registry {
            backend: Arc::new(backend),
            requests: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The local root, or `None` for an object store.
    pub fn local_root(&self) -> Option<&Path> {
        match &*self.backend {
            Backend::Local(root) => Some(root),
            Backend::Object(_) => None,
        }
    }

    pub fn describe(&self) -> String {
        match &*self.backend {
            Backend::Local(root) => root.display().to_string(),
            Backend::Object(o) => o.shown.clone(),
        }
    }

    /// Store requests made so far (object stores; 0 for a directory).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Reaches the store: the root must exist (a directory, or a bucket
    /// the credentials may list).
    pub fn check(&self) -> Result<(), RegistryError> {
        match &*self.backend {
            Backend::Local(root) if root.is_dir() => Ok(()),
            Backend::Local(root) => Err(RegistryError::Io {
                path: root.display().to_string(),
                message: "not a directory".into(),
            }),
            Backend::Object(o) => {
                self.count();
                let prefix = o.path("");
                o.run(async { o.store.list_with_delimiter(Some(&prefix)).await.map(|_| ()) })
            }
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<Doc>, RegistryError> {
        match self.get_if_changed(key, None)? {
            Fresh::Changed(doc) => Ok(Some(doc)),
            Fresh::Missing | Fresh::Unchanged => Ok(None),
        }
    }

    /// Reads `key` unless its tag is still `known` (one conditional GET).
    pub fn get_if_changed(&self, key: &str, known: Option<&Tag>) -> Result<Fresh, RegistryError> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(root) => {
                let path = root.join(key);
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        let tag = content_tag(&bytes);
                        if known == Some(&tag) {
                            Ok(Fresh::Unchanged)
                        } else {
                            Ok(Fresh::Changed(Doc { bytes, tag }))
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Fresh::Missing),
                    Err(e) => Err(RegistryError::io(&path, &e)),
                }
            }
            Backend::Object(o) => {
                self.count();
                let path = o.path(key);
                let options = GetOptions {
                    if_none_match: known.map(|t| t.0.clone()),
                    ..GetOptions::default()
                };
                o.block_on(async {
                    match o.store.get_opts(&path, options).await {
                        Ok(got) => {
                            let tag = Tag(got.meta.e_tag.clone().unwrap_or_default());
                            let bytes = got.bytes().await.map_err(|e| o.error(e))?;
                            Ok(Fresh::Changed(Doc {
                                bytes: bytes.to_vec(),
                                tag,
                            }))
                        }
                        Err(object_store::Error::NotModified { .. }) => Ok(Fresh::Unchanged),
                        Err(object_store::Error::NotFound { source, .. })
                            if !no_bucket(&source.to_string()) =>
                        {
                            Ok(Fresh::Missing)
                        }
                        Err(e) => Err(o.error(e)),
                    }
                })
            }
        }
    }

    /// Writes `key` whatever is there.
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<Tag, RegistryError> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(root) => {
                let path = root.join(key);
                write_local(&path, bytes)?;
                Ok(content_tag(bytes))
            }
            Backend::Object(o) => {
                self.count();
                o.put(key, bytes, PutMode::Overwrite)
            }
        }
    }

    /// Writes `key` only if it is still as `expect` says; otherwise
    /// [`RegistryError::Conflict`] and nothing is written.
    pub fn put_if(&self, key: &str, bytes: &[u8], expect: &Expect) -> Result<Tag, RegistryError> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(root) => {
                let path = root.join(key);
                let _lock = LocalLock::take(&path)?;
                let current = match std::fs::read(&path) {
                    Ok(b) => Some(content_tag(&b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(RegistryError::io(&path, &e)),
                };
                let matches = match (expect, &current) {
                    (Expect::Absent, None) => true,
                    (Expect::Tag(want), Some(have)) => want == have,
                    _ => false,
                };
                if !matches {
                    return Err(RegistryError::Conflict { key: key.into() });
                }
                write_local(&path, bytes)?;
                Ok(content_tag(bytes))
            }
            Backend::Object(o) => {
                self.count();
                let mode = match expect {
                    Expect::Absent => PutMode::Create,
                    Expect::Tag(tag) => PutMode::Update(UpdateVersion {
                        e_tag: Some(tag.0.clone()),
                        version: None,
                    }),
                };
                o.put(key, bytes, mode)
            }
        }
    }

    /// Every object under `prefix` (a folder, without the trailing `/`),
    /// at any depth. Locally, dot-named files (temporaries, locks) are left
    /// out.
    pub fn list(&self, prefix: &str) -> Result<Vec<Entry>, RegistryError> {
        if !prefix.is_empty() {
            check_key(prefix)?;
        }
        match &*self.backend {
            Backend::Local(root) => {
                let mut out = Vec::new();
                let start = if prefix.is_empty() {
                    root.clone()
                } else {
                    root.join(prefix)
                };
                list_local(root, &start, &mut out)?;
                out.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(out)
            }
            Backend::Object(o) => {
                // A listing is one request per page of 1000 keys.
                self.count();
                let path = o.path(prefix);
                let strip = o.path("").to_string();
                let metas: Vec<object_store::ObjectMeta> =
                    o.run(async { o.store.list(Some(&path)).try_collect().await })?;
                let mut out: Vec<Entry> = metas
                    .into_iter()
                    .map(|m| {
                        let full = m.location.to_string();
                        let key = full
                            .strip_prefix(&strip)
                            .map(|k| k.trim_start_matches('/'))
                            .unwrap_or(&full)
                            .to_string();
                        Entry {
                            key,
                            size: m.size,
                            tag: Tag(m.e_tag.unwrap_or_default()),
                        }
                    })
                    .collect();
                out.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(out)
            }
        }
    }

    /// Removes `key`; a missing key is not an error.
    pub fn delete(&self, key: &str) -> Result<(), RegistryError> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(root) => {
                let path = root.join(key);
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(RegistryError::io(&path, &e)),
                }
            }
            Backend::Object(o) => {
                self.count();
                let path = o.path(key);
                o.run(async {
                    match o.store.delete(&path).await {
                        Err(object_store::Error::NotFound { .. }) => Ok(()),
                        other => other,
                    }
                })
            }
        }
    }

    /// Copies `key` into the local file `dest` (replaced atomically),
    /// streaming: a model of any size never sits whole in memory.
    pub fn download(&self, key: &str, dest: &Path) -> Result<(), RegistryError> {
        check_key(key)?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| RegistryError::io(dir, &e))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let part = dir.join(format!(".{name}.part-{}", std::process::id()));
        let result = match &*self.backend {
            Backend::Local(root) => {
                let src = root.join(key);
                std::fs::copy(&src, &part)
                    .map(|_| ())
                    .map_err(|e| RegistryError::io(&src, &e))
            }
            Backend::Object(o) => {
                self.count();
                o.download(key, &part)
            }
        }
        .and_then(|()| std::fs::rename(&part, dest).map_err(|e| RegistryError::io(dest, &e)));
        if result.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        result
    }
}

impl ObjectBackend {
    fn open(location: &str, rest: &str, s3: &S3Settings) -> Result<ObjectBackend, RegistryError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/').to_string();
        if bucket.is_empty() {
            return Err(RegistryError::Location(
                location.into(),
                "no bucket: expected s3://bucket/prefix".into(),
            ));
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let endpoint = s3.endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL"));
        let allow_http = s3.allow_http.unwrap_or_else(|| {
            env("AWS_ALLOW_HTTP").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
        });
        let timeout = s3.timeout.unwrap_or(Duration::from_secs(10));
        // https endpoints: rustls with ring; installing the provider twice
        // (a second registry) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(allow_http)
                    .with_timeout(timeout)
                    .with_connect_timeout(Duration::from_secs(3)),
            )
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: timeout,
                ..RetryConfig::default()
            });
        if let Some(e) = &endpoint {
            builder = builder.with_endpoint(e);
        }
        if let Some(r) = s3.region.clone().or_else(|| env("AWS_REGION")) {
            builder = builder.with_region(r);
        }
        if let Some(name) = &s3.access_key_id_env {
            builder = builder.with_access_key_id(env(name).unwrap_or_default());
        }
        if let Some(name) = &s3.secret_access_key_env {
            builder = builder.with_secret_access_key(env(name).unwrap_or_default());
        }
        if let Some((id, secret)) = &s3.credentials {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let store = builder
            .build()
            .map_err(|e| RegistryError::Location(location.into(), e.to_string()))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("quiver-registry")
            .enable_all()
            .build()
            .map_err(|e| RegistryError::Location(location.into(), e.to_string()))?;
        let at = endpoint.map_or(String::new(), |e| format!(" at {e}"));
        Ok(ObjectBackend {
            store,
            bucket: bucket.into(),
            shown: format!("s3://{bucket}/{prefix}{at}"),
            prefix,
            rt: Some(rt),
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => ObjectPath::from(key),
            (false, true) => ObjectPath::from(self.prefix.as_str()),
            (false, false) => ObjectPath::from(format!("{}/{key}", self.prefix)),
        }
    }

    fn rt(&self) -> Result<&tokio::runtime::Runtime, RegistryError> {
        self.rt.as_ref().ok_or_else(|| RegistryError::Unreachable {
            store: self.shown.clone(),
            message: "the registry client is shutting down".into(),
        })
    }

    fn run<T: Send>(
        &self,
        fut: impl Future<Output = object_store::Result<T>> + Send,
    ) -> Result<T, RegistryError> {
        self.block_on(async { fut.await.map_err(|e| self.error(e)) })
    }

    /// Runs `fut` on the registry's runtime. Called from inside another
    /// runtime (an async caller), it blocks on a thread of its own: a
    /// runtime may not block a thread that drives another.
    fn block_on<T: Send>(
        &self,
        fut: impl Future<Output = Result<T, RegistryError>> + Send,
    ) -> Result<T, RegistryError> {
        let rt = self.rt()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return rt.block_on(fut);
        }
        std::thread::scope(|scope| {
            scope.spawn(|| rt.block_on(fut)).join().unwrap_or_else(|_| {
                Err(RegistryError::Unreachable {
                    store: self.shown.clone(),
                    message: "the registry client thread panicked".into(),
                })
            })
        })
    }

    /// Streams `key` into the new file `to`, flushed to disk.
    fn download(&self, key: &str, to: &Path) -> Result<(), RegistryError> {
        let path = self.path(key);
        let io = |e: std::io::Error| RegistryError::io(to, &e);
        self.block_on(async {
            let got = match self.store.get_opts(&path, GetOptions::default()).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { source, .. })
                    if !no_bucket(&source.to_string()) =>
                {
                    return Err(RegistryError::Invalid {
                        key: key.into(),
                        message: "no such object".into(),
                    });
                }
                Err(e) => return Err(self.error(e)),
            };
            let mut file = std::fs::File::create(to).map_err(io)?;
            let mut chunks = got.into_stream();
            while let Some(chunk) = chunks.try_next().await.map_err(|e| self.error(e))? {
                // A blocking write, on the registry's own runtime thread.
                file.write_all(&chunk).map_err(io)?;
            }
            file.sync_all().map_err(io)
        })
    }

    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<Tag, RegistryError> {
        let path = self.path(key);
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(bytes));
        let conditional = !matches!(mode, PutMode::Overwrite);
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let result =
            self.block_on(async { Ok(self.store.put_opts(&path, payload, opts).await) })?;
        match result {
            Ok(done) => Ok(Tag(done.e_tag.unwrap_or_default())),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) if conditional => Err(RegistryError::Conflict { key: key.into() }),
            // An If-Match on a key deleted since it was read.
            Err(object_store::Error::NotFound { source, .. })
                if conditional && !no_bucket(&source.to_string()) =>
            {
                Err(RegistryError::Conflict { key: key.into() })
            }
            Err(e) => Err(self.error(e)),
        }
    }

    fn error(&self, e: object_store::Error) -> RegistryError {
        let store = self.shown.clone();
        let message = e.to_string();
        match e {
            object_store::Error::NotFound { .. } if no_bucket(&message) => {
                RegistryError::NoBucket {
                    store,
                    bucket: self.bucket.clone(),
                }
            }
            object_store::Error::Unauthenticated { .. }
            | object_store::Error::PermissionDenied { .. } => {
                RegistryError::Denied { store, message }
            }
            _ if message.contains("InvalidAccessKeyId")
                || message.contains("SignatureDoesNotMatch")
                || message.contains("AccessDenied") =>
            {
                RegistryError::Denied { store, message }
            }
            _ => RegistryError::Unreachable { store, message },
        }
    }
}

fn no_bucket(message: &str) -> bool {
    message.contains("NoSuchBucket")
}

/// Keys stay inside the root: no empty, `.` or `..` segments, no
/// backslashes, no leading `/`.
fn check_key(key: &str) -> Result<(), RegistryError> {
    let bad = key.is_empty()
        || key.contains('\\')
        || key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        return Err(RegistryError::Invalid {
            key: key.into(),
            message: "not a key inside the registry".into(),
        });
    }
    Ok(())
}

/// The tag of a local document: its content's SHA-256.
pub fn content_tag(bytes: &[u8]) -> Tag {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    Tag(s)
}

fn write_local(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| RegistryError::io(dir, &e))?;
    }
    layout::write_atomic(path, bytes).map_err(|e| RegistryError::io(path, &e))
}

fn list_local(root: &Path, dir: &Path, out: &mut Vec<Entry>) -> Result<(), RegistryError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(()),
        Err(e) => return Err(RegistryError::io(dir, &e)),
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            list_local(root, &path, out)?;
        } else if meta.is_file() && !name.starts_with('.') {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            out.push(Entry {
                key,
                size: meta.len(),
                tag: Tag(format!("{}-{mtime}", meta.len())),
            });
        }
    }
    Ok(())
}

/// An exclusive lock on `.<name>.lock` next to a local document, held
/// while a conditional write reads, compares and renames; released on drop
/// (and by the kernel if the process dies).
struct LocalLock {
    _file: std::fs::File,
}

impl LocalLock {
    fn take(path: &Path) -> Result<LocalLock, RegistryError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| RegistryError::io(dir, &e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lock_path = dir.join(format!(".{name}.lock"));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| RegistryError::io(&lock_path, &e))?;
        file.lock().map_err(|e| RegistryError::io(&lock_path, &e))?;
        // Not needed for the lock; helps whoever inspects a stuck one.
        let _ = writeln!(file, "{}", std::process::id());
        Ok(LocalLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("quiver-registry-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn local_conditional_writes_follow_s3_semantics() {
        let root = tempdir("cas");
        let reg = Registry::open(root.to_str().unwrap(), &S3Settings::default()).unwrap();
        let t1 = reg
            .put_if("m/routing.json", b"one", &Expect::Absent)
            .unwrap();
        assert!(matches!(
            reg.put_if("m/routing.json", b"again", &Expect::Absent),
            Err(RegistryError::Conflict { .. })
        ));
        let t2 = reg
            .put_if("m/routing.json", b"two", &Expect::Tag(t1.clone()))
            .unwrap();
        assert!(matches!(
            reg.put_if("m/routing.json", b"stale", &Expect::Tag(t1.clone())),
            Err(RegistryError::Conflict { .. })
        ));
        assert!(matches!(
            reg.get_if_changed("m/routing.json", Some(&t2)).unwrap(),
            Fresh::Unchanged
        ));
        assert!(
            matches!(reg.get_if_changed("m/routing.json", Some(&t1)).unwrap(), Fresh::Changed(d) if d.bytes == b"two")
        );
        assert!(matches!(
            reg.get_if_changed("m/none.json", None).unwrap(),
            Fresh::Missing
        ));
        // Lock files and temporaries are not listed.
        let keys: Vec<String> = reg.list("m").unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, vec!["m/routing.json".to_string()]);
        reg.delete("m/routing.json").unwrap();
        reg.delete("m/routing.json").unwrap();
        assert!(reg.get("m/routing.json").unwrap().is_none());
    }

    #[test]
    fn a_download_replaces_the_file_whole_and_leaves_no_part() {
        let root = tempdir("download");
        let reg = Registry::open(root.to_str().unwrap(), &S3Settings::default()).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        reg.put("m/1/model.onnx", &big).unwrap();
        let dest = root.join("cache").join("model.onnx");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, b"old").unwrap();
        reg.download("m/1/model.onnx", &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), big);
        assert!(reg.download("m/2/model.onnx", &dest).is_err());
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            big,
            "a failed download kept the file"
        );
        let names: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("model.onnx")]);
    }

    #[test]
    fn keys_stay_inside_the_root() {
        let reg = Registry::open("/tmp", &S3Settings::default()).unwrap();
        for bad in ["", "../x", "a//b", "/abs", "a/./b", "a\\b"] {
            assert!(
                matches!(reg.get(bad), Err(RegistryError::Invalid { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn locations_are_paths_or_s3_urls() {
        assert!(Registry::open("gs://b/p", &S3Settings::default()).is_err());
        assert!(Registry::open("s3:///p", &S3Settings::default()).is_err());
        let reg = Registry::open("s3://bucket/some/prefix/", &S3Settings::default()).unwrap();
        assert!(reg.local_root().is_none());
        assert!(reg.describe().starts_with("s3://bucket/some/prefix"));
    }
}
