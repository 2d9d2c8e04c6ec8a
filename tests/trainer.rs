//! The closed loop end to end, on loopback, no broker: the real gateway
//! serves, this test plays the clients (requests, then labels) and writes
//! the prediction and label records to the local log the way the gateway's
//! embedded logging does; the real `quiver-trainer` joins them, retrains on
//! a drifted concept, publishes with lineage and parity, and drives the
//! canary through the admin API to stable. Then: killed right after it
//! publishes, it resumes without publishing twice; a deliberately worse
//! candidate (an untrained net, published regardless) is rolled back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use quiver_contract::manifest::Manifest;
use quiver_contract::records::{
    self, Label, LabelRecord, PredictionRecord, RecordTensor, TensorValues,
};
use quiver_contract::segments::SegmentWriter;
use quiver_tests::{Gateway, binary};
use serde_json::json;

const TOKEN: &str = "trainer-test-token";
const FEATURES: usize = 4;

fn scratch() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("quiver-trainer-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A seeded stream: concept A labels by x0 + x1 > 0, concept B by x0 - x1 > 0.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
    }
    fn row(&mut self, drifted: bool) -> (Vec<f32>, f32) {
        let x: Vec<f32> = (0..FEATURES).map(|_| self.next()).collect();
        let s = if drifted { x[0] - x[1] } else { x[0] + x[1] };
        (x, f32::from(u8::from(s > 0.0)))
    }
}

fn config(dir: &Path, gateway: &str, worse: bool) -> Result<PathBuf> {
    let (epochs, margin) = if worse { (0, -1e9) } else { (30, 0.0) };
    let text = format!(
        r#"model_repository = "{repo}"
log_dir = "{log}"
state_dir = "{state}"
gateway_url = "{gateway}"
poll_interval_ms = 50
join_window_ms = 600000

[[models]]
name = "m"
task = {{ kind = "classification", classes = 2 }}
input = "features"
outputs = [{{ name = "probabilities", kind = "probabilities" }}]
seed = 7
window_rows = 1500
holdout_fraction = 0.2
min_improvement = {margin}
[models.mlp]
hidden = [16]
max_epochs = {epochs}
[models.triggers]
min_rows = 300
new_rows = 800
drift_psi = 1000.0
quality_drop = 1.0
[models.canary]
min_samples = 150
alpha = 0.01
"#,
        repo = dir.join("repo").display(),
        log = dir.join("log").display(),
        state = dir.join("state").display(),
    );
    let path = dir.join(if worse { "worse.toml" } else { "trainer.toml" });
    std::fs::write(&path, text)?;
    Ok(path)
}

fn trainer(config: &Path, dir: &Path, tag: &str) -> Result<Child> {
    let log = std::fs::File::create(dir.join(format!("trainer-{tag}.log")))?;
    Ok(Command::new(binary("quiver-trainer")?)
        .args(["--config"])
        .arg(config)
        .arg("run")
        .env("QUIVER_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

fn events(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("state/events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn has_event(dir: &Path, event: &str, version: u64) -> bool {
    events(dir)
        .iter()
        .any(|e| e["event"] == event && e["version"] == version)
}

/// Sends `n` single-row requests and their labels, logging both.
struct Traffic {
    stream: Stream,
    preds: SegmentWriter,
    labels: SegmentWriter,
    next_id: u64,
}

impl Traffic {
    async fn send(&mut self, gw: &Gateway, n: usize, drifted: bool) -> Result<()> {
        for _ in 0..n {
            let (x, y) = self.stream.row(drifted);
            self.next_id += 1;
            let id = format!("r{}", self.next_id);
            let body = json!({"id": id, "inputs": [{"name": "features", "datatype": "FP32",
                "shape": [1, FEATURES], "data": x}]});
            let r = gw.post_json("/v2/models/m/infer", &body).await?;
            if r.status != 200 {
                bail!("infer: {} {}", r.status, r.text());
            }
            let v = r.json();
            let version: u64 = v["model_version"]
                .as_str()
                .context("model_version")?
                .parse()?;
            let probs: Vec<f64> = v["outputs"][0]["data"]
                .as_array()
                .context("outputs")?
                .iter()
                .filter_map(serde_json::Value::as_f64)
                .collect();
            let routing = gw.get("/v2/models/m/routing").await?.json();
            let arm = if routing["routing"]["stable"] == version {
                "stable"
            } else {
                "canary"
            };
            let now = records::now_ms();
            let rec = PredictionRecord {
                schema: 1,
                id: id.clone(),
                model: "m".into(),
                version,
                arm: arm.into(),
                source: "http".into(),
                timestamp_ms: now,
                latency_us: 0,
                inputs: vec![RecordTensor {
                    name: "features".into(),
                    datatype: "FP32".into(),
                    shape: vec![1, FEATURES as i64],
                    data: TensorValues::Numbers(x.iter().map(|&v| f64::from(v)).collect()),
                }],
                outputs: vec![RecordTensor {
                    name: "probabilities".into(),
                    datatype: "FP32".into(),
                    shape: vec![1, 2],
                    data: TensorValues::Numbers(probs),
                }],
            };
            self.preds.append(&serde_json::to_vec(&rec)?)?;
            let label = LabelRecord {
                schema: 1,
                id,
                model: "m".into(),
                label: Label::One(f64::from(y)),
                timestamp_ms: now,
            };
            self.labels.append(&serde_json::to_vec(&label)?)?;
        }
        self.preds.flush()?;
        self.labels.flush()?;
        Ok(())
    }

    /// Keeps sending until `done` holds or the time is up.
    async fn until(
        &mut self,
        gw: &Gateway,
        dir: &Path,
        what: &str,
        done: impl Fn() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(240);
        while !done() {
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; events: {:#?}\ntrainer log:\n{}",
                    events(dir),
                    std::fs::read_to_string(dir.join("trainer-a.log")).unwrap_or_default()
                );
            }
            self.send(gw, 50, true).await?;
        }
        Ok(())
    }
}

fn versions(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir.join("repo/m"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_retrain_canary_promote_resume_and_rollback() -> Result<()> {
    std::env::var("QUIVER_PYTHON").context("QUIVER_PYTHON (eval \"$(scripts/setup.sh)\")")?;
    let dir = scratch()?;
    // Version 1 from a CSV of concept A.
    let mut stream = Stream(11);
    let mut csv = String::from("a,b,c,d,y\n");
    for _ in 0..2000 {
        let (x, y) = stream.row(false);
        let cells: Vec<String> = x.iter().map(f32::to_string).collect();
        csv.push_str(&format!("{},{y}\n", cells.join(",")));
    }
    std::fs::write(dir.join("a.csv"), csv)?;
    let cfg = config(&dir, "http://127.0.0.1:1", false)?;
    let status = Command::new(binary("quiver-trainer")?)
        .arg("--config")
        .arg(&cfg)
        .args(["bootstrap", "--model", "m", "--data"])
        .arg(dir.join("a.csv"))
        .status()?;
    assert!(status.success());
    let v1 = Manifest::read(&dir.join("repo/m/1/manifest.json"), Some(("m", 1)))?;
    assert!(v1.parity_max_abs.context("parity")? <= 1e-4);
    assert!(v1.metrics["offline"]["accuracy"] > 0.9, "{:?}", v1.metrics);
    std::fs::write(
        dir.join("repo/m/config.toml"),
        "version_policy = \"all\"\n[rollout]\nsteps = [0.5, 1.0]\nmin_requests = 1000000\nauto_advance = false\n",
    )?;
    std::fs::write(
        dir.join("repo/m/routing.json"),
        r#"{"schema": 1, "stable": 1}"#,
    )?;

    let env = [
        ("QUIVER_ADMIN_TOKEN", TOKEN),
        ("QUIVER_REPOSITORY__POLL_INTERVAL_MS", "50"),
        ("QUIVER_ROUTING__ROLLOUT_INTERVAL_MS", "50"),
    ];
    let gw = Gateway::start_ready(&dir.join("repo"), &[], &env).await?;
    let url = format!("http://{}", gw.addr);
    let cfg = config(&dir, &url, false)?;
    let mut traffic = Traffic {
        stream: Stream(99),
        preds: SegmentWriter::open(&dir.join("log/quiver.predictions"), 1 << 20)?,
        labels: SegmentWriter::open(&dir.join("log/quiver.labels"), 1 << 20)?,
        next_id: 0,
    };
    let mut t = trainer(&cfg, &dir, "a")?;

    // Concept B arrives: the trainer retrains and publishes version 2.
    traffic
        .until(&gw, &dir, "v2 published", || {
            has_event(&dir, "published", 2)
        })
        .await?;
    // Killed right after publishing: the restarted trainer must take up
    // version 2's rollout, not publish the same data again.
    t.kill()?;
    t.wait()?;
    let mut t = trainer(&cfg, &dir, "b")?;
    traffic
        .until(&gw, &dir, "v2 promoted", || has_event(&dir, "promoted", 2))
        .await?;
    assert_eq!(
        versions(&dir),
        vec![1, 2],
        "a duplicate version was published"
    );
    let v2 = Manifest::read(&dir.join("repo/m/2/manifest.json"), Some(("m", 2)))?;
    let lineage = v2.lineage.clone().context("lineage")?;
    assert_eq!(lineage.parent, Some(1));
    assert!(
        lineage.data["predictions"].starts_with("quiver.predictions "),
        "{lineage:?}"
    );
    assert!(lineage.rows > 0 && lineage.seed == Some(7) && lineage.config_sha256.is_some());
    assert!(
        lineage
            .code
            .as_deref()
            .is_some_and(|c| c.starts_with("quiver-trainer"))
    );
    assert!(v2.parity_max_abs.context("parity")? <= 1e-4);
    assert!(v2.metrics["offline"]["log_loss"] < v2.metrics["offline_parent"]["log_loss"]);
    assert!(
        events(&dir)
            .iter()
            .any(|e| e["event"] == "canary_step" && e["version"] == 2)
    );
    let routing = gw.get("/v2/models/m/routing").await?.json();
    assert_eq!(routing["routing"]["stable"], 2);
    t.kill()?;
    t.wait()?;

    // An untrained candidate, published regardless of offline quality,
    // loses on canary traffic and is rolled back.
    let worse = config(&dir, &url, true)?;
    let mut t = trainer(&worse, &dir, "c")?;
    traffic
        .until(&gw, &dir, "v3 rolled back", || {
            has_event(&dir, "rolled_back", 3)
        })
        .await?;
    let routing = gw.get("/v2/models/m/routing").await?.json();
    assert_eq!(routing["routing"]["stable"], 2);
    assert!(
        routing["routing"]["rolled_back"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(3)))
    );
    t.kill()?;
    t.wait()?;
    eprintln!("events:\n{:#?}", events(&dir));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
