//! The prediction log and labels, end to end: the real gateway binary, a
//! real Kafka-protocol broker (nisshi), real HTTP on loopback. Without a
//! broker the same records go to the local log.

// The whole file is test code: a failed step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_contract::records::{self, LabelRecord, PredictionRecord};
use quiver_contract::segments::{self, LogPosition};
use quiver_tests::kafka::{Broker, read_topic};
use quiver_tests::{Gateway, Rng, copy_model, scratch};
use serde_json::{Value, json};

fn request(id: Option<&str>, rng: &mut Rng) -> Value {
    let x: Vec<f32> = (0..16).map(|_| rng.f32()).collect();
    let mut body =
        json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": x}]});
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    body
}

/// Sends `n` requests with ids `{prefix}{i}`, `concurrency` at a time;
/// returns the ids answered 200 and fails on any other answer.
async fn load(gw: &Gateway, prefix: &str, n: usize, concurrency: usize) -> Vec<String> {
    load_addr(gw.addr, prefix, n, concurrency).await
}

async fn load_addr(
    addr: std::net::SocketAddr,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> Vec<String> {
    let gw = Arc::new(addr);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (addr, next, prefix) = (Arc::clone(&gw), Arc::clone(&next), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(w as u64 + 1);
            let mut ok = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return ok;
                }
                let id = format!("{prefix}{i}");
                let body = request(Some(&id), &mut rng);
                let r = quiver_tests::send(
                    *addr,
                    "POST",
                    "/v2/models/mlp/infer",
                    &[("content-type", "application/json".into())],
                    body.to_string().into(),
                )
                .await
                .unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
                ok.push(id);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Posts labels; every one must be accepted.
async fn post_labels(gw: &Gateway, labels: Vec<Value>) {
    let n = labels.len();
    let r = gw
        .post_json("/v2/models/mlp/feedback", &json!({ "labels": labels }))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["accepted"], n);
}

fn mlp_repo(name: &str) -> std::path::PathBuf {
    let repo = scratch(name).unwrap();
    copy_model("mlp", &repo).unwrap();
    repo
}

fn local_records<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
    let mut out = Vec::new();
    let mut pos = LogPosition::default();
    loop {
        let b = segments::read_batch(dir, pos, 10_000, 64 << 20).unwrap();
        if b.records.is_empty() {
            return out;
        }
        assert_eq!(b.torn, 0);
        out.extend(
            b.records
                .iter()
                .map(|(_, r)| records::parse::<T>(r).unwrap()),
        );
        pos = b.next;
    }
}

fn count_ids<'a>(ids: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id.to_string()).or_insert(0) += 1;
    }
    m
}

#[tokio::test]
async fn without_a_broker_predictions_and_labels_go_to_the_local_log() {
    let repo = mlp_repo("kafka-local");
    let log_dir = scratch("kafka-local-log").unwrap();
    let mut gw = Gateway::start_ready(
        &repo,
        &[],
        &[("QUIVER_LOG__DIR", log_dir.to_str().unwrap())],
    )
    .await
    .unwrap();
    let ids = load(&gw, "local-", 300, 8).await;

    // A request without an id gets one, in the body and a header, and it
    // is the id the log and labels use.
    let r = gw
        .post_json("/v2/models/mlp/infer", &request(None, &mut Rng::new(9)))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let made_up = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("x-quiver-request-id"), Some(made_up.as_str()));
    assert_eq!(made_up.len(), 32);

    let labels: Vec<Value> = ids
        .iter()
        .take(100)
        .map(|id| json!({"id": id, "label": 1}))
        .chain([json!({"id": made_up, "label": [0]})])
        .collect();
    post_labels(&gw, labels).await;

    // Bad labels are named and nothing of the call is taken.
    let r = gw
        .post_json(
            "/v2/models/mlp/feedback",
            &json!({"labels": [{"id": "a", "label": 1}, {"id": "b", "label": "x"}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.error().contains("invalid JSON"), "{}", r.error());
    let r = gw
        .post_json(
            "/v2/models/nope/feedback",
            &json!({"labels": [{"id": "a", "label": 1}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);

    // Shutdown flushes the log.
    gw.terminate().unwrap();
    assert_eq!(gw.wait_exit(Duration::from_secs(30)).unwrap(), 0);

    let preds: Vec<PredictionRecord> = local_records(&log_dir.join("quiver.predictions"));
    let counts = count_ids(preds.iter().map(|p| p.id.as_str()));
    assert_eq!(preds.len(), 301, "every prediction exactly once");
    for id in ids.iter().chain([&made_up]) {
        assert_eq!(counts.get(id), Some(&1), "{id}");
    }
    let p = &preds[0];
    assert_eq!(
        (p.model.as_str(), p.version, p.source.as_str()),
        ("mlp", 2, "http")
    );
    assert_eq!(p.inputs[0].shape, vec![1, 16]);
    assert!(!p.outputs.is_empty());
    let labels: Vec<LabelRecord> = local_records(&log_dir.join("quiver.labels"));
    assert_eq!(labels.len(), 101);
    assert!(labels.iter().any(|l| l.id == made_up));
}

async fn kafka_gateway(
    name: &str,
    broker: &Broker,
    extra: &[(&str, &str)],
) -> (Gateway, std::path::PathBuf) {
    let repo = mlp_repo(name);
    let spool = scratch(&format!("{name}-spool")).unwrap();
    let bootstrap = broker.bootstrap();
    let mut env = vec![
        ("QUIVER_KAFKA__BROKERS", bootstrap.as_str()),
        ("QUIVER_KAFKA__SPOOL_DIR", spool.to_str().unwrap()),
        ("QUIVER_KAFKA__RETRY_INTERVAL_MS", "200"),
    ];
    env.extend_from_slice(extra);
    let gw = Gateway::start_ready(&repo, &[], &env).await.unwrap();
    (gw, spool)
}

#[tokio::test]
async fn every_prediction_reaches_the_topic_exactly_once_under_load() {
    let broker = Broker::start().unwrap();
    let (gw, _spool) = kafka_gateway("kafka-once", &broker, &[]).await;
    let ids = load(&gw, "once-", 2000, 16).await;
    let labels: Vec<Value> = ids
        .iter()
        .take(500)
        .map(|id| json!({"id": id, "label": 0}))
        .collect();
    post_labels(&gw, labels).await;

    let got = read_topic(
        &broker.bootstrap(),
        "quiver.predictions",
        ids.len(),
        Duration::from_secs(60),
    )
    .unwrap();
    // Anything beyond would be a duplicate; give it a moment to show up.
    let extra = read_topic(
        &broker.bootstrap(),
        "quiver.predictions",
        ids.len() + 1,
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(extra.len(), ids.len(), "no duplicates");
    let counts = count_ids(
        got.iter()
            .map(|r| std::str::from_utf8(r.key.as_deref().unwrap()).unwrap()),
    );
    assert_eq!(counts.len(), ids.len());
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id}");
    }
    let first: PredictionRecord = records::parse(&got[0].value).unwrap();
    assert_eq!(got[0].header("quiver-schema"), Some(&b"1"[..]));
    assert_eq!(first.model, "mlp");
    let labels = read_topic(
        &broker.bootstrap(),
        "quiver.labels",
        500,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(labels.len(), 500);
    let l: LabelRecord = records::parse(&labels[0].value).unwrap();
    assert!(l.id.starts_with("once-"));
    assert_eq!(
        gw.metric("quiver_log_records_total", &["outcome=\"dropped\""])
            .await
            .unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        gw.metric(
            "quiver_log_records_total",
            &["stream=\"predictions\"", "outcome=\"produced\""]
        )
        .await
        .unwrap(),
        2000.0
    );
}

/// Reads the predictions topic continuously, collecting keys. Setting
/// `restart` makes it read again from the beginning: a fresh broker's
/// offsets start again at 0, and a reader positioned past them would skip
/// the first records.
fn spawn_reader(
    bootstrap: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    restart: Arc<std::sync::atomic::AtomicBool>,
) -> (Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let handle = std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "quiver-tests-outage-reader")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "20")
            .set("topic.metadata.refresh.interval.ms", "500")
            .create()
            .unwrap();
        let mut assigned = false;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if restart.swap(false, std::sync::atomic::Ordering::Relaxed) {
                assigned = false;
            }
            if !assigned {
                if let Ok(md) =
                    consumer.fetch_metadata(Some("quiver.predictions"), Duration::from_secs(1))
                    && let Some(t) = md.topics().first()
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                {
                    let mut tpl = rdkafka::TopicPartitionList::new();
                    for p in t.partitions() {
                        tpl.add_partition_offset(
                            "quiver.predictions",
                            p.id(),
                            rdkafka::Offset::Beginning,
                        )
                        .unwrap();
                    }
                    consumer.assign(&tpl).unwrap();
                    assigned = true;
                } else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50))
                && let Some(k) = m.key()
            {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(k).into_owned());
            }
        }
    });
    (seen, handle)
}

#[tokio::test]
async fn a_broker_outage_is_spooled_and_replayed_with_no_failed_request() {
    let mut broker = Broker::start().unwrap();
    let (mut gw, spool) = kafka_gateway(
        "kafka-outage",
        &broker,
        // Short timeouts so the outage is noticed within the test.
        &[("QUIVER_KAFKA__PRODUCER__message.timeout.ms", "2000")],
    )
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (seen, reader) = spawn_reader(
        broker.bootstrap(),
        Arc::clone(&stop),
        Arc::clone(&restarted),
    );

    let before = load(&gw, "pre-", 1500, 8).await;
    // Kill mid-load: a second wave is in flight while the broker dies.
    let wave = {
        let addr = gw.addr;
        tokio::spawn(async move { load_addr(addr, "mid-", 1500, 8).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    broker.kill();
    let killed_at = Instant::now();
    let mid = wave.await.unwrap();
    // Requests sent after the kill cannot have reached the old broker.
    let during = load(&gw, "outage-", 1500, 8).await;
    // Wait until the gateway has noticed the outage and spools.
    let until = Instant::now() + Duration::from_secs(30);
    while gw
        .metric(
            "quiver_log_records_total",
            &["stream=\"predictions\"", "outcome=\"spooled\""],
        )
        .await
        .unwrap_or(0.0)
        == 0.0
    {
        assert!(
            Instant::now() < until,
            "the gateway never spooled; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked_by_old = gw
        .metric(
            "quiver_log_records_total",
            &["stream=\"predictions\"", "outcome=\"produced\""],
        )
        .await
        .unwrap_or(0.0) as usize;
    let read_from_old: BTreeSet<String> = seen.lock().unwrap().iter().cloned().collect();
    let spooled_bytes = gw
        .metric("quiver_log_spool_bytes", &["stream=\"predictions\""])
        .await
        .unwrap();
    assert!(spooled_bytes > 0.0);
    eprintln!(
        "outage after {:?}: old broker confirmed {acked_by_old}, reader saw {}",
        killed_at.elapsed(),
        read_from_old.len()
    );

    broker.restart().unwrap();
    restarted.store(true, std::sync::atomic::Ordering::Relaxed);
    let after = load(&gw, "post-", 1000, 8).await;
    // Replay done: the gateway sends directly again and the spool is empty.
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let spooling = gw.metric("quiver_log_spooling", &[]).await.unwrap_or(1.0);
        if spooling == 0.0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "spool never drained; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_served: Vec<&String> = before
        .iter()
        .chain(&mid)
        .chain(&during)
        .chain(&after)
        .collect();
    let until = Instant::now() + Duration::from_secs(60);
    let must_arrive: BTreeSet<&String> = during.iter().chain(&after).collect();
    loop {
        let got: BTreeSet<String> = seen.lock().unwrap().iter().cloned().collect();
        if must_arrive.iter().all(|id| got.contains(*id)) || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    let counts = count_ids(seen.iter().map(String::as_str));
    let missing: Vec<&&String> = all_served
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    let replayed = gw
        .metric(
            "quiver_log_records_total",
            &["stream=\"predictions\"", "outcome=\"replayed\""],
        )
        .await
        .unwrap();
    let resent = gw
        .metric(
            "quiver_log_records_total",
            &["stream=\"predictions\"", "outcome=\"resent\""],
        )
        .await
        .unwrap_or(0.0);
    eprintln!(
        "served {}, distinct in topics {}, duplicates {duplicates}, replayed {replayed}, resent {resent}, missing {} (lost with the old broker's memory)",
        all_served.len(),
        counts.len(),
        missing.len()
    );
    assert!(replayed > 0.0);
    // Nothing sent after the kill is missing: it was spooled and replayed.
    for id in &missing {
        assert!(
            !must_arrive.contains(**id),
            "{id} was served after the kill and never reached the topic"
        );
    }
    // What is missing from before the kill is at most what the old broker
    // confirmed and the reader had not fetched when it died: the broker's
    // loss (in-memory storage), not the gateway's.
    assert!(
        missing.len() <= acked_by_old.saturating_sub(read_from_old.len()),
        "{} missing, but the old broker confirmed only {} more than the reader saw",
        missing.len(),
        acked_by_old.saturating_sub(read_from_old.len())
    );
    assert_eq!(
        gw.metric("quiver_log_records_total", &["outcome=\"dropped\""])
            .await
            .unwrap_or(0.0),
        0.0
    );
    gw.terminate().unwrap();
    assert_eq!(gw.wait_exit(Duration::from_secs(30)).unwrap(), 0);
    let _ = std::fs::remove_dir_all(spool);
}

fn ingress_request(id: &str, model: &str, x: &[f32]) -> Vec<u8> {
    json!({"model_name": model, "id": id, "inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": x}]})
        .to_string()
        .into_bytes()
}

/// A gateway with ingress on, whose mlp queue holds only 2 requests, so
/// ingress must pause and wait instead of failing.
async fn ingress_gateway(
    name: &str,
    broker: &Broker,
    group: &str,
) -> (Gateway, std::path::PathBuf) {
    let repo = mlp_repo(name);
    let config = repo.join("mlp/config.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_queue_size = 1024", "max_queue_size = 2");
    std::fs::write(&config, text).unwrap();
    let spool = scratch(&format!("{name}-spool")).unwrap();
    let gw = Gateway::start_ready(
        &repo,
        &[],
        &[
            ("QUIVER_KAFKA__BROKERS", broker.bootstrap().as_str()),
            ("QUIVER_KAFKA__SPOOL_DIR", spool.to_str().unwrap()),
            ("QUIVER_KAFKA__INGRESS__ENABLED", "true"),
            ("QUIVER_KAFKA__INGRESS__GROUP_ID", group),
            ("QUIVER_KAFKA__INGRESS__MAX_IN_FLIGHT", "64"),
        ],
    )
    .await
    .unwrap();
    (gw, repo)
}

fn correlation(r: &quiver_tests::kafka::Record) -> String {
    String::from_utf8(r.header("quiver-correlation-id").unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn ingress_answers_every_request_and_dead_letters_unreadable_ones() {
    let broker = Broker::start().unwrap();
    let (gw, _repo) = ingress_gateway("ingress-answers", &broker, "ingress-answers").await;
    let mut rng = Rng::new(5);
    let inputs: Vec<Vec<f32>> = (0..400)
        .map(|_| (0..16).map(|_| rng.f32()).collect())
        .collect();
    let ids: Vec<String> = (0..inputs.len()).map(|i| format!("k{i}")).collect();
    let mut outgoing: Vec<quiver_tests::kafka::Outgoing> = ids
        .iter()
        .zip(&inputs)
        .enumerate()
        .map(|(i, (id, x))| quiver_tests::kafka::Outgoing {
            // Half name the correlation id in a header, half only in the key.
            key: Some(id.as_str()),
            value: ingress_request(&format!("body-{i}"), "mlp", x),
            headers: if i % 2 == 0 {
                vec![("quiver-correlation-id", id.as_str())]
            } else {
                vec![]
            },
        })
        .collect();
    outgoing.push(quiver_tests::kafka::Outgoing {
        key: Some("bad-json"),
        value: b"{not json".to_vec(),
        headers: vec![],
    });
    outgoing.push(quiver_tests::kafka::Outgoing {
        key: Some("no-model"),
        value: br#"{"inputs": []}"#.to_vec(),
        headers: vec![],
    });
    outgoing.push(quiver_tests::kafka::Outgoing {
        key: Some("unknown-model"),
        value: ingress_request("u", "nope", &inputs[0]),
        headers: vec![],
    });
    quiver_tests::kafka::produce(&broker.bootstrap(), "quiver.requests", &outgoing).unwrap();

    let responses = read_topic(
        &broker.bootstrap(),
        "quiver.responses",
        ids.len() + 1,
        Duration::from_secs(90),
    )
    .unwrap();
    assert_eq!(responses.len(), ids.len() + 1, "log:\n{}", gw.log());
    let by_id: BTreeMap<String, &quiver_tests::kafka::Record> =
        responses.iter().map(|r| (correlation(r), r)).collect();
    // Every answer equals the HTTP answer for the same input.
    for (i, (id, x)) in ids.iter().zip(&inputs).enumerate() {
        let r = by_id
            .get(id)
            .unwrap_or_else(|| panic!("no answer for {id}"));
        assert_eq!(r.key.as_deref(), Some(id.as_bytes()));
        assert_eq!(r.header("quiver-status"), Some(&b"200"[..]));
        let body: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(body["id"], format!("body-{i}"));
        if i % 50 == 0 {
            let http = gw
                .post_json("/v2/models/mlp/infer", &json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": x}]}))
                .await
                .unwrap()
                .json();
            assert_eq!(body["outputs"], http["outputs"]);
        }
    }
    let unknown = by_id.get("unknown-model").unwrap();
    assert_eq!(unknown.header("quiver-status"), Some(&b"404"[..]));
    assert!(String::from_utf8_lossy(&unknown.value).contains("unknown model"));

    let dead = read_topic(
        &broker.bootstrap(),
        "quiver.requests.dlq",
        2,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(dead.len(), 2);
    let keys: BTreeSet<&[u8]> = dead.iter().map(|r| r.key.as_deref().unwrap()).collect();
    assert_eq!(keys, BTreeSet::from([&b"bad-json"[..], &b"no-model"[..]]));
    for d in &dead {
        let why = String::from_utf8_lossy(d.header("quiver-error").unwrap()).into_owned();
        assert!(why.contains("not an ingress request"), "{why}");
    }
    // The small queue filled: ingress paused instead of failing requests.
    let pauses = gw
        .metric("quiver_ingress_pauses_total", &[])
        .await
        .unwrap_or(0.0);
    eprintln!("ingress paused {pauses} times");
    assert!(pauses > 0.0);
    assert_eq!(
        gw.metric("quiver_ingress_records_total", &["outcome=\"answered\""])
            .await
            .unwrap(),
        ids.len() as f64
    );
    // Ingress predictions are logged like HTTP ones.
    let logged = read_topic(
        &broker.bootstrap(),
        "quiver.predictions",
        ids.len(),
        Duration::from_secs(30),
    )
    .unwrap();
    let record: PredictionRecord = records::parse(&logged[0].value).unwrap();
    assert_eq!(record.source, "kafka");
}

#[tokio::test]
async fn a_restarted_ingress_resumes_from_committed_offsets() {
    let broker = Broker::start().unwrap();
    let x: Vec<f32> = vec![0.5; 16];
    let batch = |from: usize, to: usize| -> Vec<(String, Vec<u8>)> {
        (from..to)
            .map(|i| {
                (
                    format!("r{i}"),
                    ingress_request(&format!("r{i}"), "mlp", &x),
                )
            })
            .collect()
    };
    let send = |items: &[(String, Vec<u8>)]| {
        let out: Vec<quiver_tests::kafka::Outgoing> = items
            .iter()
            .map(|(k, v)| quiver_tests::kafka::Outgoing {
                key: Some(k.as_str()),
                value: v.clone(),
                headers: vec![],
            })
            .collect();
        quiver_tests::kafka::produce(&broker.bootstrap(), "quiver.requests", &out).unwrap();
    };
    send(&batch(0, 200));
    let (mut gw, repo) = ingress_gateway("ingress-resume", &broker, "ingress-resume").await;
    let first = read_topic(
        &broker.bootstrap(),
        "quiver.responses",
        200,
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(first.len(), 200);
    // A graceful stop commits what was answered.
    gw.terminate().unwrap();
    assert_eq!(gw.wait_exit(Duration::from_secs(30)).unwrap(), 0);
    send(&batch(200, 300));
    let gw = Gateway::start_ready(
        &repo,
        &[],
        &[
            ("QUIVER_KAFKA__BROKERS", broker.bootstrap().as_str()),
            ("QUIVER_KAFKA__INGRESS__ENABLED", "true"),
            ("QUIVER_KAFKA__INGRESS__GROUP_ID", "ingress-resume"),
        ],
    )
    .await
    .unwrap();
    let all = read_topic(
        &broker.bootstrap(),
        "quiver.responses",
        300,
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(all.len(), 300, "log:\n{}", gw.log());
    // Nothing is answered twice: the second run started at the commit.
    let more = read_topic(
        &broker.bootstrap(),
        "quiver.responses",
        301,
        Duration::from_secs(3),
    )
    .unwrap();
    let counts = count_ids(
        more.iter()
            .map(|r| std::str::from_utf8(r.key.as_deref().unwrap()).unwrap()),
    );
    assert_eq!(counts.len(), 300);
    assert_eq!(
        more.len(),
        300,
        "answered again after restart: {:?}",
        counts.iter().filter(|(_, c)| **c > 1).collect::<Vec<_>>()
    );
}
