#!/usr/bin/env bash
# Fuzz smoke (run by .ci/run): every cargo-fuzz target for FUZZ_SECS seconds
# (default 15), starting from its committed corpus (fuzz/corpus/<target>/) and
# regression inputs (fuzz/regressions/<target>/). New inputs go to a scratch
# directory, so the committed corpora stay as they are. A crash or a property
# violation fails the run and leaves the input under fuzz/artifacts/<target>/.
#
# Installs cargo-fuzz if missing. cargo-fuzz needs nightly-only rustc flags;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
SECS=${FUZZ_SECS:-15}
CARGO_FUZZ_VERSION=0.13.2

# libfuzzer-sys compiles libFuzzer's C++ sources.
if ! command -v c++ >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
  echo "fuzz: installing g++ (libFuzzer is C++)"
  timeout 300 apt-get update -qq >/dev/null || true
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq g++ >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  timeout 900 cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# The dev profile (debug assertions, overflow checks) at opt-level 1: builds
# in about half the -O time and runs ~50x faster than opt-level 0 (measured:
# config_file 7.6k vs 134 execs/s), so 15 s is real fuzzing, not only a
# replay of the corpus.
export CARGO_PROFILE_DEV_OPT_LEVEL=1
echo "fuzz: building every target (cargo fuzz build --dev, opt-level 1)"
cargo fuzz build --dev

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
total=0
for t in $(cargo fuzz list); do
  mkdir -p "$scratch/$t"
  seeds=(corpus/"$t")
  [[ -d regressions/$t ]] && seeds+=(regressions/"$t")
  log=$scratch/$t.log
  if ! cargo fuzz run --dev "$t" "$scratch/$t" "${seeds[@]}" -- \
    -max_total_time="$SECS" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $t FAILED (input saved under fuzz/artifacts/$t/)"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  total=$((total + ${runs:-0}))
  printf 'fuzz: %-14s %10s execs in %ss, no crash\n' "$t" "${runs:-?}" "$SECS"
done
echo "fuzz: all targets clean, $total executions"
