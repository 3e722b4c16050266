# shellcheck shell=bash
# Shared by infra/run.sh and infra/test.sh (sourced, not run). Expects PYTHON and say().

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
