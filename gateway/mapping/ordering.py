"""Per-key ordering (``options.ordering_key``): which key each delivery of a record is ordered
by, worked out once, when the record is accepted.

An entry's ordering key names one of its mapped fields (the value as the integration would get
it, after transforms, so ``lower`` makes ``A@x`` and ``a@x`` one key) or else a record
attribute (the raw value). An entry that sets none takes its action's default
(``Action.ordering_key``: actions that depend on earlier records of the same key). A record
with no value for the key is not ordered. The key is stored on the delivery; the store's claim
then only ever hands out the head of each key (``gateway.store.queries.is_head``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.mapping.errors import ErrorCollector, MappingError
from gateway.mapping.sources import MISSING

if TYPE_CHECKING:
    from gateway.integrations.base import Param
    from gateway.mapping.model import CompiledIntegration, CompiledMapping, EntrySpec, MappedField
    from gateway.store.base import NewRecord


@dataclass(frozen=True, slots=True)
class OrderingSpec:
    """How one entry's deliveries are ordered."""

    name: str  # the field or attribute named
    field: MappedField | None  # the mapped field of that name, if any; else an attribute
    block: bool  # ordering_on_dead: block

    def key(self, data: Mapping[str, Any]) -> str | None:
        """The record's key as stored, or None (no value: not ordered)."""
        if self.field is None:
            value = data.get(self.name)
        else:
            try:
                value = self.field.source.evaluate(data)
                if value is not MISSING:
                    value = self.field.coerce(value)
            except MappingError:
                return None  # the delivery fails on the same error when it is mapped
        if value is None or value is MISSING or value == "":
            return None
        if isinstance(value, str):
            return value
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def key_name(integration: CompiledIntegration) -> str | None:
    """The field or attribute an entry's ordering key names: its own, or its action's."""
    name = integration.options.ordering_key
    return name if name is not None else integration.action.ordering_key


def spec_of(integration: CompiledIntegration) -> OrderingSpec | None:
    """The entry's ordering, or None when it is not ordered."""
    name = key_name(integration)
    if name is None:
        return None
    field = next((f for f in integration.fields if f.name == name), None)
    return OrderingSpec(name, field, integration.options.ordering_on_dead == "block")


# (group, mapping version) -> the ordered entries by name; a mapping without any maps to an
# empty dict, so records of unordered groups cost one dictionary lookup.
_SPECS: dict[tuple[str, str], dict[str, OrderingSpec]] = {}


def _specs(mapping: CompiledMapping) -> dict[str, OrderingSpec]:
    cache_key = (mapping.group_key, mapping.version)
    specs = _SPECS.get(cache_key)
    if specs is None:
        specs = {}
        for integ in mapping.integrations:
            spec = spec_of(integ)
            if spec is not None:
                specs[integ.name] = spec
        if len(_SPECS) > 10000:  # reloads leave old versions behind; never grow unbounded
            _SPECS.clear()
        _SPECS[cache_key] = specs
    return specs


def stamp(record: NewRecord, mapping: CompiledMapping | None, data: Mapping[str, Any]) -> None:
    """Set ``record.ordering`` (per integration: None or (key, block)) from the mapping that
    fanned it out; left empty when none of its deliveries is ordered."""
    if mapping is None or not record.integrations:
        return
    specs = _specs(mapping)
    if not specs:
        return
    out: list[tuple[str, bool] | None] = []
    for name in record.integrations:
        spec = specs.get(name)
        key = spec.key(data) if spec is not None else None
        out.append(None if key is None else (key, spec.block if spec else False))
    if any(k is not None for k in out):
        record.ordering = out


#: The setting through which AWS FIFO queues and topics take their MessageGroupId field.
GROUP_SETTING = "message_group_id"


def fifo_default(
    settings: dict[str, Any], declared: tuple[Param, ...], entry: EntrySpec
) -> dict[str, Any]:
    """An entry's settings with ``message_group_id`` defaulting to its ordering key: a type
    that takes a message group (SQS and SNS FIFO) groups by the key that orders it, so AWS
    keeps the order the gateway sends in. Only when the key names a mapped field (the group
    id is a mapped field's value) and the entry sets no group of its own."""
    name = entry.options.ordering_key
    if (
        name is None
        or settings.get(GROUP_SETTING)
        or name not in entry.fields
        or not any(p.name == GROUP_SETTING for p in declared)
    ):
        return settings
    return {**settings, GROUP_SETTING: name}


def check(
    mapping: CompiledMapping, errors: ErrorCollector, paths: dict[str, tuple[Any, ...]]
) -> None:
    """``gateway check``: an ordering key must name a mapped field of its entry or an
    attribute the mapping file reads (in a field's source or a condition). ``paths`` gives
    each entry's key path in the file."""
    read: set[str] = set()
    for integ in mapping.integrations:
        for f in integ.fields:
            read.update(f.source.attributes)
        if integ.condition is not None:
            read.update(integ.condition.attributes)
    for integ in mapping.integrations:
        name = integ.options.ordering_key
        if name is None:
            continue
        if name in read or any(f.name == name for f in integ.fields):
            continue
        fields = ", ".join(f.name for f in integ.fields) or "none"
        errors.add(
            (*paths.get(integ.name, ()), "options", "ordering_key"),
            f"{name!r} is neither a mapped field of this entry ({fields}) nor an attribute "
            "the mapping reads",
        )
