# Sourced first by the differential scripts (xmatrix.sh, signing.sh,
# well_known.sh): HERE (this folder), ROOT (the repository root, made the
# current directory), say and fail (prefixed with the calling script's name),
# then venv.sh ($VENV holds matrix-synapse; sets SYNAPSE_VERSION, VENV, PY).

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

SCRIPT=$(basename "${BASH_SOURCE[1]}")
say() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; }
fail() {
  say "FAIL: $*"
  exit 1
}

# shellcheck source=tests/differential/venv.sh
. "$HERE/venv.sh"
