//! Scale-out, end to end: several real `quiver-gateway` processes on one
//! model registry in a real S3-compatible store (moto), publishing through
//! the same registry code the trainer uses. Versions and routing changes
//! reach every replica; one leader takes the guardrail's decisions on the
//! traffic of all and is replaced when it dies; concurrent writers lose no
//! update; an unchanged registry costs one conditional GET a poll and loads
//! nothing; a broken store or a bad version is named and never stops
//! serving what is loaded.

// The whole file is test code: a failed step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_contract::fleet::{INDEX_FILE, LEASE_FILE, Lease, RegistryIndex};
use quiver_contract::manifest::{Manifest, sha256_bytes};
use quiver_contract::routing::RoutingState;
use quiver_registry::{Registry, control};
use quiver_tests::s3::S3Server;
use quiver_tests::{
    Gateway, Reply, example_file, infer_keyed, publish_onnx, scratch, send, spawn_keyed_traffic,
    version_of, wait_routing,
};
use serde_json::{Value, json};

const TOKEN: &str = "fleet-token";
const BUCKET: &str = "quiver";

struct Fleet {
    s3: S3Server,
    url: String,
    reg: Registry,
    gateways: Vec<Arc<Gateway>>,
}

/// A store with `model` v1 (the mlp) under `config`, and `n` replicas on it.
async fn fleet(prefix: &str, model: &str, config: &str, n: usize, extra: &[(&str, &str)]) -> Fleet {
    let s3 = S3Server::start().unwrap();
    s3.create_bucket(BUCKET).unwrap();
    let reg = s3.registry(BUCKET, prefix).unwrap();
    reg.check().unwrap();
    control::write_config(&reg, model, config).unwrap();
    publish_onnx(&reg, model, 1, &example_file("mlp", 1)).unwrap();
    let url = s3.url(BUCKET, prefix);
    let mut gateways = Vec::new();
    for i in 0..n {
        gateways.push(Arc::new(
            start_replica(&s3, &url, &format!("{prefix}-g{i}"), extra).await,
        ));
    }
    Fleet {
        s3,
        url,
        reg,
        gateways,
    }
}

async fn start_replica(s3: &S3Server, url: &str, id: &str, extra: &[(&str, &str)]) -> Gateway {
    let cache = scratch(&format!("cache-{id}")).unwrap();
    let cache = cache.to_string_lossy().into_owned();
    let env_owned = s3.env();
    let mut env: Vec<(&str, &str)> = env_owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.extend([
        ("QUIVER_FLEET__REPLICA_ID", id),
        ("QUIVER_REPOSITORY__CACHE_DIR", cache.as_str()),
        ("QUIVER_REPOSITORY__POLL_INTERVAL_MS", "200"),
        ("QUIVER_ROUTING__ROLLOUT_INTERVAL_MS", "100"),
        ("QUIVER_FLEET__REPORT_INTERVAL_MS", "200"),
        ("QUIVER_ADMIN_TOKEN", TOKEN),
    ]);
    env.extend_from_slice(extra);
    let gw = Gateway::start_at(url, &[], &env).unwrap();
    gw.wait_ready().await.unwrap();
    gw
}

async fn admin(gw: &Gateway, method: &str, path: &str, body: Value) -> Reply {
    send(
        gw.addr,
        method,
        path,
        &[("authorization", format!("Bearer {TOKEN}"))],
        Bytes::from(serde_json::to_vec(&body).unwrap()),
    )
    .await
    .unwrap()
}

async fn routing(gw: &Gateway, model: &str) -> Value {
    gw.get(&format!("/v2/models/{model}/routing"))
        .await
        .unwrap()
        .json()
}

/// Whether `gw` serves `model` version `v` (pinned).
async fn serves(gw: &Gateway, model: &str, v: u64) -> bool {
    gw.get(&format!("/v2/models/{model}/versions/{v}/ready"))
        .await
        .is_ok_and(|r| r.status == 200)
}

const STATIC_CONFIG: &str = "version_policy = \"all\"\nmax_batch_size = 32\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_versions_routing_and_unloads_in_s3() {
    let f = fleet(
        "follow",
        "m",
        STATIC_CONFIG,
        3,
        &[("QUIVER_REPOSITORY__FULL_SCAN_INTERVAL_MS", "1000")],
    )
    .await;
    // A version published into S3 reaches every replica.
    let published = Instant::now();
    publish_onnx(&f.reg, "m", 2, &example_file("mlp", 2)).unwrap();
    for gw in &f.gateways {
        let until = Instant::now() + Duration::from_secs(30);
        while !serves(gw, "m", 2).await {
            assert!(
                Instant::now() < until,
                "v2 never served; log:\n{}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "published → served by 3 replicas: {:?}",
        published.elapsed()
    );

    // A canary set through replica 0 routes on replicas 1 and 2.
    let r = admin(
        &f.gateways[0],
        "PUT",
        "/v2/models/m/routing",
        json!({"schema": 2, "stable": 1, "canary": {"2": 0.5}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for gw in &f.gateways[1..] {
        wait_routing(gw, "m", "the canary on another replica", |v| {
            v["routing"]["canary"] == json!({"2": 0.5})
        })
        .await;
        let mut versions = std::collections::BTreeSet::new();
        for i in 0..60 {
            let r = infer_keyed(gw, "m", &format!("k{i}"), &[0.3; 16]).await;
            assert_eq!(r.status, 200, "{}", r.text());
            versions.insert(version_of(&r));
        }
        assert_eq!(versions.into_iter().collect::<Vec<_>>(), vec![1, 2]);
    }

    // An unload through replica 1 holds on every replica, and across a
    // restart; a load through replica 2 undoes it everywhere.
    let r = admin(
        &f.gateways[1],
        "POST",
        "/v2/repository/models/m/unload",
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for gw in &f.gateways {
        let until = Instant::now() + Duration::from_secs(30);
        while serves(gw, "m", 1).await {
            assert!(
                Instant::now() < until,
                "still serving after the unload; log:\n{}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let stored =
        f.s3.get_object(BUCKET, "follow/m/routing.json")
            .unwrap()
            .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&stored).unwrap()["unloaded"],
        true
    );
    let restarted = Gateway::start_at(
        &f.url,
        &[],
        &f.s3
            .env()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([
                ("QUIVER_FLEET__REPLICA_ID", "follow-restarted"),
                ("QUIVER_REPOSITORY__POLL_INTERVAL_MS", "200"),
            ])
            .collect::<Vec<_>>(),
    )
    .unwrap();
    // The restarted replica has read the model, and holds it unloaded.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let index = restarted
            .post_json("/v2/repository/index", &json!({}))
            .await
            .unwrap()
            .json();
        let seen = index.as_array().unwrap().iter().any(|e| {
            e["name"] == "m" && e["state"] == "UNAVAILABLE" && e["reason"] == "model unloaded"
        });
        if seen {
            break;
        }
        assert!(
            Instant::now() < until,
            "the restart never read the model: {index}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !serves(&restarted, "m", 1).await,
        "a restart forgot the unload"
    );
    drop(restarted);
    let r = admin(
        &f.gateways[2],
        "POST",
        "/v2/repository/models/m/load",
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for gw in &f.gateways {
        let until = Instant::now() + Duration::from_secs(30);
        while !serves(gw, "m", 2).await {
            assert!(
                Instant::now() < until,
                "not served after the load; log:\n{}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A version uploaded by hand, without the index, is found by the
    // periodic full listing.
    let v3 = example_file("mlp", 1);
    let mut m = Manifest::new("m", 3);
    m.sha256.insert("model.onnx".into(), sha256_bytes(&v3));
    f.s3.put_object(BUCKET, "follow/m/3/model.onnx", &v3)
        .unwrap();
    f.s3.put_object(BUCKET, "follow/m/3/manifest.json", &m.to_json())
        .unwrap();
    for gw in &f.gateways {
        let until = Instant::now() + Duration::from_secs(30);
        while !serves(gw, "m", 3).await {
            assert!(
                Instant::now() < until,
                "a hand upload never served; log:\n{}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Every replica shows the same history, with who decided.
    let v = routing(&f.gateways[0], "m").await;
    let decisions: Vec<(&str, &str)> = v["rollout"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["decision"].as_str().unwrap(), h["by"].as_str().unwrap()))
        .collect();
    assert_eq!(
        decisions,
        vec![
            ("set", "api@follow-g0"),
            ("unload", "api@follow-g1"),
            ("load", "api@follow-g2")
        ]
    );
}

const ROLLOUT_CONFIG: &str = r#"
version_policy = "all"
[rollout]
enabled = true
steps = [0.25, 0.5, 1.0]
min_requests = 60
min_dwell_ms = 1500
max_error_rate_increase = 0.05
# Replicas share two cores with the compiler and each other: latency is
# noise here, errors are what the guardrail is tested on.
p99_slack_ms = 500.0
"#;

fn history(v: &Value) -> Vec<Value> {
    v["rollout"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_once_by_the_leader_on_every_replicas_traffic() {
    let f = fleet("rollback", "r", ROLLOUT_CONFIG, 3, &[]).await;
    wait_routing(&f.gateways[0], "r", "the first stable version", |v| {
        v["routing"]["stable"] == 1
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = spawn_keyed_traffic(f.gateways.clone(), "r", 0.5, 11, stop.clone());
    // The flaky model has the mlp's interface; half the requests break it.
    publish_onnx(&f.reg, "r", 2, &example_file("flaky", 1)).unwrap();
    let v = wait_routing(&f.gateways[2], "r", "the rollback", |v| {
        v["routing"]["rolled_back"] == json!([2])
    })
    .await;
    // Let every replica's guardrail run a few more times: none may decide
    // again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = traffic.await.unwrap();
    assert!(
        seen.iter().any(|(v, s)| *v == 2 && *s == 500),
        "the canary never failed"
    );
    assert_eq!(v["routing"]["stable"], 1);
    let after = routing(&f.gateways[0], "r").await;
    let rollbacks: Vec<Value> = history(&after)
        .into_iter()
        .filter(|h| h["decision"] == "rollback")
        .collect();
    assert_eq!(rollbacks.len(), 1, "{after}");
    let rb = &rollbacks[0];
    let by = rb["by"].as_str().unwrap();
    assert!(by.starts_with("rollout-guardrail@rollback-g"), "{by}");
    assert_eq!(
        rb["replicas"], 3,
        "the leader judged every replica's traffic: {rb}"
    );
    assert!(rb["requests"].as_u64().unwrap() >= 60, "{rb}");
    // Exactly one replica decided it, once.
    let mut decided = 0.0;
    for gw in &f.gateways {
        decided += gw
            .metric(
                "quiver_rollout_decisions_total",
                &["model=\"r\"", "decision=\"rollback\""],
            )
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(decided, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_the_rollout_completes() {
    let extra = [("QUIVER_FLEET__LEASE_TTL_MS", "2000")];
    let f = fleet("failover", "p", ROLLOUT_CONFIG, 3, &extra).await;
    wait_routing(&f.gateways[0], "p", "the first stable version", |v| {
        v["routing"]["stable"] == 1
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let all = f.gateways.clone();
    let traffic = spawn_keyed_traffic(all, "p", 0.0, 11, stop.clone());
    publish_onnx(&f.reg, "p", 2, &example_file("mlp", 2)).unwrap();
    // Mid-rollout: the canary has taken its first step.
    wait_routing(&f.gateways[0], "p", "the first step", |v| {
        history(v).iter().any(|h| h["decision"] == "advance")
    })
    .await;
    let lease = Lease::parse(&f.reg.get(LEASE_FILE).unwrap().unwrap().bytes).unwrap();
    let leader: usize = lease
        .holder
        .trim_start_matches("failover-g")
        .parse()
        .unwrap();
    // SIGKILL: no lease handed over, no report withdrawn. The traffic task
    // holds the gateways too, so the process is killed by signal.
    let killed = Instant::now();
    let mut gateways = f.gateways;
    let dead = gateways.remove(leader);
    std::process::Command::new("kill")
        .args(["-KILL", &dead.pid().to_string()])
        .status()
        .unwrap();
    let survivor = &gateways[0];
    let v = wait_routing(survivor, "p", "the promotion after failover", |v| {
        v["routing"]["stable"] == 2
    })
    .await;
    let took = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.await;
    let new_lease = Lease::parse(&f.reg.get(LEASE_FILE).unwrap().unwrap().bytes).unwrap();
    assert_ne!(new_lease.holder, lease.holder);
    assert!(new_lease.term > lease.term);
    let h = history(&v);
    let last = h.last().unwrap();
    assert_eq!(last["decision"], "promote", "{v}");
    assert!(
        last["by"].as_str().unwrap().contains(&new_lease.holder),
        "the new leader promoted: {last}"
    );
    eprintln!(
        "leader killed → rollout completed by {}: {took:?}",
        new_lease.holder
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_through_replicas_and_the_registry_lose_no_update() {
    let f = fleet("race", "c", STATIC_CONFIG, 2, &[]).await;
    publish_onnx(&f.reg, "c", 2, &example_file("mlp", 2)).unwrap();
    for gw in &f.gateways {
        let until = Instant::now() + Duration::from_secs(30);
        while !serves(gw, "c", 2).await {
            assert!(Instant::now() < until);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let index_rev = |reg: &Registry| {
        RegistryIndex::parse(&reg.get(INDEX_FILE).unwrap().unwrap().bytes)
            .unwrap()
            .models
            .get("c")
            .copied()
            .unwrap_or(0)
    };
    let before = index_rev(&f.reg);
    const EACH: usize = 100;
    // Two writers through the admin API of two replicas, one through the
    // registry as the trainer writes: each change replaces the stable
    // version and names itself in the reason.
    let mut tasks = Vec::new();
    for (w, gw) in f.gateways.iter().enumerate() {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let body = json!({"schema": 2, "stable": 1 + (i % 2) as u64,
                    "reason": format!("api{w}-{i}"), "updated_by": format!("writer-{w}")});
                let r = admin(&gw, "PUT", "/v2/models/c/routing", body).await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        }));
    }
    let reg = f.reg.clone();
    let trainer = tokio::task::spawn_blocking(move || {
        for i in 0..EACH {
            control::update_routing(&reg, "c", false, |s| {
                s.stable = Some(1 + (i % 2) as u64);
                s.reason = Some(format!("trainer-{i}"));
                s.updated_by = "quiver-trainer".into();
                Ok(())
            })
            .unwrap();
        }
    });
    for t in tasks {
        t.await.unwrap();
    }
    trainer.await.unwrap();
    // Every write landed exactly once: the index revision moved once per
    // write, and the stored state is one of the writes, intact.
    assert_eq!(index_rev(&f.reg) - before, 3 * EACH as u64);
    let (stored, _) = control::read_routing(&f.reg, "c").unwrap();
    let reason = stored.reason.clone().unwrap();
    let written_by_it = match reason.split_once('-').unwrap().0 {
        "api0" => "writer-0",
        "api1" => "writer-1",
        "trainer" => "quiver-trainer",
        other => panic!("not a written reason: {other}"),
    };
    assert_eq!(stored.updated_by, written_by_it);
    let n: usize = reason.rsplit('-').next().unwrap().parse().unwrap();
    assert_eq!(stored.stable, Some(1 + (n % 2) as u64));
    // Both replicas apply the final state.
    for gw in &f.gateways {
        wait_routing(gw, "c", "the final state", |v| {
            v["routing"]["reason"] == reason.as_str()
        })
        .await;
    }
    let _: RoutingState = stored;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_registry_costs_one_conditional_get_a_poll_and_loads_nothing() {
    let extra = [("QUIVER_REPOSITORY__POLL_INTERVAL_MS", "10")];
    let f = fleet("polls", "m", STATIC_CONFIG, 1, &extra).await;
    let gw = &f.gateways[0];
    let loads = || async {
        gw.metric("quiver_model_loads_total", &["model=\"m\""])
            .await
            .unwrap_or(0.0)
    };
    let polls = || async {
        gw.metric("quiver_registry_polls_total", &["result=\"unchanged\""])
            .await
            .unwrap_or(0.0)
    };
    let loads_before = loads().await;
    let polls_before = polls().await;
    f.s3.reset_requests().unwrap();
    let until = Instant::now() + Duration::from_secs(120);
    while polls().await - polls_before < 1000.0 {
        assert!(Instant::now() < until, "fewer than 1000 polls in 2 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let polled = polls().await - polls_before;
    let requests = f.s3.requests().unwrap();
    assert_eq!(
        loads().await,
        loads_before,
        "an unchanged registry reloaded a version"
    );
    // Conditional GETs of the index, plus the lease's renewals; no listing,
    // no download.
    let index_gets = requests
        .iter()
        .filter(|r| r.method == "GET" && r.target.contains("index.json"))
        .count() as f64;
    let lists = requests.iter().filter(|r| r.is_list()).count();
    let others = requests.len() as f64 - index_gets;
    eprintln!(
        "{polled} polls: {} store requests, {index_gets} index GETs, {lists} listings",
        requests.len()
    );
    assert!(
        index_gets >= polled * 0.9,
        "{index_gets} index GETs for {polled} polls"
    );
    assert_eq!(lists, 0, "an unchanged registry was listed");
    assert!(
        others <= polled * 0.05,
        "{others} other requests for {polled} polls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_store_or_version_is_named_and_serving_goes_on() {
    // Unreachable store: the gateway starts, unready, and says why.
    let gw = Gateway::start_at(
        "s3://quiver/models",
        &[],
        &[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("QUIVER_REPOSITORY__S3__TIMEOUT_MS", "2000"),
        ],
    )
    .unwrap();
    let r = gw.get("/v2/health/ready").await.unwrap();
    assert_ne!(r.status, 200);
    wait_log(&gw, "unreachable").await;

    // Wrong credentials.
    let refusing = S3Server::start_refusing_credentials().unwrap();
    let env_owned = refusing.env();
    let env: Vec<(&str, &str)> = env_owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let gw = Gateway::start_at(&refusing.url(BUCKET, "models"), &[], &env).unwrap();
    wait_log(&gw, "refused the credentials").await;

    // A missing bucket.
    let s3 = S3Server::start().unwrap();
    let env_owned = s3.env();
    let env: Vec<(&str, &str)> = env_owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let gw = Gateway::start_at(&s3.url("no-such-bucket", "models"), &[], &env).unwrap();
    wait_log(&gw, "bucket 'no-such-bucket' does not exist").await;
    drop(gw);

    // A version whose file does not match its manifest never serves; the
    // version in place goes on.
    let mut f = fleet("broken", "m", STATIC_CONFIG, 1, &[]).await;
    let gw = f.gateways[0].clone();
    let gw = &*gw;
    let mut m = Manifest::new("m", 2);
    m.sha256
        .insert("model.onnx".into(), sha256_bytes(b"something else"));
    control::publish_version(&f.reg, &m, &[("model.onnx", &example_file("mlp", 2))]).unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        let index = gw
            .post_json("/v2/repository/index", &json!({}))
            .await
            .unwrap()
            .json();
        let v2 = index
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "m" && e["version"] == "2")
            .cloned();
        if let Some(v2) = v2
            && v2["state"] == "UNAVAILABLE"
            && v2["reason"].is_string()
        {
            break v2["reason"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < until, "v2 never refused: {index}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        reason.contains("checksum mismatch for model.onnx"),
        "{reason}"
    );
    let r = infer_keyed(gw, "m", "k", &[0.1; 16]).await;
    assert_eq!((r.status, version_of(&r)), (200, 1));

    // The store goes away: serving goes on with what is loaded.
    f.s3.kill();
    wait_log(gw, "cannot read the model repository").await;
    for i in 0..20 {
        let r = infer_keyed(gw, "m", &format!("k{i}"), &[0.1; 16]).await;
        assert_eq!((r.status, version_of(&r)), (200, 1), "{}", r.text());
    }
    assert_eq!(gw.get("/v2/health/ready").await.unwrap().status, 200);
}

async fn wait_log(gw: &Gateway, needle: &str) {
    let until = Instant::now() + Duration::from_secs(60);
    while !gw.log().contains(needle) {
        assert!(
            Instant::now() < until,
            "log never said '{needle}':\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
