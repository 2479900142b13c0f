"""The SigV4 verifier against real signers (no server), and every refusal with its code.

Signers: botocore's SigV4Auth and SigV4QueryAuth (an AWSRequest, signed, then prepared to get the
real URL, headers and body) and requests-aws4auth (a prepared requests.Request). What a server
would receive is rebuilt from the prepared request: the URL's raw path and query, a Host header
(which the HTTP client adds), the headers, and a few unsigned headers clients add after signing.
Time is pinned, so the clock-skew edges are exact.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import hmac
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import orjson
import pytest
import requests
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from requests_aws4auth import AWS4Auth

from gateway.auth.sigv4 import (
    MAX_PRESIGNED_EXPIRES,
    SigningKeyCache,
    SigV4Error,
    SigV4Request,
    SigV4Verifier,
    canonical_path,
    canonical_query,
    canonical_request,
    signing_key,
    string_to_sign,
)
from tests.support.sigv4_suite import header_value, with_header, without_header

KEY = "AKIDGATEWAYTEST00001"
SECRET = "gw/Secret+Key=0123456789abcdefghijABCDEFGH"  # '/', '+', '=' as real secrets have
OTHER_SECRET = "xx/Secret+Key=0123456789abcdefghijABCDEFGH"
TOKEN = "FwoGZXIvYXdzEXAMPLE//token+with/slashes=="
REGION, SERVICE = "eu-north-1", "execute-api"
HOST = "gw.example.com"
URL = f"https://{HOST}/v1/records"
BODY = b'{"group_key": "demo", "data": {"email": "a@example.com", "n": 1}}'
JSON = {"Content-Type": "application/json"}
WHEN = dt.datetime(2026, 11, 22, 12, 0, 0)  # naive UTC, as botocore's clock returns it
NOW = float(calendar.timegm(WHEN.timetuple()))
AMZ_DATE = "20261122T120000Z"
V = SigV4Verifier(REGION, SERVICE)


# -- signing with real signers ----------------------------------------------------------------


def wire(method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> SigV4Request:
    """What the server receives for a prepared request."""
    parts = urlsplit(url)
    sent = [("Host", parts.netloc), *headers, ("User-Agent", "test/1.0"), ("Accept", "*/*")]
    return SigV4Request(method, parts.path or "/", parts.query, sent, body)


def botocore(
    method: str = "POST",
    url: str = URL,
    body: bytes = BODY,
    headers: dict[str, str] | None = None,
    *,
    when: dt.datetime = WHEN,
    region: str = REGION,
    service: str = SERVICE,
    secret: str = SECRET,
    token: str | None = None,
    presign: bool = False,
    expires: int = 300,
    context: dict[str, Any] | None = None,
    signer_class: type[SigV4Auth] = SigV4Auth,
) -> SigV4Request:
    """A request signed by botocore at ``when``: header auth, or presigned (query auth)."""
    req = AWSRequest(
        method=method, url=url, data=body, headers=JSON if headers is None else headers
    )
    req.context.update(context or {})
    creds = Credentials(KEY, secret, token)
    signer = (
        SigV4QueryAuth(creds, service, region, expires=expires)
        if presign
        else signer_class(creds, service, region)
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        signer.add_auth(req)
    prepared = req.prepare()
    sent = prepared.body or b""
    sent = sent.encode() if isinstance(sent, str) else sent
    return wire(method, prepared.url, list(prepared.headers.items()), sent)


def aws4auth(
    method: str = "POST",
    url: str = URL,
    body: bytes = BODY,
    *,
    params: dict[str, str] | None = None,
    token: str | None = None,
) -> SigV4Request:
    """A request signed by requests-aws4auth (at AMZ_DATE: it signs a given X-Amz-Date)."""
    headers = {**JSON, "X-Amz-Date": AMZ_DATE}
    prepared = requests.Request(method, url, data=body, headers=headers, params=params).prepare()
    AWS4Auth(KEY, SECRET, REGION, SERVICE, session_token=token)(prepared)
    assert prepared.url is not None
    sent = prepared.body if isinstance(prepared.body, bytes) else b""
    return wire(method, prepared.url, list(prepared.headers.items()), sent)


def accept(req: SigV4Request, now: float = NOW, verifier: SigV4Verifier = V) -> None:
    """Parse and verify; fail the test on any refusal."""
    verifier.verify(req, verifier.parse(req, now), SECRET)


def refusal(
    req: SigV4Request, now: float = NOW, secret: str = SECRET, verifier: SigV4Verifier = V
) -> SigV4Error:
    """The SigV4Error that parse or verify raises (the test fails if neither does)."""
    with pytest.raises(SigV4Error) as exc:
        verifier.verify(req, verifier.parse(req, now), secret)
    return exc.value


def with_body(req: SigV4Request, body: bytes) -> SigV4Request:
    return SigV4Request(req.method, req.raw_path, req.query_string, list(req.headers), body)


def with_query(req: SigV4Request, query_string: str) -> SigV4Request:
    return SigV4Request(req.method, req.raw_path, query_string, list(req.headers), req.body)


def authorization_of(req: SigV4Request) -> str:
    value = header_value(req, "Authorization")
    assert value is not None
    return value


def with_authorization(req: SigV4Request, value: str) -> SigV4Request:
    return with_header(req, "Authorization", value)


# -- real signers are accepted ----------------------------------------------------------------


def test_botocore_header_auth_is_accepted() -> None:
    req = botocore()
    assert header_value(req, "X-Amz-Date") == AMZ_DATE
    auth = V.parse(req, NOW)
    assert (auth.access_key_id, auth.date, auth.scope_date) == (KEY, AMZ_DATE, AMZ_DATE[:8])
    assert (auth.region, auth.service, auth.presigned, auth.session_token) == (
        REGION,
        SERVICE,
        False,
        None,
    )
    assert auth.signed_headers == ["content-type", "host", "x-amz-date"]
    V.verify(req, auth, SECRET)


def test_botocore_get_with_query_and_encoded_path_is_accepted() -> None:
    # A botocore client percent-encodes path labels and the query; the signer encodes the path
    # once more: this request's canonical path is /v1/records/a%2520b%252Fc.
    url = f"{URL}/{quote('a b/c', safe='')}?b=2&a=1&a=0&empty=&sp=%20x%2By~"
    req = botocore("GET", url, b"", {})
    assert req.raw_path == "/v1/records/a%20b%2Fc"
    assert canonical_path(req.raw_path) == "/v1/records/a%2520b%252Fc"
    accept(req)


def test_botocore_with_session_token_is_accepted_and_reports_the_token() -> None:
    req = botocore(token=TOKEN)
    auth = V.parse(req, NOW)
    assert auth.session_token == TOKEN
    assert "x-amz-security-token" in auth.signed_headers
    V.verify(req, auth, SECRET)


def test_botocore_with_a_date_header_instead_of_x_amz_date_is_accepted() -> None:
    # botocore signs a request that has a Date header with Date (RFC 2822), not X-Amz-Date.
    req = botocore(headers={**JSON, "Date": "placeholder"})
    assert header_value(req, "X-Amz-Date") is None
    assert header_value(req, "Date") == "Sun, 22 Nov 2026 12:00:00 -0000"
    auth = V.parse(req, NOW)
    assert auth.date == AMZ_DATE
    V.verify(req, auth, SECRET)
    # and a Date header that is no date at all is refused
    bad = with_header(req, "Date", "yesterday")
    assert refusal(bad).message == (
        "Date must be in ISO-8601 'basic format'. Got 'yesterday'. "
        "See http://en.wikipedia.org/wiki/ISO_8601"
    )


@pytest.mark.parametrize(
    "value",
    [
        "1 Jan 99999999999999999999 00:00:00 GMT",  # timegm: OverflowError
        "1 Jan 9999999999 00:00:00 GMT",  # timegm: OverflowError (another one)
        "1 Jan 10000 00:00:00 GMT",  # timegm: ValueError
        "31 Dec 9999 23:59:59 -2359",  # past the last date strftime can write
        "Thu, 01 Jan 1970 00:00:00 +0001",  # before the epoch
        "30 \udcff 2026 12:00:00 GMT",
        "",
    ],
)
def test_odd_date_headers_are_incomplete_signatures(value: str) -> None:
    req = without_header(botocore(headers={**JSON, "Date": "placeholder"}), "Date")
    err = refusal(with_header(req, "Date", value))
    assert err.code == "INCOMPLETE_SIGNATURE"
    orjson.dumps(err.message)  # printable, even with the undecodable byte


def test_botocore_presigned_get_is_accepted() -> None:
    req = botocore("GET", f"{URL}/rec_1?x=1&b=%20c", b"", {}, presign=True)
    assert "X-Amz-Signature=" in req.query_string
    assert header_value(req, "Authorization") is None
    auth = V.parse(req, NOW)
    assert auth.presigned
    assert auth.signed_headers == ["host"]
    V.verify(req, auth, SECRET)


def test_botocore_presigned_post_moves_the_body_into_the_query_and_is_accepted() -> None:
    # SigV4QueryAuth moves a (JSON or form) body into the query string and sends no body.
    req = botocore(body=b'{"group_key": "demo", "a": "x y"}', presign=True)
    assert req.body == b""
    assert "group_key=demo" in req.query_string
    assert "a=x%20y" in req.query_string
    accept(req)
    # the payload hash is that of the empty body: a body sent along is a mismatch
    assert refusal(with_body(req, BODY)).code == "SIGNATURE_DOES_NOT_MATCH"


def test_botocore_presigned_with_session_token_is_accepted() -> None:
    req = botocore("GET", URL, b"", {}, presign=True, token=TOKEN)
    auth = V.parse(req, NOW)
    assert auth.session_token == TOKEN
    V.verify(req, auth, SECRET)


def test_requests_aws4auth_is_accepted() -> None:
    req = aws4auth()
    # requests-aws4auth always sends x-amz-content-sha256, signed
    assert header_value(req, "x-amz-content-sha256") == hashlib.sha256(BODY).hexdigest()
    auth = V.parse(req, NOW)
    assert "x-amz-content-sha256" in auth.signed_headers
    V.verify(req, auth, SECRET)


def test_requests_aws4auth_get_with_params_and_token_is_accepted() -> None:
    req = aws4auth("GET", f"{URL}/rec_1", b"", params={"b": "2", "a": "1~x"}, token=TOKEN)
    auth = V.parse(req, NOW)
    assert auth.session_token == TOKEN
    V.verify(req, auth, SECRET)


def test_requests_aws4auth_spaces_in_params_are_refused_as_aws_would() -> None:
    # requests encodes a space in params as '+', and requests-aws4auth then signs that '+' as a
    # space (%20). SigV4 reads '+' as a literal plus (%2B), as AWS does: a mismatch. Producers
    # using requests must encode spaces as %20 in the URL themselves.
    req = aws4auth("GET", URL, b"", params={"q": "a b"})
    assert req.query_string == "q=a+b"
    err = refusal(req)
    assert err.code == "SIGNATURE_DOES_NOT_MATCH"
    assert "\nq=a%2Bb\n" in err.extra["canonical_request"]
    accept(aws4auth("GET", f"{URL}?q=a%20b", b""))


# -- refusals, one by one ---------------------------------------------------------------------


def test_no_authentication_at_all() -> None:
    for req in (
        without_header(botocore(), "Authorization"),
        with_authorization(botocore(), ""),
        SigV4Request("GET", "/", "X-Amz-Signature=abc", [("Host", HOST)], b""),
    ):
        err = refusal(req)
        assert (err.status, err.code, err.message) == (
            401,
            "MISSING_AUTHENTICATION_TOKEN",
            "Missing Authentication Token",
        )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "AWS4-HMAC-SHA256",
            "Authorization header requires 'Credential' parameter. Authorization header requires "
            "'SignedHeaders' parameter. Authorization header requires 'Signature' parameter.",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20261122/eu-north-1/execute-api/aws4_request",
            "Authorization header requires 'SignedHeaders' parameter. Authorization header "
            "requires 'Signature' parameter.",
        ),
        ("AWS4-HMAC-SHA256 garbage", "Invalid key=value pair (missing equal-sign)"),
        ("AWS4-HMAC-SHA256 Credential=, SignedHeaders=host, Signature=", "'Credential' parameter"),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20261122/eu-north-1, SignedHeaders=host;x-amz-date"
            ", Signature=" + "a" * 64,
            "the Credential is mal-formed",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID//eu-north-1/execute-api/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=" + "a" * 64,
            "the Credential is mal-formed",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20261122/eu-north-1/execute-api/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=abc",
            "Signature should be 64 hexadecimal characters",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20261122/eu-north-1/execute-api/aws4_request, "
            "SignedHeaders=Host;X-Amz-Date, Signature=" + "a" * 64,
            "SignedHeaders must be lower-case header names",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20261122/eu-north-1/execute-api/aws4_request, "
            "SignedHeaders=host;;x-amz-date, Signature=" + "a" * 64,
            "SignedHeaders must be lower-case header names",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20261122/eu-north-1/execute-api/aws4_request, "
            "Credential=AKID/20261122/eu-north-1/execute-api/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=" + "a" * 64,
            "'Credential' more than once",
        ),
    ],
)
def test_garbled_authorization_is_an_incomplete_signature(value: str, message: str) -> None:
    err = refusal(with_authorization(botocore(), value))
    assert (err.status, err.code) == (401, "INCOMPLETE_SIGNATURE")
    assert message in err.message


def test_missing_date_is_an_incomplete_signature() -> None:
    err = refusal(without_header(botocore(), "X-Amz-Date"))
    assert err.code == "INCOMPLETE_SIGNATURE"
    assert err.message == (
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
        f"Authorization={authorization_of(botocore())}"
    )


@pytest.mark.parametrize("date", ["2026-11-22T12:00:00Z", "20261122T120000", "20261322T120000Z"])
def test_malformed_x_amz_date_is_an_incomplete_signature(date: str) -> None:
    err = refusal(with_header(botocore(), "X-Amz-Date", date))
    assert err.code == "INCOMPLETE_SIGNATURE"
    assert err.message.startswith(f"Date must be in ISO-8601 'basic format'. Got '{date}'.")


@pytest.mark.parametrize(
    "value",
    ["Basic dXNlcjpwYXNz", "Bearer abc", "AWS4-HMAC-SHA512 Credential=x", "AWS4-ECDSA-P256-SHA256"],
)
def test_other_algorithms_are_unsupported(value: str) -> None:
    err = refusal(with_authorization(botocore(), value))
    assert (err.status, err.code) == (401, "UNSUPPORTED_ALGORITHM")
    assert err.message == (
        "The authorization mechanism you have provided is not supported. Please use "
        "AWS4-HMAC-SHA256."
    )


def test_wrong_secret_is_a_mismatch_that_explains_without_the_secret() -> None:
    req = botocore()
    err = refusal(req, secret=OTHER_SECRET)
    assert (err.status, err.code) == (401, "SIGNATURE_DOES_NOT_MATCH")
    assert err.message == (
        "The request signature we calculated does not match the signature you provided. Check "
        "your AWS Secret Access Key and signing method. Consult the service documentation for "
        "details."
    )
    assert set(err.extra) == {"canonical_request", "string_to_sign"}
    creq = err.extra["canonical_request"]
    assert creq == (
        "POST\n/v1/records\n\ncontent-type:application/json\nhost:gw.example.com\n"
        f"x-amz-date:{AMZ_DATE}\n\ncontent-type;host;x-amz-date\n"
        + hashlib.sha256(BODY).hexdigest()
    )
    assert err.extra["string_to_sign"] == (
        f"AWS4-HMAC-SHA256\n{AMZ_DATE}\n20261122/{REGION}/{SERVICE}/aws4_request\n"
        + hashlib.sha256(creq.encode()).hexdigest()
    )
    # Neither secret, nor a signing key derived from either, appears anywhere in the error.
    everything = " ".join([repr(err), str(err), repr(err.args), repr(err.extra)])
    for secret in (SECRET, OTHER_SECRET):
        assert secret not in everything
        key = signing_key(secret, "20261122", REGION, SERVICE)
        assert key.hex() not in everything
        assert repr(key) not in everything


def test_body_changed_after_signing_is_a_mismatch() -> None:
    req = botocore()
    assert refusal(with_body(req, BODY.replace(b"a@", b"b@"))).code == "SIGNATURE_DOES_NOT_MATCH"
    assert refusal(with_body(req, b"")).code == "SIGNATURE_DOES_NOT_MATCH"


def test_signed_header_changed_or_dropped_is_a_mismatch() -> None:
    req = botocore(headers={**JSON, "X-Custom": "a  b"})
    accept(with_header(req, "X-Custom", " a b "))  # same canonical value: still good
    for changed in (
        with_header(req, "X-Custom", "a c"),
        with_header(req, "Content-Type", "text/plain"),
        with_header(req, "Host", "evil.example.com"),
        without_header(req, "X-Custom"),
        with_query(req, "extra=1"),
        SigV4Request("PUT", req.raw_path, req.query_string, req.headers, req.body),
        SigV4Request("POST", "/v1/records/", req.query_string, req.headers, req.body),
    ):
        assert refusal(changed).code == "SIGNATURE_DOES_NOT_MATCH"
    # an unsigned, non-x-amz header may be added or changed freely
    accept(with_header(req, "User-Agent", "other"))


def test_unsigned_x_amz_headers_are_refused() -> None:
    err = refusal(with_header(botocore(), "X-Amz-Foo", "bar"))
    assert (err.status, err.code) == (401, "HEADERS_NOT_SIGNED")
    assert (
        err.message == "There were headers present in the request which were not signed: x-amz-foo"
    )
    # a session token added after signing, as in the suite's post-sts-header-after
    err = refusal(with_header(botocore(), "X-Amz-Security-Token", TOKEN))
    assert err.message.endswith("not signed: x-amz-security-token")


def test_unsigned_content_sha256_is_accepted_only_when_it_matches_the_body() -> None:
    req = botocore()
    accept(with_header(req, "X-Amz-Content-SHA256", hashlib.sha256(BODY).hexdigest()))
    err = refusal(with_header(req, "X-Amz-Content-SHA256", hashlib.sha256(b"x").hexdigest()))
    assert (err.status, err.code) == (400, "CONTENT_SHA256_MISMATCH")
    assert err.message == (
        "The provided 'x-amz-content-sha256' header does not match what was computed."
    )


def test_signed_content_sha256_that_does_not_match_the_body_is_refused() -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    req = botocore(headers={**JSON, "X-Amz-Content-SHA256": wrong})  # botocore signs it as given
    assert refusal(req).code == "CONTENT_SHA256_MISMATCH"


def test_unsigned_payload_is_refused() -> None:
    # botocore signs UNSIGNED-PAYLOAD over https when payload signing is off
    req = botocore(context={"payload_signing_enabled": False})
    assert header_value(req, "X-Amz-Content-SHA256") == "UNSIGNED-PAYLOAD"
    err = refusal(req)
    assert (err.status, err.code) == (400, "UNSIGNED_PAYLOAD_NOT_ACCEPTED")
    streaming = with_header(
        botocore(), "X-Amz-Content-SHA256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    )
    assert refusal(streaming).code == "UNSIGNED_PAYLOAD_NOT_ACCEPTED"


@pytest.mark.parametrize(
    ("offset", "code", "message"),
    [
        (300, None, None),  # signed 5 minutes ago: still good
        (-300, None, None),  # signed 5 minutes ahead of our clock: still good
        (
            301,
            "REQUEST_EXPIRED",
            "Signature expired: 20261122T120000Z is now earlier than 20261122T120001Z "
            "(20261122T120501Z - 5 min.)",
        ),
        (
            -301,
            "REQUEST_NOT_YET_VALID",
            "Signature not yet current: 20261122T120000Z is still later than 20261122T115959Z "
            "(20261122T115459Z + 5 min.)",
        ),
    ],
)
def test_clock_skew_edges(offset: int, code: str | None, message: str | None) -> None:
    req = botocore()
    if code is None:
        accept(req, now=NOW + offset)
    else:
        err = refusal(req, now=NOW + offset)
        assert (err.status, err.code, err.message) == (401, code, message)


def test_clock_skew_is_configurable() -> None:
    strict = SigV4Verifier(REGION, SERVICE, clock_skew=60)
    accept(botocore(), now=NOW + 60, verifier=strict)
    err = refusal(botocore(), now=NOW + 61, verifier=strict)
    assert err.message.endswith("(20261122T120101Z - 1 min.)")


def test_presigned_expiry_edges() -> None:
    req = botocore("GET", URL, b"", {}, presign=True, expires=300)
    accept(req, now=NOW + 300)
    err = refusal(req, now=NOW + 301)
    assert (err.status, err.code) == (401, "REQUEST_EXPIRED")
    assert err.message == (
        "Request has expired: X-Amz-Date 20261122T120000Z + X-Amz-Expires 300 s = "
        "20261122T120500Z is now earlier than 20261122T120501Z."
    )
    accept(req, now=NOW - 300)
    assert refusal(req, now=NOW - 301).code == "REQUEST_NOT_YET_VALID"


def test_presigned_expires_at_most_a_week() -> None:
    week = botocore("GET", URL, b"", {}, presign=True, expires=MAX_PRESIGNED_EXPIRES)
    accept(week, now=NOW + MAX_PRESIGNED_EXPIRES)
    assert refusal(week, now=NOW + MAX_PRESIGNED_EXPIRES + 1).code == "REQUEST_EXPIRED"
    longer = botocore("GET", URL, b"", {}, presign=True, expires=MAX_PRESIGNED_EXPIRES + 1)
    err = refusal(longer)
    assert (err.status, err.code) == (400, "AUTHORIZATION_QUERY_PARAMETERS_ERROR")
    assert err.message == "X-Amz-Expires must be less than a week (in seconds) that is 604800"


@pytest.mark.parametrize(
    ("replace", "by", "code", "message"),
    [
        ("X-Amz-Expires=300", "X-Amz-Expires=soon", 400, "X-Amz-Expires should be a number"),
        ("X-Amz-Expires=300", "X-Amz-Expires=-1", 400, "X-Amz-Expires must be non-negative"),
        ("X-Amz-Expires=300&", "", 401, "AWS query-string parameters must include"),
        (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Algorithm=AWS4-HMAC-SHA1",
            401,
            "only supports",
        ),
        ("X-Amz-Date=20261122T120000Z", "X-Amz-Date=2026", 401, "ISO8601 Long Format"),
        ("X-Amz-Expires=300", "X-Amz-Expires=300&X-Amz-Expires=1", 401, "only once"),
    ],
)
def test_malformed_presigned_parameters(replace: str, by: str, code: int, message: str) -> None:
    req = botocore("GET", URL, b"", {}, presign=True)
    assert replace in req.query_string
    err = refusal(with_query(req, req.query_string.replace(replace, by)))
    assert err.status == code
    assert message in err.message


def test_both_header_and_query_auth_is_refused() -> None:
    presigned = botocore("GET", URL, b"", {}, presign=True)
    both = with_authorization(presigned, authorization_of(botocore("GET", URL, b"", {})))
    err = refusal(both)
    assert (err.status, err.code) == (400, "INVALID_ARGUMENT")


def test_wrong_region_service_scope_date_and_terminator() -> None:
    err = refusal(botocore(region="eu-west-1"))
    assert (err.code, err.message) == (
        "INVALID_CREDENTIAL_SCOPE",
        "Credential should be scoped to a valid region, not 'eu-west-1'.",
    )
    err = refusal(botocore(service="lambda"))
    assert (err.code, err.message) == (
        "INVALID_CREDENTIAL_SCOPE",
        "Credential should be scoped to correct service: 'execute-api'.",
    )
    auth = authorization_of(botocore())
    err = refusal(with_authorization(botocore(), auth.replace("/20261122/", "/20261121/")))
    assert (err.code, err.message) == (
        "INVALID_CREDENTIAL_SCOPE",
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
        "HTTP: '20261121' != '20261122', from '20261122T120000Z'.",
    )
    err = refusal(with_authorization(botocore(), auth.replace("aws4_request", "aws5_request")))
    assert (err.code, err.message) == (
        "INVALID_CREDENTIAL_SCOPE",
        "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws5_request'.",
    )
    # the same checks hold for presigned requests
    assert refusal(botocore("GET", URL, b"", {}, presign=True, region="eu-west-1")).code == (
        "INVALID_CREDENTIAL_SCOPE"
    )


def test_scope_date_and_request_date_differ_around_midnight() -> None:
    # Signed at 23:59:59: a request dated just after midnight with yesterday's scope is refused.
    req = botocore(when=dt.datetime(2026, 11, 22, 23, 59, 59))
    late = with_header(req, "X-Amz-Date", "20261123T000000Z")
    err = refusal(late, now=NOW + 12 * 3600)
    assert "'20261122' != '20261123'" in err.message


class _NoHostSigV4Auth(SigV4Auth):
    """botocore's signer, told not to sign Host: a correct signature over the rest."""

    def headers_to_sign(self, request: AWSRequest) -> Any:
        headers = super().headers_to_sign(request)
        del headers["host"]
        return headers


def test_host_must_be_signed() -> None:
    req = botocore(signer_class=_NoHostSigV4Auth)
    assert "SignedHeaders=content-type;x-amz-date," in authorization_of(req)
    err = refusal(req)
    assert (err.status, err.code, err.message) == (
        401,
        "HEADERS_NOT_SIGNED",
        "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
    )


def test_date_header_must_be_signed_when_it_is_the_request_date() -> None:
    req = botocore(headers={**JSON, "Date": "placeholder"})
    auth = authorization_of(req).replace(
        "SignedHeaders=content-type;date;host", "SignedHeaders=content-type;host"
    )
    err = refusal(with_authorization(req, auth))
    assert (err.code, err.message) == (
        "HEADERS_NOT_SIGNED",
        "There were headers present in the request which were not signed: date",
    )


def test_uppercase_hex_signature_is_accepted() -> None:
    req = botocore()
    auth = authorization_of(req)
    signature = auth.rsplit("Signature=", 1)[1]
    accept(with_authorization(req, auth.replace(signature, signature.upper())))


# -- signing keys -----------------------------------------------------------------------------


def test_signing_key_matches_aws_documented_example() -> None:
    # AWS's documentation derives this key for the example secret on 20120215 / us-east-1 / iam.
    key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_signing_key_is_cached_per_secret_date_region_and_service() -> None:
    a = signing_key(SECRET, "20261122", REGION, SERVICE)
    assert signing_key(SECRET, "20261122", REGION, SERVICE) is a
    others = [
        signing_key(SECRET, "20261123", REGION, SERVICE),
        signing_key(OTHER_SECRET, "20261122", REGION, SERVICE),
        signing_key(SECRET, "20261122", "us-east-1", SERVICE),
        signing_key(SECRET, "20261122", REGION, "lambda"),
    ]
    assert len({a, *others}) == 5
    manual = hmac.new(b"AWS4" + SECRET.encode(), b"20261122", hashlib.sha256).digest()
    for part in (REGION, SERVICE, "aws4_request"):
        manual = hmac.new(manual, part.encode(), hashlib.sha256).digest()
    assert a == manual


def test_signing_key_cache_is_lru_and_does_not_hold_the_secret() -> None:
    cache = SigningKeyCache(2)
    k1 = cache.get(SECRET, "20261121", REGION, SERVICE)
    k2 = cache.get(SECRET, "20261122", REGION, SERVICE)
    assert cache.get(SECRET, "20261121", REGION, SERVICE) is k1  # k1 is now the most recent
    cache.get(SECRET, "20261123", REGION, SERVICE)  # evicts k2, the least recently used
    assert len(cache) == 2
    assert cache.get(SECRET, "20261121", REGION, SERVICE) is k1
    assert cache.get(SECRET, "20261122", REGION, SERVICE) is not k2
    assert cache.get(SECRET, "20261122", REGION, SERVICE) == k2
    entries = repr(cache._entries)
    assert SECRET not in entries
    assert hashlib.sha256(SECRET.encode()).digest().hex() not in repr(
        [k[0].hex() for k in cache._entries]
    )
    # no caching at all with size 0, and the key is the same
    assert SigningKeyCache(0).get(SECRET, "20261121", REGION, SERVICE) == k1


def test_the_verifier_uses_its_own_sized_cache() -> None:
    verifier = SigV4Verifier(REGION, SERVICE, cache_size=1)
    accept(botocore(), verifier=verifier)
    accept(botocore(when=WHEN + dt.timedelta(days=1)), now=NOW + 86400, verifier=verifier)
    assert len(verifier._keys) == 1


# -- canonicalisation details -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", "/"),
        ("/", "/"),
        ("//", "/"),
        ("/a//b///c/", "/a/b/c/"),
        ("/a/./b/../c", "/a/c"),
        ("/a/b/..", "/a"),  # as botocore: no trailing slash kept after '..'
        ("/../..", "/"),
        ("/%E1%88%B4", "/%25E1%2588%25B4"),  # encoded once more
        ("/\u1234", "/%E1%88%B4"),  # raw UTF-8 on the wire
        ("/\udcff", "/%FF"),  # a raw non-UTF-8 byte, as aiohttp hands it over
        ("/a b/$x+y=z", "/a%20b/%24x%2By%3Dz"),
        ("/-._~", "/-._~"),
    ],
)
def test_canonical_path(raw: str, canonical: str) -> None:
    assert canonical_path(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", ""),
        ("b=2&a=1", "a=1&b=2"),
        ("a=2&a=1&a=10", "a=1&a=10&a=2"),
        ("a+b=c+d", "a%2Bb=c%2Bd"),  # '+' is a plus, not a space
        ("a%20b=%7e", "a%20b=~"),
        ("k=%e1%88%b4", "k=%E1%88%B4"),
        ("k=%FF", "k=%FF"),  # not UTF-8: stays the byte it was
        ("k=%zz", "k=%25zz"),
        ("flag&k=", "flag=&k="),
        ("a=1&&b=2&", "a=1&b=2"),
        ("k=a=b", "k=a%3Db"),
        ("k=\u1234", "k=%E1%88%B4"),
        ("k=\udcff", "k=%FF"),
    ],
)
def test_canonical_query(raw: str, canonical: str) -> None:
    assert canonical_query(raw) == canonical


def test_canonical_query_drops_only_the_signature_when_presigned() -> None:
    raw = "X-Amz-Signature=abc&X-Amz-Date=1&x=1"
    assert canonical_query(raw, drop_signature=True) == "X-Amz-Date=1&x=1"
    assert canonical_query(raw) == "X-Amz-Date=1&X-Amz-Signature=abc&x=1"


def test_repeated_and_folded_headers_canonicalise_like_the_suite() -> None:
    # signed by hand with the primitives, checked through the verifier
    req = SigV4Request(
        "GET",
        "/",
        "",
        [
            ("Host", HOST),
            ("X-Amz-Date", AMZ_DATE),
            ("My-Header", "b"),
            ("my-header", "  a \t folded\r\n  value "),
        ],
        b"",
    )
    signed = ["host", "my-header", "x-amz-date"]
    creq = canonical_request(req, signed, hashlib.sha256(b"").hexdigest())
    assert "\nmy-header:b,a folded value\n" in creq
    sts = string_to_sign(AMZ_DATE, f"20261122/{REGION}/{SERVICE}/aws4_request", creq)
    signature = hmac.new(
        signing_key(SECRET, "20261122", REGION, SERVICE), sts.encode(), hashlib.sha256
    ).hexdigest()
    value = (
        f"AWS4-HMAC-SHA256 Credential={KEY}/20261122/{REGION}/{SERVICE}/aws4_request, "
        f"SignedHeaders={';'.join(signed)}, Signature={signature}"
    )
    accept(with_header(req, "Authorization", value))
    # the order of repeated headers is signed
    swapped = SigV4Request(
        "GET", "/", "", [req.headers[0], req.headers[1], req.headers[3], req.headers[2]], b""
    )
    assert refusal(with_header(swapped, "Authorization", value)).code == (
        "SIGNATURE_DOES_NOT_MATCH"
    )


def test_verify_rehashes_a_body_it_was_not_shown() -> None:
    # parse() hashes the body once for verify(); a different body object is hashed again.
    req = botocore()
    auth = V.parse(req, NOW)
    with pytest.raises(SigV4Error) as exc:
        V.verify(with_body(req, BODY + b" "), auth, SECRET)
    assert exc.value.code == "SIGNATURE_DOES_NOT_MATCH"
    V.verify(with_body(req, bytes(bytearray(BODY))), auth, SECRET)
