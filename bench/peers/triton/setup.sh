#!/usr/bin/env bash
# Installs NVIDIA Triton Inference Server as a benchmark peer for Quiver, using
# only PyPI: the nvidia-pytriton wheel ships a real `tritonserver` binary with
# its python backend (and no other backend), so the peer serves the ONNX model
# through a python-backend model that calls onnxruntime (see README.md).
#
# What it does, once:
#   - creates a virtualenv with nvidia-pytriton, onnxruntime and numpy;
#   - lays out a Triton backend directory holding the python backend and the
#     python backend stub built for this virtualenv's Python version, the way
#     pytriton itself does before it starts tritonserver.
#
# Idempotent: a second run checks one file, prints nothing on stderr and only
# repeats the lines below on stdout, meant for
#
#     eval "$(bench/peers/triton/setup.sh)"
#
#   TRITONSERVER=<the tritonserver binary inside the wheel>
#   TRITON_BACKEND_DIR=<for --backend-directory>
#   TRITON_CACHE_DIR=<for --cache-directory>
#   TRITON_LD_LIBRARY_PATH=<libraries tritonserver and the stub need>
#   TRITON_VENV=<the virtualenv; its bin/ must lead PATH for the stub>
#   TRITON_PYTHON=<the virtualenv's python>
#
# Environment:
#   QUIVER_CACHE_DIR  where everything is installed (default $HOME/.cache/quiver)
#   PYTHON            interpreter the virtualenv is made from (default python3);
#                     it must be a CPython that pytriton ships a stub for
#                     (3.8 to 3.13)
set -euo pipefail

CACHE="${QUIVER_CACHE_DIR:-${HOME}/.cache/quiver}"
BOOTSTRAP_PYTHON="${PYTHON:-python3}"
VENV="$CACHE/peers/triton-venv"
VENV_PYTHON="$VENV/bin/python"
LAYOUT="$VENV/quiver-triton"
ENV_FILE="$LAYOUT/env"
STAMP="$VENV/.quiver-requirements"

# The virtualenv's requirements, one per line. Changing this list (or the
# layout version below) makes the next run reinstall.
REQUIREMENTS="nvidia-pytriton==0.7.0
onnxruntime==1.31.1
numpy"
LAYOUT_VERSION=1
WANTED_STAMP="$REQUIREMENTS
layout=$LAYOUT_VERSION"

log() { echo "triton setup: $*" >&2; }
# shellcheck source=../../../scripts/lib/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../../scripts/lib/venv.sh"

if [[ -x "$VENV_PYTHON" && -f "$STAMP" && -f "$ENV_FILE" \
      && "$(cat "$STAMP")" == "$WANTED_STAMP" ]]; then
    cat "$ENV_FILE"
    exit 0
fi

export PIP_ROOT_USER_ACTION=ignore
started=$SECONDS
mkdir -p "$CACHE/peers"

# --- virtualenv ---------------------------------------------------------------
rm -f "$STAMP"
log "about 450 MB to install"
install_venv "$VENV" "$BOOTSTRAP_PYTHON" "$REQUIREMENTS"

# --- where the wheel put things -----------------------------------------------
# pytriton/tritonserver/ holds bin/tritonserver, backends/python/ (the backend
# library and triton_python_backend_utils.py), caches/ and one python backend
# stub per Python version under python_backend_stubs/<major.minor>/. The shared
# libraries they link (libtritonserver, libcudart, ...) are in the sibling
# nvidia_pytriton.libs/ directory.
log "locating tritonserver in the installed wheel"
read -r PYVER PYTRITON_DIR WHEEL_LIBS PY_LIBDIR PY_SHARED < <("$VENV_PYTHON" - <<'EOF'
import pathlib, sys, sysconfig
import pytriton
from pytriton.utils.distribution import get_libs_path
root = pathlib.Path(pytriton.__file__).resolve().parent
print(f"{sys.version_info[0]}.{sys.version_info[1]}", root / "tritonserver", get_libs_path(),
      sysconfig.get_config_var("LIBDIR") or "-", sysconfig.get_config_var("Py_ENABLE_SHARED") or 0)
EOF
)
TRITONSERVER="$PYTRITON_DIR/bin/tritonserver"
STUB="$PYTRITON_DIR/python_backend_stubs/$PYVER/triton_python_backend_stub"
for f in "$TRITONSERVER" "$STUB" "$PYTRITON_DIR/backends/python/libtriton_python.so" \
         "$PYTRITON_DIR/backends/python/triton_python_backend_utils.py"; do
    if [[ ! -e "$f" ]]; then
        log "expected $f in the nvidia-pytriton wheel; it is not there"
        exit 1
    fi
done

# The stub embeds CPython and links libpython$PYVER.so.1.0. It must be the
# libpython of the interpreter the virtualenv was made from (pytriton gets
# this by running the stub from the same environment), so that directory goes
# first; an interpreter built without a shared libpython falls back to the
# system's one of the same version.
ld_path="$WHEEL_LIBS"
if [[ "$PY_SHARED" == 1 && -e "$PY_LIBDIR/libpython$PYVER.so.1.0" ]]; then
    ld_path="$PY_LIBDIR:$ld_path"
fi

# --- backend directory ----------------------------------------------------------
# As pytriton does: a copy of backends/ with the stub for this Python version
# put next to libtriton_python.so, where the python backend looks for it.
# Copies, not links: the backend finds the stub from its own real location.
log "laying out the python backend for Python $PYVER in $LAYOUT"
rm -rf "$LAYOUT.tmp"
mkdir -p "$LAYOUT.tmp/backends/python"
cp "$PYTRITON_DIR/backends/python/libtriton_python.so" \
   "$PYTRITON_DIR/backends/python/triton_python_backend_utils.py" \
   "$STUB" "$LAYOUT.tmp/backends/python/"

# Every library must resolve; a missing libpython is the likely failure.
for bin in "$TRITONSERVER" "$LAYOUT.tmp/backends/python/triton_python_backend_stub" \
           "$LAYOUT.tmp/backends/python/libtriton_python.so"; do
    missing="$(LD_LIBRARY_PATH="$ld_path" ldd "$bin" | grep 'not found' || true)"
    if [[ -n "$missing" ]]; then
        log "$bin has unresolved libraries:"
        echo "$missing" >&2
        [[ "$missing" == *libpython* ]] && \
            log "install libpython$PYVER (apt-get install libpython$PYVER) or use a PYTHON built with --enable-shared"
        exit 1
    fi
done

{
    printf 'TRITONSERVER=%q\n' "$TRITONSERVER"
    printf 'TRITON_BACKEND_DIR=%q\n' "$LAYOUT/backends"
    printf 'TRITON_CACHE_DIR=%q\n' "$PYTRITON_DIR/caches"
    printf 'TRITON_LD_LIBRARY_PATH=%q\n' "$ld_path"
    printf 'TRITON_VENV=%q\n' "$VENV"
    printf 'TRITON_PYTHON=%q\n' "$VENV_PYTHON"
} >"$LAYOUT.tmp/env"

# Smoke test: the server binary runs and prints its usage (`--help` exits 1).
usage="$(LD_LIBRARY_PATH="$ld_path" "$TRITONSERVER" --help 2>&1 || true)"
if [[ "$usage" != *--model-repository* ]]; then
    log "$TRITONSERVER does not run"
    exit 1
fi

rm -rf "$LAYOUT"
mv "$LAYOUT.tmp" "$LAYOUT"
printf '%s' "$WANTED_STAMP" >"$STAMP"
log "ready in $((SECONDS - started)) s"
cat "$ENV_FILE"
