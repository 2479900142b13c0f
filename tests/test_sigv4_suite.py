"""Every case of AWS's SigV4 test suite (vendored in tests/data/aws4_testsuite, Apache-2.0).

For each case: the canonical request, string to sign and Authorization computed from the raw
request equal AWS's, and the signed request passes the verifier. Unlike botocore's own runner,
nothing is skipped: the four query-order and space cases botocore skips are asserted present.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import time
from pathlib import Path

import pytest

from gateway.auth.sigv4 import (
    SigV4Error,
    SigV4Request,
    SigV4Verifier,
    canonical_request,
    signing_key,
    string_to_sign,
)

SUITE = Path(__file__).parent / "data" / "aws4_testsuite"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
NOW = calendar.timegm(time.strptime("20150830T123600Z", "%Y%m%dT%H%M%SZ"))
SCOPE = "20150830/us-east-1/service/aws4_request"
CASES = sorted(p.parent for p in SUITE.rglob("*.req"))
BOTOCORE_SKIPS = {
    "get-space",
    "get-vanilla-query-order-key",
    "get-vanilla-query-order-key-case",
    "get-vanilla-query-order-value",
}


def parse_raw(text: str) -> SigV4Request:
    """A raw HTTP/1.1 request of the suite; the path is kept as written (raw)."""
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    method, rest = lines[0].split(" ", 1)
    target = rest.rsplit(" ", 1)[0]
    path, _, query = target.partition("?")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # obs-fold: continues the previous value
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, _, value = line.partition(":")
        headers.append((name, value))
    return SigV4Request(method, path, query, headers, body.encode())


def read(case: Path, ext: str) -> str:
    return (case / f"{case.name}.{ext}").read_text()


def test_the_whole_suite_is_here_including_what_botocore_skips() -> None:
    names = {c.name for c in CASES}
    assert len(CASES) == 34
    assert names >= BOTOCORE_SKIPS
    assert (SUITE / "LICENSE").exists()
    assert (SUITE / "NOTICE").exists()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_canonical_request_string_to_sign_and_signature(case: Path) -> None:
    req = parse_raw(read(case, "req"))
    authz = read(case, "authz").strip()
    signed = authz.split("SignedHeaders=")[1].split(",")[0].split(";")
    expected_creq = read(case, "creq")
    if case.name == "get-vanilla-with-session-token":
        # The .req omits the token header that the .creq signs; take it from there.
        token = expected_creq.split("x-amz-security-token:")[1].split("\n")[0]
        req.headers.append(("X-Amz-Security-Token", token))
    creq = canonical_request(req, signed, hashlib.sha256(req.body).hexdigest())
    assert creq == expected_creq
    sts = string_to_sign("20150830T123600Z", SCOPE, creq)
    assert sts == read(case, "sts")
    key = signing_key(SECRET, "20150830", "us-east-1", "service")
    signature = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    assert authz.endswith(f"Signature={signature}")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_signed_request_is_verified(case: Path) -> None:
    verifier = SigV4Verifier("us-east-1", "service")
    if case.name == "get-vanilla-with-session-token":
        # Known quirk: this .sreq's signature disagrees with its .authz; the .authz is right.
        req = parse_raw(read(case, "sreq"))
        req.headers = [(n, v) for n, v in req.headers if n.lower() != "authorization"]
        req.headers.append(("Authorization", read(case, "authz").strip()))
    else:
        req = parse_raw(read(case, "sreq"))
    if case.name == "post-sts-header-after":
        # The token was added after signing: an unsigned x-amz-* header, which we refuse.
        with pytest.raises(SigV4Error) as exc:
            verifier.parse(req, NOW)
        assert exc.value.code == "HEADERS_NOT_SIGNED"
        assert "x-amz-security-token" in exc.value.message
        return
    auth = verifier.parse(req, NOW)
    verifier.verify(req, auth, SECRET)
    with pytest.raises(SigV4Error) as exc:
        verifier.verify(req, auth, SECRET[:-1] + "X")
    assert exc.value.code == "SIGNATURE_DOES_NOT_MATCH"
