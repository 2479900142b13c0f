"""Every case of AWS's SigV4 test suite (tests/data/aws4_testsuite, Apache-2.0), nothing skipped.

For each case, from the raw .req: the canonical request, string to sign and Authorization header
computed here equal AWS's .creq, .sts and .authz. Then the signed request (.sreq) goes through
SigV4Verifier.parse and verify at the suite's time and scope: accepted, except
post-sts-header-after (its session token is unsigned) which is refused with HEADERS_NOT_SIGNED.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from gateway.auth.sigv4 import (
    SigV4Error,
    SigV4Request,
    SigV4Verifier,
    canonical_request,
    header_map,
    signing_key,
    string_to_sign,
)
from tests.support.sigv4_suite import (
    DATE,
    NOW,
    REGION,
    SCOPE,
    SECRET,
    SERVICE,
    SUITE,
    Case,
    authorization,
    cases,
    header_value,
    parse_raw,
    with_header,
    without_header,
)

CASES = cases()
IDS = [c.name for c in CASES]
BOTOCORE_SKIPS = {
    "get-space",
    "get-vanilla-query-order-key",
    "get-vanilla-query-order-key-case",
    "get-vanilla-query-order-value",
}
SESSION_TOKEN_CASE = "get-vanilla-with-session-token"  # .req lacks the token; .sreq is wrong
TOKEN_AFTER_SIGNING = "post-sts-header-after"  # the token header was added after signing
VERIFIER = SigV4Verifier(REGION, SERVICE)


def test_the_whole_suite_is_parametrised_including_what_botocore_skips() -> None:
    folders = {p.parent.name for p in SUITE.rglob("*.creq")}
    assert set(IDS) == folders
    assert len(IDS) == len(set(IDS)) == 34
    assert set(IDS) >= BOTOCORE_SKIPS
    # the subfolders are recursed into
    assert {"get-slashes", "get-relative-relative", TOKEN_AFTER_SIGNING} <= set(IDS)
    assert {SESSION_TOKEN_CASE, "post-sts-header-before"} <= set(IDS)
    assert (SUITE / "LICENSE").is_file()
    assert (SUITE / "NOTICE").is_file()


def signer_input(case: Case) -> SigV4Request:
    """The request a signer starts from: the .req, plus the session-token header a signer with
    a token adds (the .req of get-vanilla-with-session-token leaves it out; .sreq has it)."""
    req = parse_raw(case.read("req"))
    if case.name == SESSION_TOKEN_CASE:
        token = header_value(parse_raw(case.read("sreq")), "X-Amz-Security-Token")
        assert token
        req.headers.append(("X-Amz-Security-Token", token))
    return req


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_canonical_request_string_to_sign_and_authorization(case: Case) -> None:
    req = signer_input(case)
    # The suite signs every header the request has.
    signed = sorted(header_map(req.headers))
    creq = canonical_request(req, signed, hashlib.sha256(req.body).hexdigest())
    assert creq == case.text("creq")
    sts = string_to_sign(DATE, SCOPE, creq)
    assert sts == case.text("sts")
    key = signing_key(SECRET, DATE[:8], REGION, SERVICE)
    signature = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    assert authorization(signed, signature) == case.text("authz")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_signed_request_is_verified(case: Case) -> None:
    sreq = parse_raw(case.read("sreq"))
    assert header_value(sreq, "Authorization") is not None
    if case.name == TOKEN_AFTER_SIGNING:
        with pytest.raises(SigV4Error) as exc:
            VERIFIER.parse(sreq, NOW)
        assert exc.value.code == "HEADERS_NOT_SIGNED"
        assert exc.value.status == 401
        assert exc.value.message == (
            "There were headers present in the request which were not signed: x-amz-security-token"
        )
        # The signature itself is right: without the token added after signing, it verifies.
        sreq = without_header(sreq, "X-Amz-Security-Token")
    elif case.name == SESSION_TOKEN_CASE:
        # The .sreq carries the wrong signature (get-vanilla's): refused as a mismatch...
        auth = VERIFIER.parse(sreq, NOW)
        with pytest.raises(SigV4Error) as exc:
            VERIFIER.verify(sreq, auth, SECRET)
        assert exc.value.code == "SIGNATURE_DOES_NOT_MATCH"
        # ... and with the right one from .authz, accepted below.
        sreq = with_header(sreq, "Authorization", case.text("authz"))
    else:
        assert header_value(sreq, "Authorization") == case.text("authz")
    auth = VERIFIER.parse(sreq, NOW)
    assert (auth.access_key_id, auth.date, auth.region, auth.service) == (
        "AKIDEXAMPLE",
        DATE,
        REGION,
        SERVICE,
    )
    assert not auth.presigned
    VERIFIER.verify(sreq, auth, SECRET)
    # Each acceptance can fail: another secret, or one byte more of body, is refused.
    with pytest.raises(SigV4Error) as exc:
        VERIFIER.verify(sreq, auth, SECRET[:-1] + "X")
    assert exc.value.code == "SIGNATURE_DOES_NOT_MATCH"
    assert exc.value.extra["canonical_request"].startswith(sreq.method + "\n")
    tampered = SigV4Request(
        sreq.method, sreq.raw_path, sreq.query_string, sreq.headers, sreq.body + b"!"
    )
    with pytest.raises(SigV4Error) as exc:
        VERIFIER.verify(tampered, VERIFIER.parse(tampered, NOW), SECRET)
    assert exc.value.code == "SIGNATURE_DOES_NOT_MATCH"


def test_session_tokens_are_reported() -> None:
    (case,) = [c for c in CASES if c.name == "post-sts-header-before"]
    sreq = parse_raw(case.read("sreq"))
    auth = VERIFIER.parse(sreq, NOW)
    assert auth.session_token == (SUITE / "post-sts-token" / "readme.txt").read_text().split()[-1]
    VERIFIER.verify(sreq, auth, SECRET)


def test_the_suite_outside_its_clock_window_is_refused() -> None:
    sreq = parse_raw(CASES[IDS.index("get-vanilla")].read("sreq"))
    with pytest.raises(SigV4Error) as exc:
        VERIFIER.parse(sreq, NOW + 301)
    assert exc.value.code == "REQUEST_EXPIRED"
    assert exc.value.message == (
        "Signature expired: 20150830T123600Z is now earlier than 20150830T123601Z "
        "(20150830T124101Z - 5 min.)"
    )
