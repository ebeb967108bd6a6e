#!/usr/bin/env python3
"""Writes the inputs of the canonical-JSON and request-signature differential tests.

    $VENV/bin/python tests/differential/gen_signing_cases.py           # rewrite the files
    $VENV/bin/python tests/differential/gen_signing_cases.py --check   # exit 1 if stale

Needs the Synapse virtualenv's Python (signing.sh uses it): the signatures are made
with Synapse's own `signedjson.sign.sign_json`, and the realistic bodies Synapse sends
are written with `canonicaljson.encode_canonical_json`.

Files (JSON Lines; "note" is for people and is not passed to either side):

  canonical_cases.jsonl  {"hex": <raw body bytes>, "note"}: hand-crafted cases
                         (crafted_canonical() below) then random documents with random
                         escapes, whitespace, key order and duplicate keys (fixed seed)
  canonical_real.jsonl   {"hex", "note"}: realistic federation request bodies in the
                         byte shapes real writers produce (Synapse: canonical JSON;
                         gomatrixserverlib: Go encoding/json with its HTML escaping;
                         ruma/conduwuit: serde_json compact; Python json.dumps with
                         ensure_ascii; pretty-printed by hand): fedpin must accept them
  verify_cases.jsonl     {"method", "uri", "origin", "destination", "content_hex",
                         "key_id", "public_key", "sig", "must_accept", "note"}: requests
                         signed with signedjson.sign.sign_json exactly as a sending
                         homeserver signs them (must_accept: true), and mutations of them

Keys are ed25519 keys from fixed 32-byte seeds (signedjson.key.decode_signing_key_base64,
the deterministic counterpart of generate_signing_key); ed25519 signatures are
deterministic, so the same script always writes the same bytes.
"""

import copy
import hashlib
import json
import os
import random
import sys

from common import render, write_or_check

try:
    from canonicaljson import encode_canonical_json
    from signedjson.key import decode_signing_key_base64, encode_verify_key_base64, get_verify_key
    from signedjson.sign import sign_json
    from unpaddedbase64 import decode_base64, encode_base64
except ImportError as e:
    sys.exit(f"gen_signing_cases.py: {e}: run it with the Python of the Synapse virtualenv "
             "(target/e2e/venv-synapse-1.163.2/bin/python; signing.sh creates it)")

HERE = os.path.dirname(os.path.abspath(__file__))
SEED_CANONICAL = 0x5EED_CA70  # fixed: the generated files must not change between runs
SEED_VERIFY = 0x5EED_5161

# ---------------------------------------------------------------------------------------
# Realistic federation bodies (made-up servers, users, rooms, event IDs, keys).
# All integers are within Matrix canonical JSON's range and there are no floats.
# ---------------------------------------------------------------------------------------

SIG_A = "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
HASH_A = "2WMmq5FzuhN5YcBMJbzzJJ6+ghXTfjB7Uj4F6KJ8Vts"
ROOM = "!OGEhHVWSdvArJzumhm:matrix.org"
EV1 = "$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"
EV2 = "$ahWYF1ayPxpjUz_pnXNSkXhGHLdq2wQb7nrR-M-JZ5M"
EV3 = "$9x7NnWg-wMc5ZQIK6p9_3GtN8rVhl-Pqm0eS8C6kH2s"


def pdu_message(body="Hello world!", sender="@alice:matrix.org", origin="matrix.org"):
    return {
        "auth_events": [EV1, EV2],
        "content": {"body": body, "msgtype": "m.text"},
        "depth": 16,
        "hashes": {"sha256": HASH_A},
        "origin": origin,
        "origin_server_ts": 1700000000000,
        "prev_events": [EV3],
        "room_id": ROOM,
        "sender": sender,
        "signatures": {origin: {"ed25519:a_RXGa": SIG_A}},
        "type": "m.room.message",
    }


def pdu_member(user, membership, displayname=None, origin="example.com"):
    content = {"membership": membership}
    if displayname is not None:
        content["displayname"] = displayname
        content["avatar_url"] = "mxc://example.com/SEsfnsuifSDFSSEF"
    return {
        "auth_events": [EV1, EV2, EV3],
        "content": content,
        "depth": 12,
        "hashes": {"sha256": HASH_A},
        "origin": origin,
        "origin_server_ts": 1700000012345,
        "prev_events": [EV2],
        "room_id": ROOM,
        "sender": user,
        "signatures": {origin: {"ed25519:0": SIG_A}},
        "state_key": user,
        "type": "m.room.member",
    }


def real_bodies():
    """(name, dict) for realistic PUT/POST federation bodies."""
    b = []
    b.append(("send: one m.room.message PDU", {
        "origin": "matrix.org", "origin_server_ts": 1700000000500,
        "pdus": [pdu_message()], "edus": []}))
    b.append(("send: PDUs with non-ASCII, emoji, HTML and a reply", {
        "origin": "matrix.org", "origin_server_ts": 1700000000600,
        "pdus": [
            pdu_message("Grüße aus Köln 😀 — ça va? 日本語"),
            dict(pdu_message(), content={
                "body": "> <@bob:example.com> x < y && y > z\n\nagreed",
                "format": "org.matrix.custom.html",
                "formatted_body": "<mx-reply><blockquote><a href=\"https://matrix.to/#/!r:e/$e?via=e\">In reply to</a> x &lt; y</blockquote></mx-reply>agreed",
                "m.relates_to": {"m.in_reply_to": {"event_id": EV2}},
                "msgtype": "m.text"}),
        ], "edus": []}))
    b.append(("send: encrypted event and a reaction", {
        "origin": "example.com", "origin_server_ts": 1700000001000,
        "pdus": [
            dict(pdu_message(origin="example.com", sender="@bob:example.com"), type="m.room.encrypted", content={
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg2yyOwAtHaZTwyNg37afzg8f3r9IsN9r4RNFg7MaZencUJe4qvELiDiopUjy5wYVDAtqdBzer5bWRD9ldxp1FLgbQvBcjkkywYjCsmsq6+hArLd9oAQZnGKn/qLsK+5uNX3PaWzDRC9wZPQvWYYPCTov3jCwXKTPsLKIiTrcCXDqMvnn8m+T3zF/I2zqxg158tnUwWWIw51UO",
                "device_id": "RJYKSTBOIE",
                "sender_key": "IlRMeOPX2e0MurIyfWEucYBRVOEEUMrOHqn/8mLqMjA",
                "session_id": "X3lUlvLELLYxeTx4yOVu6UDpasGEVO0Jbu+QFnm0cKQ"}),
            dict(pdu_message(origin="example.com", sender="@bob:example.com"), type="m.reaction", content={
                "m.relates_to": {"event_id": EV1, "key": "👍", "rel_type": "m.annotation"}}),
        ], "edus": []}))
    b.append(("send: m.typing EDU", {
        "origin": "example.com", "origin_server_ts": 1700000002000, "pdus": [],
        "edus": [{"edu_type": "m.typing", "content": {
            "room_id": ROOM, "typing": True, "user_id": "@bob:example.com"}}]}))
    b.append(("send: m.receipt EDU (threaded)", {
        "origin": "example.com", "origin_server_ts": 1700000003000, "pdus": [],
        "edus": [{"edu_type": "m.receipt", "content": {ROOM: {"m.read": {"@bob:example.com": {
            "data": {"ts": 1700000002999, "thread_id": "main"}, "event_ids": [EV3]}}}}}]}))
    b.append(("send: m.presence EDU", {
        "origin": "example.com", "origin_server_ts": 1700000004000, "pdus": [],
        "edus": [{"edu_type": "m.presence", "content": {"push": [
            {"currently_active": True, "last_active_ago": 5000, "presence": "online",
             "status_msg": "Making cupcakes 🧁", "user_id": "@bob:example.com"},
            {"last_active_ago": 1800000, "presence": "unavailable", "user_id": "@carol:example.com"}]}}]}))
    b.append(("send: m.device_list_update EDU", {
        "origin": "example.com", "origin_server_ts": 1700000005000, "pdus": [],
        "edus": [{"edu_type": "m.device_list_update", "content": {
            "device_display_name": "Element on Firefox (Linux)", "device_id": "QBUAZIFURK",
            "keys": {
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "device_id": "QBUAZIFURK",
                "keys": {"curve25519:QBUAZIFURK": "3C5BFWi2Y8MaVvjM8M22DBmh24PmgR0nPvJOIArzgyI",
                         "ed25519:QBUAZIFURK": "lEuiRJBit0IG6nUf5pUzWTUEsRVVe/HJkoKuEww9ULI"},
                "signatures": {"@bob:example.com": {"ed25519:QBUAZIFURK": SIG_A}},
                "user_id": "@bob:example.com"},
            "prev_id": [5], "stream_id": 6, "user_id": "@bob:example.com"}}]}))
    b.append(("send: m.direct_to_device EDU", {
        "origin": "example.com", "origin_server_ts": 1700000006000, "pdus": [],
        "edus": [{"edu_type": "m.direct_to_device", "content": {
            "message_id": "hiezohf6Hoo7kaev", "sender": "@bob:example.com", "type": "m.room.encrypted",
            "messages": {"@alice:matrix.org": {"*": {
                "algorithm": "m.olm.v1.curve25519-aes-sha2",
                "ciphertext": {"7qZcfnBmbEGzxxaWfBjElJuvn7BZx+lSz/SvFrDF/z8": {
                    "body": "AwogCCHf2Ne0H9Kw4kVmGhFz6ArnbxDgwU7kdh0G6S1UqWVaZnnnb1cnRuYyMwRNY4Ks3RLaYaN7cvNTmoEpqQ", "type": 0}},
                "sender_key": "IlRMeOPX2e0MurIyfWEucYBRVOEEUMrOHqn/8mLqMjA"}}}}}]}))
    b.append(("send: m.signing_key_update EDU", {
        "origin": "example.com", "origin_server_ts": 1700000007000, "pdus": [],
        "edus": [{"edu_type": "m.signing_key_update", "content": {
            "master_key": {"keys": {"ed25519:base64+master+public+key": "base64+master+public+key"},
                           "usage": ["master"], "user_id": "@bob:example.com"},
            "self_signing_key": {"keys": {"ed25519:base64+self+signing+public+key": "base64+self+signing+public+key"},
                                 "signatures": {"@bob:example.com": {"ed25519:base64+master+public+key": SIG_A}},
                                 "usage": ["self_signing"], "user_id": "@bob:example.com"},
            "user_id": "@bob:example.com"}}]}))
    b.append(("send_join v2: join event", pdu_member("@dave:example.com", "join", "Dave Ö. 🐢")))
    b.append(("send_leave v2: leave event", pdu_member("@dave:example.com", "leave")))
    b.append(("invite v2: event, room_version, invite_room_state", {
        "event": pdu_member("@erin:matrix.org", "invite", "Erin"),
        "invite_room_state": [
            {"content": {"name": "Example Room — Ünïcödé"}, "sender": "@bob:example.com",
             "state_key": "", "type": "m.room.name"},
            {"content": {"join_rule": "invite"}, "sender": "@bob:example.com",
             "state_key": "", "type": "m.room.join_rules"}],
        "room_version": "11"}))
    b.append(("user/keys/query", {"device_keys": {"@alice:matrix.org": [], "@bob:example.com": ["QBUAZIFURK"]}}))
    b.append(("user/keys/claim", {"one_time_keys": {"@alice:matrix.org": {"JLAFKJWSCS": "signed_curve25519"}}}))
    b.append(("get_missing_events", {"earliest_events": [EV1], "latest_events": [EV3], "limit": 10, "min_depth": 0}))
    b.append(("publicRooms POST", {"filter": {"generic_search_term": "rust", "room_types": [None, "m.space"]},
                                   "include_all_networks": False, "limit": 20, "since": "s12345"}))
    b.append(("key/v2/query", {"server_keys": {"example.com": {"ed25519:0": {"minimum_valid_until_ts": 1700000100000}}}}))
    b.append(("exchange_third_party_invite", {
        "content": {"membership": "invite", "third_party_invite": {
            "display_name": "alice…@example.org",
            "signed": {"mxid": "@alice:matrix.org", "token": "abc123",
                       "signatures": {"magic.forest": {"ed25519:3": "fQpGIW1Snz+pwLZu6sTy2aHy/DYWWTspTJRPyNp0PKkymfIsNffysMl6ObMMFdIJhk6g6pwlIqZ54rxo8SLmAg"}}}}},
        "room_id": ROOM, "sender": "@bob:example.com", "state_key": "@alice:matrix.org", "type": "m.room.member"}))
    b.append(("send: power_levels and create state", {
        "origin": "example.com", "origin_server_ts": 1700000008000, "edus": [],
        "pdus": [
            dict(pdu_member("@bob:example.com", "join"), type="m.room.power_levels", state_key="", content={
                "ban": 50, "events": {"m.room.name": 100, "m.room.power_levels": 100}, "events_default": 0,
                "invite": 0, "kick": 50, "notifications": {"room": 20}, "redact": 50, "state_default": 50,
                "users": {"@bob:example.com": 100, "@alice:matrix.org": 50}, "users_default": 0}),
            dict(pdu_member("@bob:example.com", "join"), type="m.room.create", state_key="", content={
                "m.federate": True, "predecessor": {"event_id": EV1, "room_id": "!old:example.com"},
                "room_version": "11"}),
        ]}))
    return b


# How real writers put a dict on the wire.
def w_synapse(obj) -> bytes:
    """Synapse's MatrixFederationHttpClient: encode_canonical_json."""
    return encode_canonical_json(obj)


def w_go(obj) -> bytes:
    """gomatrixserverlib: Go encoding/json (compact, field order, HTML-safe escaping)."""
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(ch, esc)
    return s.encode("utf-8")


def w_serde(obj) -> bytes:
    """ruma/conduwuit: serde_json::to_vec (compact, field order, raw UTF-8)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def w_python(obj) -> bytes:
    """Python json.dumps defaults (ensure_ascii: \\uXXXX and surrogate pairs, ", " / ": ")."""
    return json.dumps(obj).encode("ascii")


def w_pretty(obj) -> bytes:
    """Pretty-printed with CRLF line ends and a trailing newline (hand-written / curl)."""
    return (json.dumps(obj, ensure_ascii=False, indent=2).replace("\n", "\r\n") + "\r\n").encode("utf-8")


WRITERS = [("synapse", w_synapse), ("go", w_go), ("serde", w_serde), ("python", w_python), ("pretty", w_pretty)]


def canonical_real():
    out = []
    for i, (name, obj) in enumerate(real_bodies()):
        # Every body in the Synapse shape and one other writer's shape (rotating).
        for wname, w in (WRITERS[0], WRITERS[1 + i % 4]):
            out.append({"hex": w(obj).hex(), "note": f"{name} [{wname}]"})
    return out


# ---------------------------------------------------------------------------------------
# Canonical JSON: crafted cases
# ---------------------------------------------------------------------------------------

def crafted_canonical():
    c = []

    def add(note, data):
        c.append({"hex": (data if isinstance(data, bytes) else data.encode("utf-8")).hex(), "note": note})

    # ---- shapes ---------------------------------------------------------------------------
    add("empty object", "{}")
    add("empty array (top-level array)", "[]")
    add("top-level string", '"hello"')
    add("top-level number", "42")
    add("top-level true", "true")
    add("top-level null", "null")
    add("empty body", "")
    add("whitespace-only body", " \t\r\n")
    add("nested objects and arrays", '{"a":{"b":[1,{"c":[true,false,null]},[]],"d":{}},"e":[[[]]]}')
    add("object in array in object, unsorted everywhere", '{"z":[{"y":1,"x":2}],"a":{"d":{"f":1,"e":2},"c":3}}')
    # ---- key ordering -------------------------------------------------------------------
    add("ASCII key order incl. case and digits", '{"b":1,"a":2,"B":3,"_":4,"aa":5,"10":6,"9":7,"":8}')
    add("prefix keys", '{"abc":1,"ab":2,"a":3,"abcd":4}')
    add("key with NUL vs its prefix", '{"a\\u0000b":1,"a":2,"a\\u0001":3}')
    add("non-ASCII keys: e-acute vs z vs U+00FF", '{"é":1,"z":2,"ÿ":3,"e":4}')
    add("U+1F600 vs U+FFFD keys (UTF-16 order differs from code point order)", '{"😀":1,"\ufffd":2}')
    add("U+FFFD vs U+1F600 keys, other input order", '{"\ufffd":2,"😀":1}')
    add("U+E000 vs U+10000 keys (UTF-16 order differs)", '{"\ue000":1,"\U00010000":2}')
    add("U+FF61 vs U+1D11E vs U+D7FF keys", '{"\uff61":1,"\U0001d11e":2,"\ud7ff":3}')
    add("astral keys as escaped surrogate pairs vs U+FFFD", '{"\\ud83d\\ude00":1,"\\ufffd":2,"\\uffff":3}')
    add("U+10FFFF vs U+FFFF keys", '{"\U0010ffff":1,"\uffff":2}')
    add("keys differing only after an astral char", '{"😀b":1,"😀a":2,"😀":3,"\ufffd":4}')
    add("many non-ASCII keys", '{"日本":1,"中文":2,"한국어":3,"Ελληνικά":4,"русский":5,"עברית":6,"العربية":7,"🏳️‍🌈":8,"a":9}')
    add("keys escaped vs raw: e-acute escaped sorts with raw", '{"\\u00e9":1,"f":2,"\\u00E8":3}')
    # ---- string escapes -----------------------------------------------------------------
    for cp in list(range(0x20)) + [0x7F]:
        add(f"escaped U+{cp:04X} in a string", '{"s":"a\\u%04x"}' % cp)
    add("short escapes \\b \\f \\n \\r \\t", '["\\b\\f\\n\\r\\t"]')
    add("escaped quote, backslash, solidus", '["\\"","\\\\","\\/","/"]')
    add("escaped U+0000 alone", '"\\u0000"')
    add("escaped U+2028 U+2029", '["\\u2028\\u2029"]')
    add("raw U+2028 U+2029", '["\u2028\u2029"]')
    add("raw DEL", b'["\x7f"]')
    add("raw U+0080..U+009F C1 controls", '["\u0080\u0085\u009f"]')
    add("escaped C1 controls", '["\\u0080\\u0085\\u009f"]')
    add("escaped U+FEFF and U+FFFE U+FFFF", '["\\ufeff\\ufffe\\uffff"]')
    add("raw U+FEFF inside a string", '["\ufeff"]')
    add("unicode escape vs raw: e-acute", '["\\u00e9","é"]')
    add("unicode escape uppercase hex", '["\\u00E9\\u00C9\\uABCD"]')
    add("escaped ASCII letters", '["\\u0041\\u0062\\u007a"]')
    add("escaped quote and backslash via \\u", '["\\u0022\\u005c\\u002f"]')
    for ch in [0x00, 0x01, 0x09, 0x0A, 0x0D, 0x1F]:
        add(f"raw control U+{ch:04X} in a string (strict JSON refuses)", b'["a' + bytes([ch]) + b'b"]')
    add("raw control in a key", b'{"a\x01":1}')
    add("invalid escape \\x41", '["\\x41"]')
    add("invalid escape \\a", '["\\a"]')
    add("invalid escape \\U0001F600", '["\\U0001F600"]')
    add("short unicode escape \\u12", '["\\u12"]')
    add("bad hex in unicode escape", '["\\u00g0"]')
    add("backslash at end of string", '["abc\\"]')
    add("unterminated string", '["abc')
    add("single-quoted string", "['a']")
    # ---- surrogates ---------------------------------------------------------------------
    add("surrogate pair escape U+1F600", '["\\ud83d\\ude00"]')
    add("surrogate pair escape uppercase", '["\\uD83D\\uDE00"]')
    add("surrogate pair U+10000 and U+10FFFF", '["\\ud800\\udc00","\\udbff\\udfff"]')
    add("raw U+1F600", '["😀"]')
    add("lone high surrogate escape", '["\\ud83d"]')
    add("lone low surrogate escape", '["\\ude00"]')
    add("reversed surrogate pair", '["\\ude00\\ud83d"]')
    add("high surrogate then non-surrogate escape", '["\\ud83d\\u0041"]')
    add("high surrogate then raw char", '["\\ud83dA"]')
    add("escaped high surrogate then raw UTF-8-encoded low surrogate", b'["\\ud83d\xed\xb8\x80"]')
    add("two high surrogates then low", '["\\ud83d\\ud83d\\ude00"]')
    add("lone surrogate in a key", '{"\\udfff":1}')
    add("raw UTF-8-encoded surrogate (CESU) bytes", b'["\xed\xa0\xbd\xed\xb8\x80"]')
    # ---- numbers --------------------------------------------------------------------------
    floats = ["1.0", "0.1", "1e16", "1e15", "1e-5", "1e-4", "-0.0", "1.5e300", "123456789.125", "5e-324",
              "1E5", "1e+5", "1.0e2", "0.5", "-1.5", "1e400", "-1e400", "1e-400", "0e0", "0.0",
              "1.7976931348623157e308", "2.5e-324", "100.0", "1e22", "1e21", "1e-7", "123e-2", "1.50",
              "9007199254740993.0", "0.30000000000000004", "1e0000000000000001", "-0e-0", "4.35", "2e-1"]
    for f in floats:
        add(f"float {f}", '{"n":%s}' % f)
    ints = {"0": "0", "-0": "-0", "1": "1", "-1": "-1", "2**53-1": str(2**53 - 1), "2**53": str(2**53),
            "-(2**53-1)": str(-(2**53 - 1)), "-2**53": str(-(2**53)), "2**53+1": str(2**53 + 1),
            "2**63-1": str(2**63 - 1), "2**63": str(2**63), "2**64": str(2**64), "-2**63": str(-(2**63)),
            "-2**63-1": str(-(2**63) - 1), "10**30": str(10**30), "-10**30": str(-(10**30))}
    for name, v in ints.items():
        add(f"integer {name}", '{"n":%s}' % v)
    add("integer with 4300 digits", '[' + "9" * 4300 + ']')
    add("integer with 5000 digits (over Python's default limit)", '[' + "9" * 5000 + ']')
    for bad in ["01", "+1", ".5", "1.", "-", "1e", "1e+", "0x10", "-01", "1_000", "--1", "1.e5", "Infinity1"]:
        add(f"invalid number {bad}", '[%s]' % bad)
    for lit in ["NaN", "Infinity", "-Infinity", "nan", "inf", "-inf"]:
        add(f"non-JSON literal {lit}", '{"n":%s}' % lit)
        add(f"non-JSON literal {lit} at top level", lit)
    for lit in ["True", "False", "None", "nul", "tru", "truee", "undefined"]:
        add(f"bad literal {lit}", '[%s]' % lit)
    # ---- duplicate keys -----------------------------------------------------------------
    add("duplicate key, last wins", '{"a":1,"a":2}')
    add("duplicate key separated", '{"a":1,"b":2,"a":3}')
    add("duplicate key, different value types", '{"a":{"x":1},"a":[1,2]}')
    add("duplicate key spelled differently (escape)", '{"a":1,"\\u0061":2}')
    add("duplicate key nested", '{"o":{"k":1,"k":{"k":2,"k":3}}}')
    add("duplicate astral key raw vs escaped", '{"😀":1,"\\ud83d\\ude00":2}')
    add("duplicate signatures key", '{"signatures":{"a":{"k":"x"}},"signatures":{"b":{"k":"y"}}}')
    # ---- whitespace -----------------------------------------------------------------------
    add("all four JSON whitespace chars everywhere", ' \t\r\n{ \t\r\n"a" \t\r\n: \t\r\n[ 1 , 2 ] \t\r\n, "b":null}\r\n')
    add("leading and trailing newlines", '\n\n{"a":1}\n\n')
    add("form feed as whitespace (not JSON)", '{\f"a":1}')
    add("vertical tab as whitespace (not JSON)", '{\v"a":1}')
    add("NBSP as whitespace (not JSON)", '{\u00a0"a":1}')
    add("U+2028 as whitespace (not JSON)", '{"a":1}\u2028')
    add("ideographic space as whitespace", '\u3000{"a":1}')
    add("NUL after value", b'{"a":1}\x00')
    # ---- BOM, encoding --------------------------------------------------------------------
    add("UTF-8 BOM before object", b'\xef\xbb\xbf{"a":1}')
    add("UTF-8 BOM after whitespace", b' \xef\xbb\xbf{"a":1}')
    add("UTF-16LE with BOM", '{"a":1}'.encode("utf-16"))
    add("UTF-16BE without BOM", '{"a":1}'.encode("utf-16-be"))
    add("invalid UTF-8: lone continuation byte in string", b'["\x80"]')
    add("invalid UTF-8: overlong slash", b'["\xc0\xaf"]')
    add("invalid UTF-8: overlong NUL", b'["\xc0\x80"]')
    add("invalid UTF-8: truncated 3-byte sequence", b'["\xe2\x82"]')
    add("invalid UTF-8: truncated at end of input", b'["a"]\xe2\x82')
    add("invalid UTF-8: F5 lead byte", b'["\xf5\x80\x80\x80"]')
    add("invalid UTF-8: above U+10FFFF", b'["\xf4\x90\x80\x80"]')
    add("invalid UTF-8: 5-byte form", b'["\xf8\x88\x80\x80\x80"]')
    add("invalid UTF-8: FF byte", b'["\xff"]')
    add("invalid UTF-8 in a key", b'{"\xfe":1}')
    add("invalid UTF-8 outside strings", b'[1,\x80]')
    add("Latin-1 e-acute byte", b'["caf\xe9"]')
    add("valid 4-byte UTF-8 max U+10FFFF", b'["\xf4\x8f\xbf\xbf"]')
    add("noncharacters U+FDD0 and U+1FFFE raw", '["\ufdd0\U0001fffe"]')
    # ---- trailing garbage and structure errors --------------------------------------------
    add("trailing garbage after object", '{} x')
    add("two objects", '{}{}')
    add("extra closing bracket", '[1]]')
    add("two numbers", '1 2')
    add("trailing comma in array", '[1,]')
    add("trailing comma in object", '{"a":1,}')
    add("leading comma", '[,1]')
    add("missing colon", '{"a" 1}')
    add("missing value", '{"a":}')
    add("unquoted key", '{a:1}')
    add("non-string key", '{1:2}')
    add("unclosed object", '{"a":1')
    add("unclosed array", '[1,2')
    add("comment //", '{"a":1} // x')
    add("comment /* */", '{/* x */"a":1}')
    add("array closed by brace", '[1}')
    # ---- depth and size -------------------------------------------------------------------
    add("200 nested arrays", "[" * 200 + "]" * 200)
    add("200 nested objects", '{"a":' * 200 + "{}" + "}" * 200)
    add("512 nested arrays", "[" * 512 + "]" * 512)
    add("1100 nested arrays (past Python's default recursion limit)", "[" * 1100 + "]" * 1100)
    add("20000 nested arrays, unclosed", "[" * 20000)
    add("long string (16 KiB)", '["' + "x" * 16384 + '"]')
    add("long key", '{"' + "k" * 4096 + '":1}')
    add("array of 5000 small ints", "[" + ",".join(str(i) for i in range(5000)) + "]")
    add("object with 1000 keys in reverse order", "{" + ",".join('"k%04d":%d' % (i, i) for i in range(999, -1, -1)) + "}")
    return c


# ---------------------------------------------------------------------------------------
# Canonical JSON: random documents with random (valid or not) spellings
# ---------------------------------------------------------------------------------------

CHAR_POOLS = [
    "abcxyzABCXYZ0129 _-.:@!$#",
    '"\\/',
    "".join(chr(i) for i in range(0x20)) + "\x7f",
    "éüßÿĀ",
    "\u2028\u2029\ufeff\ufffd\uffff\ue000\ud7ff\u0800\u00a0",
    "日本語한국어Ελληνικάрусский",
    "\U0001f600\U00010000\U0010ffff\U0001d11e\U0001f44d",
]
SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def rand_text(rng: random.Random, maxlen=12) -> str:
    n = rng.randrange(maxlen + 1)
    return "".join(rng.choice(rng.choice(CHAR_POOLS)) for _ in range(n))


def rand_int(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.6:
        return rng.randrange(-1000, 100000)
    if r < 0.9:
        return rng.randrange(-(2**53) + 1, 2**53)
    return rng.choice([2**53, -(2**53), 2**63, 2**64, -(2**63) - 1, 10**30, 2**53 + 1])


def rand_value(rng: random.Random, depth: int):
    r = rng.random()
    if depth > 4 or r < 0.45:
        k = rng.random()
        if k < 0.35:
            return rand_text(rng)
        if k < 0.7:
            return rand_int(rng)
        if k < 0.78:
            return rng.choice([0.5, 1.0, -2.25, 1e16, 1e-5, 123456789.125, 0.1, -0.0])
        return rng.choice([True, False, None])
    if r < 0.7:
        return [rand_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rand_text(rng, 6): rand_value(rng, depth + 1) for _ in range(rng.randrange(6))}


class Spell:
    """Writes a value as JSON text with random but valid spellings (unless told otherwise)."""

    def __init__(self, rng: random.Random, dup_keys: bool, lone_surrogate: bool):
        self.rng = rng
        self.dup_keys = dup_keys
        self.lone_surrogate = lone_surrogate

    def ws(self) -> str:
        rng = self.rng
        if rng.random() < 0.6:
            return ""
        return "".join(rng.choice(" \t\r\n") for _ in range(rng.randrange(1, 4)))

    def u(self, code: int) -> str:
        h = "%04x" % code
        return "\\u" + (h.upper() if self.rng.random() < 0.3 else h)

    def string(self, s: str) -> str:
        rng = self.rng
        out = []
        for ch in s:
            cp = ord(ch)
            if ch in SHORT and rng.random() < 0.7:
                out.append(SHORT[ch])
            elif cp < 0x20 or ch in '"\\':
                out.append(self.u(cp))
            elif ch == "/" and rng.random() < 0.5:
                out.append("\\/")
            elif rng.random() < 0.25:
                if cp > 0xFFFF:
                    v = cp - 0x10000
                    out.append(self.u(0xD800 + (v >> 10)) + self.u(0xDC00 + (v & 0x3FF)))
                else:
                    out.append(self.u(cp))
            else:
                out.append(ch)
        if self.lone_surrogate and rng.random() < 0.3:
            out.insert(rng.randrange(len(out) + 1), self.u(rng.choice([0xD800, 0xDBFF, 0xDC00, 0xDFFF])))
            self.lone_surrogate = False
        return '"' + "".join(out) + '"'

    def number(self, v) -> str:
        rng = self.rng
        if isinstance(v, bool) or v is None:
            return json.dumps(v)
        if isinstance(v, int):
            if v == 0 and rng.random() < 0.3:
                return "-0"
            if rng.random() < 0.1 and abs(v) < 10**15:
                return rng.choice(["%d.0", "%de0", "%dE+0"]) % v  # float spellings
            return str(v)
        return rng.choice([repr(v), "%.17g" % v, "%e" % v, "%E" % v])

    def value(self, v) -> str:
        rng = self.rng
        if isinstance(v, str):
            return self.string(v)
        if isinstance(v, list):
            return "[" + self.ws() + ("," + self.ws()).join(self.value(x) + self.ws() for x in v) + "]"
        if isinstance(v, dict):
            items = list(v.items())
            rng.shuffle(items)
            if self.dup_keys and items and rng.random() < 0.5:
                k, _ = rng.choice(items)
                pos = min(i for i, (kk, _) in enumerate(items) if kk == k)
                items.insert(pos, (k, rand_value(rng, 5)))  # decoy before the real value
            parts = [self.ws() + self.string(k) + self.ws() + ":" + self.ws() + self.value(x) + self.ws()
                     for k, x in items]
            return "{" + ",".join(parts) + (self.ws() if not parts else "") + "}"
        return self.number(v)


def generated_canonical(n: int):
    rng = random.Random(SEED_CANONICAL)
    out = []
    for i in range(n):
        doc = rand_value(rng, 0)
        if rng.random() < 0.8 and not isinstance(doc, dict):
            doc = {rand_text(rng, 4): doc, "type": "m.room.message"}
        dup = rng.random() < 0.3
        lone = rng.random() < 0.05
        text = Spell(rng, dup, lone).value(doc)
        text = Spell(rng, False, False).ws() + text + Spell(rng, False, False).ws()
        out.append({"hex": text.encode("utf-8", "surrogatepass").hex(),
                    "note": f"random #{i}" + (" (duplicate keys)" if dup else "") + (" (lone surrogate?)" if lone else "")})
    return out


# ---------------------------------------------------------------------------------------
# Request signatures
# ---------------------------------------------------------------------------------------

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
L = 2**252 + 27742317777372353535851937790883648493  # order of the ed25519 base point


def seed_of(label: str) -> bytes:
    return hashlib.sha256(b"fedpin differential signing key: " + label.encode()).digest()


class Key:
    def __init__(self, label: str, version: str):
        self.seed = seed_of(label)
        self.sk = decode_signing_key_base64("ed25519", version, encode_base64(self.seed))
        self.key_id = "ed25519:" + version
        self.public = encode_verify_key_base64(get_verify_key(self.sk))  # unpadded base64
        self.public_bytes = decode_base64(self.public)


# (origin, its key) pairs; destinations are the receiving servers' names.
SERVERS = [
    ("matrix.org", Key("matrix.org", "a_RXGa")),
    ("example.com:8448", Key("example.com:8448", "0")),
    ("[2001:db8::1]:8448", Key("ipv6", "auto")),
    ("192.0.2.7", Key("ipv4", "key1")),
    ("conduit.example", Key("conduit", "Ug7a2mXe")),
]
DESTS = ["fedpin.example", "b.example:8448", "synapse.example.org"]
OTHER_KEY = Key("someone else", "a_RXGa")


def signed_json_request(method, uri, origin, destination, content, key: Key) -> str:
    """The sig a sending homeserver puts in its X-Matrix header (Synapse's
    MatrixFederationHttpClient.build_auth_headers: sign_json over this object)."""
    req = {"method": method, "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        req["content"] = content
    return sign_json(req, origin, key.sk)["signatures"][origin][key.key_id]


def vcase(note, method, uri, origin, destination, body, key_id, public_key, sig, must_accept=False):
    return {
        "method": method, "uri": uri, "origin": origin, "destination": destination,
        "content_hex": None if body is None else body.hex(),
        "key_id": key_id, "public_key": public_key, "sig": sig,
        "must_accept": must_accept, "note": note,
    }


def templates():
    """(name, method, uri, body dict or None) for realistic signed requests."""
    bodies = dict(real_bodies())
    r = "%21OGEhHVWSdvArJzumhm%3Amatrix.org"
    e1 = "%24Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"
    e3 = "%249x7NnWg-wMc5ZQIK6p9_3GtN8rVhl-Pqm0eS8C6kH2s"
    return [
        ("send txn (PDU)", "PUT", "/_matrix/federation/v1/send/1700000000500", bodies["send: one m.room.message PDU"]),
        ("send txn (non-ASCII PDUs)", "PUT", "/_matrix/federation/v1/send/1700000000600",
         bodies["send: PDUs with non-ASCII, emoji, HTML and a reply"]),
        ("send txn (encrypted)", "PUT", "/_matrix/federation/v1/send/1700000001000",
         bodies["send: encrypted event and a reaction"]),
        ("send txn (typing)", "PUT", "/_matrix/federation/v1/send/1700000002000", bodies["send: m.typing EDU"]),
        ("send txn (receipt)", "PUT", "/_matrix/federation/v1/send/1700000003000", bodies["send: m.receipt EDU (threaded)"]),
        ("send txn (presence)", "PUT", "/_matrix/federation/v1/send/1700000004000", bodies["send: m.presence EDU"]),
        ("send txn (device list)", "PUT", "/_matrix/federation/v1/send/1700000005000",
         bodies["send: m.device_list_update EDU"]),
        ("send txn (to-device)", "PUT", "/_matrix/federation/v1/send/1700000006000",
         bodies["send: m.direct_to_device EDU"]),
        ("send_join v2", "PUT", f"/_matrix/federation/v2/send_join/{r}/{e1}?omit_members=true",
         bodies["send_join v2: join event"]),
        ("send_leave v2", "PUT", f"/_matrix/federation/v2/send_leave/{r}/{e1}", bodies["send_leave v2: leave event"]),
        ("invite v2", "PUT", f"/_matrix/federation/v2/invite/{r}/{e3}",
         bodies["invite v2: event, room_version, invite_room_state"]),
        ("keys query", "POST", "/_matrix/federation/v1/user/keys/query", bodies["user/keys/query"]),
        ("keys claim", "POST", "/_matrix/federation/v1/user/keys/claim", bodies["user/keys/claim"]),
        ("get_missing_events", "POST", f"/_matrix/federation/v1/get_missing_events/{r}", bodies["get_missing_events"]),
        ("publicRooms POST", "POST", "/_matrix/federation/v1/publicRooms", bodies["publicRooms POST"]),
        ("make_join", "GET", f"/_matrix/federation/v1/make_join/{r}/%40dave%3Aexample.com?ver=10&ver=11", None),
        ("query profile", "GET", "/_matrix/federation/v1/query/profile?user_id=%40alice%3Amatrix.org&field=displayname", None),
        ("state_ids", "GET", f"/_matrix/federation/v1/state_ids/{r}?event_id={e3}", None),
        ("backfill", "GET", f"/_matrix/federation/v1/backfill/{r}?v={e3}&limit=50", None),
        ("event", "GET", f"/_matrix/federation/v1/event/{e1}", None),
        ("user devices", "GET", "/_matrix/federation/v1/user/devices/%40bob%3Aexample.com", None),
        ("media download", "GET", "/_matrix/federation/v1/media/download/SEsfnsuifSDFSSEF?timeout_ms=20000", None),
        ("hierarchy", "GET", f"/_matrix/federation/v1/hierarchy/{r}?suggested_only=false", None),
        ("publicRooms GET", "GET", "/_matrix/federation/v1/publicRooms?limit=10&include_all_networks=false", None),
    ]


def reformat(obj, rng) -> bytes:
    """Same value, other key order and whitespace (the signature covers canonical JSON)."""
    def shuffle(v):
        if isinstance(v, dict):
            items = list(v.items())
            rng.shuffle(items)
            return {k: shuffle(x) for k, x in items}
        if isinstance(v, list):
            return [shuffle(x) for x in v]
        return v
    return json.dumps(shuffle(obj), indent="\t", separators=(" ,", " : ")).encode("ascii")


def change_one_char(s: str, rng: random.Random, lo: int) -> str:
    i = rng.randrange(lo, len(s))
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    c = rng.choice([x for x in alphabet if x != s[i]])
    return s[:i] + c + s[i + 1:]


def flip_sig_bit(sig: str, pos: int) -> str:
    raw = bytearray(decode_base64(sig))
    raw[pos] ^= 0x01
    return encode_base64(bytes(raw))


def ed25519_cases(note_prefix, method, uri, origin, dest, body_bytes, content, key: Key):
    """Signatures libsodium (PyNaCl, what Synapse uses) refuses but a cofactorless
    verifier without its extra checks may accept."""
    out = []
    req = {"method": method, "uri": uri, "origin": origin, "destination": dest}
    if content is not None:
        req["content"] = content
    message = encode_canonical_json(req)
    good = decode_base64(signed_json_request(method, uri, origin, dest, content, key))
    r_enc, s = good[:32], int.from_bytes(good[32:], "little")
    # S + L: the same group element, non-canonical scalar (malleated signature).
    out.append(vcase(f"{note_prefix}: signature with S+L (non-canonical S, malleable)", method, uri, origin,
                     dest, body_bytes, key.key_id, key.public, encode_base64(r_enc + (s + L).to_bytes(32, "little"))))
    # R = identity (small order): S = k*a with k = H(R||A||M). Valid for the
    # cofactorless equation [S]B = R + [k]A; libsodium refuses small-order R.
    h = hashlib.sha512(key.seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    ident = b"\x01" + b"\x00" * 31
    k = int.from_bytes(hashlib.sha512(ident + key.public_bytes + message).digest(), "little") % L
    sig = ident + ((k * a) % L).to_bytes(32, "little")
    out.append(vcase(f"{note_prefix}: signature with R = identity (small-order R), S = k*a",
                     method, uri, origin, dest, body_bytes, key.key_id, key.public, encode_base64(sig)))
    # Small-order public keys with R = identity, S = 0: [0]B == identity + [k]A for any message.
    zero_sig = encode_base64(ident + b"\x00" * 32)
    out.append(vcase(f"{note_prefix}: identity public key, signature (identity, 0) (any message)",
                     method, uri, origin, dest, body_bytes, key.key_id, encode_base64(ident), zero_sig))
    noncanon_ident = b"\xee" + b"\xff" * 30 + b"\x7f"  # y = p + 1, i.e. y = 1 not reduced
    out.append(vcase(f"{note_prefix}: non-canonically encoded identity public key, signature (identity, 0)",
                     method, uri, origin, dest, body_bytes, key.key_id, encode_base64(noncanon_ident), zero_sig))
    out.append(vcase(f"{note_prefix}: all-zero signature, all-zero public key",
                     method, uri, origin, dest, body_bytes, key.key_id, encode_base64(b"\x00" * 32),
                     encode_base64(b"\x00" * 64)))
    return out


def verify_cases():
    rng = random.Random(SEED_VERIFY)
    out = []
    tmpl = templates()
    writers = [WRITERS[0], WRITERS[1], WRITERS[2]]  # synapse, go, ruma: real senders
    for ti, (name, method, uri, content) in enumerate(tmpl):
        origin, key = SERVERS[ti % len(SERVERS)]
        dest = DESTS[ti % len(DESTS)]
        wname, w = writers[ti % len(writers)]
        body = None if content is None else w(content)
        sig = signed_json_request(method, uri, origin, dest, content, key)
        tag = f"{name} [{method}, {origin} -> {dest}, {wname}]"

        def add(note, **kw):
            f = dict(method=method, uri=uri, origin=origin, destination=dest, body=body,
                     key_id=key.key_id, public_key=key.public, sig=sig)
            f.update(kw)
            out.append(vcase(f"{tag}: {note}", f["method"], f["uri"], f["origin"], f["destination"],
                             f["body"], f["key_id"], f["public_key"], f["sig"], f.get("must_accept", False)))

        # ---- correctly signed, as real senders send them ---------------------------------
        add("signed request", must_accept=True)
        o2, k2 = SERVERS[(ti + 2) % len(SERVERS)]
        d2 = DESTS[(ti + 1) % len(DESTS)]
        w2name, w2 = writers[(ti + 1) % len(writers)]
        b2 = None if content is None else w2(content)
        out.append(vcase(f"{name} [{method}, {o2} -> {d2}, {w2name}]: signed request", method, uri, o2, d2, b2,
                         k2.key_id, k2.public, signed_json_request(method, uri, o2, d2, content, k2), True))
        # ---- what the signature covers (every template) -----------------------------------
        o3 = SERVERS[(ti + 1) % len(SERVERS)][0]
        add(f"claimed origin {o3} (same public key)", origin=o3)
        add("claimed destination differs", destination=DESTS[(ti + 1) % len(DESTS)])
        add("uri differs by one char", uri=change_one_char(uri, rng, len("/_matrix/federation/")))
        add("uri with an extra query parameter", uri=uri + ("&" if "?" in uri else "?") + "x=1")
        if "%" in uri:
            add("uri percent-decoded (%21 %24 %3A %40)", uri=uri.replace("%21", "!").replace("%24", "$")
                .replace("%3A", ":").replace("%40", "@"))
        else:
            add("uri with a percent-encoded letter", uri=uri.replace("federation", "f%65deration", 1))
        add("method in lower case", method=method.lower())
        if content is not None:
            add("body re-serialized: other key order and whitespace (same value)",
                body=reformat(content, rng))
            add("body in another writer's shape (same value)", body=w2(content))
            changed = copy.deepcopy(content)
            changed["fedpin_extra"] = 1
            add("body with an extra key", body=w(changed))
            add("empty body", body=b"")
            add("body as a JSON array containing the object", body=b"[" + body + b"]")
            add("signature over no content (body sent anyway)",
                sig=signed_json_request(method, uri, origin, dest, None, key))
        else:
            add("GET with a body (Synapse ignores it; signed without content)", body=b'{"a":1}')
            add("signed with a content the GET does not carry",
                sig=signed_json_request(method, uri, origin, dest, {"a": 1}, key))
        add("sig by another key", sig=signed_json_request(method, uri, origin, dest, content, OTHER_KEY))
        add("sig padded with '=='", sig=sig + "==")
        add("sig in URL-safe base64", sig=sig.replace("+", "-").replace("/", "_"))
        # ---- more of the same, on a third of the templates each ---------------------------
        if ti % 3 == 0:
            add("destination differs only in case", destination=dest.upper())
            if "?" in uri:
                add("uri without its query string", uri=uri.split("?", 1)[0])
                p, q = uri.split("?", 1)
                if "&" in q:
                    add("uri with query parameters reordered", uri=p + "?" + "&".join(reversed(q.split("&"))))
            else:
                add("uri with an empty query string", uri=uri + "?")
            add("uri with a trailing slash", uri=uri + "/" if "?" not in uri else uri.replace("?", "/?", 1))
            if "%" in uri:
                add("uri with lower-case percent hex", uri=uri.replace("%3A", "%3a"))
            add("uri without the leading slash", uri=uri[1:])
            add("uri as an absolute URL", uri="https://" + dest + uri)
        if ti % 3 == 1:
            if content is not None:
                other = "POST" if method == "PUT" else "PUT"
                add(f"method {other} (signed as {method})", method=other)
                bb = bytearray(body)
                i = next(j for j in range(len(bb) - 1, -1, -1) if chr(bb[j]).isalnum())
                bb[i] = ord("x") if bb[i] != ord("x") else ord("y")
                add("body with one character changed", body=bytes(bb))
                add("body with a trailing newline (same value)", body=body + b"\n")
                add("body with trailing garbage", body=body + b"x")
                add("no body (content_hex null)", body=None)
                add("body with a UTF-8 BOM", body=b"\xef\xbb\xbf" + body)
                add("body with a duplicate key (decoy first, signed value last)",
                    body=b'{"' + next(iter(content)).encode() + b'":"decoy",' + body[1:])
                add("lower-case method, signed over no content", method=method.lower(),
                    sig=signed_json_request(method.lower(), uri, origin, dest, None, key))
                add("lower-case method, signed with content", method=method.lower(),
                    sig=signed_json_request(method.lower(), uri, origin, dest, content, key))
            else:
                add("GET with an invalid body (ignored)", body=b"\xff not json")
                add("GET with a JSON array body (ignored)", body=b"[1,2]")
                add("GET with a body, signed with that content", body=b'{"a":1}',
                    sig=signed_json_request(method, uri, origin, dest, {"a": 1}, key))
                add("method POST (signed as GET)", method="POST", body=b"{}")
                add("DELETE with a body (content ignored)", method="DELETE", body=b'{"a":1}',
                    sig=signed_json_request("DELETE", uri, origin, dest, None, key))
        if ti % 3 == 2:
            add("sig padded with '='", sig=sig + "=")
            add("sig padded with '==='", sig=sig + "===")
            add("sig truncated by one char", sig=sig[:-1])
            add("sig truncated to 43 chars", sig=sig[:43])
            add("sig with one more char", sig=sig + "A")
            add("sig with a bit flipped", sig=flip_sig_bit(sig, rng.randrange(64)))
            add("public key of another server", public_key=OTHER_KEY.public)
            add("empty sig", sig="")
            add("sig with non-canonical trailing bits", sig=sig[:-1] + B64[B64.index(sig[-1]) | 0x0F])
            add("sig with a space inside", sig=sig[:40] + " " + sig[40:])
            add("sig with a '!' inside", sig=sig[:40] + "!" + sig[40:])
            add("sig with '!!' inside and '==' appended (decode_base64 skips non-alphabet bytes)",
                sig=sig[:40] + "!!" + sig[40:] + "==")
            add("sig with a newline inside and '=' appended", sig=sig[:40] + "\n" + sig[40:] + "=")
            add("sig with a non-ASCII char appended", sig=sig + "é")
            add("sig in hex", sig=decode_base64(sig).hex())
        # ---- key IDs ----------------------------------------------------------------------
        if ti % 4 == 0:
            add("other key version, same public key (key ID is not signed)", key_id="ed25519:other")
            add("key ID 'ed25519' without version", key_id="ed25519")
            add("key ID 'ed25519:' with empty version", key_id="ed25519:")
            add("key ID 'Ed25519:...' (algorithm case)", key_id="E" + key.key_id[1:])
            add("key ID 'curve25519:...'", key_id="curve25519:" + key.key_id.split(":", 1)[1])
            add("key ID with a second colon", key_id=key.key_id + ":x")
            add("public key padded base64", public_key=key.public + "=")
            add("public key of 31 bytes", public_key=encode_base64(key.public_bytes[:31]))
        # ---- ed25519 edge cases (a few templates) ---------------------------------------
        if ti in (0, 11, 15):
            out += ed25519_cases(tag, method, uri, origin, dest, body, content, key)
    # ---- requests real senders would not make, signed correctly ---------------------------
    origin, key = SERVERS[0]
    dest = DESTS[0]

    def signed(note, method, uri, content_obj=None, body=None, origin=origin, dest=dest):
        if body is None and content_obj is not None:
            body = w_synapse(content_obj)
        c = content_obj if method in ("PUT", "POST") else None
        out.append(vcase(f"signed but unusual: {note}", method, uri, origin, dest, body, key.key_id, key.public,
                         signed_json_request(method, uri, origin, dest, c, key)))

    send = "/_matrix/federation/v1/send/42"
    signed("PUT with {} body", "PUT", send, {})
    signed("POST with a float in the body", "POST", send, {"n": 1.0, "m": 0.1})
    signed("POST with 2**53 in the body", "POST", send, {"n": 2**53})
    signed("POST with 2**64 in the body", "POST", send, {"n": 2**64})
    signed("POST with -0.0 in the body", "POST", send, {"n": -0.0})
    signed("POST with an astral key vs U+FFFD key", "POST", send, {"\U0001f600": 1, "\ufffd": 2})
    signed("POST with escaped control chars", "POST", send, {"s": "\x00\x1f\x7f\u2028"})
    signed("POST with surrogate-pair escapes in the body", "POST", send, {"s": "\U0001f600"},
           body=b'{"s":"\\ud83d\\ude00"}')
    signed("POST with a top-level 'signatures' key in the body", "POST", send,
           {"signatures": {"x": {"ed25519:y": "z"}}, "a": 1})
    signed("POST with 'unsigned' in the body", "POST", send, {"unsigned": {"age": 1}, "a": 1})
    signed("POST with a 200-deep body", "POST", send, json.loads('{"a":' * 200 + "{}" + "}" * 200))
    signed("uri with raw non-ASCII (Synapse reads uri as ASCII)", "GET",
           "/_matrix/federation/v1/query/profile?user_id=@älice:matrix.org")
    signed("uri with a fragment", "GET", "/_matrix/federation/v1/event/abc#frag")
    signed("uri with raw space", "GET", "/_matrix/federation/v1/event/a b")
    signed("uri '*'", "OPTIONS", "*")
    signed("method PATCH with a body (content ignored)", "PATCH", send, {"a": 1}, body=b'{"a":1}')
    signed("method with non-ASCII", "PÜT", send)
    signed("origin is the destination", "GET", "/_matrix/federation/v1/version", origin=dest, dest=dest)
    signed("origin with upper case", "GET", "/_matrix/federation/v1/version", origin="Matrix.ORG")
    signed("origin not a server name", "GET", "/_matrix/federation/v1/version", origin="bad_origin!")
    signed("destination with non-ASCII", "GET", "/_matrix/federation/v1/version", dest="bücher.example")
    # Body with a lone surrogate escape: parses, but canonical JSON cannot be encoded.
    req = {"method": "POST", "uri": send, "origin": origin, "destination": dest, "content": {"s": "x"}}
    out.append(vcase("signed but unusual: body with a lone surrogate escape (sig over other content)", "POST",
                     send, origin, dest, b'{"s":"\\ud800"}', key.key_id, key.public,
                     sign_json(req, origin, key.sk)["signatures"][origin][key.key_id]))
    out.append(vcase("signed but unusual: body with NaN", "POST", send, origin, dest, b'{"n":NaN}',
                     key.key_id, key.public, signed_json_request("POST", send, origin, dest, {"n": 1}, key)))
    return out


def main(argv) -> int:
    check = "--check" in argv
    files = {
        "canonical_cases.jsonl": render(crafted_canonical() + generated_canonical(250)),
        "canonical_real.jsonl": render(canonical_real()),
        "verify_cases.jsonl": render(verify_cases()),
    }
    stale = write_or_check(HERE, files, check)
    if stale:
        print("gen_signing_cases.py: stale (rerun with the Synapse venv's python: "
              "tests/differential/gen_signing_cases.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
