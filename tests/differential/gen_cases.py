#!/usr/bin/env python3
"""Writes the inputs of the X-Matrix differential test (plain python3, no deps).

    python3 tests/differential/gen_cases.py           # rewrite the three files
    python3 tests/differential/gen_cases.py --check   # exit 1 if any is stale

Files (JSON Lines; each line is one request: {"headers": [hex, ...], "note": str},
the raw bytes of each Authorization header value in order; "note" is for people):

  xmatrix_cases.jsonl      hand-crafted hostile cases, listed in crafted() below
  xmatrix_generated.jsonl  combinatorial mutations of real headers (fixed seed)
  xmatrix_real.jsonl       headers in the exact shapes real homeservers write
                           (see README.md for the writer each one is modelled on)

Everything is deterministic: the same script always writes the same bytes.
"""

import base64
import os
import random
import sys

from common import render, write_or_check

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0x58D47121  # fixed: the generated file must not change between runs


def b64(n: int, rng: random.Random) -> str:
    """Unpadded standard base64 of n pseudo-random bytes (as Synapse/Go/ruma emit)."""
    return base64.b64encode(bytes(rng.randrange(256) for _ in range(n))).decode().rstrip("=")


_sig_rng = random.Random(SEED ^ 1)
SIG = b64(64, _sig_rng)  # 86 chars
SIG2 = b64(64, _sig_rng)
# ruma quotes a value only when it is not an RFC 9110 token; '/' is not a tchar.
SIG_SLASH = next(s for s in (b64(64, _sig_rng) for _ in range(1000)) if "/" in s)
SIG_NOSLASH = next(s for s in (b64(64, _sig_rng) for _ in range(10000)) if "/" not in s)

O = "matrix.org"
K = "ed25519:a_AbCd"
D = "fedpin.example"


def base(origin=O, key=K, sig=SIG, dest=D) -> str:
    """Synapse's current shape (synapse/http/matrixfederationclient.py)."""
    s = f'X-Matrix origin="{origin}",key="{key}",sig="{sig}"'
    return s + (f',destination="{dest}"' if dest is not None else "")


BASE = base()
# The parameters of Synapse's shape, one by one, and all of them after the
# scheme: a case that changes one spells the others with these.
OP = f'origin="{O}"'
KP = f'key="{K}"'
SP = f'sig="{SIG}"'
DP = f'destination="{D}"'
REST = BASE[len("X-Matrix "):]


def enc(h) -> bytes:
    return h if isinstance(h, bytes) else h.encode("utf-8")


def case(note, *headers):
    return {"headers": [enc(h).hex() for h in headers], "note": note}


def crafted():
    c = []
    add = lambda note, *h: c.append(case(note, *h))  # noqa: E731
    P = f'key="{K}",sig="{SIG}"'  # key+sig tail reused below
    # ---- baseline -------------------------------------------------------------
    add("baseline: Synapse shape", base())
    add("baseline: no destination", f'X-Matrix {OP},{P}')
    add("baseline: all unquoted", f"X-Matrix origin={O},key={K},sig={SIG},destination={D}")
    add("baseline: destination first", f'X-Matrix destination="{D}",origin="{O}",{P}')
    # ---- scheme spelling ----------------------------------------------------------
    add("scheme lowercase x-matrix (Synapse ignores the header)", f'x-matrix {REST}')
    add("scheme X-MATRIX", f'X-MATRIX {REST}')
    add("scheme x-Matrix", f'x-Matrix {REST}')
    add("scheme followed by tab", f'X-Matrix\t{REST}')
    add("scheme followed by two spaces", f'X-Matrix  {REST}')
    add("scheme followed by eight spaces", base().replace("X-Matrix ", "X-Matrix" + " " * 8, 1))
    add("scheme followed by space then tab", f'X-Matrix \t{REST}')
    add("scheme followed by no space", f'X-Matrix{REST}')
    add("scheme followed by comma", f'X-Matrix,{REST}')
    add("scheme X-Matrix-Foo", f'X-Matrix-Foo {REST}')
    add("scheme X-Matrix2", f'X-Matrix2 {REST}')
    add("scheme only", "X-Matrix")
    add("scheme and a space only", "X-Matrix ")
    add("leading space before scheme", f' {BASE}')
    add("leading tab before scheme", f'\t{BASE}')
    add("UTF-8 BOM before scheme", f'\ufeff{BASE}')
    add("scheme with fullwidth X", f'\uff38-Matrix {REST}')
    add("scheme X-Matrix: colon", f'X-Matrix: {REST}')
    add("scheme repeated", f'X-Matrix X-Matrix {REST}')
    # ---- several Authorization headers ----------------------------------------------
    add("two identical X-Matrix headers", base(), base())
    add("two X-Matrix, different origins (Synapse: last origin)", base(origin="a.example"), base(origin="b.example"))
    add("two X-Matrix, same origin, different keys", base(), base(key="ed25519:other", sig=SIG2))
    add("two X-Matrix, same origin+key, different sig (last wins)", base(), base(sig=SIG2))
    add("two X-Matrix, destination only in first", base(), base(dest=None))
    add("two X-Matrix, destination only in second", base(dest=None), base())
    add("two X-Matrix, different destinations", base(dest="a.example"), base(dest="b.example"))
    add("Bearer then X-Matrix", "Bearer syt_abc", base())
    add("X-Matrix then Bearer", base(), "Bearer syt_abc")
    add("Bearer only", "Bearer syt_abc")
    add("lowercase x-matrix (ignored by Synapse) then X-Matrix", base(origin="evil.example").replace("X-Matrix", "x-matrix", 1), base())
    add("X-Matrix then lowercase x-matrix", base(), base(origin="evil.example").replace("X-Matrix", "x-matrix", 1))
    add("X-Matrix then malformed X-Matrix", base(), "X-Matrix garbage")
    add("malformed X-Matrix then X-Matrix", "X-Matrix garbage", base())
    add("X-Matrix then empty header", base(), "")
    add("empty header then X-Matrix", "", base())
    add("empty Authorization value", "")
    add("no Authorization header at all")
    add("two headers comma-joined in one value",
        f'X-Matrix origin="a.example",key="ed25519:1",sig="{SIG}", X-Matrix origin="b.example",key="ed25519:2",sig="{SIG2}"')
    add("X-Matrix then Basic", base(), "Basic dXNlcjpwYXNz")
    add("three X-Matrix headers, origin changes in the middle", base(), base(origin="evil.example"), base())
    # ---- quotes are not honoured by Synapse's split ------------------------------------
    add("quoted comma smuggles a later origin",
        f'X-Matrix origin="a.example",x="1,origin=b.example,y=2",{P}')
    add("quoted comma smuggles origin after key/sig",
        f'X-Matrix {P},origin="a.example",x="1,origin=b.example,y=2"')
    add("comma inside quoted sig", f'X-Matrix {OP},{KP},sig="ab,cd",{DP}')
    add("comma inside quoted key smuggles origin",
        f'X-Matrix origin="{O}",key="x,origin=evil.example,y=",sig="{SIG}"')
    add("comma inside quoted origin", f'X-Matrix origin="a.example,b.example",{P},{DP}')
    add("comma inside quoted destination", f'X-Matrix {OP},{P},destination="a.example,origin=evil.example"')
    add("quoted key=value inside unknown param",
        f'X-Matrix origin="{O}",note="key=ed25519:evil",{P}')
    add("quoted comma then spaces", f'X-Matrix origin="a.example",x="1 , origin=b.example , y=2",{P}')
    # ---- repeated keys, any case --------------------------------------------------------
    add("origin twice, same case (last wins)", f'X-Matrix origin="a.example",origin="b.example",{P}')
    add("origin then Origin", f'X-Matrix origin="a.example",Origin="b.example",{P}')
    add("Origin then origin", f'X-Matrix Origin="a.example",origin="b.example",{P}')
    add("ORIGIN only", f'X-Matrix ORIGIN="{O}",{P}')
    add("oRiGiN only", f'X-Matrix oRiGiN="{O}",{P}')
    add("KEY and SIG uppercase", f'X-Matrix origin="{O}",KEY="{K}",SIG="{SIG}"')
    add("DESTINATION uppercase", f'X-Matrix origin="{O}",{P},DESTINATION="{D}"')
    add("key twice", f'X-Matrix origin="{O}",key="ed25519:first",key="{K}",sig="{SIG}"')
    add("sig twice", f'X-Matrix origin="{O}",key="{K}",sig="{SIG2}",sig="{SIG}"')
    add("sig then Sig", f'X-Matrix origin="{O}",key="{K}",sig="{SIG2}",Sig="{SIG}"')
    add("destination twice", f'X-Matrix origin="{O}",{P},destination="a.example",destination="{D}"')
    add("destination then Destination", f'X-Matrix origin="{O}",{P},destination="a.example",Destination="{D}"')
    # ---- Unicode that str.lower() folds (or not) ----------------------------------------
    add("KELVIN SIGN key (lowers to 'key') only", f'X-Matrix origin="{O}",\u212aey="{K}",sig="{SIG}"')
    add("KELVIN SIGN key overrides key", f'X-Matrix origin="{O}",key="{K}",\u212aey="ed25519:evil",sig="{SIG}"')
    add("key overrides KELVIN SIGN key", f'X-Matrix origin="{O}",\u212aey="ed25519:evil",key="{K}",sig="{SIG}"')
    add("KELVIN SIGN in value", f'X-Matrix {OP},key="ed25519:\u212a",{SP},{DP}')
    add("U+0130 in orİgin (lowers to i + U+0307)", f'X-Matrix or\u0130gin="evil.example",origin="{O}",{P}')
    add("U+0130 origin only", f'X-Matrix or\u0130gin="{O}",{P}')
    add("U+017F long s in sig (not lowered to s)", f'X-Matrix origin="{O}",key="{K}",\u017fig="{SIG}"')
    add("fullwidth origin key", f'X-Matrix \uff4frigin="{O}",{P}')
    add("non-ASCII in sig value (valid UTF-8)", f'X-Matrix {OP},{KP},sig="ab\u00e9cd",{DP}')
    add("non-ASCII origin (IDN U-label)", f'X-Matrix origin="b\u00fccher.example",{P},{DP}')
    add("punycode origin", f'X-Matrix origin="xn--bcher-kva.example",{P},{DP}')
    add("fullwidth dot in origin", f'X-Matrix origin="matrix\uff0eorg",{P},{DP}')
    add("Arabic-Indic digits as port (Python int() accepts)", f'X-Matrix origin="matrix.org:\u0668\u0664\u0664\u0668",{P},{DP}')
    add("zero-width space in origin", f'X-Matrix origin="matrix\u200b.org",{P},{DP}')
    # ---- bytes that are not UTF-8, controls -------------------------------------------
    add("0xff byte in sig", enc(base(sig="ab")).replace(b'sig="ab"', b'sig="a\xffb"'))
    add("Latin-1 e-acute byte in sig", enc(base(sig="ab")).replace(b'sig="ab"', b'sig="a\xe9b"'))
    add("overlong UTF-8 dot in origin", enc(base(origin="matrixQorg")).replace(b"Q", b"\xc0\xae"))
    add("UTF-8 encoded surrogate in sig", enc(base(sig="ab")).replace(b'sig="ab"', b'sig="a\xed\xa0\x80b"'))
    add("truncated UTF-8 at end", enc(base()) + b"\xe2\x82")
    add("NUL in sig", f'X-Matrix {OP},{KP},sig="ab\x00cd",{DP}')
    add("NUL at end", f'{BASE}\x00')
    add("NUL in origin", f'X-Matrix origin="matrix.org\x00evil.example",{P},{DP}')
    add("SOH in key", f'X-Matrix {OP},key="ed25519:\x01",{SP},{DP}')
    add("DEL in sig", f'X-Matrix {OP},{KP},sig="ab\x7fcd",{DP}')
    add("ESC in destination", f'X-Matrix {OP},{P},destination="fedpin\x1b.example"')
    add("vertical tab before comma", f'X-Matrix origin="{O}"\x0b,{P}')
    add("form feed after origin value", f'X-Matrix origin={O}\x0c,{P}')
    add("CR LF at end (Twisted turns CR/LF into a space or drops it)", f'{BASE}\r\n')
    add("LF inside origin", f'X-Matrix origin="matrix.org\nevil.example",{P},{DP}')
    add("CR inside sig", f'X-Matrix {OP},{KP},sig="ab\rcd",{DP}')
    add("obs-fold style LF SP inside value", f'X-Matrix origin="{O}",\n {P}')
    add("tab inside quoted sig", f'X-Matrix {OP},{KP},sig="ab\tcd",{DP}')
    add("tab around comma", f'X-Matrix origin="{O}"\t,\tkey="{K}",sig="{SIG}"')
    add("NBSP around comma", f'X-Matrix origin="{O}"\u00a0,key="{K}",sig="{SIG}"')
    # ---- escapes ----------------------------------------------------------------------
    add("escaped dot in origin", f'X-Matrix origin="matrix\\.org",{P},{DP}')
    add("escaped quote in key", f'X-Matrix {OP},key="ed25519:a\\"b",{SP},{DP}')
    add("escaped backslash in sig", f'X-Matrix {OP},{KP},sig="ab\\\\cd",{DP}')
    add("escaped comma in sig (split anyway)", f'X-Matrix {OP},{KP},sig="ab\\,cd",{DP}')
    add("escaped final quote: value ends with backslash-quote", f'X-Matrix origin="{O}",key="{K}",sig="{SIG}\\"')
    add("escaped backslash before closing quote", base(sig=SIG + "\\\\"))
    add("backslash in unquoted value", f"X-Matrix origin={O},key=ed25519:a\\b,sig={SIG}")
    add("backslash-escaped letter in origin", f'X-Matrix origin="\\matrix.org",{P},{DP}')
    add("escaped origin smuggling via key", f'X-Matrix origin="{O}",key="a\\",origin=\\"evil.example",sig="{SIG}"')
    add("escaped space in sig", f'X-Matrix {OP},{KP},sig="ab\\ cd",{DP}')
    add("backslash at end of unquoted sig", f"X-Matrix origin={O},key={K},sig={SIG}\\")
    # ---- bad / odd quoting --------------------------------------------------------------
    add("missing closing quote on origin (Synapse drops last char)", f'X-Matrix {P},origin="{O}')
    add("missing closing quote on origin, extra char", f'X-Matrix {P},origin="{O}x')
    add("missing closing quote on sig", f'X-Matrix origin="{O}",key="{K}",sig="{SIG}')
    add("missing closing quote on destination", f'X-Matrix origin="{O}",{P},destination="{D}')
    add("missing opening quote on sig", f'X-Matrix origin="{O}",key="{K}",sig={SIG}"')
    add("quote then junk after closing quote", f'X-Matrix origin="{O}",key="{K}",sig="{SIG}"x')
    add("trailing space after last quoted value", f'{BASE} ')
    add("trailing spaces after last quoted value", f'{BASE}   ')
    add("trailing tab", f'{BASE}\t')
    add("trailing space after unquoted value", f"X-Matrix origin={O},key={K},sig={SIG} ")
    add("value is a lone quote", base(dest=None).replace(f'sig="{SIG}"', 'sig="'))
    add("value is two quotes (empty)", f'X-Matrix {OP},{KP},sig="",{DP}')
    add("value is three quotes", base(dest=None).replace(f'sig="{SIG}"', 'sig="""'))
    add("interior quote in sig", f'X-Matrix {OP},{KP},sig="ab"cd",{DP}')
    add("interior quote in origin", f'X-Matrix origin="matrix"org",{P},{DP}')
    add("single-quoted origin", f"X-Matrix origin='{O}',{P}")
    add("origin quoted twice", f'X-Matrix origin=""{O}"",{P}')
    add("quote on left of key name", f'X-Matrix "origin"="{O}",{P}')
    add("unquoted origin with trailing quote", f'X-Matrix origin={O}",{P}')
    add("origin quoted, key/sig unquoted", f'X-Matrix origin="{O}",key={K},sig={SIG}')
    add("curly quotes around origin", f"X-Matrix origin=\u201c{O}\u201d,{P}")
    # ---- empty and missing ---------------------------------------------------------------
    add("sig missing", f'X-Matrix origin="{O}",key="{K}"')
    add("key missing", f'X-Matrix origin="{O}",sig="{SIG}"')
    add("origin missing", f"X-Matrix {P}")
    add("only destination", f'X-Matrix destination="{D}"')
    add("empty sig unquoted", f'X-Matrix origin="{O}",key="{K}",sig=')
    add("empty key unquoted", f'X-Matrix origin="{O}",key=,sig="{SIG}"')
    add("empty key quoted", f'X-Matrix {OP},key="",{SP},{DP}')
    add("empty origin", f'X-Matrix origin="",{P},{DP}')
    add("empty destination quoted", f'X-Matrix {OP},{P},destination=""')
    add("empty destination unquoted", f'X-Matrix origin="{O}",{P},destination=')
    add("destination unquoted", f'X-Matrix origin="{O}",{P},destination={D}')
    add("destination with port", f'X-Matrix {OP},{P},destination="fedpin.example:8448"')
    add("destination uppercase", f'X-Matrix {OP},{P},destination="FEDPIN.EXAMPLE"')
    add("destination not a server name (Synapse does not validate it)", f'X-Matrix {OP},{P},destination="not a server name"')
    add("destination IPv6", f'X-Matrix {OP},{P},destination="[2001:db8::1]:8448"')
    add("empty parameter name", f'X-Matrix ="x",origin="{O}",{P}')
    # ---- whitespace around = and , ---------------------------------------------------------
    add("space before =", f'X-Matrix origin ="{O}",{P}')
    add("space after =", f'X-Matrix origin= "{O}",{P}')
    add("spaces around =", f'X-Matrix origin = "{O}",{P}')
    add("space before comma", f'X-Matrix origin="{O}" ,{P}')
    add("space after comma", f'X-Matrix origin="{O}", {P}')
    add("spaces both sides of commas", f'X-Matrix origin="{O}" , key="{K}" , sig="{SIG}"')
    add("many spaces after comma", f'X-Matrix origin="{O}",      {P}')
    add("space inside key name", f'X-Matrix ori gin="{O}",{P}')
    add("space inside unquoted origin", f"X-Matrix origin=matrix .org,{P}")
    add("space inside quoted sig", f'X-Matrix {OP},{KP},sig="ab cd",{DP}')
    # ---- commas ---------------------------------------------------------------------------
    add("trailing comma", f'{BASE},')
    add("trailing comma and space", f'{BASE}, ')
    add("leading comma", f'X-Matrix ,{REST}')
    add("double comma", base().replace(",key=", ",,key=", 1))
    add("semicolon separators", base().replace(",", ";"))
    add("parameter without =", f'X-Matrix origin="{O}",flag,{P}')
    add("parameter without = at end", f'{BASE},flag')
    add("unknown parameter", f'{BASE},foo="bar"')
    add("unknown parameter with empty value", f'{BASE},foo=')
    add("many unknown parameters", base() + "".join(f",p{i}={i}" for i in range(40)))
    # ---- = inside values ----------------------------------------------------------------------
    add("== before value", f'X-Matrix origin="{O}",key="{K}",sig=="{SIG}"')
    add("padded base64 sig", base(sig=SIG + "=="))
    add("unquoted padded sig", f"X-Matrix origin={O},key={K},sig={SIG}==")
    add("origin==value", f"X-Matrix origin=={O},{P}")
    add("= inside quoted key", f'X-Matrix {OP},key="ed25519:a=b",{SP},{DP}')
    add("key=value inside unquoted value", f"X-Matrix origin={O},key=ed25519:a=origin=evil.example,sig={SIG}")
    # ---- origin: server-name grammar -----------------------------------------------------------
    for o, why in [
        ("MATRIX.ORG", "uppercase"), ("Matrix.Org", "mixed case"), ("matrix.org.", "trailing dot"),
        ("matrix.org..", "two trailing dots"), (".matrix.org", "leading dot"), ("matrix..org", "empty label"),
        ("matrix.org:8448", "port"), ("matrix.org:0", "port 0"), ("matrix.org:65535", "port 65535"),
        ("matrix.org:65536", "port 65536"), ("matrix.org:99999999999999999999", "huge port"),
        ("matrix.org:-1", "negative port"), ("matrix.org:+8448", "plus-signed port"),
        ("matrix.org: 8448", "space before port (int() strips)"), ("matrix.org:8_448", "underscore in port (int() accepts)"),
        ("matrix.org:08448", "leading zero port"), ("matrix.org:", "empty port"), ("matrix.org:8448:1", "two ports"),
        ("matrix.org:0x10", "hex port"), ("matrix.org.:8448", "trailing dot with port"),
        ("1.2.3.4", "IPv4"), ("1.2.3.4:8448", "IPv4 with port"), ("01.2.3.4", "IPv4 leading zero"),
        ("999.1.1.1", "IPv4 out of range"), ("1.2.3.4.", "IPv4 trailing dot"),
        ("[::1]", "IPv6"), ("[::1]:8448", "IPv6 with port"), ("[0::1]", "IPv6 non-canonical"),
        ("[0:0:0:0:0:0:0:1]", "IPv6 uncompressed"), ("[::FFFF:1.2.3.4]", "IPv6 v4-mapped uppercase"),
        ("[FE80::1]", "IPv6 uppercase"), ("[2001:DB8::1]:8448", "IPv6 uppercase with port"),
        ("[2001:db8:0:0:0:0:0:1]:8448", "IPv6 long form with port"), ("[::01]", "IPv6 leading zero group"),
        ("[::1]]", "IPv6 extra bracket"), ("[::1", "IPv6 unclosed"), ("::1", "IPv6 unbracketed"),
        ("[fe80::1%eth0]", "IPv6 zone"), ("[]", "empty brackets"), ("[::1]:", "IPv6 empty port"),
        ("[1.2.3.4]", "IPv4 in brackets"), ("[::]", "IPv6 unspecified"), ("[::1]:99999", "IPv6 huge port"),
        ("matrix_org", "underscore"), ("-.example", "hyphen label"), ("a-.example", "label ending in hyphen"),
        ("localhost", "single label"), ("123", "numeric single label"), ("a" * 64 + ".example", "64-char label"),
        (".".join(["abcdefghij"] * 30), "300-char name"), ("*.example", "wildcard"), ("matrix.org/x", "slash"),
        ("user@matrix.org", "userinfo"), ("matrix.org#x", "fragment char"), ("matrix%2eorg", "percent-encoded"),
    ]:
        add(f"origin {why}: {o}", base(origin=o))
        if why in ("uppercase", "trailing dot", "port", "IPv6 with port", "IPv6 non-canonical", "IPv6 unbracketed"):
            add(f"origin {why}, unquoted: {o}", f"X-Matrix origin={o},{P}")
    # ---- key / sig values ---------------------------------------------------------------------
    add("key without algorithm", f'X-Matrix {OP},key="a_AbCd",{SP},{DP}')
    add("key with other algorithm", f'X-Matrix {OP},key="curve25519:abc",{SP},{DP}')
    add("key uppercase algorithm", f'X-Matrix {OP},key="ED25519:a_AbCd",{SP},{DP}')
    add("key with colon only", f'X-Matrix {OP},key=":",{SP},{DP}')
    add("sig url-safe base64", base(sig=SIG.replace("+", "-").replace("/", "_")))
    add("sig not base64", f'X-Matrix {OP},{KP},sig="!!!not base64!!!",{DP}')
    add("sig of 10000 chars", base(sig="A" * 10000))
    add("origin of 5000 chars", base(origin="a" * 5000 + ".example"))
    add("header of 20000 bytes (unknown param)", base() + ",pad=" + "x" * 20000)
    add("key of 2000 chars", base(key="ed25519:" + "k" * 2000))
    # ---- shapes real writers use, mixed ------------------------------------------------------
    add("ruma shape with origin quoted needlessly", f'X-Matrix destination={D},key="{K}",origin="{O}",sig={SIG_NOSLASH}')
    add("old Synapse unquoted origin with port", f'X-Matrix origin=example.com:8448,key="{K}",sig="{SIG}"')
    add("old Synapse unquoted IPv6 origin", f'X-Matrix origin=[2001:db8::1]:8448,key="{K}",sig="{SIG}"')
    return c


# The header shapes real writers produce, as (writer, str.format template
# over origin, key, sig and dest); real() writes each for every origin, in
# this order. The ruma shapes (token or quoted values, q() in real()) are
# written once with each of two signatures, one with a '/' and one without.
WRITERS_BEFORE_RUMA = [
    ("synapse>=1.59 build_auth_headers", 'X-Matrix origin="{origin}",key="{key}",sig="{sig}",destination="{dest}"'),
    ("synapse 1.58 (MSC3383, origin unquoted)", 'X-Matrix origin={origin},key="{key}",sig="{sig}",destination="{dest}"'),
    ("synapse<1.58 (no destination, origin unquoted)", 'X-Matrix origin={origin},key="{key}",sig="{sig}"'),
    ("gomatrixserverlib/dendrite fclient request.go", 'X-Matrix origin="{origin}",key="{key}",sig="{sig}",destination="{dest}"'),
    ("gomatrixserverlib before MSC3383 (no destination)", 'X-Matrix origin="{origin}",key="{key}",sig="{sig}"'),
]
RUMA_WRITERS = [
    ("ruma/conduwuit XMatrix Display (2024-06-22+)", "X-Matrix destination={dest},key={key},origin={origin},sig={sig}"),
    ("ruma-server-util encode, token-or-quoted (230a90ef3)", "X-Matrix origin={origin},destination={dest},key={key},sig={sig}"),
]
WRITERS_AFTER_RUMA = [
    ("ruma-server-util encode, all quoted (2022-06..2024-06)", 'X-Matrix origin="{origin}",destination="{dest}",key="{key}",sig="{sig}"'),
    ("ruma-server-util encode, all quoted, no destination", 'X-Matrix origin="{origin}",key="{key}",sig="{sig}"'),
    ("conduwuit send.rs 2024-05..07", 'X-Matrix origin="{origin}",destination="{dest}",key="{key}",sig="{sig}"'),
    ("conduit send.rs before 2024-05 (no destination)", 'X-Matrix origin={origin},key="{key}",sig="{sig}"'),
]


def real():
    """Exact shapes real writers produce; see README.md for the source of each."""
    rng = random.Random(SEED ^ 2)
    origins = ["matrix.org", "example.com:8448", "[2001:db8::1]:8448", "hs1.example", "192.0.2.10:8448"]
    dests = ["fedpin.example", "matrix.org:8448", "[2001:db8::2]"]
    keys = ["ed25519:a_AbCd", "ed25519:auto", "ed25519:0", "ed25519:Bq3kLx"]
    c = []

    def q(v):  # ruma: quote_ascii_string_if_required / escape_value (token or quoted)
        tchar = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
        return v if v and all(ch in tchar for ch in v) else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def add(writer, template, origin, key, sig, dest, quote=lambda v: v):
        values = {"origin": quote(origin), "key": quote(key), "sig": quote(sig), "dest": quote(dest)}
        c.append(case(f"{writer}: {origin}", template.format(**values)))

    for i, origin in enumerate(origins):
        key = keys[i % len(keys)]
        dest = dests[i % len(dests)]
        sigs = [b64(64, rng), SIG_SLASH, SIG_NOSLASH]
        for writer, template in WRITERS_BEFORE_RUMA:
            add(writer, template, origin, key, sigs[0], dest)
        for s in sigs[1:]:
            for writer, template in RUMA_WRITERS:
                add(writer, template, origin, key, s, dest, quote=q)
        for writer, template in WRITERS_AFTER_RUMA:
            add(writer, template, origin, key, sigs[0], dest)
    return c


# ---- combinatorial mutation ------------------------------------------------------------------

ALPHABET = ['"', "\\", ",", "=", " ", "\t", ":", "[", "]", ".", "\u212a", "\x00", "A", "k", "-"]
PARAMS = ["origin", "Origin", "ORIGIN", "key", "KEY", "\u212aey", "sig", "Sig", "destination", "x"]


def parts_of(header: str):
    head, _, rest = header.partition(" ")
    return head, rest.split(",")


def mutate(rng: random.Random, header: str):
    """One or two random edits of a header; returns a list of header strings."""
    head, params = parts_of(header)
    op = rng.randrange(12)
    if op == 0:  # insert a hostile character
        i = rng.randrange(len(header) + 1)
        return [header[:i] + rng.choice(ALPHABET) + header[i:]]
    if op == 1:  # delete a character
        i = rng.randrange(len(header))
        return [header[:i] + header[i + 1:]]
    if op == 2:  # replace a character
        i = rng.randrange(len(header))
        return [header[:i] + rng.choice(ALPHABET) + header[i + 1:]]
    if op == 3:  # duplicate a parameter, maybe with another value and name case
        p = rng.choice(params)
        name, _, value = p.partition("=")
        name = rng.choice([name, name.upper(), name.capitalize()])
        value = rng.choice([value, '"evil.example"', "evil.example", '"ed25519:evil"', '"' + SIG2 + '"'])
        params.insert(rng.randrange(len(params) + 1), f"{name}={value}")
        return [head + " " + ",".join(params)]
    if op == 4:  # drop a parameter
        params.pop(rng.randrange(len(params)))
        return [head + " " + ",".join(params)]
    if op == 5:  # shuffle parameters
        rng.shuffle(params)
        return [head + " " + ",".join(params)]
    if op == 6:  # toggle quotes on one value
        i = rng.randrange(len(params))
        name, _, value = params[i].partition("=")
        value = value[1:-1] if value.startswith('"') and value.endswith('"') else '"' + value + '"'
        params[i] = f"{name}={value}"
        return [head + " " + ",".join(params)]
    if op == 7:  # whitespace around separators
        ws = rng.choice([" ", "  ", "\t", " \t"])
        sep = rng.choice([ws + ",", "," + ws, ws + "," + ws])
        out = head + " " + sep.join(params)
        if rng.random() < 0.3:
            out = out.replace("=", ws + "=", 1)
        return [out]
    if op == 8:  # smuggle a parameter inside a quoted value
        i = rng.randrange(len(params))
        name, _, value = params[i].partition("=")
        inner = rng.choice(PARAMS) + "=" + rng.choice(["evil.example", '"evil.example"', "ed25519:evil"])
        params[i] = f'{name}="{value.strip(chr(34))},{inner}"'
        return [head + " " + ",".join(params)]
    if op == 9:  # split into two headers, or send twice
        other = mutate(rng, header)[0] if rng.random() < 0.5 else header
        return [header, other] if rng.random() < 0.5 else [other, header]
    if op == 10:  # rename the scheme
        scheme = rng.choice(["x-matrix", "X-MATRIX", "X-Matrix ", "X-Matrix\t", "XMatrix", "X-Matrix,"])
        return [scheme + " " + ",".join(params)]
    # op == 11: two edits
    return mutate(rng, mutate(rng, header)[0])


def generated(seeds):
    rng = random.Random(SEED)
    seen, out = set(), []
    while len(out) < 400:
        h = rng.choice(seeds)
        hs = mutate(rng, h)
        k = tuple(hs)
        if k in seen:
            continue
        seen.add(k)
        out.append(case("mutation of: " + h[:60], *hs))
    return out


def main(argv) -> int:
    check = "--check" in argv
    real_cases = real()
    seeds = [bytes.fromhex(x["headers"][0]).decode() for x in real_cases]
    files = {
        "xmatrix_cases.jsonl": render(crafted()),
        "xmatrix_generated.jsonl": render(generated(seeds)),
        "xmatrix_real.jsonl": render(real_cases),
    }
    stale = write_or_check(HERE, files, check)
    if stale:
        print("gen_cases.py: stale (rerun python3 tests/differential/gen_cases.py): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
