//! The dashboard end to end, on loopback: the real gateway serves a model
//! the real trainer bootstrapped; the trainer, running, sees drifted
//! labelled traffic, retrains, publishes version 2 and starts its canary
//! (held there: its quality test needs more labels than the test sends).
//! With keyed traffic flowing, the dashboard's JSON is checked against the
//! routing state, the run records and `/metrics`; a real headless Chromium
//! loads `/dashboard` and the test reads what a person would see, fails on
//! any console error, and saves a screenshot (to `QUIVER_SCREENSHOT` when
//! set: the README's `docs/dashboard.png` is made so). Last, a gateway
//! with `admin.protect_reads` refuses the JSON without the token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use quiver_tests::browser::Browser;
use quiver_tests::trainer::{self, ModelToml};
use quiver_tests::{Gateway, Rng, root, scratch, send};
use serde_json::{Value, json};

const TOKEN: &str = "dashboard-test-token";

/// Concept A labels a row by x0 + x1 > 0; the drifted concept B by x0 - x1 > 0.
fn row(rng: &mut Rng, drifted: bool) -> (Vec<f32>, u8) {
    let x: Vec<f32> = (0..4).map(|_| rng.f32()).collect();
    let s = if drifted { x[0] - x[1] } else { x[0] + x[1] };
    (x, u8::from(s > 0.0))
}

fn trainer_config(dir: &Path) -> Result<PathBuf> {
    let text = trainer::config_text(
        dir,
        &ModelToml {
            seed: 3,
            window_rows: 1200,
            max_epochs: 30,
            min_improvement: 0.0,
            new_rows: 600,
            // More labels than the test sends: the canary stays in progress.
            canary: "min_samples = 1000000\nsteps = [0.25, 1.0]\n",
        },
    );
    let path = dir.join("trainer.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Version 1 of `m`, trained by `quiver-trainer bootstrap` on concept A.
fn bootstrap(dir: &Path, cfg: &Path) -> Result<()> {
    let mut rng = Rng::new(5);
    let rows: Vec<_> = (0..1500)
        .map(|_| {
            let (x, y) = row(&mut rng, false);
            (x, f32::from(y))
        })
        .collect();
    trainer::bootstrap(
        cfg,
        dir,
        &rows,
        "version_policy = \"all\"\n[rollout]\nmin_requests = 1000000\nauto_advance = false\n",
    )
}

fn infer_body(x: &[f32], id: Option<&str>) -> Value {
    let mut body =
        json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": x}]});
    if let Some(id) = id {
        body["id"] = id.into();
    }
    body
}

/// Labelled drifted traffic, 50 requests and their labels at a time,
/// until the trainer's canary of version 2 is in force.
async fn until_canary(gw: &Gateway, dir: &Path) -> Result<()> {
    let mut rng = Rng::new(17);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut n = 0u64;
    loop {
        let routing = gw.get("/v2/models/m/routing").await?.json();
        if routing["routing"]["canary"]["2"].is_number() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no canary of v2: {routing}\ntrainer log:\n{}",
                std::fs::read_to_string(dir.join("trainer.log")).unwrap_or_default()
            );
        }
        let mut labels = Vec::new();
        for _ in 0..50 {
            n += 1;
            let id = format!("d{n}");
            let (x, y) = row(&mut rng, true);
            let r = gw
                .post_json("/v2/models/m/infer", &infer_body(&x, Some(&id)))
                .await?;
            assert_eq!(r.status, 200, "{}", r.text());
            labels.push(json!({"id": id, "label": y}));
        }
        let r = gw
            .post_json("/v2/models/m/feedback", &json!({ "labels": labels }))
            .await?;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// Keyed requests (no labels) until `stop`.
fn keyed_traffic(gw: Arc<Gateway>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut rng = Rng::new(23);
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            sent += 1;
            let (x, _) = row(&mut rng, true);
            let body = Bytes::from(infer_body(&x, None).to_string());
            let key = format!("user-{sent}");
            let _ = send(
                gw.addr,
                "POST",
                "/v2/models/m/infer",
                &[("x-quiver-key", key)],
                body,
            )
            .await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sent
    })
}

async fn state(gw: &Gateway) -> Result<Value> {
    let r = gw.get("/dashboard/api/v1/state").await?;
    assert_eq!(r.status, 200, "{}", r.text());
    Ok(r.json())
}

fn version(model: &Value, v: u64) -> &Value {
    model["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|x| x["version"] == v))
        .unwrap_or(&Value::Null)
}

/// Samples of `v` in which requests were served.
fn busy_samples(model: &Value, v: u64) -> usize {
    version(model, v)["series"]["rps"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|x| x.as_f64() > Some(0.0)).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_models_rollout_charts_and_runs() -> Result<()> {
    let dir = scratch("dashboard")?;
    let cfg = trainer_config(&dir)?;
    bootstrap(&dir, &cfg)?;
    let log_dir = dir.join("log");
    // A free port for the trainer's metrics, which the gateway reads.
    let trainer_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let trainer_url = format!("http://{trainer_addr}/metrics");
    let env = [
        ("QUIVER_ADMIN_TOKEN", TOKEN),
        ("QUIVER_REPOSITORY__POLL_INTERVAL_MS", "50"),
        ("QUIVER_ROUTING__ROLLOUT_INTERVAL_MS", "100"),
        ("QUIVER_LOG__DIR", log_dir.to_str().context("path")?),
        (
            "QUIVER_DASHBOARD__TRAINER_METRICS_URL",
            trainer_url.as_str(),
        ),
    ];
    let gw = Arc::new(Gateway::start_ready(&dir.join("repo"), &[], &env).await?);
    let addr = trainer_addr.to_string();
    let mut t = trainer::spawn(&cfg, &["--metrics-addr", &addr], &dir.join("trainer.log"))?;
    until_canary(&gw, &dir).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = keyed_traffic(Arc::clone(&gw), Arc::clone(&stop));
    // Charts need a few seconds of samples on both arms, and the guardrail
    // its first comparison.
    let deadline = Instant::now() + Duration::from_secs(60);
    let doc = loop {
        let doc = state(&gw).await?;
        let m = &doc["models"][0];
        if busy_samples(m, 1) >= 3
            && busy_samples(m, 2) >= 3
            && version(m, 1)["online"]["accuracy"].is_number()
            && m["rollout"]["guardrail"]["canary_arm"]["requests"].as_u64() > Some(0)
        {
            break doc;
        }
        assert!(Instant::now() < deadline, "no chart data: {doc:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    check_state(&gw, &doc).await?;
    grafana_queries_exported_metrics(&gw, trainer_addr).await?;

    let url = format!("http://{}/", gw.addr);
    let shot = tokio::task::spawn_blocking(move || in_the_browser(&url)).await??;
    let path = std::env::var("QUIVER_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dir.join("dashboard.png"));
    std::fs::write(&path, &shot)?;
    eprintln!("screenshot: {} ({} bytes)", path.display(), shot.len());

    stop.store(true, Ordering::Relaxed);
    let sent = traffic.await?;
    assert!(sent > 0);
    t.kill()?;
    t.wait()?;
    check_counts_against_metrics(&gw).await?;
    protected_reads(&dir).await?;
    // The gateway writes into the registry (traffic reports) while it runs.
    drop(gw);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The JSON view agrees with the routing state and the run records.
async fn check_state(gw: &Gateway, doc: &Value) -> Result<()> {
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["window_ms"], 900_000);
    let m = &doc["models"][0];
    assert_eq!(m["name"], "m");
    let routing = gw.get("/v2/models/m/routing").await?.json();
    let weight = routing["routing"]["canary"]["2"]
        .as_f64()
        .context("weight")?;
    assert_eq!(weight, 0.25);
    assert_eq!(m["routing"]["stable"], routing["effective"]["stable"]);
    assert_eq!(
        m["routing"]["canary"],
        json!([{"version": 2, "weight": 0.25}])
    );
    assert_eq!(m["history"], routing["routing"]["history"]);
    let start = m["history"]
        .as_array()
        .and_then(|h| h.iter().rev().find(|e| e["decision"] == "start"))
        .context("a start decision in the history")?;
    assert_eq!(start["by"], "quiver-trainer");
    let (v1, v2) = (version(m, 1), version(m, 2));
    assert_eq!(
        (&v1["state"], &v1["role"]),
        (&json!("ready"), &json!("stable"))
    );
    assert_eq!(
        (&v2["state"], &v2["role"]),
        (&json!("ready"), &json!("canary"))
    );
    assert_eq!(v2["weight"], 0.25);
    assert_eq!(m["rollout"]["running"]["canary"], 2);
    let g = &m["rollout"]["guardrail"];
    assert_eq!((&g["canary"], &g["stable"]), (&json!(2), &json!(1)));
    assert_eq!(g["decision"], "hold", "{g}");
    assert_eq!(g["min_requests"], 1_000_000);
    // Online quality, from the trainer's metrics.
    assert_eq!(doc["trainer"], json!({"configured": true, "error": null}));
    let accuracy = version(m, 1)["online"]["accuracy"]
        .as_f64()
        .context("v1 accuracy")?;
    assert!((0.0..=1.0).contains(&accuracy));

    // Each version names the run that made it; v2's run has v1 as parent.
    let runs = m["runs"].as_array().context("runs")?;
    for (v, trigger_is_bootstrap) in [(1, true), (2, false)] {
        let id = version(m, v)["run"].as_str().context("run id")?;
        let run = runs
            .iter()
            .find(|r| r["id"] == id)
            .with_context(|| format!("run {id} of v{v} listed"))?;
        assert_eq!(run["outcome"], json!({"kind": "published", "version": v}));
        assert_eq!(run["trigger"] == "bootstrap", trigger_is_bootstrap, "{run}");
        let manifest = &version(m, v)["manifest"];
        assert_eq!(manifest["lineage"]["run"], id);
        assert!(manifest["metrics"]["offline"]["accuracy"].as_f64() > Some(0.5));
    }
    let v2_run = runs
        .iter()
        .find(|r| r["id"] == v2["run"])
        .context("v2's run")?;
    assert_eq!(v2_run["parent"], 1);
    assert_eq!(v2["manifest"]["lineage"]["parent"], 1);

    // The charts: one sample a second, aligned columns.
    let s = &v2["series"];
    let n = s["t_ms"].as_array().context("t_ms")?.len();
    for key in [
        "rps",
        "errors_ps",
        "p50_ms",
        "p99_ms",
        "batch_mean",
        "queue_depth",
    ] {
        assert_eq!(s[key].as_array().map(Vec::len), Some(n), "{key}");
    }
    assert!(
        s["p99_ms"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_f64() > Some(0.0)))
    );
    assert!(
        s["batch_mean"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_f64() >= Some(1.0)))
    );
    let short = gw.get("/dashboard/api/v1/state?window_s=2").await?.json();
    let kept = version(&short["models"][0], 2)["series"]["t_ms"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(kept <= 3, "a 2 s window kept {kept} samples");
    assert_eq!(
        gw.get("/dashboard/api/v1/state?window_s=0").await?.status,
        400
    );
    // Only samples after since_ms: what a poller does not have yet.
    let t = s["t_ms"].as_array().context("t_ms")?;
    let cut = t[t.len() - 2].as_u64().context("t")?;
    let newer = gw
        .get(&format!("/dashboard/api/v1/state?since_ms={cut}"))
        .await?
        .json();
    let kept = version(&newer["models"][0], 2)["series"]["t_ms"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !kept.is_empty() && kept.iter().all(|x| x.as_u64() > Some(cut)),
        "{kept:?}"
    );
    Ok(())
}

/// Once traffic stops, each version's request and error counts in the
/// view equal `quiver_requests_total` in `/metrics`.
async fn check_counts_against_metrics(gw: &Gateway) -> Result<()> {
    let doc = state(gw).await?;
    let m = &doc["models"][0];
    for v in [1u64, 2] {
        let label = format!("version=\"{v}\"");
        let all = gw
            .metric("quiver_requests_total", &["model=\"m\"", &label])
            .await?;
        let ok = gw
            .metric(
                "quiver_requests_total",
                &["model=\"m\"", &label, "outcome=\"success\""],
            )
            .await?;
        let view = version(m, v);
        assert_eq!(view["requests"].as_f64(), Some(all), "v{v}");
        assert_eq!(view["errors"].as_f64(), Some(all - ok), "v{v}");
        assert!(all > 0.0);
    }
    Ok(())
}

/// What a person sees: the model, its versions and roles, the canary's
/// weight, charts with data, the run records; no console error.
fn in_the_browser(url: &str) -> Result<Vec<u8>> {
    let profile = scratch("dashboard-chromium")?;
    let mut b = Browser::start(&profile, 1400, 1000)?;
    let started = Instant::now();
    b.navigate(url)?;
    let loaded = started.elapsed();
    assert_eq!(b.eval("location.pathname")?, "/dashboard");
    let first = b.wait_for("window.quiverFirstRender", Duration::from_secs(30))?;
    // Reported, not asserted: what the page weighed and when it painted.
    let weight = b.eval(
        r#"(() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const res = performance.getEntriesByType('resource');
        const paint = performance.getEntriesByType('paint').find(p => p.name === 'first-contentful-paint');
        return {
            page_bytes: nav.decodedBodySize + res.filter(r => !r.name.includes('/api/')).reduce((n, r) => n + r.decodedBodySize, 0),
            state_bytes: res.filter(r => r.name.includes('/api/')).map(r => [r.name.includes('since_ms') ? 'since' : 'whole', r.decodedBodySize]),
            first_contentful_paint_ms: paint ? paint.startTime : null,
            first_data_render_ms: window.quiverFirstRender,
        };
    })()"#,
    )?;
    eprintln!("page weight and first render: {weight}");
    let seen = b.eval(
        r#"(() => {
        const m = document.querySelector('section.model[data-model="m"]');
        const role = v => m.querySelector(`tr.version[data-version="${v}"] td.role`).textContent.trim();
        const points = [...m.querySelectorAll('svg.chart[data-key="rps"] path.series')]
            .map(p => [p.dataset.version, Number(p.dataset.points)]);
        return {
            title: m.querySelector('h2').textContent.trim(),
            v1: role(1), v2: role(2),
            rollout: m.querySelector('.rollout-running').textContent,
            guardrail: m.querySelectorAll('table.guardrail tbody tr').length,
            points,
            runs: [...m.querySelectorAll('table.runs tbody tr td.outcome')].map(t => t.textContent),
            compare: [...m.querySelectorAll('.compare .run h4')].map(t => t.textContent),
            history: m.querySelectorAll('table.history tbody tr').length,
            online: m.querySelector('tr.quality-row[data-version="1"] td.online').textContent,
        };
    })()"#,
    )?;
    eprintln!("the page shows: {seen:#}; loaded in {loaded:?}, first render at {first} ms");
    assert_eq!(seen["title"], "m");
    assert_eq!(seen["v1"], "stable");
    assert_eq!(seen["v2"], "canary 25.00 %");
    let rollout = seen["rollout"].as_str().unwrap_or_default();
    assert!(
        rollout.contains("Canary v2") && rollout.contains("25.00 %"),
        "{rollout}"
    );
    assert_eq!(seen["guardrail"], 2);
    let points = seen["points"].as_array().context("chart paths")?;
    for v in ["1", "2"] {
        assert!(
            points.iter().any(|p| p[0] == v && p[1].as_u64() >= Some(3)),
            "no rps line with data for v{v}: {points:?}"
        );
    }
    let runs = seen["runs"].as_array().context("runs")?;
    assert!(runs.contains(&json!("published as v1")), "{runs:?}");
    assert!(runs.contains(&json!("published as v2")), "{runs:?}");
    // The newest run (v2's) is shown beside its parent, v1's run.
    assert_eq!(seen["compare"][1], "its parent, v1");
    assert!(seen["history"].as_u64() >= Some(1));
    let online = seen["online"].as_str().unwrap_or_default();
    assert!(online.starts_with("accuracy "), "{online}");
    // A few polls later, still no error.
    std::thread::sleep(Duration::from_millis(2500));
    b.eval("1")?;
    let shot = b.screenshot()?;
    // A click on v1's run link shows that run (it has no parent).
    b.eval(r#"document.querySelector('tr.version[data-version="1"] a[data-run]').click()"#)?;
    let compare =
        b.eval("[...document.querySelectorAll('.compare .run h4')].map(h => h.textContent)")?;
    assert_eq!(compare[1], "no parent version", "{compare}");
    assert!(b.errors().is_empty(), "console errors: {:#?}", b.errors());
    Ok(shot)
}

/// With `admin.protect_reads`, the JSON needs the token; the page (which
/// holds no data) does not.
async fn protected_reads(dir: &Path) -> Result<()> {
    let env = [
        ("QUIVER_ADMIN_TOKEN", TOKEN),
        ("QUIVER_ADMIN__PROTECT_READS", "true"),
    ];
    let gw = Gateway::start_ready(&dir.join("repo"), &[], &env).await?;
    assert_eq!(gw.get("/dashboard/api/v1/state").await?.status, 401);
    assert_eq!(gw.get("/dashboard").await?.status, 200);
    let r = send(
        gw.addr,
        "GET",
        "/dashboard/api/v1/state",
        &[("authorization", format!("Bearer {TOKEN}"))],
        Bytes::new(),
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["models"][0]["name"], "m");
    Ok(())
}

/// `deploy/grafana/quiver.json` parses as a Grafana dashboard, and every
/// metric its queries name is in the gateway's `/metrics` (or, for
/// `quiver_trainer_*`, the trainer's), with every label they select on.
async fn grafana_queries_exported_metrics(
    gw: &Gateway,
    trainer: std::net::SocketAddr,
) -> Result<()> {
    let text = std::fs::read_to_string(root().join("deploy/grafana/quiver.json"))?;
    let dash: Value = serde_json::from_str(&text).context("deploy/grafana/quiver.json")?;
    assert!(dash["schemaVersion"].as_u64().is_some() && dash["uid"].is_string());
    let mut queries = Vec::new();
    let mut ids = Vec::new();
    for p in dash["panels"].as_array().context("panels")? {
        ids.push(p["id"].as_u64().context("panel id")?);
        assert!(
            p["title"].is_string() && p["gridPos"]["w"].as_u64().is_some(),
            "{p}"
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().context("targets")?;
        assert!(!targets.is_empty(), "{p}");
        for t in targets {
            queries.push(t["expr"].as_str().context("expr")?.to_string());
        }
    }
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "panel ids repeat");
    for v in dash["templating"]["list"]
        .as_array()
        .context("templating")?
    {
        if let Some(q) = v["query"]["query"].as_str() {
            queries.push(q.to_string());
        }
    }
    // The trainer sets some gauges only at its next drift or quality pass:
    // wait (up to a minute) until nothing is missing.
    let until = Instant::now() + Duration::from_secs(60);
    let (missing, checked) = loop {
        let gateway = gw.get("/metrics").await?.text();
        let trainer = send(trainer, "GET", "/metrics", &[], Bytes::new())
            .await?
            .text();
        let mut missing = Vec::new();
        let mut checked = 0;
        for q in &queries {
            for (metric, labels) in selectors(q) {
                let exported = if metric.starts_with("quiver_trainer_") {
                    &trainer
                } else {
                    &gateway
                };
                let samples: Vec<&str> = exported
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter(|l| l.split(['{', ' ']).next() == Some(metric.as_str()))
                    .collect();
                if samples.is_empty() {
                    missing.push(format!("{metric} (in `{q}`) is not exported"));
                }
                for label in labels {
                    if !samples.iter().any(|s| s.contains(&format!("{label}=\""))) {
                        missing.push(format!("{metric} has no label {label} (in `{q}`)"));
                    }
                }
                checked += 1;
            }
        }
        if missing.is_empty() || Instant::now() > until {
            break (missing, checked);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(missing.is_empty(), "{missing:#?}");
    assert!(checked >= 20, "only {checked} metric references found");
    Ok(())
}

/// Each `quiver_*` metric a PromQL query names, with the label names it
/// selects on (`{a="x",b=~"y"}`) or groups by (`by (a, b)` before it).
fn selectors(query: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("quiver_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_string();
        let mut labels = Vec::new();
        if let Some(body) = tail[end..].strip_prefix('{') {
            let body = body.split('}').next().unwrap_or_default();
            for m in body.split(',') {
                let key: String = m
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !key.is_empty() {
                    labels.push(key);
                }
            }
        }
        if let Some(by) = rest[..at]
            .rsplit("by (")
            .next()
            .filter(|_| rest[..at].contains("by ("))
        {
            let by = by.split(')').next().unwrap_or_default();
            labels.extend(
                by.split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty() && l != "le"),
            );
        }
        out.push((name, labels));
        rest = &tail[end..];
    }
    out
}

#[test]
fn selectors_of_a_query() {
    let q = r#"sum by (model, le) (rate(quiver_x_bucket{model=~"$m",agree="true"}[1m])) / max(quiver_y)"#;
    assert_eq!(
        selectors(q),
        vec![
            (
                "quiver_x_bucket".to_string(),
                vec!["model".into(), "agree".into(), "model".into()]
            ),
            ("quiver_y".to_string(), vec![]),
        ]
    );
}
