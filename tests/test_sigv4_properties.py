"""Properties of the SigV4 verifier (hypothesis).

(a) Whatever the path (printable and non-ASCII segments, dot segments, repeated slashes), query
    (arbitrary unicode names and values, repeats), method, body and header white space, a request
    botocore signs is accepted; and one byte more of body is refused.
(b) The canonical query does not depend on the order of the raw pairs, and canonicalising a
    canonical query changes nothing.
(c) Garbage anywhere (Authorization, path, query, header names and values, lone surrogates as
    aiohttp hands over undecodable bytes) makes parse and verify raise SigV4Error and nothing
    else, with messages and extras that JSON can carry.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from unittest import mock
from urllib.parse import urlsplit

import orjson
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode, percent_encode_sequence
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth.sigv4 import SigV4Error, SigV4Request, SigV4Verifier, canonical_query

KEY = "AKIDGATEWAYPROPERTY1"
SECRET = "prop/Secret+Key=0123456789abcdefghijABCD"
REGION, SERVICE = "us-east-1", "execute-api"
HOST = "gw.example.com"
WHEN = dt.datetime(2026, 11, 22, 12, 0, 0)
NOW = float(calendar.timegm(WHEN.timetuple()))
AMZ_DATE = "20261122T120000Z"
V = SigV4Verifier(REGION, SERVICE)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# botocore encodes str with UTF-8, so it cannot sign lone surrogates: no category Cs here.
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
segment = st.one_of(
    text,
    st.sampled_from(["", ".", "..", "...", "a.b", "~x", "%", "+", " ", "\u00e9", "\u1234"]),
)
# What aiohttp can hand over: any text, including the lone surrogates of undecodable bytes.
# (Built from a list of characters: st.text() leaves surrogates out whatever its alphabet.)
anything = st.lists(
    st.one_of(
        st.characters(),
        st.characters(categories=["Cs"]),
        st.sampled_from([*"%=&;,/?#+ \t\r\n.", "\udcff", "\udc80"]),
    ),
    max_size=60,
).map("".join)


def _sign(
    method: str, url: str, body: bytes, headers: dict[str, str], *, presign: bool
) -> SigV4Request:
    req = AWSRequest(method=method, url=url, data=body, headers=headers)
    creds = Credentials(KEY, SECRET)
    signer: SigV4Auth = (
        SigV4QueryAuth(creds, SERVICE, REGION, 300)
        if presign
        else SigV4Auth(creds, SERVICE, REGION)
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=WHEN):
        signer.add_auth(req)
    prepared = req.prepare()
    parts = urlsplit(prepared.url)
    sent = prepared.body or b""
    sent = sent.encode() if isinstance(sent, str) else sent
    wire = [("Host", parts.netloc), *prepared.headers.items()]
    return SigV4Request(method, parts.path, parts.query, wire, sent)


def _json_safe(err: SigV4Error) -> None:
    # The error becomes a JSON body through orjson, which refuses lone surrogates.
    orjson.dumps({"code": err.code, "message": err.message, **err.extra})


# -- (a) real signatures are accepted ---------------------------------------------------------


@SETTINGS
@given(
    segments=st.lists(segment, min_size=1, max_size=5),
    trailing_slash=st.booleans(),
    query=st.lists(st.tuples(text, text), max_size=5),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    body=st.binary(max_size=64),
    header=st.text(st.sampled_from(list("ab ,;\"'\t=")), max_size=16),
)
def test_botocore_signed_requests_are_accepted(
    segments: list[str],
    trailing_slash: bool,
    query: list[tuple[str, str]],
    method: str,
    body: bytes,
    header: str,
) -> None:
    # As botocore's serialisers do: path labels and the query percent-encoded into the URL.
    path = "/" + "/".join(percent_encode(s) for s in segments) + ("/" if trailing_slash else "")
    qs = percent_encode_sequence(query)
    url = f"https://{HOST}{path}" + (f"?{qs}" if qs else "")
    req = _sign(method, url, body, {"X-Custom": header}, presign=False)
    auth = V.parse(req, NOW)
    V.verify(req, auth, SECRET)
    tampered = SigV4Request(req.method, req.raw_path, req.query_string, req.headers, body + b"!")
    with pytest.raises(SigV4Error) as exc:
        V.verify(tampered, V.parse(tampered, NOW), SECRET)
    assert exc.value.code == "SIGNATURE_DOES_NOT_MATCH"


@SETTINGS
@given(
    segments=st.lists(segment, min_size=1, max_size=4),
    query=st.lists(st.tuples(text, text), max_size=4),
)
def test_botocore_presigned_requests_are_accepted(
    segments: list[str], query: list[tuple[str, str]]
) -> None:
    path = "/" + "/".join(percent_encode(s) for s in segments)
    qs = percent_encode_sequence(query)
    url = f"https://{HOST}{path}" + (f"?{qs}" if qs else "")
    req = _sign("GET", url, b"", {}, presign=True)
    auth = V.parse(req, NOW)
    assert auth.presigned
    V.verify(req, auth, SECRET)


# -- (b) query order does not matter ----------------------------------------------------------

raw_pair = st.tuples(anything.filter(lambda s: "&" not in s), st.booleans(), anything).map(
    lambda t: f"{t[0]}={t[2].replace('&', '')}" if t[1] else t[0]
)


@settings(max_examples=500, deadline=None)
@given(pairs=st.lists(raw_pair, max_size=8), rnd=st.randoms(use_true_random=False))
def test_canonical_query_ignores_pair_order_and_is_idempotent(pairs: list[str], rnd) -> None:
    canonical = canonical_query("&".join(pairs))
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    assert canonical_query("&".join(shuffled)) == canonical
    assert canonical_query(canonical) == canonical
    assert re.fullmatch(r"[A-Za-z0-9\-_.~%=&]*", canonical)


# -- (c) garbage raises SigV4Error and nothing else -------------------------------------------

auth_param = st.tuples(
    st.sampled_from(["Credential", "SignedHeaders", "Signature", "", "X"]),
    st.sampled_from(["=", ""]),
    st.one_of(
        anything,
        st.just(f"{KEY}/20261122/{REGION}/{SERVICE}/aws4_request"),
        st.just("host;x-amz-date"),
        st.just("0" * 64),
    ),
).map("".join)
authorization = st.one_of(
    anything,
    st.lists(auth_param, max_size=4).map(lambda ps: "AWS4-HMAC-SHA256 " + ", ".join(ps)),
)
headers = st.lists(
    st.tuples(
        st.one_of(anything, st.sampled_from(["X-Amz-Date", "Date", "X-Amz-Content-SHA256"])),
        st.one_of(anything, st.just(AMZ_DATE)),
    ),
    max_size=5,
)
presign_param = st.tuples(
    st.sampled_from(
        [
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Date",
            "X-Amz-Expires",
            "X-Amz-SignedHeaders",
            "X-Amz-Signature",
            "X-Amz-Security-Token",
        ]
    ),
    st.one_of(
        anything,
        st.sampled_from(
            [
                "AWS4-HMAC-SHA256",
                f"{KEY}%2F20261122%2F{REGION}%2F{SERVICE}%2Faws4_request",
                AMZ_DATE,
                "300",
                "99999999999999",
                "host",
                "0" * 64,
            ]
        ),
    ),
).map(lambda t: f"{t[0]}={t[1]}")


def _only_sigv4_errors(req: SigV4Request) -> None:
    try:
        auth = V.parse(req, NOW)
    except SigV4Error as exc:
        _json_safe(exc)
        return
    try:
        V.verify(req, auth, SECRET)
    except SigV4Error as exc:
        _json_safe(exc)


@SETTINGS
@given(
    method=st.one_of(st.sampled_from(["GET", "POST"]), anything),
    auth=authorization,
    path=anything,
    query=anything,
    extra=headers,
    body=st.binary(max_size=16),
)
def test_garbage_header_auth_raises_only_sigv4_errors(
    method: str, auth: str, path: str, query: str, extra: list, body: bytes
) -> None:
    _only_sigv4_errors(SigV4Request(method, path, query, [*extra, ("Authorization", auth)], body))


@SETTINGS
@given(params=st.lists(presign_param, max_size=8), path=anything, query=anything, extra=headers)
def test_garbage_presigned_auth_raises_only_sigv4_errors(
    params: list[str], path: str, query: str, extra: list
) -> None:
    qs = "&".join(["X-Amz-Algorithm=AWS4-HMAC-SHA256", *params, query])
    _only_sigv4_errors(SigV4Request("GET", path, qs, [("Host", HOST), *extra], b""))


@SETTINGS
@given(path=anything, query=anything, name=anything, value=anything, body=st.binary(max_size=16))
def test_well_formed_auth_over_garbage_reaches_verify_and_is_a_mismatch(
    path: str, query: str, name: str, value: str, body: bytes
) -> None:
    # A structurally valid header auth, so that verify() canonicalises the garbage itself.
    auth = (
        f"AWS4-HMAC-SHA256 Credential={KEY}/20261122/{REGION}/{SERVICE}/aws4_request, "
        f"SignedHeaders=host;x-amz-date;x-garbage, Signature={'0' * 64}"
    )
    req = SigV4Request(
        "POST",
        path,
        query,
        [
            ("Host", HOST),
            ("X-Amz-Date", AMZ_DATE),
            ("X-Garbage", value),
            ("X-Garbage-" + name, value),
            ("Authorization", auth),
        ],
        body,
    )
    parsed = V.parse(req, NOW)  # nothing here for parse to object to
    with pytest.raises(SigV4Error) as exc:
        V.verify(req, parsed, SECRET)
    assert exc.value.code == "SIGNATURE_DOES_NOT_MATCH"
    _json_safe(exc.value)
