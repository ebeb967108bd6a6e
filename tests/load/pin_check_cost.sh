#!/usr/bin/env bash
# What the pin check costs, in instructions: callgrind over the verify
# bench's in-memory TLS 1.3 handshakes (benches/verify.rs, FEDPIN_CALLGRIND
# mode), Web PKI only (rustls's WebPkiServerVerifier) versus fedpin's
# PinnedServerVerifier, both ends of the handshake in one process.
#
#   tests/load/pin_check_cost.sh            # N=100 handshakes per function
#   N=5 tests/load/pin_check_cost.sh        # short form (CI)
#
# Instruction counts do not depend on what else the machine runs, so this is
# the stable figure on a shared machine (wall-clock is not). Each function
# is run twice under callgrind, with 0 and with N handshakes, and the
# per-handshake count is the difference divided by N (the fixture setup,
# key generation included, cancels out).
#
# Writes target/load/pin_check_cost.txt. Installs valgrind if missing.

# shellcheck source=tests/load/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" pin-cost pin_check_cost
N=${N:-100}
mkdir -p "$OUT_DIR"

if ! command -v valgrind >/dev/null 2>&1; then
    [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1 || die "valgrind missing"
    timeout 300 apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi

log "cargo bench --bench verify --no-run (release profile)"
BIN=$(cargo bench --locked --bench verify --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*verify-[^"]*\)".*/\1/p' | tail -n 1)
[[ -x ${BIN:-} ]] || die "bench binary not found"
log "bench binary: $BIN"

TMP=$(mktemp -d /tmp/fedpin-pincost.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# instructions ALG FUNCTION COUNT -> total Ir of one run
instructions() {
    local out="$TMP/cg.$1.$2.$3"
    FEDPIN_CALLGRIND="$1:$2:$3" timeout 1800 valgrind --tool=callgrind \
        --callgrind-out-file="$out" "$BIN" >"$out.log" 2>&1 ||
        die "callgrind run $1:$2:$3 failed: $(tail -n 5 "$out.log")"
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

RESULTS=$TMP/results
: >"$RESULTS"
for alg in ecdsa_p256 rsa2048; do
    for f in webpki_baseline pinned_webpki_leaf pinned_webpki_anchor pinned_pin_only; do
        zero=$(instructions "$alg" "$f" 0)
        full=$(instructions "$alg" "$f" "$N")
        per=$(awk -v a="$full" -v b="$zero" -v n="$N" 'BEGIN { printf "%.0f", (a - b) / n }')
        printf '%s\t%s\t%s\n' "$alg" "$f" "$per" >>"$RESULTS"
        log "$alg $f: $per instructions per handshake"
    done
done

{
    echo "fedpin pin-check cost in instructions (callgrind), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "command: N=$N tests/load/pin_check_cost.sh; fedpin $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(rustc --version); $(valgrind --version)"
    echo "full in-memory TLS 1.3 handshake, client and server in one process (benches/verify.rs);"
    echo "per handshake = (Ir with N handshakes - Ir with 0) / N"
    echo
    printf '  %-12s %-22s %16s %12s\n' alg function "Ir/handshake" "vs webpki"
    for alg in ecdsa_p256 rsa2048; do
        base=$(awk -F'\t' -v a="$alg" '$1==a && $2=="webpki_baseline" { print $3 }' "$RESULTS")
        awk -F'\t' -v a="$alg" -v b="$base" '$1==a {
            d = $3 - b
            printf "  %-12s %-22s %16d %+11.2f%%\n", $1, $2, $3, 100 * d / b }' "$RESULTS"
    done
    echo
    echo "target (issue 13): the pin check adds <= 1 % of a full handshake's instructions."
} | tee "$REPORT"
log "report: $REPORT"
