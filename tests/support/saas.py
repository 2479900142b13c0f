"""Helpers of the SaaS integration tests: capture what a vendor's own SDK sends, compare it
with what the gateway sends, and run the delivery engine against a vendor fake.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from tests.support.delivery_rig import Rig
from tests.support.receiver import Answer, Received, Receiver


async def sdk_capture(
    call: Callable[[str], Any], answer: Callable[[Received], Answer] | None = None
) -> list[Received]:
    """Run a blocking SDK call, given the capture server's base URL, in a thread; return the
    requests it made. The server answers ``answer`` (a 200 JSON object by default)."""
    rec = await Receiver(answer).start()
    try:
        await asyncio.to_thread(call, rec.url)
    finally:
        await rec.stop()
    assert rec.requests, "the SDK made no request"
    return rec.requests


def auth_scheme(headers: dict[str, str], api_key_header: str | None = None) -> tuple[str, str]:
    """``(scheme, credential)`` of a request: the Authorization header's scheme and its
    decoded value (basic auth decoded to ``user:password``), or ``(header name, value)``
    for an API-key header."""
    lower = {k.lower(): v for k, v in headers.items()}
    if api_key_header is not None:
        return api_key_header.lower(), lower.get(api_key_header.lower(), "")
    value = lower.get("authorization", "")
    scheme, _, cred = value.partition(" ")
    if scheme.lower() == "basic":
        cred = base64.b64decode(cred).decode()
    return scheme.lower(), cred


def call_of(
    r: Received, api_key_header: str | None = None
) -> tuple[str, str, dict[str, list[str]], tuple[str, str], Any]:
    """What makes two requests the same call: method, path, query, auth, JSON body as data."""
    parts = urlsplit(r.path)
    return (
        r.method,
        parts.path,
        parse_qs(parts.query),
        auth_scheme(r.headers, api_key_header),
        orjson.loads(r.body) if r.body else None,
    )


async def engine_requests(
    tmp_path: Path,
    entry: str,
    records: list[dict[str, Any]],
    answer: Callable[[Received], Answer] | None = None,
    *,
    integration: str = "saas",
    url_key: str = "{url}",
) -> tuple[list[Received], list[Any]]:
    """Deliver ``records`` through the real delivery engine to a capture server (the entry's
    ``{url}`` is its base URL) in one batch; return the requests and the settled deliveries."""
    rec = await Receiver(answer).start()
    rig = await Rig.create(tmp_path, [entry.replace(url_key, rec.url)], start=False)
    try:
        ids = []
        for data in records:
            ids += await rig.add([integration], data)
        await rig.engine.start()
        done = await rig.wait_settled(ids)
    finally:
        await rig.close()
        await rec.stop()
    return rec.requests, done
