//! A real S3-compatible object store for tests: moto's `moto_server`
//! (installed by `scripts/setup.sh`, found through `QUIVER_MOTO`), started on
//! a free loopback port with in-memory storage and stopped on drop; plus
//! plain-HTTP helpers to seed and inspect buckets without Quiver's own S3
//! client, and the list of requests the store has handled.
//!
//! What moto 5.2 does, checked against a running server: `If-None-Match: *`
//! on a PUT answers 412 when the key exists; `If-Match` answers 412 on a
//! stale ETag and 404 (`NoSuchKey`) on a missing key; a GET with
//! `If-None-Match: <current ETag>` answers 304; a missing bucket answers 404
//! (`NoSuchBucket`). It checks no signature: any credentials pass.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Marks the fixture's own requests, so that [`S3Server::requests`] leaves
/// them out.
const FIXTURE_HEADER: &str = "x-quiver-fixture";

/// moto answers 403 to an unsigned GET of an object it stores privately, but
/// never checks a signature; any well-formed SigV4 header will do.
const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 \
    Credential=test/20240101/us-east-1/s3/aws4_request, \
    SignedHeaders=host, Signature=0";

/// A running moto server; killed on drop.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    binary: PathBuf,
    /// Holds moto's log and its recording of requests.
    dir: PathBuf,
    /// Checks credentials (moto's IAM, with no user: every key is refused).
    enforce_auth: bool,
}

/// One request the store handled, as moto recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRequest {
    pub method: String,
    /// Path and query as sent, e.g. `/models?list-type=2&prefix=a%2F`.
    pub target: String,
}

impl StoreRequest {
    /// A listing: a GET on the bucket itself rather than on a key.
    pub fn is_list(&self) -> bool {
        let path = self.target.split('?').next().unwrap_or_default();
        self.method == "GET" && !path.trim_start_matches('/').contains('/')
    }
}

impl S3Server {
    /// Starts moto on a free port and waits until it answers HTTP.
    pub fn start() -> Result<S3Server> {
        S3Server::start_with(false)
    }

    /// Starts moto checking credentials: it knows no access key, so every
    /// request is refused with 403 `InvalidAccessKeyId`, as S3 refuses
    /// wrong credentials.
    pub fn start_refusing_credentials() -> Result<S3Server> {
        S3Server::start_with(true)
    }

    fn start_with(enforce_auth: bool) -> Result<S3Server> {
        let binary = PathBuf::from(std::env::var("QUIVER_MOTO").context(
            "QUIVER_MOTO is not set: run the tests through scripts/test.sh, or \
             eval \"$(scripts/setup.sh)\" first",
        )?);
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut server = S3Server {
            child: None,
            port,
            binary,
            dir: crate::scratch(&format!("moto-{n}"))?,
            enforce_auth,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a Quiver process needs to reach this store.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint().as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The registry at `s3://bucket/prefix`, opened as a publisher (the
    /// trainer, a CI job) opens it, with this store's credentials.
    pub fn registry(&self, bucket: &str, prefix: &str) -> Result<quiver_registry::Registry> {
        let settings = quiver_registry::S3Settings {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            allow_http: Some(true),
            credentials: Some(("test".into(), "test".into())),
            ..quiver_registry::S3Settings::default()
        };
        Ok(quiver_registry::Registry::open(
            &self.url(bucket, prefix),
            &settings,
        )?)
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        format!("s3://{bucket}/{}", prefix.trim_start_matches('/'))
    }

    fn recording(&self) -> PathBuf {
        self.dir.join("requests.jsonl")
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("moto.log"))?;
        let mut cmd = Command::new(&self.binary);
        if self.enforce_auth {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            // moto's recorder appends every request it handles, before
            // answering it, as one JSON line: the request count comes free.
            .env("MOTO_ENABLE_RECORDING", "1")
            .env("MOTO_RECORDER_FILEPATH", self.recording())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.http("GET", "/", &[]).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("moto_server exited ({status}); log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "moto_server did not answer on port {} within 30 s; log:\n{}",
            self.port,
            self.log()
        )
    }

    /// moto's own log (one line per request, and any traceback).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("moto.log")).unwrap_or_default()
    }

    /// Kills the server at once (SIGKILL): an outage, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a fresh server (empty: in-memory storage) on the same port.
    /// The recorded requests carry over.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    pub fn create_bucket(&self, name: &str) -> Result<()> {
        let (status, _, body) = self.http("PUT", &format!("/{}", encode(name, false)), &[])?;
        if status != 200 {
            bail!(
                "create bucket {name}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }

    /// Writes an object unconditionally and returns its ETag (quoted, as S3
    /// sends it).
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) -> Result<String> {
        let (status, head, text) = self.http("PUT", &object_target(bucket, key), body)?;
        if status != 200 {
            bail!(
                "put {bucket}/{key}: {status} {}",
                String::from_utf8_lossy(&text)
            );
        }
        header(&head, "etag").context("no ETag in the answer to a PUT")
    }

    /// An object's bytes, or `None` when the key does not exist.
    pub fn get_object(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let (status, _, body) = self.http("GET", &object_target(bucket, key), &[])?;
        match status {
            200 => Ok(Some(body)),
            404 if String::from_utf8_lossy(&body).contains("NoSuchKey") => Ok(None),
            _ => bail!(
                "get {bucket}/{key}: {status} {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<()> {
        let (status, _, body) = self.http("DELETE", &object_target(bucket, key), &[])?;
        if status != 204 {
            bail!(
                "delete {bucket}/{key}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }

    /// Every key under `prefix`, in the store's (lexicographic) order.
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut target = format!(
                "/{}?list-type=2&prefix={}",
                encode(bucket, false),
                encode(prefix, false)
            );
            if let Some(t) = &token {
                target.push_str(&format!("&continuation-token={}", encode(t, false)));
            }
            let (status, _, body) = self.http("GET", &target, &[])?;
            let xml = String::from_utf8_lossy(&body);
            if status != 200 {
                bail!("list {bucket}/{prefix}: {status} {xml}");
            }
            keys.extend(elements(&xml, "Key"));
            token = elements(&xml, "NextContinuationToken").into_iter().next();
            if !xml.contains("<IsTruncated>true</IsTruncated>") || token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// The requests the store has handled since it started (or since
    /// [`S3Server::reset_requests`]), oldest first, leaving out this
    /// fixture's own. A request is listed before its answer is sent.
    pub fn requests(&self) -> Result<Vec<StoreRequest>> {
        let text = match std::fs::read_to_string(self.recording()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        // The last line may be half-written; every complete one ends in '\n'.
        let complete = text.rsplit_once('\n').map(|(c, _)| c).unwrap_or_default();
        let mut out = Vec::new();
        for line in complete.lines().filter(|l| !l.is_empty()) {
            let entry: serde_json::Value =
                serde_json::from_str(line).context("moto's recording")?;
            let ours = entry["headers"]
                .as_object()
                .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case(FIXTURE_HEADER)));
            if ours {
                continue;
            }
            let url = entry["url"].as_str().unwrap_or_default();
            // "http://host:port/path?query" -> "/path?query"
            let target = url
                .split_once("://")
                .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
                .unwrap_or("/");
            out.push(StoreRequest {
                method: entry["method"].as_str().unwrap_or_default().to_string(),
                target: target.to_string(),
            });
        }
        Ok(out)
    }

    /// Forgets the requests handled so far.
    pub fn reset_requests(&self) -> Result<()> {
        // moto opens the file in append mode for every request, so
        // truncating it under a running server is safe.
        std::fs::File::create(self.recording())?;
        Ok(())
    }

    /// One request on a fresh connection: status, head, body.
    fn http(&self, method: &str, target: &str, body: &[u8]) -> Result<(u16, String, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        // An explicit content type: given a form type, moto would parse the
        // body as a form and store an empty object.
        let head = format!(
            "{method} {target} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nconnection: close\r\n\
             content-length: {}\r\ncontent-type: application/octet-stream\r\n\
             authorization: {AUTHORIZATION}\r\n{FIXTURE_HEADER}: 1\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        read_response(&mut stream)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a whole `connection: close` answer: status, head, body.
fn read_response(stream: &mut TcpStream) -> Result<(u16, String, Vec<u8>)> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("answer without a complete head")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let mut body = raw[split + 4..].to_vec();
    if let Some(n) = header(&head, "content-length").and_then(|v| v.parse().ok()) {
        body.truncate(n);
    }
    Ok((status, head, body))
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn object_target(bucket: &str, key: &str) -> String {
    format!("/{}/{}", encode(bucket, false), encode(key, true))
}

/// Percent-encodes all but the unreserved characters (and `/` when asked).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of every `<name>…</name>` element, XML entities undone.
fn elements(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(
            rest[..j]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &rest[j + close.len()..];
    }
    out
}
