"""What an integration type is: a declaration (connection, settings, actions and their fields)
plus, from the delivery engine on, two small functions: build requests, read responses.

The catalog (``gateway integrations``), ``gateway check``, the preview and docs/integrations.md
all read these declarations; nothing else describes a type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

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

    def field(self, name: str) -> Field | None:
        """The declared field, or a free-form one for open actions, or None."""
        for f in self.fields:
            if f.name == name:
                return f
        return Field(name, "any") if self.open_fields else None


@dataclass(slots=True)
class OutboundRequest:
    """One request an integration would be sent: what the preview shows and delivery sends."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    delivery_ids: list[str] = field(default_factory=list)


# build(integration, [(delivery_id, mapped fields), ...], redact=...) -> requests.
# ``integration`` is a gateway.mapping.model.CompiledIntegration (not imported: no cycle).
Builder = Callable[..., list[OutboundRequest]]


@dataclass(frozen=True, slots=True)
class IntegrationType:
    """An integration type's declaration."""

    name: str
    description: str
    connection: tuple[Param, ...] = ()
    settings: tuple[Param, ...] = ()
    actions: tuple[Action, ...] = ()
    default_options: dict[str, Any] = field(default_factory=dict)
    build: Builder | None = None  # turns mapped records into requests

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


def _load_builtins() -> None:
    # Importing a type's module registers it; done lazily so declarations can import this module.
    from gateway.integrations import file, http  # noqa: F401
