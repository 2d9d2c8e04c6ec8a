#!/usr/bin/env bash
# Sets up ONNX Runtime, builds quiver-gateway (release) and serves the
# example model repository on 127.0.0.1:8000 (override: QUIVER_HTTP__ADDR or
# any flag of quiver-gateway --help, passed through).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/setup.sh)"
export ORT_DYLIB_PATH
cargo build -j"${CARGO_BUILD_JOBS:-2}" --locked --release -p quiver-gateway
exec "${CARGO_TARGET_DIR:-target}/release/quiver-gateway" \
    --model-repository examples/models --http-addr "${QUIVER_HTTP__ADDR:-127.0.0.1:8000}" "$@"
