"""Signing test requests with botocore's SigV4 signer, at a chosen time if asked."""

from __future__ import annotations

import datetime as dt
from unittest import mock

from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def sign(
    method: str,
    url: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    key: str,
    secret: str,
    region: str = "us-east-1",
    service: str = "execute-api",
    when: dt.datetime | None = None,
    presign: bool = False,
) -> tuple[str, dict[str, str]]:
    """The URL and headers of a request signed by botocore (header auth, or presigned)."""
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    creds = Credentials(key, secret)
    signer = (
        SigV4QueryAuth(creds, service, region, expires=300)
        if presign
        else SigV4Auth(creds, service, region)
    )
    if when is None:
        signer.add_auth(req)
    else:
        naive = when.astimezone(dt.UTC).replace(tzinfo=None)
        with mock.patch("botocore.auth.get_current_datetime", return_value=naive):
            signer.add_auth(req)
    prepared = req.prepare()
    return prepared.url, dict(prepared.headers.items())
