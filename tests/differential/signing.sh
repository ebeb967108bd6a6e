#!/usr/bin/env bash
# Differential test: fedpin's Matrix canonical JSON and X-Matrix request-signature
# verification against the code Synapse itself uses.
#
#   canonical: examples/canonical_json vs synapse_canonical.py (Synapse's
#     parse_json_value_from_request + canonicaljson.encode_canonical_json). Whenever
#     fedpin produces canonical JSON, Synapse must produce the identical text; fedpin may
#     refuse, except the realistic federation bodies of canonical_real.jsonl.
#   signature: examples/verify_request vs synapse_verify.py (Synapse's federation servlet
#     body parsing, Authenticator.authenticate_request and Keyring.verify_json_for_server,
#     i.e. signedjson.sign.verify_signed_json). fedpin may accept only what Synapse
#     accepts; requests marked "must_accept" (signed as real homeservers sign) must be
#     accepted by both.
#
# Inputs: canonical_cases.jsonl, canonical_real.jsonl, verify_cases.jsonl, written by
# gen_signing_cases.py (checked here to be up to date; it needs the venv's python).
#
# Needs: bash, python3 (>= 3.10, with venv), cargo. Installs matrix-synapse into $VENV
# (default target/e2e/venv-synapse-1.163.2, shared with tests/e2e/synapse.sh and
# xmatrix.sh) when it is missing or holds another version.
#
# Env: VENV (virtualenv with matrix-synapse), PYTHON (python used to create it).
set -euo pipefail

# shellcheck source=tests/differential/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$VENV/bin/python" "$HERE/gen_signing_cases.py" --check ||
  fail "tests/differential/{canonical,verify}_*.jsonl are stale: run $VENV/bin/python tests/differential/gen_signing_cases.py"

cargo build --locked --example canonical_json --example verify_request

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
TALLY=$TMP/tally
: >"$TALLY"
status=0

python3 "$HERE/compare_signing.py" canonical \
  --cases "$HERE/canonical_cases.jsonl" \
  --must-accept "$HERE/canonical_real.jsonl" \
  --fedpin target/debug/examples/canonical_json \
  --synapse "$(printf '%q %q' "$VENV/bin/python" "$HERE/synapse_canonical.py")" \
  --tally "$TALLY" || status=1

python3 "$HERE/compare_signing.py" verify \
  --cases "$HERE/verify_cases.jsonl" \
  --fedpin target/debug/examples/verify_request \
  --synapse "$(printf '%q %q' "$VENV/bin/python" "$HERE/synapse_verify.py")" \
  --tally "$TALLY" || status=1

# One total over both comparisons (a comparison that could not run leaves no tally line).
passed=0
failed=0
lines=0
while read -r p f; do
  passed=$((passed + p))
  failed=$((failed + f))
  lines=$((lines + 1))
done <"$TALLY"
if ((lines != 2)); then
  failed=$((failed + 2 - lines))
  status=1
fi
echo "$passed passed, $failed failed"
exit "$status"
