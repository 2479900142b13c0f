"""Outbound authentication of the http type, checked where it arrives: a real local receiver.

Bearer, basic and API-key headers; OAuth2 client credentials against a local token endpoint
(fetched once and cached, refreshed once on a 401, a refused client makes deliveries dead);
Standard Webhooks signatures verified with the published algorithm, written here; SigV4
verified with the project's own verifier. Secrets come from ``${ENV}`` references, set before
the mapping loads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway.auth.sigv4 import SigV4Error, SigV4Request, SigV4Verifier
from gateway.store.base import DeliveryState
from tests.support.delivery_rig import Rig
from tests.support.receiver import Answer, Received, Receiver

FAST_RETRY: dict[str, Any] = {"base": "20ms", "cap": "100ms", "max_attempts": 30}


def entry(
    name: str,
    connection: dict[str, Any],
    *,
    fields: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> str:
    """An http mapping entry, written as JSON (a YAML flow mapping)."""
    spec: dict[str, Any] = {
        "name": name,
        "type": "http",
        "connection": connection,
        "fields": fields if fields is not None else {"email": "email", "n": "n"},
        "options": {"retry": FAST_RETRY, **(options or {})},
    }
    return "- " + orjson.dumps(spec).decode() + "\n"


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, any case."""
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


class RawReceiver(Receiver):
    """A Receiver that also keeps what a signature covers: the raw path and query and the
    headers as they came, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[SigV4Request] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path, _, query = request.raw_path.partition("?")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        self.raw.append(SigV4Request(request.method, path, query, headers, await request.read()))
        return await super()._handle(request)


@pytest.fixture
async def receiver() -> AsyncIterator[RawReceiver]:
    r = await RawReceiver().start()
    yield r
    await r.stop()


async def deliver(rig: Rig, n: int, integration: str = "hook") -> list[Any]:
    ids = [d for _ in range(n) for d in await rig.add([integration])]
    return await rig.wait_settled(ids)


# -- static credentials -----------------------------------------------------------------------


async def test_bearer_token_arrives(
    tmp_path: Path, receiver: RawReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_TEST_BEARER", "s3cr3t-bearer.token")
    auth = {"type": "bearer", "token": "${GW_TEST_BEARER}"}
    rig = await Rig.create(tmp_path, [entry("hook", {"url": receiver.url, "auth": auth})])
    try:
        done = await deliver(rig, 2)
        assert {d.state for d in done} == {DeliveryState.DELIVERED}
        assert [header(r.headers, "Authorization") for r in receiver.requests] == [
            "Bearer s3cr3t-bearer.token"
        ] * 2
    finally:
        await rig.close()


async def test_basic_credentials_arrive(
    tmp_path: Path, receiver: RawReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "pa:ss wörd"  # a colon and non-ASCII: RFC 7617 (UTF-8), split at the first ':'
    monkeypatch.setenv("GW_TEST_BASIC_PASSWORD", password)
    auth = {"type": "basic", "username": "svc-user", "password": "${GW_TEST_BASIC_PASSWORD}"}
    rig = await Rig.create(tmp_path, [entry("hook", {"url": receiver.url, "auth": auth})])
    try:
        done = await deliver(rig, 1)
        assert {d.state for d in done} == {DeliveryState.DELIVERED}
        value = header(receiver.requests[0].headers, "Authorization")
        assert value is not None
        scheme, _, encoded = value.partition(" ")
        assert scheme == "Basic"
        user, _, got = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        assert (user, got) == ("svc-user", password)
    finally:
        await rig.close()


@pytest.mark.parametrize("name", [None, "X-Api-Token"])
async def test_api_key_header_arrives(
    tmp_path: Path, receiver: RawReceiver, monkeypatch: pytest.MonkeyPatch, name: str | None
) -> None:
    monkeypatch.setenv("GW_TEST_API_KEY", "key-0123456789")
    auth: dict[str, Any] = {"type": "api_key", "value": "${GW_TEST_API_KEY}"}
    if name:
        auth["header"] = name
    rig = await Rig.create(tmp_path, [entry("hook", {"url": receiver.url, "auth": auth})])
    try:
        done = await deliver(rig, 1)
        assert {d.state for d in done} == {DeliveryState.DELIVERED}
        got = receiver.requests[0].headers
        assert header(got, name or "X-API-Key") == "key-0123456789"
        assert header(got, "Authorization") is None
    finally:
        await rig.close()


# -- OAuth2 client credentials ----------------------------------------------------------------

CLIENT_ID = "gateway-client"
CLIENT_SECRET = "client-s3cret/+="


class TokenEndpoint:
    """A client-credentials token endpoint (RFC 6749 4.4, client auth by HTTP Basic):
    counts fetches, issues tok-1, tok-2, ..."""

    def __init__(self) -> None:
        self.fetches = 0
        self.issued: list[str] = []
        self.forms: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> TokenEndpoint:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/oauth/token"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        self.fetches += 1
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append(form)
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        creds = base64.b64decode(encoded).decode() if scheme == "Basic" else ""
        if creds != f"{CLIENT_ID}:{CLIENT_SECRET}":
            return web.json_response(
                {"error": "invalid_client", "error_description": "client authentication failed"},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="token"'},
            )
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": 3600},
            headers={"Cache-Control": "no-store"},
        )


@pytest.fixture
async def token_endpoint() -> AsyncIterator[TokenEndpoint]:
    t = await TokenEndpoint().start()
    yield t
    await t.stop()


def oauth2_entry(url: str, token_url: str, **options: Any) -> str:
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": token_url,
        "client_id": CLIENT_ID,
        "client_secret": "${GW_TEST_CLIENT_SECRET}",
    }
    return entry("hook", {"url": url, "auth": auth}, options=options)


def accept_issued_tokens(endpoint: TokenEndpoint, revoked: set[str]) -> Any:
    """An API that accepts the endpoint's tokens unless revoked; 401 otherwise."""

    def answer(r: Received) -> Answer:
        value = header(r.headers, "Authorization") or ""
        token = value.removeprefix("Bearer ")
        if token not in endpoint.issued or token in revoked:
            return Answer(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return Answer(200)

    return answer


async def test_oauth2_token_is_fetched_once_and_cached(
    tmp_path: Path,
    receiver: RawReceiver,
    token_endpoint: TokenEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GW_TEST_CLIENT_SECRET", CLIENT_SECRET)
    receiver.answer = accept_issued_tokens(token_endpoint, set())
    rig = await Rig.create(
        tmp_path, [oauth2_entry(receiver.url, token_endpoint.url, concurrency=8)], start=False
    )
    try:
        ids = [d for _ in range(20) for d in await rig.add(["hook"])]
        await rig.engine.start()  # 20 due at once: 8 requests want a token together
        done = await rig.wait_settled(ids)
        assert {d.state for d in done} == {DeliveryState.DELIVERED}
        more = await deliver(rig, 5)
        assert {d.state for d in more} == {DeliveryState.DELIVERED}
        assert token_endpoint.fetches == 1
        assert token_endpoint.forms == [{"grant_type": "client_credentials"}]
        assert {header(r.headers, "Authorization") for r in receiver.seen} == {"Bearer tok-1"}
        assert len(receiver.seen) == 25
    finally:
        await rig.close()


async def test_oauth2_401_refreshes_the_token_once_and_delivers(
    tmp_path: Path,
    receiver: RawReceiver,
    token_endpoint: TokenEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GW_TEST_CLIENT_SECRET", CLIENT_SECRET)
    revoked: set[str] = set()
    receiver.answer = accept_issued_tokens(token_endpoint, revoked)
    rig = await Rig.create(
        tmp_path, [oauth2_entry(receiver.url, token_endpoint.url, concurrency=1)]
    )
    try:
        [first] = await deliver(rig, 1)
        assert first.state == DeliveryState.DELIVERED
        revoked.add("tok-1")  # the API refuses the cached token from now on
        [second] = await deliver(rig, 1)
        assert second.state == DeliveryState.DELIVERED
        assert second.attempts == 1  # the refresh and the second try are one attempt
        assert token_endpoint.fetches == 2
        assert [(header(r.headers, "Authorization"), r.json()["n"]) for r in receiver.seen] == [
            ("Bearer tok-1", 1),
            ("Bearer tok-1", 2),  # 401
            ("Bearer tok-2", 2),
        ]
        later = await deliver(rig, 3)
        assert {d.state for d in later} == {DeliveryState.DELIVERED}
        assert token_endpoint.fetches == 2
    finally:
        await rig.close()


async def test_oauth2_concurrent_401s_refresh_the_token_once(
    tmp_path: Path,
    receiver: RawReceiver,
    token_endpoint: TokenEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GW_TEST_CLIENT_SECRET", CLIENT_SECRET)
    revoked: set[str] = set()
    api = accept_issued_tokens(token_endpoint, revoked)

    def answer(r: Received) -> Answer:
        a = api(r)
        # The refusals of requests sent together come back a little apart.
        a.delay = 0.01 * (len(receiver.seen) % 8)
        return a

    receiver.answer = answer
    rig = await Rig.create(
        tmp_path, [oauth2_entry(receiver.url, token_endpoint.url, concurrency=8)], start=False
    )
    try:
        revoked.add("tok-1")  # the first token is refused: every request of the first round
        ids = [d for _ in range(8) for d in await rig.add(["hook"])]
        await rig.engine.start()
        done = await rig.wait_settled(ids)
        assert {d.state for d in done} == {DeliveryState.DELIVERED}
        assert token_endpoint.fetches == 2, token_endpoint.issued
    finally:
        await rig.close()


async def test_oauth2_invalid_client_makes_deliveries_dead(
    tmp_path: Path,
    receiver: RawReceiver,
    token_endpoint: TokenEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GW_TEST_CLIENT_SECRET", "not-the-secret")
    rig = await Rig.create(tmp_path, [oauth2_entry(receiver.url, token_endpoint.url)])
    try:
        done = await deliver(rig, 3)
        assert {d.state for d in done} == {DeliveryState.DEAD}
        for d in done:
            assert d.attempts == 1
            assert d.last_error is not None
            assert "HTTP 401" in d.last_error
            assert "invalid_client" in d.last_error
            assert "not-the-secret" not in d.last_error
        assert receiver.seen == []  # nothing went out without a token
        assert token_endpoint.issued == []
    finally:
        await rig.close()


# -- Standard Webhooks ------------------------------------------------------------------------


def verify_standard_webhook(
    secret: str, headers: Mapping[str, str], body: bytes, now: float, tolerance: float = 300
) -> bool:
    """Standard Webhooks verification (https://www.standardwebhooks.com, written from the
    spec): HMAC-SHA256 of ``{webhook-id}.{webhook-timestamp}.{body}`` keyed with the
    base64-decoded secret after ``whsec_``; ``webhook-signature`` holds space-separated
    ``v1,<base64>`` signatures; the timestamp must be near now."""
    msg_id = header(headers, "webhook-id")
    timestamp = header(headers, "webhook-timestamp")
    signatures = header(headers, "webhook-signature")
    if not msg_id or not timestamp or not signatures:
        return False
    if abs(now - int(timestamp)) > tolerance:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for sig in signatures.split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


async def test_standard_webhooks_signature_verifies_at_the_receiver(
    tmp_path: Path, receiver: RawReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("GW_TEST_WEBHOOK_SECRET", secret)
    answers = iter([Answer(503)])
    receiver.answer = lambda r: next(answers, Answer(204, body=b""))
    auth = {"type": "standard_webhooks", "secret": "${GW_TEST_WEBHOOK_SECRET}"}
    rig = await Rig.create(
        tmp_path,
        [entry("hook", {"url": receiver.url, "auth": auth}, options={"concurrency": 1})],
    )
    try:
        ids = [d for _ in range(3) for d in await rig.add(["hook"])]
        done = await rig.wait_settled(ids)
        assert {d.state for d in done} == {DeliveryState.DELIVERED}
        assert len(receiver.seen) == 4  # one 503, retried
        for r in receiver.seen:
            assert verify_standard_webhook(secret, r.headers, r.body, time.time()), r.headers
            # The message id is the delivery's, the same on every try (dedup at the receiver).
            assert header(r.headers, "webhook-id") == header(r.headers, "Idempotency-Key")
        assert sorted({header(r.headers, "webhook-id") for r in receiver.seen}) == sorted(ids)
        # The check itself refuses what it should: another body, another secret, old times.
        r = receiver.seen[0]
        assert not verify_standard_webhook(secret, r.headers, r.body + b" ", time.time())
        other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        assert not verify_standard_webhook(other, r.headers, r.body, time.time())
        assert not verify_standard_webhook(secret, r.headers, r.body, time.time() + 3600)
    finally:
        await rig.close()


# -- SigV4 ------------------------------------------------------------------------------------

ACCESS_KEY_ID = "AKIDGATEWAYOUTBOUND1"
SECRET_ACCESS_KEY = "out/Secret+Key=0123456789abcdefghijABCDEFGH"
REGION, SERVICE = "eu-north-1", "execute-api"


@pytest.mark.parametrize("session_token", [None, "FwoGZXIvYXdzEXAMPLE//token+with/slashes=="])
async def test_sigv4_signature_verifies_at_the_receiver(
    tmp_path: Path,
    receiver: RawReceiver,
    monkeypatch: pytest.MonkeyPatch,
    session_token: str | None,
) -> None:
    monkeypatch.setenv("GW_TEST_AWS_SECRET", SECRET_ACCESS_KEY)
    auth: dict[str, Any] = {
        "type": "sigv4",
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": "${GW_TEST_AWS_SECRET}",
        "region": REGION,
        "service": SERVICE,
    }
    if session_token:
        monkeypatch.setenv("GW_TEST_AWS_TOKEN", session_token)
        auth["session_token"] = "${GW_TEST_AWS_TOKEN}"
    # A path with a placeholder: the value is percent-encoded, which the signature covers.
    url = receiver.url + "/prod/signups/{email}"
    rig = await Rig.create(tmp_path, [entry("hook", {"url": url, "auth": auth})])
    try:
        done = [
            *await rig.wait_settled(await rig.add(["hook"], {"email": "a b@example.com", "n": 1})),
            *await rig.wait_settled(await rig.add(["hook"], {"email": "c/d@example.com", "n": 2})),
        ]
        assert {d.state for d in done} == {DeliveryState.DELIVERED}
        verifier = SigV4Verifier(REGION, SERVICE)
        assert [r.raw_path for r in receiver.raw] == [
            "/prod/signups/a%20b%40example.com",
            "/prod/signups/c%2Fd%40example.com",
        ]
        for req in receiver.raw:
            parsed = verifier.parse(req, time.time())
            assert parsed.access_key_id == ACCESS_KEY_ID
            assert parsed.session_token == session_token
            assert {"host", "x-amz-date", "content-type"} <= set(parsed.signed_headers)
            verifier.verify(req, parsed, SECRET_ACCESS_KEY)
            # ... and the verifier is not one that accepts anything.
            with pytest.raises(SigV4Error):
                verifier.verify(req, parsed, "x" + SECRET_ACCESS_KEY[1:])
            tampered = SigV4Request(
                req.method, req.raw_path, req.query_string, list(req.headers), req.body + b" "
            )
            with pytest.raises(SigV4Error):
                verifier.verify(tampered, verifier.parse(tampered, time.time()), SECRET_ACCESS_KEY)
    finally:
        await rig.close()
