# shellcheck shell=bash
# Shared by infra/run.sh and infra/test.sh (sourced, not run). Expects PYTHON and say().

# Debian's own python3 refuses pip installs into it (PEP 668, "externally managed"): vteller then
# gets a virtual environment of its own, var/venv, made once with that interpreter. Any other
# interpreter (a virtual environment, pyenv's, a container's) is used as it is. Sets PYTHON.
choose_python() {
    local managed='import os, sys, sysconfig
stdlib = sysconfig.get_path("stdlib")
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(stdlib + "/EXTERNALLY-MANAGED") else 1)'
    if ! "$PYTHON" -c "$managed"; then
        return 0
    fi
    if [[ ! -x var/venv/bin/python ]]; then
        if ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
            say "error: $PYTHON cannot make a virtual environment: apt-get install python3-venv, then retry"
            exit 1
        fi
        say "$PYTHON is the system's (PEP 668): installing vteller into its own var/venv"
        mkdir -p var
        "$PYTHON" -m venv var/venv
    fi
    PYTHON="$PWD/var/venv/bin/python"
}

# pip install -e takes several seconds even when nothing changed: skip it while pyproject.toml,
# the interpreter and the extras are those of the last successful install.
pip_install_once() {
    local spec="$1" stamp want
    stamp="var/.pip-installed${spec//[^a-z]/_}"
    want="$(command -v "$PYTHON") $(sha256sum pyproject.toml | cut -d' ' -f1) $spec"
    if [[ -f "$stamp" && "$(<"$stamp")" == "$want" ]]; then
        say "Python dependencies already installed (pip install -e '$spec'; delete $stamp to redo)"
        return 0
    fi
    say "installing Python dependencies: pip install -e '$spec' (a minute or two the first time)"
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --disable-pip-version-check -q -e "$spec"
    mkdir -p var
    echo "$want" >"$stamp"
}
