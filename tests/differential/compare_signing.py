#!/usr/bin/env python3
"""Differential check of fedpin's canonical JSON and request-signature verification
against Synapse's own code.

    compare_signing.py canonical --cases FILE... --must-accept FILE... --fedpin CMD --synapse CMD
    compare_signing.py verify    --cases FILE... --fedpin CMD --synapse CMD

canonical: input lines {"hex": "<raw body bytes>", "note"?}. Both commands get
  {"hex": ...} lines on stdin and answer one line each, in order:
    fedpin:  {"ok": "<canonical JSON text>"} or {"refused": reason}
    synapse: {"ok": "<canonical JSON text>"} or {"error": ...}
  Property: fedpin ok => Synapse ok with the identical text. fedpin may refuse
  (fail closed), except inputs from --must-accept files (realistic federation
  bodies), which both must accept with identical text.

verify: input lines {"method", "uri", "origin", "destination", "content_hex",
  "key_id", "public_key", "sig", "must_accept"?, "note"?}. Both commands get the
  first eight fields and answer one line each:
    fedpin:  {"ok": true} or {"refused": reason}
    synapse: {"ok": true} or {"error": ...}
  Property: fedpin ok => Synapse ok (fedpin may refuse what Synapse accepts: fail
  closed); lines with "must_accept": true (correctly signed requests as real
  homeservers send them) must be ok on both.

Prints each disagreement (input and both answers), a line
  canonical differential: N inputs compared, ...   /   signature differential: N inputs compared, ...
and finally "P passed, F failed" (with --tally FILE, "P F" is appended to FILE instead, so
that signing.sh prints one total); exits 1 if anything failed. Plain python3.
"""

import argparse
import json
import sys

from common import judge_all, jsonl, refusal, run_command

VERIFY_FIELDS = ("method", "uri", "origin", "destination", "content_hex", "key_id", "public_key", "sig")


def load(path, mode, must_accept_file):
    out = []
    for where, obj in jsonl(path):
        if mode == "canonical":
            if not isinstance(obj.get("hex"), str):
                raise ValueError(f"{where}: no hex")
            bytes.fromhex(obj["hex"])
            send = {"hex": obj["hex"]}
            must = must_accept_file
        else:
            missing = [k for k in VERIFY_FIELDS if k not in obj]
            if missing:
                raise ValueError(f"{where}: missing {', '.join(missing)}")
            if obj["content_hex"] is not None:
                bytes.fromhex(obj["content_hex"])
            send = {k: obj[k] for k in VERIFY_FIELDS}
            must = obj.get("must_accept") is True
        out.append({"where": where, "send": send, "note": obj.get("note", ""), "must_accept": must})
    return out


def run(name, cmd, payload, n, timeout):
    return run_command("compare_signing.py", name, cmd, payload, n, timeout, objects_only=True)


def judge_canonical(inp, fed, syn):
    """(verdict, problem): verdict in {"both", "refused", None}; problem None if fine."""
    if set(fed) == {"refused"}:
        return refusal(inp, "fedpin refused a realistic federation body")
    if set(fed) != {"ok"} or not isinstance(fed["ok"], str):
        return None, 'fedpin answer is not {"ok": "<text>"} or {"refused": ...}'
    if "ok" not in syn:
        return None, "fedpin produced canonical JSON, Synapse refused the body"
    if fed["ok"] != syn["ok"]:
        return None, "canonical JSON text differs"
    return "both", None


def judge_verify(inp, fed, syn):
    if set(fed) == {"refused"}:
        return refusal(inp, "fedpin refused a correctly signed request as real homeservers send it")
    if set(fed) != {"ok"} or fed["ok"] is not True:
        return None, 'fedpin answer is not {"ok": true} or {"refused": ...}'
    if syn.get("ok") is not True:
        return None, "fedpin accepted the signature, Synapse did not (fail open)"
    return "both", None


def show(s, limit=400):
    return s if len(s) <= limit else s[:limit] + f"... ({len(s)} chars)"


def readable_hex(h, limit=600):
    raw = bytes.fromhex(h[:limit])
    return repr(raw)[2:-1] + (f"... ({len(h) // 2} bytes)" if len(h) > limit else "")


def print_failure(mode, inp, f, s, problem):
    print(f"DISAGREEMENT ({problem}) at {inp['where']}" + (f" [{inp['note']}]" if inp["note"] else ""))
    send = inp["send"]
    if mode == "canonical":
        print(f"  input hex:      {show(send['hex'], 600)}")
        print(f"  input readable: {readable_hex(send['hex'])}")
    else:
        for k in VERIFY_FIELDS:
            v = send[k]
            if k == "content_hex" and v is not None:
                print(f"  {k}: {show(v, 600)}")
                print(f"  content readable: {readable_hex(v)}")
            else:
                print(f"  {k}: {json.dumps(v)}")
    print(f"  fedpin:  {show(json.dumps(f), 1000)}")
    print(f"  synapse: {show(json.dumps(s), 1000)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("canonical", "verify"))
    ap.add_argument("--cases", nargs="+", default=[], metavar="FILE")
    ap.add_argument("--must-accept", nargs="+", default=[], metavar="FILE",
                    help="canonical mode: files whose every input fedpin must accept")
    ap.add_argument("--fedpin", required=True, metavar="CMD")
    ap.add_argument("--synapse", required=True, metavar="CMD")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--tally", metavar="FILE",
                    help='append "P F" (passed, failed) to FILE instead of printing the final line')
    args = ap.parse_args()
    mode = args.mode
    if mode == "verify" and args.must_accept:
        ap.error("verify mode: mark must-accept inputs with \"must_accept\": true in the case file")

    inputs = []
    for path in args.cases:
        inputs += load(path, mode, False)
    for path in args.must_accept:
        inputs += load(path, mode, True)
    if not inputs:
        sys.exit("compare_signing.py: no inputs")
    payload = "".join(json.dumps(i["send"], ensure_ascii=True) + "\n" for i in inputs).encode()

    fed = run("fedpin", args.fedpin, payload, len(inputs), args.timeout)
    syn = run("synapse", args.synapse, payload, len(inputs), args.timeout)

    judge = judge_canonical if mode == "canonical" else judge_verify
    counts, refused_but_synapse_ok, failures = judge_all(inputs, fed, syn, judge)
    both, refused = counts["both"], counts["refused"]

    # The harness itself must work: every must-accept input is accepted by Synapse,
    # and Synapse refuses some inputs (bad signatures, bad JSON exist in the cases).
    harness = []
    must = [(i, s) for i, s in zip(inputs, syn) if i["must_accept"]]
    syn_rejects_must = [i for i, s in must if "ok" not in s]
    if syn_rejects_must:
        harness.append(f"Synapse refused {len(syn_rejects_must)} must-accept inputs (first: "
                       f"{syn_rejects_must[0]['where']}): the case file or the Synapse harness is wrong")
    if not must:
        harness.append("no must-accept inputs")
    if all("ok" in s for s in syn):
        harness.append("Synapse accepted every input: the Synapse harness is broken")

    for inp, f, s, problem in failures:
        print_failure(mode, inp, f, s, problem)
    for h in harness:
        print("HARNESS: " + h)

    n = len(inputs)
    synapse_ok = sum(1 for s in syn if "ok" in s)
    label = "canonical differential" if mode == "canonical" else "signature differential"
    what = "identical canonical JSON" if mode == "canonical" else "signature accepted"
    print(f"({len(must)} must-accept inputs; Synapse accepted {synapse_ok} of {n} inputs; fedpin refused "
          f"{refused}, of which Synapse accepted {refused_but_synapse_ok})")
    print(f"{label}: {n} inputs compared, {both} accepted by both ({what}), {refused} refused by fedpin "
          f"({refused_but_synapse_ok} of them accepted by Synapse), {len(failures)} disagreements")
    failed = len(failures) + len(harness)
    if args.tally:
        with open(args.tally, "a") as t:
            t.write(f"{n - len(failures)} {failed}\n")
    else:
        print(f"{n - len(failures)} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
