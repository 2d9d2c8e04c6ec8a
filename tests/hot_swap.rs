//! Hot swap, routing and rollout, end to end: the real gateway binary and
//! ONNX Runtime, model versions written into a scratch repository the way
//! a trainer writes them (files first, `manifest.json` last, by rename).

// The whole file is test code: a failed step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_contract::layout::write_atomic;
use quiver_contract::manifest::{Manifest, sha256_bytes};
use quiver_gateway::backend::Backend;
use quiver_gateway::backend::onnx::{OnnxBackend, SessionOptions, environment};
use quiver_gateway::model_settings::ExecutionProvider;
use quiver_gateway::tensor::{Tensor, TensorData};
use quiver_tests::{
    Gateway, Reply, Rng, as_f32, example_file, example_models, infer_keyed, mlp_body, scratch,
    send, spawn_keyed_traffic, version_of, wait_routing,
};
use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token";

/// Writes `<repo>/<model>/<version>/model.onnx`, then (optionally) the
/// manifest with its checksum, last and atomically.
fn publish(repo: &Path, model: &str, version: u64, onnx: &[u8], manifest: bool) {
    let dir = repo.join(model).join(version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    write_atomic(&dir.join("model.onnx"), onnx).unwrap();
    if manifest {
        let mut m = Manifest::new(model, version);
        m.sha256.insert("model.onnx".into(), sha256_bytes(onnx));
        write_atomic(&dir.join("manifest.json"), &m.to_json()).unwrap();
    }
}

/// A fixed set of inputs and ONNX Runtime's in-process answers to each for
/// both mlp versions, so clients can check every answer cheaply.
struct Expected {
    inputs: Vec<Vec<f32>>,
    /// `[mlp version - 1][input]`.
    outputs: [Vec<Vec<f32>>; 2],
}

impl Expected {
    fn new(n: usize) -> Expected {
        let mut rng = Rng::new(11);
        let inputs: Vec<Vec<f32>> = (0..n)
            .map(|_| (0..16).map(|_| rng.f32() * 3.0).collect())
            .collect();
        let env = environment(None).expect("ONNX Runtime (run scripts/setup.sh)");
        let options = SessionOptions {
            intra_op_threads: 1,
            execution_provider: ExecutionProvider::Cpu,
        };
        let outputs = [1u64, 2].map(|v| {
            let mut b = OnnxBackend::load(
                env,
                &example_models().join(format!("mlp/{v}/model.onnx")),
                &options,
            )
            .unwrap();
            inputs
                .iter()
                .map(|x| {
                    let t = Tensor {
                        name: "features".into(),
                        shape: vec![1, 16],
                        data: TensorData::Fp32(x.clone()),
                    };
                    match &b.run(vec![t]).unwrap()[0].data {
                        TensorData::Fp32(v) => v.clone(),
                        _ => panic!("mlp output is not FP32"),
                    }
                })
                .collect()
        });
        Expected { inputs, outputs }
    }
}

async fn admin(gw: &Gateway, method: &str, path: &str, token: Option<&str>, body: Value) -> Reply {
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(t) = token {
        headers.push(("authorization", format!("Bearer {t}")));
    }
    send(
        gw.addr,
        method,
        path,
        &headers,
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap()
}

async fn served_version(gw: &Gateway, model: &str) -> u64 {
    let r = gw.get(&format!("/v2/models/{model}/ready")).await.unwrap();
    if r.status != 200 {
        return 0;
    }
    r.json()["version"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_swaps_under_load_fail_no_request() {
    let repo = scratch("swaps").unwrap();
    let mlp = [example_file("mlp", 1), example_file("mlp", 2)];
    // Version n holds mlp version (n - 1) % 2 + 1: consecutive versions differ.
    let content = |n: u64| ((n - 1) % 2) as usize;
    publish(&repo, "swap", 1, &mlp[0], true);
    let gw = Arc::new(
        Gateway::start_ready(
            &repo,
            &[],
            &[
                ("QUIVER_ADMIN_TOKEN", TOKEN),
                ("QUIVER_REPOSITORY__POLL_INTERVAL_MS", "50"),
            ],
        )
        .await
        .unwrap(),
    );
    let expected = Arc::new(Expected::new(32));
    let stop = Arc::new(AtomicBool::new(false));
    let swapping = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let (gw, expected, stop, swapping) =
            (gw.clone(), expected.clone(), stop.clone(), swapping.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = Rng::new(c + 1);
            let (mut steady, mut during, mut failures) = (Vec::new(), Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let i = (rng.next_u64() % expected.inputs.len() as u64) as usize;
                let t = Instant::now();
                let r = infer_keyed(&gw, "swap", &format!("c{c}-{i}"), &expected.inputs[i]).await;
                let took = t.elapsed();
                if r.status != 200 {
                    failures.push(format!("status {}: {}", r.status, r.text()));
                    continue;
                }
                let v = version_of(&r);
                assert_eq!(r.json()["model_version"], v.to_string());
                let got = as_f32(&r.json()["outputs"][0]["data"]);
                let want = &expected.outputs[content(v)][i];
                let ok = got.len() == want.len()
                    && got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-5);
                if !ok {
                    failures.push(format!("version {v} answered {got:?}, expected {want:?}"));
                }
                if swapping.load(Ordering::Relaxed) {
                    during.push(took)
                } else {
                    steady.push(took)
                }
            }
            (steady, during, failures)
        }));
    }
    // Steady state first, for the latency comparison.
    tokio::time::sleep(Duration::from_secs(2)).await;
    swapping.store(true, Ordering::Relaxed);
    let mut to_traffic = Vec::new();
    for n in 2..=101u64 {
        let started = Instant::now();
        if n % 2 == 0 {
            // By repository change: manifest last; the watcher finds it.
            publish(&repo, "swap", n, &mlp[content(n)], true);
            while served_version(&gw, "swap").await != n {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "version {n} never took traffic:\n{}",
                    gw.log()
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        } else {
            // By API: plain files (no manifest), then an explicit load.
            publish(&repo, "swap", n, &mlp[content(n)], false);
            let r = admin(
                &gw,
                "POST",
                "/v2/repository/models/swap/load",
                Some(TOKEN),
                json!({}),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["stable"], n, "{}", r.text());
            assert_eq!(served_version(&gw, "swap").await, n);
        }
        to_traffic.push(started.elapsed());
        // The replaced version's directory goes away too, as it would.
        if n > 2 {
            let _ = std::fs::remove_dir_all(repo.join("swap").join((n - 2).to_string()));
        }
    }
    swapping.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut steady, mut during, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    for c in clients {
        let (s, d, f) = c.await.unwrap();
        steady.extend(s);
        during.extend(d);
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failed answers, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        during.len() > 200,
        "too few requests during the swaps: {}",
        during.len()
    );
    steady.sort();
    during.sort();
    to_traffic.sort();
    let (p99_steady, p99_during) = (percentile(&steady, 0.99), percentile(&during, 0.99));
    eprintln!(
        "swaps: 100; requests steady {} / during {}; p99 steady {:?}, during {:?} (ratio {:.2}); new version to traffic: median {:?}, max {:?}",
        steady.len(),
        during.len(),
        p99_steady,
        p99_during,
        p99_during.as_secs_f64() / p99_steady.as_secs_f64().max(1e-9),
        percentile(&to_traffic, 0.5),
        percentile(&to_traffic, 1.0),
    );
    let swaps = gw
        .metric(
            "quiver_model_swaps_total",
            &["model=\"swap\"", "kind=\"load\""],
        )
        .await
        .unwrap();
    assert!(swaps >= 100.0, "swap counter {swaps}");
}

#[tokio::test]
async fn corrupt_and_wrong_shaped_versions_are_refused_while_the_old_one_serves() {
    let repo = scratch("refuse").unwrap();
    publish(&repo, "m", 1, &example_file("mlp", 1), true);
    let gw = Gateway::start_ready(&repo, &[], &[("QUIVER_REPOSITORY__POLL_INTERVAL_MS", "50")])
        .await
        .unwrap();
    let x = [0.5f32; 16];
    let check_v1_serves = || async {
        let r = infer_keyed(&gw, "m", "k", &x).await;
        assert_eq!((r.status, version_of(&r)), (200, 1), "{}", r.text());
    };
    let index_reason = |v: u64| {
        let gw = &gw;
        async move {
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                let r = admin(gw, "POST", "/v2/repository/index", None, json!({})).await;
                assert_eq!(r.status, 200, "{}", r.text());
                let row = r
                    .json()
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| {
                        e["name"] == "m" && e["version"].as_str() == Some(v.to_string().as_str())
                    })
                    .cloned();
                if let Some(row) = row.filter(|r| r["state"] == "UNAVAILABLE") {
                    return row["reason"].as_str().unwrap_or_default().to_string();
                }
                assert!(
                    Instant::now() < until,
                    "version {v} never refused:\n{}",
                    gw.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Not an ONNX file at all (its checksum is right).
    publish(
        &repo,
        "m",
        2,
        b"\x08\x07garbage that is not a protobuf model",
        true,
    );
    let why = index_reason(2).await;
    assert!(
        why.to_lowercase().contains("protobuf") || why.contains("load"),
        "{why}"
    );
    check_v1_serves().await;
    // A file that does not match its manifest's checksum: a torn copy.
    let dir = repo.join("m/3");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.onnx"), &example_file("mlp", 2)[..1000]).unwrap();
    let mut m = Manifest::new("m", 3);
    m.sha256
        .insert("model.onnx".into(), sha256_bytes(&example_file("mlp", 2)));
    write_atomic(&dir.join("manifest.json"), &m.to_json()).unwrap();
    assert!(index_reason(3).await.contains("checksum mismatch"));
    check_v1_serves().await;
    // A valid model with another interface: it would break every client.
    publish(&repo, "m", 4, &example_file("fixed", 1), true);
    let why = index_reason(4).await;
    assert!(why.contains("unlike version 1 serving now"), "{why}");
    check_v1_serves().await;
    // Ready throughout, and a good version still goes live after all that.
    assert_eq!(gw.get("/v2/health/ready").await.unwrap().status, 200);
    publish(&repo, "m", 5, &example_file("mlp", 2), true);
    let until = Instant::now() + Duration::from_secs(30);
    while served_version(&gw, "m").await != 5 {
        assert!(
            Instant::now() < until,
            "version 5 never served:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let loads = gw
        .metric(
            "quiver_model_loads_total",
            &["model=\"m\"", "outcome=\"failure\""],
        )
        .await
        .unwrap();
    assert!(loads >= 2.0, "failed loads counted: {loads}");
}

const ROLLOUT_CONFIG: &str = r#"
version_policy = "all"
[rollout]
enabled = true
steps = [0.25, 0.5, 1.0]
min_requests = 40
min_dwell_ms = 300
max_error_rate_increase = 0.05
# Tests share two cores with the compiler and each other: latency is noise
# here, errors are what the rollback test is about.
p99_slack_ms = 200.0
"#;

/// A scratch repository with `model` version 1 (the mlp) under
/// [`ROLLOUT_CONFIG`], and a gateway that has made version 1 stable.
async fn start_rollout(scratch_name: &str, model: &str) -> (std::path::PathBuf, Arc<Gateway>) {
    let repo = scratch(scratch_name).unwrap();
    publish(&repo, model, 1, &example_file("mlp", 1), true);
    std::fs::write(repo.join(model).join("config.toml"), ROLLOUT_CONFIG).unwrap();
    let env = [
        ("QUIVER_REPOSITORY__POLL_INTERVAL_MS", "50"),
        ("QUIVER_ROUTING__ROLLOUT_INTERVAL_MS", "50"),
    ];
    let gw = Arc::new(Gateway::start_ready(&repo, &[], &env).await.unwrap());
    wait_routing(&gw, model, "the first stable version", |v| {
        v["routing"]["stable"] == 1
    })
    .await;
    (repo, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_errors_is_rolled_back() {
    let (repo, gw) = start_rollout("rollback", "r").await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = spawn_keyed_traffic(vec![gw.clone()], "r", 0.5, 5, stop.clone());
    // The flaky model has the mlp's interface; half the requests break it.
    publish(&repo, "r", 2, &example_file("flaky", 1), true);
    let v = wait_routing(&gw, "r", "the rollback", |v| {
        v["routing"]["rolled_back"] == json!([2])
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let seen = traffic.await.unwrap();
    assert_eq!(v["routing"]["stable"], 1);
    assert_eq!(v["routing"]["canary"], json!({}));
    let decisions: Vec<&str> = v["rollout"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions.last(), Some(&"rollback"), "{decisions:?}");
    assert!(!decisions.contains(&"promote"), "{decisions:?}");
    // Failures came only from the canary; stable answered everything.
    assert!(
        seen.iter().any(|(v, s)| *v == 2 && *s == 500),
        "the canary never failed"
    );
    assert!(seen.iter().filter(|(_, s)| *s != 200).all(|(v, _)| *v == 2));
    // The decision is on disk for a restart, and counted.
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(repo.join("r/routing.json")).unwrap()).unwrap();
    assert_eq!(on_disk["rolled_back"], json!([2]));
    let by = on_disk["updated_by"].as_str().unwrap();
    assert!(by.starts_with("rollout-guardrail@"), "{by}");
    let n = gw
        .metric(
            "quiver_rollout_decisions_total",
            &["model=\"r\"", "decision=\"rollback\""],
        )
        .await
        .unwrap();
    assert_eq!(n, 1.0);
    // After the rollback every keyed caller is on stable again; a pinned
    // request still reaches the canary.
    for i in 0..20 {
        let r = infer_keyed(&gw, "r", &format!("after-{i}"), &[0.1; 16]).await;
        assert_eq!((r.status, version_of(&r)), (200, 1));
    }
    let r = gw
        .post_json("/v2/models/r/versions/2/infer", &mlp_body(&[0.1; 16]))
        .await
        .unwrap();
    assert_eq!((r.status, version_of(&r)), (200, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_step_by_step() {
    let (repo, gw) = start_rollout("promote", "p").await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = spawn_keyed_traffic(vec![gw.clone()], "p", 0.0, 5, stop.clone());
    publish(&repo, "p", 2, &example_file("mlp", 2), true);
    let v = wait_routing(&gw, "p", "the promotion", |v| v["routing"]["stable"] == 2).await;
    stop.store(true, Ordering::Relaxed);
    let seen = traffic.await.unwrap();
    assert!(seen.iter().all(|(_, s)| *s == 200));
    let history = v["rollout"]["history"].as_array().unwrap();
    let steps: Vec<(String, Value)> = history
        .iter()
        .map(|h| {
            (
                h["decision"].as_str().unwrap().to_string(),
                h["canary"].clone(),
            )
        })
        .collect();
    let names: Vec<&str> = steps.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(
        names,
        ["init", "start", "advance", "advance", "promote"],
        "{steps:?}"
    );
    assert_eq!(steps[1].1, json!({"2": 0.25}));
    assert_eq!(steps[2].1, json!({"2": 0.5}));
    assert_eq!(steps[3].1, json!({"2": 1.0}));
    assert_eq!(v["routing"]["canary"], json!({}));
    // Both versions answered while the canary ran.
    assert!(seen.iter().any(|(v, _)| *v == 1) && seen.iter().any(|(v, _)| *v == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_through_the_admin_api_is_guarded_and_survives_a_restart() {
    let repo = scratch("restart").unwrap();
    publish(&repo, "s", 1, &example_file("mlp", 1), true);
    publish(&repo, "s", 2, &example_file("mlp", 2), true);
    // Guardrail on, but advancing waits for an external verdict.
    std::fs::write(
        repo.join("s/config.toml"),
        "version_policy = \"all\"\n[rollout]\nsteps = [0.1, 0.5, 1.0]\nmin_requests = 1000000\nauto_advance = false\n",
    )
    .unwrap();
    let env = [
        ("QUIVER_ADMIN_TOKEN", TOKEN),
        ("QUIVER_ROUTING__ROLLOUT_INTERVAL_MS", "50"),
    ];
    let mut gw = Gateway::start_ready(&repo, &[], &env).await.unwrap();
    let routing = json!({"schema": 1, "stable": 1, "canary": {"2": 0.1}, "step": 0});
    // Mutations need the token; reads do not.
    let r = admin(&gw, "PUT", "/v2/models/s/routing", None, routing.clone()).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.error().contains("Bearer"));
    let r = admin(
        &gw,
        "PUT",
        "/v2/models/s/routing",
        Some("wrong"),
        routing.clone(),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = admin(
        &gw,
        "POST",
        "/v2/repository/models/s/unload",
        None,
        json!({}),
    )
    .await;
    assert_eq!(r.status, 401);
    // Invalid states are refused with the reason.
    let r = admin(
        &gw,
        "PUT",
        "/v2/models/s/routing",
        Some(TOKEN),
        json!({"schema": 1, "stable": 1, "canary": {"2": 1.5}}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("weight"), "{}", r.text());
    let r = admin(
        &gw,
        "PUT",
        "/v2/models/s/routing",
        Some(TOKEN),
        json!({"schema": 1, "stable": 9}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("no version 9"), "{}", r.text());
    let r = admin(&gw, "PUT", "/v2/models/s/routing", Some(TOKEN), routing).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // An external verdict moves the canary one step.
    let r = admin(
        &gw,
        "POST",
        "/v2/models/s/rollout",
        Some(TOKEN),
        json!({"action": "advance", "version": 2, "by": "trainer", "reason": "quality holds"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["routing"]["canary"], json!({"2": 0.5}));
    assert_eq!(r.json()["routing"]["updated_by"], "trainer");

    // Keys stick to one arm; about half of them are on the canary.
    let mut on_canary = 0;
    for i in 0..400 {
        let key = format!("caller-{i}");
        let a = version_of(&infer_keyed(&gw, "s", &key, &[0.2; 16]).await);
        let b = version_of(&infer_keyed(&gw, "s", &key, &[0.3; 16]).await);
        assert_eq!(a, b, "key {key} moved between arms");
        on_canary += usize::from(a == 2);
    }
    assert!(
        (140..=260).contains(&on_canary),
        "{on_canary} of 400 keys on a 50 % canary"
    );
    // A version in the URL pins it.
    let r = gw
        .post_json("/v2/models/s/versions/1/infer", &mlp_body(&[0.2; 16]))
        .await
        .unwrap();
    assert_eq!(version_of(&r), 1);

    // Restart: the routing state comes back from routing.json.
    gw.terminate().unwrap();
    assert_eq!(gw.wait_exit(Duration::from_secs(30)).unwrap(), 0);
    let gw = Gateway::start_ready(&repo, &[], &env).await.unwrap();
    let v = wait_routing(&gw, "s", "routing after restart", |v| {
        v["routing"]["stable"] == 1
    })
    .await;
    assert_eq!(v["routing"]["canary"], json!({"2": 0.5}));
    assert_eq!(v["routing"]["step"], 1);
    let mut canary = 0;
    for i in 0..400 {
        let r = infer_keyed(&gw, "s", &format!("caller-{i}"), &[0.2; 16]).await;
        canary += usize::from(version_of(&r) == 2);
    }
    assert_eq!(canary, on_canary, "keys kept their arms across the restart");
    // Roll back by verdict; everything returns to stable.
    let r = admin(
        &gw,
        "POST",
        "/v2/models/s/rollout",
        Some(TOKEN),
        json!({"action": "rollback", "version": 2}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["routing"]["rolled_back"], json!([2]));
    let r = infer_keyed(&gw, "s", "caller-1", &[0.2; 16]).await;
    assert_eq!(version_of(&r), 1);
    // Unload and load through Triton's repository API.
    let r = admin(
        &gw,
        "POST",
        "/v2/repository/models/s/unload",
        Some(TOKEN),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = infer_keyed(&gw, "s", "caller-1", &[0.2; 16]).await;
    assert_eq!(r.status, 503);
    assert!(r.error().contains("unloaded"));
    let r = admin(
        &gw,
        "POST",
        "/v2/repository/models/s/load",
        Some(TOKEN),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        infer_keyed(&gw, "s", "caller-1", &[0.2; 16]).await.status,
        200
    );
}

#[tokio::test]
async fn shadows_get_copies_and_their_agreement_is_measured() {
    let repo = scratch("shadow").unwrap();
    publish(&repo, "h", 1, &example_file("mlp", 1), true);
    publish(&repo, "h", 2, &example_file("mlp", 2), true);
    publish(&repo, "h", 3, &example_file("mlp", 1), true);
    std::fs::write(repo.join("h/config.toml"), "version_policy = \"all\"\n").unwrap();
    let routing = json!({"schema": 1, "stable": 1, "shadow": [2, 3]});
    write_atomic(&repo.join("h/routing.json"), routing.to_string().as_bytes()).unwrap();
    let gw = Gateway::start_ready(&repo, &[], &[]).await.unwrap();
    for i in 0..30 {
        let r = infer_keyed(&gw, "h", &format!("k{i}"), &[0.1 * i as f32; 16]).await;
        // Shadows never answer: stable does.
        assert_eq!((r.status, version_of(&r)), (200, 1), "{}", r.text());
    }
    let metric = |v: &'static str, name: &'static str, label: &'static str| {
        let gw = &gw;
        async move {
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                let n = gw
                    .metric(name, &["model=\"h\"", v, label])
                    .await
                    .unwrap_or(0.0);
                if n >= 30.0 || Instant::now() > until {
                    return n;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Version 3 is the same graph as stable: it agrees every time; version
    // 2 has other weights: it never does.
    assert_eq!(
        metric(
            "version=\"3\"",
            "quiver_shadow_agreement_total",
            "agree=\"true\""
        )
        .await,
        30.0
    );
    assert_eq!(
        metric(
            "version=\"2\"",
            "quiver_shadow_agreement_total",
            "agree=\"false\""
        )
        .await,
        30.0
    );
    assert_eq!(
        metric(
            "version=\"2\"",
            "quiver_shadow_requests_total",
            "outcome=\"success\""
        )
        .await,
        30.0
    );
    // Pinned requests are nobody's users: no shadow copies.
    gw.post_json("/v2/models/h/versions/1/infer", &mlp_body(&[0.5; 16]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let n = gw
        .metric(
            "quiver_shadow_requests_total",
            &["model=\"h\"", "version=\"2\"", "outcome=\"success\""],
        )
        .await
        .unwrap();
    assert_eq!(n, 30.0);
}
