"""What an integration type is: a declaration (connection, settings, actions and their fields)
plus, from the delivery engine on, small functions: build requests, read responses, and where
the shared HTTP transport does not fit, send them (see :class:`Sender`).

The catalog (``gateway integrations``), ``gateway check``, the preview and docs/integrations.md
all read these declarations; nothing else describes a type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    # Type names only: the mapping model imports this module, and the transport builds on it.
    from gateway.integrations.transport import SendContext
    from gateway.mapping.model import CompiledIntegration

ParamType = Literal["string", "integer", "number", "boolean", "url", "object", "list"]
FieldType = Literal[
    "any",
    "string",
    "integer",
    "number",
    "boolean",
    "datetime",
    "email",
    "e164",
    "uri",
    "list_of_strings",
]


@dataclass(frozen=True, slots=True)
class Param:
    """A key of an entry's ``connection`` or ``settings`` block."""

    name: str
    type: ParamType = "string"
    description: str = ""
    required: bool = False
    default: Any = None
    secret: bool = False  # must come from ${ENV} or ${file:...}; redacted in previews
    secret_keys: tuple[str, ...] = ()  # keys of an object param that are secrets likewise
    choices: tuple[Any, ...] = ()
    example: Any = None


@dataclass(frozen=True, slots=True)
class Field:
    """A field of an action: what a mapped value must be."""

    name: str
    type: FieldType = "string"
    description: str = ""
    required: bool = False
    format: str | None = None  # e.g. a date format for datetime fields
    example: Any = None


@dataclass(frozen=True, slots=True)
class Action:
    """One thing a type can do (upsert a contact, send a message), with its own fields."""

    name: str
    description: str
    fields: tuple[Field, ...] = ()
    settings: tuple[Param, ...] = ()
    # Generic types (http, file) take any field name the mapping defines.
    open_fields: bool = False
    # The field whose value keys this action's per-key ordering when the entry sets no
    # options.ordering_key: actions that depend on earlier records of the same key (a link,
    # a licence created by an earlier record) name their link key here.
    ordering_key: str | None = None

    def field(self, name: str) -> Field | None:
        """The declared field, or a free-form one for open actions, or None."""
        for f in self.fields:
            if f.name == name:
                return f
        return Field(name, "any") if self.open_fields else None


@dataclass(slots=True)
class OutboundRequest:
    """One request to an integration: what the preview shows and the delivery engine sends.

    ``delivery_ids`` are the deliveries it carries, in body order (one for an object body, the
    batch for an array body or an NDJSON append). ``secret_headers`` names the headers whose
    values are credentials (``Authorization``, an API key header): previews hide them and logs
    must never print them.
    """

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    delivery_ids: list[str] = field(default_factory=list)
    secret_headers: frozenset[str] = frozenset()
    # What the type's own send and read steps need to know of the request beyond HTTP (the
    # link key it is about, the record's arrival time): never sent, never shown. Keyword-only,
    # so a subclass's own fields stay where its positional callers put them.
    context: Any = field(default=None, kw_only=True)


#: ``tokens(integration) -> access token``: where a builder gets an OAuth2 token. The delivery
#: engine fetches and caches tokens (refreshing on expiry and once on a 401) and hands build a
#: provider that reads its cache; previews pass one that answers ``***`` and fetch nothing.
TokenProvider = Callable[["CompiledIntegration"], str]


@dataclass(frozen=True, slots=True)
class RecordContext:
    """What the engine knows of a record beyond its mapped fields, for types that declare a
    ``link_key`` (see :class:`LinkedBuilder`): when it arrived (epoch seconds; stable across
    retries, unlike the clock) and the id the integration gave its link key earlier, if any."""

    received_at: float
    link_key: str | None = None
    external_id: str | None = None


class Builder(Protocol):
    """``build(integration, batch) -> requests``: turn mapped records into requests.

    ``integration`` is the compiled mapping entry; ``batch`` is ``[(delivery_id, mapped
    fields), ...]``. Every record of the batch is in exactly one request. ``now`` (epoch
    seconds) pins signing times (webhook timestamps, SigV4 dates); ``None`` is the clock.
    Pure: no I/O. Raises :class:`BuildErrors` for records that cannot become a request (e.g.
    a URL placeholder without a value).
    """

    def __call__(
        self,
        integration: CompiledIntegration,
        batch: list[tuple[str, dict[str, Any]]],
        *,
        now: float | None = None,
        tokens: TokenProvider | None = None,
    ) -> list[OutboundRequest]: ...


class LinkedBuilder(Protocol):
    """The builder of a type that declares ``link_key``: a :class:`Builder` that also takes
    ``records``, ``{delivery_id: RecordContext}`` for the batch (the engine looks the links up
    in the store before building; a preview passes none, and the builder then builds as for a
    record without a link, timed from ``now``)."""

    def __call__(
        self,
        integration: CompiledIntegration,
        batch: list[tuple[str, dict[str, Any]]],
        *,
        now: float | None = None,
        tokens: TokenProvider | None = None,
        records: Mapping[str, RecordContext] | None = None,
    ) -> list[OutboundRequest]: ...


class BuildUnavailable(Exception):
    """The requests cannot be built now but may be later (credentials could not be fetched:
    an instance metadata or STS hiccup). Every record of the batch is retried."""


class BuildErrors(Exception):
    """Records a builder could not turn into a request: ``{delivery_id: MappingError}``.

    Each is a permanent failure of that delivery (like a mapping error); the caller drops
    them from the batch and builds the rest again.
    """

    def __init__(self, errors: dict[str, Any]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{d}: {e}" for d, e in errors.items()))


class TransportError(Exception):
    """The request got no answer (connection, timeout, local I/O); worth retrying."""

    permanent = False  # True for a refused destination (destinations.DestinationRefused)


@dataclass(slots=True)
class Response:
    """An integration's answer to one :class:`OutboundRequest`.

    A type's own send step that speaks no HTTP answers in the same terms, because the engine
    judges by them: a 2xx status when it all went through, 429 (with ``Retry-After``) to hold
    the lane, 5xx when it may pass later (this feeds the breaker), another 4xx when it will
    not. ``detail`` carries what such a step found out beyond that (a database's per-row
    results, the ids an API created) to the type's ``read``; None from the HTTP transport.
    """

    status: int
    headers: Mapping[str, str]  # case-insensitive where the transport provides it
    body: bytes
    detail: Any = None


class OutcomeKind(StrEnum):
    """What became of one delivery in one attempt."""

    DELIVERED = "delivered"
    RETRY = "retry"  # may succeed later: backoff, then again
    PERMANENT = "permanent"  # will not succeed as it is: dead, with the reason


@dataclass(frozen=True, slots=True)
class LinkResult:
    """A link a delivered outcome asks the engine to remember: the integration calls the
    record's ``link_key`` ``external_id`` from now on (None: forget it, the thing is gone).
    Stored in the transaction that marks the delivery delivered."""

    link_key: str
    external_id: str | None


@dataclass(slots=True)
class Outcome:
    """One delivery's outcome. ``retry_after``: the integration's own wait, in seconds.

    ``link``: with a delivered outcome, the link to store (see :class:`LinkResult`).
    ``retry_until``: with a retry, the type's own schedule: retried every ``retry_after``
    seconds until this epoch time, regardless of the entry's ``retry`` limits (a vendor
    condition known to clear slowly, e.g. a user who has not signed up yet); past it the
    delivery is dead with this outcome's error.
    """

    delivery_id: str
    kind: OutcomeKind
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    link: LinkResult | None = None
    retry_until: float | None = None


class Reader(Protocol):
    """``read(request, response) -> outcomes``: one :class:`Outcome` per delivery of the
    request, in any order; a delivery left out is judged by the response status alone. An
    integration that answers per entry says which entries failed, and only those retry."""

    def __call__(self, request: OutboundRequest, response: Response) -> list[Outcome]: ...


class Sender(Protocol):
    """``await send(integration, request, ctx) -> response``: carry out one built request.

    Only types the shared HTTP transport does not fit declare one (the ``file`` type appends
    to a file; a database client, a vendor's two-step job API, a token dance of its own). It
    gets one request of the build's output at a time (the engine sends a batch's requests
    concurrently, within the lane's limits; a type that needs a batch to go together builds
    it as one request) and ``ctx`` (:class:`gateway.integrations.transport.SendContext`): the
    shared HTTP transport bound to the lane's timeouts and TLS setting (``await
    ctx.http(request)``), the pooled session beneath it, the timeouts. It returns the
    :class:`Response` that ``read`` gets, or raises
    :class:`gateway.integrations.transport.TransportError` when no answer came (retried, and a
    failure for the breaker). Retries, holds, the breaker and bookkeeping stay the engine's.
    """

    async def __call__(
        self, integration: CompiledIntegration, request: OutboundRequest, ctx: SendContext
    ) -> Response: ...


class Checker(Protocol):
    """``check(connection, settings, fields) -> [(key path, message)]``: an entry's problems
    that the declarations alone cannot say, found when the mapping file loads (so
    ``gateway check`` reports them with their line). ``connection`` and ``settings`` are as
    written (``${...}`` references unresolved), ``fields`` the names the entry maps; key paths
    are relative to the entry, e.g. ``settings.key``."""

    def __call__(
        self, connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
    ) -> list[tuple[str, str]]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class IntegrationType:
    """An integration type's declaration: what it takes (connection, settings, actions and
    their fields), then what it does with a batch, like a sink of a pipeline is its config, a
    request builder and a service: ``build`` the requests, ``send`` each (the shared HTTP
    transport unless the type has its own way), ``read`` each answer into outcomes."""

    name: str
    description: str
    build: Builder  # mapped records -> requests (see Builder)
    connection: tuple[Param, ...] = ()
    settings: tuple[Param, ...] = ()
    actions: tuple[Action, ...] = ()
    default_options: dict[str, Any] = field(default_factory=dict)
    # The builder may block (botocore refreshing credentials over the network): the engine
    # runs it in a worker thread instead of on the event loop.
    blocking_build: bool | Callable[[CompiledIntegration], bool] = False  # or per integration
    read: Reader | None = None  # responses -> per-delivery outcomes; None: by status alone
    send: Sender | None = None  # a request -> its response; None: the shared HTTP transport
    # Rules that span keys (one of two settings, a template's placeholders, a setting that
    # names a mapped field), checked when the mapping loads: see Checker.
    check: Checker | None = None
    # A type whose connection holds OAuth2 client-credentials parameters under its own names
    # (salesforce: instance_url, client_id...) maps them to the form of the http type's
    # ``connection.auth`` ({type: oauth2_client_credentials, token_url, client_id, ...}); the
    # delivery engine's token cache then fetches and refreshes tokens for it as for http.
    oauth2: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # Links (docs/links-and-rollups.md): a type that remembers what the integration called a
    # record's subject declares how to find the subject's key in a mapped record (an e-mail).
    # Its build is then a LinkedBuilder, its read may return Outcome.link, and the key is the
    # entry's default ordering key (records for one subject go in order).
    link_key: Callable[[dict[str, Any]], str | None] | None = None
    # Statuses besides 5xx and 408 that count as failed requests for the lane's breaker (401
    # where refused credentials will refuse every record: stop and probe instead of burning
    # the backlog into dead deliveries).
    breaker_statuses: frozenset[int] = frozenset()

    def action(self, name: str | None) -> Action | None:
        """The named action; with no name, the only one (None when there are several)."""
        if name is None:
            return self.actions[0] if len(self.actions) == 1 else None
        return next((a for a in self.actions if a.name == name), None)


_REGISTRY: dict[str, IntegrationType] = {}


def register(decl: IntegrationType) -> IntegrationType:
    """Add a type to the registry; a second type with the same name is a programming error."""
    if decl.name in _REGISTRY:
        raise ValueError(f"integration type {decl.name!r} is registered twice")
    if not decl.actions:
        raise ValueError(f"integration type {decl.name!r} declares no action")
    _REGISTRY[decl.name] = decl
    return decl


def get_type(name: str) -> IntegrationType | None:
    """The registered type called ``name``."""
    _load_builtins()
    return _REGISTRY.get(name)


def all_types() -> list[IntegrationType]:
    """Every registered type, by name."""
    _load_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


#: Modules of the package that declare no type (shared machinery).
_NOT_TYPES = frozenset({"aws", "base", "catalog", "oauth2", "transport"})


def _load_builtins() -> None:
    # Importing a type's module registers it; done lazily so declarations can import this
    # module. Every module of the package is a type unless listed above: adding a type is
    # adding its file.
    import importlib
    import pkgutil

    import gateway.integrations as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in _NOT_TYPES and not info.name.startswith("_"):
            importlib.import_module(f"gateway.integrations.{info.name}")
