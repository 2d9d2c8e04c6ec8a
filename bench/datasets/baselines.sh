#!/usr/bin/env bash
# Reference baselines (labels at once) on the demo's streams: see
# baselines.py. Sets up its virtualenv, extracts the real streams, exports
# the synthetic one with quiver-bench, then prints a Markdown table and
# writes bench/results/stream/baselines.json.
#
#     bench/datasets/baselines.sh [STREAM...]     # default: hyperplane rainfall flights
#
# Environment: QUIVER_BENCH (the quiver-bench binary; default
# target/release/quiver-bench under CARGO_TARGET_DIR or the repo).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
data="${QUIVER_CACHE_DIR:-${HOME}/.cache/quiver}/streams"
bench="${QUIVER_BENCH:-${CARGO_TARGET_DIR:-$root/target}/release/quiver-bench}"
streams=("$@")
[[ ${#streams[@]} -gt 0 ]] || streams=(hyperplane rainfall flights)

py="$("$here/setup.sh")"
"$here/extract.sh"
csvs=()
for s in "${streams[@]}"; do
    if [[ "$s" == hyperplane ]]; then
        "$bench" stream-export --stream hyperplane --with-times --out "$data/hyperplane.csv"
    fi
    csvs+=("$data/$s.csv")
done
"$py" "$here/baselines.py" "$root/bench/results/stream" "${csvs[@]}"
