#!/usr/bin/env bash
# Well-known differential: fedpin's reading of /.well-known/matrix/server
# bodies (the delegation its outbound watch compares with the pin file) against
# Synapse's own (json_decoder, then m.server as ASCII; see
# synapse_well_known.py). For every input: fedpin refuses, or Synapse reads a
# delegation that is the same server as fedpin's (same name up to case, one
# trailing dot and IPv6 spelling). Realistic bodies must be accepted by both.
#
# Inputs: the well_known fuzz corpus and regressions, plus crafted cases below.
# Needs: bash, python3, cargo; the Synapse venv (venv.sh installs it if missing).
set -euo pipefail

# shellcheck source=tests/differential/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

timeout 900 cargo build --locked --quiet --example well_known_parse || fail "cargo build --example well_known_parse failed"
FEDPIN_BIN=${FEDPIN_BIN:-target/debug/examples/well_known_parse}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 - "$WORK/cases.jsonl" "$WORK/real.jsonl" fuzz/corpus/well_known fuzz/regressions/well_known <<'PY'
import json, os, sys
cases, real, *dirs = sys.argv[1:]
inputs = []
for d in dirs:
    if os.path.isdir(d):
        for f in sorted(os.listdir(d)):
            p = os.path.join(d, f)
            if os.path.isfile(p):
                inputs.append(open(p, "rb").read())
crafted = [
    b'{"m.server": "a.example", "m.server": "evil.example"}',
    b'{"m.server": "evil.example", "m.server": "a.example"}',
    b'\xef\xbb\xbf{"m.server": "a.example"}',
    b'{"m.server": "a.example"} x',
    b'{"m.server": "a.example"}\n',
    b' \t\r\n{"m.server": "a.example"} ',
    b'{"m.serv\\u0065r": "a.example"}',
    b'{"m.server": "a.ex\\u0061mple:443"}',
    b'{"m.server": "A.Example:443"}',
    b'{"m.server": "a.example.:443"}',
    b'{"m.server": "a.example..:443"}',
    b'{"m.server": "[0:0::1]:8448"}',
    b'{"m.server": "[::ffff:127.0.0.1]"}',
    b'{"m.server": "127.0.0.1:8448"}',
    b'{"m.server": "a.example:+443"}',
    b'{"m.server": "a.example:0443"}',
    b'{"m.server": "a.example:99999"}',
    b'{"m.server": "a.example:"}',
    b'{"m.server": "a.example/evil"}',
    b'{"m.server": "u@evil.example"}',
    b'{"m.server": "a.example#x"}',
    b'{"m.server": "a_b.example"}',
    b'{"m.server": "\\u00e9.example"}',
    b'{"m.server": "a.example\\u0000"}',
    b'{"m.server": "a.example\\ud800"}',
    b'{"m.server": 443}',
    b'{"m.server": ["a.example"]}',
    b'{"m.server": null}',
    b'{"m.server": ""}',
    b'{"M.server": "a.example"}',
    b'["m.server", "a.example"]',
    b'"a.example"',
    b'{"m.server": "a.example", "extra": {"deep": [1, 2.5, null]}}',
    b'{"m.server": NaN}',
    b'{"m.server": "a.example", "n": NaN}',
    b'{"m.server": "a.example", "n": 1e999}',
    b'\xff\xfe{}',
    b'{"m.server": "a.example" /* c */}',
    b"{'m.server': 'a.example'}",
    b'{"m.server":"a.example",}',
]
with open(cases, "w") as f:
    for b in inputs + crafted:
        f.write(json.dumps({"hex": b.hex()}) + "\n")
realistic = [
    b'{"m.server": "matrix.org:443"}',
    b'{"m.server": "matrix-federation.matrix.org:443"}',
    b'{ "m.server": "synapse.example.com:8448" }\n',
    b'{"m.server":"hs.example.org"}',
    b'{"m.server": "[2001:db8::1]:8448"}',
    b'{"m.server": "192.0.2.10:8448"}',
    b'{\n  "m.server": "matrix.example.net:443",\n  "m.homeserver": {"base_url": "https://matrix.example.net"}\n}\n',
]
with open(real, "w") as f:
    for b in realistic:
        f.write(json.dumps({"hex": b.hex()}) + "\n")
PY

cat "$WORK/cases.jsonl" "$WORK/real.jsonl" >"$WORK/all.jsonl"
"$FEDPIN_BIN" <"$WORK/all.jsonl" >"$WORK/fedpin.jsonl"
"$VENV/bin/python" "$HERE/synapse_well_known.py" <"$WORK/all.jsonl" >"$WORK/synapse.jsonl"

python3 - "$WORK/all.jsonl" "$WORK/fedpin.jsonl" "$WORK/synapse.jsonl" "$(wc -l <"$WORK/real.jsonl")" <<'PY'
import ipaddress, json, sys

def ipv6_spelling(name):
    # One spelling of an IPv6 literal for both sides (Python and Rust write
    # IPv4-mapped addresses differently: ::ffff:7f00:1 vs ::ffff:127.0.0.1).
    if name and name.startswith("["):
        inner, _, rest = name[1:].partition("]")
        try:
            return "[" + ipaddress.IPv6Address(inner).compressed + "]" + rest
        except ValueError:
            return name
    return name

inputs = [json.loads(l) for l in open(sys.argv[1])]
fed = [json.loads(l) for l in open(sys.argv[2])]
syn = [json.loads(l) for l in open(sys.argv[3])]
n_real = int(sys.argv[4])
assert len(inputs) == len(fed) == len(syn), (len(inputs), len(fed), len(syn))
both = refused = syn_only = bad = 0
for i, (inp, f, s) in enumerate(zip(inputs, fed, syn)):
    must = i >= len(inputs) - n_real
    body = bytes.fromhex(inp["hex"])
    if "ok" in f:
        same = "ok" in s and ipv6_spelling(s["ok"]["normalised"]) == ipv6_spelling(f["ok"])
        if same:
            both += 1
            continue
        bad += 1
        print(f"DISAGREEMENT: fedpin reads {f['ok']!r}, Synapse {s}: {body[:200]!r}")
    else:
        refused += 1
        if "ok" in s:
            syn_only += 1
        if must:
            bad += 1
            print(f"REALISTIC BODY REFUSED by fedpin ({f}): {body[:200]!r}")
n = len(inputs)
print(f"well-known differential: {n} inputs compared, {both} read as the same delegation by both, "
      f"{refused} refused by fedpin ({syn_only} of them read as a delegation by Synapse), {bad} disagreements")
print(f"{n - bad} passed, {bad} failed")
sys.exit(1 if bad else 0)
PY
