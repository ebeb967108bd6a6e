#!/usr/bin/env bash
# debian/completions.sh: write the shell completions the Debian package
# installs to target/completions/, where Cargo.toml's [package.metadata.deb]
# assets take them from. They are generated, not committed: each file is what
# `fedpin completions SHELL` or `pinctl completions SHELL` prints, from the
# release binaries that `cargo deb` then packages. Run it before `cargo deb`
# (tests/package/deb.sh does):
#
#   bash debian/completions.sh && cargo deb
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/completions
mkdir -p "$out"
cargo build --release --locked --quiet --bins
for bin in fedpin pinctl; do
  # shell:file, the names the package's assets list.
  for pair in "bash:$bin.bash" "zsh:_$bin" "fish:$bin.fish"; do
    cargo run --release --locked --quiet --bin "$bin" -- completions "${pair%%:*}" >"$out/${pair#*:}"
  done
done
echo "$out: $(ls "$out" | tr '\n' ' ')"
