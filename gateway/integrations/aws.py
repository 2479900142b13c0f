"""What every AWS integration type shares: connection keys, credentials, request building,
answer parsing and error classes.

botocore does the AWS part: a client per integration resolves the endpoint, serialises the
call in its service's protocol and signs it with SigV4; a ``before-send`` hook catches the
finished request before botocore would send it, and the gateway's own transport sends it
(pooled, asynchronous, with the lane's limits). Answers are read with botocore's parser for
the operation, so errors arrive as AWS's own code and message.

Credentials: static keys from ``${ENV}`` references, else the standard AWS chain (environment,
shared files, container and instance roles); with ``role_arn``, that role is assumed (with the
``external_id``) and refreshed before it expires. Fetching credentials can block, so AWS
types build in a worker thread (``blocking_build``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from gateway.integrations.base import (
    BuildErrors,
    BuildUnavailable,
    OutboundRequest,
    Outcome,
    OutcomeKind,
    Param,
    Response,
)

if TYPE_CHECKING:
    from gateway.mapping.model import CompiledIntegration

AWS_CONNECTION: tuple[Param, ...] = (
    Param("region", description="AWS region.", default="us-east-1", example="eu-west-1"),
    Param(
        "endpoint_url",
        "url",
        "Endpoint override (VPC endpoints, LocalStack, moto); unset: AWS's own.",
    ),
    Param(
        "access_key_id",
        description="Static access key id; unset: the standard AWS credential chain "
        "(environment, shared files, container and instance roles).",
        example="${AWS_ACCESS_KEY_ID}",
    ),
    Param("secret_access_key", description="Its secret.", secret=True),
    Param("session_token", description="Session token of temporary keys.", secret=True),
    Param("role_arn", description="Role to assume (refreshed before it expires)."),
    Param("external_id", description="External id the role's trust policy asks for."),
    Param("connect_timeout", "number", "Seconds to connect.", default=5),
    Param("read_timeout", "number", "Seconds to wait for the answer.", default=30),
)

#: Error codes that mean "slow down" or "try later", whatever the HTTP status.
RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "Throttled",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "SlowDown",
        "PriorRequestNotComplete",
        "TransactionInProgressException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalServiceError",
        "InternalServiceErrorException",
        "ServiceException",
        "KMSThrottlingException",
        "KMS.ThrottlingException",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
        "IDPCommunicationError",
    }
)
CREDENTIAL_HEADERS = frozenset({"Authorization", "X-Amz-Security-Token"})
_SENDER_ONLY_HEADERS = frozenset({"transfer-encoding", "expect"})


class _Captured(Exception):
    """Raised by the before-send hook to stop botocore and hand over the signed request."""

    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


def _capture(request: Any, **_: Any) -> None:
    raise _Captured(request)


_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()
_models: dict[str, Any] = {}


def client(conn: Mapping[str, Any], service: str) -> Any:
    """A botocore client for the connection block, cached (creating one costs ~50 ms)."""
    key = (
        service,
        conn.get("region"),
        conn.get("endpoint_url"),
        conn.get("access_key_id"),
        conn.get("secret_access_key"),  # in memory anyway; hashing it per build cost 2%
        conn.get("session_token"),
        conn.get("role_arn"),
        conn.get("external_id"),
    )
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            found = _clients[key] = _new_client(conn, service)
        return found


def _new_client(conn: Mapping[str, Any], service: str) -> Any:
    import botocore.session
    from botocore.config import Config

    session = botocore.session.Session()
    region = str(conn.get("region") or "us-east-1")
    endpoint = conn.get("endpoint_url") or None
    if conn.get("access_key_id") and conn.get("secret_access_key"):
        session.set_credentials(
            str(conn["access_key_id"]),
            str(conn["secret_access_key"]),
            str(conn["session_token"]) if conn.get("session_token") else None,
        )
    role = conn.get("role_arn")
    if role:
        from botocore.credentials import (
            AssumeRoleCredentialFetcher,
            DeferredRefreshableCredentials,
        )

        source = session.get_credentials()
        if source is None:
            raise BuildUnavailable("no AWS credentials found to assume the role with")

        def sts(name: str, **kwargs: Any) -> Any:
            # A local stack answers STS at the same endpoint as everything else.
            kwargs.setdefault("endpoint_url", endpoint)
            kwargs.setdefault("region_name", region)
            return session.create_client(name, **kwargs)

        extra = {"ExternalId": str(conn["external_id"])} if conn.get("external_id") else {}
        fetcher = AssumeRoleCredentialFetcher(
            sts, source, str(role), extra_args=extra, expiry_window_seconds=300
        )
        session._credentials = DeferredRefreshableCredentials(
            method="assume-role", refresh_using=fetcher.fetch_credentials
        )
    made = session.create_client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        # The types build their parameters themselves and check AWS's limits; botocore's
        # validation was 42% of a 500-record Kinesis build.
        config=Config(
            user_agent_extra="gateway", retries={"max_attempts": 1}, parameter_validation=False
        ),
    )
    made.meta.events.register(
        f"before-send.{made.meta.service_model.service_id.hyphenize()}.*", _capture
    )
    return made


def forget_clients() -> None:
    """Drop every cached client (tests; a mapping reload keeps them: keys are in the cache key)."""
    with _clients_lock:
        _clients.clear()


def build_call(
    conn: Mapping[str, Any], service: str, method: str, params: dict[str, Any], ids: list[str]
) -> OutboundRequest:
    """The signed request of ``client.<method>(**params)``, carrying deliveries ``ids``.

    Raises :class:`BuildUnavailable` when credentials cannot be had now, ``ValueError`` when
    botocore refuses the parameters (a permanent failure of the batch).
    """
    from botocore import exceptions as bx

    try:
        getattr(client(conn, service), method)(**params)
    except _Captured as cap:
        r = cap.request
        headers = {
            str(k): (v.decode() if isinstance(v, bytes) else str(v)) for k, v in r.headers.items()
        }
        body = r.body
        if body is None:
            body = b""
        elif isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes | bytearray):
            body = body.read()
        # The body goes whole, and the transport gives it its Content-Length: hints meant for
        # botocore's own streaming sender would contradict that. (S3 over HTTPS frames the
        # body aws-chunked, with a checksum trailer, and adds "Transfer-Encoding: chunked",
        # which must not come with a Content-Length; and "Expect: 100-continue" would cost a
        # round trip.) Neither header is signed.
        for name in [h for h in headers if h.lower() in _SENDER_ONLY_HEADERS]:
            del headers[name]
        secret = frozenset(h for h in headers if h in CREDENTIAL_HEADERS)
        return OutboundRequest(r.method, r.url, headers, bytes(body), list(ids), secret)
    except (
        bx.NoCredentialsError,
        bx.CredentialRetrievalError,
        bx.ClientError,
        bx.HTTPClientError,
    ) as exc:
        # No credentials yet (an instance role's endpoint), or assuming the role failed or
        # could not reach STS: may pass.
        raise BuildUnavailable(f"AWS credentials: {exc}") from None
    except bx.BotoCoreError as exc:
        # Parameters, a malformed ARN, a half-configured key: will not pass by waiting.
        raise ValueError(str(exc)) from None
    raise AssertionError(f"botocore sent {service}.{method} instead of handing it over")


def _model(service: str) -> Any:
    found = _models.get(service)
    if found is None:
        import botocore.session

        found = _models[service] = botocore.session.get_session().get_service_model(service)
    return found


_XML_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_XML_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")


def parse(service: str, operation: str, response: Response) -> dict[str, Any]:
    """The answer as botocore reads it for ``operation`` (e.g. ``SendMessageBatch``): the
    output shape's fields, or ``Error`` with ``Code`` and ``Message``."""
    from botocore.awsrequest import HeadersDict
    from botocore.parsers import create_parser

    model = _model(service)
    op = model.operation_model(operation)
    parser = create_parser(model.metadata["protocol"])
    raw = {
        "status_code": response.status,
        "headers": HeadersDict(dict(response.headers)),
        "body": response.body,
    }
    out: dict[str, Any] = parser.parse(raw, op.output_shape)
    err = out.get("Error")
    if err is not None and (not err.get("Code") or str(err.get("Code")).isdigit()):
        # Some servers answer a JSON-protocol call with an XML error (moto, proxies).
        code = _XML_CODE.search(response.body)
        message = _XML_MESSAGE.search(response.body)
        if code:
            err["Code"] = code.group(1).decode(errors="replace")
        if message:
            err["Message"] = message.group(1).decode(errors="replace")
    return out


def is_retryable(code: str | None, status: int | None) -> bool:
    """Throttling and server-side codes, 5xx, 408 and 429 retry; the rest is permanent."""
    # SQS's query-compatible codes are dotted (AWS.SimpleQueueService.RequestThrottled), as
    # are KMS's inside other services (KMS.ThrottlingException): the last part names it.
    name = code.rsplit(".", 1)[-1] if code else ""
    if name and (name in RETRYABLE_CODES or name.endswith(("Throttling", "ThrottlingException"))):
        return True
    return status is not None and (status >= 500 or status in (408, 429))


def error_text(code: str | None, message: str | None, status: int | None) -> str:
    """``AWS <Code>: <Message> (HTTP 400)``."""
    text = f"AWS {code or 'error'}"
    if message:
        text += f": {message}"
    return text + (f" (HTTP {status})" if status else "")


def outcome(
    delivery_id: str,
    code: str | None,
    message: str | None,
    status: int | None,
    *,
    sender_fault: bool | None = None,
    retry_after: float | None = None,
) -> Outcome:
    """One delivery's failure: retry or permanent by its code (a sender's fault is
    permanent unless the code says to slow down)."""
    retry = is_retryable(code, status if sender_fault is None else None)
    if sender_fault is False:
        retry = True
    kind = OutcomeKind.RETRY if retry else OutcomeKind.PERMANENT
    return Outcome(delivery_id, kind, status, error_text(code, message, status), retry_after)


def whole_request_failed(
    service: str, operation: str, request: OutboundRequest, response: Response
) -> list[Outcome] | None:
    """Outcomes for every delivery when the answer is an error; None when it is a success."""
    if 200 <= response.status < 300:
        return None
    err = parse(service, operation, response).get("Error") or {}
    return [
        outcome(d, err.get("Code"), err.get("Message"), response.status)
        for d in request.delivery_ids
    ]


def split(
    batch: list[tuple[str, dict[str, Any]]],
    size_of: Callable[[str, dict[str, Any]], int],
    *,
    max_count: int,
    max_bytes: int,
    max_item_bytes: int,
    what: str,
) -> list[list[tuple[str, dict[str, Any]]]]:
    """Chunks of the batch within a service's count and size limits, in order. A single
    record over the item limit is refused (permanently) with a clear reason."""
    chunks: list[list[tuple[str, dict[str, Any]]]] = []
    current: list[tuple[str, dict[str, Any]]] = []
    used = 0
    too_big: dict[str, Any] = {}
    for delivery_id, fields in batch:
        size = size_of(delivery_id, fields)
        if size > max_item_bytes:
            too_big[delivery_id] = ValueError(
                f"the record is {size:,} bytes as sent, over the {max_item_bytes:,}-byte "
                f"limit of {what}"
            )
            continue
        if current and (len(current) >= max_count or used + size > max_bytes):
            chunks.append(current)
            current, used = [], 0
        current.append((delivery_id, fields))
        used += size
    if too_big:
        raise BuildErrors(too_big)
    if current:
        chunks.append(current)
    return chunks


def field_text(fields: Mapping[str, Any], name: str, what: str) -> str:
    """A mapped field's value as text, for a key AWS needs (partition key, group id); raises
    :class:`MappingError` (a permanent failure of that record) when it has none."""
    from gateway.mapping.errors import MappingError

    value = fields.get(name)
    if value is None or value == "" or value == []:
        raise MappingError(f"{what} comes from field {name!r}, which has no value", field=name)
    return str(value)


def message_attributes(fields: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """SQS/SNS ``MessageAttributes`` of the named mapped fields: numbers as ``Number``, the
    rest as ``String`` (lists comma-joined); fields without a value are left out (both
    services refuse empty attribute values)."""
    out: dict[str, Any] = {}
    for name in names:
        value = fields.get(name)
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            out[name] = {"DataType": "String", "StringValue": text}
        else:
            out[name] = {"DataType": "Number", "StringValue": str(value)}
    return out


def message_entry(
    delivery_id: str,
    fields: Mapping[str, Any],
    settings: Mapping[str, Any],
    *,
    body: str,
    fifo: bool,
) -> dict[str, Any]:
    """An SQS or SNS batch entry: ``Id`` the delivery id (up to 80 letters, digits, ``-`` and
    ``_``: it fits), ``body`` the JSON of the mapped fields, the attributes that
    ``settings.message_attributes`` names, and for FIFO queues and topics ``MessageGroupId``
    from the field ``settings.message_group_id`` names and ``MessageDeduplicationId`` from the
    delivery id (a resent message is dropped by AWS itself)."""
    import orjson

    entry: dict[str, Any] = {"Id": delivery_id, body: orjson.dumps(fields).decode()}
    attrs = message_attributes(fields, settings.get("message_attributes") or [])
    if attrs:
        entry["MessageAttributes"] = attrs
    if fifo:
        group_field = settings.get("message_group_id")
        if not group_field:
            raise ValueError("settings.message_group_id must name a field for FIFO")
        entry["MessageGroupId"] = field_text(fields, str(group_field), "MessageGroupId")
        entry["MessageDeduplicationId"] = delivery_id
    return entry


def message_size(entry: Mapping[str, Any], body: str) -> int:
    """Bytes an SQS/SNS entry counts against the limits: its body and its attributes."""
    return len(entry[body].encode()) + attributes_size(entry.get("MessageAttributes") or {})


def attributes_size(attributes: Mapping[str, Any]) -> int:
    """Bytes that message attributes add to an SQS/SNS message's size (name, type, value)."""
    return sum(
        len(name.encode()) + len(a["DataType"].encode()) + len(a["StringValue"].encode())
        for name, a in attributes.items()
    )


def prepare(
    integration: CompiledIntegration,
    batch: list[tuple[str, dict[str, Any]]],
    make: Callable[[str, dict[str, Any]], Any],
) -> dict[str, Any]:
    """``make(delivery_id, fields)`` for every record: its entry in the AWS call. Records
    whose entry cannot be made (a mapping error: a key's field without a value) are refused
    together, each with its reason."""
    from gateway.mapping.errors import MappingError

    made: dict[str, Any] = {}
    failed: dict[str, Any] = {}
    for delivery_id, fields in batch:
        try:
            made[delivery_id] = make(delivery_id, fields)
        except MappingError as exc:
            failed[delivery_id] = exc.with_context(integration=integration.name)
    if failed:
        raise BuildErrors(failed)
    return made


def batch_calls(
    integration: CompiledIntegration,
    batch: list[tuple[str, dict[str, Any]]],
    entries: dict[str, Any],
    size_of: Callable[[Any], int],
    *,
    service: str,
    method: str,
    params: Callable[[list[Any]], dict[str, Any]],
    max_count: int,
    max_bytes: int,
    max_item_bytes: int,
    what: str,
) -> list[OutboundRequest]:
    """The batch's entries split within the service's limits, one signed call a chunk:
    ``params(entries of the chunk)`` are the call's parameters."""
    chunks = split(
        batch,
        lambda d, _: size_of(entries[d]),
        max_count=max_count,
        max_bytes=max_bytes,
        max_item_bytes=max_item_bytes,
        what=what,
    )
    conn = integration.connection.value
    return [
        build_call(
            conn, service, method, params([entries[d] for d, _ in chunk]), [d for d, _ in chunk]
        )
        for chunk in chunks
    ]


def read_by_id(
    service: str, operation: str, request: OutboundRequest, response: Response
) -> list[Outcome]:
    """Answers that list ``Successful`` and ``Failed`` entries by their ``Id`` (the delivery
    id: SQS, SNS): failed ones retry unless the sender is at fault and the code does not say
    to slow down."""
    whole = whole_request_failed(service, operation, request, response)
    if whole is not None:
        return whole
    answer = parse(service, operation, response)
    ours = set(request.delivery_ids)
    out = [
        Outcome(e["Id"], OutcomeKind.DELIVERED, response.status)
        for e in answer.get("Successful") or []
        if e.get("Id") in ours
    ]
    for e in answer.get("Failed") or []:
        if e.get("Id") in ours:
            out.append(
                outcome(
                    e["Id"],
                    e.get("Code"),
                    e.get("Message"),
                    response.status,
                    sender_fault=bool(e.get("SenderFault")),
                )
            )
    return out


def read_by_position(
    service: str, operation: str, results_key: str, request: OutboundRequest, response: Response
) -> list[Outcome]:
    """Answers whose ``results_key`` list matches the request's entries by position, each
    failed one carrying ``ErrorCode`` and ``ErrorMessage`` (Kinesis, Firehose, EventBridge).
    With a different count nothing says which is which: everything is sent again rather than
    a record lost."""
    whole = whole_request_failed(service, operation, request, response)
    if whole is not None:
        return whole
    results = parse(service, operation, response).get(results_key) or []
    ids = request.delivery_ids
    if len(results) != len(ids):
        why = f"{operation} answered {len(results)} results for {len(ids)} entries"
        return [Outcome(d, OutcomeKind.RETRY, response.status, why) for d in ids]
    out = []
    for delivery_id, result in zip(ids, results, strict=True):
        code = result.get("ErrorCode")
        if code:
            out.append(outcome(delivery_id, code, result.get("ErrorMessage"), response.status))
        else:
            out.append(Outcome(delivery_id, OutcomeKind.DELIVERED, response.status))
    return out


def check_fifo(url_key: str) -> Callable[..., list[tuple[str, str]]]:
    """The load-time check of SQS and SNS entries: a FIFO queue or topic (``url_key`` ending
    in ``.fifo``) needs ``settings.message_group_id``; named fields must be mapped."""

    def check(
        connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
    ) -> list[tuple[str, str]]:
        out = []
        group = settings.get("message_group_id")
        if str(connection.get(url_key, "")).endswith(".fifo") and not group:
            out.append(("settings.message_group_id", "a FIFO target needs the field to group by"))
        if group and group not in fields:
            out.append(("settings.message_group_id", f"names {group!r}, not a mapped field"))
        for name in settings.get("message_attributes") or []:
            if name not in fields:
                out.append(("settings.message_attributes", f"{name!r} is not a mapped field"))
        return out

    return check


def needs_credentials_io(integration: CompiledIntegration) -> bool:
    """Whether building may block: credentials from the AWS chain or an assumed role (static
    keys never do), so the engine builds in a worker thread only then."""
    conn = integration.connection.value
    static = conn.get("access_key_id") and conn.get("secret_access_key")
    return not static or bool(conn.get("role_arn"))
