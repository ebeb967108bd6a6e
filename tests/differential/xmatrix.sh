#!/usr/bin/env bash
# Differential test: fedpin's X-Matrix Authorization parser against Synapse's own code.
#
# For every input, fedpin (examples/xmatrix_parse) must either refuse, or produce
# exactly the (origin, key, sig, destination) Synapse's Authenticator.authenticate_request
# would go on to verify; headers as real homeservers write them (xmatrix_real.jsonl) must
# be accepted by both. See tests/differential/README.md.
#
# Inputs: fuzz/corpus/xmatrix/* and fuzz/regressions/xmatrix/* (each file = one raw
# header value), xmatrix_cases.jsonl (crafted), xmatrix_generated.jsonl (mutations),
# xmatrix_real.jsonl (must be accepted).
#
# Needs: bash, python3 (>= 3.10, with venv), cargo. Installs matrix-synapse into $VENV
# (default target/e2e/venv-synapse-1.163.2, shared with tests/e2e/synapse.sh) when it is
# missing or holds another version.
#
# Env: VENV (virtualenv with matrix-synapse), PYTHON (python used to create it).
set -euo pipefail

SYNAPSE_VERSION=1.163.2

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

VENV=${VENV:-target/e2e/venv-synapse-$SYNAPSE_VERSION}
PY=${PYTHON:-python3}

say() { printf 'xmatrix.sh: %s\n' "$*" >&2; }
fail() {
  say "FAIL: $*"
  exit 1
}

venv_ok() {
  [[ -x $VENV/bin/python ]] &&
    "$VENV/bin/python" -c "import sys, synapse; sys.exit(0 if synapse.__version__.split()[0] == '$SYNAPSE_VERSION' else 1)" 2>/dev/null
}

# Same venv recipe as tests/e2e/synapse.sh.
if ! venv_ok; then
  say "installing matrix-synapse==$SYNAPSE_VERSION into $VENV (pip; may take minutes)"
  mkdir -p "$(dirname "$VENV")"
  rm -rf "$VENV"
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    v=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    timeout 300 apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "python$v-venv" >/dev/null 2>&1 ||
      DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq python3-venv >/dev/null 2>&1 || true
    "$PY" -m venv "$VENV" || fail "cannot create a virtualenv with $PY (install python3-venv)"
  fi
  timeout 900 "$VENV/bin/pip" install -q --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION" ||
    fail "pip install matrix-synapse==$SYNAPSE_VERSION failed"
  venv_ok || fail "synapse $SYNAPSE_VERSION not importable from $VENV after install"
fi

python3 "$HERE/gen_cases.py" --check ||
  fail "tests/differential/*.jsonl are stale: run python3 tests/differential/gen_cases.py"

cargo build --locked --example xmatrix_parse

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# Fuzz corpus and regressions: one raw header value per file -> one single-header input.
python3 - "$TMP/fuzz.jsonl" fuzz/corpus/xmatrix fuzz/regressions/xmatrix <<'EOF'
import json, os, sys
out, dirs = sys.argv[1], sys.argv[2:]
n = 0
with open(out, "w") as f:
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            if os.path.isfile(path):
                with open(path, "rb") as g:
                    f.write(json.dumps({"headers": [g.read().hex()], "note": path}) + "\n")
                n += 1
print(f"xmatrix.sh: {n} fuzz corpus/regression inputs", file=sys.stderr)
EOF

python3 "$HERE/compare.py" \
  --cases "$TMP/fuzz.jsonl" "$HERE/xmatrix_cases.jsonl" "$HERE/xmatrix_generated.jsonl" \
  --must-accept "$HERE/xmatrix_real.jsonl" \
  --fedpin target/debug/examples/xmatrix_parse \
  --synapse "$(printf '%q %q' "$VENV/bin/python" "$HERE/synapse_xmatrix.py")"
