#!/usr/bin/env bash
# Starts Seldon MLServer in the foreground as a benchmark peer, serving an
# ONNX model through the custom onnxruntime runtime in runtime.py with
# MLServer's adaptive batching on.
#
#   bench/peers/mlserver/start.sh --port N [options]
#
# Options:
#   --port N                HTTP port (required); gRPC gets N+1, metrics are off
#   --onnx PATH             model (default examples/models/mlp/2/model.onnx)
#   --name NAME             model name (default mlp)
#   --max-batch-size N      adaptive batching's largest batch (default 32)
#   --max-batch-time-us N   adaptive batching's wait (default 200)
#   --workers N             MLServer inference worker processes (default 1)
#
# The settings are generated into $QUIVER_CACHE_DIR/peers/mlserver-repositories/port-N
# on every start. Ready when GET /v2/health/ready gives 200.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../../.." && pwd)"
CACHE="${QUIVER_CACHE_DIR:-${HOME}/.cache/quiver}"
die() { echo "mlserver start: $*" >&2; exit 2; }

port="" onnx="$REPO_ROOT/examples/models/mlp/2/model.onnx" name="mlp"
max_batch_size=32 max_batch_time_us=200 workers=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) port="${2:?}"; shift 2 ;;
        --onnx) onnx="${2:?}"; shift 2 ;;
        --name) name="${2:?}"; shift 2 ;;
        --max-batch-size) max_batch_size="${2:?}"; shift 2 ;;
        --max-batch-time-us) max_batch_time_us="${2:?}"; shift 2 ;;
        --workers) workers="${2:?}"; shift 2 ;;
        *) die "unknown argument $1" ;;
    esac
done
[[ "$port" =~ ^[0-9]+$ ]] || die "--port N is required"
eval "$("$HERE/setup.sh")"

dir="$CACHE/peers/mlserver-repositories/port-$port"
rm -rf "$dir"
mkdir -p "$dir/$name"
cp "$HERE/runtime.py" "$dir/runtime.py"
onnx="$(cd "$(dirname "$onnx")" && pwd)/$(basename "$onnx")"
# Inputs and outputs as the metadata endpoint should describe them, read
# from the graph so the load harness can discover the request shape.
"$MLSERVER_VENV/bin/python" - "$onnx" "$name" "$max_batch_size" "$max_batch_time_us" \
    "$dir/$name/model-settings.json" <<'PY'
import json, sys
import onnxruntime as ort
onnx, name, mbs, us, out = sys.argv[1:]
types = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64"}
s = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
desc = lambda args: [{"name": a.name, "datatype": types.get(a.type, a.type),
                      "shape": [d if isinstance(d, int) else -1 for d in a.shape]} for a in args]
json.dump({"name": name, "implementation": "runtime.OnnxRuntimeModel",
           "max_batch_size": int(mbs), "max_batch_time": int(us) / 1e6,
           "inputs": desc(s.get_inputs()), "outputs": desc(s.get_outputs()),
           "parameters": {"uri": onnx, "version": "1", "extra": {"intra_op_threads": 1}}},
          open(out, "w"))
PY
cat >"$dir/settings.json" <<JSON
{"host": "127.0.0.1", "http_port": $port, "grpc_port": $((port + 1)),
 "metrics_endpoint": null, "parallel_workers": $workers, "debug": false,
 "gzip_enabled": false}
JSON
cd "$dir"
export PYTHONPATH="$dir"
exec "$MLSERVER_VENV/bin/mlserver" start "$dir"
