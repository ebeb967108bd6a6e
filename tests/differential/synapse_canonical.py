#!/usr/bin/env python3
"""Run Synapse's own request-body parsing and canonical JSON encoding on raw bytes.

Needs the Python of a virtualenv with `matrix-synapse` installed (see signing.sh).

stdin:  JSON Lines, one body per line: {"hex": "<hex of the raw body bytes>"}.
stdout: one JSON line per input line, in order:
        {"ok": "<canonical JSON text>"} when Synapse parses the body and can encode
        the value canonically, else {"error": "<Class>: <message>"}.

The code under test is unmodified Synapse and its libraries:
  * `synapse.http.servlet.parse_json_value_from_request` (what every servlet's
    body parsing, and the federation servlets' `parse_json_object_from_request`,
    goes through): `request.content.read()`, `.decode("utf-8")`, then
    `synapse.util.json.json_decoder.decode` (stdlib `json.JSONDecoder` that
    refuses NaN/Infinity/-Infinity); the only stand-in is the request object,
    which has the body as `content` (a BytesIO), a method and a URI;
  * `canonicaljson.encode_canonical_json` (what `signedjson.sign` signs and
    verifies), whose UTF-8 bytes are decoded back to text for the answer.

Each line is handled on its own: any failure (bad JSON line, bad hex, any exception
from Synapse) becomes {"error": ...} for that line and the next line is read.
"""

import io
import logging
import sys

from common import answer_lines

# parse_json_value_from_request logs a warning for every body it cannot parse.
logging.disable(logging.CRITICAL)

from canonicaljson import encode_canonical_json  # noqa: E402

from synapse.http.servlet import parse_json_value_from_request  # noqa: E402


class _Request:
    """The attributes parse_json_value_from_request reads."""

    def __init__(self, body: bytes) -> None:
        self.content = io.BytesIO(body)
        self.method = b"PUT"
        self.uri = b"/_matrix/federation/v1/send/fedpin-differential"


def run_one(body: bytes) -> str:
    value = parse_json_value_from_request(_Request(body))
    return encode_canonical_json(value).decode("utf-8")


def main() -> int:
    return answer_lines(lambda inp: run_one(bytes.fromhex(inp["hex"])), cause_limit=300)


if __name__ == "__main__":
    sys.exit(main())
