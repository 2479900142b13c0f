"""botocore's SigV4 signer as a ``requests`` auth (for Schemathesis and load generators).

requests-aws4auth cannot sign every header value a fuzzer produces (it splits values with
``shlex``, which raises on an unbalanced quote), so the fuzzing signs with botocore's
``SigV4Auth``, the reference signer, applied to the request exactly as ``requests`` will send it.
"""

from __future__ import annotations

import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


class BotocoreSigV4(requests.auth.AuthBase):
    """Sign each prepared request with botocore's SigV4Auth (header auth)."""

    def __init__(
        self, key: str, secret: str, region: str = "us-east-1", service: str = "execute-api"
    ) -> None:
        self.signer = SigV4Auth(Credentials(key, secret), service, region)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        aws = AWSRequest(method=r.method, url=r.url, data=body, headers=dict(r.headers))
        self.signer.add_auth(aws)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            if name in aws.headers:
                r.headers[name] = aws.headers[name]
        return r
