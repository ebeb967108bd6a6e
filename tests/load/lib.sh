# Shell helpers shared by the load scripts in tests/load/ (sourced, not run),
# and their common start. A script's first command sources it with the tag
# of its log lines and the name of its report:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" TAG NAME
#
# which sets the shell options (set -euo pipefail), ROOT (the repository,
# from then on the working directory), OUT_DIR ($ROOT/target/load) and
# REPORT ($OUT_DIR/NAME.txt), and defines log and die ("[TAG] ..." on
# stderr; die exits 1), which the functions below report with.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
LOAD_TAG=$1
OUT_DIR=$ROOT/target/load
REPORT=$OUT_DIR/$2.txt
log() { printf '[%s] %s\n' "$LOAD_TAG" "$*" >&2; }
die() {
    printf '[%s] FAILED: %s\n' "$LOAD_TAG" "$*" >&2
    exit 1
}

# Dies unless the variable named $1 holds a whole number from $2 to $3.
int_knob() {
    local v=${!1}
    [[ $v =~ ^[0-9]+$ ]] && ((v >= $2 && v <= $3)) || die "$1 must be $2..$3"
}

# The run's scratch space and traps: TMP (a new directory under /tmp), LOGS
# in it, PIDS empty; on EXIT cleanup (after a failure it shows $LOGS/* and
# $TMP/*.log), on INT or TERM exit 130.
start_run() {
    TMP=$(mktemp -d "/tmp/fedpin-$LOAD_TAG.XXXXXX")
    LOGS=$TMP/logs
    mkdir -p "$LOGS"
    PIDS=()
    trap 'cleanup "$TMP"/*.log' EXIT
    trap 'exit 130' INT TERM
}

# A port below the kernel's ephemeral range (so no outgoing connection of
# this or another program holds it as its local end) that nothing listens on.
free_port() {
    local p low
    low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    ((low > 12000)) || low=32768
    for _ in $(seq 1 200); do
        p=$((10000 + RANDOM % (low - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# Waits up to $3 s (default 15) for a line matching $2 in file $1; prints its last field.
wait_line() {
    local i tries=$((${3:-15} * 10))
    for i in $(seq 1 "$tries"); do
        if grep -q "$2" "$1" 2>/dev/null; then
            grep "$2" "$1" | head -n 1 | awk '{print $NF}'
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# The cargo target directory (CARGO_TARGET_DIR, else cargo's own answer, else target/).
target_dir() {
    local d=${CARGO_TARGET_DIR:-}
    [[ -n $d ]] || d=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    echo "${d:-$ROOT/target}"
}

# Builds the cargo targets in $@ with the $PROFILE profile (release or
# debug), unless SKIP_BUILD=1 (PROFILE is checked either way).
build_profile() {
    local flags=()
    case $PROFILE in
    release) flags=(--release) ;;
    debug) ;;
    *) die "PROFILE must be release or debug" ;;
    esac
    [[ "${SKIP_BUILD:-0}" == 1 ]] && return 0
    log "cargo build --locked ${flags[*]} $*"
    cargo build --locked "${flags[@]}" "$@"
}

# What a run measures, after its build: BUILT, HEAD's short hash with
# " + uncommitted changes" when src/, Cargo.toml, Cargo.lock or a file in $@
# differs from it; BUILD_DIR, the directory of the $PROFILE build's binaries.
measured_build() {
    BUILT="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock "$@" 2>/dev/null || echo ' + uncommitted changes')"
    BUILD_DIR=$(target_dir)/$PROFILE
}

# Dies unless every path in $@ is an executable file.
need_binaries() {
    local b
    for b in "$@"; do
        [[ -x $b ]] || die "binary missing: $b ($PROFILE build)"
    done
}

# A fedpin config's pin-file line and the [outbound] section of a load run,
# up to the caller's own keys: the interception CA that `fedpin ca init`
# made in ca/, the run's CA (ca.pem) trusted for the peers, loopback
# egress, and each name in $@ resolved to 127.0.0.1.
outbound_config() {
    local resolve
    resolve=$(printf ', "%s" = "127.0.0.1"' "$@")
    cat <<EOF
pins = "pins.toml"

[outbound]
listen = "127.0.0.1:0"
ca_cert = "ca/fedpin-ca.pem"
ca_key = "ca/fedpin-ca.key"
extra_roots = "ca.pem"
allow_ips = ["127.0.0.0/8"]
resolve = { ${resolve#, } }
EOF
}

# Installs the missing tools named in $@ from Debian (nginx as nginx-light,
# else nginx), never letting the package start a system nginx on port 80.
install_tools() {
    local need=("$@") made_policy=0 pkgs
    [[ "${SKIP_INSTALL:-0}" == 1 ]] && die "missing tools: ${need[*]} (SKIP_INSTALL=1)"
    [[ $(id -u) == 0 ]] || die "missing tools: ${need[*]}; run as root or install them"
    log "installing from Debian: ${need[*]}"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq || true
    pkgs=("${need[@]/#nginx/nginx-light}")
    if ! timeout 600 apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; then
        pkgs=("${pkgs[@]/nginx-light/nginx}")
        timeout 600 apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null ||
            { if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; fi; die "apt-get install ${pkgs[*]} failed"; }
    fi
    if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; fi
}

# Makes sure the tools named in $@ are there (nginx also as /usr/sbin/nginx),
# installing the missing ones with install_tools.
require_tools() {
    local t need=()
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || { [[ $t == nginx && -x /usr/sbin/nginx ]]; } || need+=("$t")
    done
    if ((${#need[@]})); then install_tools "${need[@]}"; fi
}

# The EXIT trap: stops the processes in PIDS (TERM, up to 5 s, then KILL);
# after a failure shows the last lines of each file in $LOGS and of the
# files named in $@; removes $TMP; exits with the script's status.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p i alive f
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for i in $(seq 1 50); do
        alive=0
        for p in "${PIDS[@]}"; do
            kill -0 "$p" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if ((rc != 0)); then
        log "logs of the failed run:"
        for f in "$LOGS"/* "$@"; do
            [[ -f $f ]] && { echo "--- $f (last 20 lines)" >&2; tail -n 20 "$f" >&2; }
        done
    fi
    rm -rf "$TMP"
    exit "$rc"
}

# In the current directory: ca.pem/ca.key, a CA named $1, with the openssl
# key options in the rest of the arguments.
mint_ca() {
    local cn=$1
    shift
    openssl req -x509 "$@" -nodes -keyout ca.key -out ca.pem -days 2 \
        -subj "/CN=$cn" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# In the current directory: $1.pem/$1.key, a server certificate for the DNS
# name $2 issued by ca.pem, with the openssl key options in the rest.
mint_server_cert() {
    local f=$1 name=$2
    shift 2
    openssl req "$@" -nodes -keyout "$f.key" -out "$f.csr" -subj "/CN=$name" 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=DNS:$name" >"$f.ext"
    openssl x509 -req -in "$f.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -days 2 -extfile "$f.ext" -out "$f.pem" 2>/dev/null
}

# Checks the fedpin config $1 (check-config's output beside $3, as
# $3.check), runs `fedpin run` on it (stdout to $3, stderr to $4) and waits
# up to $5 s (default 15) for its "$2 listening on" line: sets STARTED_PID
# (also added to PIDS) and STARTED_ADDR. Uses $FEDPIN.
start_fedpin() { # config kind stdout-file log-file [seconds]
    local cfg=$1 kind=$2 out=$3 err=$4
    "$FEDPIN" check-config --config "$cfg" >"$out.check" 2>&1 ||
        die "fedpin check-config refused $cfg: $(cat "$out.check")"
    "$FEDPIN" run --config "$cfg" >"$out" 2>"$err" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    STARTED_ADDR=$(wait_line "$out" "$kind listening on" "${5:-15}") || die "fedpin ($cfg) did not start"
}

# Starts the stand-in homeserver $UPSTREAM_BIN on 127.0.0.1:0 (its output in
# $TMP/upstream.out and $LOGS/upstream.err): sets UP_PID (also added to
# PIDS), UP_ADDR and UP_PORT.
start_upstream() {
    "$UPSTREAM_BIN" 127.0.0.1:0 >"$TMP/upstream.out" 2>"$LOGS/upstream.err" &
    UP_PID=$!
    PIDS+=("$UP_PID")
    UP_ADDR=$(wait_line "$TMP/upstream.out" "listening on") || die "stand-in homeserver did not start"
    UP_PORT=${UP_ADDR##*:}
}

# Picks NGINX_PORT (see free_port) and makes nginx's prefix, $TMP/nginx.
nginx_prepare() {
    NGINX_PORT=$(free_port) || die "no free port for nginx"
    mkdir -p "$TMP/nginx"
}

# The main-context lines of an nginx config with $1 worker processes, in
# the foreground, its pid and error log under $TMP and $LOGS (and as root,
# its workers root too).
nginx_main() {
    if [[ $(id -u) == 0 ]]; then echo "user root;"; fi
    echo "worker_processes $1;"
    echo "daemon off;"
    echo "pid $TMP/nginx/nginx.pid;"
    echo "error_log $LOGS/nginx-error.log warn;"
}

# The lines of an nginx `http` block that keep nginx's temporary files
# under $TMP/nginx and keep client connections alive as long as a load
# run needs.
nginx_http_common() {
    local d
    for d in client_body proxy fastcgi uwsgi scgi; do
        echo "    ${d}_temp_path $TMP/nginx/$d;"
    done
    echo "    keepalive_requests 1000000;"
}

# Writes $TMP/pins.toml (no peers; Web PKI for everyone) and
# $TMP/fedpin.toml: an inbound-only fedpin on $1 in front of the stand-in
# homeserver (127.0.0.1:$UP_PORT) with $TMP/server.pem, no rate limits and
# generous limits, as the load scripts measure it.
inbound_config() { # listen
    cat >"$TMP/pins.toml" <<'EOF'
version = 1

[policy]
unpinned = "webpki"
on_expired = "webpki"
EOF
    cat >"$TMP/fedpin.toml" <<EOF
pins = "pins.toml"

[inbound]
listen = "$1"
cert = "server.pem"
key = "server.key"
upstream = "http://127.0.0.1:$UP_PORT"
# No rate_per_origin / rate_per_ip: rate limits off. Generous limits:
max_connections = 16384
max_body = 52428800
header_timeout_secs = 30
request_timeout_secs = 60
idle_timeout_secs = 300
EOF
}

# The keep-alive, upstream and server lines of an nginx `http` block that
# proxies federation to the stand-in homeserver (127.0.0.1:$UP_PORT) as
# Synapse's reverse-proxy guide does (proxy_pass without a URI, so the
# request URI passes unchanged), plus an upstream keep-alive pool: TLS on
# 127.0.0.1:$NGINX_PORT for $HOSTNAME_ with $TMP/server.pem. The same for
# every load script that sets nginx against fedpin's edge.
nginx_federation_proxy() {
    cat <<EOF
    keepalive_timeout 300s;
    upstream homeserver {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl http2;
        server_name $HOSTNAME_;
        ssl_certificate $TMP/server.pem;
        ssl_certificate_key $TMP/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        client_max_body_size 50m;
        location ~ ^/_matrix/(federation|key)/ {
            proxy_pass http://homeserver;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_read_timeout 60s;
        }
        location / { return 404; }
    }
EOF
}

# Checks the nginx config $2 (prefix $TMP/nginx/, errors to
# $LOGS/nginx-error.log), starts nginx on it (output to $3) and waits up to
# 10 s for 127.0.0.1:$1: sets NGINX_PID (also added to PIDS). Uses $NGINX.
start_nginx() { # port config output-file
    local port=$1 conf=$2 out=$3
    "$NGINX" -t -q -e "$LOGS/nginx-error.log" -p "$TMP/nginx/" -c "$conf" 2>"$TMP/nginx-t.log" ||
        { cat "$TMP/nginx-t.log" >&2; die "nginx -t refused the config"; }
    "$NGINX" -e "$LOGS/nginx-error.log" -p "$TMP/nginx/" -c "$conf" >"$out" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || die "nginx did not start"
}
