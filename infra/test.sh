#!/usr/bin/env bash
# Run every test on this machine: install what the tests need, start a throwaway MinIO and
# PostgreSQL, run pytest.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash infra/test.sh [PYTEST ARGS...]

1. apt-get installs chromium, fonts-noto-cjk, ffmpeg, openssl, postgresql, coturn and nginx-light
   if any is missing (root or sudo)
2. pip install -e '.[test]' (skipped while pyproject.toml is unchanged)
3. builds MinIO if needed and starts a test instance on 127.0.0.1:9100, data in
   ${VTELLER_DATA_DIR:-./var}/test-minio (wiped at each start), and exports
   VTELLER_S3_ENDPOINT, VTELLER_S3_ACCESS_KEY, VTELLER_S3_SECRET_KEY for the tests
   and a throwaway PostgreSQL cluster on 127.0.0.1:5433 (in ${TMPDIR:-/tmp}, wiped at each
   start), exporting VTELLER_TEST_POSTGRES_URL: tests of several machines, and those run on
   both databases, make a database of their own there
4. python -m pytest tests -q -rs [PYTEST ARGS...] ('tests' is left out when the args name
   paths under tests/), and stops that MinIO and PostgreSQL at the end

Exits with pytest's exit status. Examples:
  bash infra/test.sh tests/unit          only the unit tests
  bash infra/test.sh -k colour -x        pytest options pass through

Environment: VTELLER_TEST_MINIO_PORT (default 9100), VTELLER_TEST_POSTGRES_PORT (default 5433),
PYTHON (default python3); VTELLER_TEST_DATABASE=postgresql runs every in-process test server on
PostgreSQL instead of SQLite (docs/deployment.md).
EOF
}

[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { usage; exit 0; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
say() { printf 'test: %s\n' "$*" >&2; }

# --- 1. system packages: Chromium for the end-to-end tests, CJK fonts so Chinese UI text renders,
# ffmpeg to inspect recordings, openssl to verify an export package without vteller, postgresql
# for the database that workers on several machines share, coturn for the TURN relay, nginx for
# the TLS front (infra/proxy.sh). dpkg-query,
# not dpkg -s: a removed package whose configuration files remain is "known" to dpkg -s but not
# installed.
installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }
missing=()
for pkg in chromium fonts-noto-cjk ffmpeg openssl postgresql coturn; do
    installed "$pkg" || missing+=("$pkg")
done
# Any of Debian's nginx packages will do; nginx-light is the smallest.
[[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
if ((${#missing[@]})); then
    sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || { say "error: need root (or sudo) to apt-get install ${missing[*]}"; exit 1; }
        sudo=(sudo)
    fi
    say "installing system packages: ${missing[*]} (once; apt-get update + install)"
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
else
    say "system packages already installed (chromium, fonts-noto-cjk, ffmpeg, openssl, postgresql, coturn, nginx-light)"
fi

# --- 2. Python packages.
# shellcheck source=infra/lib.sh
source infra/lib.sh
choose_python
pip_install_once ".[test]"

# --- 3. A MinIO of the tests' own, on another port than run.sh's, so that tests never touch
# the data of a development server running beside them.
minio_dir="${VTELLER_DATA_DIR:-./var}/test-minio"
minio_opts=(--data-dir "$minio_dir" --port "${VTELLER_TEST_MINIO_PORT:-9100}")
bash infra/minio.sh install
started_minio=0
postgres_opts=(--data-dir "${TMPDIR:-/tmp}/vteller-test-postgres-${VTELLER_TEST_POSTGRES_PORT:-5433}"
    --port "${VTELLER_TEST_POSTGRES_PORT:-5433}")
started_postgres=0
# shellcheck disable=SC2317  # called by the EXIT trap
stop_servers() {
    if ((started_minio)); then
        bash infra/minio.sh stop "${minio_opts[@]}" || true
    fi
    if ((started_postgres)); then
        bash infra/postgres.sh stop "${postgres_opts[@]}" || true
    fi
}
trap stop_servers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if bash infra/minio.sh status "${minio_opts[@]}" 2>/dev/null; then
    say "reusing the test MinIO that is already running (left running at the end)"
else
    # Throwaway data: objects under COMPLIANCE retention could otherwise never be cleaned up.
    rm -rf -- "${minio_dir:?}/data"
    started_minio=1
    bash infra/minio.sh start "${minio_opts[@]}"
fi
eval "$(bash infra/minio.sh env "${minio_opts[@]}")"

# The same for PostgreSQL. Its cluster lives outside the checkout: the server runs as the user
# 'postgres', which may not enter the directories above a checkout under /root.
if bash infra/postgres.sh status "${postgres_opts[@]}" 2>/dev/null; then
    say "reusing the test PostgreSQL that is already running (left running at the end)"
else
    rm -rf -- "${postgres_opts[1]:?}"
    started_postgres=1
    bash infra/postgres.sh start "${postgres_opts[@]}"
fi
eval "$(bash infra/postgres.sh env "${postgres_opts[@]}")"
export VTELLER_TEST_POSTGRES_URL="$VTELLER_POSTGRES_URL"
unset VTELLER_POSTGRES_URL

# --- 4. pytest; its exit status is ours (the EXIT trap still stops MinIO and PostgreSQL).
# 'tests' unless the arguments name test paths themselves (pytest would run both).
targets=(tests)
for arg in "$@"; do
    [[ "$arg" == tests || "$arg" == tests/* ]] && targets=()
done
pytest=("$PYTHON" -m pytest "${targets[@]}" -q -rs "$@")
say "running: ${pytest[*]}"
status=0
"${pytest[@]}" || status=$?
exit "$status"
