"""``gateway send``: one record, signed with botocore's SigV4 as a producer would."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from gateway.cli.common import add_settings_flags, print_json, settings_of

if TYPE_CHECKING:
    from gateway.cli.common import SubParsers


def cmd_send(args: argparse.Namespace) -> int:
    """Sign a record with botocore's SigV4 and print the gateway's answer."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        print(f"error: --data is not valid JSON: {exc}", file=sys.stderr)
        return 2
    access = args.access_key or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = args.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        print(
            "error: no credentials: give --access-key and --secret-key, or set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            file=sys.stderr,
        )
        return 2
    settings = settings_of(args)
    url = args.url.rstrip("/")
    if not url.endswith("/v1/records"):
        url += "/v1/records"
    body = json.dumps({"group_key": args.group, "data": data}).encode()
    headers = {"Content-Type": "application/json"}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    req = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(Credentials(access, secret), settings.service, settings.region).add_auth(req)
    prepared = req.prepare()
    http_req = urllib.request.Request(
        prepared.url, data=body, headers=dict(prepared.headers.items()), method="POST"
    )
    try:
        with urllib.request.urlopen(http_req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    try:
        answer: Any = json.loads(raw)
    except ValueError:
        answer = raw.decode("utf-8", "replace")
    if args.json:
        print_json({"status": status, "body": answer})
    else:
        print(f"HTTP {status}")
        print_json(answer)
    return 0 if 200 <= status < 300 else 1


def add_parsers(sub: SubParsers) -> None:
    """``gateway send``."""
    send = sub.add_parser("send", help="send one signed record and print the answer")
    send.add_argument(
        "--url", required=True, help="the gateway's base URL, e.g. http://127.0.0.1:8080"
    )
    send.add_argument("--group", required=True, help="the record's group key")
    send.add_argument("--data", required=True, help="the record's data as a JSON object")
    send.add_argument("--access-key", help="access key id [AWS_ACCESS_KEY_ID]")
    send.add_argument("--secret-key", help="secret access key [AWS_SECRET_ACCESS_KEY]")
    send.add_argument("--idempotency-key", help="send an Idempotency-Key header")
    send.add_argument("--json", action="store_true", help="print JSON: {status, body}")
    add_settings_flags(send, ["region", "service"])
    send.set_defaults(func=cmd_send)
