#!/usr/bin/env bash
# Build, start, stop and describe a local MinIO (S3-compatible store for vteller's archives).
set -euo pipefail

# Pinned: MinIO's community edition is only distributed as source, so we build one known version.
MINIO_MODULE="github.com/minio/minio"
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"

usage() {
    cat <<EOF
Usage: bash infra/minio.sh COMMAND [OPTIONS]

Commands:
  install   build MinIO ${MINIO_VERSION} with 'go install' (Go >= 1.24) unless that version is
            already built in \$(go env GOBIN) or \$(go env GOPATH)/bin (the first build takes
            several minutes; later ones reuse Go's caches)
  start     start MinIO on 127.0.0.1 in the background and wait until it is healthy;
            does nothing if this data dir's MinIO is already running
  stop      stop the MinIO started for this data dir
  status    say whether it runs (exit status 0 if it does, 3 if not)
  env       print 'export VTELLER_S3_ENDPOINT=... VTELLER_S3_ACCESS_KEY=... VTELLER_S3_SECRET_KEY=...'
            for a running MinIO, for use as: eval "\$(bash infra/minio.sh env)"

Options (start, stop, status, env):
  --data-dir DIR       default \${VTELLER_MINIO_DIR:-\${VTELLER_DATA_DIR:-./var}/minio}
                       holds data/ (the objects), minio.env (root credentials, mode 0600,
                       generated at first start), minio.pid, minio.endpoint, minio.log
  --port N             S3 API port, default \${VTELLER_MINIO_PORT:-9000}
  --console-port N     web console port, default \${VTELLER_MINIO_CONSOLE_PORT:-PORT+1}

MinIO listens on loopback only. The credentials never leave the data dir: keep it out of git.
EOF
}

say() { printf 'minio: %s\n' "$*" >&2; }
# shellcheck source=infra/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/daemon.sh"
die() { printf 'minio: error: %s\n' "$*" >&2; exit 1; }

find_go() {
    # Go is installed to /usr/local/go on our machines, which is not always on PATH.
    if command -v go >/dev/null 2>&1; then
        command -v go
    elif [[ -x /usr/local/go/bin/go ]]; then
        echo /usr/local/go/bin/go
    else
        die "Go is not installed: install Go >= 1.24 into /usr/local/go (https://go.dev/dl/), then retry"
    fi
}

# Where `go install` puts it: GOBIN when set, else the first GOPATH entry's bin.
minio_bin() {
    local go gobin
    go="$(find_go)"
    gobin="$("$go" env GOBIN)"
    if [[ -n "$gobin" ]]; then
        echo "$gobin/minio"
    else
        echo "$("$go" env GOPATH | cut -d: -f1)/bin/minio"
    fi
}

# The module version a Go binary was built from (empty when it cannot be read).
built_version() { "$1" version -m "$2" 2>/dev/null | awk -v m="$MINIO_MODULE" '$1 == "mod" && $2 == m { print $3 }'; }

check_go_version() {
    local version minor
    version="$("$1" env GOVERSION)"   # e.g. go1.24.1
    minor="$(echo "$version" | sed -E 's/^go1\.([0-9]+).*/\1/')"
    if ! [[ "$minor" =~ ^[0-9]+$ ]] || ((minor < 24)); then
        die "$1 is $version; MinIO needs Go >= 1.24: install it into /usr/local/go (https://go.dev/dl/) and put it first on PATH"
    fi
}

cmd_install() {
    local go bin built
    go="$(find_go)"
    bin="$(minio_bin)"
    if [[ -x "$bin" ]]; then
        built="$(built_version "$go" "$bin")"
        if [[ "$built" == "$MINIO_VERSION" ]]; then
            say "already installed: $bin ($MINIO_VERSION)"
            return 0
        fi
        say "$bin was built from ${built:-an unknown version}, not the pinned $MINIO_VERSION: rebuilding"
    fi
    check_go_version "$go"
    say "building ${MINIO_MODULE}@${MINIO_VERSION} from source into $bin"
    say "(first build: several minutes and a few hundred MB of Go modules; later builds are quick)"
    if ! "$go" install "${MINIO_MODULE}@${MINIO_VERSION}"; then
        die "go install failed (see above); check that the Go module proxy is reachable and retry"
    fi
    say "installed: $bin"
}

# --- options shared by start/stop/status/env -------------------------------------------------
DATA_DIR="${VTELLER_MINIO_DIR:-${VTELLER_DATA_DIR:-./var}/minio}"
PORT="${VTELLER_MINIO_PORT:-9000}"
CONSOLE_PORT="${VTELLER_MINIO_CONSOLE_PORT:-}"

parse_options() {
    while (($#)); do
        case "$1" in
            --data-dir) DATA_DIR="${2:?--data-dir needs a value}"; shift 2 ;;
            --port) PORT="${2:?--port needs a value}"; shift 2 ;;
            --console-port) CONSOLE_PORT="${2:?--console-port needs a value}"; shift 2 ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option '$1' (see: bash infra/minio.sh --help)" ;;
        esac
    done
    [[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number, got '$PORT'"
    CONSOLE_PORT="${CONSOLE_PORT:-$((PORT + 1))}"
    [[ "$CONSOLE_PORT" =~ ^[0-9]+$ ]] || die "--console-port must be a number, got '$CONSOLE_PORT'"
    # Absolute, so that the pid file and data dir mean the same thing from any directory.
    DATA_DIR="$(realpath -m -- "$DATA_DIR")"
    ENV_FILE="$DATA_DIR/minio.env"
    PID_FILE="$DATA_DIR/minio.pid"
    ENDPOINT_FILE="$DATA_DIR/minio.endpoint"
    LOG_FILE="$DATA_DIR/minio.log"
}

running_pid() { live_pid "$PID_FILE" minio; }

healthy() { curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$1/minio/health/live"; }

need_curl() {
    command -v curl >/dev/null 2>&1 || die "curl is needed to check MinIO's health: apt-get install curl, then retry"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

ensure_credentials() {
    if [[ -f "$ENV_FILE" ]]; then
        if [[ "$(stat -c %a "$ENV_FILE")" != 600 ]]; then
            say "tightening permissions of $ENV_FILE to 0600"
            chmod 600 "$ENV_FILE"
        fi
        return 0
    fi
    say "generating root credentials in $ENV_FILE (mode 0600)"
    # Hex only, so that the file is safe to 'source' and to print in export lines.
    (
        umask 077
        printf 'MINIO_ROOT_USER=vteller-%s\nMINIO_ROOT_PASSWORD=%s\n' \
            "$(random_hex 6)" "$(random_hex 24)" >"$ENV_FILE.tmp"
        mv "$ENV_FILE.tmp" "$ENV_FILE"
    )
}

cmd_start() {
    parse_options "$@"
    need_curl
    local bin pid endpoint
    endpoint="http://127.0.0.1:$PORT"
    if pid="$(running_pid)"; then
        say "already running (pid $pid) at $(cat "$ENDPOINT_FILE" 2>/dev/null || echo '?'), data in $DATA_DIR"
        return 0
    fi
    bin="$(minio_bin)"
    [[ -x "$bin" ]] || die "MinIO is not installed: run 'bash infra/minio.sh install' first"
    if port_busy "$PORT" || port_busy "$CONSOLE_PORT"; then
        die "port $PORT or $CONSOLE_PORT on 127.0.0.1 is taken by another program" \
            "(another MinIO?): stop it, or pass --port/--console-port (VTELLER_MINIO_PORT)"
    fi
    mkdir -p "$DATA_DIR/data"
    ensure_credentials

    say "starting MinIO at $endpoint (console 127.0.0.1:$CONSOLE_PORT), data in $DATA_DIR/data, log $LOG_FILE"
    # setsid: MinIO outlives this script and the Ctrl-C of whoever started it (run.sh exec's
    # the server in the foreground); stop it with 'minio.sh stop'. The inner shell records
    # its own pid and then becomes MinIO (exec), so the pid file is right whether or not
    # setsid had to fork. Credentials travel in the environment, not on the command line
    # (where 'ps' would show them).
    (
        set -a
        # shellcheck source=/dev/null
        source "$ENV_FILE"
        set +a
        export MINIO_UPDATE=off # no update checks: the network is closed, and we pin versions
        cd "$DATA_DIR"
        # shellcheck disable=SC2016  # $$ and $@ are the inner shell's
        setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
            "$bin" server "$DATA_DIR/data" \
            --address "127.0.0.1:$PORT" --console-address "127.0.0.1:$CONSOLE_PORT" \
            </dev/null >>"$LOG_FILE" 2>&1 &
    )

    local deadline=$((SECONDS + 60))
    until healthy "$PORT"; do
        if ((SECONDS >= deadline)); then
            cmd_stop_quiet
            die "MinIO did not become healthy within 60 s; see $LOG_FILE"
        fi
        # Not running_pid(): until the exec the process is still called bash.
        pid="$(cat "$PID_FILE" 2>/dev/null)" || pid=""
        if [[ -n "$pid" && ! -d "/proc/$pid" ]]; then
            rm -f "$PID_FILE"
            tail -n 20 "$LOG_FILE" >&2 || true
            die "MinIO exited during startup (log above, full log in $LOG_FILE)"
        fi
        sleep 0.2
    done
    echo "$endpoint" >"$ENDPOINT_FILE"
    say "ready (pid $(<"$PID_FILE")): $endpoint"
}

cmd_stop_quiet() {
    local pid
    pid="$(running_pid)" || return 0
    terminate MinIO "$pid"
    rm -f "$PID_FILE" "$ENDPOINT_FILE"
}

cmd_stop() {
    parse_options "$@"
    local pid
    if ! pid="$(running_pid)"; then
        say "not running (data dir $DATA_DIR)"
        return 0
    fi
    say "stopping MinIO (pid $pid)"
    cmd_stop_quiet
    say "stopped"
}

cmd_status() {
    parse_options "$@"
    local pid
    if pid="$(running_pid)"; then
        say "running (pid $pid) at $(cat "$ENDPOINT_FILE" 2>/dev/null || echo '?'), data in $DATA_DIR"
    else
        say "not running (data dir $DATA_DIR)"
        return 3
    fi
}

cmd_env() {
    parse_options "$@"
    if ! running_pid >/dev/null || [[ ! -f "$ENDPOINT_FILE" ]]; then
        die "MinIO is not running for $DATA_DIR: run 'bash infra/minio.sh start' first"
    fi
    local MINIO_ROOT_USER MINIO_ROOT_PASSWORD
    # shellcheck source=/dev/null
    source "$ENV_FILE"
    printf 'export VTELLER_S3_ENDPOINT=%q\n' "$(<"$ENDPOINT_FILE")"
    printf 'export VTELLER_S3_ACCESS_KEY=%q\n' "$MINIO_ROOT_USER"
    printf 'export VTELLER_S3_SECRET_KEY=%q\n' "$MINIO_ROOT_PASSWORD"
}

main() {
    local cmd="${1:-}" arg
    (($#)) && shift
    for arg in "$@"; do
        [[ "$arg" == "-h" || "$arg" == "--help" ]] && { usage; exit 0; }
    done
    case "$cmd" in
        install) (($# == 0)) || die "install takes no options"; cmd_install ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        env) cmd_env "$@" ;;
        -h | --help | help) usage ;;
        "") usage >&2; exit 2 ;;
        *) die "unknown command '$cmd' (see: bash infra/minio.sh --help)" ;;
    esac
}

main "$@"
