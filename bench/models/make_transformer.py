#!/usr/bin/env python3
"""Writes the compute-heavy benchmark model: a small transformer encoder
built by hand with onnx.helper (no torch), so that serving overhead is small
next to compute and the gateway can be compared with ONNX Runtime in process
at its best batch size.

    $QUIVER_PYTHON bench/models/make_transformer.py   # → bench/models/transformer/1/model.onnx

Graph (opset 17, IR 8, dynamic batch dimension):
  tokens FP32 [batch, SEQ, D_IN] → MatMul to D_MODEL
  → LAYERS × (multi-head self-attention + residual + LayerNorm,
              FFN with GELU + residual + LayerNorm)
  → mean over the sequence → Gemm to CLASSES → Softmax → probabilities [batch, CLASSES]
Fixed seed, so running it again writes byte-identical files. The .onnx file
(about 12 MB) is generated, not committed.
"""

import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SEQ, D_IN, D_MODEL, HEADS, D_FF, LAYERS, CLASSES = 16, 64, 256, 4, 1024, 4, 8
HERE = os.path.dirname(os.path.abspath(__file__))


def build():
    rng = np.random.default_rng(7)
    inits, nodes = [], []

    def weight(name, *shape, scale=None):
        scale = scale or 1.0 / np.sqrt(shape[0])
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name, values, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.array(values, dtype=dtype), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    dh = D_MODEL // HEADS
    split_heads = const("split_heads", [0, SEQ, HEADS, dh], np.int64)
    merge_heads = const("merge_heads", [0, SEQ, D_MODEL], np.int64)
    scale = const("scale", 1.0 / np.sqrt(dh))
    half, one, rsqrt2 = const("half", 0.5), const("one", 1.0), const("rsqrt2", 1.0 / np.sqrt(2.0))
    ones = const("ln_scale", np.ones(D_MODEL))
    zeros = const("ln_bias", np.zeros(D_MODEL))

    x = node("MatMul", ["tokens", weight("w_in", D_IN, D_MODEL)], "x0")
    for l in range(LAYERS):
        p = f"l{l}_"

        def heads(name):
            proj = node("MatMul", [x, weight(p + "w" + name, D_MODEL, D_MODEL)], p + name)
            r = node("Reshape", [proj, split_heads], p + name + "_r")
            return node("Transpose", [r], p + name + "_t", perm=[0, 2, 1, 3])  # [b, h, s, dh]

        q, k, v = heads("q"), heads("k"), heads("v")
        kt = node("Transpose", [k], p + "kt", perm=[0, 1, 3, 2])
        scores = node("Mul", [node("MatMul", [q, kt], p + "qk"), scale], p + "scores")
        attn = node("Softmax", [scores], p + "attn", axis=-1)
        ctx = node("Transpose", [node("MatMul", [attn, v], p + "ctx_h")], p + "ctx_t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_heads], p + "ctx")
        out = node("MatMul", [ctx, weight(p + "wo", D_MODEL, D_MODEL)], p + "attn_out")
        x = node("LayerNormalization", [node("Add", [x, out], p + "res1"), ones, zeros], p + "ln1", axis=-1)
        h = node("MatMul", [x, weight(p + "w1", D_MODEL, D_FF)], p + "ff1")
        # GELU (erf form): 0.5 · h · (1 + erf(h / √2)); opset 17 has no Gelu op.
        erf = node("Erf", [node("Mul", [h, rsqrt2], p + "h_s")], p + "erf")
        gelu = node("Mul", [node("Mul", [h, half], p + "h_half"), node("Add", [erf, one], p + "erf1")], p + "gelu")
        ff = node("MatMul", [gelu, weight(p + "w2", D_FF, D_MODEL)], p + "ff2")
        x = node("LayerNormalization", [node("Add", [x, ff], p + "res2"), ones, zeros], p + "ln2", axis=-1)
    pooled = node("ReduceMean", [x], "pooled", axes=[1], keepdims=0)
    logits = node("Gemm", [pooled, weight("w_out", D_MODEL, CLASSES), const("b_out", np.zeros(CLASSES))], "logits")
    node("Softmax", [logits], "probabilities", axis=-1)

    graph = helper.make_graph(
        nodes, "transformer",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", SEQ, D_IN])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name = "quiver-bench"
    return model


def main():
    model = build()
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(HERE, "transformer", "1", "model.onnx")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save_model(model, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    s = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    out = s.run(None, {"tokens": np.zeros((3, SEQ, D_IN), np.float32)})[0]
    assert out.shape == (3, CLASSES), out.shape
    print(f"transformer: {path} ({os.path.getsize(path) // 1024} KiB), input tokens [batch, {SEQ}, {D_IN}]")


if __name__ == "__main__":
    main()
