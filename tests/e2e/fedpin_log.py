#!/usr/bin/env python3
"""Reads fedpin's JSON log (stderr when it is not a TTY) for tests/e2e/synapse.sh.

  fedpin_log.py alert LOG EVENT SEVERITY HOST [LEAF_PIN [KNOWN_PIN [ACTION]]]
      exit 0 and print the alert JSON if LOG holds an alert (target
      fedpin::alert) with that event, severity and host (and, if given, whose
      served leaf has LEAF_PIN, whose known_pins hold KNOWN_PIN, and whose
      action is ACTION); exit 1 otherwise.
  fedpin_log.py count-alerts LOG
      print the number of alert records in LOG.
  fedpin_log.py generation LOG
      print the newest pin-file generation LOG records.
  fedpin_log.py reloaded LOG PEERS
      exit 0 if LOG records a pin-file reload to a set with PEERS peers.
  fedpin_log.py count LOG MESSAGE
      print how many records of LOG have that message (e.g. "edge rules reloaded").
  fedpin_log.py access LOG FROM_LINE ORIGIN [STATUS]
      inbound access records (target fedpin::access) from line FROM_LINE (1-based)
      on whose X-Matrix origin is ORIGIN (and, if given, whose status is STATUS):
      print their count, then one "STATUS METHOD PATH xN" line per kind.
"""

import json
import signal
import sys


def records(path, from_line=1):
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return
    with f:
        for n, line in enumerate(f, 1):
            if n < from_line:
                continue
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                yield json.loads(line)
            except ValueError:
                continue


def alerts(path):
    for r in records(path):
        if r.get("target") != "fedpin::alert":
            continue
        fields = r.get("fields", {})
        raw = fields.get("alert")
        if raw is None:
            continue  # e.g. a sink warning on the same target
        try:
            alert = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            alert = {}
        yield fields, alert


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "alert":
        log, event, severity, host = argv[2:6]
        pin = argv[6] if len(argv) > 6 else None
        known = argv[7] if len(argv) > 7 else None
        action = argv[8] if len(argv) > 8 else None
        for fields, alert in alerts(log):
            if fields.get("event") != event or alert.get("event") != event:
                continue
            if fields.get("severity") != severity or alert.get("severity") != severity:
                continue
            if alert.get("host") != host:
                continue
            chain = alert.get("served_chain") or []
            if pin and not (chain and chain[0].get("pin") == pin):
                continue
            if known and known not in (alert.get("known_pins") or []):
                continue
            if action and alert.get("action") != action:
                continue
            print(json.dumps(alert, indent=1))
            return 0
        return 1
    if cmd == "count-alerts":
        print(sum(1 for _ in alerts(argv[2])))
        return 0
    if cmd == "reloaded":
        log, peers = argv[2], int(argv[3])
        for r in records(log):
            f = r.get("fields", {})
            if f.get("message") == "pin file reloaded" and f.get("peers") == peers:
                return 0
        return 1
    if cmd == "generation":
        # Print the newest pin-file generation the log records (1 if none reloaded yet).
        gen = 1
        for r in records(argv[2]):
            f = r.get("fields", {})
            if f.get("message") == "pin file reloaded" and isinstance(f.get("generation"), int):
                gen = max(gen, f["generation"])
        print(gen)
        return 0
    if cmd == "count":
        log, message = argv[2], argv[3]
        print(sum(1 for r in records(log) if r.get("fields", {}).get("message") == message))
        return 0
    if cmd == "access":
        log, from_line, origin = argv[2], int(argv[3]), argv[4]
        status = int(argv[5]) if len(argv) > 5 else None
        kinds = {}
        for r in records(log, from_line):
            f = r.get("fields", {})
            if r.get("target") != "fedpin::access" or f.get("direction") != "inbound":
                continue
            if f.get("origin") != origin or (status is not None and f.get("status") != status):
                continue
            k = (f.get("status"), f.get("method"), f.get("path"))
            kinds[k] = kinds.get(k, 0) + 1
        print(sum(kinds.values()))
        for (st, method, path), n in sorted(kinds.items(), key=str):
            print(f"{st} {method} {path} x{n}")
        return 0
    sys.exit(__doc__)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # a reader that stops early (head) is fine
    sys.exit(main(sys.argv))
