"""Shared by the differential scripts: the compare side (compare.py,
compare_signing.py: reading JSONL case files, running both commands, tallying
verdicts) and the Synapse side (synapse_*.py: one JSON answer per stdin line).
Plain python3, no dependencies.
"""

import collections
import json
import os
import shlex
import subprocess
import sys


# ---------------------------------------------------------------- case files


def render(cases) -> bytes:
    """Cases as JSON Lines (ASCII)."""
    return "".join(json.dumps(x, ensure_ascii=True) + "\n" for x in cases).encode()


def write_or_check(here, files, check):
    """Writes each {name: bytes} of `files` under `here`, or with `check` only
    compares; the names whose file is missing or differs."""
    stale = []
    for name, data in files.items():
        path = os.path.join(here, name)
        if check:
            try:
                with open(path, "rb") as f:
                    if f.read() != data:
                        stale.append(name)
            except FileNotFoundError:
                stale.append(name)
        else:
            with open(path, "wb") as f:
                f.write(data)
    return stale


# ---------------------------------------------------------------- compare side


def jsonl(path):
    """(where, object) for each non-blank line of the JSON Lines file `path`."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            yield f"{path}:{lineno}", json.loads(line)


def run_command(prog, name, cmd, payload, n, timeout, objects_only=False):
    """Runs `cmd` with `payload` on stdin; its `n` JSON answer lines, parsed
    (a line that is not JSON, or with `objects_only` not a JSON object, as
    {"unparseable": line}). Exits with a message naming `prog` when the command
    fails or answers another number of lines."""
    try:
        proc = subprocess.run(shlex.split(cmd), input=payload, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"{prog}: {name} command timed out after {timeout}s: {cmd}")
    except OSError as e:
        sys.exit(f"{prog}: cannot run {name} command {cmd!r}: {e}")
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.decode("utf-8", "replace")[-4000:])
        sys.exit(f"{prog}: {name} command exited {proc.returncode}: {cmd}")
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    if len(lines) != n:
        sys.stderr.write(proc.stderr.decode("utf-8", "replace")[-4000:])
        sys.exit(f"{prog}: {name} answered {len(lines)} lines for {n} inputs: {cmd}")
    results = []
    for line in lines:
        try:
            r = json.loads(line)
            results.append(r if isinstance(r, dict) or not objects_only
                           else {"unparseable": line.decode("utf-8", "replace")})
        except ValueError:
            results.append({"unparseable": line.decode("utf-8", "replace")})
    return results


def judge_all(inputs, fed, syn, judge):
    """Runs `judge(inp, fed, syn) -> (verdict, problem)` over all inputs:
    (count per verdict, how many fedpin refused ("refused" or "none") that
    Synapse accepted, [(inp, fed, syn, problem)] of the failures)."""
    counts = collections.Counter()
    refused_but_synapse_ok = 0
    failures = []
    for inp, f, s in zip(inputs, fed, syn):
        verdict, problem = judge(inp, f, s)
        counts[verdict] += 1
        if verdict in ("refused", "none") and "ok" in s:
            refused_but_synapse_ok += 1
        if problem:
            failures.append((inp, f, s, problem))
    return counts, refused_but_synapse_ok, failures


def refusal(inp, why):
    """The verdict on an input fedpin refused: fine, unless it is a must-accept
    input (then `why` is the problem)."""
    return "refused", why if inp["must_accept"] else None


# ---------------------------------------------------------------- Synapse side


def describe(e, cause_limit=None):
    """`Class: message` of an exception, with its cause (cut to
    `cause_limit` characters) when there is one: Synapse's errors often
    hide why (SynapseError("Content not JSON."), _parse_auth_header)."""
    msg = "%s: %s" % (type(e).__name__, e)
    cause = e.__cause__ or e.__context__
    if cause is not None:
        text = str(cause)
        msg += " (from %s: %s)" % (type(cause).__name__, text if cause_limit is None else text[:cause_limit])
    return msg


def answer_lines(answer, cause_limit=None):
    """For each non-blank stdin line, writes {"ok": answer(json.loads(line))}
    or, when anything fails, {"error": describe(e)}: one bad input never
    stops the run."""
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = {"ok": answer(json.loads(line))}
        except Exception as e:  # one bad input never stops the run
            result = {"error": describe(e, cause_limit)}
        out.write(json.dumps(result, ensure_ascii=True) + "\n")
    out.flush()
    return 0


def drive(coro, what):
    """Runs a coroutine whose awaitables all complete immediately."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError(f"harness: {what} suspended (unexpected awaitable)")
