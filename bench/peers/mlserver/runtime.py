"""A custom MLServer runtime that serves an ONNX model with onnxruntime.

MLServer's adaptive batching (max_batch_size / max_batch_time in
model-settings.json) merges concurrent requests into one `predict` call and
splits the response back, so `predict` sees a batch along the first
dimension.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        options = ort.SessionOptions()
        extra = (params.extra or {}) if params else {}
        options.intra_op_num_threads = int(extra.get("intra_op_threads", 1))
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(params.uri, options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) if v.dtype == np.float64 else v
                 for k, v in feeds.items()}
        results = self._session.run(None, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(n, r) for n, r in zip(self._outputs, results)],
        )
