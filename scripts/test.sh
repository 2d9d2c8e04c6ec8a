#!/usr/bin/env bash
# Sets up what the tests need (ONNX Runtime, the Python tools) and runs
# every test: unit and property tests, then end-to-end tests that start the
# real quiver-gateway binary. Safe to run on a fresh machine of the kind in
# README.md; fast on a warm one.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/setup.sh)"
export ORT_DYLIB_PATH QUIVER_PYTHON

jobs="${CARGO_BUILD_JOBS:-2}"
echo "quiver test: building (cargo -j$jobs)" >&2
cargo build -j"$jobs" --locked --workspace --bins
cargo clippy -j"$jobs" --locked --workspace --all-targets -- -D warnings
# The end-to-end tests start the binaries built above.
cargo test -j"$jobs" --locked --workspace
