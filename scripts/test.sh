#!/usr/bin/env bash
# Sets up what the tests need (ONNX Runtime, the Python tools, the Kafka
# broker, the S3-compatible store) and runs every test: unit and property
# tests, then end-to-end tests that start the real binaries against them;
# and validates the Kubernetes manifests and Dockerfiles offline. Safe to run on a fresh machine of the kind in
# README.md; fast on a warm one.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/setup.sh --broker)"
export ORT_DYLIB_PATH QUIVER_PYTHON QUIVER_NISSHI QUIVER_MOTO

scripts/validate-deploy.sh

jobs="${CARGO_BUILD_JOBS:-2}"
echo "quiver test: building (cargo -j$jobs)" >&2
cargo build -j"$jobs" --locked --workspace --bins
cargo clippy -j"$jobs" --locked --workspace --all-targets -- -D warnings
# The end-to-end tests start the binaries built above. Doc tests are not
# run: the crates keep examples in tests, not in doc comments.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test -j"$jobs" --locked --workspace --all-targets 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
