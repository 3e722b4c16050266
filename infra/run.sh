#!/usr/bin/env bash
# Run vteller on this machine: install it, start a local MinIO, serve on http://127.0.0.1:8080.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash infra/run.sh [VTELLER SERVE ARGS...]

Installs vteller and its Python dependencies (pip install -e .), builds MinIO if needed and
starts it on 127.0.0.1:9000 (bash infra/minio.sh), then runs 'vteller serve' in the foreground
with any arguments given here. MinIO keeps running after the server stops (the next run reuses
it); stop it with: bash infra/minio.sh stop

Environment:
  VTELLER_HOST, VTELLER_PORT   where the server listens (default 127.0.0.1 and 8080)
  VTELLER_DATA_DIR             database, MinIO data and credentials (default ./var)
  VTELLER_MINIO_PORT           MinIO's S3 port (default 9000; console on the next port)
  PYTHON                       the interpreter to install into (default python3)
EOF
}

[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { usage; exit 0; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
say() { printf 'run: %s\n' "$*" >&2; }

# shellcheck source=infra/lib.sh
source infra/lib.sh
choose_python

pip_install_once "."
bash infra/minio.sh install
bash infra/minio.sh start
eval "$(bash infra/minio.sh env)" # VTELLER_S3_ENDPOINT, VTELLER_S3_ACCESS_KEY, VTELLER_S3_SECRET_KEY

# The server reads its settings from VTELLER_* variables.
export VTELLER_HOST="${VTELLER_HOST:-127.0.0.1}" VTELLER_PORT="${VTELLER_PORT:-8080}"
# The console script sits beside the interpreter; pyenv's shims may not know it yet.
bin_dir="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
say "starting: vteller serve $* (VTELLER_HOST=$VTELLER_HOST VTELLER_PORT=$VTELLER_PORT, S3 at $VTELLER_S3_ENDPOINT)"
exec "$bin_dir/vteller" serve "$@"
