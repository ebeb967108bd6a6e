#!/bin/sh
# pinctl-verify-check.sh: run `pinctl verify --json` and fail (exit 1) when
# any peer is not "ok", or its certificate or its pins expire in fewer than
# MIN_DAYS days (default 14). Needs python3 (standard library only).
#
# Usage:
#   pinctl-verify-check.sh [MIN_DAYS]            run pinctl (PINCTL, default "pinctl")
#                                                on FEDPIN_PINS (default /etc/fedpin/pins.toml)
#   pinctl-verify-check.sh --stdin [MIN_DAYS]    check `pinctl verify --json` output read from stdin
#
# Exit: 0 all peers ok and not expiring; 1 a mismatch, an error or an
# expiry within MIN_DAYS; 2 usage, or output that is not pinctl's JSON;
# otherwise pinctl's own code (64: the pin file is broken).
#
# Why the certificate's days matter: a peer that renews with certbot gets a
# NEW key by default. If you pinned its leaf key, its next renewal breaks
# federation with it unless you hold its next key as a backup pin or pinned
# its CA. A short cert_days_left is the warning to sort that out first.

set -u

min_days=14
from_stdin=0
for arg in "$@"; do
  case "$arg" in
    --stdin) from_stdin=1 ;;
    -h | --help)
      sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    '' | *[!0-9]*)
      echo "pinctl-verify-check: usage: $0 [--stdin] [MIN_DAYS]" >&2
      exit 2
      ;;
    *) min_days=$arg ;;
  esac
done

pinctl_rc=0
if [ "$from_stdin" = 1 ]; then
  json=$(cat)
else
  json=$("${PINCTL:-pinctl}" --pins "${FEDPIN_PINS:-/etc/fedpin/pins.toml}" verify --json)
  pinctl_rc=$?
  case "$pinctl_rc" in
    0 | 1) ;;
    *)
      echo "pinctl-verify-check: pinctl verify exited $pinctl_rc without checking the peers (see its message above)" >&2
      exit "$pinctl_rc"
      ;;
  esac
fi

printf '%s\n' "$json" | python3 -c '
import json, sys

min_days = int(sys.argv[1])
try:
    peers = json.load(sys.stdin)
except ValueError as e:
    print("pinctl-verify-check: not pinctl verify --json output: %s" % e, file=sys.stderr)
    sys.exit(2)
if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
    print("pinctl-verify-check: expected a JSON array of peer objects", file=sys.stderr)
    sys.exit(2)

problems = 0
for p in peers:
    name = p.get("server_name", "?")
    status = p.get("status")
    if status != "ok":
        print("%s %s: %s" % (str(status).upper(), name, p.get("detail", "")))
        problems += 1
        continue
    for key, what in (("cert_days_left", "certificate"), ("pins_days_left", "pins")):
        days = p.get(key)
        if isinstance(days, int) and not isinstance(days, bool) and days < min_days:
            print("EXPIRING %s: %s expires in %d days (threshold %d)" % (name, what, days, min_days))
            problems += 1

print("pinctl-verify-check: %d peer(s), %d problem(s), threshold %d days" % (len(peers), problems, min_days))
sys.exit(1 if problems else 0)
' "$min_days"
check_rc=$?

case "$check_rc" in
  0) ;;
  1) exit 1 ;;
  *) exit "$check_rc" ;;
esac
# pinctl said a peer failed even if the JSON looked clean: trust the exit code.
if [ "$pinctl_rc" = 1 ]; then
  echo "pinctl-verify-check: pinctl verify exited 1" >&2
  exit 1
fi
exit 0
