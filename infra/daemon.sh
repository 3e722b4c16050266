# shellcheck shell=bash
# Shared by infra/minio.sh, turn.sh and proxy.sh (sourced, not run): a program in the background
# with a pid file. Expects say().

# Prints the pid in pid file $1 if that process is alive and named $2 (after a reboot the pid may
# belong to something else); a stale pid file is removed.
live_pid() {
    local file="$1" name="$2" pid
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]; then
        echo "$pid"
        return 0
    fi
    rm -f "$file"
    return 1
}

# SIGTERM to process $2 (named $1 in what is said), SIGKILL if it is still there after 10 s.
terminate() {
    local name="$1" pid="$2"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        [[ -d "/proc/$pid" ]] || return 0
        sleep 0.1
    done
    say "$name (pid $pid) ignored SIGTERM for 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

# `stop` and `status` of a script whose parse_options sets DIR, CONF and PID_FILE and which has
# running_pid. $1: the program's name in what is said.
stop_command() {
    local name="$1" pid
    shift
    parse_options "$@"
    if ! pid="$(running_pid)"; then
        say "not running (dir $DIR)"
        return 0
    fi
    say "stopping $name (pid $pid)"
    terminate "$name" "$pid"
    rm -f "$PID_FILE"
    say "stopped"
}

status_command() {
    parse_options "$@"
    local pid
    if pid="$(running_pid)"; then
        say "running (pid $pid), config $CONF"
    else
        say "not running (dir $DIR)"
        return 3
    fi
}
