#!/usr/bin/env bash
# Concept-switch streams nobody tuned the loop for, from river's
# generators (Agrawal, SEA, hyperplane), and their recovery scores against
# river's adaptive learners and an oracle: see switch.py. Uses the streams
# virtualenv (bench/datasets/setup.sh installs river with the rest).
#
#     bench/datasets/switch.sh write [NAME...]          # → $QUIVER_CACHE_DIR/streams/switch/NAME.csv
#     scripts/demo.sh --stream ~/.cache/quiver/streams/switch/agrawal-5-7-s77.csv
#     bench/datasets/switch.sh score CSV [PREDICTIONS]  # e.g. .quiver/demo/agrawal-5-7-s77/out/predictions.csv
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${QUIVER_CACHE_DIR:-${HOME}/.cache/quiver}/streams/switch"
py="$("$here/setup.sh")"
case "${1:-}" in
    write) shift; exec "$py" "$here/switch.py" write "$out" "$@" ;;
    score) shift; exec "$py" "$here/switch.py" score "$@" ;;
    *) echo "usage: $0 write [NAME...] | score CSV [PREDICTIONS]" >&2; exit 2 ;;
esac
