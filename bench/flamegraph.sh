#!/usr/bin/env bash
# A CPU flamegraph of the gateway under load: perf samples the gateway's
# threads (with DWARF call stacks) while quiver-bench drives the example
# MLP closed-loop, and inferno draws the SVG.
#
#   bench/flamegraph.sh [--bin PATH] [--out FILE.svg] [--seconds S]
#                       [--connections N] [--title TEXT] [-- GATEWAY ARGS...]
#
# --bin     the gateway binary (default: target/release/quiver-gateway, built)
# --out     the SVG (default bench/results/latency/flamegraph.svg)
# --seconds how long perf samples (default 4)
#
# Needs `perf` (Debian: linux-perf) and inferno (`cargo install inferno`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

bin="" out="bench/results/latency/flamegraph.svg" seconds=4 connections=32 title=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) bin="$(realpath "$2")"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --connections) connections="$2"; shift 2 ;;
        --title) title="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "flamegraph: unknown argument $1" >&2; exit 2 ;;
    esac
done
log() { echo "flamegraph: $*" >&2; }
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    command -v "$tool" >/dev/null || { log "$tool is not installed (linux-perf; cargo install inferno)"; exit 2; }
done

eval "$(scripts/setup.sh)"
export ORT_DYLIB_PATH
target="${CARGO_TARGET_DIR:-$ROOT/target}/release"
log "building (release)"
cargo build --release --locked -j"${CARGO_BUILD_JOBS:-2}" -p quiver-gateway -p quiver-bench >&2
bin="${bin:-$target/quiver-gateway}"
work="$(mktemp -d)"
gw_pid=""
cleanup() {
    [[ -n "$gw_pid" ]] && kill -TERM "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=8190
"$bin" --model-repository examples/models --http-addr "127.0.0.1:$port" --log warn "$@" \
    2>"$work/gateway.log" &
gw_pid=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null && break
    sleep 0.1
done
log "load: $connections connections, closed loop; sampling ${seconds}s"
"$target/quiver-bench" run --url "http://127.0.0.1:$port" --model mlp --closed \
    --connections "$connections" --duration $((seconds + 3)) --warmup 1 \
    --out "$work/load.json" >/dev/null &
load_pid=$!
sleep 2
perf record -F 499 --call-graph dwarf,16384 -p "$gw_pid" -o "$work/perf.data" \
    -- sleep "$seconds" 2>"$work/perf.log" >/dev/null
wait "$load_pid"
mkdir -p "$(dirname "$out")"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"$work/folded"
inferno-flamegraph --minwidth 0.5 --title "${title:-quiver-gateway, MLP, $connections connections}" \
    <"$work/folded" >"$out"
log "wrote $out"
