# Sourced by set-up scripts. install_venv VENV BOOTSTRAP_PYTHON REQUIREMENTS
# creates the virtualenv VENV with BOOTSTRAP_PYTHON when it has no python yet,
# then pip-installs REQUIREMENTS (one requirement per line) into it. Output
# goes to stderr; the caller's `log` function reports progress.
install_venv() {
    local venv="$1" bootstrap="$2" requirements="$3"
    if [[ ! -x "$venv/bin/python" ]]; then
        log "creating virtualenv in $venv"
        rm -rf "$venv"
        "$bootstrap" -m venv "$venv" >&2
    else
        log "checking virtualenv in $venv"
    fi
    local reqs
    mapfile -t reqs <<<"$requirements"
    log "installing ${reqs[*]}"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}" >&2
}

# ensure_venv VENV BOOTSTRAP_PYTHON REQUIREMENTS IMPORTS installs REQUIREMENTS
# into VENV unless the stamp file says they are already there, then checks
# that `import IMPORTS` works and writes the stamp. Changing REQUIREMENTS
# makes the next call reinstall.
ensure_venv() {
    local venv="$1" bootstrap="$2" requirements="$3" imports="$4"
    local stamp="$venv/.quiver-requirements"
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$requirements" ]]; then
        return 0
    fi
    export PIP_ROOT_USER_ACTION=ignore
    mkdir -p "$(dirname "$venv")"
    rm -f "$stamp"
    install_venv "$venv" "$bootstrap" "$requirements"
    "$venv/bin/python" -c "import $imports" >&2
    printf '%s' "$requirements" >"$stamp"
}
