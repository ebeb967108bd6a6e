#!/usr/bin/env python3
"""Tiny Matrix Client-Server API driver for tests/e2e/synapse.sh (stdlib only).

Usage: cs.py BASE_URL COMMAND ARGS...   (access token in $TOKEN where needed)

  login USER PASSWORD                 print an access token
  create-room                         print a new private room's ID
  invite ROOM USER_ID [RETRY_SECS]    invite (retried on errors for RETRY_SECS)
  wait-invite ROOM SECS               wait until our user is invited to ROOM
  join ROOM [RETRY_SECS]              join (retried on errors for RETRY_SECS)
  wait-member ROOM USER_ID SECS       wait until USER_ID's membership in ROOM is "join"
  send ROOM BODY                      send an m.text message, print its event ID
  wait-message ROOM BODY SECS         exit 0 once a message with BODY is visible, 1 after SECS
  absent-message ROOM BODY SECS       exit 0 if no message with BODY shows up within SECS, 1 if it does
  reset-destination DEST              admin API: reset federation back-off for DEST (admin token)

Every wait is a bounded poll. Errors go to stderr; exit 1 on failure.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT = 30


class HttpError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def call(base, method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise HttpError(e.code, e.read().decode("utf-8", "replace")) from None


def q(s):
    return urllib.parse.quote(s, safe="")


def token():
    t = os.environ.get("TOKEN")
    if not t:
        sys.exit("cs.py: TOKEN is not set")
    return t


def retrying(secs, what, fn):
    deadline = time.monotonic() + secs
    while True:
        try:
            return fn()
        except (HttpError, OSError) as e:
            if time.monotonic() >= deadline:
                raise
            print(f"cs.py: {what} failed ({e}); retrying", file=sys.stderr)
            time.sleep(1)


def bodies(base, room):
    r = call(base, "GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=100", token=token())
    return [
        ev.get("content", {}).get("body")
        for ev in r.get("chunk", [])
        if ev.get("type") == "m.room.message"
    ]


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    base, cmd, args = argv[1], argv[2], argv[3:]
    if cmd == "login":
        user, pw = args
        r = call(base, "POST", "/_matrix/client/v3/login", {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": pw,
        })
        print(r["access_token"])
    elif cmd == "create-room":
        r = call(base, "POST", "/_matrix/client/v3/createRoom",
                 {"preset": "private_chat", "name": "fedpin e2e"}, token=token())
        print(r["room_id"])
    elif cmd == "invite":
        room, user = args[0], args[1]
        secs = float(args[2]) if len(args) > 2 else 0
        retrying(secs, "invite", lambda: call(
            base, "POST", f"/_matrix/client/v3/rooms/{q(room)}/invite", {"user_id": user}, token=token()))
    elif cmd == "wait-invite":
        room, secs = args[0], float(args[1])
        deadline = time.monotonic() + secs
        since = None
        while time.monotonic() < deadline:
            path = "/_matrix/client/v3/sync?timeout=2000"
            if since:
                path += "&since=" + q(since)
            r = call(base, "GET", path, token=token())
            since = r.get("next_batch", since)
            if room in r.get("rooms", {}).get("invite", {}):
                return 0
        print(f"cs.py: no invite to {room} within {secs:.0f} s", file=sys.stderr)
        return 1
    elif cmd == "join":
        room = args[0]
        secs = float(args[1]) if len(args) > 1 else 0
        retrying(secs, "join", lambda: call(
            base, "POST", f"/_matrix/client/v3/join/{q(room)}", {}, token=token()))
    elif cmd == "wait-member":
        room, user, secs = args[0], args[1], float(args[2])
        deadline = time.monotonic() + secs
        last = None
        while time.monotonic() < deadline:
            try:
                r = call(base, "GET",
                         f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.member/{q(user)}",
                         token=token())
                last = r.get("membership")
                if last == "join":
                    return 0
            except HttpError as e:
                last = str(e)
            time.sleep(0.5)
        print(f"cs.py: {user} has not joined {room} within {secs:.0f} s (last: {last})", file=sys.stderr)
        return 1
    elif cmd == "send":
        room, body = args
        txn = f"e2e-{time.time_ns()}"
        r = call(base, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{txn}",
                 {"msgtype": "m.text", "body": body}, token=token())
        print(r["event_id"])
    elif cmd in ("wait-message", "absent-message"):
        room, body, secs = args[0], args[1], float(args[2])
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            if body in bodies(base, room):
                if cmd == "wait-message":
                    return 0
                print(f"cs.py: message {body!r} arrived although it must not", file=sys.stderr)
                return 1
            time.sleep(0.5)
        if cmd == "absent-message":
            return 0
        print(f"cs.py: message {body!r} not visible in {room} within {secs:.0f} s", file=sys.stderr)
        return 1
    elif cmd == "reset-destination":
        # Synapse admin API: clear the federation back-off for a destination.
        # Synapse answers 400 when the destination is not backing off at all
        # (retry_last_ts is 0): a 4xx other than 401/429 from the peer is not a
        # back-off reason, so whether one was recorded depends on timing. That
        # is the state a reset wants, so it counts as done.
        (dest,) = args
        try:
            call(base, "POST", f"/_synapse/admin/v1/federation/destinations/{q(dest)}/reset_connection",
                 {}, token())
        except HttpError as e:
            if e.status != 400 or "does not need to be reset" not in e.body:
                raise
            print(f"cs.py: {dest} was not backing off; nothing to reset", file=sys.stderr)
    else:
        sys.exit(f"cs.py: unknown command {cmd}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except HttpError as e:
        print(f"cs.py: {sys.argv[2]}: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"cs.py: {sys.argv[2]}: {e}", file=sys.stderr)
        sys.exit(1)
