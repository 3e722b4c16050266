#!/usr/bin/env bash
# Configure, start, stop and describe a TURN server (coturn) that relays browsers to vteller's SFU.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash infra/turn.sh COMMAND [OPTIONS]

A TURN server relays the media of browsers that have no direct UDP path to the SFU (mobile
networks, hotel Wi-Fi, corporate proxies). This runs Debian's coturn, configured so that:
  - it accepts only vteller's short-lived per-participant credentials (use-auth-secret: the
    secret in keys/turn-secret, shared with vteller; see docs/deployment.md, "TURN");
  - it relays only to the SFUs' addresses (--peer), never to anything else: a credential copied
    out of a page cannot make it an open relay into the bank's network or the internet (it
    reaches every UDP port of those addresses, though: firewall the SFU hosts to accept only the
    SFU's ports from the relay address);
  - UDP relays only (the SFU speaks UDP), no CLI, no version in its answers, no old STUN;
  - with --tls-port, TURN over TLS (turns:) too, for customers whose networks let only TLS out:
    TLS 1.2 with forward-secret AEAD ciphers only (and 1.3 from coturn 4.6.2; Debian 12's 4.6.1
    has none), no DTLS (browsers do not use it).

Commands:
  install   apt-get install coturn (as root, or through sudo) unless turnserver is there
  start     write the configuration (mode 0600: it holds the secret) and start coturn in the
            background; if this directory's coturn already runs, say whether its configuration
            differs (a restart drops the calls it relays)
  stop      stop the coturn started for this directory
  status    say whether it runs (exit status 0 if it does, 3 if not)
  config    print the configuration 'start' would write, with the secret elided

Options (start, stop, status, config):
  --dir DIR            default ${VTELLER_TURN_DIR:-${VTELLER_DATA_DIR:-./var}/turn}: holds
                       turnserver.conf, turnserver.pid, turnserver.log
  --secret-file FILE   default ${VTELLER_DATA_DIR:-./var}/keys/turn-secret, the file vteller
                       reads; generated (0600) if missing on the vteller machine itself. A TURN
                       host of its own gets a copy of that file, or the value of
                       VTELLER_TURN__SECRET, which this script uses when it is set
  --listen ADDR        IP address browsers reach (UDP, TCP and TLS), default 127.0.0.1
  --port N             listening port, default 3478
  --tls-port N         also listen for TURN over TLS (turns:) on this TCP port of --listen, e.g.
                       443 on an address of its own (nothing else may listen there); needs:
  --cert FILE          the certificate chain (PEM) for the host name browsers use in the
                       turns: URL, from a CA customers' browsers trust
  --key FILE           its private key (PEM), not readable by others (chmod o-rwx FILE)
  --relay-ip ADDR      IP address the relay sends to the SFUs from, default the --listen address:
                       on a TURN host in front of the SFUs' network, its address on that network
  --external-ip ADDR   the public address, when the TURN host is behind 1:1 NAT (PUBLIC/PRIVATE)
  --peer ADDR          an address the SFU offers media on (a machine's ice_host_addresses);
                       repeat for each machine; default the --listen address (same machine)
  --min-port N, --max-port N
                       UDP relay port range, default 49160-49359 (open it in the firewall)
  --realm NAME         default vteller
  --max-bps N          bytes per second per relay and direction (default 1250000, 10 Mbit/s:
                       a three-party call with a shared screen)
  --total-quota N      relays at once, all users together (default 0: no limit; each
                       participant may hold 8)

Then tell vteller where it is, e.g. for browsers that reach it at turn.bank.example (the
turns: URL with --tls-port 443):
  VTELLER_TURN__URLS='["turn:turn.bank.example:3478?transport=udp",
                       "turn:turn.bank.example:3478?transport=tcp",
                       "turns:turn.bank.example:443?transport=tcp"]' bash infra/run.sh
vteller checks at start that the server relays with its credentials (turn_check_failed in its log).
EOF
}

say() { printf 'turn: %s\n' "$*" >&2; }
die() { printf 'turn: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=infra/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/daemon.sh"

parse_options() {
    local data_dir="${VTELLER_DATA_DIR:-./var}"
    DIR="${VTELLER_TURN_DIR:-$data_dir/turn}"
    SECRET_FILE="$data_dir/keys/turn-secret"
    LISTEN=127.0.0.1 PORT=3478 RELAY_IP="" EXTERNAL_IP="" REALM=vteller
    MIN_PORT=49160 MAX_PORT=49359 MAX_BPS=1250000 TOTAL_QUOTA=0 TLS_PORT="" CERT="" KEY=""
    PEERS=()
    while (($#)); do
        case "$1" in
            --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
            --secret-file) SECRET_FILE="${2:?--secret-file needs a value}"; shift 2 ;;
            --listen) LISTEN="${2:?--listen needs an address}"; shift 2 ;;
            --port) PORT="${2:?--port needs a value}"; shift 2 ;;
            --tls-port) TLS_PORT="${2:?--tls-port needs a value}"; shift 2 ;;
            --cert) CERT="${2:?--cert needs a file}"; shift 2 ;;
            --key) KEY="${2:?--key needs a file}"; shift 2 ;;
            --relay-ip) RELAY_IP="${2:?--relay-ip needs an address}"; shift 2 ;;
            --external-ip) EXTERNAL_IP="${2:?--external-ip needs an address}"; shift 2 ;;
            --peer) PEERS+=("${2:?--peer needs an address}"); shift 2 ;;
            --min-port) MIN_PORT="${2:?--min-port needs a value}"; shift 2 ;;
            --max-port) MAX_PORT="${2:?--max-port needs a value}"; shift 2 ;;
            --realm) REALM="${2:?--realm needs a value}"; shift 2 ;;
            --max-bps) MAX_BPS="${2:?--max-bps needs a value}"; shift 2 ;;
            --total-quota) TOTAL_QUOTA="${2:?--total-quota needs a value}"; shift 2 ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option '$1' (see: bash infra/turn.sh --help)" ;;
        esac
    done
    local n address
    for n in "$PORT" "$MIN_PORT" "$MAX_PORT" "$MAX_BPS" "$TOTAL_QUOTA" ${TLS_PORT:+"$TLS_PORT"}; do
        [[ "$n" =~ ^[0-9]+$ ]] || die "ports, --max-bps and --total-quota are numbers, got '$n'"
    done
    if [[ -n "$TLS_PORT" ]]; then
        [[ -n "$CERT" && -n "$KEY" ]] ||
            die "--tls-port needs --cert and --key: the certificate (PEM) for the turns: host name and its key"
        ((TLS_PORT != PORT)) || die "--tls-port must differ from --port ($PORT): coturn listens for plain TCP there"
        CERT="$(realpath -m -- "$CERT")" KEY="$(realpath -m -- "$KEY")"
    elif [[ -n "$CERT$KEY" ]]; then
        die "--cert and --key are for TURN over TLS: add --tls-port (e.g. 443)"
    fi
    ((MIN_PORT < MAX_PORT)) || die "--min-port ($MIN_PORT) must be below --max-port ($MAX_PORT)"
    RELAY_IP="${RELAY_IP:-$LISTEN}"
    ((${#PEERS[@]})) || PEERS=("$LISTEN")
    for address in "$LISTEN" "$RELAY_IP" "${PEERS[@]}"; do
        is_ip "$address" || die "'$address' is not an IP address: coturn takes addresses, not names or networks"
    done
    [[ -z "$EXTERNAL_IP" ]] || [[ "$EXTERNAL_IP" =~ ^[0-9A-Fa-f:.]+(/[0-9A-Fa-f:.]+)?$ ]] ||
        die "--external-ip takes PUBLIC or PUBLIC/PRIVATE addresses, got '$EXTERNAL_IP'"
    if [[ "$RELAY_IP" == 0.0.0.0 || "$RELAY_IP" == :: ]]; then
        die "relayed media needs one source address: pass --relay-ip (the address the SFUs see)"
    fi
    DIR="$(realpath -m -- "$DIR")"
    SECRET_FILE="$(realpath -m -- "$SECRET_FILE")"
    CONF="$DIR/turnserver.conf"
    PID_FILE="$DIR/turnserver.pid"
    LOG_FILE="$DIR/turnserver.log"
}

is_ip() { [[ "$1" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ || ( "$1" =~ ^[0-9A-Fa-f:]+$ && "$1" == *:* ) ]]; }

need_coturn() {
    command -v turnserver >/dev/null 2>&1 ||
        die "coturn is not installed: run 'bash infra/turn.sh install' (or apt-get install coturn)"
}

# coturn that cannot use the certificate or key runs on, fails every TLS handshake and says why
# only in its log: refuse what can be seen before starting it.
need_certificate() {
    command -v openssl >/dev/null 2>&1 || die "openssl checks the certificate: apt-get install openssl"
    local file cert_key key_key
    for file in "$CERT" "$KEY"; do
        [[ -f "$file" ]] || die "$file does not exist: pass the certificate chain and key (PEM) from the bank's PKI as --cert and --key"
        [[ -r "$file" ]] || die "cannot read $file: run this as a user that can (root, or a member of its group)"
    done
    cert_key="$(openssl x509 -noout -pubkey -in "$CERT" 2>/dev/null)" ||
        die "$CERT holds no PEM certificate: --cert takes the chain in PEM, the server's first" \
            "(openssl x509 -inform der -in FILE -out FILE.pem converts DER)"
    key_key="$(openssl pkey -pubout -in "$KEY" -passin pass: 2>/dev/null)" ||
        die "$KEY holds no unencrypted PEM private key, which coturn needs (openssl pkey -in KEY -out PLAIN decrypts one)"
    [[ "$cert_key" == "$key_key" ]] ||
        die "$KEY is not the key of the first certificate in $CERT: pass the matching pair"
    if (((8#$(stat -c %a "$KEY")) & 8#007)); then
        die "$KEY is readable by others: chmod o-rwx '$KEY' (with it anyone can pose as this TURN server)"
    fi
}

cmd_install() {
    [[ "${1:-}" == -h || "${1:-}" == --help ]] && { usage; exit 0; }
    if command -v turnserver >/dev/null 2>&1; then
        say "coturn is installed ($(command -v turnserver))"
        return 0
    fi
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    say "installing coturn with apt-get"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends coturn
}

# The secret vteller uses: VTELLER_TURN__SECRET when set, else the file vteller reads, made
# here if neither exists yet (vteller makes it too, whichever starts first; the link fails rather
# than replace one the other made meanwhile). Prints it.
secret_text() {
    if [[ -n "${VTELLER_TURN__SECRET:-}" ]]; then
        printf '%s' "$VTELLER_TURN__SECRET"
        return 0
    fi
    if [[ ! -s "$SECRET_FILE" ]]; then
        local keys owner
        keys="$(dirname "$SECRET_FILE")"
        say "generating the TURN secret in $SECRET_FILE (mode 0600)"
        (
            umask 077
            mkdir -p "$keys"
            od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$SECRET_FILE.$$"
            ln "$SECRET_FILE.$$" "$SECRET_FILE" 2>/dev/null || true
            rm -f "$SECRET_FILE.$$"
        )
        # Run as root for a vteller running as its own user: the file must stay vteller's.
        owner="$(stat -c %u:%g "$(dirname "$keys")")"
        chown "$owner" "$keys" "$SECRET_FILE" 2>/dev/null || true
    fi
    [[ "$(stat -c %a "$SECRET_FILE")" == *00 ]] ||
        die "$SECRET_FILE is readable by others: chmod 600 it (vteller refuses it too)"
    tr -d '\n' <"$SECRET_FILE"
}

is_loopback() { [[ "$1" == 127.* || "$1" == ::1 ]]; }

# The whole configuration but the secret, which cmd_start appends.
config_text() {
    local peer loopback="" tls="no-tls"
    if [[ -n "$TLS_PORT" ]]; then
        # TLS 1.2 with ECDHE and AEAD ciphers only, which every browser that speaks WebRTC
        # supports: no TLS 1.0/1.1, CBC or RSA key exchange. (TLS 1.3, whose suites are all such,
        # comes with coturn 4.6.2; Debian 12's 4.6.1 refuses it.)
        tls="tls-listening-port=$TLS_PORT
cert=$CERT
pkey=$KEY
no-tlsv1
no-tlsv1_1
cipher-list=ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
    fi
    cat <<EOF
# Written by infra/turn.sh: edit its options, not this file (it is rewritten at each start).
listening-ip=$LISTEN
listening-port=$PORT
relay-ip=$RELAY_IP
min-port=$MIN_PORT
max-port=$MAX_PORT
realm=$REALM
use-auth-secret
fingerprint
no-cli
$tls
no-dtls
no-tcp-relay
no-multicast-peers
no-software-attribute
no-dynamic-ip-list
no-dynamic-realms
no-rfc5780
no-stun-backward-compatibility
response-origin-only-with-rfc5780
stale-nonce=600
max-bps=$MAX_BPS
user-quota=8
total-quota=$TOTAL_QUOTA
pidfile=$PID_FILE
userdb=$DIR/turndb
log-file=$LOG_FILE
simple-log
# Each allocation with its user (expiry:participant id) and the browser's address: which
# participant a relay served. Rotate it (logrotate, copytruncate) and keep it as long as the bank
# keeps connection logs.
verbose
no-stdout-log
# Relay to vteller's SFU only: everything is denied, the SFU's addresses allowed (allowed wins).
denied-peer-ip=0.0.0.0-255.255.255.255
denied-peer-ip=::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff
EOF
    [[ -n "$EXTERNAL_IP" ]] && echo "external-ip=$EXTERNAL_IP"
    for peer in "${PEERS[@]}"; do
        echo "allowed-peer-ip=$peer"
        is_loopback "$peer" && loopback=1
    done
    # coturn refuses loopback peers unless told: only a TURN server on the SFU's own machine
    # relaying to it over 127.0.0.1 (development, the tests) needs them.
    [[ -n "$loopback" ]] && echo "allow-loopback-peers"
    return 0
}

running_pid() { live_pid "$PID_FILE" turnserver; }

# Whether a program listens for TCP on port $1 where coturn would: the --listen address, or any
# when either listens on every address.
tcp_listening() {
    ss -Hltn "sport = :$1" | awk -v want="$LISTEN" '
        { address = $4; sub(/:[0-9]+$/, "", address); sub(/%.*/, "", address); gsub(/[][]/, "", address)
          if (address == want || address ~ /^(0\.0\.0\.0|\*|::)$/ || want ~ /^(0\.0\.0\.0|::)$/) found = 1 }
        END { exit !found }'
}

# A STUN binding request; it waits forever for an answer that a not yet bound port never sends.
# With TLS, a handshake too: coturn listens on the TLS port even when it has no usable key.
answers() {
    local tls_at="$LISTEN:$TLS_PORT"
    [[ "$LISTEN" == *:* ]] && tls_at="[$LISTEN]:$TLS_PORT"
    timeout 2 turnutils_stunclient -p "$PORT" "$LISTEN" >/dev/null 2>&1 &&
        { [[ -z "$TLS_PORT" ]] ||
            timeout 2 openssl s_client -brief -connect "$tls_at" </dev/null 2>&1 | grep -q '^CONNECTION ESTABLISHED'; }
}

cmd_start() {
    parse_options "$@"
    need_coturn
    [[ -z "$TLS_PORT" ]] || need_certificate
    local pid secret wanted
    secret="$(secret_text)"
    wanted="$(config_text; printf 'static-auth-secret=%s\n' "$secret")"
    if pid="$(running_pid)"; then
        if [[ "$wanted" == "$(cat "$CONF" 2>/dev/null)" ]]; then
            say "already running (pid $pid) on $LISTEN:$PORT, config $CONF"
        else
            say "already running (pid $pid) with another configuration than these options:" \
                "stop and start it to apply them (the calls it relays drop; do it off hours)"
        fi
        return 0
    fi
    if ss -Hlun "sport = :$PORT" | grep -q .; then
        die "UDP port $PORT is taken by another program (another TURN server?): stop it, or pass --port"
    fi
    if [[ -n "$TLS_PORT" ]] && tcp_listening "$TLS_PORT"; then
        die "TCP port $TLS_PORT of $LISTEN is taken by another program (an HTTPS server, infra/proxy.sh?):" \
            "give TURN an address of its own (--listen), or pass another --tls-port"
    fi
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    (
        umask 077
        printf '%s\n' "$wanted" >"$CONF.tmp"
    )
    mv "$CONF.tmp" "$CONF"
    rm -f "$PID_FILE"
    say "starting coturn on $LISTEN:$PORT${TLS_PORT:+ and TLS $TLS_PORT} (relays $RELAY_IP:$MIN_PORT-$MAX_PORT to ${PEERS[*]}), log $LOG_FILE"
    # setsid: coturn outlives this script; the secret travels in the 0600 file, not on the
    # command line (where 'ps' would show it).
    setsid turnserver -c "$CONF" </dev/null >>"$LOG_FILE" 2>&1 &
    local started=$! deadline=$((SECONDS + 20))
    until answers; do
        if ((SECONDS >= deadline)) || ! kill -0 "$started" 2>/dev/null; then
            kill -TERM "$started" 2>/dev/null || true
            tail -n 20 "$LOG_FILE" >&2 || true
            die "coturn did not answer on $LISTEN:$PORT${TLS_PORT:+ and TLS $TLS_PORT} within 20 s" \
                "(log above, full log in $LOG_FILE)"
        fi
        sleep 0.2
    done
    # coturn writes its pid file itself, a moment after it binds.
    [[ -s "$PID_FILE" ]] || echo "$started" >"$PID_FILE"
    say "ready (pid $(<"$PID_FILE")): turn:$LISTEN:$PORT?transport=udp"
    [[ -z "$TLS_PORT" ]] || say "and TLS: turns:HOST:$TLS_PORT?transport=tcp, HOST a name in $CERT"
}

cmd_config() {
    parse_options "$@"
    config_text
    echo "static-auth-secret=(VTELLER_TURN__SECRET, or the contents of $SECRET_FILE)"
}

main() {
    local command="${1:-}"
    (($#)) && shift
    case "$command" in
        install) cmd_install "$@" ;;
        start) cmd_start "$@" ;;
        stop) stop_command coturn "$@" ;;
        status) status_command "$@" ;;
        config) cmd_config "$@" ;;
        -h | --help | help) usage ;;
        "") usage >&2; exit 2 ;;
        *) die "unknown command '$command' (see: bash infra/turn.sh --help)" ;;
    esac
}

main "$@"
