#!/usr/bin/env python3
"""Checks a running Quiver gateway with the official Triton HTTP client.

    python tests/python/tritonclient_check.py --url 127.0.0.1:PORT --models-dir examples/models

Uses `tritonclient.http` unmodified, so a pass means stock Triton/KServe v2
clients work against Quiver: health, model metadata, inference with the
binary tensor data extension and with plain JSON, explicit versions, every
datatype, and a 404 for an unknown model. Expected answers come from running
the same ONNX files in onnxruntime here. Exits non-zero if any check fails.
"""

import argparse
import os
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient
from checks import TYPE_CASES, CheckFailed, expect, run
from tritonclient.utils import InferenceServerException

MLP_TOLERANCE = 1e-5



def newest_version(models_dir, model):
    versions = [int(v) for v in os.listdir(os.path.join(models_dir, model)) if v.isdigit()]
    expect(versions, f"no numbered version folder under {models_dir}/{model}")
    return str(max(versions))


def reference(models_dir, model, version, feeds):
    """Runs <models_dir>/<model>/<version>/model.onnx in onnxruntime."""
    path = os.path.join(models_dir, model, version, "model.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return dict(zip((o.name for o in session.get_outputs()), session.run(None, feeds)))


def infer(client, model, arrays, datatypes, output_names, binary, version=""):
    """Sends one request; returns {output name: numpy array}."""
    inputs = []
    for name, array in arrays.items():
        inp = httpclient.InferInput(name, list(array.shape), datatypes[name])
        inp.set_data_from_numpy(array, binary_data=binary)
        inputs.append(inp)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in output_names]
    result = client.infer(model, inputs, model_version=version, outputs=outputs)
    answers = {}
    for name in output_names:
        answers[name] = result.as_numpy(name)
        expect(answers[name] is not None, f"{model}: response has no output {name!r}")
    return answers


def mlp_matches(client, models_dir, version, binary, ask_version=""):
    features = np.random.default_rng(42).standard_normal((5, 16)).astype(np.float32)
    got = infer(client, "mlp", {"features": features}, {"features": "FP32"}, ["probabilities"], binary, ask_version)
    want = reference(models_dir, "mlp", version, {"features": features})["probabilities"]
    got = got["probabilities"]
    expect(got.dtype == np.float32, f"probabilities has dtype {got.dtype}, want float32")
    expect(got.shape == want.shape, f"probabilities has shape {got.shape}, want {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    expect(diff <= MLP_TOLERANCE, f"probabilities differ from onnxruntime by {diff:g} (> {MLP_TOLERANCE:g})")


def as_bytes(array):
    # With JSON, tritonclient returns BYTES elements as str; with binary data, as bytes.
    return np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[np.object_])(array)


def types_round_trip(client, binary):
    # tritonclient sends every one of these datatypes in both encodings: it
    # refuses only BF16 as JSON (not in the `types` model), and BYTES as JSON
    # only when an element is not valid UTF-8 (none here). FP16 goes as JSON
    # numbers that are exact in float16.
    arrays = {f"{prefix}_in": values for prefix, values in TYPE_CASES.values()}
    datatypes = {f"{prefix}_in": datatype for datatype, (prefix, _) in TYPE_CASES.items()}
    outputs = [f"{prefix}_out" for prefix, _ in TYPE_CASES.values()]
    got = infer(client, "types", arrays, datatypes, outputs, binary)
    for datatype, (prefix, sent) in TYPE_CASES.items():
        back = got[f"{prefix}_out"]
        expect(back.shape == sent.shape, f"{datatype}: shape {back.shape}, sent {sent.shape}")
        if datatype == "BYTES":
            back = as_bytes(back)
        else:
            expect(back.dtype == sent.dtype, f"{datatype}: came back as {back.dtype}, sent {sent.dtype}")
        expect(np.array_equal(back, sent), f"{datatype}: sent {sent.tolist()!r}, got back {back.tolist()!r}")


def unknown_model_is_404(client):
    inp = httpclient.InferInput("features", [1, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    try:
        client.infer("no_such_model", [inp])
    except InferenceServerException as err:
        expect(err.status() == "404", f"unknown model answered status {err.status()}, want 404 ({err})")
        return
    raise CheckFailed("inference on an unknown model succeeded")


def metadata_names_io(client):
    meta = client.get_model_metadata("mlp")
    expect(meta.get("name") == "mlp", f"metadata name is {meta.get('name')!r}")
    inputs = {t["name"]: t for t in meta.get("inputs", [])}
    outputs = {t["name"]: t for t in meta.get("outputs", [])}
    expect("features" in inputs, f"metadata inputs are {list(inputs)}, want features")
    expect(inputs["features"]["datatype"] == "FP32", f"features is {inputs['features']['datatype']}")
    expect(inputs["features"]["shape"] == [-1, 16], f"features shape is {inputs['features']['shape']}")
    expect("probabilities" in outputs, f"metadata outputs are {list(outputs)}, want probabilities")
    expect(outputs["probabilities"]["datatype"] == "FP32", f"probabilities is {outputs['probabilities']['datatype']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="gateway HTTP address, host:port")
    parser.add_argument("--models-dir", required=True, help="the model repository the gateway serves")
    parser.add_argument("--verbose", action="store_true", help="print tritonclient's requests and responses")
    args = parser.parse_args()

    client = httpclient.InferenceServerClient(url=args.url, verbose=args.verbose)
    newest = newest_version(args.models_dir, "mlp")
    checks = [
        ("server is live", lambda: expect(client.is_server_live(), "is_server_live() is False")),
        ("server is ready", lambda: expect(client.is_server_ready(), "is_server_ready() is False")),
        ("mlp is ready", lambda: expect(client.is_model_ready("mlp"), "is_model_ready('mlp') is False")),
        ("mlp metadata", lambda: metadata_names_io(client)),
        ("mlp infer, binary data", lambda: mlp_matches(client, args.models_dir, newest, binary=True)),
        ("mlp infer, JSON", lambda: mlp_matches(client, args.models_dir, newest, binary=False)),
        ("mlp version 1, binary data", lambda: mlp_matches(client, args.models_dir, "1", True, "1")),
        ("mlp version 1, JSON", lambda: mlp_matches(client, args.models_dir, "1", False, "1")),
        ("every datatype, binary data", lambda: types_round_trip(client, binary=True)),
        ("every datatype, JSON", lambda: types_round_trip(client, binary=False)),
        ("unknown model is 404", lambda: unknown_model_is_404(client)),
    ]
    status = run("tritonclient check", checks, show_traceback=args.verbose)
    client.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
