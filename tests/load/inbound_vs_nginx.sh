#!/usr/bin/env bash
# Load measurement: fedpin's inbound edge vs nginx, in front of the same
# stand-in homeserver, on loopback, in one run.
#
#   tests/load/inbound_vs_nginx.sh
#
# What it does:
#   1. cargo build --release --locked --bin fedpin --example stand_in_upstream
#   2. apt-get installs nginx-light (or nginx), wrk, openssl, curl if missing
#   3. mints a throwaway CA and a server certificate for bench.fedpin.test
#   4. starts the stand-in upstream (examples/stand_in_upstream.rs, plain HTTP/1.1)
#   5. starts fedpin (`fedpin run`, [inbound], no rate limits) and nginx (own
#      prefix and config in a temp dir, worker_processes 2) in front of it,
#      and examples/bare_proxy.rs: the same stack (tokio, rustls, hyper 1)
#      with nothing of fedpin's, one thread per core as fedpin's lanes: the
#      floor of the stack for a proxied request
#   6. measures, ROUNDS times, with the same wrk settings for every target:
#        keep-alive requests/s: upstream direct (HTTP), fedpin (HTTPS), nginx (HTTPS),
#          the bare proxy (HTTPS, key path only),
#          on /_matrix/key/v2/server and (proxies only) on a /_matrix/federation/
#          path with an X-Matrix Authorization header;
#        a new TLS connection per request: wrk -H "Connection: close";
#      then full handshakes/s with `openssl s_time -new` (never resumes);
#      latency percentiles from wrk --latency; the servers' own CPU time per
#      request from /proc (the load generator shares the cores, so CPU per
#      request is the steadier figure of merit on a small, shared machine)
#   7. prints a table and writes it to target/load/inbound_vs_nginx.txt (raw
#      wrk/s_time output beside it in target/load/inbound_vs_nginx.raw/)
#   8. stops everything it started (trap), whatever happens
#
# Knobs (environment): DURATION=10 WARMUP=2 ROUNDS=2 THREADS=2 CONNS=32
#   KEY=ec|rsa (server key: ECDSA P-256 or RSA-2048) STIME_PROCS=4
#   FEDPIN_LOG=info (fedpin's log filter; info = access log on, as nginx's is)
#   SKIP_BUILD=1 (use the existing release binaries) SKIP_INSTALL=1
#   LOG_BESIDE_CONFIG=1 writes fedpin's log into the directory of its config,
#     pin file and certificate, which fedpin watches: every log line then wakes
#     its file watchers (inotify), which about doubles its CPU per request.
#     By default the logs go to a directory of their own, as in a deployment.
#
# Everything listens on 127.0.0.1 only; every load step is bounded in time.

# shellcheck source=tests/load/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" load inbound_vs_nginx

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
KEY=${KEY:-ec}
STIME_PROCS=${STIME_PROCS:-4}
FEDPIN_LOG=${FEDPIN_LOG:-info}
export FEDPIN_LOG

RAW="$OUT_DIR/inbound_vs_nginx.raw"
HOSTNAME_=bench.fedpin.test
KEY_PATH=/_matrix/key/v2/server
FED_PATH='/_matrix/federation/v1/query/profile?user_id=%40alice%3Abench.fedpin.test'
XMATRIX='X-Matrix origin="a.example",key="ed25519:1",sig="x"'

# --------------------------------------------------------------------------
# 1. build
# --------------------------------------------------------------------------
log "load before the build: $(uptime)"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "cargo build --release --locked --bin fedpin --example stand_in_upstream --example sign_request --example bare_proxy (slow on 2 cores)"
    cargo build --release --locked --bin fedpin --example stand_in_upstream --example sign_request --example bare_proxy
fi
# What was built (the working tree may change while the measurement runs).
PROFILE=release
measured_build
FEDPIN=$BUILD_DIR/fedpin
UPSTREAM_BIN=$BUILD_DIR/examples/stand_in_upstream
SIGN_BIN=$BUILD_DIR/examples/sign_request
BARE_BIN=$BUILD_DIR/examples/bare_proxy
need_binaries "$FEDPIN" "$UPSTREAM_BIN" "$SIGN_BIN" "$BARE_BIN"

# --------------------------------------------------------------------------
# 2. tools
# --------------------------------------------------------------------------
require_tools nginx wrk openssl curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# --------------------------------------------------------------------------
# Process bookkeeping and cleanup
# --------------------------------------------------------------------------
start_run
FEDPIN_LOG_DIR=$LOGS
[[ "${LOG_BESIDE_CONFIG:-0}" == 1 ]] && FEDPIN_LOG_DIR=$TMP


# --------------------------------------------------------------------------
# 3. certificates
# --------------------------------------------------------------------------
log "minting a test CA and a $KEY server certificate for $HOSTNAME_"
case $KEY in
ec) keyargs=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
rsa) keyargs=(-newkey rsa:2048) ;;
*) die "KEY must be ec or rsa" ;;
esac
(
    cd "$TMP"
    umask 077
    mint_ca "fedpin load-test CA" "${keyargs[@]}"
    mint_server_cert server "$HOSTNAME_" "${keyargs[@]}"
    chmod 644 ca.pem server.pem
) || die "openssl could not mint the certificates"

# --------------------------------------------------------------------------
# 4. the stand-in upstream
# --------------------------------------------------------------------------
start_upstream
log "stand-in upstream on 127.0.0.1:$UP_PORT (pid $UP_PID)"

# --------------------------------------------------------------------------
# 5a. fedpin
# --------------------------------------------------------------------------
inbound_config 127.0.0.1:0
start_fedpin "$TMP/fedpin.toml" inbound "$TMP/fedpin.out" "$FEDPIN_LOG_DIR/fedpin.log"
FEDPIN_PID=$STARTED_PID FEDPIN_ADDR=$STARTED_ADDR
FEDPIN_PORT=${FEDPIN_ADDR##*:}
log "fedpin inbound on 127.0.0.1:$FEDPIN_PORT (pid $FEDPIN_PID, FEDPIN_LOG=$FEDPIN_LOG, log in $FEDPIN_LOG_DIR)"

# 5a'. a second fedpin, the same but verifying request signatures
# (server_name set, verify_signatures = "enforce"); the origin's signing key
# is pinned in its pin file, so no key fetch happens: what is measured is
# the per-request cost of buffering, canonical JSON and ed25519.
ORIGIN=a.example
SIGNED=$("$SIGN_BIN" "$ORIGIN" "$HOSTNAME_" GET "$FED_PATH") || die "sign_request failed"
SIGNING_KEY=$(sed -n 1p <<<"$SIGNED")
XMATRIX_SIGNED=$(sed -n 2p <<<"$SIGNED")
mkdir -p "$TMP/verify"
cp "$TMP/server.pem" "$TMP/server.key" "$TMP/verify/"
cat >"$TMP/verify/pins.toml" <<EOF
version = 1

[policy]
unpinned = "webpki"
on_expired = "webpki"

[[peer]]
server_name = "$ORIGIN"
# The load never dials the origin; this pin only makes the entry valid.
pins = ["sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
signing_keys = ["$SIGNING_KEY"]
EOF
awk -v name="$HOSTNAME_" '/^upstream = / { print "server_name = \"" name "\""; print "verify_signatures = \"enforce\"" } { print }' \
    "$TMP/fedpin.toml" >"$TMP/verify/fedpin.toml"
grep -q '^verify_signatures = "enforce"' "$TMP/verify/fedpin.toml" || die "could not write the verifying config"
start_fedpin "$TMP/verify/fedpin.toml" inbound "$TMP/fedpin-verify.out" "$FEDPIN_LOG_DIR/fedpin-verify.log"
FEDPIN_V_PID=$STARTED_PID FEDPIN_V_ADDR=$STARTED_ADDR
FEDPIN_V_PORT=${FEDPIN_V_ADDR##*:}
log "fedpin inbound verifying signatures on 127.0.0.1:$FEDPIN_V_PORT (pid $FEDPIN_V_PID)"

# 5a''. the bare proxy: tokio + rustls + hyper with nothing of fedpin's
# (examples/bare_proxy.rs), a thread per core as fedpin has a lane per core
# (both default to the available parallelism).
"$BARE_BIN" 127.0.0.1:0 "127.0.0.1:$UP_PORT" "$TMP/server.pem" "$TMP/server.key" \
    >"$TMP/bare.out" 2>"$LOGS/bare.err" &
BARE_PID=$!
PIDS+=("$BARE_PID")
BARE_ADDR=$(wait_line "$TMP/bare.out" "listening on") || die "the bare proxy did not start"
BARE_PORT=${BARE_ADDR##*:}
log "bare proxy (the stack's floor) on 127.0.0.1:$BARE_PORT (pid $BARE_PID)"

# --------------------------------------------------------------------------
# 5b. nginx, own prefix, not the system service
# --------------------------------------------------------------------------
nginx_prepare
# The proxy part: nginx_federation_proxy (lib.sh).
cat >"$TMP/nginx.conf" <<EOF
$(nginx_main 2)
events { worker_connections 8192; }
http {
    log_format bench '\$remote_addr "\$request" \$status \$body_bytes_sent reused=\$ssl_session_reused \$ssl_protocol \$ssl_cipher';
    access_log $LOGS/nginx-access.log bench;
$(nginx_http_common)
$(nginx_federation_proxy)
}
EOF
start_nginx "$NGINX_PORT" "$TMP/nginx.conf" "$TMP/nginx.out"
log "nginx on 127.0.0.1:$NGINX_PORT (master pid $NGINX_PID, worker_processes 2)"

# --------------------------------------------------------------------------
# Pre-flight: every target answers 200 with the upstream's body, over TLS
# that verifies against the test CA; fedpin refuses a federation request
# without X-Matrix.
# --------------------------------------------------------------------------
curl_tls() { # port path [curl args...]
    local port=$1 path=$2
    shift 2
    curl -sS --max-time 5 --cacert "$TMP/ca.pem" \
        --resolve "$HOSTNAME_:$port:127.0.0.1" "$@" "https://$HOSTNAME_:$port$path"
}
expected=$(curl -sS --max-time 5 "http://127.0.0.1:$UP_PORT$KEY_PATH")
[[ $expected == *server_name* ]] || die "stand-in upstream answered: $expected"
for port in "$FEDPIN_PORT" "$NGINX_PORT"; do
    for v in --http1.1 --http2; do
        got=$(curl_tls "$port" "$KEY_PATH" "$v") || die "curl $v to port $port failed"
        [[ $got == "$expected" ]] || die "port $port ($v) answered: $got"
        got=$(curl_tls "$port" "$FED_PATH" "$v" -H "Authorization: $XMATRIX") ||
            die "curl $v federation path to port $port failed"
        [[ $got == "$expected" ]] || die "port $port ($v), federation path, answered: $got"
    done
done
got=$(curl_tls "$BARE_PORT" "$KEY_PATH" --http1.1) || die "curl to the bare proxy failed"
[[ $got == "$expected" ]] || die "the bare proxy answered: $got"
code=$(curl_tls "$FEDPIN_PORT" "$FED_PATH" -o /dev/null -w '%{http_code}')
[[ $code == 401 ]] || die "fedpin answered $code to a federation request without X-Matrix (expected 401)"
for v in --http1.1 --http2; do
    got=$(curl_tls "$FEDPIN_V_PORT" "$FED_PATH" "$v" -H "Authorization: $XMATRIX_SIGNED") ||
        die "curl $v signed federation request to the verifying fedpin failed"
    [[ $got == "$expected" ]] || die "the verifying fedpin ($v) answered the signed request: $got"
done
BROKEN_SIG=${XMATRIX_SIGNED/sig=\"/sig=\"AA}
code=$(curl_tls "$FEDPIN_V_PORT" "$FED_PATH" -o /dev/null -w '%{http_code}' -H "Authorization: $BROKEN_SIG")
[[ $code == 401 ]] || die "the verifying fedpin answered $code to a request with a broken signature (expected 401)"
log "pre-flight ok: the verifying fedpin forwards the signed request and refuses a broken signature"
log "pre-flight ok: both proxies forward key and federation paths over h1 and h2; fedpin 401s without X-Matrix"

# What each server negotiates with OpenSSL 3 as the client (wrk and s_time use the same library).
tls_params() { # port
    local out
    out=$(openssl s_client -connect "127.0.0.1:$1" -servername "$HOSTNAME_" </dev/null 2>&1 || true)
    printf '%s, %s, kx %s, %s signature' \
        "$(awk -F', ' '/^(New|Reused), /{print $2; exit}' <<<"$out")" \
        "$(awk '/^(New|Reused), /{print $NF; exit}' <<<"$out")" \
        "$(awk -F': *' '/^Server Temp Key/{print $2; exit}' <<<"$out")" \
        "$(awk -F': *' '/^Peer signature type/{print $2; exit}' <<<"$out")"
}
# Whether the server resumes a TLS 1.3 session (ticket) when offered one.
resumes() { # port
    local out
    out=$(printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$KEY_PATH" "$HOSTNAME_" |
        timeout 10 openssl s_client -connect "127.0.0.1:$1" -servername "$HOSTNAME_" \
            -sess_out "$TMP/sess-$1.pem" -ign_eof 2>/dev/null >/dev/null || true)
    [[ -s "$TMP/sess-$1.pem" ]] || { echo "no ticket received"; return; }
    out=$(timeout 10 openssl s_client -connect "127.0.0.1:$1" -servername "$HOSTNAME_" \
        -sess_in "$TMP/sess-$1.pem" </dev/null 2>&1 || true)
    if grep -q '^Reused' <<<"$out"; then echo "yes (ticket resumed)"; else echo "no"; fi
}
FEDPIN_TLS=$(tls_params "$FEDPIN_PORT")
NGINX_TLS=$(tls_params "$NGINX_PORT")
FEDPIN_RESUMES=$(resumes "$FEDPIN_PORT")
NGINX_RESUMES=$(resumes "$NGINX_PORT")
log "fedpin TLS: $FEDPIN_TLS; resumes: $FEDPIN_RESUMES"
log "nginx  TLS: $NGINX_TLS; resumes: $NGINX_RESUMES"

# --------------------------------------------------------------------------
# 6. measurements
# --------------------------------------------------------------------------
rm -rf "$RAW"
mkdir -p "$RAW"
RESULTS="$TMP/results.tsv" # round kind target rps p50 p90 p99 cpu_us_per_req bad requests user_us sys_us
: >"$RESULTS"

# CPU ticks of a process and its children (nginx workers): "user system"
# (utime, stime).
cpu_split() { # pid...
    local user=0 sys=0 p c u s
    for p in "$@"; do
        for c in "$p" $(pgrep -P "$p" 2>/dev/null || true); do
            [[ -r /proc/$c/stat ]] || continue
            read -r u s < <(awk '{sub(/^.*\) /, ""); print $12, $13}' "/proc/$c/stat")
            user=$((user + u)) sys=$((sys + s))
        done
    done
    echo "$user $sys"
}
# CPU ticks (utime+stime) of a process and its children.
cpu_ticks() { # pid...
    local u s
    read -r u s < <(cpu_split "$@")
    echo $((u + s))
}
# Microseconds per item of $1 ticks over $2 items, or "-".
per_item() { awk -v d="$1" -v n="${2:-0}" -v hz="$CLK_TCK" 'BEGIN{ if (n > 0) printf "%.1f", d / hz * 1e6 / n; else print "-" }'; }
CLK_TCK=$(getconf CLK_TCK)

# to_ms "1.23ms" -> 1.23
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}

# run_wrk round kind target server_pid url [extra wrk args...]
run_wrk() {
    local round=$1 kind=$2 target=$3 pid=$4 url=$5
    shift 5
    local raw="$RAW/r${round}-${kind}-${target}.txt"
    timeout $((WARMUP + 15)) wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" \
        -H "Host: $HOSTNAME_" "$@" "$url" >/dev/null 2>&1 || true
    local u0 s0 u1 s1
    read -r u0 s0 < <(cpu_split "$pid")
    timeout $((DURATION + 20)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
        -H "Host: $HOSTNAME_" "$@" "$url" >"$raw" 2>&1 || die "wrk failed against $target: $(cat "$raw")"
    read -r u1 s1 < <(cpu_split "$pid")
    local rps reqs p50 p90 p99 bad cpu user sys
    rps=$(awk '/^Requests\/sec:/{print $2}' "$raw")
    reqs=$(awk '/requests in/{print $1}' "$raw")
    p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$raw")")
    p90=$(to_ms "$(awk '$1=="90%"{print $2}' "$raw")")
    p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$raw")")
    bad=$(awk '/Non-2xx or 3xx/{n+=$NF} /Socket errors/{gsub(/,/,""); n+=$4+$6+$8+$10} END{print n+0}' "$raw")
    cpu=$(per_item $((u1 - u0 + s1 - s0)) "$reqs")
    user=$(per_item $((u1 - u0)) "$reqs")
    sys=$(per_item $((s1 - s0)) "$reqs")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$round" "$kind" "$target" "${rps:-0}" "$p50" "$p90" "$p99" "$cpu" "$bad" "${reqs:-0}" "$user" "$sys" >>"$RESULTS"
    log "round $round $kind $target: ${rps:-?} req/s, p50 ${p50} ms, p99 ${p99} ms, ${cpu} us CPU/req ($user user, $sys system), errors/non-2xx $bad"
}

UP_URL="http://127.0.0.1:$UP_PORT"
FP_URL="https://127.0.0.1:$FEDPIN_PORT"
NG_URL="https://127.0.0.1:$NGINX_PORT"
FV_URL="https://127.0.0.1:$FEDPIN_V_PORT"
BA_URL="https://127.0.0.1:$BARE_PORT"
START=$SECONDS
log "load before measuring: $(uptime)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq 1 "$ROUNDS"); do
    run_wrk "$r" keepalive direct "$UP_PID" "$UP_URL$KEY_PATH"
    run_wrk "$r" keepalive fedpin "$FEDPIN_PID" "$FP_URL$KEY_PATH"
    run_wrk "$r" keepalive nginx "$NGINX_PID" "$NG_URL$KEY_PATH"
    run_wrk "$r" keepalive bare "$BARE_PID" "$BA_URL$KEY_PATH"
    run_wrk "$r" federation fedpin "$FEDPIN_PID" "$FP_URL$FED_PATH" -H "Authorization: $XMATRIX"
    run_wrk "$r" federation nginx "$NGINX_PID" "$NG_URL$FED_PATH" -H "Authorization: $XMATRIX"
    run_wrk "$r" federation fedpin-verify "$FEDPIN_V_PID" "$FV_URL$FED_PATH" -H "Authorization: $XMATRIX_SIGNED"
    run_wrk "$r" newconn fedpin "$FEDPIN_PID" "$FP_URL$KEY_PATH" -H "Connection: close"
    reused_before=$(grep -c 'reused=r' "$LOGS/nginx-access.log" || true)
    total_before=$(wc -l <"$LOGS/nginx-access.log")
    run_wrk "$r" newconn nginx "$NGINX_PID" "$NG_URL$KEY_PATH" -H "Connection: close"
done
# Of the requests nginx logged during the last measured Connection: close run
# (plus its warm-up), how many came on a resumed TLS session: this is what wrk
# does on each reconnect (it keeps the SSL object's session and offers it).
reused_after=$(grep -c 'reused=r' "$LOGS/nginx-access.log" || true)
total_after=$(wc -l <"$LOGS/nginx-access.log")
WRK_REUSED=$(awk -v a=$((reused_after - reused_before)) -v b=$((total_after - total_before)) \
    'BEGIN{ if (b > 0) printf "%.1f%% of %d", 100 * a / b, b; else print "n/a" }')
log "wrk Connection: close — TLS sessions resumed on nginx: $WRK_REUSED"

# Full handshakes: openssl s_time -new never offers a session. STIME_PROCS
# clients in parallel, each a new connection + GET (HTTP/1.0) after another.
run_stime() { # target server_pid port
    local target=$1 pid=$2 port=$3 i t0 t1 w0 w1 n pids=()
    for i in $(seq 1 "$STIME_PROCS"); do
        timeout 10 openssl s_time -connect "127.0.0.1:$port" -new -time 1 -www "$KEY_PATH" >/dev/null 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}" || true
    pids=()
    t0=$(cpu_ticks "$pid")
    w0=$(date +%s.%N)
    for i in $(seq 1 "$STIME_PROCS"); do
        timeout $((DURATION + 20)) openssl s_time -connect "127.0.0.1:$port" -new -time "$DURATION" \
            -www "$KEY_PATH" >"$RAW/stime-${target}-$i.txt" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}" || die "openssl s_time failed against $target"
    w1=$(date +%s.%N)
    t1=$(cpu_ticks "$pid")
    # "N connections in T real seconds, B bytes read per connection" (T is whole
    # seconds, so the rate uses the wall time measured here).
    # awk reads the files itself: `cat | awk '…exit'` can die of SIGPIPE
    # under pipefail.
    n=$(awk '/connections in .* real seconds/{n+=$1} END{print n+0}' "$RAW/stime-${target}"-*.txt)
    local bytes rate cpu
    bytes=$(awk '/real seconds/{print $7; exit}' "$RAW/stime-${target}"-*.txt)
    rate=$(awk -v n="$n" -v a="$w0" -v b="$w1" 'BEGIN{printf "%.1f", n / (b - a)}')
    cpu=$(per_item $((t1 - t0)) "$n")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        1 fullhs "$target" "$rate" - - - "$cpu" 0 "$n" - - >>"$RESULTS"
    log "full handshakes $target: $rate/s ($n in $(awk -v a="$w0" -v b="$w1" 'BEGIN{printf "%.1f", b - a}')s, ${bytes:-?} bytes read per connection), $cpu us CPU/handshake"
    [[ ${bytes:-0} -gt 200 ]] || die "s_time against $target read ${bytes:-0} bytes per connection: no HTTP answer"
}
run_stime fedpin "$FEDPIN_PID" "$FEDPIN_PORT"
total_before=$(wc -l <"$LOGS/nginx-access.log")
run_stime nginx "$NGINX_PID" "$NGINX_PORT"
# Same check for s_time: it should offer no session at all.
STIME_REUSED=$(tail -n +$((total_before + 1)) "$LOGS/nginx-access.log" |
    awk '/HTTP\/1.0/ { n++; if (/reused=r/) r++ } END { if (n) printf "%.1f%% of %d", 100 * r / n, n; else print "n/a" }')
log "openssl s_time -new — TLS sessions resumed on nginx: $STIME_REUSED"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$((SECONDS - START))

# fedpin must have logged no errors and answered everything with 2xx.
fedpin_errors=$(grep -c '"level":"ERROR"' "$FEDPIN_LOG_DIR/fedpin.log" || true)
fedpin_5xx=$(grep -c '"status":5' "$FEDPIN_LOG_DIR/fedpin.log" || true)
fedpin_v_errors=$(grep -c '"level":"ERROR"' "$FEDPIN_LOG_DIR/fedpin-verify.log" || true)
fedpin_v_refused=$(grep -c '"status":40[13]' "$FEDPIN_LOG_DIR/fedpin-verify.log" || true)
cp "$TMP/nginx.conf" "$TMP/fedpin.toml" "$RAW/"
cp "$TMP/verify/fedpin.toml" "$RAW/fedpin-verify.toml"

# --------------------------------------------------------------------------
# 7. report
# --------------------------------------------------------------------------
mean() { # kind target column
    awk -F'\t' -v k="$1" -v t="$2" -v c="$3" \
        '$2==k && $3==t && $c != "-" { s += $c; n++ } END { if (n) printf "%.3f", s / n; else print "-" }' "$RESULTS"
}
spread() { # kind target  -> "r1 / r2 ..."
    awk -F'\t' -v k="$1" -v t="$2" '$2==k && $3==t { printf "%s%.0f", (n++ ? " / " : ""), $4 }' "$RESULTS"
}
errors_of() {
    awk -F'\t' -v k="$1" -v t="$2" '$2==k && $3==t { n += $9 } END { print n + 0 }' "$RESULTS"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b + 0 > 0 && a != "-") printf "%.2f", a / b; else print "-" }'; }
fmt0() { awk -v a="$1" 'BEGIN{ if (a == "-") print "-"; else printf "%.0f", a }'; }
fmt2() { awk -v a="$1" 'BEGIN{ if (a == "-") print "-"; else printf "%.2f", a }'; }
fmt1() { awk -v a="$1" 'BEGIN{ if (a == "-") print "-"; else printf "%.1f", a }'; }

row() { # kind target label ratio1 ratio2
    local k=$1 t=$2
    printf '  %-34s %9s  %-17s %7s %7s %7s %9s %6s  %-9s %-9s\n' "$3" \
        "$(fmt0 "$(mean "$k" "$t" 4)")" "$(spread "$k" "$t")" \
        "$(fmt2 "$(mean "$k" "$t" 5)")" "$(fmt2 "$(mean "$k" "$t" 6)")" "$(fmt2 "$(mean "$k" "$t" 7)")" \
        "$(fmt1 "$(mean "$k" "$t" 8)")" "$(errors_of "$k" "$t")" "$4" "$5"
}

D_RPS=$(mean keepalive direct 4)
F_RPS=$(mean keepalive fedpin 4)
N_RPS=$(mean keepalive nginx 4)
FF_RPS=$(mean federation fedpin 4)
FN_RPS=$(mean federation nginx 4)
CF_RPS=$(mean newconn fedpin 4)
CN_RPS=$(mean newconn nginx 4)
HF=$(mean fullhs fedpin 4)
HN=$(mean fullhs nginx 4)
F_CPU=$(mean keepalive fedpin 8)
N_CPU=$(mean keepalive nginx 8)
B_RPS=$(mean keepalive bare 4)
B_CPU=$(mean keepalive bare 8)
B_USER=$(mean keepalive bare 11)
B_SYS=$(mean keepalive bare 12)
FV_RPS=$(mean federation fedpin-verify 4)
FF_CPU=$(mean federation fedpin 8)
FV_CPU=$(mean federation fedpin-verify 8)
FN_CPU=$(mean federation nginx 8)
F_USER=$(mean keepalive fedpin 11)
F_SYS=$(mean keepalive fedpin 12)
N_USER=$(mean keepalive nginx 11)
N_SYS=$(mean keepalive nginx 12)
# What the 0.75x target leaves fedpin's user space, with its kernel time
# per request as measured: 0.75 * nginx's CPU/req - fedpin's system time.
USER_BUDGET=$(awk -v n="$N_CPU" -v s="$F_SYS" 'BEGIN{ if (n == "-" || s == "-") print "-"; else printf "%.1f", 0.75 * n - s }')

mkdir -p "$OUT_DIR"
{
    echo "fedpin inbound vs nginx — loopback load measurement ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo "command: tests/load/inbound_vs_nginx.sh  (DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS THREADS=$THREADS CONNS=$CONNS KEY=$KEY STIME_PROCS=$STIME_PROCS FEDPIN_LOG=$FEDPIN_LOG LOG_BESIDE_CONFIG=${LOG_BESIDE_CONFIG:-0})"
    echo "fedpin $BUILT, release; $(rustc --version 2>/dev/null)"
    echo "nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), worker_processes 2; $(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//'); $(openssl version)"
    echo "machine: $(nproc) cores, $(uname -sr); load average before / after measuring: $LOAD_BEFORE / $LOAD_AFTER"
    echo "NOTE: the load generator (wrk -t$THREADS, openssl s_time x$STIME_PROCS), the proxy and the stand-in upstream all share"
    echo "      these $(nproc) cores (with whatever else runs on the machine): absolute numbers are far below what"
    echo "      either proxy does on its own cores; compare ratios, and CPU/req (the server's own CPU time, /proc)."
    if [[ $FEDPIN_LOG_DIR == "$TMP" ]]; then
        echo "fedpin's log (FEDPIN_LOG=$FEDPIN_LOG, JSON access log) is written BESIDE its config, pin file and certificate,"
        echo "      in the directory fedpin watches (LOG_BESIDE_CONFIG=1): each log line wakes its file watchers."
    else
        echo "logs: fedpin (FEDPIN_LOG=$FEDPIN_LOG, JSON access log on stderr) and nginx (access_log, one line per request)"
        echo "      both write to a directory of their own, not one that fedpin watches."
    fi
    echo "TLS as negotiated with OpenSSL $(openssl version | awk '{print $2}') as client, $KEY key:"
    echo "  fedpin: $FEDPIN_TLS; resumes a session when offered: $FEDPIN_RESUMES"
    echo "  nginx:  $NGINX_TLS; resumes a session when offered: $NGINX_RESUMES"
    echo "  wrk -H 'Connection: close' offers the previous session on each reconnect: resumed on nginx: $WRK_REUSED requests"
    echo "  (so the 'new connection per request' rows are mostly RESUMED handshakes; full handshakes are the s_time rows:"
    echo "  openssl s_time -new resumed on nginx: $STIME_REUSED requests)"
    echo "wrk -t$THREADS -c$CONNS -d${DURATION}s --latency after a ${WARMUP}s warm-up, mean of $ROUNDS round(s); req/s per round in 'rounds'."
    echo "latency in ms; CPU/req = the server's own CPU time (user+sys) per request in microseconds (nginx: master+workers;"
    echo "upstream not included for the proxies). errs = non-2xx + socket errors."
    echo
    printf '  %-34s %9s  %-17s %7s %7s %7s %9s %6s  %-9s %-9s\n' \
        "target" "req/s" "rounds" "p50" "p90" "p99" "CPU/req" "errs" "/direct" "/nginx"
    echo "  keep-alive, GET $KEY_PATH"
    row keepalive direct "upstream direct (HTTP/1.1)" "1.00" ""
    row keepalive fedpin "fedpin inbound (HTTPS)" "$(ratio "$F_RPS" "$D_RPS")" "$(ratio "$F_RPS" "$N_RPS")"
    row keepalive nginx "nginx (HTTPS)" "$(ratio "$N_RPS" "$D_RPS")" "1.00"
    row keepalive bare "bare tokio+rustls+hyper proxy" "$(ratio "$B_RPS" "$D_RPS")" "$(ratio "$B_RPS" "$N_RPS")"
    echo "  keep-alive, GET /_matrix/federation/v1/query/profile with X-Matrix"
    row federation fedpin "fedpin inbound (HTTPS)" "$(ratio "$FF_RPS" "$D_RPS")" "$(ratio "$FF_RPS" "$FN_RPS")"
    row federation nginx "nginx (HTTPS)" "$(ratio "$FN_RPS" "$D_RPS")" "1.00"
    row federation fedpin-verify "fedpin, signatures verified" "$(ratio "$FV_RPS" "$D_RPS")" "$(ratio "$FV_RPS" "$FN_RPS")"
    echo "  new TLS connection per request (wrk -H 'Connection: close'; see resumption above)"
    row newconn fedpin "fedpin inbound" "" "$(ratio "$CF_RPS" "$CN_RPS")"
    row newconn nginx "nginx" "" "1.00"
    echo "  full TLS handshakes + GET, openssl s_time -new x$STIME_PROCS, ${DURATION}s (conn/s; CPU per handshake)"
    printf '  %-34s %9s  %-17s %7s %7s %7s %9s %6s  %-9s %-9s\n' "fedpin inbound" "$(fmt0 "$HF")" "" "" "" "" \
        "$(fmt1 "$(mean fullhs fedpin 8)")" "" "" "$(ratio "$HF" "$HN")"
    printf '  %-34s %9s  %-17s %7s %7s %7s %9s %6s  %-9s %-9s\n' "nginx" "$(fmt0 "$HN")" "" "" "" "" \
        "$(fmt1 "$(mean fullhs nginx 8)")" "" "" "1.00"
    echo
    echo "summary: keep-alive fedpin/direct $(ratio "$F_RPS" "$D_RPS"), fedpin/nginx $(ratio "$F_RPS" "$N_RPS") (CPU/req fedpin/nginx $(ratio "$F_CPU" "$N_CPU"));"
    echo "         new connection per request fedpin/nginx $(ratio "$CF_RPS" "$CN_RPS"); full handshakes fedpin/nginx $(ratio "$HF" "$HN")."
    echo "         signature verification (verify_signatures = enforce, key pinned): CPU/req $(fmt1 "$FV_CPU") us vs $(fmt1 "$FF_CPU") us off,"
    echo "         adds $(awk -v a="$FV_CPU" -v b="$FF_CPU" 'BEGIN{ if (a == "-" || b == "-") print "-"; else printf "%.1f", a - b }') us per request (ratio on/off $(ratio "$FV_CPU" "$FF_CPU"); verifying fedpin/nginx CPU/req $(ratio "$FV_CPU" "$FN_CPU"))."
    echo "where the keep-alive CPU/req goes (mean of the rounds; /proc utime and stime; us per request):"
    echo "         fedpin user $(fmt1 "$F_USER") + system $(fmt1 "$F_SYS"); nginx user $(fmt1 "$N_USER") + system $(fmt1 "$N_SYS");"
    echo "         system time fedpin/nginx $(ratio "$F_SYS" "$N_SYS"), user time fedpin/nginx $(ratio "$F_USER" "$N_USER");"
    echo "         fedpin's system time alone is $(ratio "$F_SYS" "$N_CPU") of nginx's whole CPU/req: at 0.75x nginx, its user space"
    echo "         would have $USER_BUDGET us per request ($(ratio "$USER_BUDGET" "$N_USER") of nginx's user time)."
    echo "the stack's floor (examples/bare_proxy.rs: tokio + rustls + hyper, nothing of fedpin's, same thread layout):"
    echo "         bare user $(fmt1 "$B_USER") + system $(fmt1 "$B_SYS") = $(fmt1 "$B_CPU") us per request;"
    echo "         CPU/req bare/nginx $(ratio "$B_CPU" "$N_CPU"), fedpin/bare $(ratio "$F_CPU" "$B_CPU"); user time bare/nginx $(ratio "$B_USER" "$N_USER")."
    echo "fedpin log during the run: $fedpin_errors ERROR lines, $fedpin_5xx 5xx access-log lines; verifying fedpin: $fedpin_v_errors ERROR lines, $fedpin_v_refused 401/403 lines. Measuring took ${ELAPSED}s."
} | tee "$REPORT"
log "report: $REPORT (raw output: $RAW/)"
