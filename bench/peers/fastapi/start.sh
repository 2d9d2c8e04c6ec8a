#!/usr/bin/env bash
# Starts the FastAPI peer in the foreground (see server.py):
#
#   bench/peers/fastapi/start.sh --port N [--onnx PATH] [--name NAME] [--threads N]
#
# Defaults: examples/models/mlp/2/model.onnx served as `mlp`, onnxruntime with
# one intra-op thread. Runs setup.sh first; exec's the server, so SIGTERM stops it.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../../.." && pwd)"
eval "$("$HERE/setup.sh")"
args=("$@")
[[ " ${args[*]} " == *" --onnx "* ]] || args+=(--onnx "$REPO_ROOT/examples/models/mlp/2/model.onnx")
exec "$FASTAPI_PYTHON" "$HERE/server.py" "${args[@]}"
