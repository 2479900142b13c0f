"""The ``aws_lambda`` type: Invoke a Lambda function with the mapped records.

Each record is one invocation whose payload is the JSON object of its mapped fields (the
default ``batch_size`` is 1; a larger batch still makes one invocation a record). With
``settings.payload: array`` a batch is one invocation whose payload is a JSON array of the
records' objects, split where it would pass the payload limit.

``RequestResponse`` (the default) waits for the function and reads its result; ``Event``
queues the invocation (HTTP 202) and only says Lambda accepted it. Payload limits, from the
Invoke API reference: 6 MB for ``RequestResponse``, 1 MB for ``Event``; a single record over
the limit is a permanent failure.

A function error (HTTP 200 with the ``X-Amz-Function-Error`` header) fails the record with
the function's ``errorType`` and ``errorMessage`` from the payload. It is retried by default:
an unhandled error may be passing (a timeout, out of memory, a dependency down), and current
runtimes report even the function's own deliberate errors as ``Unhandled``, so the header's
``Handled``/``Unhandled`` cannot tell them apart. ``settings.function_error: permanent`` makes
every function error permanent (the function refuses what it cannot process); either way the
retry policy's ``max_attempts`` bounds the tries. Lambda's own errors: throttling
(``TooManyRequestsException``, 429), 5xx and ``ResourceConflictException`` (the function is
being created or updated) retry; ``ResourceNotFoundException``, ``AccessDeniedException`` and
other client errors are permanent, with AWS's code and message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.integrations import aws
from gateway.integrations.base import (
    Action,
    IntegrationType,
    OutboundRequest,
    Outcome,
    OutcomeKind,
    Param,
    Response,
    TokenProvider,
    register,
)

if TYPE_CHECKING:
    from gateway.mapping.model import CompiledIntegration

#: Invoke's payload limits (bytes) by invocation type.
MAX_PAYLOAD = {"RequestResponse": 6 * 1024 * 1024, "Event": 1024 * 1024}
#: Lambda's codes that pass with time although Lambda calls them the client's fault.
RETRY_CODES = frozenset({"ResourceConflictException"})
FUNCTION_ERROR_HEADER = "X-Amz-Function-Error"
MAX_REASON = 1000  # characters of the function's message kept in the reason


@dataclass(frozen=True, slots=True)
class FunctionErrors:
    """How an Invoke request's reader judges a function error (the request's ``context``)."""

    permanent: bool = False


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lower = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lower), None)


def build(
    integration: CompiledIntegration,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """One Invoke per record (``payload: object``) or per chunk of the batch (``array``)."""
    conn = integration.connection.value
    settings = integration.settings.value
    invocation_type = str(settings.get("invocation_type") or "RequestResponse")
    limit = MAX_PAYLOAD[invocation_type]
    array = settings.get("payload") == "array"
    encoded = {d: orjson.dumps(fields) for d, fields in batch}
    # In an array each object costs its bytes and a separator; the brackets take one more.
    chunks = aws.split(
        batch,
        lambda d, _: len(encoded[d]) + (1 if array else 0),
        max_count=len(batch) if array else 1,
        max_bytes=limit - 1 if array else limit,
        max_item_bytes=limit - 1 if array else limit,
        what=f"a Lambda {invocation_type} payload",
    )
    params: dict[str, Any] = {
        "FunctionName": str(conn["function_name"]),
        "InvocationType": invocation_type,
    }
    if settings.get("qualifier"):
        params["Qualifier"] = str(settings["qualifier"])
    permanent = settings.get("function_error") == "permanent"
    out: list[OutboundRequest] = []
    for chunk in chunks:
        ids = [d for d, _ in chunk]
        payload = b"[" + b",".join(encoded[d] for d in ids) + b"]" if array else encoded[ids[0]]
        r = aws.build_call(conn, "lambda", "invoke", {**params, "Payload": payload}, ids)
        # How read judges a function error: the request's context (never sent or shown).
        r.context = FunctionErrors(permanent=permanent)
        out.append(r)
    return out


def function_error_text(kind: str, payload: bytes) -> str:
    """``Lambda function error (Unhandled): <errorType>: <errorMessage>``, from the error
    object the function's payload carries (its text when it is not one)."""
    message = ""
    try:
        err = orjson.loads(payload)
    except orjson.JSONDecodeError:
        err = None
    if isinstance(err, dict) and ("errorMessage" in err or "errorType" in err):
        parts = [str(err[k]) for k in ("errorType", "errorMessage") if err.get(k)]
        message = ": ".join(parts)
    else:
        message = payload.decode("utf-8", "replace").strip()
    if len(message) > MAX_REASON:
        message = message[:MAX_REASON] + "..."
    return f"Lambda function error ({kind or 'error'})" + (f": {message}" if message else "")


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """Delivered on 2xx; a function error by the setting; Lambda's errors by their code."""
    ids = request.delivery_ids
    if 200 <= response.status < 300:
        kind = _header(response.headers, FUNCTION_ERROR_HEADER)
        if kind is None:
            return [Outcome(d, OutcomeKind.DELIVERED, response.status) for d in ids]
        ctx = request.context
        permanent = isinstance(ctx, FunctionErrors) and ctx.permanent
        why = function_error_text(kind, response.body)
        verdict = OutcomeKind.PERMANENT if permanent else OutcomeKind.RETRY
        return [Outcome(d, verdict, response.status, why) for d in ids]
    err = aws.parse("lambda", "Invoke", response).get("Error") or {}
    code, message = err.get("Code"), err.get("Message")
    if code in RETRY_CODES:
        why = aws.error_text(code, message, response.status)
        return [Outcome(d, OutcomeKind.RETRY, response.status, why) for d in ids]
    return [aws.outcome(d, code, message, response.status) for d in ids]


AWS_LAMBDA = register(
    IntegrationType(
        name="aws_lambda",
        description="Invokes an AWS Lambda function with each mapped record as its JSON "
        "payload (Invoke, RequestResponse or Event); a function error fails the record "
        "with the function's message.",
        connection=(
            *aws.AWS_CONNECTION,
            Param(
                "function_name",
                description="The function's name, ARN, or an alias or version ARN.",
                required=True,
                example="arn:aws:lambda:eu-west-1:123456789012:function:on-signup",
            ),
        ),
        settings=(
            Param(
                "qualifier",
                description="Version or alias to invoke; unset: the one in function_name, "
                "else $LATEST.",
                example="live",
            ),
            Param(
                "invocation_type",
                description="RequestResponse: wait for the function and check its result "
                "(payload up to 6 MB). Event: queue the invocation; only Lambda's acceptance "
                "is checked (payload up to 1 MB).",
                default="RequestResponse",
                choices=("RequestResponse", "Event"),
            ),
            Param(
                "payload",
                description="object: one invocation per record, the payload its JSON "
                "object. array: one invocation per batch, the payload a JSON array of the "
                "records' objects (split at the payload limit); the function's result or "
                "error then counts for every record of the batch.",
                default="object",
                choices=("object", "array"),
            ),
            Param(
                "function_error",
                description="A function error (X-Amz-Function-Error): retry (it may pass: "
                "a timeout, a dependency down; bounded by the retry policy) or permanent "
                "(the function refuses the record).",
                default="retry",
                choices=("retry", "permanent"),
            ),
        ),
        actions=(
            Action(
                "invoke",
                "Invoke the function with the mapped fields as its JSON payload.",
                open_fields=True,
            ),
        ),
        default_options={"batch_size": 1, "concurrency": 8},
        build=build,
        read=read,
        blocking_build=aws.needs_credentials_io,
    )
)
