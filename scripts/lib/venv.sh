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
