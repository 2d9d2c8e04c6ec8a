#!/usr/bin/env python3
"""Checks a running Quiver gateway with the official Triton gRPC client.

    python tests/python/tritonclient_grpc_check.py --grpc HOST:PORT --http HOST:PORT \
        --models-dir DIR [--max-message-bytes N] [--admin-token T]
    python tests/python/tritonclient_grpc_check.py --write-typed-model DIR

Uses `tritonclient.grpc` unmodified (and, for typed contents, the stubs it
ships), so a pass means stock Triton/KServe v2 gRPC clients work against
Quiver: health, metadata, config, statistics, inference with raw and typed
contents, requested outputs, the streaming API, 2,000 concurrent calls, the
status code of every kind of bad input, and the repository API. Expected
answers come from running the same ONNX files in onnxruntime here. Exits
non-zero if any check fails.

`--write-typed-model DIR` writes `DIR/types_typed/1/model.onnx`: the
`types` model without FP16, the one datatype the protocol carries only as
raw contents, so every typed field can be sent in one request.
"""

import argparse
import os
import queue
import re
import sys
import threading
import urllib.request

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from checks import TYPE_CASES, CheckFailed, expect, run

MLP_TOLERANCE = 1e-5



# The typed field of InferTensorContents for each datatype.
TYPED_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
    "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def write_typed_model(out):
    import onnx
    from onnx import TensorProto, helper

    elems = {
        "BOOL": TensorProto.BOOL, "INT8": TensorProto.INT8, "INT16": TensorProto.INT16,
        "INT32": TensorProto.INT32, "INT64": TensorProto.INT64, "UINT8": TensorProto.UINT8,
        "UINT16": TensorProto.UINT16, "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64,
        "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE, "BYTES": TensorProto.STRING,
    }
    nodes, inputs, outputs = [], [], []
    for datatype, elem in elems.items():
        prefix = TYPE_CASES[datatype][0]
        inputs.append(helper.make_tensor_value_info(f"{prefix}_in", elem, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"{prefix}_out", elem, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"{prefix}_in"], [f"{prefix}_out"]))
    graph = helper.make_graph(nodes, "types_typed", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path = os.path.join(out, "types_typed", "1")
    os.makedirs(path, exist_ok=True)
    onnx.save(model, os.path.join(path, "model.onnx"))


def reference(models_dir, model, version, feeds):
    path = os.path.join(models_dir, model, version, "model.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return dict(zip((o.name for o in session.get_outputs()), session.run(None, feeds)))


def mlp_input(rows, seed=42):
    return np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)


def close_to(got, want, what):
    expect(got.dtype == want.dtype, f"{what}: dtype {got.dtype}, want {want.dtype}")
    expect(got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    expect(diff <= MLP_TOLERANCE, f"{what}: differs from onnxruntime by {diff:g}")


def raw_infer(client, model, arrays, datatypes, outputs=None, **kw):
    inputs = []
    for name, array in arrays.items():
        inp = grpcclient.InferInput(name, list(array.shape), datatypes[name])
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    wanted = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    return client.infer(model, inputs, outputs=wanted, **kw)


def expect_status(fn, code, contains=None):
    try:
        fn()
    except InferenceServerException as err:
        expect(err.status() == f"StatusCode.{code}", f"got {err.status()} ({err.message()}), want {code}")
        if contains:
            expect(re.search(contains, err.message() or ""), f"message {err.message()!r} does not mention {contains!r}")
        return
    raise CheckFailed(f"succeeded, want {code}")


def metric(http, name, labels):
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        if key.split("{")[0] == name and all(l in key for l in labels):
            total += float(value)
    return total


def check_health(client):
    expect(client.is_server_live(), "is_server_live() is False")
    expect(client.is_server_ready(), "is_server_ready() is False")
    expect(client.is_model_ready("mlp"), "mlp is not ready")
    expect(client.is_model_ready("mlp", "1"), "mlp version 1 is not ready")
    expect(not client.is_model_ready("no_such_model"), "an unknown model is ready")
    meta = client.get_server_metadata()
    expect(meta.name == "quiver", f"server name {meta.name!r}")


def check_metadata_and_config(client):
    meta = client.get_model_metadata("mlp")
    expect(meta.name == "mlp", f"metadata name {meta.name!r}")
    expect(sorted(meta.versions) == ["1", "2"], f"versions {list(meta.versions)}")
    inputs = {t.name: t for t in meta.inputs}
    expect(inputs["features"].datatype == "FP32", f"features is {inputs['features'].datatype}")
    expect(list(inputs["features"].shape) == [-1, 16], f"features shape {list(inputs['features'].shape)}")
    expect([t.name for t in meta.outputs] == ["probabilities"], f"outputs {[t.name for t in meta.outputs]}")
    config = client.get_model_config("mlp").config
    expect(config.max_batch_size == 32, f"max_batch_size {config.max_batch_size}")
    expect([i.name for i in config.input] == ["features"], f"config inputs {[i.name for i in config.input]}")
    expect(list(config.input[0].dims) == [16], f"config dims {list(config.input[0].dims)} (batch dimension left out)")
    expect(config.input[0].data_type == 11, f"config data_type {config.input[0].data_type}, want TYPE_FP32")
    expect(config.platform == "onnxruntime_onnx", f"platform {config.platform}")


def check_raw_infer(client, models_dir):
    x = mlp_input(5)
    for version in ["", "1"]:
        result = raw_infer(client, "mlp", {"features": x}, {"features": "FP32"}, model_version=version, request_id="r-7")
        want = reference(models_dir, "mlp", version or "2", {"features": x})["probabilities"]
        close_to(result.as_numpy("probabilities"), want, f"mlp version {version or 'latest'}")
        response = result.get_response()
        expect(response.id == "r-7", f"id {response.id!r}")
        expect(response.model_version == (version or "2"), f"model_version {response.model_version!r}")


def check_every_datatype_raw(client):
    arrays = {f"{p}_in": v for p, v in TYPE_CASES.values()}
    datatypes = {f"{p}_in": d for d, (p, _) in TYPE_CASES.items()}
    result = raw_infer(client, "types", arrays, datatypes)
    for datatype, (prefix, sent) in TYPE_CASES.items():
        back = result.as_numpy(f"{prefix}_out")
        expect(back is not None, f"{datatype}: no output")
        expect(back.shape == sent.shape, f"{datatype}: shape {back.shape}")
        if datatype != "BYTES":
            expect(back.dtype == sent.dtype, f"{datatype}: came back as {back.dtype}")
        expect(np.array_equal(back, sent), f"{datatype}: sent {sent.tolist()!r}, got {back.tolist()!r}")


def stub(url):
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))


def check_every_datatype_typed(url):
    request = service_pb2.ModelInferRequest(model_name="types_typed", id="typed")
    for datatype, field in TYPED_FIELD.items():
        prefix, values = TYPE_CASES[datatype]
        tensor = request.inputs.add(name=f"{prefix}_in", datatype=datatype, shape=list(values.shape))
        flat = values.flatten().tolist()
        getattr(tensor.contents, field).extend(flat)
    response = stub(url).ModelInfer(request, timeout=30)
    expect(not response.raw_output_contents, "a typed request got raw output contents")
    got = {o.name: o for o in response.outputs}
    for datatype, field in TYPED_FIELD.items():
        prefix, values = TYPE_CASES[datatype]
        out = got.get(f"{prefix}_out")
        expect(out is not None, f"{datatype}: no output")
        expect(out.datatype == datatype, f"{datatype}: output datatype {out.datatype}")
        back = list(getattr(out.contents, field))
        expect(back == values.flatten().tolist(), f"{datatype}: sent {values.flatten().tolist()!r}, got {back!r}")


def check_requested_outputs(client):
    arrays = {f"{p}_in": v for p, v in TYPE_CASES.values()}
    datatypes = {f"{p}_in": d for d, (p, _) in TYPE_CASES.items()}
    result = raw_infer(client, "types", arrays, datatypes, outputs=["int8_out", "bytes_out"])
    names = [o.name for o in result.get_response().outputs]
    expect(names == ["int8_out", "bytes_out"], f"outputs {names}, asked for int8_out and bytes_out")
    expect_status(lambda: raw_infer(client, "types", arrays, datatypes, outputs=["nope"]), "INVALID_ARGUMENT", "nope")


def check_streaming(client, models_dir):
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = {}
    for i in range(200):
        x = mlp_input(1 + i % 4, seed=i)
        sent[f"s{i}"] = x
        inp = grpcclient.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.async_stream_infer("mlp", [inp], request_id=f"s{i}")
    # One bad request in the stream answers with an error, not a broken stream.
    bad = grpcclient.InferInput("features", [1, 15], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 15), dtype=np.float32))
    client.async_stream_infer("mlp", [bad], request_id="bad")
    seen, errors, order = set(), [], []
    for _ in range(201):
        result, error = answers.get(timeout=60)
        if error is not None:
            errors.append(str(error))
            continue
        rid = result.get_response().id
        order.append(rid)
        want = reference(models_dir, "mlp", "2", {"features": sent[rid]})["probabilities"]
        close_to(result.as_numpy("probabilities"), want, f"stream answer {rid}")
        seen.add(rid)
    client.stop_stream()
    expect(len(seen) == 200, f"{len(seen)} of 200 stream answers")
    expect(order == [f"s{i}" for i in range(200)], "stream answers came out of request order")
    expect(len(errors) == 1 and "15" in errors[0], f"stream errors {errors}")


def check_concurrency(client, models_dir, http):
    batches_before = metric(http, "quiver_batch_size_count", ['model="mlp"'])
    rows_before = metric(http, "quiver_batch_size_sum", ['model="mlp"'])
    done = threading.Semaphore(0)
    results, failures = {}, []
    x = mlp_input(1)
    want = reference(models_dir, "mlp", "2", {"features": x})["probabilities"]

    def callback(i, result, error):
        if error is not None:
            failures.append(str(error))
        else:
            results[i] = result.as_numpy("probabilities")
        done.release()

    inp = grpcclient.InferInput("features", [1, 16], "FP32")
    inp.set_data_from_numpy(x)
    n = 2000
    for i in range(n):
        client.async_infer("mlp", [inp], callback=lambda result, error, i=i: callback(i, result, error))
    for _ in range(n):
        expect(done.acquire(timeout=120), "concurrent calls did not all finish in 120 s")
    expect(not failures, f"{len(failures)} of {n} concurrent calls failed, e.g. {failures[:3]}")
    for got in results.values():
        close_to(got, want, "concurrent answer")
    batches = metric(http, "quiver_batch_size_count", ['model="mlp"']) - batches_before
    rows = metric(http, "quiver_batch_size_sum", ['model="mlp"']) - rows_before
    expect(rows >= n, f"metrics count {rows} rows for {n} calls")
    expect(batches < rows, f"{batches:.0f} batches for {rows:.0f} rows: no batch held more than one request")
    grpc_success = metric(http, "quiver_requests_total", ['model="mlp"', 'protocol="grpc"', 'outcome="success"'])
    expect(grpc_success >= n, f"quiver_requests_total{{protocol=grpc}} is {grpc_success}")
    print(f"     {n} concurrent calls in {batches:.0f} batches (mean {rows / batches:.1f} rows)", flush=True)


def check_statistics(client):
    stats = client.get_inference_statistics("mlp", "2").model_stats
    expect(len(stats) == 1, f"{len(stats)} statistics entries for mlp version 2")
    s = stats[0]
    expect(s.inference_stats.success.count > 0, "no successful requests counted")
    expect(s.execution_count > 0 and s.inference_count >= s.execution_count, f"executions {s.execution_count}, rows {s.inference_count}")
    expect(s.inference_stats.compute_infer.ns > 0, "no compute time")
    expect(any(b.batch_size > 1 for b in s.batch_stats), "no batch of more than one row in batch_stats")
    expect_status(lambda: client.get_inference_statistics("no_such_model"), "NOT_FOUND")


def check_bad_inputs(client, url, max_message):
    x = mlp_input(1)
    ok = {"features": "FP32"}
    expect_status(lambda: raw_infer(client, "no_such_model", {"features": x}, ok), "NOT_FOUND", "no_such_model")
    expect_status(lambda: raw_infer(client, "mlp", {"features": mlp_input(1)[:, :15]}, ok), "INVALID_ARGUMENT", "15|shape")
    expect_status(lambda: raw_infer(client, "mlp", {"features": x.astype(np.float64)}, {"features": "FP64"}), "INVALID_ARGUMENT", "FP64")
    expect_status(lambda: raw_infer(client, "mlp", {"features": x}, ok, model_version="9"), "NOT_FOUND")

    def wrong_raw_size():
        request = service_pb2.ModelInferRequest(model_name="mlp")
        request.inputs.add(name="features", datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(b"\0" * 63)
        try:
            stub(url).ModelInfer(request, timeout=30)
        except grpc.RpcError as err:
            expect(err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"wrong raw size: {err.code()}")
            expect("63 bytes" in err.details(), f"wrong raw size message: {err.details()}")
            return
        raise CheckFailed("raw contents of the wrong size succeeded")

    wrong_raw_size()
    rows = max_message // 64 + 1
    big = np.zeros((rows, 16), dtype=np.float32)
    expect_status(lambda: raw_infer(client, "mlp", {"features": big}, ok), "RESOURCE_EXHAUSTED", str(max_message))


def check_deadlines_and_queue(client, http):
    dropped_before = metric(http, "quiver_dropped_requests_total", ['model="slow"'])
    x = np.zeros((8, 256), dtype=np.float32)
    inp = grpcclient.InferInput("x", [8, 256], "FP32")
    inp.set_data_from_numpy(x)
    # Flood the slow model: its queue (max_queue_size 4 in this test)
    # fills, and the overflow is refused at once; the requests that carry a
    # 1 ms timeout (the protocol's parameter) expire in the queue and are
    # answered DEADLINE_EXCEEDED by the server without reaching the model.
    # (A client deadline travels as grpc-timeout and is enforced the same
    # way, but the client then races the server to report it.)
    codes = queue.Queue()
    n = 60
    for i in range(n):
        client.async_infer("slow", [inp], callback=lambda result, error: codes.put(error.status() if error else "OK"),
                           timeout=1000 if i % 2 else None)
    seen = [codes.get(timeout=120) for _ in range(n)]
    expect("StatusCode.RESOURCE_EXHAUSTED" in seen, f"no RESOURCE_EXHAUSTED among {sorted(set(seen))}")
    expect("StatusCode.DEADLINE_EXCEEDED" in seen, f"no DEADLINE_EXCEEDED among {sorted(set(seen))}")
    expect("OK" in seen, f"no request served among {sorted(set(seen))}")
    # The expired ones left the queue without running.
    dropped = metric(http, "quiver_dropped_requests_total", ['model="slow"']) - dropped_before
    expect(dropped > 0, "no request was dropped from the queue before reaching the model")


def check_repository(client, url, token):
    index = client.get_model_repository_index()
    names = {m.name for m in index.models}
    expect({"mlp", "types", "slow"} <= names, f"index names {names}")
    headers = {"authorization": f"Bearer {token}"}
    expect_status(lambda: client.unload_model("types"), "UNAUTHENTICATED")
    expect_status(lambda: client.unload_model("types", headers={"authorization": "Bearer wrong"}), "UNAUTHENTICATED")
    client.unload_model("types", headers=headers)
    expect(not client.is_model_ready("types"), "types still ready after unload")
    client.load_model("types", headers=headers)
    expect(client.is_model_ready("types"), "types not ready after load")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", help="gateway gRPC address, host:port")
    parser.add_argument("--http", help="gateway HTTP address, host:port (for /metrics)")
    parser.add_argument("--models-dir", help="the model repository the gateway serves")
    parser.add_argument("--max-message-bytes", type=int, default=1 << 20)
    parser.add_argument("--admin-token", default="")
    parser.add_argument("--write-typed-model", metavar="DIR")
    args = parser.parse_args()
    if args.write_typed_model:
        write_typed_model(args.write_typed_model)
        return 0

    client = grpcclient.InferenceServerClient(url=args.grpc)
    checks = [
        ("health and readiness", lambda: check_health(client)),
        ("metadata and config", lambda: check_metadata_and_config(client)),
        ("mlp infer, raw contents", lambda: check_raw_infer(client, args.models_dir)),
        ("every datatype, raw contents", lambda: check_every_datatype_raw(client)),
        ("every typed field, typed contents", lambda: check_every_datatype_typed(args.grpc)),
        ("requested outputs", lambda: check_requested_outputs(client)),
        ("streaming, 200 in flight", lambda: check_streaming(client, args.models_dir)),
        ("2,000 concurrent calls, batched", lambda: check_concurrency(client, args.models_dir, args.http)),
        ("statistics", lambda: check_statistics(client)),
        ("bad inputs map to status codes", lambda: check_bad_inputs(client, args.grpc, args.max_message_bytes)),
        ("deadlines and a full queue", lambda: check_deadlines_and_queue(client, args.http)),
        ("repository API and its token", lambda: check_repository(client, args.grpc, args.admin_token)),
    ]
    status = run("tritonclient grpc check", checks, show_traceback=True)
    client.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
