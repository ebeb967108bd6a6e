#!/usr/bin/env python3
"""Decide, with Synapse's own code, whether a signed federation request verifies.

Needs the Python of a virtualenv with `matrix-synapse` installed (see signing.sh).

stdin:  JSON Lines, one request per line:
        {"method": "PUT", "uri": "/_matrix/...", "origin": "a.example",
         "destination": "b.example", "content_hex": "<hex of the raw body>" or null,
         "key_id": "ed25519:k", "public_key": "<base64 of the 32-byte key>",
         "sig": "<sig value as read from the X-Matrix header>"}
        `destination` is the receiving server's name (Synapse's `server_name`, which the
        header's destination names); `public_key` is the key `origin` publishes under
        `key_id` (in its /_matrix/key/v2/server answer).
stdout: one JSON line per input line, in order: {"ok": true} when Synapse accepts the
        request's signature, else {"error": "<Class>: <message>"}.

The code under test is unmodified Synapse, on the path a signed federation request takes:
  * `BaseFederationServlet` (synapse/federation/transport/server/_base.py, `new_func`):
    for methods exactly b"PUT" and b"POST" the body is parsed with
    `parse_json_object_from_request` (UTF-8, `json_decoder`, must be an object; an
    empty body is refused), otherwise content is None;
  * `Authenticator.authenticate_request(request, content)` builds json_request
    {method, uri, destination: server_name, signatures: {origin: {key_id: sig}},
    origin, content if not None} from `request.method`/`request.uri` (ASCII) and calls
  * `Keyring.verify_json_for_server` -> `process_request` (`signature_ids` keeps only
    `ed25519:` key IDs; keys are looked up by key ID) -> `process_json` ->
    `signedjson.sign.verify_signed_json` (unpaddedbase64 `decode_base64`,
    `canonicaljson.encode_canonical_json`, PyNaCl/libsodium ed25519 verify).
Stand-ins (collaborators only):
  * `_parse_auth_header` returns (origin, key_id, sig, destination) from the input,
    after `parse_and_validate_server_name(origin)` as the real one does (the header
    syntax itself is the X-Matrix differential's subject, xmatrix.sh);
  * the keyring's key fetch answers as Synapse's `process_v2_response` would for a
    /key/v2/server answer publishing `public_key` under `key_id` (unsupported key IDs
    and undecodable keys are skipped, so Synapse finds no key), valid far in the future;
  * clock, store (no retry timings), no federation whitelist.

Each line is handled on its own: any failure becomes {"error": ...} for that line.
"""

import io
import logging
import sys

from common import answer_lines, drive

logging.disable(logging.CRITICAL)

from signedjson.key import decode_verify_key_bytes, is_signing_algorithm_supported  # noqa: E402
from twisted.web.http_headers import Headers  # noqa: E402
from unpaddedbase64 import decode_base64  # noqa: E402

import synapse.federation.transport.server._base as fed_base  # noqa: E402
from synapse.crypto.keyring import Keyring  # noqa: E402
from synapse.http.servlet import parse_json_object_from_request  # noqa: E402
from synapse.storage.keys import FetchKeyResult  # noqa: E402
from synapse.util.stringutils import parse_and_validate_server_name  # noqa: E402

NOW_MS = 1_700_000_000_000
FAR_FUTURE_MS = 2**62

# The header fields of the request being checked (set per input; see _parse_auth_header).
_current_header = None


def _parse_auth_header(header_bytes):
    """Stand-in for fed_base._parse_auth_header: the already-parsed header fields."""
    origin, key, sig, destination = _current_header
    parse_and_validate_server_name(origin)  # as the real _parse_auth_header does
    return origin, key, sig, destination


fed_base._parse_auth_header = _parse_auth_header


class _Clock:
    def time_msec(self) -> int:
        return NOW_MS


class _Store:
    async def get_destination_retry_timings(self, destination):
        return None


class _FetchQueue:
    """Answers key requests with the keys the origin publishes."""

    def __init__(self, origin, published):
        self.origin = origin
        self.published = published  # {key_id: FetchKeyResult}

    async def add_to_queue(self, key_request, key=None):
        wanted = {k: v for k, v in self.published.items() if k in key_request.key_ids}
        return {self.origin: wanted} if key_request.server_name == self.origin else {}


def _published_keys(key_id, public_key):
    """What process_v2_response makes of verify_keys {key_id: {"key": public_key}}."""
    if not is_signing_algorithm_supported(key_id):
        return {}
    try:
        verify_key = decode_verify_key_bytes(key_id, decode_base64(public_key))
    except Exception:  # the key fetch fails: Synapse has no key for this key ID
        return {}
    return {key_id: FetchKeyResult(verify_key=verify_key, valid_until_ts=FAR_FUTURE_MS)}


class _Request:
    """The attributes BaseFederationServlet and authenticate_request read/write."""

    def __init__(self, method: bytes, uri: bytes, body: bytes) -> None:
        self.method = method
        self.uri = uri
        self.content = io.BytesIO(body)
        self.requestHeaders = Headers()
        self.requestHeaders.addRawHeader(b"Authorization", b"X-Matrix (parsed by the stand-in)")
        self.requester = None


def run_one(inp) -> bool:
    """True when Synapse accepts the request's signature; raises otherwise."""
    global _current_header
    origin, destination = inp["origin"], inp["destination"]
    body = bytes.fromhex(inp["content_hex"]) if inp["content_hex"] is not None else b""
    # Twisted hands Synapse the method and request-target as the raw bytes on the wire.
    request = _Request(inp["method"].encode("utf-8"), inp["uri"].encode("utf-8"), body)

    keyring = Keyring.__new__(Keyring)
    keyring._is_mine_server_name = lambda name: name == destination
    keyring._local_verify_keys = {}
    keyring._fetch_keys_queue = _FetchQueue(origin, _published_keys(inp["key_id"], inp["public_key"]))

    auth = fed_base.Authenticator.__new__(fed_base.Authenticator)
    auth._clock = _Clock()
    auth.keyring = keyring
    auth.server_name = destination
    auth._is_mine_server_name = lambda name: name == destination
    auth.store = _Store()
    auth.federation_domain_whitelist = None
    auth.notifier = None
    auth.replication_client = None

    # BaseFederationServlet._wrap's new_func, verbatim in substance:
    content = None
    if request.method in [b"PUT", b"POST"]:
        content = parse_json_object_from_request(request)

    _current_header = (origin, inp["key_id"], inp["sig"], destination)
    try:
        got = drive(auth.authenticate_request(request, content), "coroutine")
    finally:
        _current_header = None
    if got != origin or request.requester != origin:
        raise RuntimeError("harness: authenticate_request returned %r" % (got,))
    return True


def main() -> int:
    return answer_lines(run_one, cause_limit=300)


if __name__ == "__main__":
    sys.exit(main())
