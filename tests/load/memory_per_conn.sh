#!/usr/bin/env bash
# Memory per idle connection (issue 13, item 3): fedpin's inbound edge and
# outbound tunnels against nginx, on loopback, in one run.
#
#   tests/load/memory_per_conn.sh                          # N=5000, release build
#   PROFILE=debug N=200 tests/load/memory_per_conn.sh      # the short form .ci/run runs
#
# What it does:
#   1. cargo build --locked (--release unless PROFILE=debug) --bin fedpin
#      --example idle_conns --example stand_in_upstream
#   2. apt-get installs nginx-light (or nginx) and openssl if missing
#   3. raises the descriptor limit (ulimit -n) to what N needs and checks it:
#      fedpin's outbound holds 2 sockets per tunnel
#   4. mints a throwaway CA, a certificate for the edge (bench.fedpin.test)
#      and one for the stand-in peer the tunnels reach (peer.fedpin.test)
#   5. starts: the stand-in homeserver (examples/stand_in_upstream.rs, plain
#      HTTP); the stand-in TLS peer (examples/idle_conns.rs peer); fedpin
#      inbound-only in front of the homeserver; fedpin outbound-only (the peer
#      pinned); nginx (own prefix, worker_processes 1, keepalive_timeout 3600s)
#      proxying to the same homeserver with the same upstream keep-alive pool
#      (64) as fedpin's. Separate fedpin processes, so that neither phase
#      starts from memory the other freed.
#   6. for each target: warms it up (8 connections, one request each, closed),
#      reads its RSS (VmRSS, /proc; nginx master + worker summed), opens N
#      kept-alive TLS connections with one GET each (examples/idle_conns.rs;
#      through fedpin's outbound: CONNECT + TLS inside the tunnel + GET),
#      waits SETTLE seconds with all of them idle, reads the RSS again, then
#      sends a second GET on every connection (all must answer: the server
#      kept them open and usable) and closes them
#   7. reports kB per idle connection, and the ratios to nginx, into
#      target/load/memory_per_conn.txt
#   8. stops everything it started (trap), whatever happens
#
# An idle fedpin tunnel holds the homeserver's TLS connection (ended by
# fedpin with a minted leaf) and its socket. Its pinned connection to the
# peer went back to fedpin's pool when the tunnel parked, shared by every
# tunnel to that peer (at most 8 kept per peer), as nginx's upstream
# keep-alive pool is: so kB per tunnel is the figure to set against nginx's
# kB per connection. (Before kept upstream connections, an idle tunnel held
# both TLS connections and the report halved the figure per TLS
# connection; with upstream_keepalive_secs = 0 it still does.) RSS is
# user-space memory: the kernel's socket buffers are not in it, for either
# server.
#
# Knobs (environment): N=5000 SETTLE=3 PARALLEL=32 PROFILE=release|debug
#   SKIP_BUILD=1 (use the existing binaries) SKIP_INSTALL=1
# Everything listens on 127.0.0.1 only; every step is bounded in time.

# shellcheck source=tests/load/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" memory memory_per_conn

N=${N:-5000}
SETTLE=${SETTLE:-3}
PARALLEL=${PARALLEL:-32}
PROFILE=${PROFILE:-release}
WARM=8
HOSTNAME_=bench.fedpin.test
PEER_NAME=peer.fedpin.test

int_knob N 1 100000

# --------------------------------------------------------------------------
# 1. build
# --------------------------------------------------------------------------
build_profile --bin fedpin --example idle_conns --example stand_in_upstream
measured_build examples/idle_conns.rs
FEDPIN=$BUILD_DIR/fedpin
IDLE=$BUILD_DIR/examples/idle_conns
UPSTREAM_BIN=$BUILD_DIR/examples/stand_in_upstream
need_binaries "$FEDPIN" "$IDLE" "$UPSTREAM_BIN"

# --------------------------------------------------------------------------
# 2. tools
# --------------------------------------------------------------------------
require_tools nginx openssl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# --------------------------------------------------------------------------
# 3. descriptors: fedpin's outbound holds 2 per tunnel, the peer and the
#    client one each, nginx one per connection (+ its upstream pool).
# --------------------------------------------------------------------------
FD_NEED=$((2 * N + 1024))
if (($(ulimit -n) < FD_NEED)); then
    ulimit -n "$FD_NEED" 2>/dev/null || ulimit -Sn "$FD_NEED" 2>/dev/null ||
        die "cannot raise the descriptor limit to $FD_NEED (hard limit $(ulimit -Hn)); run as root or lower N"
fi
FD_LIMIT=$(ulimit -n)
((FD_LIMIT >= FD_NEED)) || die "descriptor limit $FD_LIMIT < $FD_NEED"
log "descriptor limit (ulimit -n): $FD_LIMIT (needed $FD_NEED for N=$N)"

# --------------------------------------------------------------------------
# Process bookkeeping and cleanup
# --------------------------------------------------------------------------
start_run


# VmRSS in kB of the given processes and their children, summed.
rss_kb() { # pid...
    local total=0 p c v
    for p in "$@"; do
        for c in "$p" $(pgrep -P "$p" 2>/dev/null || true); do
            v=$(awk '/^VmRSS:/{print $2}' "/proc/$c/status" 2>/dev/null || true)
            total=$((total + ${v:-0}))
        done
    done
    echo "$total"
}

# --------------------------------------------------------------------------
# 4. certificates
# --------------------------------------------------------------------------
log "minting a test CA and P-256 certificates for $HOSTNAME_ and $PEER_NAME"
(
    cd "$TMP"
    umask 077
    keyargs=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
    mint_ca "fedpin memory-test CA" "${keyargs[@]}"
    mint_server_cert server "$HOSTNAME_" "${keyargs[@]}"
    mint_server_cert peer "$PEER_NAME" "${keyargs[@]}"
    chmod 644 ca.pem server.pem peer.pem
) || die "openssl could not mint the certificates"
spki_pin() { # cert.pem
    openssl x509 -in "$1" -pubkey -noout | openssl pkey -pubin -outform der |
        openssl dgst -sha256 -binary | openssl base64 -A
}
PEER_PIN="sha256/$(spki_pin "$TMP/peer.pem")"
CA_PIN="sha256/$(spki_pin "$TMP/ca.pem")"

# --------------------------------------------------------------------------
# 5. servers
# --------------------------------------------------------------------------
start_upstream
log "stand-in homeserver on $UP_ADDR"

"$IDLE" peer --cert "$TMP/peer.pem" --key "$TMP/peer.key" >"$TMP/peer.out" 2>"$LOGS/peer.err" &
PIDS+=($!)
PEER_ADDR=$(wait_line "$TMP/peer.out" "listening on") || die "stand-in peer did not start"
PEER_PORT=${PEER_ADDR##*:}
log "stand-in TLS peer ($PEER_NAME) on $PEER_ADDR"

# fedpin: the edge alone, and the outbound proxy alone.
cat >"$TMP/pins.toml" <<EOF
version = 1

[policy]
unpinned = "deny"
on_expired = "webpki"

[[peer]]
server_name = "$PEER_NAME:$PEER_PORT"
hosts = ["$PEER_NAME"]
pins = ["$PEER_PIN", "$CA_PIN"]
note = "the stand-in peer of tests/load/memory_per_conn.sh"
EOF
mkdir -p "$TMP/in" "$TMP/out"
cp "$TMP/pins.toml" "$TMP/server.pem" "$TMP/server.key" "$TMP/in/"
cat >"$TMP/in/fedpin.toml" <<EOF
pins = "pins.toml"

[inbound]
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"
upstream = "http://$UP_ADDR"
max_connections = $((N + 100))
idle_timeout_secs = 3600
EOF
"$FEDPIN" ca init --dir "$TMP/out/ca" >"$LOGS/ca-init.log" 2>&1 || die "fedpin ca init failed"
cp "$TMP/pins.toml" "$TMP/ca.pem" "$TMP/out/"
cat >"$TMP/out/fedpin.toml" <<EOF
$(outbound_config "$PEER_NAME")
max_tunnels = $((N + 100))
idle_timeout_secs = 3600
EOF
start_fedpin_in() { # dir kind -> sets STARTED_PID, STARTED_ADDR
    FEDPIN_LOG=warn start_fedpin "$1/fedpin.toml" "$2" "$TMP/fedpin-$2.out" "$LOGS/fedpin-$2.log" 30
}
start_fedpin_in "$TMP/in" inbound
FIN_PID=$STARTED_PID FIN_ADDR=$STARTED_ADDR
log "fedpin inbound on $FIN_ADDR (pid $FIN_PID)"
start_fedpin_in "$TMP/out" outbound
FOUT_PID=$STARTED_PID FOUT_ADDR=$STARTED_ADDR
log "fedpin outbound on $FOUT_ADDR (pid $FOUT_PID)"

nginx_prepare
cat >"$TMP/nginx.conf" <<EOF
$(nginx_main 1)
worker_rlimit_nofile $FD_LIMIT;
events { worker_connections $((2 * N + 256)); }
http {
    access_log off;
$(nginx_http_common)
    keepalive_timeout 3600s;
    upstream homeserver {
        server $UP_ADDR;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        server_name $HOSTNAME_;
        ssl_certificate $TMP/server.pem;
        ssl_certificate_key $TMP/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://homeserver;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
        }
    }
}
EOF
start_nginx "$NGINX_PORT" "$TMP/nginx.conf" "$LOGS/nginx.out"
log "nginx on 127.0.0.1:$NGINX_PORT (master pid $NGINX_PID, worker_processes 1)"

# --------------------------------------------------------------------------
# 6. measurements
# --------------------------------------------------------------------------
RESULTS="$TMP/results.tsv" # target conns before after alive
: >"$RESULTS"
# idle_conns arguments per target.
client_args() { # target
    case $1 in
    nginx) echo "tls --connect 127.0.0.1:$NGINX_PORT --name $HOSTNAME_ --ca $TMP/ca.pem" ;;
    inbound) echo "tls --connect $FIN_ADDR --name $HOSTNAME_ --ca $TMP/ca.pem" ;;
    outbound) echo "tunnel --proxy $FOUT_ADDR --target $PEER_NAME:$PEER_PORT --ca $TMP/out/ca/fedpin-ca.pem" ;;
    esac
}
# measure target server_pid...
measure() {
    local target=$1
    shift
    local args n=$N before after alive out ctl i
    # shellcheck disable=SC2207
    args=($(client_args "$target"))
    # Warm-up: WARM connections, one request each, checked and closed.
    out=$(echo check | timeout 60 "$IDLE" "${args[@]}" -n "$WARM" 2>"$LOGS/warm-$target.err") ||
        die "warm-up against $target failed: $(cat "$LOGS/warm-$target.err")"
    grep -q "^alive $WARM of $WARM" <<<"$out" || die "warm-up against $target: $out"
    sleep 1
    before=$(rss_kb "$@")
    ctl="$TMP/ctl-$target"
    mkfifo "$ctl"
    "$IDLE" "${args[@]}" -n "$n" --parallel "$PARALLEL" --hold-secs 900 \
        <"$ctl" >"$TMP/client-$target.out" 2>"$LOGS/client-$target.err" &
    local cpid=$!
    PIDS+=("$cpid")
    exec 7>"$ctl"
    local t0=$SECONDS limit=$((60 + n / 20))
    until grep -q '^ready ' "$TMP/client-$target.out" 2>/dev/null; do
        kill -0 "$cpid" 2>/dev/null || die "idle_conns against $target exited: $(cat "$LOGS/client-$target.err")"
        ((SECONDS - t0 < limit)) || die "idle_conns against $target: $n connections not ready within ${limit}s"
        sleep 0.2
    done
    log "$target: $n connections open and idle after $((SECONDS - t0))s; settling ${SETTLE}s"
    sleep "$SETTLE"
    after=$(rss_kb "$@")
    echo check >&7
    exec 7>&-
    for i in $(seq 1 $((limit * 5))); do
        grep -q '^alive ' "$TMP/client-$target.out" && break
        kill -0 "$cpid" 2>/dev/null || break
        sleep 0.2
    done
    alive=$(awk '/^alive /{print $2}' "$TMP/client-$target.out")
    wait "$cpid" 2>/dev/null || true
    [[ -n $alive ]] || die "idle_conns against $target: no answer to check: $(cat "$LOGS/client-$target.err")"
    printf '%s\t%s\t%s\t%s\t%s\n' "$target" "$n" "$before" "$after" "$alive" >>"$RESULTS"
    log "$target: RSS ${before} kB -> ${after} kB with $n idle connections; alive after the hold: $alive of $n"
    ((alive == n)) || die "$target closed or broke $((n - alive)) of $n idle connections: $(cat "$LOGS/client-$target.err")"
}
START=$SECONDS
measure nginx "$NGINX_PID"
measure inbound "$FIN_PID"
measure outbound "$FOUT_PID"
ELAPSED=$((SECONDS - START))
fedpin_errors=$(cat "$LOGS/fedpin-inbound.log" "$LOGS/fedpin-outbound.log" | grep -c 'ERROR' || true)

# --------------------------------------------------------------------------
# 7. report
# --------------------------------------------------------------------------
col() { awk -F'\t' -v t="$1" -v c="$2" '$1==t { print $c }' "$RESULTS"; }
per_conn() { # target divisor -> kB per connection
    awk -F'\t' -v t="$1" -v d="$2" '$1==t { printf "%.1f", ($4 - $3) / ($2 * d) }' "$RESULTS"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
NG=$(per_conn nginx 1)
IN=$(per_conn inbound 1)
OT=$(per_conn outbound 1)
row() { # label target kB/conn ratio note
    printf '  %-34s %6s %11s %11s %9s %8s %7s  %s\n' "$1" "$(col "$2" 2)" "$(col "$2" 3)" "$(col "$2" 4)" \
        "$(($(col "$2" 4) - $(col "$2" 3)))" "$3" "$4" "$5"
}
mkdir -p "$OUT_DIR"
{
    echo "fedpin vs nginx — RSS per idle kept-alive TLS connection, loopback ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo "command: tests/load/memory_per_conn.sh  (N=$N SETTLE=$SETTLE PARALLEL=$PARALLEL PROFILE=$PROFILE)"
    echo "fedpin $BUILT, $PROFILE build; $(rustc --version 2>/dev/null)"
    echo "nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), worker_processes 1, keepalive_timeout 3600s, upstream keepalive 64; $(openssl version)"
    echo "machine: $(nproc) cores, $(uname -sr); descriptor limit $FD_LIMIT"
    echo "Each target: warm-up ($WARM connections, closed), RSS, then N TLS 1.3 connections (P-256 certificate, ALPN http/1.1)"
    echo "with one keep-alive GET each, held idle ${SETTLE}s, RSS again; then a second GET on every connection (alive = answered)."
    echo "RSS = VmRSS from /proc (nginx: master + worker). Kernel socket buffers are not in RSS, for any target."
    echo "An idle fedpin tunnel is parked: it holds the homeserver's TLS connection (ended with a minted leaf); its pinned"
    echo "connection to the peer went back to the pool shared by all tunnels to that peer (8 kept per peer), like nginx's"
    echo "upstream keep-alive pool. So kB per tunnel is set against nginx's kB per connection."
    [[ $PROFILE == debug ]] && echo "NOTE: debug build (the CI short form): the figures check the script, they are not the measurement."
    echo
    printf '  %-34s %6s %11s %11s %9s %8s %7s  %s\n' "target" "conns" "RSS before" "RSS after" "delta kB" "kB/conn" "/nginx" "alive after hold"
    row "nginx (HTTPS, proxy to homeserver)" nginx "$NG" "1.00" "$(col nginx 5) of $N"
    row "fedpin inbound (HTTPS edge)" inbound "$IN" "$(ratio "$IN" "$NG")" "$(col inbound 5) of $N"
    row "fedpin outbound, per tunnel" outbound "$OT" "$(ratio "$OT" "$NG")" "$(col outbound 5) of $N"
    echo
    echo "target (issue 13): no more memory per idle connection than nginx."
    echo "summary: kB per idle connection: nginx $NG, fedpin inbound $IN ($(ratio "$IN" "$NG")x nginx),"
    echo "         fedpin outbound $OT per idle tunnel ($(ratio "$OT" "$NG")x nginx)."
    echo "fedpin ERROR log lines during the run: $fedpin_errors. Measuring took ${ELAPSED}s."
} | tee "$REPORT"
log "report: $REPORT"
