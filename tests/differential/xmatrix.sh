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

# shellcheck source=tests/differential/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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
