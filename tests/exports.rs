//! End-to-end: models as users' libraries export them. The test runs
//! `tests/python/export_models.py`, which trains with scikit-learn,
//! LightGBM and XGBoost and exports with skl2onnx's and onnxmltools'
//! defaults (ZipMap outputs, a LightGBM `label` declared `[1]`, string
//! labels), then serves that repository with the real gateway and checks
//! every answer against the library's own `predict_proba` / `predict`.

// The whole file is test code: a failed step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use quiver_contract::records::{self, PredictionRecord, TensorValues};
use quiver_contract::segments::{self, LogPosition};
use quiver_tests::{Gateway, Rng, as_f32, post_binary, scratch, send};
use serde_json::{Value, json};

const TOLERANCE: f64 = 1e-5;

/// The exported repository and `expected.json`, made once per test binary.
fn exports() -> &'static (PathBuf, Value) {
    static EXPORTS: OnceLock<(PathBuf, Value)> = OnceLock::new();
    EXPORTS.get_or_init(|| {
        let python = std::env::var("QUIVER_PYTHON")
            .expect("QUIVER_PYTHON must name the venv's python: eval \"$(scripts/setup.sh)\"");
        let out = scratch("exports").unwrap();
        let run = std::process::Command::new(&python)
            .arg(quiver_tests::root().join("tests/python/export_models.py"))
            .arg(&out)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
        assert!(
            run.status.success(),
            "export_models.py failed (scripts/setup.sh installs the libraries):\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let expected = std::fs::read(out.join("expected.json")).unwrap();
        (
            out.join("models"),
            serde_json::from_slice(&expected).unwrap(),
        )
    })
}

fn rows(expected: &Value) -> Vec<Vec<f32>> {
    expected["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(as_f32)
        .collect()
}

/// The rows of `expected` at `picks`, flat.
fn flat(all: &[Vec<f32>], picks: &[usize]) -> Vec<f32> {
    picks.iter().flat_map(|&i| all[i].clone()).collect()
}

fn json_request(input: &str, x: &[f32]) -> Value {
    json!({"inputs": [{"name": input, "shape": [x.len() / 8, 8], "datatype": "FP32", "data": x}]})
}

/// An output of a JSON answer as (datatype, shape, data).
fn output<'a>(answer: &'a Value, name: &str) -> (&'a str, Vec<i64>, &'a Value) {
    let o = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {answer}"));
    let shape = o["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_i64().unwrap())
        .collect();
    (o["datatype"].as_str().unwrap(), shape, &o["data"])
}

/// Checks a classifier's answer for the rows at `picks`: the
/// probabilities within 1e-5 of `predict_proba`, and the label equal to
/// `predict` (unless the two best classes are within the tolerance, where
/// float32 and float64 may pick differently).
fn check_classifier(m: &Value, picks: &[usize], probabilities: &[f32], labels: &[Value]) {
    let classes = m["classes"].as_array().unwrap().len();
    assert_eq!(probabilities.len(), picks.len() * classes);
    assert_eq!(labels.len(), picks.len());
    for (k, &row) in picks.iter().enumerate() {
        let want: Vec<f64> = m["probabilities"][row]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (c, w) in want.iter().enumerate() {
            let got = f64::from(probabilities[k * classes + c]);
            assert!(
                (got - w).abs() <= TOLERANCE,
                "row {row} class {c}: got {got}, predict_proba {w}"
            );
        }
        let mut sorted = want.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let tie = sorted.len() > 1 && sorted[0] - sorted[1] <= TOLERANCE;
        assert!(
            tie || labels[k] == m["labels"][row],
            "row {row}: label {}, predict {}",
            labels[k],
            m["labels"][row]
        );
    }
}

fn check_regressor(m: &Value, picks: &[usize], got: &[f32]) {
    assert_eq!(got.len(), picks.len());
    for (k, &row) in picks.iter().enumerate() {
        let want = m["predictions"][row].as_f64().unwrap();
        let g = f64::from(got[k]);
        assert!(
            (g - want).abs() <= TOLERANCE,
            "row {row}: got {g}, predict {want}"
        );
    }
}

fn is_classifier(m: &Value) -> bool {
    m.get("classes").is_some()
}

/// String labels are BYTES, integer labels INT64.
fn label_datatype(m: &Value) -> &'static str {
    if m["classes"][0].is_string() {
        "BYTES"
    } else {
        "INT64"
    }
}

/// One JSON inference of the rows at `picks`, checked.
async fn check_json(gw: &Gateway, name: &str, m: &Value, all: &[Vec<f32>], picks: &[usize]) {
    let x = flat(all, picks);
    let body = json_request(m["input"].as_str().unwrap(), &x);
    let r = gw
        .post_json(&format!("/v2/models/{name}/infer"), &body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    check_json_answer(name, m, picks, &r.json());
}

fn check_json_answer(name: &str, m: &Value, picks: &[usize], answer: &Value) {
    let n = picks.len() as i64;
    if !is_classifier(m) {
        let (dt, shape, data) = output(answer, m["output"].as_str().unwrap());
        assert_eq!((dt, shape), ("FP32", vec![n, 1]), "{name}");
        return check_regressor(m, picks, &as_f32(data));
    }
    let classes = m["classes"].as_array().unwrap().len() as i64;
    let (dt, shape, p) = output(answer, m["probability_output"].as_str().unwrap());
    assert_eq!((dt, shape), ("FP32", vec![n, classes]), "{name}");
    let (dt, shape, labels) = output(answer, m["label_output"].as_str().unwrap());
    assert_eq!((dt, shape), (label_datatype(m), vec![n]), "{name}");
    check_classifier(m, picks, &as_f32(p), labels.as_array().unwrap());
}

/// One binary-extension inference (binary in, every output binary out).
async fn check_binary(gw: &Gateway, name: &str, m: &Value, all: &[Vec<f32>], picks: &[usize]) {
    let x = flat(all, picks);
    let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({
        "inputs": [{"name": m["input"], "shape": [picks.len(), 8], "datatype": "FP32",
                    "parameters": {"binary_data_size": raw.len()}}],
        "parameters": {"binary_data_output": true},
    });
    let (r, head, mut tail) =
        post_binary(gw.addr, &format!("/v2/models/{name}/infer"), &header, &raw)
            .await
            .unwrap();
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    let mut outputs = Vec::new();
    for o in head["outputs"].as_array().unwrap() {
        let size = o["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        let bytes = tail.split_to(size);
        outputs.push((
            o["name"].as_str().unwrap().to_string(),
            o["datatype"].as_str().unwrap().to_string(),
            bytes,
        ));
    }
    assert!(tail.is_empty(), "{name}: binary bytes left over");
    let find = |want: &str| {
        outputs
            .iter()
            .find(|(n, _, _)| n == want)
            .unwrap_or_else(|| panic!("{name}: no binary output {want}"))
    };
    if !is_classifier(m) {
        let (_, dt, bytes) = find(m["output"].as_str().unwrap());
        assert_eq!(dt, "FP32");
        return check_regressor(m, picks, &f32s(bytes));
    }
    let (_, dt, p) = find(m["probability_output"].as_str().unwrap());
    assert_eq!(dt, "FP32");
    let (_, dt, l) = find(m["label_output"].as_str().unwrap());
    assert_eq!(dt, label_datatype(m));
    let labels: Vec<Value> = if dt == "BYTES" {
        strings(l).into_iter().map(Value::from).collect()
    } else {
        l.chunks(8)
            .map(|c| Value::from(i64::from_le_bytes(c.try_into().unwrap())))
            .collect()
    };
    check_classifier(m, picks, &f32s(p), &labels);
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// BYTES elements of the binary extension: a 4-byte length, then the bytes.
fn strings(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let n = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        out.push(String::from_utf8(bytes[4..4 + n].to_vec()).unwrap());
        bytes = &bytes[4 + n..];
    }
    out
}

/// Concurrent one-row requests, every answer checked, in waves until
/// the model's batch-size histogram shows a batch of more than one row.
async fn check_batched_under_load(gw: &Gateway, name: &str, m: &Value, all: &[Vec<f32>]) {
    let selector = format!("model=\"{name}\"");
    let histogram = || async {
        let count = gw
            .metric("quiver_batch_size_count", &[&selector])
            .await
            .unwrap();
        let sum = gw
            .metric("quiver_batch_size_sum", &[&selector])
            .await
            .unwrap();
        (count, sum)
    };
    let (count0, sum0) = histogram().await;
    for wave in 0..40u64 {
        let mut tasks = Vec::new();
        for client in 0..24u64 {
            let addr = gw.addr;
            let row = (Rng::new(wave * 100 + client).next_u64() % all.len() as u64) as usize;
            let body = json_request(m["input"].as_str().unwrap(), &all[row]);
            let path = format!("/v2/models/{name}/infer");
            tasks.push(tokio::spawn(async move {
                let r = send(addr, "POST", &path, &[], Bytes::from(body.to_string()))
                    .await
                    .unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
                (row, r.json())
            }));
        }
        for t in tasks {
            let (row, answer) = t.await.unwrap();
            check_json_answer(name, m, &[row], &answer);
        }
        // Batches of these one-row requests: fewer than their rows means
        // one held more than one row.
        let (count, sum) = histogram().await;
        if count - count0 < sum - sum0 {
            return;
        }
    }
    panic!("{name}: no batch of more than one row under concurrent load");
}

async fn index(gw: &Gateway) -> Vec<Value> {
    let r = gw
        .post_json("/v2/repository/index", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().unwrap().clone()
}

fn row_of<'a>(index: &'a [Value], name: &str) -> &'a Value {
    index
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the index: {index:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_served_batched_and_answer_like_their_library() {
    let (repo, expected) = exports();
    let log_dir = scratch("exports-log").unwrap();
    let mut gw = Gateway::start_ready(repo, &[], &[("QUIVER_LOG__DIR", log_dir.to_str().unwrap())])
        .await
        .unwrap();
    let all = rows(expected);
    let models = expected["models"].as_object().unwrap();
    assert_eq!(models.len(), 8, "{:?}", models.keys());
    let index = index(&gw).await;
    for (name, m) in models {
        // Ready and batchable, with the shapes the model really has.
        let row = row_of(&index, name);
        assert_eq!(row["state"], "READY", "{row}");
        assert!(row.get("reason").is_none(), "{row}");
        let meta = gw.get(&format!("/v2/models/{name}")).await.unwrap().json();
        assert!(meta["max_batch_size"].as_u64().unwrap() > 0, "{meta}");
        assert_eq!(meta["inputs"][0]["shape"], json!([-1, 8]), "{meta}");
        if is_classifier(m) {
            let p = m["probability_output"].as_str().unwrap();
            let l = m["label_output"].as_str().unwrap();
            let classes = m["classes"].as_array().unwrap();
            let out = |n: &str| {
                meta["outputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|o| o["name"] == n)
                    .cloned()
                    .unwrap_or_else(|| panic!("{name}: no output {n} in {meta}"))
            };
            assert_eq!(out(p)["datatype"], "FP32", "{meta}");
            assert_eq!(out(p)["shape"], json!([-1, classes.len()]), "{meta}");
            assert_eq!(out(l)["datatype"], label_datatype(m), "{meta}");
            // LightGBM's `label` is declared [1]; it follows the batch.
            assert_eq!(out(l)["shape"], json!([-1]), "{meta}");
            if m["zipmap"] == true {
                assert_eq!(
                    meta["parameters"]["classlabels"][p],
                    json!(classes),
                    "{meta}"
                );
            } else {
                assert!(meta.get("parameters").is_none(), "{meta}");
            }
        }
        // One row and many, over JSON and binary.
        let many: Vec<usize> = (0..all.len()).collect();
        check_json(&gw, name, m, &all, &[5]).await;
        check_json(&gw, name, m, &all, &many).await;
        check_binary(&gw, name, m, &all, &[11]).await;
        check_binary(&gw, name, m, &all, &many[3..20]).await;
        // Bad input is the client's fault, named.
        let seven = [0.0f32; 7];
        let bad = json!({"inputs": [{"name": m["input"], "shape": [1, 7], "datatype": "FP32", "data": seven}]});
        let r = gw
            .post_json(&format!("/v2/models/{name}/infer"), &bad)
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{}", r.text());
        check_batched_under_load(&gw, name, m, &all).await;
    }

    // The prediction log holds what was served: probabilities as numbers,
    // string labels as text.
    gw.terminate().unwrap();
    assert_eq!(gw.wait_exit(Duration::from_secs(30)).unwrap(), 0);
    let name = "sklearn_hist_gradient_boosting";
    let m = &models[name];
    let logged: Vec<PredictionRecord> =
        local_records::<PredictionRecord>(&log_dir.join("quiver.predictions"))
            .into_iter()
            .filter(|r| r.model == name && r.rows() == all.len())
            .collect();
    assert!(!logged.is_empty());
    let record = &logged[0];
    let find = |n: &str| record.outputs.iter().find(|t| t.name == n).unwrap();
    let p = find(m["probability_output"].as_str().unwrap());
    assert_eq!(p.shape, vec![all.len() as i64, 3]);
    let TensorValues::Numbers(p) = &p.data else {
        panic!("probabilities logged as {:?}", p.data)
    };
    let l = find(m["label_output"].as_str().unwrap());
    let TensorValues::Texts(l) = &l.data else {
        panic!("labels logged as {:?}", l.data)
    };
    let p: Vec<f32> = p.iter().map(|&v| v as f32).collect();
    let l: Vec<Value> = l.iter().map(|s| Value::from(s.as_str())).collect();
    check_classifier(m, &(0..all.len()).collect::<Vec<_>>(), &p, &l);
}

fn local_records<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
    let mut out = Vec::new();
    let mut pos = LogPosition::default();
    loop {
        let b = segments::read_batch(dir, pos, 10_000, 64 << 20).unwrap();
        if b.records.is_empty() {
            return out;
        }
        out.extend(
            b.records
                .iter()
                .map(|(_, r)| records::parse::<T>(r).unwrap()),
        );
        pos = b.next;
    }
}

/// `zipmap = "raw"` keeps the maps; `batching` forces either way; a model
/// whose output does not follow the rows is served unbatched, and the
/// index says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_switches_and_models_that_cannot_batch() {
    let (exported, expected) = exports();
    let repo = scratch("exports-switches").unwrap();
    let copy = |from: &str, to: &str, config: &str| {
        let dir = repo.join(to).join("1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            exported.join(from).join("1/model.onnx"),
            dir.join("model.onnx"),
        )
        .unwrap();
        std::fs::write(repo.join(to).join("config.toml"), config).unwrap();
    };
    copy(
        "sklearn_hist_gradient_boosting",
        "raw",
        "zipmap = \"raw\"\n",
    );
    copy("lightgbm_classifier", "off", "batching = \"off\"\n");
    copy("lightgbm_classifier", "on", "batching = \"on\"\n");
    std::fs::create_dir_all(repo.join("sums/1")).unwrap();
    std::fs::write(repo.join("sums/1/model.onnx"), column_sums()).unwrap();
    let gw = Gateway::start_ready(&repo, &[], &[]).await.unwrap();
    let all = rows(expected);
    let m = &expected["models"]["sklearn_hist_gradient_boosting"];

    // Raw: one JSON object per row, labels in key order.
    let meta = gw.get("/v2/models/raw").await.unwrap().json();
    let p = m["probability_output"].as_str().unwrap();
    let out = meta["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == p)
        .unwrap();
    assert_eq!(
        (&out["datatype"], &out["shape"]),
        (&json!("BYTES"), &json!([-1])),
        "{meta}"
    );
    assert!(meta.get("parameters").is_none(), "{meta}");
    assert!(meta["max_batch_size"].as_u64().unwrap() > 0);
    let r = gw
        .post_json(
            "/v2/models/raw/infer",
            &json_request("X", &flat(&all, &[0, 1])),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let (dt, shape, data) = output(&answer, p);
    assert_eq!((dt, shape), ("BYTES", vec![2]));
    let classes: Vec<&str> = m["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let mut probabilities = Vec::new();
    for text in data.as_array().unwrap() {
        let text = text.as_str().unwrap();
        let keys: Vec<&str> = text
            .trim_matches(['{', '}'])
            .split(',')
            .map(|kv| kv.split(':').next().unwrap().trim_matches('"'))
            .collect();
        assert_eq!(keys, classes, "{text}");
        let row: serde_json::Map<String, Value> = serde_json::from_str(text).unwrap();
        probabilities.extend(classes.iter().map(|c| row[*c].as_f64().unwrap() as f32));
    }
    let labels = output(&answer, m["label_output"].as_str().unwrap())
        .2
        .as_array()
        .unwrap()
        .clone();
    check_classifier(m, &[0, 1], &probabilities, &labels);

    let index = index(&gw).await;
    // Off: served one request at a time, and said so.
    let meta = gw.get("/v2/models/off").await.unwrap().json();
    assert_eq!(meta["max_batch_size"], 0, "{meta}");
    let why = row_of(&index, "off")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("batching is off"), "{why}");
    let lgbm = &expected["models"]["lightgbm_classifier"];
    check_json(&gw, "off", lgbm, &all, &[0, 1, 2]).await;
    // On: batched.
    let meta = gw.get("/v2/models/on").await.unwrap().json();
    assert!(meta["max_batch_size"].as_u64().unwrap() > 0, "{meta}");
    check_json(&gw, "on", lgbm, &all, &[0, 1, 2]).await;

    // Column sums answer one row whatever the rows: never batched, and the
    // index names the output; one request still gets its own answer.
    let sums = row_of(&index, "sums");
    assert_eq!(sums["state"], "READY");
    let why = sums["reason"].as_str().unwrap();
    assert!(
        why.contains("served unbatched: output 'total' has 1 rows when the input has 2"),
        "{why}"
    );
    let meta = gw.get("/v2/models/sums").await.unwrap().json();
    assert_eq!(meta["max_batch_size"], 0, "{meta}");
    // Declared [batch, 4]; the warm-up showed [1, 4].
    assert_eq!(meta["outputs"][0]["shape"], json!([1, 4]), "{meta}");
    let body = json!({"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": [1,2,3,4, 1,2,3,4, 1,2,3,4]}]});
    let r = gw.post_json("/v2/models/sums/infer", &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        as_f32(&r.json()["outputs"][0]["data"]),
        vec![3.0, 6.0, 9.0, 12.0]
    );
}

/// `total = ReduceSum(x, axis 0)`, its output declared `[batch, 4]`: a
/// model whose declaration says batchable and whose behaviour does not.
fn column_sums() -> Vec<u8> {
    use quiver_trainer::onnx::{Dim, GraphBuilder, attr_int, proto};
    let mut g = GraphBuilder::new("sums");
    g.input("x", proto::FLOAT, &[Dim::Batch, Dim::Fixed(4)]);
    let axes = g.constant_i64("axes", &[1], &[0]);
    g.node(
        "ReduceSum",
        &["x", &axes],
        &["total"],
        vec![attr_int("keepdims", 1)],
    );
    g.output("total", proto::FLOAT, &[Dim::Batch, Dim::Fixed(4)]);
    g.finish(1, &[])
}
