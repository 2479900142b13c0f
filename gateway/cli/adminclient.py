"""The HTTP client of a running gateway's admin API, for ``gateway deliveries`` and ``status``.

It finds the gateway from ``--url`` / ``GATEWAY_URL`` (else ``GATEWAY_HOST`` and
``GATEWAY_PORT``) and sends ``GATEWAY_ADMIN_TOKEN`` (or ``--admin-token``) as the bearer token.
An error answer is printed as its envelope's code and message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from gateway.config import load_settings


class CliFailure(Exception):
    """A command failed: print ``message`` lines to stderr and exit with ``code``."""

    def __init__(self, code: int, *lines: str) -> None:
        super().__init__(lines[0] if lines else "")
        self.code = code
        self.lines = lines


class AdminClient:
    """Calls the admin API of a running gateway (``--url``, ``--admin-token``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        url = args.url or os.environ.get("GATEWAY_URL")
        if not url:
            s = load_settings({})
            host = "127.0.0.1" if s.host in ("0.0.0.0", "") else s.host
            host = "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
            url = f"http://{host}:{s.port}"
        if not url.startswith(("http://", "https://")):
            raise CliFailure(
                2,
                f"error: the gateway's URL must be http(s)://HOST:PORT, not {url!r} "
                "(--url or GATEWAY_URL)",
            )
        self.url = url.rstrip("/")
        token = args.admin_token or os.environ.get("GATEWAY_ADMIN_TOKEN")
        if not token:
            raise CliFailure(
                2,
                "error: no admin token: set GATEWAY_ADMIN_TOKEN to the token the gateway runs "
                "with (or give --admin-token)",
            )
        self.token = token

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        """The JSON answer of a 2xx (``{}`` for 204); an error envelope or an unreachable
        gateway raises :class:`CliFailure` (exit 1 and 2)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            **(headers or {}),
        }
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliFailure(
                2,
                f"error: cannot reach the gateway at {self.url}: {reason}",
                "  (is it running? give its address with --url or GATEWAY_URL)",
            ) from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if 200 <= status < 300 and answer is not None:
            return answer
        if status == 204:
            return {}
        err = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(err, dict):
            text = raw.decode("utf-8", "replace").strip()[:200]
            raise CliFailure(
                1, f"error: HTTP {status} from {self.url}{path}, not the gateway's answer: {text}"
            )
        lines = [f"error: {err.get('code')} (HTTP {status}): {err.get('message')}"]
        for e in err.get("errors") or []:
            lines.append(f"  {e.get('field')}: {e.get('message')}")
        raise CliFailure(1, *lines)

    def pages(
        self,
        path: str,
        params: dict[str, Any],
        items_key: str,
        *,
        cursor: str | None,
        limit: int,
        page_size: int = 1000,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Follow a list endpoint's pages from ``cursor`` until ``limit`` items (0: no limit)
        or the end; return the items and the cursor after them. A gateway whose cursor does
        not move on is an error (exit 1), not an endless loop."""
        items: list[dict[str, Any]] = []
        while True:
            size = page_size if not limit else min(page_size, limit - len(items))
            page = self.call(
                "GET", path + query_string({**params, "cursor": cursor, "limit": size})
            )
            items += page[items_key]
            after = page["next_cursor"]
            if after is not None and (after == cursor or not page[items_key]):
                raise CliFailure(1, f"error: {self.url} gave a cursor that does not move on")
            cursor = after
            if cursor is None or (limit and len(items) >= limit):
                return items, cursor


def admin_command(
    run: Callable[[argparse.Namespace, AdminClient], int],
) -> Callable[[argparse.Namespace], int]:
    """A command from ``run(args, client)``: a :class:`CliFailure` it raises is printed to
    stderr and becomes the exit code."""

    def command(args: argparse.Namespace) -> int:
        try:
            return run(args, AdminClient(args))
        except CliFailure as failure:
            for line in failure.lines:
                print(line, file=sys.stderr)
            return failure.code

    command.__doc__ = run.__doc__
    return command


def query_string(params: dict[str, Any]) -> str:
    """``?k=v&...`` of the parameters that are not None; empty when none is."""
    given = {k: v for k, v in params.items() if v is not None}
    return "?" + urlencode(given) if given else ""


def add_admin_flags(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--admin-token``: which gateway to ask, and its token."""
    parser.add_argument(
        "--url",
        default=None,
        help="the running gateway's base URL [GATEWAY_URL; default: http://GATEWAY_HOST:"
        "GATEWAY_PORT, i.e. http://127.0.0.1:8080]",
    )
    parser.add_argument(
        "--admin-token",
        default=None,
        help="the gateway's admin token [GATEWAY_ADMIN_TOKEN; prefer the variable: a flag "
        "shows in `ps` and shell history]",
    )
