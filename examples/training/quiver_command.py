"""The run directory of a Quiver `command` training run, for Python scripts.

The trainer writes `spec.json`, `train.csv` and `holdout.csv` into the run
directory (`QUIVER_RUN_DIR`) and runs the command; the command writes
`model.onnx` (with the interface in the spec), its own predictions for the
held-out rows (`predictions.csv`) and, optionally, the versions of the
libraries it used (`libraries.json`). See trainer/README.md.
"""

import json
import os
import sys

import numpy as np
import onnx


def load():
    """(spec, x_train, y_train, x_holdout); the spec is a dict."""
    with open(os.environ["QUIVER_SPEC"]) as f:
        spec = json.load(f)
    run_dir = os.environ["QUIVER_RUN_DIR"]
    train = np.loadtxt(
        os.path.join(run_dir, spec["train"]["path"]), delimiter=",", skiprows=1, ndmin=2
    )
    holdout = np.loadtxt(
        os.path.join(run_dir, spec["holdout"]["path"]), delimiter=",", skiprows=1, ndmin=2
    )
    x, y = train[:, :-1].astype(np.float32), train[:, -1]
    if spec["task"] == "classification":
        y = y.astype(np.int64)
    progress(f"{len(y)} training rows, {len(holdout)} held out, {x.shape[1]} features")
    return spec, x, y, holdout.astype(np.float32)


def progress(message):
    """One line of progress, kept (the end of it) in the run record."""
    print(message, flush=True)


def check_classes(spec, classes):
    """Stops (a failed run, with the reason) unless the fitted classes are
    exactly 0..classes-1: probabilities need one column per class."""
    if list(classes) != list(range(spec["classes"])):
        sys.exit(f"the training rows have classes {list(classes)}, the task {spec['classes']}")


def _rename(graph, old, new):
    if old == new:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new


def finish(spec, model, predictions, libraries):
    """Gives `model` the spec's interface and writes the command's outputs.

    The graph's one input takes the spec's input name. Each output the spec
    names is taken from the graph by kind: `probabilities` and `value` from
    its FP32 output, `label` from its INT64 output; other outputs are
    dropped (the gateway serves exactly the configured interface).
    """
    graph = model.graph
    if len(graph.input) != 1:
        sys.exit(f"the exported graph has {len(graph.input)} inputs, not one")
    _rename(graph, graph.input[0].name, spec["input"]["name"])
    by_type = {}
    for out in graph.output:
        by_type.setdefault(out.type.tensor_type.elem_type, out.name)
    wanted = {
        "probabilities": onnx.TensorProto.FLOAT,
        "value": onnx.TensorProto.FLOAT,
        "label": onnx.TensorProto.INT64,
    }
    keep = []
    for out in spec["outputs"]:
        source = by_type.get(wanted[out["kind"]])
        if source is None:
            sys.exit(f"the exported graph has no output for '{out['name']}' ({out['kind']})")
        _rename(graph, source, out["name"])
        keep.append(out["name"])
    for out in list(graph.output):
        if out.name not in keep:
            graph.output.remove(out)
    for key, value in spec.get("metadata", {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    run_dir = os.environ["QUIVER_RUN_DIR"]
    onnx.save(model, os.path.join(run_dir, spec["write"]["model"]))
    predictions = np.asarray(predictions, dtype=np.float64)
    if predictions.ndim == 1:
        predictions = predictions[:, None]
    np.savetxt(
        os.path.join(run_dir, spec["write"]["predictions"]), predictions, delimiter=",", fmt="%.9g"
    )
    with open(os.path.join(run_dir, spec["write"]["libraries"]), "w") as f:
        json.dump(libraries, f)
    progress(f"wrote {spec['write']['model']} and {len(predictions)} predictions")
