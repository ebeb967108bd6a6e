#!/usr/bin/env bash
# CPU per new outbound tunnel with upstream TLS session resumption (issue 13,
# item 4): fedpin's outbound proxy against a peer that issues TLS 1.3
# tickets, against one that issues none, and against the "floor" (one full
# rustls server handshake + one full rustls client handshake per
# connection, what an intercepting proxy cannot go below without
# resumption), on loopback, in one run.
#
#   tests/load/outbound_resumption.sh                                # N=5000 ROUNDS=3, release build
#   PROFILE=debug N=100 ROUNDS=1 WARM=5 tests/load/outbound_resumption.sh   # the short form for CI
#
# What it does:
#   1. cargo build --locked (--release unless PROFILE=debug) --bin fedpin
#      --example new_tunnels
#   2. installs openssl and curl from Debian if missing
#   3. mints a throwaway CA and ECDSA P-256 certificates for the two stand-in
#      peers (peer-tickets.fedpin.test, peer-notickets.fedpin.test) and for
#      the floor process (the no-tickets peer's name, its own key)
#   4. starts, each its own process (examples/new_tunnels.rs): the peer with
#      tickets (`peer --tickets on`: rustls' stateless ticketer, 2 tickets
#      per handshake), the peer without (`--tickets off`: no tickets, no
#      session cache: every handshake full), the floor (`floor`: CONNECT,
#      then two full handshakes, resumption off, and a byte relay); and
#      fedpin (`fedpin run`, [outbound] with both peers pinned, `resolve`
#      to 127.0.0.1, [admin] for /metrics)
#   5. per round (ROUNDS), for each target, the same client workload
#      (`new_tunnels client`): WARM tunnels one at a time (the first tunnel
#      of a name does the full handshake and fedpin mints its leaf), then N
#      new tunnels, PARALLEL at a time, each: CONNECT, TLS inside the tunnel
#      (trusting fedpin's CA, or the floor's; client-side resumption off, so
#      every inner handshake is full), one GET with Connection: close. The
#      measured process's CPU time (utime+stime of all its threads, from
#      /proc/<pid>/stat) is read before and after the N tunnels:
#        fedpin -> peer with tickets     (upstream resumption possible)
#        fedpin -> peer without tickets  (upstream resumption prevented)
#        floor  -> peer without tickets
#        floor --resume -> peer with tickets (reference: the bare relay with
#                          upstream resumption, its own leaf for that name)
#   6. proves what happened rather than assuming it, per phase: the peer
#      reports its own handshake kind on every answer (`x-tls-handshake:
#      full|resumed`, tallied by the client), and fedpin's /metrics gives
#      handshakes (fedpin_handshakes_total{direction="outbound",result="ok"})
#      against pin-rule runs (fedpin_pin_checks_total{direction="outbound"}),
#      whose difference is the resumed handshakes. The run fails if nothing
#      resumed with tickets on, or anything resumed with them off or
#      through the floor.
#   7. a reload check: the pin file is rewritten (a new generation, same
#      pins) and fedpin sent SIGHUP; the next tunnel to the ticket-issuing
#      peer must be a full, pin-checked handshake (the peer says `full`, the
#      pin-check counter moves), the ones after it resume again. The run
#      fails otherwise (tests/pins_reload.rs checks the same in-process).
#   7b. a second fedpin process with kept upstream connections on (the
#      default, upstream_keepalive_secs = 30; the first runs with 0 so that
#      every tunnel dials) is measured in each round as `kept`, against the
#      peer without tickets: a tunnel takes the pinned connection an ended
#      tunnel left and makes no upstream handshake. Proven by its /metrics
#      (fedpin_outbound_upstream_reused_total, handshakes < tunnels); after
#      the reload its first tunnel takes none and runs the pin rules, and
#      the next ones take the connection that one left. The run fails
#      otherwise.
#   8. writes a table to target/load/outbound_resumption.txt: CPU per new
#      tunnel for the three targets, ratios to the floor, resumed counts;
#      stops everything it started (trap), whatever happens
#
# Client, peers, fedpin and the floor share the machine's cores: the figure
# of merit is the measured process's own CPU time per tunnel, not tunnels/s.
# The target (issue 13): fedpin with resumption at most 0.6x the floor. The
# script reports; it never asserts timings.
#
# Knobs (environment): N=5000 ROUNDS=3 WARM=20 PARALLEL=4 PROFILE=release|debug
#   FEDPIN_LOG=info (fedpin's log filter; its log goes to a directory of its
#   own, not the watched config directory) SKIP_BUILD=1 SKIP_INSTALL=1
# Everything listens on 127.0.0.1 only; every step is bounded in time.

# shellcheck source=tests/load/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" resumption outbound_resumption

N=${N:-5000}
ROUNDS=${ROUNDS:-3}
WARM=${WARM:-20}
PARALLEL=${PARALLEL:-4}
PROFILE=${PROFILE:-release}
FEDPIN_LOG=${FEDPIN_LOG:-info}
export FEDPIN_LOG
PEER_T=peer-tickets.fedpin.test
PEER_N=peer-notickets.fedpin.test

int_knob N 1 1000000
int_knob ROUNDS 1 100
int_knob WARM 2 10000
int_knob PARALLEL 1 1000

# --------------------------------------------------------------------------
# 1. build
# --------------------------------------------------------------------------
build_profile --bin fedpin --example new_tunnels
measured_build examples/new_tunnels.rs
FEDPIN=$BUILD_DIR/fedpin
TUNNELS=$BUILD_DIR/examples/new_tunnels
need_binaries "$FEDPIN" "$TUNNELS"

# --------------------------------------------------------------------------
# 2. tools
# --------------------------------------------------------------------------
require_tools openssl curl

# --------------------------------------------------------------------------
# Process bookkeeping and cleanup
# --------------------------------------------------------------------------
start_run

# CPU ticks (utime+stime, all threads) of one process.
cpu_ticks() { # pid
    awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"
}
CLK_TCK=$(getconf CLK_TCK)

# --------------------------------------------------------------------------
# 3. certificates
# --------------------------------------------------------------------------
log "minting a test CA and P-256 certificates for $PEER_T, $PEER_N and the floor"
(
    cd "$TMP"
    umask 077
    keyargs=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
    mint_ca "fedpin resumption-test CA" "${keyargs[@]}"
    mint_server_cert peer-t "$PEER_T" "${keyargs[@]}"
    mint_server_cert peer-n "$PEER_N" "${keyargs[@]}"
    mint_server_cert floor "$PEER_N" "${keyargs[@]}"
    mint_server_cert floor-r "$PEER_T" "${keyargs[@]}"
    chmod 644 ca.pem peer-t.pem peer-n.pem floor.pem floor-r.pem
) || die "openssl could not mint the certificates"
spki_pin() { # cert.pem
    openssl x509 -in "$1" -pubkey -noout | openssl pkey -pubin -outform der |
        openssl dgst -sha256 -binary | openssl base64 -A
}
CA_PIN="sha256/$(spki_pin "$TMP/ca.pem")"

# --------------------------------------------------------------------------
# 4. processes
# --------------------------------------------------------------------------
start_bg() { # name expect-line cmd... -> STARTED_PID, STARTED_ADDR
    local name=$1 line=$2
    shift 2
    "$@" >"$TMP/$name.out" 2>"$LOGS/$name.err" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    STARTED_ADDR=$(wait_line "$TMP/$name.out" "$line" 30) || die "$name did not start"
}
start_bg peer-t "listening on" "$TUNNELS" peer --cert "$TMP/peer-t.pem" --key "$TMP/peer-t.key" --tickets on
PT_PID=$STARTED_PID PT_PORT=${STARTED_ADDR##*:}
start_bg peer-n "listening on" "$TUNNELS" peer --cert "$TMP/peer-n.pem" --key "$TMP/peer-n.key" --tickets off
PN_PID=$STARTED_PID PN_PORT=${STARTED_ADDR##*:}
log "peer with tickets $PEER_T on 127.0.0.1:$PT_PORT (pid $PT_PID); without: $PEER_N on 127.0.0.1:$PN_PORT (pid $PN_PID)"
start_bg floor "listening on" "$TUNNELS" floor --cert "$TMP/floor.pem" --key "$TMP/floor.key" --ca "$TMP/ca.pem"
FLOOR_PID=$STARTED_PID FLOOR_ADDR=$STARTED_ADDR
start_bg floor-r "listening on" "$TUNNELS" floor --resume --cert "$TMP/floor-r.pem" --key "$TMP/floor-r.key" --ca "$TMP/ca.pem"
FLOOR_R_PID=$STARTED_PID FLOOR_R_ADDR=$STARTED_ADDR
log "floor on $FLOOR_ADDR (pid $FLOOR_PID); floor with upstream resumption on $FLOOR_R_ADDR (pid $FLOOR_R_PID)"

write_pins() { # note
    local d
    for d in fp fpk; do
        cat >"$TMP/$d/pins.tmp" <<EOF
version = 1

[policy]
unpinned = "deny"
on_expired = "webpki"

[[peer]]
server_name = "$PEER_T:$PT_PORT"
hosts = ["$PEER_T"]
pins = ["sha256/$(spki_pin "$TMP/peer-t.pem")", "$CA_PIN"]
note = "$1"

[[peer]]
server_name = "$PEER_N:$PN_PORT"
hosts = ["$PEER_N"]
pins = ["sha256/$(spki_pin "$TMP/peer-n.pem")", "$CA_PIN"]
note = "$1"
EOF
        mv "$TMP/$d/pins.tmp" "$TMP/$d/pins.toml"
    done
}
mkdir -p "$TMP/fp" "$TMP/fpk"
write_pins "tests/load/outbound_resumption.sh, generation 1"
# Two fedpin processes with the same pins: fp keeps no upstream connection
# between tunnels (upstream_keepalive_secs = 0: every tunnel dials, and
# resumes when the peer issues tickets), fpk keeps them (the default, 30 s).
start_fedpin() { # dir keepalive-secs -> STARTED_PID STARTED_ADDR STARTED_ADMIN
    local d=$TMP/$1
    cp "$TMP/ca.pem" "$d/"
    "$FEDPIN" ca init --dir "$d/ca" >"$LOGS/ca-init-$1.log" 2>&1 || die "fedpin ca init failed"
    cat >"$d/fedpin.toml" <<EOF
$(outbound_config "$PEER_T" "$PEER_N")
upstream_keepalive_secs = $2

[admin]
listen = "127.0.0.1:0"
EOF
    "$FEDPIN" check-config --config "$d/fedpin.toml" >"$LOGS/check-config-$1.log" 2>&1 ||
        die "fedpin check-config refused the config: $(cat "$LOGS/check-config-$1.log")"
    "$FEDPIN" run --config "$d/fedpin.toml" >"$TMP/$1.out" 2>"$LOGS/$1.log" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    STARTED_ADDR=$(wait_line "$TMP/$1.out" "outbound listening on" 30) || die "fedpin ($1) did not start"
    STARTED_ADMIN=$(wait_line "$TMP/$1.out" "admin listening on" 30) || die "fedpin's ($1) admin listener did not start"
}
start_fedpin fp 0
FEDPIN_PID=$STARTED_PID FEDPIN_ADDR=$STARTED_ADDR ADMIN_ADDR=$STARTED_ADMIN
start_fedpin fpk 30
FPK_PID=$STARTED_PID FPK_ADDR=$STARTED_ADDR FPK_ADMIN=$STARTED_ADMIN
log "fedpin (no kept connections) outbound on $FEDPIN_ADDR, admin on $ADMIN_ADDR (pid $FEDPIN_PID); fedpin (kept, the default) on $FPK_ADDR, admin on $FPK_ADMIN (pid $FPK_PID); FEDPIN_LOG=$FEDPIN_LOG"

# fedpin's counters: "handshakes_ok pin_checks generation reused" (outbound).
counters() { # [admin address, default fp's]
    local m
    m=$(curl -fsS --max-time 10 "http://${1:-$ADMIN_ADDR}/metrics") || die "cannot read fedpin's /metrics"
    awk '
        /^fedpin_handshakes_total\{/ && /direction="outbound"/ && /result="ok"/ { hs += $NF }
        /^fedpin_pin_checks_total\{/ && /direction="outbound"/ { pc += $NF }
        /^fedpin_pin_generation / { g = $NF }
        /^fedpin_outbound_upstream_reused_total / { ru = $NF }
        END { printf "%d %d %d %d\n", hs, pc, g, ru }' <<<"$m"
}

# --------------------------------------------------------------------------
# 5. measurements
# --------------------------------------------------------------------------
RESULTS="$TMP/results.tsv" # round target n ticks full resumed failed fedpin_hs fedpin_checks secs peer_ticks reused
: >"$RESULTS"
# run_client out-file proxy target ca n parallel: "ok full resumed failed secs"
run_client() {
    local out=$1 proxy=$2 target=$3 ca=$4 n=$5 par=$6
    timeout $((60 + n / 10)) "$TUNNELS" client --proxy "$proxy" --target "$target" --ca "$ca" \
        -n "$n" --parallel "$par" >"$out" 2>"$out.err" || die "new_tunnels client failed: $(cat "$out.err")"
    sed -n 's/^done ok=\([0-9]*\) full=\([0-9]*\) resumed=\([0-9]*\) failed=\([0-9]*\) secs=\([0-9.]*\)$/\1 \2 \3 \4 \5/p' "$out"
}
# phase round name pid proxy target ca peer_pid [admin]
phase() {
    local round=$1 name=$2 pid=$3 proxy=$4 target=$5 ca=$6 peer_pid=$7 admin=${8:-$ADMIN_ADDR}
    local w t0 t1 p0 p1 c0 c1 r
    w=$(run_client "$TMP/warm-$name-$round" "$proxy" "$target" "$ca" "$WARM" 1)
    read -r w_ok _ _ w_failed _ <<<"$w"
    ((w_ok == WARM && w_failed == 0)) || die "warm-up $name: $w ($(cat "$TMP/warm-$name-$round.err"))"
    c0=$(counters "$admin")
    t0=$(cpu_ticks "$pid")
    p0=$(cpu_ticks "$peer_pid")
    r=$(run_client "$TMP/client-$name-$round" "$proxy" "$target" "$ca" "$N" "$PARALLEL")
    t1=$(cpu_ticks "$pid")
    p1=$(cpu_ticks "$peer_pid")
    c1=$(counters "$admin")
    local ok full resumed failed secs hs0 pc0 hs1 pc1 ru0 ru1
    read -r ok full resumed failed secs <<<"$r"
    read -r hs0 pc0 _ ru0 <<<"$c0"
    read -r hs1 pc1 _ ru1 <<<"$c1"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$ok" $((t1 - t0)) \
        "$full" "$resumed" "$failed" $((hs1 - hs0)) $((pc1 - pc0)) "$secs" $((p1 - p0)) $((ru1 - ru0)) >>"$RESULTS"
    log "round $round $name: $ok tunnels in ${secs}s, $(awk -v d=$((t1 - t0)) -v n="$ok" -v hz="$CLK_TCK" \
        'BEGIN{ if (n > 0) printf "%.1f", d / hz * 1e6 / n; else print "-" }') us CPU/tunnel; peer: $full full, $resumed resumed; failed $failed; fedpin handshakes $((hs1 - hs0)), pin checks $((pc1 - pc0)), kept connections taken $((ru1 - ru0))"
    ((failed == 0)) || die "$name: $failed of $N tunnels failed: $(cat "$TMP/client-$name-$round.err")"
}
START=$SECONDS
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "load before measuring: $(uptime)"
for r in $(seq 1 "$ROUNDS"); do
    phase "$r" tickets "$FEDPIN_PID" "$FEDPIN_ADDR" "$PEER_T:$PT_PORT" "$TMP/fp/ca/fedpin-ca.pem" "$PT_PID"
    phase "$r" notickets "$FEDPIN_PID" "$FEDPIN_ADDR" "$PEER_N:$PN_PORT" "$TMP/fp/ca/fedpin-ca.pem" "$PN_PID"
    phase "$r" floor "$FLOOR_PID" "$FLOOR_ADDR" "$PEER_N:$PN_PORT" "$TMP/ca.pem" "$PN_PID"
    phase "$r" floor-resumed "$FLOOR_R_PID" "$FLOOR_R_ADDR" "$PEER_T:$PT_PORT" "$TMP/ca.pem" "$PT_PID"
    phase "$r" kept "$FPK_PID" "$FPK_ADDR" "$PEER_N:$PN_PORT" "$TMP/fpk/ca/fedpin-ca.pem" "$PN_PID" "$FPK_ADMIN"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$((SECONDS - START))

# The warm-up of the first round, one tunnel at a time: the first tunnel
# to the ticket-issuing peer is full, the rest resume.
read -r _ WARM_FULL WARM_RESUMED _ _ < <(sed -n 's/^done ok=\([0-9]*\) full=\([0-9]*\) resumed=\([0-9]*\) failed=\([0-9]*\) secs=\(.*\)$/\1 \2 \3 \4 \5/p' "$TMP/warm-tickets-1")

# --------------------------------------------------------------------------
# 7. reload: the next tunnel after a new generation is full and pin-checked
# --------------------------------------------------------------------------
read -r _ _ GEN_BEFORE _ <<<"$(counters)"
read -r _ _ KGEN_BEFORE _ <<<"$(counters "$FPK_ADMIN")"
write_pins "tests/load/outbound_resumption.sh, generation 2"
kill -HUP "$FEDPIN_PID" "$FPK_PID"
GEN_AFTER=$GEN_BEFORE
for _ in $(seq 1 100); do
    read -r _ _ GEN_AFTER _ <<<"$(counters)"
    ((GEN_AFTER > GEN_BEFORE)) && break
    sleep 0.1
done
((GEN_AFTER > GEN_BEFORE)) || die "fedpin did not load the rewritten pin file (generation $GEN_BEFORE)"
RELOAD_N=5
read -r _ PC0 _ <<<"$(counters)"
r1=$(run_client "$TMP/reload-1" "$FEDPIN_ADDR" "$PEER_T:$PT_PORT" "$TMP/fp/ca/fedpin-ca.pem" 1 1)
read -r _ PC1 _ <<<"$(counters)"
rn=$(run_client "$TMP/reload-n" "$FEDPIN_ADDR" "$PEER_T:$PT_PORT" "$TMP/fp/ca/fedpin-ca.pem" $((RELOAD_N - 1)) 1)
read -r _ PC2 _ <<<"$(counters)"
read -r r1_ok r1_full r1_resumed _ _ <<<"$r1"
read -r rn_ok _ rn_resumed _ _ <<<"$rn"
RELOAD_LINE="generation $GEN_BEFORE -> $GEN_AFTER: first tunnel after it: peer says $( ((r1_full == 1)) && echo full || echo resumed), fedpin pin checks +$((PC1 - PC0)); next $((RELOAD_N - 1)): $rn_resumed resumed, pin checks +$((PC2 - PC1))"
log "reload: $RELOAD_LINE"
((r1_ok == 1 && r1_full == 1 && r1_resumed == 0 && PC1 - PC0 == 1)) ||
    die "after a reload the first upstream handshake was not a full, pin-checked one: $RELOAD_LINE"
((rn_ok == RELOAD_N - 1)) || die "tunnels after the reload failed: $rn"

# The same for kept connections: the first tunnel after the reload takes
# none (the pool was emptied) and runs the pin rules; the next ones take
# the connection it left.
KGEN_AFTER=$KGEN_BEFORE
for _ in $(seq 1 100); do
    read -r _ _ KGEN_AFTER _ <<<"$(counters "$FPK_ADMIN")"
    ((KGEN_AFTER > KGEN_BEFORE)) && break
    sleep 0.1
done
((KGEN_AFTER > KGEN_BEFORE)) || die "fedpin (kept) did not load the rewritten pin file (generation $KGEN_BEFORE)"
read -r _ KPC0 _ KRU0 <<<"$(counters "$FPK_ADMIN")"
k1=$(run_client "$TMP/kreload-1" "$FPK_ADDR" "$PEER_N:$PN_PORT" "$TMP/fpk/ca/fedpin-ca.pem" 1 1)
read -r _ KPC1 _ KRU1 <<<"$(counters "$FPK_ADMIN")"
kn=$(run_client "$TMP/kreload-n" "$FPK_ADDR" "$PEER_N:$PN_PORT" "$TMP/fpk/ca/fedpin-ca.pem" $((RELOAD_N - 1)) 1)
read -r _ KPC2 _ KRU2 <<<"$(counters "$FPK_ADMIN")"
read -r k1_ok _ _ _ _ <<<"$k1"
read -r kn_ok _ _ _ _ <<<"$kn"
KRELOAD_LINE="generation $KGEN_BEFORE -> $KGEN_AFTER: first tunnel after it: kept connections taken +$((KRU1 - KRU0)), pin checks +$((KPC1 - KPC0)); next $((RELOAD_N - 1)): kept taken +$((KRU2 - KRU1)), pin checks +$((KPC2 - KPC1))"
log "reload (kept connections): $KRELOAD_LINE"
((k1_ok == 1 && KRU1 == KRU0 && KPC1 - KPC0 == 1)) ||
    die "after a reload the first tunnel took a kept connection or ran no pin check: $KRELOAD_LINE"
((kn_ok == RELOAD_N - 1 && KRU2 > KRU1)) || die "tunnels after the reload did not take the kept connection: $KRELOAD_LINE"

fedpin_errors=$(cat "$LOGS/fp.log" "$LOGS/fpk.log" | grep -c '"level":"ERROR"' || true)

# --------------------------------------------------------------------------
# 8. report
# --------------------------------------------------------------------------
sum() { # target column
    awk -F'\t' -v t="$1" -v c="$2" '$2==t { s += $c } END { print s + 0 }' "$RESULTS"
}
# CPU per tunnel over all rounds (total ticks / total tunnels), microseconds.
per_tunnel() { # target ticks-column
    awk -v d="$(sum "$1" "$2")" -v n="$(sum "$1" 3)" -v hz="$CLK_TCK" \
        'BEGIN{ if (n > 0) printf "%.1f", d / hz * 1e6 / n; else print "-" }'
}
rounds_of() { # target -> per-round CPU/tunnel "a / b / c"
    awk -F'\t' -v t="$1" -v hz="$CLK_TCK" \
        '$2==t && $3 > 0 { printf "%s%.0f", (n++ ? " / " : ""), $4 / hz * 1e6 / $3 }' "$RESULTS"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b + 0 > 0 && a != "-") printf "%.2f", a / b; else print "-" }'; }
T_CPU=$(per_tunnel tickets 4)
NT_CPU=$(per_tunnel notickets 4)
FL_CPU=$(per_tunnel floor 4)
T_RES=$(sum tickets 6)
NT_RES=$(sum notickets 6)
FL_RES=$(sum floor 6)
FR_CPU=$(per_tunnel floor-resumed 4)
FR_RES=$(sum floor-resumed 6)
T_N=$(sum tickets 3)
K_CPU=$(per_tunnel kept 4)
K_N=$(sum kept 3)
K_REUSED=$(sum kept 12)
K_HS=$(sum kept 8)
# fedpin's own view: handshakes that ran no pin check = resumed.
T_FRES=$(($(sum tickets 8) - $(sum tickets 9)))
NT_FRES=$(($(sum notickets 8) - $(sum notickets 9)))

row() { # label target fedpin-resumed
    local t=$2
    printf '  %-38s %8s %9s  %-19s %7s  %-17s %-13s %9s\n' "$1" "$(sum "$t" 3)" "$(per_tunnel "$t" 4)" \
        "$(rounds_of "$t")" "$(ratio "$(per_tunnel "$t" 4)" "$FL_CPU")" \
        "$(sum "$t" 6) of $(sum "$t" 3)" "$3" "$(per_tunnel "$t" 11)"
}
mkdir -p "$OUT_DIR"
{
    echo "fedpin outbound: CPU per new tunnel with upstream TLS session resumption, loopback ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo "command: tests/load/outbound_resumption.sh  (N=$N ROUNDS=$ROUNDS WARM=$WARM PARALLEL=$PARALLEL PROFILE=$PROFILE FEDPIN_LOG=$FEDPIN_LOG)"
    echo "fedpin $BUILT, $PROFILE build; $(rustc --version 2>/dev/null)"
    echo "machine: $(nproc) cores, $(uname -sr); load average before / after measuring: $LOAD_BEFORE / $LOAD_AFTER"
    echo "Workload, the same for every target (examples/new_tunnels.rs client): per round, $WARM warm-up tunnels one at a time,"
    echo "then N=$N new tunnels, $PARALLEL at a time: CONNECT, TLS 1.3 inside the tunnel (client resumption off: every inner"
    echo "handshake full), one GET (Connection: close). Peers and the floor: rustls, ECDSA P-256 leaves, ALPN http/1.1."
    echo "CPU/tunnel = the measured process's own CPU time (utime+stime, all threads, /proc/<pid>/stat) over the N tunnels of"
    echo "all rounds / tunnels (per round in 'rounds'); the client and the peer share the $(nproc) cores but are not counted."
    echo "floor = examples/new_tunnels.rs floor: one full rustls server handshake + one full rustls client handshake (Web PKI"
    echo "check, resumption off) per connection and a byte relay: the least an intercepting proxy does without resumption."
    echo "resumed (peer) = the peer's own count (rustls handshake_kind, sent back as x-tls-handshake); resumed (fedpin) ="
    echo "fedpin_handshakes_total{outbound,ok} - fedpin_pin_checks_total{outbound} over the same tunnels."
    [[ $PROFILE == debug ]] && echo "NOTE: debug build (the CI short form): the figures check the script, they are not the measurement."
    echo
    printf '  %-38s %8s %9s  %-19s %7s  %-17s %-13s %9s\n' "target" "tunnels" "CPU/tun" "rounds" "/floor" \
        "resumed (peer)" "(fedpin)" "peer CPU"
    row "fedpin, peer issues tickets" tickets "$T_FRES"
    row "fedpin, peer issues no tickets" notickets "$NT_FRES"
    row "floor (2 full rustls handshakes)" floor "-"
    row "floor, upstream resumed (reference)" floor-resumed "-"
    row "fedpin, kept upstream connections" kept "-"
    echo
    echo "  CPU/tun and peer CPU in microseconds per tunnel; the peer's own CPU shows what resumption saves it."
    echo "  floor, upstream resumed: the same bare relay with its client side resuming (new_tunnels floor --resume, the"
    echo "  ticket-issuing peer): the least an intercepting proxy with upstream resumption does; fedpin with resumption"
    echo "  is $(ratio "$T_CPU" "$FR_CPU")x it (what fedpin adds to a bare relay: CONNECT handling, egress and pin rules, minting, metrics)."
    echo "  first tunnels (round 1 warm-up, one at a time, peer with tickets): $WARM_FULL full, $WARM_RESUMED resumed."
    echo "  reload: $RELOAD_LINE."
    echo "  fedpin, kept upstream connections: the default (upstream_keepalive_secs = 30), peer issues no tickets: a tunnel"
    echo "  takes the pinned HTTP/1.1 connection an ended tunnel left (same name, same pin generation) and makes no upstream"
    echo "  handshake; $K_REUSED of $K_N tunnels took one, $K_HS upstream handshakes. The other fedpin rows run with"
    echo "  upstream_keepalive_secs = 0. Reload: $KRELOAD_LINE."
    echo
    echo "target (issue 13): fedpin with resumption <= 0.6x the floor."
    echo "summary: fedpin with resumption $T_CPU us CPU per new tunnel = $(ratio "$T_CPU" "$FL_CPU")x the floor ($FL_CPU us);"
    echo "         without (peer issues no tickets) $NT_CPU us = $(ratio "$NT_CPU" "$FL_CPU")x; resumption saves $(awk -v a="$NT_CPU" -v b="$T_CPU" 'BEGIN{printf "%.1f", a - b}') us per tunnel ($(ratio "$T_CPU" "$NT_CPU")x)."
    echo "         upstream handshakes resumed: $T_RES of $T_N (peer), $T_FRES (fedpin) with tickets; $NT_RES / $NT_FRES without; floor $FL_RES."
    echo "         a bare relay with upstream resumption: $FR_CPU us = $(ratio "$FR_CPU" "$FL_CPU")x the floor (resumed $FR_RES)."
    echo "         fedpin with kept upstream connections (the default): $K_CPU us = $(ratio "$K_CPU" "$FL_CPU")x the floor ($K_REUSED of $K_N tunnels took one)."
    echo "fedpin ERROR log lines during the run: $fedpin_errors. Measuring took ${ELAPSED}s."
} | tee "$REPORT"
log "report: $REPORT"

# What the run proves, beyond the figures.
((T_RES > 0 && T_FRES > 0)) || die "no upstream session resumed with a peer that issues tickets (peer: $T_RES, fedpin: $T_FRES)"
((NT_RES == 0 && NT_FRES == 0)) || die "sessions resumed with a peer that issues no tickets (peer: $NT_RES, fedpin: $NT_FRES)"
((FL_RES == 0)) || die "the floor resumed $FL_RES upstream sessions"
((K_REUSED > 0 && K_HS < K_N)) || die "fedpin kept no upstream connection for later tunnels (taken: $K_REUSED, handshakes: $K_HS of $K_N)"
((T_RES == T_FRES)) || log "NOTE: the peer counted $T_RES resumed handshakes, fedpin $T_FRES"
