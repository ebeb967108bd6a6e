#!/usr/bin/env python3
"""Differential check of fedpin's X-Matrix parser against Synapse's own code.

    compare.py --cases FILE... --must-accept FILE --fedpin CMD --synapse CMD

Input files are JSON Lines, one request per line: {"headers": ["<hex>", ...]} (the
raw bytes of each Authorization header value, in order; other keys such as "note"
are ignored and not passed on). Both commands get the same JSONL on stdin
({"headers": [...]} only, one line per input) and must answer one JSON line per
input, in order:
  fedpin:  {"ok": {"origin", "key", "sig", "destination"}}, {"refused": reason}, or
           {"none": true} (no X-Matrix header: fedpin's edge treats the request as unsigned)
  synapse: {"ok": {"origin", "key", "sig", "destination", "n_sigs", ...}} or {"error": ...}

The property, for every input:
  fedpin refuses, OR fedpin answers "none" and Synapse does not authenticate it either
  (otherwise a signed origin would pass fedpin's edge rules as "unsigned"), OR Synapse
  authenticates it with exactly one signature (n_sigs == 1) and origin, key, sig and
  destination equal fedpin's.
For --must-accept inputs (headers as real homeservers write them) fedpin must answer
ok and Synapse must agree as above.

Prints each disagreement (input as hex and readable, both results), then
  xmatrix differential: N inputs compared, A accepted by both, R refused by fedpin, D disagreements
  P passed, F failed
and exits 1 if anything failed. Plain python3, no dependencies.
"""

import argparse
import json
import sys

from common import judge_all, jsonl, refusal, run_command

FIELDS = ("origin", "key", "sig", "destination")


def load(path, must_accept):
    out = []
    for where, obj in jsonl(path):
        headers = obj["headers"]
        if not isinstance(headers, list) or not all(isinstance(h, str) for h in headers):
            raise ValueError(f"{where}: headers must be a list of hex strings")
        for h in headers:
            bytes.fromhex(h)  # fail early on bad hex
        out.append({
            "where": where,
            "headers": headers,
            "note": obj.get("note", ""),
            "must_accept": must_accept,
        })
    return out


def run(name, cmd, payload, n, timeout):
    return run_command("compare.py", name, cmd, payload, n, timeout)


def readable(headers):
    return [repr(bytes.fromhex(h))[2:-1] if len(h) <= 600 else
            repr(bytes.fromhex(h[:600]))[2:-1] + f"... ({len(h) // 2} bytes)" for h in headers]


def judge(inp, fed, syn):
    """Returns (verdict, problem): verdict in {"both", "refused", "none"}; problem None if fine."""
    if set(fed) == {"none"}:
        if inp["must_accept"]:
            return "none", "fedpin saw no X-Matrix header in a header that a real homeserver writes"
        if "ok" in syn:
            return "none", "fedpin treats the request as unsigned, Synapse authenticated it"
        return "none", None
    if set(fed) == {"refused"}:
        return refusal(inp, "fedpin refused a header that a real homeserver writes")
    if set(fed) != {"ok"} or not isinstance(fed["ok"], dict):
        return None, "fedpin answer is not {\"ok\": {...}}, {\"refused\": ...} or {\"none\": true}"
    got = fed["ok"]
    missing = [f for f in FIELDS if f not in got]
    if missing:
        return None, "fedpin ok lacks " + ", ".join(missing)
    if "ok" not in syn:
        return None, "fedpin accepted, Synapse did not authenticate"
    want = syn["ok"]
    if want.get("n_sigs") != 1:
        return None, f"fedpin accepted, Synapse would check {want.get('n_sigs')} signatures"
    diff = [f for f in FIELDS if got.get(f) != want.get(f)]
    if diff:
        return None, "fields differ: " + ", ".join(diff)
    return "both", None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=[], metavar="FILE")
    ap.add_argument("--must-accept", action="append", default=[], metavar="FILE")
    ap.add_argument("--fedpin", required=True, metavar="CMD")
    ap.add_argument("--synapse", required=True, metavar="CMD")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()

    inputs = []
    for path in args.cases:
        inputs += load(path, False)
    for path in args.must_accept:
        inputs += load(path, True)
    if not inputs:
        sys.exit("compare.py: no inputs")
    payload = "".join(json.dumps({"headers": i["headers"]}) + "\n" for i in inputs).encode()

    fed = run("fedpin", args.fedpin, payload, len(inputs), args.timeout)
    syn = run("synapse", args.synapse, payload, len(inputs), args.timeout)

    counts, refused_but_synapse_ok, failures = judge_all(inputs, fed, syn, judge)
    both, none = counts["both"], counts["none"]
    refused = counts["refused"] + none
    # The harness itself must work: real headers exist, so Synapse must accept some.
    synapse_ok = sum(1 for s in syn if "ok" in s)
    harness_problem = None
    if synapse_ok == 0:
        harness_problem = "Synapse authenticated none of the inputs: the Synapse harness is broken"

    for inp, f, s, problem in failures:
        print(f"DISAGREEMENT ({problem}) at {inp['where']}" + (f" [{inp['note']}]" if inp["note"] else ""))
        for n, (h, r) in enumerate(zip(inp["headers"], readable(inp["headers"])), 1):
            print(f"  header {n} hex:      {h if len(h) <= 600 else h[:600] + '...'}")
            print(f"  header {n} readable: {r}")
        if not inp["headers"]:
            print("  (no Authorization header)")
        print(f"  fedpin:  {json.dumps(f)}")
        print(f"  synapse: {json.dumps(s)}")
    if harness_problem:
        print("HARNESS: " + harness_problem)

    n = len(inputs)
    failed = len(failures) + (1 if harness_problem else 0)
    print(f"(refused by fedpin: {refused - none} refused + {none} without an X-Matrix header; "
          f"Synapse would have authenticated {refused_but_synapse_ok} of them)")
    print(f"xmatrix differential: {n} inputs compared, {both} accepted by both, "
          f"{refused} refused by fedpin, {len(failures)} disagreements")
    print(f"{n - len(failures)} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
