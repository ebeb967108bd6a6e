#!/usr/bin/env bash
# Instructions per kept-alive proxied request under callgrind (issue 13,
# item 1): fedpin's inbound edge, the stack's floor (examples/bare_proxy.rs)
# and nginx, in front of the same stand-in homeserver, in one run.
# Instruction counts do not move with the machine's load, where CPU time
# does: this is the steady figure behind tests/load/inbound_vs_nginx.sh.
#
#   tests/load/instructions_per_request.sh                           # release build
#   PROFILE=debug DURATION=2 WARMUP=1 tests/load/instructions_per_request.sh  # .ci/run's short form
#
# What it does:
#   1. cargo build --locked (--release unless PROFILE=debug) --bin fedpin
#      --example stand_in_upstream --example bare_proxy
#   2. apt-get installs valgrind, nginx-light (or nginx), wrk, openssl, curl
#      if missing
#   3. mints a throwaway CA and an ECDSA P-256 certificate for
#      bench.fedpin.test; starts the stand-in homeserver (plain HTTP/1.1)
#   4. for each target, one at a time, on one thread (fedpin with
#      TOKIO_WORKER_THREADS=1, so one lane; the bare proxy with one thread;
#      nginx with one worker and no master), under valgrind --tool=callgrind:
#      waits until it answers, warms it with `wrk -t1 -c4` for WARMUP s,
#      then measures two windows, each zeroing the counters, running
#      `wrk -t1 -c4` (4 new connections) and dumping the counters: one of
#      1 s and one of DURATION s. The difference of their instructions
#      (every thread of the process) over the difference of the requests
#      wrk counted is the cost of a request, the connections' handshakes
#      and upstream dials cancelled out. All answers must be 2xx
#   5. targets: the key GET (/_matrix/key/v2/server) through all three; the
#      federation GET with an X-Matrix header through fedpin and nginx
#      (fedpin parses and checks it; nginx passes it on)
#   6. reports instructions per request and the ratios to nginx and to the
#      bare proxy into target/load/instructions_per_request.txt
#   7. stops everything it started (trap), whatever happens
#
# fedpin logs as a deployment does (`--log-format json`, FEDPIN_LOG=info: a
# JSON access line per request), nginx writes its access log (one line per
# request), the bare proxy logs nothing.
#
# Knobs (environment): DURATION=10 WARMUP=5 PROFILE=release|debug
#   SKIP_BUILD=1 (use the existing binaries) SKIP_INSTALL=1
# Everything listens on 127.0.0.1 only; every step is bounded in time.

# shellcheck source=tests/load/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" callgrind instructions_per_request

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-5}
PROFILE=${PROFILE:-release}
int_knob DURATION 2 600
int_knob WARMUP 1 600
HOSTNAME_=bench.fedpin.test
KEY_PATH=/_matrix/key/v2/server
FED_PATH='/_matrix/federation/v1/query/profile?user_id=%40alice%3Abench.fedpin.test'
XMATRIX='X-Matrix origin="a.example",key="ed25519:1",sig="x"'

build_profile --bin fedpin --example stand_in_upstream --example bare_proxy
measured_build examples/bare_proxy.rs
FEDPIN=$BUILD_DIR/fedpin
UPSTREAM_BIN=$BUILD_DIR/examples/stand_in_upstream
BARE_BIN=$BUILD_DIR/examples/bare_proxy
need_binaries "$FEDPIN" "$UPSTREAM_BIN" "$BARE_BIN"
require_tools valgrind nginx wrk openssl curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

start_run
(
    cd "$TMP"
    umask 077
    mint_ca "fedpin callgrind CA" -newkey ec -pkeyopt ec_paramgen_curve:P-256
    mint_server_cert server "$HOSTNAME_" -newkey ec -pkeyopt ec_paramgen_curve:P-256
    chmod 644 ca.pem server.pem
) || die "openssl could not mint the certificates"
start_upstream
log "stand-in upstream on 127.0.0.1:$UP_PORT (pid $UP_PID)"

# nginx: the proxy part of tests/load/inbound_vs_nginx.sh (lib.sh's
# nginx_federation_proxy), one worker.
nginx_prepare
cat >"$TMP/nginx.conf" <<EOF
$(nginx_main 1)
master_process off;
events { worker_connections 1024; }
http {
    log_format bench '\$remote_addr "\$request" \$status \$body_bytes_sent reused=\$ssl_session_reused';
    access_log $LOGS/nginx-access.log bench;
$(nginx_http_common)
$(nginx_federation_proxy)
}
EOF
"$NGINX" -t -q -e "$LOGS/nginx-error.log" -p "$TMP/nginx/" -c "$TMP/nginx.conf" 2>"$TMP/nginx-t.log" ||
    { cat "$TMP/nginx-t.log" >&2; die "nginx -t refused the config"; }

RESULTS=$TMP/results.tsv # target path-kind instructions requests
: >"$RESULTS"

# Stops the callgrind process $1 (TERM, then KILL after 20 s).
stop_valgrind() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

# Asks the callgrind process $VG_PID to do $1 (zero or dump); dies unless it
# says it did.
callgrind_do() {
    local what=$1 said
    said=$(timeout 60 callgrind_control "-${what:0:1}" "$VG_PID" 2>&1) || true
    [[ $said == *OK.* ]] || die "callgrind_control -${what:0:1} $VG_PID ($what) failed: $said"
}

# One measuring window on the callgrind process $VG_PID: zeroes its
# counters, runs `wrk -t1 -c4` (new connections) for $1 s at $2, dumps the
# counters (the process's dump number $4, so file $TMP/cg.$3.out.$4) and
# prints "instructions requests". Every answer must be 2xx. The rest of the
# arguments are wrk's extra ones. (Run in a subshell: it prints nothing if
# it fails.)
window() {
    local secs=$1 url=$2 target=$3 n=$4 out instr reqs bad dump i
    shift 4
    out=$TMP/wrk-$target-$n.txt
    callgrind_do zero
    timeout $((secs + 60)) wrk -t1 -c4 "$@" -d"${secs}s" "$url" >"$out" 2>&1 ||
        die "wrk failed against $target: $(cat "$out")"
    callgrind_do dump
    dump=$TMP/cg.$target.out.$n
    reqs=$(awk '/requests in/ {print $1}' "$out")
    bad=$(awk '/Non-2xx or 3xx/{n+=$NF} /Socket errors/{gsub(/,/,""); n+=$4+$6+$8+$10} END{print n+0}' "$out")
    [[ ${reqs:-0} -gt 0 ]] || die "wrk made no requests to $target: $(cat "$out")"
    [[ $bad == 0 ]] || die "$bad requests to $target failed or were not 2xx: $(cat "$out")"
    for i in $(seq 1 100); do
        [[ -s $dump ]] && break
        sleep 0.1
    done
    [[ -s $dump ]] || die "no callgrind dump $dump for $target"
    instr=$(timeout 300 callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}' || true)
    [[ ${instr:-0} -gt 0 ]] || die "no instruction total in $dump"
    rm -f "$dump"
    echo "$instr $reqs"
}

# measure target kind port path [wrk header]: the process under callgrind is
# $VG_PID (started by the caller, listening on 127.0.0.1:port). Two windows,
# of 1 s and of DURATION s, each opening its 4 connections afresh: their
# difference is requests only (the TLS handshakes and upstream dials of the
# connections cancel out).
measure() {
    local target=$1 kind=$2 port=$3 path=$4 hdr=${5:-} i ok=0 args extra=() url
    local short_i short_n long_i long_n
    [[ -n $hdr ]] && extra=(-H "$hdr")
    for i in $(seq 1 240); do
        if curl -sSf --max-time 5 --cacert "$TMP/ca.pem" --resolve "$HOSTNAME_:$port:127.0.0.1" \
            "${extra[@]}" -o /dev/null "https://$HOSTNAME_:$port$path" 2>/dev/null; then
            ok=1
            break
        fi
        kill -0 "$VG_PID" 2>/dev/null || break
        sleep 0.5
    done
    ((ok)) || die "$target did not answer on port $port under valgrind"
    args=(-H "Host: $HOSTNAME_" "${extra[@]}")
    url="https://127.0.0.1:$port$path"
    timeout $((WARMUP + 60)) wrk -t1 -c4 "${args[@]}" -d"${WARMUP}s" "$url" >"$TMP/warm-$target-$kind.txt" 2>&1 ||
        die "wrk (warm-up) failed against $target: $(cat "$TMP/warm-$target-$kind.txt")"
    read -r short_i short_n < <(window 1 "$url" "$target" 1 "${args[@]}") || die "the 1 s window on $target failed"
    read -r long_i long_n < <(window "$DURATION" "$url" "$target" 2 "${args[@]}") || die "the ${DURATION} s window on $target failed"
    ((long_n > short_n)) || die "$target: the ${DURATION} s window made no more requests ($long_n) than the 1 s one ($short_n)"
    printf '%s\t%s\t%s\t%s\n' "$target" "$kind" "$((long_i - short_i))" "$((long_n - short_n))" >>"$RESULTS"
    log "$target $kind: windows of 1 s and ${DURATION} s, $short_n and $long_n requests, $short_i and $long_i instructions: $(((long_i - short_i) / (long_n - short_n))) per request"
}

VG=(valgrind --tool=callgrind --dump-instr=no --collect-jumps=no)

# fedpin
FEDPIN_PORT=$(free_port) || die "no free port for fedpin"
# fedpin: inbound only, the same config as the CPU script's (lib.sh).
inbound_config "127.0.0.1:$FEDPIN_PORT"
"$FEDPIN" check-config --config "$TMP/fedpin.toml" >"$TMP/check.txt" 2>&1 ||
    die "fedpin check-config refused the config: $(cat "$TMP/check.txt")"
# under_callgrind target port kinds command...: for each of the kinds
# ("key federation" or "key"), starts the command under callgrind (its
# stdout in $TMP/target.out, stderr appended to $LOGS/target.log), measures
# that kind of GET on the port, and stops it: a fresh process per kind.
under_callgrind() {
    local target=$1 port=$2 kinds=$3 kind
    shift 3
    for kind in $kinds; do
        "${VG[@]}" --callgrind-out-file="$TMP/cg.$target.out" "$@" \
            >"$TMP/$target.out" 2>>"$LOGS/$target.log" &
        VG_PID=$!
        PIDS+=("$VG_PID")
        case $kind in
        key) measure "$target" key "$port" "$KEY_PATH" ;;
        federation) measure "$target" federation "$port" "$FED_PATH" "Authorization: $XMATRIX" ;;
        esac
        stop_valgrind "$VG_PID"
    done
}

TOKIO_WORKER_THREADS=1 FEDPIN_LOG=info under_callgrind fedpin "$FEDPIN_PORT" "key federation" \
    "$FEDPIN" --log-format json run --config "$TMP/fedpin.toml"
BARE_PORT=$(free_port) || die "no free port for the bare proxy"
under_callgrind bare "$BARE_PORT" key \
    "$BARE_BIN" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UP_PORT" "$TMP/server.pem" "$TMP/server.key" 1
under_callgrind nginx "$NGINX_PORT" "key federation" \
    "$NGINX" -e "$LOGS/nginx-error.log" -p "$TMP/nginx/" -c "$TMP/nginx.conf"

per() { awk -F'\t' -v t="$1" -v k="$2" '$1==t && $2==k { printf "%.0f", $3 / $4 }' "$RESULTS"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
F_KEY=$(per fedpin key)
F_FED=$(per fedpin federation)
B_KEY=$(per bare key)
N_KEY=$(per nginx key)
N_FED=$(per nginx federation)
{
    echo "instructions per kept-alive proxied request under callgrind ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo "command: tests/load/instructions_per_request.sh  (DURATION=$DURATION WARMUP=$WARMUP PROFILE=$PROFILE)"
    echo "fedpin $BUILT, $PROFILE; $(rustc --version 2>/dev/null); nginx $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'); $(valgrind --version)"
    echo "one thread each (fedpin one lane, bare proxy one thread, nginx one worker, no master); wrk -t1 -c4;"
    echo "per request: (instructions of the whole process, every thread, in a DURATION s window - in a 1 s window)"
    echo "over (requests wrk counted in the one - in the other); each window opens its 4 connections afresh."
    echo
    printf '  %-44s %12s %9s %8s\n' "target" "instr/req" "/nginx" "/bare"
    printf '  %-44s %12s %9s %8s\n' "fedpin, GET $KEY_PATH" "$F_KEY" "$(ratio "$F_KEY" "$N_KEY")" "$(ratio "$F_KEY" "$B_KEY")"
    printf '  %-44s %12s %9s %8s\n' "bare tokio+rustls+hyper proxy, same GET" "$B_KEY" "$(ratio "$B_KEY" "$N_KEY")" "1.00"
    printf '  %-44s %12s %9s %8s\n' "nginx, same GET" "$N_KEY" "1.00" "$(ratio "$N_KEY" "$B_KEY")"
    printf '  %-44s %12s %9s %8s\n' "fedpin, federation GET with X-Matrix" "$F_FED" "$(ratio "$F_FED" "$N_FED")" ""
    printf '  %-44s %12s %9s %8s\n' "nginx, federation GET with X-Matrix" "$N_FED" "1.00" ""
} | tee "$REPORT"
log "report: $REPORT"
