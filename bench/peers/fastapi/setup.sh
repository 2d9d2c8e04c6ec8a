#!/usr/bin/env bash
# Installs the FastAPI peer: what a typical user writes to serve an ONNX model
# (FastAPI + uvicorn + onnxruntime), in a virtualenv under the cache dir.
#
# Idempotent: a second run checks one file and only prints, on stdout,
#
#   FASTAPI_PYTHON=<the virtualenv's python>
#
# Environment: QUIVER_CACHE_DIR (default $HOME/.cache/quiver), PYTHON (default python3).
set -euo pipefail

CACHE="${QUIVER_CACHE_DIR:-${HOME}/.cache/quiver}"
VENV="$CACHE/peers/fastapi-venv"
# One requirement per line; changing the list makes the next run reinstall.
REQUIREMENTS="fastapi==0.115.*
uvicorn[standard]==0.34.*
onnxruntime==1.31.1
numpy"

log() { echo "fastapi setup: $*" >&2; }
# shellcheck source=../../../scripts/lib/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../../scripts/lib/venv.sh"

ensure_venv "$VENV" "${PYTHON:-python3}" "$REQUIREMENTS" "fastapi, uvicorn, onnxruntime, numpy"
echo "FASTAPI_PYTHON=$VENV/bin/python"
