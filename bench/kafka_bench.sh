#!/usr/bin/env bash
# Measures the prediction log's cost (throughput with it off, local, Kafka),
# Kafka ingress records/s end to end, and the spool's replay rate, on this
# machine, against a real broker (nisshi). See bench/kafka_bench.py.
#
#   bench/kafka_bench.sh            # DURATION=10 CONNECTIONS=32 INGRESS_N=20000 SPOOL_N=20000
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh --broker)"
export ORT_DYLIB_PATH QUIVER_NISSHI
CACHE="${QUIVER_CACHE_DIR:-${HOME}/.cache/quiver}"
log() { echo "kafka bench: $*" >&2; }
# shellcheck source=../scripts/lib/venv.sh
source scripts/lib/venv.sh
ensure_venv "$CACHE/kafka-bench-venv" "${PYTHON:-python3}" "confluent-kafka" confluent_kafka
log "building release binaries"
cargo build -j"${CARGO_BUILD_JOBS:-2}" --release --locked -p quiver-gateway -p quiver-bench >&2
exec "$CACHE/kafka-bench-venv/bin/python" bench/kafka_bench.py "$@"
