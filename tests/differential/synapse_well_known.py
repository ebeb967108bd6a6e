"""Synapse's reading of a /.well-known/matrix/server body, for the
well-known differential test (tests/differential/well_known.sh).

synapse.http.federation.well_known_resolver.WellKnownResolver._fetch_well_known
reads the body inline (no separate function to call):

    parsed_body = json_decoder.decode(body.decode("utf-8"))
    result = parsed_body["m.server"].encode("ascii")

Those two lines run here with Synapse's own json_decoder. The delegated
name is then used as is to build the federation URL; for comparison it is
also split with Synapse's parse_server_name and normalised the way DNS and
fedpin's pin lookup treat names (host lowercased, one trailing dot dropped,
IPv6 in its compressed form), which changes nothing about where Synapse
connects.

stdin: JSON Lines {"hex": "<body bytes>"}
stdout: {"ok": {"raw": <m.server>, "normalised": <str or null>}} or {"error": "..."}
"""

import ipaddress
import json
import sys

from synapse.util.json import json_decoder
from synapse.util.stringutils import parse_server_name


def normalise(name: str):
    try:
        host, port = parse_server_name(name)
    except Exception:
        return None
    if host.startswith("[") and host.endswith("]"):
        try:
            host = "[" + ipaddress.IPv6Address(host[1:-1]).compressed + "]"
        except ValueError:
            return None
    else:
        host = host.lower()
        if host.endswith("."):
            host = host[:-1]
    return host if port is None else f"{host}:{port}"


def answer(body: bytes):
    try:
        parsed_body = json_decoder.decode(body.decode("utf-8"))
        result = parsed_body["m.server"].encode("ascii")
    except Exception as e:  # Synapse: _FetchWellKnownFailure, no delegation
        return {"error": f"{type(e).__name__}: {e}"}
    raw = result.decode("ascii")
    return {"ok": {"raw": raw, "normalised": normalise(raw)}}


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            body = bytes.fromhex(json.loads(line)["hex"])
            out = answer(body)
        except Exception as e:
            out = {"error": f"harness: {type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
