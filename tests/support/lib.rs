//! Support for end-to-end tests: start the real `quiver-gateway` binary on
//! port 0, talk to it over real HTTP on loopback, read its metrics; start
//! a real Kafka-protocol broker ([`kafka`]) and a real S3-compatible object
//! store ([`s3`]); drive a real headless Chromium ([`browser`]); configure
//! and start the real trainer ([`trainer`]).

pub mod browser;
pub mod kafka;
pub mod s3;
pub mod trainer;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The example model repository shipped with the project.
pub fn example_models() -> PathBuf {
    root().join("examples/models")
}

/// A built binary of the workspace, next to the running test's `deps/`.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target dir")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it first (cargo build --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// A running gateway; killed on drop.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    /// The gRPC listener, when started with one.
    pub grpc_addr: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts the gateway on `repository` with extra args and env, and waits
    /// until it listens.
    pub fn start(repository: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Gateway> {
        Gateway::start_at(&repository.to_string_lossy(), args, env)
    }

    /// As [`Gateway::start`], on a repository given as a path or an
    /// `s3://` URL.
    pub fn start_at(repository: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Gateway> {
        let mut cmd = Command::new(binary("quiver-gateway")?);
        cmd.arg("--model-repository")
            .arg(repository)
            .args(["--http-addr", "127.0.0.1:0"])
            .args(args);
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        // The prediction log and the Kafka spool go to scratch directories
        // unless the test names them, never into the working directory.
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        cmd.env("QUIVER_LOG__DIR", scratch(&format!("prediction-log-{n}"))?);
        cmd.env("QUIVER_KAFKA__SPOOL_DIR", scratch(&format!("spool-{n}"))?);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line
                    .split("listening on http://")
                    .nth(1)
                    .or_else(|| line.split("listening on https://").nth(1))
                {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().context("listen address")?,
            Err(_) => {
                let _ = child.kill();
                bail!(
                    "gateway did not start; log:\n{}",
                    log.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
                );
            }
        };
        // The gRPC listener is announced before the HTTP one.
        let grpc_addr = log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find_map(|l| {
                let rest = l
                    .split("listening on grpc://")
                    .nth(1)
                    .or_else(|| l.split("listening on grpcs://").nth(1))?;
                rest.split_whitespace().next()?.parse().ok()
            });
        Ok(Gateway {
            child,
            addr,
            grpc_addr,
            log,
        })
    }

    /// Starts the gateway and waits for `/v2/health/ready`.
    pub async fn start_ready(
        repository: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Gateway> {
        let gw = Gateway::start(repository, args, env)?;
        gw.wait_ready().await?;
        Ok(gw)
    }

    pub async fn wait_ready(&self) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if let Ok(r) = self.get("/v2/health/ready").await
                && r.status == 200
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("gateway not ready in 60 s; log:\n{}", self.log())
    }

    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        send(self.addr, "GET", path, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<Reply> {
        send(
            self.addr,
            "POST",
            path,
            &[("content-type", "application/json".into())],
            Bytes::from(body.to_string()),
        )
        .await
    }

    /// The value of one Prometheus sample line whose name and labels
    /// contain every part of `selector`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> Result<f64> {
        let text = self.get("/metrics").await?.text();
        let mut total = 0.0;
        let mut found = false;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let metric = key.split('{').next().unwrap_or_default();
            if metric == name && labels.iter().all(|l| key.contains(l)) {
                total += value.parse::<f64>().unwrap_or(0.0);
                found = true;
            }
        }
        if !found {
            bail!("no metric {name} {labels:?} in:\n{text}");
        }
        Ok(total)
    }

    /// Polls `/metrics` until `n` requests of `model` are in flight (running
    /// or queued); returns how many were seen last.
    pub async fn wait_in_flight(&self, model: &str, n: f64) -> Result<f64> {
        let label = format!("model=\"{model}\"");
        let mut seen = 0.0;
        for _ in 0..5000 {
            let busy = self.metric("quiver_busy_instances", &[&label]).await?;
            let queued = self.metric("quiver_queue_depth", &[&label]).await?;
            seen = busy + queued;
            if seen >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(seen)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(())
    }

    /// The process id, to signal it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit, returning its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return status.code().ok_or_else(|| anyhow!("killed by a signal"));
            }
            if Instant::now() > until {
                bail!(
                    "gateway did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `error` field of a failure body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// One request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = sender.send_request(req.body(Full::new(body))?).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A binary-extension request body: JSON header + raw tensor bytes.
pub fn binary_body(header: &serde_json::Value, raw: &[u8]) -> (Bytes, usize) {
    let mut body = serde_json::to_vec(header).unwrap_or_default();
    let n = body.len();
    body.extend_from_slice(raw);
    (Bytes::from(body), n)
}

/// Posts a binary-extension request and splits the answer into its JSON
/// header and binary part (the whole body is the header when the answer
/// has no binary part).
pub async fn post_binary(
    addr: SocketAddr,
    path: &str,
    header: &serde_json::Value,
    raw: &[u8],
) -> Result<(Reply, serde_json::Value, Bytes)> {
    let (body, n) = binary_body(header, raw);
    let reply = send(
        addr,
        "POST",
        path,
        &[("inference-header-content-length", n.to_string())],
        body,
    )
    .await?;
    let split = match reply.header("inference-header-content-length") {
        Some(h) => h.parse::<usize>()?,
        None => reply.body.len(),
    };
    if split > reply.body.len() {
        bail!("inference-header-content-length {split} exceeds the body");
    }
    let head = serde_json::from_slice(&reply.body[..split]).unwrap_or(serde_json::Value::Null);
    let tail = reply.body.slice(split..);
    Ok((reply, head, tail))
}

/// A JSON array of numbers as `f32`s (tensor data in a response).
/// Panics on anything else: in a test, a malformed answer is a failure.
#[allow(clippy::expect_used)]
pub fn as_f32(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("tensor data is a JSON array")
        .iter()
        .map(|x| x.as_f64().expect("tensor data holds numbers") as f32)
        .collect()
}

/// The bytes of an example model version.
#[allow(clippy::expect_used)]
pub fn example_file(model: &str, version: u64) -> Vec<u8> {
    std::fs::read(example_models().join(format!("{model}/{version}/model.onnx")))
        .expect("the example model exists")
}

/// Publishes `onnx` as `model`/`version` the way Quiver's publishers do:
/// the file, its manifest last, then the registry index.
pub fn publish_onnx(
    reg: &quiver_registry::Registry,
    model: &str,
    version: u64,
    onnx: &[u8],
) -> Result<()> {
    let mut m = quiver_contract::manifest::Manifest::new(model, version);
    m.sha256.insert(
        "model.onnx".into(),
        quiver_contract::manifest::sha256_bytes(onnx),
    );
    quiver_registry::control::publish_version(reg, &m, &[("model.onnx", onnx)])?;
    Ok(())
}

/// A one-row request for the example `mlp` (`features`, FP32 `[1, 16]`).
pub fn mlp_body(x: &[f32]) -> serde_json::Value {
    serde_json::json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": x}]})
}

/// `POST /v2/models/{model}/infer` of [`mlp_body`] with an `x-quiver-key`.
#[allow(clippy::expect_used)]
pub async fn infer_keyed(gw: &Gateway, model: &str, key: &str, x: &[f32]) -> Reply {
    let body = Bytes::from(serde_json::to_vec(&mlp_body(x)).expect("JSON"));
    send(
        gw.addr,
        "POST",
        &format!("/v2/models/{model}/infer"),
        &[("x-quiver-key", key.to_string())],
        body,
    )
    .await
    .expect("the gateway answers")
}

/// Sends keyed one-row requests for the example `mlp` until `stop`, to each
/// of `gateways` in turn; `poison` is the share whose first feature is 9
/// (which the `flaky` example cannot serve). Returns `(version, status)`
/// per request, `(0, 0)` for a connection refused (a replica killed).
pub fn spawn_keyed_traffic(
    gateways: Vec<Arc<Gateway>>,
    model: &'static str,
    poison: f32,
    seed: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u64, u16)>> {
    tokio::spawn(async move {
        let mut rng = Rng::new(seed);
        let mut seen = Vec::new();
        let mut i = 0usize;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            let gw = &gateways[i % gateways.len()];
            let mut x: Vec<f32> = (0..16).map(|_| rng.f32()).collect();
            if rng.f32() < poison {
                x[0] = 9.0;
            }
            let Ok(body) = serde_json::to_vec(&mlp_body(&x)) else {
                continue;
            };
            let r = send(
                gw.addr,
                "POST",
                &format!("/v2/models/{model}/infer"),
                &[("x-quiver-key", format!("user-{i}"))],
                Bytes::from(body),
            )
            .await;
            seen.push(r.map_or((0, 0), |r| (version_of(&r), r.status)));
        }
        seen
    })
}

/// Waits (up to a minute) until `check` holds on the model's routing view
/// (`GET /v2/models/{model}/routing`), and returns it.
#[allow(clippy::expect_used)]
pub async fn wait_routing(
    gw: &Gateway,
    model: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let r = gw
            .get(&format!("/v2/models/{model}/routing"))
            .await
            .expect("the gateway answers");
        let v = r.json();
        if r.status == 200 && check(&v) {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}; last routing: {v:#}\nlog:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The version that answered (`x-quiver-model-version`), 0 if none.
pub fn version_of(r: &Reply) -> u64 {
    r.header("x-quiver-model-version")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A scratch directory under the target dir, emptied first.
pub fn scratch(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .context("no parent")?
        .join("quiver-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Copies one model (all its versions) from the examples into `repo`.
pub fn copy_model(model: &str, repo: &Path) -> Result<()> {
    copy_dir(&example_models().join(model), &repo.join(model))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A deterministic pseudo-random stream (xorshift), so tests need no crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}
