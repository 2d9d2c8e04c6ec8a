//! Smoke runs of the real `quiver-bench` binary against the real gateway:
//! a few seconds at a low rate, checking that the result files parse and
//! their counts add up. No timing is asserted: CI machines are noisy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use quiver_tests::{Gateway, binary, copy_model, example_models, scratch};
use serde_json::Value;

/// Runs `quiver-bench ARGS`, failing with its stderr when it fails.
fn bench(args: &[&str]) -> Result<String> {
    let out = Command::new(binary("quiver-bench")?).args(args).output()?;
    if !out.status.success() {
        bail!(
            "quiver-bench {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `quiver-bench run --url URL --model mlp --out OUT ARGS...` (ARGS split
/// on whitespace), returning its stdout.
fn bench_run(url: &str, out: &Path, args: &str) -> Result<String> {
    let out = out.to_str().context("non-UTF-8 path")?;
    let mut all = vec!["run", "--url", url, "--model", "mlp", "--out", out];
    all.extend(args.split_whitespace());
    bench(&all)
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_slice(&text)?)
}

fn sum(map: &Value) -> u64 {
    map.as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// Every point's counts are consistent with each other.
fn check_point(p: &Value) {
    let requests = p["requests"].as_u64().unwrap();
    let ok = p["ok"].as_u64().unwrap();
    assert!(ok > 0, "no successful request: {p}");
    assert_eq!(ok + sum(&p["errors"]), requests, "{p}");
    assert_eq!(p["latency"]["count"].as_u64(), Some(ok), "{p}");
    assert_eq!(p["service"]["count"].as_u64(), Some(ok), "{p}");
    assert_eq!(p["send_lag"]["count"].as_u64(), Some(requests), "{p}");
    let l = &p["latency"];
    for (lo, hi) in [
        ("p50_us", "p90_us"),
        ("p90_us", "p99_us"),
        ("p99_us", "max_us"),
    ] {
        assert!(l[lo].as_f64() <= l[hi].as_f64(), "{lo} > {hi}: {l}");
    }
    let timeline: u64 = p["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    // The timeline covers warm-up too.
    assert!(timeline >= requests, "{p}");
}

#[tokio::test]
async fn open_loop_sweep_against_the_gateway() -> Result<()> {
    let gw = Gateway::start_ready(&example_models(), &[], &[]).await?;
    let dir = scratch("bench-smoke-open")?;
    let url = format!("http://{}", gw.addr);
    let json = dir.join("quiver.json");
    let md = bench_run(
        &url,
        &json,
        "--rate 50,100 --closed --connections 4 --duration 1.5 --warmup 0.5 --slo-p99-ms 1000 --label quiver",
    )?;
    assert!(md.contains("| quiver |"), "{md}");
    let r = read_json(&json)?;
    assert_eq!(r["kind"], "load");
    assert_eq!(r["mode"], "open");
    let points = r["points"].as_array().unwrap();
    // The sweep's two rates, then the closed-loop saturation point.
    assert_eq!(points.len(), 3);
    assert!(points[2]["offered_rps"].is_null());
    for p in points {
        check_point(p);
        // The gateway's stage headers were read.
        assert!(
            p["stages"]["server_total"]["count"].as_u64() > Some(0),
            "{p}"
        );
        assert_eq!(sum(&p["versions"]), p["ok"].as_u64().unwrap());
    }

    // Binary tensors, closed loop, then a report over both files.
    let closed = dir.join("closed.json");
    bench_run(
        &url,
        &closed,
        "--closed --connections 2 --duration 1 --warmup 0.5 --format binary --label closed",
    )?;
    let c = read_json(&closed)?;
    assert_eq!(c["mode"], "closed");
    check_point(&c["points"][0]);
    let out = dir.join("report");
    bench(&[
        "report",
        "--out-dir",
        out.to_str().unwrap(),
        json.to_str().unwrap(),
        closed.to_str().unwrap(),
    ])?;
    let combined = read_json(&out.join("report.json"))?;
    assert_eq!(combined["loads"].as_array().map(Vec::len), Some(2));
    for f in [
        "report.md",
        "latency_vs_load.svg",
        "timeline_quiver.svg",
        "timeline_closed.svg",
    ] {
        let text = std::fs::read_to_string(out.join(f))?;
        assert!(!text.is_empty(), "{f} is empty");
    }
    Ok(())
}

/// The transport ceiling answers the same requests, and the harness
/// discovers the input from its metadata.
#[tokio::test]
async fn bare_server_answers_the_same_requests() -> Result<()> {
    let mut child = Command::new(binary("quiver-bench")?)
        .args(["bare-server", "--addr", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("no stderr")?;
    let line = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("listening on http://"))
        .context("bare server did not start")?;
    let url = line
        .split("listening on ")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let dir = scratch("bench-smoke-bare")?;
    let json = dir.join("bare.json");
    let result = bench_run(
        &url,
        &json,
        "--rate 100 --duration 1 --warmup 0.5 --format binary --label bare",
    );
    let _ = child.kill();
    let _ = child.wait();
    result?;
    let r = read_json(&json)?;
    check_point(&r["points"][0]);
    assert!(r["points"][0]["stages"].is_null());
    Ok(())
}

/// The hot-swap scenario publishes versions during the run, asks the
/// gateway to load each through the admin API, and splits the requests into
/// "during" and "steady". Each new version must have answered.
#[tokio::test]
async fn swap_scenario_publishes_versions_during_the_run() -> Result<()> {
    let repo = scratch("bench-smoke-swap")?;
    copy_model("mlp", &repo)?;
    std::fs::write(
        repo.join("mlp/config.toml"),
        "version_policy = { latest = 1 }\n",
    )?;
    let env = [
        ("QUIVER_ADMIN_TOKEN", "smoke-token"),
        ("QUIVER_REPOSITORY__POLL_INTERVAL_MS", "200"),
    ];
    let gw = Gateway::start_ready(&repo, &[], &env).await?;
    let json = repo.join("swap.json");
    let repo_arg = repo.to_str().unwrap();
    bench_run(
        &format!("http://{}", gw.addr),
        &json,
        &format!(
            "--rate 100 --duration 3 --warmup 0.5 --swap-repo {repo_arg} --swaps 2 \
             --swap-every 0.8 --swap-window 0.4 --admin-token smoke-token"
        ),
    )?;
    let r = read_json(&json)?;
    let p = &r["points"][0];
    check_point(p);
    let swap = &r["swap"];
    let swaps = swap["swaps"].as_array().unwrap();
    assert_eq!(swaps.len(), 2);
    for (event, version) in swaps.iter().zip([3, 4]) {
        assert_eq!(event["version"], version);
        assert_eq!(event["load_status"], 200, "{event}");
        assert!(event["first_answer_s"].is_f64(), "{event}");
        assert!(p["versions"][version.to_string()].as_u64() > Some(0), "{p}");
    }
    assert_eq!(
        swap["during"]["requests"].as_u64().unwrap() + swap["steady"]["requests"].as_u64().unwrap(),
        p["requests"].as_u64().unwrap()
    );
    Ok(())
}

/// A real broker, and the gateway serving `mlp` with its Kafka ingress on
/// (scratch folders named after `prefix`).
async fn broker_and_ingress(prefix: &str) -> Result<(quiver_tests::kafka::Broker, Gateway)> {
    let broker = quiver_tests::kafka::Broker::start()?;
    let bootstrap = broker.bootstrap();
    let repo = scratch(&format!("{prefix}-repo"))?;
    copy_model("mlp", &repo)?;
    let spool = scratch(&format!("{prefix}-spool"))?;
    let gw = Gateway::start_ready(
        &repo,
        &[],
        &[
            ("QUIVER_KAFKA__BROKERS", bootstrap.as_str()),
            ("QUIVER_KAFKA__SPOOL_DIR", spool.to_str().context("path")?),
            ("QUIVER_KAFKA__INGRESS__ENABLED", "true"),
        ],
    )
    .await?;
    Ok((broker, gw))
}

/// The Kafka mode against the real gateway's ingress and a real broker: an
/// open-loop point, the saturation point and the half-rate point, every
/// record answered once and matched by its correlation id.
#[tokio::test]
async fn kafka_mode_matches_every_answer() -> Result<()> {
    let (broker, gw) = broker_and_ingress("bench-smoke-kafka").await?;
    let bootstrap = broker.bootstrap();
    let dir = scratch("bench-smoke-kafka")?;
    let json = dir.join("kafka.json");
    let url = format!("http://{}", gw.addr);
    let md = bench(&[
        "kafka",
        "--brokers",
        &bootstrap,
        "--url",
        &url,
        "--model",
        "mlp",
        "--rate",
        "200",
        "--closed",
        "--half-saturation",
        "--in-flight",
        "64",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
        "--slo-p99-ms",
        "1000",
        "--label",
        "kafka",
        "--out",
        json.to_str().context("path")?,
    ])?;
    assert!(md.contains("| kafka |"), "{md}");
    assert!(md.contains("saturation:"), "{md}");
    let r = read_json(&json)?;
    assert_eq!(r["kind"], "load");
    let points = r["points"].as_array().unwrap();
    let kafka = &r["kafka"];
    let fates = kafka["points"].as_array().unwrap();
    // The asked rate, saturation, then half of saturation.
    assert_eq!(points.len(), 3, "{r}");
    assert_eq!(fates.len(), 3);
    assert_eq!(points[0]["offered_rps"], 200.0);
    assert!(points[1]["offered_rps"].is_null());
    let saturation = kafka["saturation_rps"].as_f64().unwrap();
    assert_eq!(points[1]["achieved_rps"].as_f64(), Some(saturation));
    assert_eq!(
        points[2]["offered_rps"].as_f64(),
        Some((saturation / 2.0).round())
    );
    assert!(kafka["half_rate_p99_ms"].as_f64().unwrap() > 0.0);
    assert!(kafka["ready_s"].as_f64().unwrap() > 0.0);
    for (p, k) in points.iter().zip(fates) {
        check_point(p);
        assert_eq!(sum(&p["errors"]), 0, "{p}");
        // Every record produced was answered exactly once, without error.
        let produced = k["produced"].as_u64().unwrap();
        assert!(produced >= p["requests"].as_u64().unwrap(), "{k}");
        assert_eq!(k["answered"].as_u64(), Some(produced), "{k}");
        for none in [
            "produce_failed",
            "error_answers",
            "unanswered",
            "duplicates",
        ] {
            assert_eq!(k[none].as_u64(), Some(0), "{none}: {k}");
        }
    }
    // The open-loop point produced its whole schedule (2 s at 200/s) and
    // the gateway kept up with it.
    assert_eq!(fates[0]["produced"].as_u64(), Some(400));
    let achieved = points[0]["achieved_rps"].as_f64().unwrap();
    assert!((100.0..=300.0).contains(&achieved), "{achieved}");
    Ok(())
}

/// `--delete-consumed` cuts both topics while a run goes on, and only below
/// what is done with: every record is still answered exactly once, and
/// both topics' first offsets have moved.
#[tokio::test]
async fn kafka_mode_deletes_only_consumed_records() -> Result<()> {
    use quiver_contract::records::{REQUESTS_TOPIC, RESPONSES_TOPIC};
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let (broker, gw) = broker_and_ingress("bench-smoke-retention").await?;
    let bootstrap = broker.bootstrap();
    let dir = scratch("bench-smoke-retention")?;
    let json = dir.join("kafka.json");
    let url = format!("http://{}", gw.addr);
    bench(&[
        "kafka",
        "--brokers",
        &bootstrap,
        "--url",
        &url,
        "--model",
        "mlp",
        "--rate",
        "300",
        "--closed",
        "--in-flight",
        "64",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--delete-consumed",
        "--out",
        json.to_str().context("path")?,
    ])?;
    let r = read_json(&json)?;
    let fates = r["kafka"]["points"].as_array().unwrap();
    assert_eq!(fates.len(), 2, "{r}");
    for k in fates {
        let produced = k["produced"].as_u64().unwrap();
        assert!(produced > 0, "{k}");
        assert_eq!(k["answered"].as_u64(), Some(produced), "{k}");
        for none in ["produce_failed", "unanswered", "duplicates"] {
            assert_eq!(k[none].as_u64(), Some(0), "{none}: {k}");
        }
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    for topic in [REQUESTS_TOPIC, RESPONSES_TOPIC] {
        let (low, high) = consumer.fetch_watermarks(topic, 0, std::time::Duration::from_secs(5))?;
        assert!(low > 0 && low <= high, "{topic}: {low}..{high}");
    }
    Ok(())
}
