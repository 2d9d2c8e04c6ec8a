//! Measures the fleet on a real S3-compatible store (moto): three real
//! gateway replicas with default polling (1 s), one publisher using the
//! registry code the trainer uses.
//!
//! - publish → served by all replicas, and routing change (through one
//!   replica's admin API) → applied by all, p50 and max over 50 each;
//! - object-store requests per replica per poll, idle, with 1 and 50 models;
//! - leader failover: SIGKILL of the lease holder → another holds it;
//! - each replica's RSS and idle CPU while polling.
//!
//! ```sh
//! eval "$(scripts/setup.sh)"; export ORT_DYLIB_PATH QUIVER_MOTO
//! cargo build --release --bins && cargo run --release -p quiver-tests --example fleet_scale
//! ```
//!
//! Prints a Markdown report and writes it to `bench/results/fleet/fleet.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_contract::fleet::{LEASE_FILE, Lease};
use quiver_registry::control;
use quiver_tests::s3::S3Server;
use quiver_tests::{Gateway, Rng, example_models, publish_onnx, root, scratch, send};
use serde_json::json;

const BUCKET: &str = "quiver";
const REPLICAS: usize = 3;
const CHANGES: usize = 50;
const TOKEN: &str = "measure";

fn quantiles(mut xs: Vec<Duration>) -> (f64, f64) {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(xs[xs.len() / 2]), ms(*xs.last().unwrap()))
}

/// (RSS in MiB, CPU seconds used) of a process.
fn usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name: utime and stime are 14th and 15th.
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    (rss_kb / 1024.0, ticks / 100.0)
}

async fn ready(gw: &Gateway, model: &str, v: u64) -> bool {
    gw.get(&format!("/v2/models/{model}/versions/{v}/ready"))
        .await
        .is_ok_and(|r| r.status == 200)
}

/// Idle store requests per replica per poll over `secs`.
async fn idle_requests(s3: &S3Server, secs: u64) -> (f64, usize) {
    s3.reset_requests().unwrap();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let requests = s3.requests().unwrap();
    let polls = (secs * REPLICAS as u64) as f64; // 1 poll per second each
    (requests.len() as f64 / polls, requests.len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let s3 = S3Server::start().unwrap();
    s3.create_bucket(BUCKET).unwrap();
    let url = s3.url(BUCKET, "models");
    let reg = s3.registry(BUCKET, "models").unwrap();
    let v1 = std::fs::read(example_models().join("mlp/1/model.onnx")).unwrap();
    let v2 = std::fs::read(example_models().join("mlp/2/model.onnx")).unwrap();
    control::write_config(&reg, "m", "version_policy = { latest = 2 }\n").unwrap();
    publish_onnx(&reg, "m", 1, &v1).unwrap();

    let env_owned = s3.env();
    let mut gateways = Vec::new();
    for i in 0..REPLICAS {
        let id = format!("replica-{i}");
        let cache = scratch(&format!("measure-cache-{i}")).unwrap();
        let cache = cache.to_string_lossy().into_owned();
        let mut env: Vec<(&str, &str)> = env_owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend([
            ("QUIVER_FLEET__REPLICA_ID", id.as_str()),
            ("QUIVER_REPOSITORY__CACHE_DIR", cache.as_str()),
            ("QUIVER_ADMIN_TOKEN", TOKEN),
        ]);
        let gw = Gateway::start_at(&url, &[], &env).unwrap();
        gw.wait_ready().await.unwrap();
        gateways.push(gw);
    }
    eprintln!("fleet: {REPLICAS} replicas ready on {url}");

    // Publish → served everywhere. Each change waits a random part of a
    // poll interval first, so changes do not fall in step with the polls.
    let mut rng = Rng::new(7);
    let mut jitter = || Duration::from_millis((rng.f32().abs() * 1000.0) as u64 % 1000);
    let mut publish_times = Vec::new();
    for n in 0..CHANGES as u64 {
        tokio::time::sleep(jitter()).await;
        let version = n + 2;
        let onnx = if n % 2 == 0 { &v2 } else { &v1 };
        let t = Instant::now();
        publish_onnx(&reg, "m", version, onnx).unwrap();
        for gw in &gateways {
            while !ready(gw, "m", version).await {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        publish_times.push(t.elapsed());
        eprintln!("publish {}/{CHANGES}: {:?}", n + 1, t.elapsed());
    }
    let last = CHANGES as u64 + 1;

    // Routing change through replica 0 → applied everywhere.
    let mut routing_times = Vec::new();
    for n in 0..CHANGES {
        let stable = if n % 2 == 0 { last } else { last - 1 };
        let marker = format!("change-{n}");
        let body = json!({"schema": 2, "stable": stable, "reason": marker});
        tokio::time::sleep(jitter()).await;
        let t = Instant::now();
        let r = send(
            gateways[0].addr,
            "PUT",
            "/v2/models/m/routing",
            &[("authorization", format!("Bearer {TOKEN}"))],
            Bytes::from(serde_json::to_vec(&body).unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        for gw in &gateways[1..] {
            loop {
                let v = gw.get("/v2/models/m/routing").await.unwrap().json();
                if v["routing"]["reason"] == marker.as_str() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        routing_times.push(t.elapsed());
        eprintln!("routing change {}/{CHANGES}: {:?}", n + 1, t.elapsed());
    }

    // Idle cost with one model, then with fifty.
    let (per_poll_1, total_1) = idle_requests(&s3, 30).await;
    for k in 1..50 {
        let name = format!("m{k:02}");
        control::write_config(&reg, &name, "version_policy = { latest = 1 }\n").unwrap();
        publish_onnx(&reg, &name, 1, &v1).unwrap();
    }
    for gw in &gateways {
        for k in 1..50 {
            while !ready(gw, &format!("m{k:02}"), 1).await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    eprintln!("50 models served by every replica");
    let before: Vec<(f64, f64)> = gateways.iter().map(|g| usage(g.pid())).collect();
    let (per_poll_50, total_50) = idle_requests(&s3, 30).await;
    let after: Vec<(f64, f64)> = gateways.iter().map(|g| usage(g.pid())).collect();
    let cpu: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.1 - b.1) / 30.0 * 100.0)
        .collect();
    let rss: Vec<f64> = after.iter().map(|a| a.0).collect();

    // Failover: SIGKILL the leader.
    let lease = Lease::parse(&reg.get(LEASE_FILE).unwrap().unwrap().bytes).unwrap();
    let leader: usize = lease.holder.trim_start_matches("replica-").parse().unwrap();
    let killed = Instant::now();
    std::process::Command::new("kill")
        .args(["-KILL", &gateways[leader].pid().to_string()])
        .status()
        .unwrap();
    let new_holder = loop {
        let l = Lease::parse(&reg.get(LEASE_FILE).unwrap().unwrap().bytes).unwrap();
        if l.holder != lease.holder {
            break l.holder;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let failover = killed.elapsed();

    let (p50_pub, max_pub) = quantiles(publish_times);
    let (p50_route, max_route) = quantiles(routing_times);
    let mut md = String::new();
    let _ = writeln!(md, "# Fleet on an S3-compatible store\n");
    let _ = writeln!(
        md,
        "{REPLICAS} `quiver-gateway` replicas (release build) on one registry in moto 5.2.5, \
         default polling (1 s), on one 2-core machine shared with the store and the driver. \
         Command: `cargo run --release -p quiver-tests --example fleet_scale`.\n"
    );
    let _ = writeln!(md, "| measure | p50 | max |\n|---|---:|---:|");
    let _ = writeln!(
        md,
        "| publish (files, manifest, index) → version ready on all {REPLICAS} replicas, {CHANGES} versions | {p50_pub:.0} ms | {max_pub:.0} ms |"
    );
    let _ = writeln!(
        md,
        "| routing change through replica 0's admin API → applied by the other replicas, {CHANGES} changes | {p50_route:.0} ms | {max_route:.0} ms |\n"
    );
    let _ = writeln!(md, "| idle fleet | 1 model | 50 models |\n|---|---:|---:|");
    let _ = writeln!(
        md,
        "| store requests per replica per poll (30 s, all requests counted by the store) | {per_poll_1:.2} ({total_1} requests) | {per_poll_50:.2} ({total_50} requests) |"
    );
    let _ = writeln!(
        md,
        "| replica RSS with 50 models loaded | | {} MiB |",
        rss.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    let _ = writeln!(
        md,
        "| replica CPU while idle and polling, 50 models | | {} % of one core |\n",
        cpu.iter()
            .map(|c| format!("{c:.1}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    let _ = writeln!(
        md,
        "Leader failover: the lease holder {} killed with SIGKILL; {new_holder} held the lease \
         {:.1} s later (lease 10 s, renewed every 3.3 s).",
        lease.holder,
        failover.as_secs_f64()
    );
    println!("{md}");
    let dir = root().join("bench/results/fleet");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("fleet.md"), md).unwrap();
}
