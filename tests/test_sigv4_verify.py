"""The verifier against real signers (no server) and its refusals, one by one."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import time
from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from requests_aws4auth import AWS4Auth

from gateway.auth.sigv4 import (
    SigV4Error,
    SigV4Request,
    SigV4Verifier,
    canonical_query,
    signing_key,
)
from tests.signing import sign

KEY, SECRET = "AKGWTESTTESTTESTTEST", "s" * 40
URL = "https://gw.example.com/v1/records"
BODY = b'{"group_key": "demo", "data": {"a": 1}}'
JSON = {"Content-Type": "application/json"}
V = SigV4Verifier("us-east-1", "execute-api")


def as_request(method: str, url: str, headers: dict[str, str], body: bytes = b"") -> SigV4Request:
    parts = urlsplit(url)
    hdrs = [("Host", parts.netloc), *headers.items()]
    return SigV4Request(method, parts.path or "/", parts.query, hdrs, body)


def signed(method: str = "POST", url: str = URL, body: bytes = BODY, headers=None, **kw):
    signed_url, h = sign(
        method, url, body, {**JSON, **(headers or {})}, key=KEY, secret=SECRET, **kw
    )
    return as_request(method, signed_url, h, body)


def check(req: SigV4Request, now: float | None = None, secret: str = SECRET) -> None:
    auth = V.parse(req, time.time() if now is None else now)
    V.verify(req, auth, secret)


def code_of(req: SigV4Request, **kw) -> str:
    with pytest.raises(SigV4Error) as exc:
        check(req, **kw)
    return exc.value.code


def test_botocore_header_and_presigned_requests_verify() -> None:
    check(signed())
    check(signed("GET", URL + "/rec_1?x=1&b=%20c", b"", presign=True))


def test_requests_aws4auth_verifies() -> None:
    prepared = requests.Request("POST", URL, data=BODY, headers=JSON).prepare()
    AWS4Auth(KEY, SECRET, "us-east-1", "execute-api")(prepared)
    check(as_request("POST", prepared.url, dict(prepared.headers), BODY))


def with_header(req: SigV4Request, name: str, value: str) -> SigV4Request:
    hdrs = [(n, v) for n, v in req.headers if n.lower() != name.lower()]
    return SigV4Request(
        req.method, req.raw_path, req.query_string, [*hdrs, (name, value)], req.body
    )


def test_refusals_by_code() -> None:
    req = signed(headers={"X-Custom": "a"})
    assert code_of(req, secret="t" * 40) == "SIGNATURE_DOES_NOT_MATCH"
    tampered = SigV4Request(req.method, req.raw_path, req.query_string, req.headers, BODY + b" ")
    assert code_of(tampered) == "SIGNATURE_DOES_NOT_MATCH"
    assert code_of(with_header(req, "X-Custom", "b")) == "SIGNATURE_DOES_NOT_MATCH"
    assert code_of(with_header(req, "X-Amz-Foo", "bar")) == "HEADERS_NOT_SIGNED"
    assert (
        code_of(with_header(req, "Authorization", "AWS4-HMAC-SHA256 x")) == "INCOMPLETE_SIGNATURE"
    )
    assert code_of(with_header(req, "Authorization", "Basic abc")) == "UNSUPPORTED_ALGORITHM"
    no_auth = SigV4Request("POST", "/", "", [("Host", "h")], b"")
    assert code_of(no_auth) == "MISSING_AUTHENTICATION_TOKEN"
    auth = dict(req.headers)["Authorization"]
    no_date = SigV4Request(
        "POST", req.raw_path, "", [(n, v) for n, v in req.headers if n != "X-Amz-Date"], BODY
    )
    with pytest.raises(SigV4Error, match="'X-Amz-Date' or a 'Date' header"):
        check(no_date)
    bad_term = with_header(req, "Authorization", auth.replace("aws4_request", "aws5_request"))
    assert code_of(bad_term) == "INVALID_CREDENTIAL_SCOPE"
    unsigned_host = with_header(req, "Authorization", auth.replace("host;", ""))
    assert code_of(unsigned_host) == "HEADERS_NOT_SIGNED"


def test_mismatch_explains_without_the_secret() -> None:
    with pytest.raises(SigV4Error) as exc:
        check(signed(), secret="t" * 40)
    extra = exc.value.extra
    assert extra["canonical_request"].startswith(
        "POST\n/v1/records\n\ncontent-type:application/json\n"
    )
    assert extra["string_to_sign"].startswith("AWS4-HMAC-SHA256\n")
    assert SECRET not in repr(extra)
    assert "t" * 40 not in repr(extra)


def test_content_sha256_unsigned_is_tolerated_only_when_it_matches() -> None:
    req = signed()
    good = with_header(req, "X-Amz-Content-SHA256", hashlib.sha256(BODY).hexdigest())
    check(good)
    assert code_of(with_header(req, "X-Amz-Content-SHA256", "0" * 64)) == "CONTENT_SHA256_MISMATCH"
    assert code_of(with_header(req, "X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD")) == (
        "UNSIGNED_PAYLOAD_NOT_ACCEPTED"
    )


@pytest.mark.parametrize(
    ("offset", "code"),
    [(-299, None), (299, None), (-301, "REQUEST_EXPIRED"), (301, "REQUEST_NOT_YET_VALID")],
)
def test_clock_skew_edges(offset: int, code: str | None) -> None:
    now = time.time()
    when = dt.datetime.fromtimestamp(now + offset, dt.UTC)
    req = signed(when=when)
    if code is None:
        check(req, now=now)
    else:
        assert code_of(req, now=now) == code


def test_presigned_expiry() -> None:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=400)
    req = signed("GET", URL, b"", presign=True, when=when)  # expires after 300 s
    assert code_of(req) == "REQUEST_EXPIRED"


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"region": "eu-west-1"}, "valid region, not 'eu-west-1'"),
        ({"service": "s3"}, "correct service: 'execute-api'"),
    ],
)
def test_scope_errors_use_aws_wording(kw: dict, fragment: str) -> None:
    with pytest.raises(SigV4Error) as exc:
        check(signed(**kw))
    assert exc.value.code == "INVALID_CREDENTIAL_SCOPE"
    assert fragment in exc.value.message


def test_signing_key_is_cached_per_date() -> None:
    a = signing_key(SECRET, "20261122", "us-east-1", "execute-api")
    assert signing_key(SECRET, "20261122", "us-east-1", "execute-api") is a
    assert signing_key(SECRET, "20261123", "us-east-1", "execute-api") != a


segment = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
params = st.lists(st.tuples(st.text(min_size=1, max_size=6), st.text(max_size=6)), max_size=4)


@settings(max_examples=150, deadline=None)
@given(st.lists(segment, min_size=1, max_size=4), params)
def test_any_path_and_query_signed_by_botocore_verifies(segments: list[str], query: list) -> None:
    from urllib.parse import quote, urlencode

    path = "/" + "/".join(quote(s, safe="") for s in segments)
    qs = urlencode(query, quote_via=quote)
    url = f"https://gw.example.com{path}" + (f"?{qs}" if qs else "")
    check(signed("GET", url, b""))


@given(params, st.randoms())
def test_query_canonicalisation_ignores_order(query: list, rnd) -> None:
    from urllib.parse import quote

    pairs = [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query]
    shuffled = pairs[:]
    rnd.shuffle(shuffled)
    assert canonical_query("&".join(pairs)) == canonical_query("&".join(shuffled))


@given(
    st.text(max_size=300),
    st.text(max_size=40),
    st.text(max_size=40),
    st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=5),
)
def test_garbage_raises_only_sigv4_errors(auth: str, path: str, query: str, headers: list) -> None:
    req = SigV4Request("POST", path, query, [*headers, ("Authorization", auth)], b"x")
    with contextlib.suppress(SigV4Error):
        check(req)
    presigned = SigV4Request("GET", path, "X-Amz-Algorithm=AWS4-HMAC-SHA256&" + query, headers, b"")
    with contextlib.suppress(SigV4Error):
        check(presigned)
