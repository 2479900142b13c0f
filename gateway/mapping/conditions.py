"""Conditions (``when``): a closed set of operators on a record's flat data.

Syntax::

    {consent: {eq: true}}                              # attribute: {operator: argument}
    {country: {in: [SE, NO]}, age: {gte: 18, lt: 65}}  # several attributes / operators: all hold
    {all: [c1, c2]}  {any: [c1, c2]}  {not: c}         # combinators

Semantics (docs/transforms.md says the same for operators):

* No type conversion: ``"true"`` (text) is not ``true``, ``"1"`` is not ``1``, and a boolean is
  never a number (``true`` does not equal ``1``). ``1`` equals ``1.0``.
* A missing attribute fails every operator except ``ne``, ``nin`` and ``exists: false``.
* ``exists: true`` means present and not null (empty text exists: add ``ne: ""`` to refuse it).
* ``eq``/``ne`` with a list compare the whole list (same items, same order).
* ``in``/``nin`` with a list-valued attribute: ``in`` holds when any item is in the argument,
  ``nin`` when none is.
* ``gt``/``gte``/``lt``/``lte`` compare numbers with numbers and text with text (ISO dates
  compare correctly as text); anything else, lists included, is false, never an error.
* ``regex`` searches (use ``^...$`` to anchor) text, or any text item of a list.

``all``, ``any`` and ``not`` are reserved words: an attribute with one of those names cannot
be tested. :meth:`Condition.matches` never raises.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.mapping.errors import ErrorCollector, KeyPath, SpecErrors
from gateway.mapping.transforms import is_flat, kind_of, suggest

Predicate = Callable[[Mapping[str, Any]], bool]

OPERATORS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "exists", "regex")
COMBINATORS = ("all", "any", "not")

_ABSENT: Any = object()
_ORDER = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}


class Condition:
    """A compiled condition; build with :func:`parse_condition`."""

    __slots__ = ("_predicate", "attributes", "spec")

    def __init__(self, predicate: Predicate, attributes: Iterable[str], spec: Any) -> None:
        self._predicate = predicate
        #: The record attributes the condition reads, in the order written (for the preview).
        self.attributes: tuple[str, ...] = tuple(dict.fromkeys(attributes))
        self.spec = spec

    def matches(self, data: Mapping[str, Any]) -> bool:
        """Whether the record's flat ``data`` satisfies the condition. Never raises."""
        return self._predicate(data)

    def __repr__(self) -> str:
        return f"Condition({self.spec!r})"


#: The condition of an integration without ``when``.
ALWAYS = Condition(lambda data: True, (), None)


def same(a: Any, b: Any) -> bool:
    """Equality without type conversion: booleans only equal booleans, numbers compare by
    value (1 == 1.0), text by exact content, lists item by item in order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return False


def _member_key(value: Any) -> tuple[str, Any] | None:
    """A hashable key under which ``same`` values collide: the type family plus the value."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)  # 1 and 1.0 hash alike and compare equal, as `same` wants
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return ("z", None)
    return None


def parse_condition(spec: Any, path: Iterable[str | int] = ()) -> Condition:
    """Check a condition spec and compile it.

    ``path`` is where the spec sits in its file (e.g. ``("integrations", 0, "when")``).
    Raises :class:`SpecErrors` with every problem found.
    """
    errors = ErrorCollector()
    attributes: list[str] = []
    predicate = _compile(spec, tuple(path), errors, attributes)
    errors.raise_if_any()
    assert predicate is not None  # no errors means every part compiled
    return Condition(predicate, attributes, spec)


def _compile(
    spec: Any, path: KeyPath, errors: ErrorCollector, attributes: list[str]
) -> Predicate | None:
    if not isinstance(spec, dict) or not spec:
        errors.add(
            path,
            "a condition is a non-empty mapping such as {consent: {eq: true}}, "
            f"{{all: [...]}}, {{any: [...]}} or {{not: ...}}; got {_describe(spec)}",
        )
        return None
    parts: list[Predicate] = []
    ok = True
    for key, value in spec.items():
        if not isinstance(key, str):
            errors.add((*path, str(key)), f"an attribute name must be text, got {key!r}")
            ok = False
            continue
        at = (*path, key)
        if key in ("all", "any"):
            part = _compile_group(key, value, at, errors, attributes)
        elif key == "not":
            inner = _compile(value, at, errors, attributes)
            part = None if inner is None else _negate(inner)
        else:
            attributes.append(key)
            part = _compile_attribute(key, value, at, errors)
        if part is None:
            ok = False
        else:
            parts.append(part)
    if not ok:
        return None
    return _conjunction(parts)


def _compile_group(
    key: str, value: Any, path: KeyPath, errors: ErrorCollector, attributes: list[str]
) -> Predicate | None:
    if not isinstance(value, list) or not value:
        errors.add(path, f"{key} needs a non-empty list of conditions, got {_describe(value)}")
        return None
    parts = [_compile(item, (*path, i), errors, attributes) for i, item in enumerate(value)]
    if any(p is None for p in parts):
        return None
    checked = [p for p in parts if p is not None]
    if key == "all":
        return _conjunction(checked)
    if len(checked) == 1:
        return checked[0]
    return lambda data: any(p(data) for p in checked)


def _conjunction(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    return lambda data: all(p(data) for p in parts)


def _negate(inner: Predicate) -> Predicate:
    return lambda data: not inner(data)


def _compile_attribute(
    name: str, ops: Any, path: KeyPath, errors: ErrorCollector
) -> Predicate | None:
    if not isinstance(ops, dict) or not ops:
        errors.add(
            path,
            f"the condition on {name!r} must be a mapping of operators such as "
            f"{{{name}: {{eq: ...}}}}; got {_describe(ops)}",
        )
        return None
    parts: list[Predicate] = []
    ok = True
    for op, arg in ops.items():
        part = _compile_operator(
            name, op, arg, (*path, op if isinstance(op, str) else str(op)), errors
        )
        if part is None:
            ok = False
        else:
            parts.append(part)
    if not ok:
        return None
    return _conjunction(parts)


def _compile_operator(
    name: str, op: Any, arg: Any, path: KeyPath, errors: ErrorCollector
) -> Predicate | None:
    if op not in OPERATORS:
        hint = suggest(str(op), OPERATORS)
        if op in COMBINATORS:
            hint = f" ({op} combines conditions: {{{op}: ...}} at the level of attributes)"
        errors.add(path, f"unknown operator {op!r}; operators: {', '.join(OPERATORS)}" + hint)
        return None

    if op in ("eq", "ne"):
        if not is_flat(arg):
            errors.add(
                path, f"{op} compares with a value or a list of values, got {_describe(arg)}"
            )
            return None
        return _make_eq(name, arg, negate=op == "ne")

    if op in ("in", "nin"):
        if not isinstance(arg, list) or not arg or not is_flat(arg):
            errors.add(path, f"{op} needs a non-empty list of values, got {_describe(arg)}")
            return None
        return _make_in(name, arg, negate=op == "nin")

    if op in _ORDER:
        if isinstance(arg, bool) or not isinstance(arg, int | float | str):
            errors.add(path, f"{op} compares with a number or text, got {_describe(arg)}")
            return None
        return _make_order(name, _ORDER[op], arg)

    if op == "exists":
        if not isinstance(arg, bool):
            errors.add(path, f"exists takes true or false, got {_describe(arg)}")
            return None
        wanted = arg
        return lambda data: (data.get(name) is not None) is wanted

    # regex
    if not isinstance(arg, str) or not arg:
        errors.add(path, f"regex needs a regular expression (text), got {_describe(arg)}")
        return None
    try:
        regex = re.compile(arg)
    except re.error as exc:
        errors.add(path, f"invalid regular expression: {exc}")
        return None
    return _make_regex(name, regex)


def _make_eq(name: str, arg: Any, *, negate: bool) -> Predicate:
    def eq(data: Mapping[str, Any]) -> bool:
        value = data.get(name, _ABSENT)
        return value is not _ABSENT and same(value, arg)

    if negate:
        return lambda data: not eq(data)
    return eq


def _make_in(name: str, arg: list[Any], *, negate: bool) -> Predicate:
    members = frozenset(k for k in map(_member_key, arg) if k is not None)

    def contains(value: Any) -> bool:
        key = _member_key(value)
        return key is not None and key in members

    def is_in(data: Mapping[str, Any]) -> bool:
        value = data.get(name, _ABSENT)
        if value is _ABSENT:
            return False
        if isinstance(value, list):
            return any(contains(item) for item in value)
        return contains(value)

    if negate:
        return lambda data: not is_in(data)
    return is_in


def _make_order(name: str, compare: Callable[[Any, Any], bool], arg: Any) -> Predicate:
    if isinstance(arg, str):

        def text_order(data: Mapping[str, Any]) -> bool:
            value = data.get(name)
            return isinstance(value, str) and compare(value, arg)

        return text_order

    def number_order(data: Mapping[str, Any]) -> bool:
        value = data.get(name)
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and compare(value, arg)
        )

    return number_order


def _make_regex(name: str, regex: re.Pattern[str]) -> Predicate:
    def search(data: Mapping[str, Any]) -> bool:
        value = data.get(name)
        if isinstance(value, str):
            return regex.search(value) is not None
        if isinstance(value, list):
            return any(isinstance(i, str) and regex.search(i) is not None for i in value)
        return False

    return search


def _describe(value: Any) -> str:
    if isinstance(value, dict | list) and not value:
        return "an empty " + ("mapping" if isinstance(value, dict) else "list")
    if isinstance(value, dict):
        return "a mapping"
    return kind_of(value) if value is None or isinstance(value, list) else repr(value)


__all__ = [
    "ALWAYS",
    "COMBINATORS",
    "OPERATORS",
    "Condition",
    "SpecErrors",
    "parse_condition",
    "same",
]
