#!/usr/bin/env bash
# Configure, start, stop and describe nginx as vteller's TLS front.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash infra/proxy.sh COMMAND [OPTIONS]

nginx in front of vteller, on one HTTPS port:
  - the public origin (pages, API, invitation links) spread over every worker, each member of
    staff kept on one (their playback and export downloads live in that worker's memory);
  - each worker's signaling WebSocket under /w/HOST/PORT/, so that a session's browsers reach the
    worker the session lives on (vteller names it in Session.ws_url) through the same port;
  - TLS 1.2/1.3 only, HSTS, no version in answers; the client's address appended to
    X-Forwarded-For; timeouts and body sizes that fit calls, uploads, playback and exports;
    an access log naming the worker of each request, with invitation and download tokens elided.

Commands:
  install   apt-get install nginx-light (as root, or through sudo) unless nginx is there
  config    print the configuration 'start' writes
  start     write the configuration and start nginx in the background (checked first with
            nginx -t); does nothing if this directory's nginx is already running
  stop      stop the nginx started for this directory
  status    say whether it runs (exit status 0 if it does, 3 if not)

Options (config, start, stop, status):
  --server-name NAME   the public host name browsers use, default 127.0.0.1
  --listen ADDR:PORT   default 0.0.0.0:443 (a port under 1024 needs root)
  --cert FILE          the certificate chain (PEM) for NAME
  --key FILE           its private key (PEM)
  --backend HOST:PORT  a vteller worker; repeat for each worker of each machine
                       (default 127.0.0.1:8080)
  --dir DIR            default ${VTELLER_DATA_DIR:-./var}/proxy: nginx.conf, nginx.pid, logs,
                       temporary files

Then start each machine's vteller with (PROXY: the address nginx connects from):
  VTELLER_PUBLIC_URL=https://NAME
  VTELLER_ADVERTISE_URL='https://NAME/w/HOST/{port}'     (HOST: that machine's --backend host)
  VTELLER_TRUSTED_PROXIES='["PROXY/32"]'  VTELLER_COOKIE_SECURE=true
Only nginx's port needs to be open to browsers (and the SFU's UDP media, or TURN).
EOF
}

say() { printf 'proxy: %s\n' "$*" >&2; }
die() { printf 'proxy: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=infra/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/daemon.sh"

parse_options() {
    DIR="${VTELLER_DATA_DIR:-./var}/proxy"
    SERVER_NAME=127.0.0.1 LISTEN=0.0.0.0:443 CERT="" KEY=""
    BACKENDS=()
    while (($#)); do
        case "$1" in
            --server-name) SERVER_NAME="${2:?--server-name needs a value}"; shift 2 ;;
            --listen) LISTEN="${2:?--listen needs ADDR:PORT}"; shift 2 ;;
            --cert) CERT="${2:?--cert needs a file}"; shift 2 ;;
            --key) KEY="${2:?--key needs a file}"; shift 2 ;;
            --backend) BACKENDS+=("${2:?--backend needs HOST:PORT}"); shift 2 ;;
            --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option '$1' (see: bash infra/proxy.sh --help)" ;;
        esac
    done
    [[ "$LISTEN" =~ ^[^:]+:[0-9]+$ ]] || die "--listen takes ADDR:PORT, got '$LISTEN'"
    ((${#BACKENDS[@]})) || BACKENDS=(127.0.0.1:8080)
    local backend
    for backend in "${BACKENDS[@]}"; do
        [[ "$backend" =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] || die "--backend takes HOST:PORT, got '$backend'"
    done
    DIR="$(realpath -m -- "$DIR")"
    CONF="$DIR/nginx.conf"
    PID_FILE="$DIR/nginx.pid"
}

need_certificate() {
    [[ -n "$CERT" && -n "$KEY" ]] || die "--cert and --key are needed: the certificate for $SERVER_NAME and its key"
    [[ -r "$CERT" && -r "$KEY" ]] || die "cannot read $CERT or $KEY"
    CERT="$(realpath -- "$CERT")" KEY="$(realpath -- "$KEY")"
}

# /usr/sbin, where Debian puts it, is not on a normal user's PATH.
nginx_bin() { command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; }; }

need_nginx() {
    NGINX="$(nginx_bin)" ||
        die "nginx is not installed: run 'bash infra/proxy.sh install' (or apt-get install nginx-light)"
}

cmd_install() {
    if nginx_bin >/dev/null; then
        say "nginx is installed ($(nginx_bin))"
        return 0
    fi
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    say "installing nginx-light with apt-get"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light
}

# Proxying shared by the origin and the workers' signaling.
proxied() {
    cat <<'EOF'
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            # Playback and export packages stream as they are read, with Range requests.
            proxy_buffering off;
            proxy_request_buffering off;
EOF
}

config_text() {
    local backend host port
    cat <<EOF
# Written by infra/proxy.sh: change its options, not this file (it is rewritten at each start).
worker_processes auto;
pid $PID_FILE;
error_log $DIR/error.log warn;
events { worker_connections 4096; }

http {
    # Invitation links and download links are bearer credentials: never in the log.
    map \$uri \$vteller_logged_path {
        ~^(?<vteller_route>/join/|/api/v1/join/|/api/v1/auditor/downloads/) "\${vteller_route}{token}";
        default \$uri;
    }
    # Which worker served each request: where a session, a playback or a download lived.
    log_format vteller '\$remote_addr [\$time_local] "\$request_method \$vteller_logged_path" '
                       '\$status \$body_bytes_sent \$request_time -> \$upstream_addr';
    access_log $DIR/access.log vteller;
    client_body_temp_path $DIR/tmp/body;
    proxy_temp_path $DIR/tmp/proxy;
    fastcgi_temp_path $DIR/tmp/fastcgi;
    uwsgi_temp_path $DIR/tmp/uwsgi;
    scgi_temp_path $DIR/tmp/scgi;
    server_tokens off;

    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        '' close;
    }

    # A logged-in member of staff stays on one worker (an auditor's playback and export download
    # live in the memory of the worker that prepared them); everyone else by address.
    map \$cookie_vteller_staff \$vteller_affinity {
        "" \$remote_addr;
        default \$cookie_vteller_staff;
    }

    upstream vteller {
        hash \$vteller_affinity consistent;
EOF
    for backend in "${BACKENDS[@]}"; do
        echo "        server $backend;"
    done
    cat <<EOF
    }

    server {
        listen $LISTEN ssl;
        server_name $SERVER_NAME;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_prefer_server_ciphers off;
        ssl_session_cache shared:vteller:10m;
        add_header Strict-Transport-Security "max-age=31536000" always;
        # vteller answers oversized bodies itself, with a message that names the limit.
        client_max_body_size 16m;
        # An export is packaged before its first byte; a WebSocket is pinged every 10 s.
        proxy_read_timeout 600s;
        proxy_send_timeout 600s;

        location / {
            proxy_pass http://vteller;
$(proxied)
        }
EOF
    for backend in "${BACKENDS[@]}"; do
        host="${backend%:*}" port="${backend##*:}"
        cat <<EOF

        location /w/$host/$port/ {
            proxy_pass http://$backend/;
$(proxied)
        }
EOF
    done
    cat <<'EOF'
    }
}
EOF
}

running_pid() { live_pid "$PID_FILE" nginx; }

cmd_config() {
    parse_options "$@"
    CERT="${CERT:-/path/to/certificate.pem}" KEY="${KEY:-/path/to/key.pem}"
    config_text
}

cmd_start() {
    parse_options "$@"
    need_nginx
    need_certificate
    local pid
    if pid="$(running_pid)"; then
        say "already running (pid $pid) on $LISTEN, config $CONF"
        return 0
    fi
    mkdir -p "$DIR/tmp"
    config_text >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    "$NGINX" -t -q -c "$CONF" -p "$DIR" -e "$DIR/error.log" ||
        die "nginx refused the configuration $CONF (its message above)"
    say "starting nginx on https://$LISTEN for $SERVER_NAME, backends ${BACKENDS[*]}, logs in $DIR"
    "$NGINX" -c "$CONF" -p "$DIR" -e "$DIR/error.log"
    local deadline=$((SECONDS + 10))
    until pid="$(running_pid)"; do
        ((SECONDS < deadline)) || die "nginx did not start within 10 s; see $DIR/error.log"
        sleep 0.1
    done
    say "ready (pid $pid): https://$SERVER_NAME (${LISTEN})"
}

main() {
    local command="${1:-}"
    (($#)) && shift
    case "$command" in
        install) cmd_install ;;
        config) cmd_config "$@" ;;
        start) cmd_start "$@" ;;
        stop) stop_command nginx "$@" ;;
        status) status_command "$@" ;;
        -h | --help | help) usage ;;
        "") usage >&2; exit 2 ;;
        *) die "unknown command '$command' (see: bash infra/proxy.sh --help)" ;;
    esac
}

main "$@"
