"""The error envelope every non-2xx answer of the gateway's own API uses (docs/producers.md).

``{"error": {"type", "code", "message", "errors"?, ...}}``. Handlers raise :class:`ApiError`;
the error middleware in :mod:`gateway.app` turns it, and aiohttp's own HTTP exceptions, into
the envelope.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

# HTTP status -> the envelope's "type".
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request",
    401: "authentication_error",
    403: "authorization_error",
    404: "not_found",
    405: "invalid_request",
    408: "invalid_request",
    409: "conflict",
    412: "precondition_failed",
    413: "invalid_request",
    415: "invalid_request",
    431: "invalid_request",
    422: "validation_error",
    428: "precondition_required",
    429: "rate_limited",
    499: "client_disconnected",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer: status, machine-readable code, human message, optional details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        """The envelope as a dict."""
        err: dict[str, Any] = {
            "type": ERROR_TYPES.get(self.status, "error"),
            "code": self.code,
            "message": self.message,
        }
        if self.errors:
            err["errors"] = self.errors
        err.update(self.extra)
        return {"error": err}

    def response(self) -> web.Response:
        """The envelope as an aiohttp response."""
        return json_response(self.body(), status=self.status, headers=self.headers)


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response serialised with orjson."""
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
    )
