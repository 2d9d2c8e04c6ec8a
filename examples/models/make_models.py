#!/usr/bin/env python3
"""Regenerates Quiver's example model repository next to this file.

    $QUIVER_PYTHON examples/models/make_models.py

Layout: <model>/<version>/model.onnx. Every model is built with the `onnx`
package (opset 17, IR version 8) from fixed seeds, so running this again
writes byte-identical files. After saving, each model is checked with
onnx.checker (full_check) and run once in onnxruntime; one summary line per
model is printed.
"""

import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
HERE = os.path.dirname(os.path.abspath(__file__))

# The slow model: each row is spread over SLOW_TOKENS positions, then passes
# through SLOW_LAYERS x (MatMul + Tanh) at SLOW_WIDTH and is averaged back.
# Spreading the row keeps compute proportional to the batch size (a real GEMM
# per layer, not a weight-bound GEMV), and cycling through a few distinct
# weight matrices keeps the file small.
SLOW_WIDTH = 256
SLOW_TOKENS = 32
SLOW_LAYERS = 160
SLOW_DISTINCT_WEIGHTS = 8


def save(model, name, version):
    model.ir_version = IR_VERSION
    model.producer_name = "quiver-examples"
    model.producer_version = "1"
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(HERE, name, str(version), "model.onnx")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save_model(model, path)
    return path


def make_graph_model(nodes, name, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def mlp(seed):
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((16, 64)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(64) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((64, 4)) * 0.3).astype(np.float32)
    b2 = (rng.standard_normal(4) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["features", "w1", "b1"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["hidden_relu"]),
        helper.make_node("Gemm", ["hidden_relu", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    return make_graph_model(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )


# Name prefix -> ONNX element type, in the order of the Open Inference
# Protocol's datatypes (BYTES is ONNX STRING).
TYPES = [
    ("bool", TensorProto.BOOL),
    ("int8", TensorProto.INT8),
    ("int16", TensorProto.INT16),
    ("int32", TensorProto.INT32),
    ("int64", TensorProto.INT64),
    ("uint8", TensorProto.UINT8),
    ("uint16", TensorProto.UINT16),
    ("uint32", TensorProto.UINT32),
    ("uint64", TensorProto.UINT64),
    ("fp16", TensorProto.FLOAT16),
    ("fp32", TensorProto.FLOAT),
    ("fp64", TensorProto.DOUBLE),
    ("bytes", TensorProto.STRING),
]


def flaky(seed=3):
    """The mlp's interface (features [batch, 16] -> probabilities [batch, 4]),
    but rows whose first feature is 8 or more make ONNX Runtime fail the
    whole batch: the row picks a row of a table of 8 by Gather, and an index
    out of range is a run-time error. Rollback tests serve it as a canary
    with errors injected by the request, not by a mock."""
    rng = np.random.default_rng(seed)
    table = (rng.standard_normal((8, 4)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Slice", ["features", "start", "end", "axis"], ["first"]),
        helper.make_node("Floor", ["first"], ["first_floor"]),
        helper.make_node("Cast", ["first_floor"], ["index_2d"], to=TensorProto.INT64),
        helper.make_node("Squeeze", ["index_2d", "axis"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["logits"], axis=0),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    consts = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "start"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
    ]
    return make_graph_model(
        nodes,
        "flaky",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4])],
        consts,
    )


def types():
    nodes, inputs, outputs = [], [], []
    for prefix, elem in TYPES:
        inputs.append(helper.make_tensor_value_info(f"{prefix}_in", elem, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"{prefix}_out", elem, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"{prefix}_in"], [f"{prefix}_out"]))
    return make_graph_model(nodes, "types", inputs, outputs)


def fixed():
    shape = [2, 3]
    return make_graph_model(
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        "fixed",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, shape),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, shape)],
    )


def slow(seed=7):
    rng = np.random.default_rng(seed)
    init = [
        # Distinct offsets per position, so the positions are not copies.
        numpy_helper.from_array(
            (rng.standard_normal((SLOW_TOKENS, SLOW_WIDTH)) * 0.5).astype(np.float32), "positions"
        ),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([1, SLOW_TOKENS, 1], dtype=np.int64), "repeats"),
    ]
    for i in range(SLOW_DISTINCT_WEIGHTS):
        # Orthogonal matrices keep the activations' norm, so the Tanh chain
        # neither blows up nor collapses to zero.
        q, _ = np.linalg.qr(rng.standard_normal((SLOW_WIDTH, SLOW_WIDTH)))
        init.append(numpy_helper.from_array((q * 1.2).astype(np.float32), f"w{i}"))
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axis1"], ["x3"]),  # [batch, 1, W]
        helper.make_node("Tile", ["x3", "repeats"], ["tiled"]),  # [batch, T, W]
        helper.make_node("Add", ["tiled", "positions"], ["h"]),
    ]
    prev = "h"
    for layer in range(SLOW_LAYERS):
        w = f"w{layer % SLOW_DISTINCT_WEIGHTS}"
        nodes.append(helper.make_node("MatMul", [prev, w], [f"m{layer}"]))
        nodes.append(helper.make_node("Tanh", [f"m{layer}"], [f"t{layer}"]))
        prev = f"t{layer}"
    nodes.append(helper.make_node("ReduceMean", [prev], ["y"], axes=[1], keepdims=0))
    return make_graph_model(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SLOW_WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SLOW_WIDTH])],
        init,
    )


def random_input(rng, elem, shape):
    """A random array of the numpy type onnxruntime expects for `elem`."""
    if elem == TensorProto.BOOL:
        return rng.integers(0, 2, shape).astype(bool)
    if elem == TensorProto.STRING:
        return np.array([f"s{v}" for v in rng.integers(0, 1000, int(np.prod(shape)))], dtype=object).reshape(shape)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -100), min(info.max, 100), shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def describe(args):
    if len(args) > 3:
        return f"{len(args)} tensors ({args[0].name} .. {args[-1].name}) {args[0].shape}"
    return ", ".join(f"{a.name} {a.type}{a.shape}" for a in args)


def check(path, batch=2):
    """Runs the saved model once on random input; returns a summary line."""
    sess = session(path)
    graph = onnx.load(path).graph
    elem_types = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [batch if isinstance(d, str) else d for d in inp.shape]
        feeds[inp.name] = random_input(rng, elem_types[inp.name], shape)
    outputs = dict(zip((o.name for o in sess.get_outputs()), sess.run(None, feeds)))
    for name, out in outputs.items():
        if out.dtype.kind == "f" and not np.all(np.isfinite(out)):
            raise SystemExit(f"{path}: {name} has non-finite values")
        # In the `types` model every <t>_out is the Identity of <t>_in.
        twin = name[: -len("_out")] + "_in"
        if name.endswith("_out") and twin in feeds and not np.array_equal(out, feeds[twin]):
            raise SystemExit(f"{path}: {name} differs from {twin}")
    ins, outs = describe(sess.get_inputs()), describe(sess.get_outputs())
    size = os.path.getsize(path)
    return f"{os.path.relpath(path, HERE)} ({size} bytes): {ins} -> {outs}"


def time_slow(path, rows, runs=20):
    sess = session(path)
    x = np.random.default_rng(1).standard_normal((rows, SLOW_WIDTH)).astype(np.float32)
    sess.run(None, {"x": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main():
    paths = [
        save(mlp(seed=1), "mlp", 1),
        save(mlp(seed=2), "mlp", 2),
        save(flaky(), "flaky", 1),
        save(types(), "types", 1),
        save(fixed(), "fixed", 1),
        save(slow(), "slow", 1),
    ]
    for path in paths:
        print(check(path))
    if "--time" in sys.argv:
        for rows in (1, 8):
            print(f"slow/1: {rows} row(s), median {time_slow(paths[-1], rows):.2f} ms (1 intra-op thread)")


if __name__ == "__main__":
    main()
