#!/usr/bin/env bash
# Installs the Seldon MLServer peer: MLServer with a custom runtime
# (runtime.py next to this file) that runs the ONNX model with onnxruntime,
# in a virtualenv under the cache dir. uvloop is pinned below 0.22: newer
# uvloop breaks MLServer's inference worker processes.
#
# Idempotent: a second run checks one file and only prints, on stdout,
#
#   MLSERVER_VENV=<the virtualenv>
#
# Environment: QUIVER_CACHE_DIR (default $HOME/.cache/quiver), PYTHON (default python3).
set -euo pipefail

CACHE="${QUIVER_CACHE_DIR:-${HOME}/.cache/quiver}"
VENV="$CACHE/peers/mlserver-venv"
# One requirement per line; changing the list makes the next run reinstall.
REQUIREMENTS="mlserver==1.7.*
uvloop<0.22
onnxruntime==1.31.1
numpy"

log() { echo "mlserver setup: $*" >&2; }
# shellcheck source=../../../scripts/lib/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../../scripts/lib/venv.sh"

ensure_venv "$VENV" "${PYTHON:-python3}" "$REQUIREMENTS" "mlserver, onnxruntime, numpy"
echo "MLSERVER_VENV=$VENV"
