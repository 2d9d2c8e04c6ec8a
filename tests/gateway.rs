//! End-to-end: the real `quiver-gateway` binary, real ONNX Runtime, real
//! HTTP on loopback.

// The whole file is test code: a failed step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use quiver_gateway::backend::Backend;
use quiver_gateway::backend::onnx::{OnnxBackend, SessionOptions, environment};
use quiver_gateway::model_settings::ExecutionProvider;
use quiver_gateway::tensor::{Tensor, TensorData};
use quiver_tests::{
    Gateway, Rng, as_f32, binary_body, copy_model, example_models, post_binary, scratch, send,
};
use serde_json::{Value, json};

/// ONNX Runtime's own answer, in process, for one model file.
fn reference(model: &Path, inputs: Vec<Tensor>) -> Vec<Tensor> {
    let env = environment(None).expect("ONNX Runtime (run scripts/setup.sh)");
    let options = SessionOptions {
        intra_op_threads: 1,
        execution_provider: ExecutionProvider::Cpu,
    };
    let mut backend = OnnxBackend::load(env, model, &options).unwrap();
    backend.run(inputs).unwrap()
}

fn features(rows: usize, rng: &mut Rng) -> Vec<f32> {
    (0..rows * 16).map(|_| rng.f32() * 3.0).collect()
}

fn mlp_reference(version: u64, x: &[f32]) -> Vec<f32> {
    let rows = x.len() / 16;
    let input = Tensor {
        name: "features".into(),
        shape: vec![rows as i64, 16],
        data: TensorData::Fp32(x.to_vec()),
    };
    let out = reference(
        &example_models().join(format!("mlp/{version}/model.onnx")),
        vec![input],
    );
    let TensorData::Fp32(v) = &out[0].data else {
        panic!("mlp output is not FP32")
    };
    v.clone()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "element {i}: got {g}, want {w}");
    }
}

fn mlp_request(x: &[f32]) -> Value {
    json!({"inputs": [{"name": "features", "shape": [x.len() / 16, 16], "datatype": "FP32", "data": x}]})
}

#[tokio::test]
async fn health_and_metadata() {
    let gw = Gateway::start_ready(&example_models(), &[], &[])
        .await
        .unwrap();
    assert_eq!(gw.get("/v2/health/live").await.unwrap().status, 200);
    assert_eq!(gw.get("/v2/health/ready").await.unwrap().status, 200);
    let server = gw.get("/v2").await.unwrap().json();
    assert_eq!(server["name"], "quiver");
    assert!(
        server["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("binary_tensor_data"))
    );

    let mlp = gw.get("/v2/models/mlp").await.unwrap().json();
    assert_eq!(mlp["versions"], json!(["1", "2"]));
    assert_eq!(
        mlp["inputs"],
        json!([{"name": "features", "datatype": "FP32", "shape": [-1, 16]}])
    );
    assert_eq!(
        mlp["outputs"],
        json!([{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}])
    );
    assert_eq!(
        gw.get("/v2/models/mlp/versions/1").await.unwrap().json()["versions"],
        json!(["1"])
    );
    assert_eq!(
        gw.get("/v2/models/mlp/versions/1/ready")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        gw.get("/v2/models/mlp/ready").await.unwrap().json()["version"],
        "2"
    );

    // A fixed first dimension is served without batching.
    let fixed = gw.get("/v2/models/fixed").await.unwrap().json();
    assert_eq!(fixed["max_batch_size"], 0);
    assert_eq!(fixed["inputs"][0]["shape"], json!([2, 3]));

    for (path, status, needle) in [
        ("/v2/models/nope", 404, "unknown model 'nope'"),
        ("/v2/models/mlp/versions/9", 404, "no version 9"),
        ("/v2/models/mlp/versions/x", 400, "not a positive integer"),
        ("/v2/nothing", 404, "no route"),
    ] {
        let r = gw.get(path).await.unwrap();
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(r.error().contains(needle), "{path}: {}", r.text());
    }
    let r = send(gw.addr, "DELETE", "/v2/models/mlp", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn json_and_binary_inference_match_onnxruntime() {
    let gw = Gateway::start_ready(&example_models(), &[], &[])
        .await
        .unwrap();
    let mut rng = Rng::new(7);
    for rows in [1usize, 3, 32] {
        let x = features(rows, &mut rng);
        // JSON in, JSON out, default (newest) version.
        let mut req = mlp_request(&x);
        req["id"] = json!("req-42");
        let r = gw.post_json("/v2/models/mlp/infer", &req).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_eq!(body["id"], "req-42");
        assert_eq!(body["model_version"], "2");
        assert_eq!(r.header("x-quiver-model-version"), Some("2"));
        for h in [
            "x-quiver-queue-us",
            "x-quiver-compute-us",
            "x-quiver-total-us",
            "x-quiver-batch-size",
        ] {
            assert!(
                r.header(h).is_some_and(|v| v.parse::<u64>().is_ok()),
                "missing {h}"
            );
        }
        assert_eq!(body["outputs"][0]["shape"], json!([rows, 4]));
        assert_close(
            &as_f32(&body["outputs"][0]["data"]),
            &mlp_reference(2, &x),
            1e-6,
        );

        // Binary in, binary out, pinned version 1.
        let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = json!({
            "inputs": [{"name": "features", "shape": [rows, 16], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}],
        });
        let (r, head, tail) =
            post_binary(gw.addr, "/v2/models/mlp/versions/1/infer", &header, &raw)
                .await
                .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(head["model_version"], "1");
        assert_eq!(
            head["outputs"][0]["parameters"]["binary_data_size"],
            rows * 16
        );
        let got: Vec<f32> = tail[..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_close(&got, &mlp_reference(1, &x), 1e-6);
    }
}

/// Every datatype through the `types` model (Identity per datatype), as
/// JSON and as binary, compared exactly.
#[tokio::test]
async fn every_datatype_round_trips_json_and_binary() {
    let gw = Gateway::start_ready(&example_models(), &[], &[])
        .await
        .unwrap();
    let values: Vec<(&str, &str, Value)> = vec![
        (
            "bool",
            "BOOL",
            json!([true, false, true, false, false, true]),
        ),
        ("int8", "INT8", json!([-128, -1, 0, 1, 2, 127])),
        ("int16", "INT16", json!([-32768, -1, 0, 1, 2, 32767])),
        (
            "int32",
            "INT32",
            json!([-2147483648i64, -1, 0, 1, 2, 2147483647]),
        ),
        ("int64", "INT64", json!([i64::MIN, -1, 0, 1, 2, i64::MAX])),
        ("uint8", "UINT8", json!([0, 1, 2, 3, 254, 255])),
        ("uint16", "UINT16", json!([0, 1, 2, 3, 4, 65535])),
        ("uint32", "UINT32", json!([0, 1, 2, 3, 4, 4294967295u64])),
        ("uint64", "UINT64", json!([0, 1, 2, 3, 4, u64::MAX])),
        (
            "fp16",
            "FP16",
            json!([0.0, -1.5, 2.0, 0.25, 65504.0, -0.125]),
        ),
        (
            "fp32",
            "FP32",
            json!([0.0, -1.5, 3.4028235e38, 1.0e-30, 0.1, -7.25]),
        ),
        (
            "fp64",
            "FP64",
            json!([0.0, -1.5, 1.7976931348623157e308, 5e-324, 0.1, -7.25]),
        ),
        (
            "bytes",
            "BYTES",
            json!(["", "a", "héllo", "x y", "7", "last"]),
        ),
    ];
    let inputs: Vec<Value> = values
        .iter()
        .map(|(n, dt, data)| json!({"name": format!("{n}_in"), "shape": [2, 3], "datatype": dt, "data": data}))
        .collect();
    let r = gw
        .post_json("/v2/models/types/infer", &json!({"inputs": inputs}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    for (n, dt, data) in &values {
        let out = body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == format!("{n}_out"))
            .unwrap();
        assert_eq!(out["datatype"], *dt);
        assert_eq!(out["shape"], json!([2, 3]));
        assert_eq!(&out["data"], data, "{dt} via JSON");
    }

    // The same values as binary tensors; every output asked for as binary.
    let mut raw = Vec::new();
    let mut header_inputs = Vec::new();
    for (n, dt, data) in &values {
        let start = raw.len();
        for v in data.as_array().unwrap() {
            match *dt {
                "BOOL" => raw.push(u8::from(v.as_bool().unwrap())),
                "INT8" => raw.extend((v.as_i64().unwrap() as i8).to_le_bytes()),
                "INT16" => raw.extend((v.as_i64().unwrap() as i16).to_le_bytes()),
                "INT32" => raw.extend((v.as_i64().unwrap() as i32).to_le_bytes()),
                "INT64" => raw.extend(v.as_i64().unwrap().to_le_bytes()),
                "UINT8" => raw.push(v.as_u64().unwrap() as u8),
                "UINT16" => raw.extend((v.as_u64().unwrap() as u16).to_le_bytes()),
                "UINT32" => raw.extend((v.as_u64().unwrap() as u32).to_le_bytes()),
                "UINT64" => raw.extend(v.as_u64().unwrap().to_le_bytes()),
                "FP16" => raw.extend(half_bits(v.as_f64().unwrap() as f32).to_le_bytes()),
                "FP32" => raw.extend((v.as_f64().unwrap() as f32).to_le_bytes()),
                "FP64" => raw.extend(v.as_f64().unwrap().to_le_bytes()),
                "BYTES" => {
                    let s = v.as_str().unwrap().as_bytes();
                    raw.extend((s.len() as u32).to_le_bytes());
                    raw.extend(s);
                }
                other => panic!("{other}"),
            }
        }
        header_inputs.push(
            json!({"name": format!("{n}_in"), "shape": [2, 3], "datatype": dt,
            "parameters": {"binary_data_size": raw.len() - start}}),
        );
    }
    let header = json!({"inputs": header_inputs, "parameters": {"binary_data_output": true}});
    let (r, head, tail) = post_binary(gw.addr, "/v2/models/types/infer", &header, &raw)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Outputs come back in the model's order, which matches the inputs' here,
    // so the binary parts concatenate to exactly what was sent.
    let sizes: Vec<u64> = head["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["parameters"]["binary_data_size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes.iter().sum::<u64>() as usize, raw.len());
    assert_eq!(&tail[..], &raw[..]);
}

/// FP32 → FP16 bits, for values exactly representable in FP16.
fn half_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// Every kind of bad input gets a 4xx with a JSON body naming the problem.
#[tokio::test]
async fn bad_requests_get_named_errors() {
    let gw = Gateway::start_ready(&example_models(), &[], &[])
        .await
        .unwrap();
    let filled = |n: usize| json!(vec![0.5f32; n]);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "mlp",
            json!({"inputs": [{"name": "features", "shape": [1, 15], "datatype": "FP32", "data": filled(15)}]}),
            400,
            "model expects [-1, 16]",
        ),
        (
            "mlp",
            json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP64", "data": filled(16)}]}),
            400,
            "datatype FP64, model expects FP32",
        ),
        (
            "mlp",
            json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": filled(15)}]}),
            400,
            "has 15 elements but shape [1, 16] needs 16",
        ),
        (
            "mlp",
            json!({"inputs": [{"name": "other", "shape": [1, 16], "datatype": "FP32", "data": filled(16)}]}),
            400,
            "unknown input 'other'",
        ),
        (
            "mlp",
            json!({"inputs": []}),
            400,
            "missing input 'features'",
        ),
        (
            "mlp",
            json!({"inputs": [{"name": "features", "shape": [33, 16], "datatype": "FP32", "data": filled(33 * 16)}]}),
            400,
            "max_batch_size 32",
        ),
        (
            "mlp",
            json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": filled(16)}], "outputs": [{"name": "nope"}]}),
            400,
            "unknown output 'nope'",
        ),
        (
            "mlp",
            json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": ["a"]}]}),
            400,
            "is not a valid FP32",
        ),
        (
            "mlp",
            json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "HALF", "data": filled(16)}]}),
            400,
            "unknown datatype 'HALF'",
        ),
        ("nope", json!({"inputs": []}), 404, "unknown model 'nope'"),
        (
            "fixed",
            json!({"inputs": [{"name": "a", "shape": [3, 3], "datatype": "FP32", "data": filled(9)},
                                    {"name": "b", "shape": [2, 3], "datatype": "FP32", "data": filled(6)}]}),
            400,
            "model expects [2, 3]",
        ),
    ];
    for (model, body, status, needle) in cases {
        let r = gw
            .post_json(&format!("/v2/models/{model}/infer"), &body)
            .await
            .unwrap();
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.error().contains(needle), "{body}: {}", r.text());
    }
    let r = gw
        .post_json("/v2/models/mlp/versions/7/infer", &json!({"inputs": []}))
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());

    // Malformed JSON, and malformed binary framing.
    let post = |path: &'static str, headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let addr = gw.addr;
        async move {
            send(addr, "POST", path, &headers, Bytes::from(body))
                .await
                .unwrap()
        }
    };
    let r = post("/v2/models/mlp/infer", vec![], b"{\"inputs\": [".to_vec()).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("malformed inference request JSON"),
        "{}",
        r.text()
    );
    let header = json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}]});
    let (body, n) = binary_body(&header, &[0u8; 60]);
    let r = post(
        "/v2/models/mlp/infer",
        vec![("inference-header-content-length", n.to_string())],
        body.to_vec(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("only 60 binary bytes remain"),
        "{}",
        r.text()
    );
    let (body, n) = binary_body(&header, &[0u8; 68]);
    let r = post(
        "/v2/models/mlp/infer",
        vec![("inference-header-content-length", n.to_string())],
        body.to_vec(),
    )
    .await;
    assert!(
        r.error().contains("4 bytes of binary data follow"),
        "{}",
        r.text()
    );
    let r = post(
        "/v2/models/mlp/infer",
        vec![("inference-header-content-length", "99999".into())],
        b"{}".to_vec(),
    )
    .await;
    assert!(
        r.error()
            .contains("Inference-Header-Content-Length is 99999"),
        "{}",
        r.text()
    );
    let r = post(
        "/v2/models/mlp/infer",
        vec![("inference-header-content-length", "x".into())],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(r.status, 400);
    // BYTES that ONNX string tensors cannot hold.
    let raw = [1u8, 0, 0, 0, 0xff];
    let header = json!({"inputs": [{"name": "bytes_in", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 5}}]});
    let (body, n) = binary_body(&header, &raw);
    let r = post(
        "/v2/models/types/infer",
        vec![("inference-header-content-length", n.to_string())],
        body.to_vec(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // The gateway is still healthy after all of that.
    let r = gw
        .post_json("/v2/models/mlp/infer", &mlp_request(&[0.5; 16]))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

/// A body over the configured limit gets 413 (limit set through the
/// environment, which also proves the override reaches the binary).
#[tokio::test]
async fn oversized_body_is_413() {
    let gw = Gateway::start_ready(
        &example_models(),
        &[],
        &[("QUIVER_HTTP__MAX_BODY_BYTES", "1000")],
    )
    .await
    .unwrap();
    let r = gw
        .post_json("/v2/models/mlp/infer", &mlp_request(&vec![0.25; 16 * 20]))
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.error().contains("larger than the limit of 1000 bytes"),
        "{}",
        r.text()
    );
    let r = gw
        .post_json("/v2/models/mlp/infer", &mlp_request(&[0.25; 16]))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A model that fails to load is not ready (503) while the others serve.
#[tokio::test]
async fn broken_model_is_not_ready_others_serve() {
    let repo = scratch("broken").unwrap();
    copy_model("mlp", &repo).unwrap();
    std::fs::create_dir_all(repo.join("broken/1")).unwrap();
    std::fs::write(
        repo.join("broken/1/model.onnx"),
        b"this is not an onnx file",
    )
    .unwrap();
    let gw = Gateway::start(&repo, &[], &[]).unwrap();
    // Wait for loading to finish (the mlp becomes ready).
    for _ in 0..500 {
        if gw.get("/v2/models/mlp/ready").await.unwrap().status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = gw.get("/v2/health/ready").await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let r = gw
        .post_json("/v2/models/broken/infer", &json!({"inputs": []}))
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.error().contains("no ready version"), "{}", r.text());
    let r = gw.get("/v2/models/broken/versions/1/ready").await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.error().contains("unavailable"), "{}", r.text());
    assert!(
        r.error().contains("protobuf") || r.error().contains("load"),
        "{}",
        r.text()
    );
    let r = gw
        .post_json("/v2/models/mlp/infer", &mlp_request(&[0.5; 16]))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

fn slow_request(rows: usize, seed: u64, timeout_us: Option<u64>) -> Value {
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = (0..rows * 256).map(|_| rng.f32()).collect();
    let mut req =
        json!({"inputs": [{"name": "x", "shape": [rows, 256], "datatype": "FP32", "data": x}]});
    if let Some(t) = timeout_us {
        req["parameters"] = json!({"timeout": t});
    }
    req
}

/// A repository with only the slow model and the given config.
fn slow_repo(name: &str, config: &str) -> std::path::PathBuf {
    let repo = scratch(name).unwrap();
    copy_model("slow", &repo).unwrap();
    std::fs::write(repo.join("slow/config.toml"), config).unwrap();
    repo
}

/// Many concurrent clients: every answer correct, and batches larger than
/// one show up in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_correct() {
    let gw = Gateway::start_ready(&example_models(), &[], &[])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for client in 0..32u64 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(1000 + client);
            let mut checked = Vec::new();
            for _ in 0..8 {
                let rows = 1 + (rng.next_u64() % 3) as usize;
                let x = features(rows, &mut rng);
                let body = Bytes::from(mlp_request(&x).to_string());
                let r = send(addr, "POST", "/v2/models/mlp/infer", &[], body)
                    .await
                    .unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
                checked.push((x, as_f32(&r.json()["outputs"][0]["data"])));
            }
            checked
        }));
    }
    let mut n = 0;
    for t in tasks {
        for (x, got) in t.await.unwrap() {
            assert_close(&got, &mlp_reference(2, &x), 1e-6);
            n += 1;
        }
    }
    assert_eq!(n, 256);
    assert_eq!(
        gw.metric(
            "quiver_requests_total",
            &["model=\"mlp\"", "outcome=\"success\""]
        )
        .await
        .unwrap(),
        256.0
    );

    // The slow model makes batching certain: while one request runs, the
    // others queue and leave together.
    let mut tasks = Vec::new();
    for i in 0..12u64 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let req = slow_request(1, i, None);
            let r = send(
                addr,
                "POST",
                "/v2/models/slow/infer",
                &[],
                Bytes::from(req.to_string()),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            (i, r.json()["outputs"][0]["data"].clone())
        }));
    }
    let slow_model = example_models().join("slow/1/model.onnx");
    for t in tasks {
        let (i, data) = t.await.unwrap();
        let req = slow_request(1, i, None);
        let x: Vec<f32> = as_f32(&req["inputs"][0]["data"]);
        let want = reference(
            &slow_model,
            vec![Tensor {
                name: "x".into(),
                shape: vec![1, 256],
                data: TensorData::Fp32(x),
            }],
        );
        let TensorData::Fp32(want) = &want[0].data else {
            panic!()
        };
        assert_close(&as_f32(&data), want, 1e-5);
    }
    let count = gw
        .metric("quiver_batch_size_count", &["model=\"slow\""])
        .await
        .unwrap();
    let sum = gw
        .metric("quiver_batch_size_sum", &["model=\"slow\""])
        .await
        .unwrap();
    assert_eq!(sum, 12.0);
    assert!(
        count < sum,
        "expected batches of more than one row: {count} batches for {sum} rows"
    );
}

/// A full queue answers 429 at once; a request whose deadline passes while
/// it waits gets 504 and never reaches the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_is_429_and_expired_is_504() {
    let repo = slow_repo("overload", "max_batch_size = 1\nmax_queue_size = 2\n");
    let gw = Gateway::start_ready(&repo, &[], &[]).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let body = Bytes::from(slow_request(1, i, None).to_string());
            send(addr, "POST", "/v2/models/slow/infer", &[], body)
                .await
                .unwrap()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 429 {
            assert!(
                r.error()
                    .contains("queue of model 'slow' version 1 is full"),
                "{}",
                r.text()
            );
        }
        statuses.push(r.status);
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "16 requests on a queue of 2 must overflow: {statuses:?}"
    );
    assert!(statuses.contains(&200));

    drop(gw);

    // Keep the one instance busy with a long batch (32 rows, tens of ms),
    // and queue a request with a 1 ms deadline behind it.
    let repo = slow_repo("deadline", "max_batch_size = 64\n");
    let gw = Gateway::start_ready(&repo, &[], &[]).await.unwrap();
    let rows_before = gw
        .metric("quiver_batch_size_sum", &["model=\"slow\""])
        .await
        .unwrap();
    let addr = gw.addr;
    let busy = tokio::spawn(async move {
        send(
            addr,
            "POST",
            "/v2/models/slow/infer",
            &[],
            Bytes::from(slow_request(32, 1, None).to_string()),
        )
        .await
        .unwrap()
    });
    // Wait until the instance is running it.
    for _ in 0..1000 {
        if gw
            .metric("quiver_busy_instances", &["model=\"slow\""])
            .await
            .unwrap()
            >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let r = gw
        .post_json("/v2/models/slow/infer", &slow_request(1, 2, Some(1000)))
        .await
        .unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.error().contains("deadline"), "{}", r.text());
    assert_eq!(busy.await.unwrap().status, 200);
    // The instance takes the expired request out when it next looks at the
    // queue, right after the busy batch.
    let mut expired = 0.0;
    for _ in 0..200 {
        expired = gw
            .metric(
                "quiver_dropped_requests_total",
                &["model=\"slow\"", "reason=\"expired\""],
            )
            .await
            .unwrap();
        if expired > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(expired, 1.0, "the expired request must be dropped, not run");
    let rows_after = gw
        .metric("quiver_batch_size_sum", &["model=\"slow\""])
        .await
        .unwrap();
    assert_eq!(
        rows_after - rows_before,
        32.0,
        "only the busy request reached the model"
    );
}

/// SIGTERM with requests in flight: every one of them is answered, then
/// the process exits cleanly.
///
/// Nothing here depends on timing. Each of six connections is first proven
/// to be served (a health check answered on it), then sends the head and
/// half the body of an inference request, so all six are inside the
/// gateway, mid-request, before SIGTERM. Once the gateway has stopped
/// accepting (a new connection is refused), the rest of each body goes out:
/// the six requests reach the one slow instance together (one runs, five
/// queue) during the shutdown, and every one must be answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let repo = slow_repo(
        "shutdown",
        "max_batch_size = 8\nmax_queue_delay_us = 0\npreferred_batch_sizes = [8]\n",
    );
    let mut gw = Gateway::start_ready(&repo, &[], &[]).await.unwrap();
    let mut conns = Vec::new();
    for i in 0..6u64 {
        let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        conn.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: quiver\r\n\r\n")
            .await
            .unwrap();
        let head = read_response(&mut conn).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let body = slow_request(8, i, None).to_string().into_bytes();
        let half = body.len() / 2;
        let head = format!(
            "POST /v2/models/slow/infer HTTP/1.1\r\nhost: quiver\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&body[..half]).await.unwrap();
        conns.push((conn, body, half));
    }
    gw.terminate().unwrap();
    let mut refused = false;
    for _ in 0..3000 {
        if tokio::net::TcpStream::connect(gw.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "still accepting connections 30 s after SIGTERM");
    let mut answers = Vec::new();
    for (mut conn, body, half) in conns {
        answers.push(tokio::spawn(async move {
            conn.write_all(&body[half..]).await.unwrap();
            let response = read_response(&mut conn).await;
            // The connection closes after its last answer.
            let mut rest = Vec::new();
            let closed = conn.read_to_end(&mut rest).await.is_ok() && rest.is_empty();
            (response, closed)
        }));
    }
    for a in answers {
        let (response, closed) = a.await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("\"outputs\""), "{response}");
        assert!(closed, "the connection stays open after shutdown");
    }
    assert_eq!(gw.wait_exit(Duration::from_secs(30)).unwrap(), 0);
    assert!(gw.log().contains("shutdown complete"), "{}", gw.log());
}

/// A request's `priority` parameter is checked against the model's levels:
/// a level it does not have is a 400 naming the setting; one it has runs.
#[tokio::test]
async fn priority_outside_the_models_levels_is_refused() {
    let repo = slow_repo("priority", "max_batch_size = 8\npriority_levels = 2\n");
    let gw = Gateway::start_ready(&repo, &[], &[]).await.unwrap();
    let ask = |priority: u64| {
        let mut req = slow_request(1, priority, None);
        req["parameters"] = json!({"priority": priority});
        send(
            gw.addr,
            "POST",
            "/v2/models/slow/infer",
            &[],
            Bytes::from(req.to_string()),
        )
    };
    let refused = ask(3).await.unwrap();
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("priority_levels"),
        "{}",
        refused.text()
    );
    for level in [0, 1, 2] {
        let ok = ask(level).await.unwrap();
        assert_eq!(ok.status, 200, "priority {level}: {}", ok.text());
    }
}

/// Reads one HTTP/1.1 response with a `content-length` body: head and body.
async fn read_response(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut chunk))
            .await
            .expect("no answer within 30 s")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before the answer: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The official Triton client (`tritonclient[http]`), unmodified.
#[tokio::test]
async fn tritonclient_talks_to_the_gateway() {
    let python = std::env::var("QUIVER_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("QUIVER_CACHE_DIR").unwrap_or_else(|_| {
            format!(
                "{}/.cache/quiver",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        format!("{home}/venv/bin/python")
    });
    let gw = Gateway::start_ready(&example_models(), &[], &[])
        .await
        .unwrap();
    let root = quiver_tests::root();
    let out = tokio::process::Command::new(&python)
        .arg(root.join("tests/python/tritonclient_check.py"))
        .args(["--url", &gw.addr.to_string(), "--models-dir"])
        .arg(example_models())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {python} (run scripts/setup.sh): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tritonclient check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}
