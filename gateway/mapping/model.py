"""A group's mapping file: the model, its compilation against the integration declarations,
and the compiled form that ingest (fan-out) and delivery (mapping a record) use.

Compilation checks everything a file can get wrong before it goes live: the model's shape,
unknown types, actions, connection keys, settings and fields, missing required ones, literal
secrets, unresolved references, bad sources, transforms and conditions. Every error carries
its key path, which the loader turns into file and line.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.integrations.base import Action, IntegrationType, Param, get_type
from gateway.mapping import ordering, secrets
from gateway.mapping.conditions import Condition, parse_condition
from gateway.mapping.errors import ErrorCollector, MappingError, SpecError, SpecErrors
from gateway.mapping.fieldtypes import IDENTITY, Coercer, make_coercer
from gateway.mapping.options import DeliveryOptions
from gateway.mapping.sources import MISSING, Source, parse_source

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class EntrySpec(BaseModel):
    """One integration entry as written in the file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_RE.pattern)
    type: str
    action: str | None = None
    enabled: bool = True
    description: str | None = None
    when: Any = None
    connection: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    fields: dict[str, Any] = Field(default_factory=dict)
    options: DeliveryOptions = Field(default_factory=DeliveryOptions)


class MappingSpec(BaseModel):
    """A whole mapping file as written."""

    model_config = ConfigDict(extra="forbid")

    group_key: str
    description: str | None = None
    integrations: list[EntrySpec] = Field(default_factory=list)


@dataclass(slots=True)
class MappedField:
    """One integration field: where its value comes from and what it must be."""

    name: str
    type: str
    source: Source
    coerce: Coercer


@dataclass(slots=True)
class CompiledIntegration:
    """An integration entry ready to use."""

    name: str
    type: IntegrationType
    action: Action
    enabled: bool
    condition: Condition | None
    fields: list[MappedField]
    connection: secrets.Resolved
    settings: secrets.Resolved
    options: DeliveryOptions

    def matches(self, data: Mapping[str, Any]) -> bool:
        """Whether a record gets a delivery to this integration."""
        return self.enabled and (self.condition is None or self.condition.matches(data))

    def map(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The record's mapped and type-checked fields; raises :class:`MappingError`."""
        out: dict[str, Any] = {}
        for f in self.fields:
            try:
                value = f.source.evaluate(data)
                if value is MISSING:
                    continue
                if f.coerce is not IDENTITY:  # most fields are untyped: no call for them
                    value = f.coerce(value)
            except MappingError as exc:
                raise exc.with_context(
                    field=f.name, source=f.source.label, integration=self.name
                ) from None
            out[f.name] = value
        return out


@dataclass(slots=True)
class CompiledMapping:
    """A group's live mapping."""

    group_key: str
    version: str
    description: str | None
    integrations: list[CompiledIntegration] = field(default_factory=list)
    # Name -> entry, built on first lookup: the delivery engine asks several times per
    # attempt. Rebuilt when the list's length changed (compilation appends to it).
    _by_name: dict[str, CompiledIntegration] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _indexed: int = field(default=-1, init=False, repr=False, compare=False)

    def fan_out(self, data: Mapping[str, Any]) -> list[str]:
        """Names of the integrations that get a delivery for ``data``."""
        return [i.name for i in self.integrations if i.matches(data)]

    def integration(self, name: str) -> CompiledIntegration | None:
        """The named integration entry."""
        if self._indexed != len(self.integrations):
            # First entry of a name wins, as a scan from the start would find it.
            self._by_name = {}
            for i in self.integrations:
                self._by_name.setdefault(i.name, i)
            self._indexed = len(self.integrations)
        return self._by_name.get(name)


def content_version(content: bytes) -> str:
    """A mapping version: the first 16 hex digits of the SHA-256 of the file's bytes."""
    return hashlib.sha256(content).hexdigest()[:16]


def _pydantic_errors(exc: ValidationError) -> list[SpecError]:
    out = []
    for err in exc.errors():
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required"
        out.append(SpecError(tuple(err["loc"]), msg))
    return out


def _check_params(
    block: dict[str, Any],
    declared: tuple[Param, ...],
    path: tuple[str | int, ...],
    errors: ErrorCollector,
) -> None:
    known = {p.name: p for p in declared}
    for key in block:
        if key not in known:
            names = ", ".join(sorted(known)) or "none"
            errors.add((*path, key), f"unknown key; known keys: {names}")
    for p in declared:
        value = block.get(p.name)
        if value is None:
            if p.required:
                errors.add((*path, p.name), "required")
            continue
        if p.secret and not secrets.has_reference(value):
            errors.add(
                (*path, p.name),
                "a secret must not be written in the file: use ${ENV_VAR} or ${file:/path}",
            )
        if p.secret_keys and isinstance(value, dict):
            for key in p.secret_keys:
                if key in value and not secrets.has_reference(value[key]):
                    errors.add(
                        (*path, p.name, key),
                        "a secret must not be written in the file: use ${ENV_VAR} or ${file:/path}",
                    )
        if p.choices and value not in p.choices:
            choices = ", ".join(map(str, p.choices))
            errors.add((*path, p.name), f"must be one of {choices}, not {value!r}")


def compile_mapping(
    data: Any,
    content: bytes,
    *,
    expected_group: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> CompiledMapping:
    """Validate and compile a parsed mapping file; raise :class:`SpecErrors` with every error.

    Each integration entry is validated on its own, so a shape error in one entry does not
    hide the errors of the others.
    """
    if not isinstance(data, dict):
        raise SpecErrors([SpecError((), "a mapping file is a YAML mapping with group_key")])
    errors = ErrorCollector()
    entries = data.get("integrations", [])
    try:
        spec = MappingSpec.model_validate({**data, "integrations": []})
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc))
        spec = None
    if not isinstance(entries, list):
        errors.add(("integrations",), "must be a list of integration entries")
        entries = []
    if spec is not None and expected_group is not None and spec.group_key != expected_group:
        errors.add(
            ("group_key",),
            f"must equal the file name: {expected_group!r}, not {spec.group_key!r}",
        )
    compiled = CompiledMapping(
        spec.group_key if spec else str(data.get("group_key")),
        content_version(content),
        spec.description if spec else None,
    )
    seen: set[str] = set()
    paths: dict[str, tuple[str | int, ...]] = {}
    for i, raw in enumerate(entries):
        base: tuple[str | int, ...] = ("integrations", i)
        try:
            entry = EntrySpec.model_validate(raw)
        except ValidationError as exc:
            errors.extend(e.prefixed(base) for e in _pydantic_errors(exc))
            continue
        if entry.name in seen:
            errors.add((*base, "name"), f"duplicate integration name {entry.name!r}")
        seen.add(entry.name)
        one = _compile_entry(entry, base, errors, environ)
        if one is not None:
            compiled.integrations.append(one)
            paths[one.name] = base
    ordering.check(compiled, errors, paths)
    errors.raise_if_any()
    return compiled


def _compile_entry(
    entry: EntrySpec,
    base: tuple[str | int, ...],
    errors: ErrorCollector,
    environ: Mapping[str, str] | None,
) -> CompiledIntegration | None:
    decl = get_type(entry.type)
    if decl is None:
        from gateway.integrations.base import all_types

        known = ", ".join(t.name for t in all_types())
        errors.add((*base, "type"), f"unknown integration type {entry.type!r}; known: {known}")
        return None
    action = decl.action(entry.action)
    if action is None:
        names = ", ".join(a.name for a in decl.actions)
        what = "unknown action" if entry.action else "the type has several actions; name one"
        errors.add((*base, "action"), f"{what} (actions: {names})")
        return None
    _check_params(entry.connection, decl.connection, (*base, "connection"), errors)
    # Per-key ordering: a FIFO target groups by the ordering key unless told otherwise.
    entry.settings = ordering.fifo_default(entry.settings, decl.settings + action.settings, entry)
    _check_params(entry.settings, decl.settings + action.settings, (*base, "settings"), errors)
    if decl.check is not None:
        for where, message in decl.check(entry.connection, entry.settings, list(entry.fields)):
            errors.add((*base, *where.split(".")), message)
    ref_errors: list[SpecError] = []
    connection = secrets.resolve(entry.connection, (*base, "connection"), ref_errors, environ)
    settings = secrets.resolve(entry.settings, (*base, "settings"), ref_errors, environ)
    errors.extend(ref_errors)

    condition = None
    if entry.when is not None:
        condition = errors.collect(parse_condition, entry.when, (*base, "when"))

    fields: list[MappedField] = []
    for name, spec in entry.fields.items():
        declared = action.field(name)
        if declared is None:
            known = ", ".join(f.name for f in action.fields)
            errors.add((*base, "fields", name), f"unknown field; {action.name} has: {known}")
            continue
        source = errors.collect(parse_source, spec, (*base, "fields", name))
        if source is not None:
            coercer = make_coercer(declared.type, declared.format)
            fields.append(MappedField(name, declared.type, source, coercer))
    for f in action.fields:
        if f.required and f.name not in entry.fields:
            errors.add((*base, "fields", f.name), "required field is not mapped")
    return CompiledIntegration(
        name=entry.name,
        type=decl,
        action=action,
        enabled=entry.enabled,
        condition=condition,
        fields=fields,
        connection=connection,
        settings=settings,
        options=entry.options,
    )
