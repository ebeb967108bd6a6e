#!/usr/bin/env python3
"""Run Synapse's own X-Matrix Authorization handling on raw header values.

Needs the Python of a virtualenv with `matrix-synapse` installed (see xmatrix.sh).

stdin:  JSON Lines, one request per line: {"headers": ["<hex>", ...]}, the raw
        bytes of each `Authorization` header value of the request, in order.
stdout: one JSON line per input line, in order:
        {"ok": {"origin": str, "key": str|null, "sig": str|null,
                "destination": str|null, "n_sigs": int, ...}}
        when Synapse authenticated the request, else {"error": "<Class>: <message>"}.

The code under test is Synapse's `Authenticator.authenticate_request` (which calls
`_parse_auth_header`), unmodified. Only its collaborators are stand-ins:
  * the keyring's `verify_json_for_server` records the json_request it is asked to
    verify and accepts it (so "ok" means: the header parsed, and Synapse would go on
    to check exactly these signatures);
  * `_is_mine_server_name` records each destination and says it is ours;
  * the store has no retry timings; there is no federation whitelist.
`key`/`sig` are the single entry of signatures[origin] when it has exactly one entry
(else null); `n_sigs` counts key entries across all origins; `destination` is the
last destination passed to `_is_mine_server_name` (null if none was).

Each line is handled on its own: any failure (bad JSON, bad hex, any exception from
Synapse) becomes {"error": ...} for that line and the next line is read.
"""

import logging
import sys

from common import answer_lines, drive

# _parse_auth_header logs a warning for every malformed header; keep stderr quiet.
logging.disable(logging.CRITICAL)

from twisted.web.http_headers import Headers  # noqa: E402

from synapse.federation.transport.server._base import Authenticator  # noqa: E402

SERVER_NAME = "fedpin-differential.test"


class _Clock:
    def time_msec(self) -> int:
        return 1_700_000_000_000


class _Keyring:
    def __init__(self) -> None:
        self.calls = []

    async def verify_json_for_server(self, server_name, json_object, validity_time):
        self.calls.append((server_name, json_object))


class _Store:
    async def get_destination_retry_timings(self, destination):
        return None

    async def set_destination_retry_timings(self, *args, **kwargs):
        raise AssertionError("not reached: no retry timings are ever returned")


class _Request:
    """The attributes authenticate_request reads (and the one it writes)."""

    def __init__(self, values) -> None:
        self.method = b"GET"
        self.uri = b"/_matrix/federation/v1/version"
        self.requestHeaders = Headers()
        for value in values:
            self.requestHeaders.addRawHeader(b"Authorization", value)
        self.requester = None


def _authenticator():
    auth = Authenticator.__new__(Authenticator)
    auth._clock = _Clock()
    auth.keyring = _Keyring()
    auth.server_name = SERVER_NAME
    auth.destinations = []

    def is_mine_server_name(name):
        auth.destinations.append(name)
        return True

    auth._is_mine_server_name = is_mine_server_name
    auth.store = _Store()
    auth.federation_domain_whitelist = None
    auth.notifier = None
    auth.replication_client = None
    return auth


def run_one(values):
    auth = _authenticator()
    request = _Request(values)
    origin = drive(auth.authenticate_request(request, None), "authenticate_request")
    if len(auth.keyring.calls) != 1:
        raise RuntimeError("harness: %d keyring calls" % len(auth.keyring.calls))
    verified_for, json_request = auth.keyring.calls[0]
    if not (origin == verified_for == json_request["origin"] == request.requester):
        raise RuntimeError("harness: origin mismatch %r" % ((origin, verified_for),))
    signatures = json_request["signatures"]
    mine = signatures.get(origin, {})
    key, sig = next(iter(mine.items())) if len(mine) == 1 else (None, None)
    return {
        "origin": origin,
        "key": key,
        "sig": sig,
        "destination": auth.destinations[-1] if auth.destinations else None,
        "n_sigs": sum(len(v) for v in signatures.values()),
        "destinations": auth.destinations,
        "signatures": signatures,
    }


def main() -> int:
    return answer_lines(lambda inp: run_one([bytes.fromhex(h) for h in inp["headers"]]))


if __name__ == "__main__":
    sys.exit(main())
