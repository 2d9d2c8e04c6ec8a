"""The FastAPI peer: an ONNX model served the way a typical user writes it —
FastAPI + pydantic request models + onnxruntime, one uvicorn worker, one
session.run per request (no batching). It speaks the part of the Open
Inference Protocol v2 the load harness uses: readiness, model metadata and
JSON inference.

    python server.py --onnx MODEL.onnx --name mlp --port 8300
"""

import argparse
from typing import Any, List, Optional

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
ONNX_TO_V2 = {"tensor(float)": "FP32", "tensor(double)": "FP64",
              "tensor(int64)": "INT64", "tensor(int32)": "INT32"}


class Tensor(BaseModel):
    name: str
    shape: List[int]
    datatype: str
    data: List[Any]


class InferRequest(BaseModel):
    id: Optional[str] = None
    inputs: List[Tensor]


def make_app(onnx_path: str, name: str, threads: int) -> FastAPI:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])

    def describe(args):
        return [{"name": a.name, "datatype": ONNX_TO_V2.get(a.type, a.type),
                 "shape": [d if isinstance(d, int) else -1 for d in a.shape]} for a in args]

    metadata = {"name": name, "versions": ["1"], "platform": "onnxruntime_fastapi",
                "inputs": describe(session.get_inputs()), "outputs": describe(session.get_outputs())}
    app = FastAPI()

    @app.get("/v2/health/ready")
    def ready():
        return {"ready": True}

    @app.get("/v2/models/{model}")
    def model_metadata(model: str):
        if model != name:
            raise HTTPException(404, f"unknown model {model}")
        return metadata

    # A plain `def` endpoint: FastAPI runs it in its thread pool, as most
    # users' endpoints that call a blocking library are run.
    @app.post("/v2/models/{model}/infer")
    def infer(model: str, request: InferRequest):
        if model != name:
            raise HTTPException(404, f"unknown model {model}")
        feeds = {}
        for t in request.inputs:
            dtype = DTYPES.get(t.datatype)
            if dtype is None:
                raise HTTPException(400, f"unsupported datatype {t.datatype}")
            feeds[t.name] = np.asarray(t.data, dtype=dtype).reshape(t.shape)
        outputs = session.run(None, feeds)
        return {
            "model_name": name,
            "model_version": "1",
            "id": request.id,
            "outputs": [
                {"name": o.name, "datatype": ONNX_TO_V2.get(o.type, o.type),
                 "shape": list(v.shape), "data": v.ravel().tolist()}
                for o, v in zip(session.get_outputs(), outputs)
            ],
        }

    return app


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--onnx", required=True)
    p.add_argument("--name", default="mlp")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    a = p.parse_args()
    uvicorn.run(make_app(a.onnx, a.name, a.threads), host=a.host, port=a.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
