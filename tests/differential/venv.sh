# Sourced by lib.sh (for xmatrix.sh, signing.sh and well_known.sh): make sure $VENV holds matrix-synapse $SYNAPSE_VERSION.
#
# Same venv recipe as tests/e2e/synapse.sh. Needs python3 (>= 3.10, with venv); installs
# matrix-synapse with pip when the venv is missing or holds another version.
#
# Expects: ROOT (repository root, the current directory), say and fail functions.
# Env: VENV (virtualenv with matrix-synapse; default target/e2e/venv-synapse-$SYNAPSE_VERSION,
# shared with tests/e2e/synapse.sh), PYTHON (python used to create it).
# Sets: SYNAPSE_VERSION, VENV, PY.

SYNAPSE_VERSION=1.163.2

VENV=${VENV:-target/e2e/venv-synapse-$SYNAPSE_VERSION}
PY=${PYTHON:-python3}

venv_ok() {
  [[ -x $VENV/bin/python ]] &&
    "$VENV/bin/python" -c "import sys, synapse; sys.exit(0 if synapse.__version__.split()[0] == '$SYNAPSE_VERSION' else 1)" 2>/dev/null
}

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
