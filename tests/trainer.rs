//! The closed loop end to end, on loopback.
//!
//! Without a broker: the real gateway serves, this test plays the clients
//! (requests, then labels) and writes the prediction and label records to
//! the local log the way the gateway's embedded logging does; the real
//! `quiver-trainer` joins them, retrains on a drifted concept, publishes
//! with lineage and parity, and drives the canary to stable through
//! `routing.json` in the registry (it has no gateway URL). Then: killed right after it publishes, it resumes without
//! publishing twice; a deliberately worse candidate (an untrained net,
//! published regardless) is rolled back.
//!
//! With a broker (nisshi): the gateway logs predictions to Kafka itself,
//! labels go through its feedback endpoint, and the trainer consumes both
//! topics with committed offsets; killed after publishing, it resumes from
//! its persisted offsets, and the group's committed offsets never run ahead
//! of its state file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use quiver_contract::manifest::Manifest;
use quiver_contract::records::{
    self, Label, LabelRecord, PredictionRecord, RecordTensor, TensorValues,
};
use quiver_contract::routing::RoutingState;
use quiver_contract::segments::SegmentWriter;
use quiver_tests::kafka::Broker;
use quiver_tests::kafka::{Outgoing, produce};
use quiver_tests::trainer::ModelToml;
use quiver_tests::{Gateway, binary};
use quiver_trainer::config::KafkaConfig;
use quiver_trainer::source::RecordSource;
use quiver_trainer::source::kafka::{KafkaSource, parse_position};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

/// Users' training commands in the loop (`[models.commands]`).
#[path = "trainer/commands.rs"]
mod commands;
/// Defaults that hold without tuning.
#[path = "trainer/defaults.rs"]
mod defaults;

const TOKEN: &str = "trainer-test-token";
const FEATURES: usize = 4;
const GROUP: &str = "trainer-e2e";

fn scratch(name: &str) -> Result<PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("quiver-trainer-e2e-{name}-{}", std::process::id()));
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

fn config(dir: &Path, worse: bool, kafka: Option<&str>) -> Result<PathBuf> {
    let (epochs, margin) = if worse { (0, -1e9) } else { (30, 0.0) };
    let mut text = quiver_tests::trainer::config_text(
        dir,
        &ModelToml {
            seed: 7,
            window_rows: 1500,
            max_epochs: epochs,
            min_improvement: margin,
            new_rows: 800,
            canary: "min_samples = 150\nalpha = 0.01\n# The model's [rollout] steps (see `bootstrap`).\nsteps = [0.5, 1.0]\n",
        },
    );
    if let Some(b) = kafka {
        text.push_str(&format!(
            "[kafka]\nbrokers = \"{b}\"\ngroup_id = \"{GROUP}\"\n[kafka.client]\n\"fetch.wait.max.ms\" = \"50\"\n"
        ));
    }
    let path = dir.join(if worse { "worse.toml" } else { "trainer.toml" });
    std::fs::write(&path, text)?;
    Ok(path)
}

fn trainer(config: &Path, dir: &Path, tag: &str) -> Result<Child> {
    quiver_tests::trainer::spawn(config, &[], &dir.join(format!("trainer-{tag}.log")))
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

/// Where the test's records go: written to the local log by the test, or
/// logged by the gateway itself (to Kafka) with labels sent as feedback.
enum Sink {
    Local {
        preds: SegmentWriter,
        labels: SegmentWriter,
    },
    Gateway,
}

/// Sends `n` single-row requests and their labels.
struct Traffic {
    stream: Stream,
    sink: Sink,
    next_id: u64,
    /// Which concept labels the rows (B, the drifted one, unless set).
    drifted: bool,
}

impl Traffic {
    async fn send(&mut self, gw: &Gateway, n: usize, drifted: bool) -> Result<()> {
        let mut feedback = Vec::new();
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
            let (preds, labels) = match &mut self.sink {
                Sink::Local { preds, labels } => (preds, labels),
                Sink::Gateway => {
                    feedback.push(json!({"id": id, "label": y}));
                    continue;
                }
            };
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
            preds.append(&serde_json::to_vec(&rec)?)?;
            let label = LabelRecord {
                schema: 1,
                id,
                model: "m".into(),
                label: Label::One(f64::from(y)),
                timestamp_ms: now,
            };
            labels.append(&serde_json::to_vec(&label)?)?;
        }
        match &mut self.sink {
            Sink::Local { preds, labels } => {
                preds.flush()?;
                labels.flush()?;
            }
            Sink::Gateway => {
                let r = gw
                    .post_json("/v2/models/m/feedback", &json!({ "labels": feedback }))
                    .await?;
                if r.status != 200 {
                    bail!("feedback: {} {}", r.status, r.text());
                }
            }
        }
        Ok(())
    }

    /// Runs a trainer on `cfg` (its log tagged `tag`), sending until
    /// `done` holds, then kills it.
    async fn with_trainer(
        &mut self,
        gw: &Gateway,
        dir: &Path,
        (cfg, tag): (&Path, &str),
        what: &str,
        done: impl Fn() -> bool,
    ) -> Result<()> {
        let mut t = trainer(cfg, dir, tag)?;
        let sent = self.until(gw, dir, what, done).await;
        t.kill()?;
        t.wait()?;
        sent
    }

    /// Keeps sending until `done` holds or the time is up.
    async fn until(
        &mut self,
        gw: &Gateway,
        dir: &Path,
        what: &str,
        done: impl Fn() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        while !done() {
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; events: {:#?}\ntrainer log:\n{}",
                    events(dir),
                    std::fs::read_to_string(dir.join("trainer-a.log")).unwrap_or_default()
                );
            }
            self.send(gw, 50, self.drifted).await?;
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

/// Version 1 bootstrapped into `dir`'s registry, the gateway serving it,
/// and traffic of concept B whose records the test writes to the local log.
async fn local_loop(dir: &Path) -> Result<(Gateway, Traffic)> {
    bootstrap(dir)?;
    let env = [
        ("QUIVER_ADMIN_TOKEN", TOKEN),
        ("QUIVER_REPOSITORY__POLL_INTERVAL_MS", "50"),
        ("QUIVER_ROUTING__ROLLOUT_INTERVAL_MS", "50"),
    ];
    let gw = Gateway::start_ready(&dir.join("repo"), &[], &env).await?;
    let traffic = Traffic {
        stream: Stream(99),
        sink: Sink::Local {
            preds: SegmentWriter::open(&dir.join("log/quiver.predictions"), 1 << 20)?,
            labels: SegmentWriter::open(&dir.join("log/quiver.labels"), 1 << 20)?,
        },
        next_id: 0,
        drifted: true,
    };
    Ok((gw, traffic))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_retrain_canary_promote_resume_and_rollback() -> Result<()> {
    let dir = scratch("local")?;
    let (gw, mut traffic) = local_loop(&dir).await?;
    let cfg = config(&dir, false, None)?;
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
    let window = window_on_disk(&dir)?;
    let mut t = trainer(&cfg, &dir, "b")?;
    traffic
        .until(&gw, &dir, "v2 promoted", || has_event(&dir, "promoted", 2))
        .await?;
    let lineage = check_v2(&dir, &gw).await?;
    // The restart read the window back from its log, all of it.
    assert_eq!(restored(&dir, "b")?, window.min(1500));
    assert!(window_on_disk(&dir)? > 0);
    assert!(
        lineage.data["predictions"].starts_with("quiver.predictions "),
        "{lineage:?}"
    );
    t.kill()?;
    t.wait()?;

    // An untrained candidate, published regardless of offline quality,
    // loses on canary traffic and is rolled back.
    let worse = config(&dir, true, None)?;
    let mut t = trainer(&worse, &dir, "c")?;
    traffic
        .until(&gw, &dir, "v3 rolled back", || {
            has_event(&dir, "rolled_back", 3)
        })
        .await?;
    let routing = applied(&gw, "the rollback of v3", |r| {
        r["rolled_back"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(3)))
    })
    .await?;
    assert_eq!(routing["stable"], 2);
    t.kill()?;
    t.wait()?;

    // A candidate that must beat stable by an impossible margin is
    // rejected; one held to an impossible parity bound fails. Neither
    // publishes, and stable keeps serving.
    let text = std::fs::read_to_string(&cfg)?;
    let rejecting = dir.join("rejecting.toml");
    std::fs::write(
        &rejecting,
        text.replace("min_improvement = 0\n", "min_improvement = 1000000\n"),
    )?;
    traffic
        .with_trainer(&gw, &dir, (&rejecting, "d"), "a rejected candidate", || {
            events(&dir).iter().any(|e| e["event"] == "rejected")
        })
        .await?;
    let failing = dir.join("failing.toml");
    std::fs::write(
        &failing,
        text.replace(
            "holdout_fraction = 0.2\n",
            "holdout_fraction = 0.2\nparity_bound = 1e-12\n",
        ),
    )?;
    traffic
        .with_trainer(&gw, &dir, (&failing, "e"), "a failed training", || {
            events(&dir).iter().any(|e| e["event"] == "retrain_failed")
        })
        .await?;
    assert_eq!(
        versions(&dir),
        vec![1, 2, 3],
        "a rejected or failed run published"
    );
    check_runs(&dir, &cfg)?;
    eprintln!("events:\n{:#?}", events(&dir));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The window's rows as the state file and the window log hold them: the
/// state names the log and how much of it counts, and holds no rows
/// itself; returns the rows the log covers.
fn window_on_disk(dir: &Path) -> Result<u64> {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state/state.json"))?)?;
    let m = &state["models"]["m"];
    assert!(m["window"].get("rows").is_none(), "rows in the state file");
    let mark = &m["window_log"];
    let log = dir.join(format!(
        "state/windows/m.{}.jsonl",
        mark["generation"].as_u64().context("generation")?
    ));
    let bytes = std::fs::read(&log)?;
    let covered = mark["bytes"].as_u64().context("bytes")? as usize;
    assert!(
        bytes.len() >= covered,
        "{} shorter than the state says",
        log.display()
    );
    let rows = bytes[..covered].iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(rows, mark["rows"].as_u64().context("rows")?);
    assert!(rows > 0);
    Ok(rows)
}

/// The window rows the trainer logged as restored when it started.
fn restored(dir: &Path, tag: &str) -> Result<u64> {
    let log = strip_ansi(&std::fs::read_to_string(
        dir.join(format!("trainer-{tag}.log")),
    )?);
    let line = log
        .lines()
        .find(|l| l.contains("window restored"))
        .with_context(|| format!("no window restored:\n{log}"))?;
    let rows = line
        .split_once("rows=")
        .and_then(|(_, r)| r.split_whitespace().next())
        .context("rows=")?;
    Ok(rows.parse()?)
}

/// The run records, as `quiver-trainer runs --json` prints them: the
/// bootstrap, v2 (promoted), v3 (rolled back), a rejected and a failed
/// attempt, each with its data, settings and metrics; v2's manifest names
/// its run.
fn check_runs(dir: &Path, cfg: &Path) -> Result<()> {
    let out = Command::new(binary("quiver-trainer")?)
        .arg("--config")
        .arg(cfg)
        .args(["runs", "--model", "m", "--json"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    // A run cut short by a kill is marked interrupted when the trainer
    // starts again; only the last trainer's may still say running.
    let newest = runs.iter().filter_map(|r| r["id"].as_str()).max();
    for r in &runs {
        if r["outcome"]["kind"] == "running" {
            assert_eq!(r["id"].as_str(), newest, "{r:#}");
        }
    }
    let published = |v: u64| {
        runs.iter()
            .find(|r| r["outcome"]["kind"] == "published" && r["outcome"]["version"] == v)
            .with_context(|| format!("no run published v{v}: {runs:#?}"))
    };
    assert_eq!(published(1)?["trigger"], "bootstrap");
    let v2 = published(2)?;
    assert_eq!(v2["rollout"]["result"], "promoted", "{v2:#}");
    assert_eq!(v2["parent"], 1);
    assert!(
        v2["rows"].as_u64().is_some_and(|n| n > 0)
            && v2["held_rows"].as_u64().is_some_and(|n| n > 0)
    );
    assert!(
        v2["offline"]["log_loss"].as_f64().is_some()
            && v2["stable_offline"]["log_loss"].as_f64().is_some()
    );
    assert!(v2["parity_max_abs"].as_f64().is_some_and(|p| p <= 1e-4));
    assert!(
        v2["data"]["predictions"]
            .as_str()
            .is_some_and(|d| d.starts_with("quiver.predictions "))
    );
    assert_eq!(v2["config"]["name"], "m");
    assert_eq!(v2["seed"], 7);
    assert!(v2["config_sha256"].as_str().is_some_and(|h| h.len() == 64));
    let manifest = Manifest::read(&dir.join("repo/m/2/manifest.json"), Some(("m", 2)))?;
    assert_eq!(
        manifest.lineage.and_then(|l| l.run).as_deref(),
        v2["id"].as_str()
    );
    assert_eq!(published(3)?["rollout"]["result"], "rolled_back");
    let rejected = runs
        .iter()
        .find(|r| r["outcome"]["kind"] == "rejected")
        .context("no rejected run")?;
    assert!(
        rejected["outcome"]["reason"]
            .as_str()
            .is_some_and(|w| w.contains("min_improvement")),
        "{rejected:#}"
    );
    // (A run a kill cut short is failed too, as interrupted.)
    let failed = runs
        .iter()
        .find(|r| {
            r["outcome"]["kind"] == "failed"
                && !r["outcome"]["reason"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("interrupted"))
        })
        .context("no failed run")?;
    assert!(
        failed["outcome"]["reason"]
            .as_str()
            .is_some_and(|w| w.contains("ONNX Runtime and the trainer differ")),
        "{failed:#}"
    );
    // The table for people.
    let out = Command::new(binary("quiver-trainer")?)
        .arg("--config")
        .arg(cfg)
        .args(["runs", "--model", "m"])
        .output()?;
    let table = String::from_utf8(out.stdout)?;
    eprintln!("{table}");
    assert!(
        table.contains("published v2, promoted") && table.contains("rejected: "),
        "{table}"
    );
    Ok(())
}

/// Version 1 from a CSV of concept A, stable, with a two-step manual
/// rollout policy (the trainer advances it).
fn bootstrap(dir: &Path) -> Result<()> {
    std::env::var("QUIVER_PYTHON").context("QUIVER_PYTHON (eval \"$(scripts/setup.sh)\")")?;
    let mut stream = Stream(11);
    let rows: Vec<_> = (0..2000).map(|_| stream.row(false)).collect();
    let cfg = config(dir, false, None)?;
    quiver_tests::trainer::bootstrap(
        &cfg,
        dir,
        &rows,
        "version_policy = \"all\"\n[rollout]\nsteps = [0.5, 1.0]\nmin_requests = 1000000\nauto_advance = false\n",
    )?;
    let v1 = Manifest::read(&dir.join("repo/m/1/manifest.json"), Some(("m", 1)))?;
    assert!(v1.parity_max_abs.context("parity")? <= 1e-4);
    assert!(v1.metrics["offline"]["accuracy"] > 0.9, "{:?}", v1.metrics);
    Ok(())
}

/// The gateway's routing state once it shows what `done` wants: the
/// trainer writes `routing.json` in the registry, and the gateway applies
/// it at its next look there.
async fn applied(
    gw: &Gateway,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let routing = gw.get("/v2/models/m/routing").await?.json();
        if done(&routing["routing"]) {
            return Ok(routing["routing"].clone());
        }
        if Instant::now() > deadline {
            bail!("the gateway did not apply {what}: {routing}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Version 2 is stable, the only new version, trained from drifted data
/// with parity and a full lineage; returns the lineage.
async fn check_v2(dir: &Path, gw: &Gateway) -> Result<quiver_contract::manifest::Lineage> {
    assert_eq!(
        versions(dir),
        vec![1, 2],
        "a duplicate version was published"
    );
    let v2 = Manifest::read(&dir.join("repo/m/2/manifest.json"), Some(("m", 2)))?;
    let lineage = v2.lineage.clone().context("lineage")?;
    assert_eq!(lineage.parent, Some(1));
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
        events(dir)
            .iter()
            .any(|e| e["event"] == "canary_step" && e["version"] == 2)
    );
    applied(gw, "the promotion of v2", |r| r["stable"] == 2).await?;
    // The trainer's verdicts went into the registry's routing state.
    let stored = RoutingState::parse(&std::fs::read(dir.join("repo/m/routing.json"))?)?;
    let decisions: Vec<&str> = stored
        .history
        .iter()
        .filter(|e| e.by == "quiver-trainer")
        .map(|e| e.decision.as_str())
        .collect();
    for want in ["start", "advance", "promote"] {
        assert!(decisions.contains(&want), "{want}: {:#?}", stored.history);
    }
    Ok(lineage)
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// The trainer's persisted positions, per topic, as `partition → next offset`.
fn state_positions(dir: &Path) -> Result<BTreeMap<String, BTreeMap<i32, i64>>> {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state/state.json"))?)?;
    let mut out = BTreeMap::new();
    for (topic, token) in state["positions"].as_object().context("positions")? {
        let parts = parse_position(token.as_str().context("token")?)?;
        out.insert(topic.clone(), parts);
    }
    Ok(out)
}

/// The group's committed offsets for `positions`' partitions.
fn committed(
    broker: &Broker,
    topic: &str,
    partitions: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions.keys() {
        tpl.add_partition(topic, *p);
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_retrains_promotes_and_resumes_from_committed_offsets() -> Result<()> {
    let broker = Broker::start()?;
    let dir = scratch("kafka")?;
    bootstrap(&dir)?;
    let bootstrap_servers = broker.bootstrap();
    let spool = dir.join("spool");
    let env = [
        ("QUIVER_ADMIN_TOKEN", TOKEN),
        ("QUIVER_REPOSITORY__POLL_INTERVAL_MS", "50"),
        ("QUIVER_ROUTING__ROLLOUT_INTERVAL_MS", "50"),
        ("QUIVER_KAFKA__BROKERS", bootstrap_servers.as_str()),
        ("QUIVER_KAFKA__SPOOL_DIR", spool.to_str().context("spool")?),
        ("QUIVER_KAFKA__RETRY_INTERVAL_MS", "200"),
    ];
    let gw = Gateway::start_ready(&dir.join("repo"), &[], &env).await?;
    let cfg = config(&dir, false, Some(&bootstrap_servers))?;
    let mut traffic = Traffic {
        stream: Stream(99),
        sink: Sink::Gateway,
        next_id: 0,
        drifted: true,
    };
    let mut t = trainer(&cfg, &dir, "a")?;
    traffic
        .until(&gw, &dir, "v2 published", || {
            has_event(&dir, "published", 2)
        })
        .await?;
    // SIGKILL mid-run, right after publishing; the restart must resume from
    // the persisted offsets and take up version 2, not publish it again.
    t.kill()?;
    t.wait()?;
    let at_kill = state_positions(&dir)?;
    for (topic, parts) in &at_kill {
        let c = committed(&broker, topic, parts)?;
        for (p, o) in &c {
            assert!(
                *o <= parts[p],
                "{topic}/{p}: committed {o} ahead of the state's {}",
                parts[p]
            );
        }
    }
    let mut t = trainer(&cfg, &dir, "b")?;
    traffic
        .until(&gw, &dir, "v2 promoted", || has_event(&dir, "promoted", 2))
        .await?;
    let lineage = check_v2(&dir, &gw).await?;
    // `<topic> partition=first..=last,…` for the window's predictions,
    // `<topic> ..partition=next,…` for the labels read.
    let preds = lineage.data["predictions"]
        .strip_prefix("quiver.predictions ")
        .context("predictions lineage")?;
    for range in preds.split(',') {
        let (p, r) = range.split_once('=').context("partition=range")?;
        let (first, last) = r.split_once("..=").context("first..=last")?;
        assert!(p.parse::<i32>().is_ok() && first.parse::<i64>()? <= last.parse::<i64>()?);
    }
    let labels = lineage.data["labels"]
        .strip_prefix("quiver.labels ..")
        .context("labels lineage")?;
    assert!(labels.split(',').all(|r| r.contains('=')), "{lineage:?}");
    t.kill()?;
    t.wait()?;
    let log = strip_ansi(&std::fs::read_to_string(dir.join("trainer-b.log"))?);
    assert!(
        log.lines().any(|l| l.contains("assigned")
            && l.split_once("from=")
                .is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()))),
        "the restart did not resume from a position:\n{log}"
    );
    // Offsets were committed, and never ahead of the state file.
    let end = state_positions(&dir)?;
    for topic in ["quiver.predictions", "quiver.labels"] {
        let parts = end.get(topic).context("no position")?;
        let c = committed(&broker, topic, parts)?;
        assert!(!c.is_empty(), "{topic}: nothing committed");
        for (p, o) in &c {
            assert!(
                *o > 0 && *o <= parts[p],
                "{topic}/{p}: committed {o}, state {}",
                parts[p]
            );
            assert!(
                at_kill
                    .get(topic)
                    .and_then(|a| a.get(p))
                    .is_some_and(|a| o > a)
            );
        }
    }
    eprintln!("events:\n{:#?}", events(&dir));
    // The gateway writes into the registry (traffic reports) while it runs.
    drop(gw);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Polls until `want` records came (sorted values of `n`).
fn drain(source: &mut KafkaSource, want: usize) -> Result<Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < want {
        if Instant::now() > deadline {
            bail!("{} of {want} records", got.len());
        }
        for p in source.poll(want - got.len())? {
            let v: serde_json::Value = serde_json::from_slice(&p.bytes)?;
            got.push(v["n"].as_u64().context("n")?);
        }
    }
    got.sort_unstable();
    Ok(got)
}

#[test]
fn kafka_source_resumes_from_committed_offsets_or_a_sought_position() -> Result<()> {
    let broker = Broker::start()?;
    let topic = "source-test";
    let send = |from: u64, to: u64| -> Result<()> {
        let records: Vec<Outgoing<'_>> = (from..to)
            .map(|n| Outgoing {
                key: None,
                value: json!({ "n": n }).to_string().into_bytes(),
                headers: vec![],
            })
            .collect();
        produce(&broker.bootstrap(), topic, &records)
    };
    send(0, 40)?;
    let settings = KafkaConfig {
        brokers: broker.bootstrap(),
        group_id: GROUP.into(),
        client: BTreeMap::new(),
    };
    // Read a part, commit it; a fresh consumer of the group (no state)
    // reads exactly the rest.
    let mut a = KafkaSource::open(&settings, topic)?;
    let mut first = drain(&mut a, 15)?;
    let read = parse_position(&a.position())?;
    // The lag metric's figure: what is left of the 40.
    let lag: u64 = a.lag().iter().map(|(_, l)| l).sum();
    assert_eq!(lag, 25, "{:?}", a.lag());
    a.commit()?;
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed(&broker, topic, &read)? != read {
        if Instant::now() > deadline {
            bail!("offsets {read:?} not committed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut b = KafkaSource::open(&settings, topic)?;
    let rest = drain(&mut b, 25)?;
    assert!(b.poll(100)?.is_empty(), "read again what was committed");
    first.extend(rest);
    first.sort_unstable();
    assert_eq!(first, (0..40).collect::<Vec<_>>());
    // Nothing is committed without `commit`: b read everything but only
    // its predecessor's offsets are in the group.
    let all = b.position();
    assert_eq!(committed(&broker, topic, &read)?, read);
    drop(b);
    // A consumer sought to a position (the state file's) starts there,
    // ahead of the group's offsets.
    send(40, 45)?;
    let mut c = KafkaSource::open(&settings, topic)?;
    c.seek(&all)?;
    assert_eq!(drain(&mut c, 5)?, (40..45).collect::<Vec<_>>());
    assert!(
        c.poll(100)?.is_empty(),
        "read again before the sought position"
    );
    assert!(c.seek("0:12").is_err());
    Ok(())
}

/// The closed loop on a fleet: two gateway replicas on one S3 registry
/// (moto), both logging to Kafka, and the trainer reading the registry
/// through the same URL. Predictions from both replicas reach the trainer,
/// and its candidate is promoted on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_through_kafka_with_two_replicas_on_s3() -> Result<()> {
    use quiver_registry::control;
    use quiver_tests::s3::S3Server;

    let broker = Broker::start()?;
    let s3 = S3Server::start()?;
    s3.create_bucket("loop")?;
    let url = s3.url("loop", "registry");
    let dir = scratch("fleet-loop")?;
    // Version 1 trained from concept A, then moved into the store the way
    // a publisher writes it: files, manifest last, index.
    bootstrap(&dir)?;
    let reg = s3.registry("loop", "registry")?;
    let v1 = dir.join("repo/m/1");
    let manifest = Manifest::read(&v1.join("manifest.json"), Some(("m", 1)))?;
    let files: Vec<(String, Vec<u8>)> = manifest
        .sha256
        .keys()
        .map(|f| Ok((f.clone(), std::fs::read(v1.join(f))?)))
        .collect::<Result<_>>()?;
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(f, b)| (f.as_str(), b.as_slice()))
        .collect();
    control::publish_version(&reg, &manifest, &refs)?;
    control::write_config(
        &reg,
        "m",
        &std::fs::read_to_string(dir.join("repo/m/config.toml"))?,
    )?;
    control::update_routing(&reg, "m", false, |s| {
        s.stable = Some(1);
        Ok(())
    })?;

    let bootstrap_servers = broker.bootstrap();
    let s3_env = s3.env();
    let mut gateways = Vec::new();
    for i in 0..2 {
        let spool = dir.join(format!("spool-{i}"));
        let cache = dir.join(format!("cache-{i}"));
        let id = format!("loop-g{i}");
        let mut env: Vec<(&str, &str)> = s3_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend([
            ("QUIVER_ADMIN_TOKEN", TOKEN),
            ("QUIVER_FLEET__REPLICA_ID", id.as_str()),
            ("QUIVER_REPOSITORY__POLL_INTERVAL_MS", "100"),
            (
                "QUIVER_REPOSITORY__CACHE_DIR",
                cache.to_str().context("cache")?,
            ),
            ("QUIVER_ROUTING__ROLLOUT_INTERVAL_MS", "50"),
            ("QUIVER_KAFKA__BROKERS", bootstrap_servers.as_str()),
            ("QUIVER_KAFKA__SPOOL_DIR", spool.to_str().context("spool")?),
            ("QUIVER_KAFKA__RETRY_INTERVAL_MS", "200"),
        ]);
        gateways.push(Gateway::start_at(&url, &[], &env)?);
    }
    for gw in &gateways {
        gw.wait_ready().await?;
    }
    // The trainer reads and writes the same registry, by URL.
    let cfg = config(&dir, false, Some(&bootstrap_servers))?;
    let text = std::fs::read_to_string(&cfg)?.replace(
        &format!("model_repository = \"{}\"", dir.join("repo").display()),
        &format!("model_repository = \"{url}\""),
    );
    assert!(text.contains(&url));
    std::fs::write(&cfg, text)?;
    let log = std::fs::File::create(dir.join("trainer-a.log"))?;
    let mut t = Command::new(binary("quiver-trainer")?)
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("RUST_LOG", "info")
        .envs(s3_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let mut traffic = Traffic {
        stream: Stream(99),
        sink: Sink::Gateway,
        next_id: 0,
        drifted: true,
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut turn = 0usize;
    while !has_event(&dir, "promoted", 2) {
        if Instant::now() > deadline {
            bail!(
                "no promotion; events: {:#?}\ntrainer log:\n{}",
                events(&dir),
                std::fs::read_to_string(dir.join("trainer-a.log")).unwrap_or_default()
            );
        }
        // Alternate replicas: each logs its own predictions.
        traffic.send(&gateways[turn % 2], 50, true).await?;
        turn += 1;
    }
    // Promoted on both replicas.
    for gw in &gateways {
        applied(gw, "the promotion of v2 on every replica", |r| {
            r["stable"] == 2
        })
        .await?;
        let logged = gw
            .metric(
                "quiver_log_records_total",
                &["stream=\"predictions\"", "outcome=\"produced\""],
            )
            .await
            .unwrap_or(0.0);
        assert!(logged > 0.0, "a replica logged no prediction");
    }
    // Every prediction either replica logged reached the trainer: once
    // traffic stops, its positions reach the topic's end.
    let ends = |topic: &str| -> Result<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap_servers)
            .set("group.id", "fleet-loop-check")
            .create()?;
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut total = 0;
        for t in md.topics() {
            for p in t.partitions() {
                let (_, high) =
                    consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                total += high;
            }
        }
        Ok(total)
    };
    let sent = ends("quiver.predictions")?;
    assert!(
        sent >= (traffic.next_id as i64),
        "{sent} predictions for {} requests",
        traffic.next_id
    );
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let consumed: i64 = state_positions(&dir)?
            .get("quiver.predictions")
            .map(|p| p.values().sum())
            .unwrap_or(0);
        if consumed >= sent {
            break;
        }
        if Instant::now() > until {
            bail!("the trainer consumed {consumed} of {sent} predictions");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The trainer's verdicts are in the registry's history.
    let (stored, _) = control::read_routing(&reg, "m")?;
    assert!(
        stored
            .history
            .iter()
            .any(|e| e.by == "quiver-trainer" && e.decision == "promote"),
        "{:#?}",
        stored.history
    );
    t.kill()?;
    t.wait()?;
    // The replicas write into the scratch directory until they stop.
    drop(gateways);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
