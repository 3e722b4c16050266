#!/usr/bin/env bash
# Install, start, stop and describe a local PostgreSQL cluster: the shared database of workers on
# several machines, and the tests' proof that vteller runs on it.
set -euo pipefail

usage() {
    cat <<EOF
Usage: bash infra/postgres.sh COMMAND [OPTIONS]

Commands:
  install   apt-get install Debian's postgresql unless its server programs are there
  start     create a cluster in the data dir (first time), start it on 127.0.0.1 in the
            background and wait until it accepts connections; does nothing if it runs already
  stop      stop the cluster of this data dir
  status    say whether it runs (exit status 0 if it does, 3 if not)
  env       print 'export VTELLER_POSTGRES_URL=postgresql+asyncpg://vteller:...@127.0.0.1:PORT/vteller'
            for a running cluster: eval "\$(bash infra/postgres.sh env)", then
            VTELLER_DATABASE_URL="\$VTELLER_POSTGRES_URL" vteller serve

Options (start, stop, status, env):
  --data-dir DIR   default \${VTELLER_POSTGRES_DIR:-\${VTELLER_DATA_DIR:-./var}/postgres}
                   holds cluster/ (the database files), password (of the 'vteller' role, random,
                   mode 0600, generated at first start), postgres.log
  --port N         default \${VTELLER_POSTGRES_PORT:-5432}

The cluster listens on loopback only and accepts only password (SCRAM) logins. The role
'vteller' owns the database 'vteller' and may create databases (the tests make one per server).
This is for a development machine and for the tests; a bank runs its own PostgreSQL (>= 13) and
gives every worker the same VTELLER_DATABASE_URL (docs/deployment.md).
EOF
}

say() { printf 'postgres: %s\n' "$*" >&2; }
die() { printf 'postgres: error: %s\n' "$*" >&2; exit 1; }

bin_dir() {
    # Debian installs the server programs per major version, off PATH.
    local dir
    dir="$(find /usr/lib/postgresql -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n1)"
    [[ -n "$dir" && -x "$dir/pg_ctl" ]] || return 1
    echo "$dir"
}

cmd_install() {
    if bin_dir >/dev/null; then
        say "already installed: $(bin_dir)"
        return 0
    fi
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "need root (or sudo) to apt-get install postgresql"
        sudo=(sudo)
    fi
    say "installing Debian's postgresql (once; apt-get update + install)"
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
    # The package starts a system cluster on 5432; ours are separate and started on demand.
    if command -v systemctl >/dev/null && systemctl is-active --quiet postgresql 2>/dev/null; then
        "${sudo[@]}" systemctl stop postgresql || true
    fi
    bin_dir >/dev/null || die "postgresql installed but pg_ctl not found under /usr/lib/postgresql"
}

DATA_DIR="${VTELLER_POSTGRES_DIR:-${VTELLER_DATA_DIR:-./var}/postgres}"
PORT="${VTELLER_POSTGRES_PORT:-5432}"

parse_opts() {
    while (($#)); do
        case "$1" in
            --data-dir) DATA_DIR="${2:?--data-dir needs a value}"; shift 2 ;;
            --port) PORT="${2:?--port needs a value}"; shift 2 ;;
            *) die "unknown option: $1 (see --help)" ;;
        esac
    done
    [[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number, not '$PORT'"
    mkdir -p "$DATA_DIR"
    DATA_DIR="$(cd "$DATA_DIR" && pwd)"
}

# PostgreSQL refuses to run as root: as root, the cluster belongs to the 'postgres' user that
# Debian's package creates.
as_owner() {
    if ((EUID == 0)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

cluster() { echo "$DATA_DIR/cluster"; }

is_running() {
    [[ -f "$(cluster)/PG_VERSION" ]] && as_owner "$(bin_dir)/pg_ctl" status -D "$(cluster)" >/dev/null 2>&1
}

cmd_start() {
    local bin password
    bin="$(bin_dir)" || die "PostgreSQL is not installed: run 'bash infra/postgres.sh install'"
    if is_running; then
        say "already running on 127.0.0.1:$PORT ($(cluster))"
        return 0
    fi
    if [[ ! -f "$(cluster)/PG_VERSION" ]]; then
        umask 077
        [[ -s "$DATA_DIR/password" ]] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DATA_DIR/password"
        chmod 600 "$DATA_DIR/password"
        say "creating a cluster in $(cluster)"
        mkdir -p "$(cluster)"
        if ((EUID == 0)); then
            chown postgres: "$(cluster)"
            runuser -u postgres -- test -x "$(cluster)" ||
                die "user postgres cannot reach $(cluster): choose a --data-dir whose parent directories others may enter (e.g. under /tmp or /srv)"
            # initdb reads the password as the cluster's owner; the copy is removed at once.
            install -m 600 -o postgres /dev/null "$(cluster).pw"
            printf '%s\n' "$(<"$DATA_DIR/password")" >"$(cluster).pw"
        else
            install -m 600 /dev/null "$(cluster).pw"
            printf '%s\n' "$(<"$DATA_DIR/password")" >"$(cluster).pw"
        fi
        if ! as_owner "$bin/initdb" -D "$(cluster)" -U vteller --pwfile="$(cluster).pw" \
            --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$DATA_DIR/initdb.log" 2>&1; then
            rm -f "$(cluster).pw"
            die "initdb failed, see $DATA_DIR/initdb.log"
        fi
        rm -f "$(cluster).pw"
    fi
    if ((EUID == 0)); then
        touch "$DATA_DIR/postgres.log" && chown postgres: "$DATA_DIR/postgres.log"
    fi
    # Unix sockets in the data dir: /var/run/postgresql may not exist or be writable.
    if ! as_owner "$bin/pg_ctl" start -D "$(cluster)" -l "$DATA_DIR/postgres.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $(cluster) -c max_connections=300" >/dev/null; then
        die "PostgreSQL did not start, see $DATA_DIR/postgres.log (port $PORT taken? try --port)"
    fi
    password="$(<"$DATA_DIR/password")"
    if ! PGPASSWORD="$password" "$bin/psql" -h 127.0.0.1 -p "$PORT" -U vteller -d postgres -qtAc \
        "SELECT 1 FROM pg_database WHERE datname = 'vteller'" | grep -q 1; then
        PGPASSWORD="$password" "$bin/createdb" -h 127.0.0.1 -p "$PORT" -U vteller vteller
    fi
    say "running on 127.0.0.1:$PORT (data in $(cluster), log $DATA_DIR/postgres.log)"
}

cmd_stop() {
    if ! is_running; then
        say "not running ($(cluster))"
        return 0
    fi
    as_owner "$(bin_dir)/pg_ctl" stop -D "$(cluster)" -m fast -w >/dev/null
    say "stopped"
}

cmd_status() {
    if bin_dir >/dev/null && is_running; then
        say "running on 127.0.0.1:$PORT ($(cluster))"
        return 0
    fi
    say "not running ($(cluster))"
    return 3
}

cmd_env() {
    is_running || die "not running: start it first (bash infra/postgres.sh start)"
    printf 'export VTELLER_POSTGRES_URL=%q\n' \
        "postgresql+asyncpg://vteller:$(<"$DATA_DIR/password")@127.0.0.1:$PORT/vteller"
}

main() {
    local command="${1:-}" arg
    for arg in "$@"; do
        [[ "$arg" == "-h" || "$arg" == "--help" ]] && { usage; exit 0; }
    done
    case "$command" in
        -h|--help|help|"") usage; [[ -n "$command" ]] ;;
        install) shift; (($# == 0)) || die "install takes no options"; cmd_install ;;
        start|stop|status|env) shift; parse_opts "$@"; "cmd_$command" ;;
        *) die "unknown command: $command (see --help)" ;;
    esac
}

main "$@"
