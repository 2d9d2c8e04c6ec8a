#!/usr/bin/env python3
"""Writes a Triton model repository that serves an ONNX model through Triton's
python backend, for benchmarking Triton against Quiver on the same model.

The nvidia-pytriton wheel ships tritonserver with the python backend only, so
the model is a TritonPythonModel that runs the .onnx file with onnxruntime.
Triton's dynamic batcher groups requests; execute() gets the whole group,
concatenates it into one batch, runs onnxruntime once and splits the result
back per request.

    make_repository.py --onnx examples/models/mlp/2/model.onnx --name mlp \\
        --out /tmp/repo --max-batch-size 32 --max-queue-delay-us 200

writes

    OUT/NAME/config.pbtxt
    OUT/NAME/1/model.py
    OUT/NAME/1/model.onnx

Only the standard library is needed. When onnxruntime is importable, the input
and output names and widths are checked against the .onnx file.
"""

import argparse
import pathlib
import shutil
import sys

CONFIG_TEMPLATE = """\
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{input}"
    data_type: TYPE_FP32
    dims: [ {input_dim} ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: TYPE_FP32
    dims: [ {output_dim} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [
  {{
    count: {instances}
    kind: KIND_CPU
  }}
]
parameters: {{
  key: "intra_op_num_threads"
  value: {{ string_value: "{intra_op_threads}" }}
}}
"""

MODEL_PY = '''\
"""Runs model.onnx (next to this file) with onnxruntime inside Triton's
python backend. Written by Quiver's bench/peers/triton/make_repository.py."""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        params = config.get("parameters", {})
        threads = int(params.get("intra_op_num_threads", {}).get("string_value", "1"))

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )

    def execute(self, requests):
        # The dynamic batcher hands over every request it grouped; each one
        # may itself hold several rows.
        arrays = [
            pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            for request in requests
        ]
        rows = [a.shape[0] for a in arrays]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        result = self.session.run([self.output_name], {self.input_name: batch})[0]

        responses = []
        start = 0
        for n in rows:
            part = np.ascontiguousarray(result[start : start + n])
            start += n
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(self.output_name, part)]
                )
            )
        return responses

    def finalize(self):
        self.session = None
'''


def check_against_onnx(path, args):
    """Compares names and widths with the .onnx file, if onnxruntime is here."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    problems = []
    if len(inputs) != 1 or len(outputs) != 1:
        problems.append(
            f"the model has {len(inputs)} inputs and {len(outputs)} outputs; one of each is supported"
        )
    else:
        for what, meta, name, dim in (
            ("input", inputs[0], args.input, args.input_dim),
            ("output", outputs[0], args.output, args.output_dim),
        ):
            if meta.name != name:
                problems.append(f"{what} is named {meta.name!r}, not {name!r}")
            if meta.type != "tensor(float)":
                problems.append(f"{what} {meta.name!r} is {meta.type}, not tensor(float)")
            if len(meta.shape) != 2 or meta.shape[1] != dim:
                problems.append(f"{what} {meta.name!r} has shape {meta.shape}, not [batch, {dim}]")
    if problems:
        sys.exit(f"make_repository: {path}: " + "; ".join(problems))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", required=True, type=pathlib.Path, help="the .onnx file to serve")
    parser.add_argument("--name", default="mlp", help="model name in Triton (default mlp)")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="model repository directory")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-us", type=int, default=200)
    parser.add_argument("--instances", type=int, default=1, help="instance_group count (default 1)")
    parser.add_argument("--intra-op-threads", type=int, default=1,
                        help="onnxruntime intra_op_num_threads (default 1)")
    parser.add_argument("--input", default="features", help="input name (default features)")
    parser.add_argument("--input-dim", type=int, default=16, help="input width (default 16)")
    parser.add_argument("--output", default="probabilities", help="output name (default probabilities)")
    parser.add_argument("--output-dim", type=int, default=4, help="output width (default 4)")
    args = parser.parse_args()

    if not args.onnx.is_file():
        sys.exit(f"make_repository: {args.onnx} is not a file")
    if args.max_batch_size < 1 or args.max_queue_delay_us < 0 or args.instances < 1:
        sys.exit("make_repository: --max-batch-size and --instances must be >= 1, "
                 "--max-queue-delay-us >= 0")
    check_against_onnx(args.onnx, args)

    model_dir = args.out / args.name
    version_dir = model_dir / "1"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(
        CONFIG_TEMPLATE.format(
            name=args.name,
            max_batch_size=args.max_batch_size,
            input=args.input,
            input_dim=args.input_dim,
            output=args.output,
            output_dim=args.output_dim,
            max_queue_delay_us=args.max_queue_delay_us,
            instances=args.instances,
            intra_op_threads=args.intra_op_threads,
        )
    )
    (version_dir / "model.py").write_text(MODEL_PY)
    shutil.copyfile(args.onnx, version_dir / "model.onnx")


if __name__ == "__main__":
    main()
