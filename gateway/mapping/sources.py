"""Sources: where an integration field's value comes from in a record.

A source spec is an attribute name (``epost``) or a mapping with exactly one of

* ``path: namn`` (an attribute),
* ``value: lead`` (a constant),
* ``template: "{first} {last}"`` (text with ``{attribute}`` placeholders, ``{{``/``}}`` for braces),
* ``first_of: [epost, email]`` (the first attribute that has a value),

plus optional ``transform`` (a pipeline), ``default`` and ``required``.

Evaluation order: read the value; run the transforms (a missing attribute enters them as null,
so a ``default`` transform can fill it in); then, when the result is blank (missing, null,
empty or whitespace-only text, empty list), the source's ``default`` is used as written
(untransformed), or a ``required`` source fails with a MappingError. Otherwise the value is
returned as it is, blank or not; :data:`MISSING` means "the record has nothing for this field"
and a mapper leaves such a field out.

Templates: a missing or null attribute renders as empty text, lists as their items joined by
", "; when every placeholder is blank the template counts as missing (so ``required`` and
``default`` work for it too). A template without placeholders is a constant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.mapping.errors import ErrorCollector, KeyPath, MappingError, SpecErrors
from gateway.mapping.transforms import (
    EMPTY_PIPELINE,
    Pipeline,
    is_blank,
    is_flat,
    kind_of,
    parse_transforms,
    suggest,
    text_of,
)


class _Missing:
    """The type of :data:`MISSING`; falsy, one instance."""

    __slots__ = ()
    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"  # pickles as the module-level singleton


#: What a source gives when the record has no value for it (distinct from an explicit null).
MISSING: Any = _Missing()

KINDS = ("path", "value", "template", "first_of")
_OPTIONS = ("default", "transform", "required")

Reader = Callable[[Mapping[str, Any]], Any]


class Source:
    """A compiled source; build with :func:`parse_source`."""

    __slots__ = (
        "_piped",
        "_read",
        "attributes",
        "default",
        "has_default",
        "kind",
        "label",
        "pipeline",
        "required",
        "spec",
    )

    def __init__(
        self,
        kind: str,
        read: Reader,
        *,
        attributes: Iterable[str] = (),
        label: str,
        pipeline: Pipeline = EMPTY_PIPELINE,
        default: Any = MISSING,
        required: bool = False,
        spec: Any = None,
    ) -> None:
        self.kind = kind  # one of KINDS
        self._read = read
        #: The record attributes this source reads, in order (for the preview and checks).
        self.attributes: tuple[str, ...] = tuple(dict.fromkeys(attributes))
        #: How errors name this source: the attribute, or e.g. ``template: Hi {namn}``.
        self.label = label
        self.pipeline = pipeline
        self._piped = bool(pipeline)  # asked once a record: Pipeline.__bool__ is a call
        self.has_default = default is not MISSING
        self.default = default
        self.required = required
        self.spec = spec

    def evaluate(self, data: Mapping[str, Any]) -> Any:
        """The source's value for the record ``data``, or :data:`MISSING`.

        Raises MappingError (with ``source`` set) when a transform fails or a required
        source has no value.
        """
        try:
            raw = self._read(data)  # templates write values as text, which can fail
            value = raw
            if self._piped:
                value = self.pipeline.apply(None if raw is MISSING else raw)
                if value is None and raw is MISSING:
                    value = MISSING  # still nothing: keep "missing" apart from an explicit null
        except MappingError as exc:
            raise exc.with_context(source=self.label) from None
        if value is MISSING or is_blank(value):
            if self.has_default:
                default = self.default
                return list(default) if isinstance(default, list) else default
            if self.required:
                what = "attribute" if self.kind == "path" else "source"
                if value is MISSING:
                    raise MappingError(f"required {what} is missing", source=self.label)
                raise MappingError(f"required {what} has no value", source=self.label, value=value)
        return value

    def __repr__(self) -> str:
        return f"Source({self.spec!r})"


def parse_source(spec: Any, path: Iterable[str | int] = ()) -> Source:
    """Check a source spec and compile it.

    ``path`` is where the spec sits in its file (e.g. ``("integrations", 0, "fields",
    "email")``). Raises :class:`SpecErrors` with every problem found.
    """
    base = tuple(path)
    errors = ErrorCollector()
    source = _parse(spec, base, errors)
    errors.raise_if_any()
    assert source is not None  # no errors means it compiled
    return source


def _parse(spec: Any, path: KeyPath, errors: ErrorCollector) -> Source | None:
    if isinstance(spec, str):
        if not spec:
            errors.add(path, "an attribute name cannot be empty")
            return None
        return _path_source(spec, spec)
    if not isinstance(spec, dict):
        hint = f"; for a constant write {{value: {spec!r}}}" if is_flat(spec) else ""
        errors.add(
            path,
            "a source is an attribute name or a mapping with one of path, value, template, "
            f"first_of; got {kind_of(spec)}" + hint,
        )
        return None

    ok = True
    for key in spec:
        if key not in KINDS and key not in _OPTIONS:
            allowed = (*KINDS, *_OPTIONS)
            errors.add(
                (*path, key if isinstance(key, str | int) else str(key)),
                f"unknown key {key!r} in a source; allowed: {', '.join(allowed)}"
                + suggest(str(key), allowed),
            )
            ok = False
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        found = f"got {', '.join(kinds)}" if kinds else "got none"
        errors.add(path, f"a source needs exactly one of path, value, template, first_of; {found}")
        ok = False

    pipeline = errors.collect(parse_transforms, spec.get("transform"), (*path, "transform"))
    if pipeline is None:
        ok = False
    default = spec.get("default", MISSING)
    if default is not MISSING and not is_flat(default):
        errors.add((*path, "default"), "default must be text, a number, a boolean, null or a list")
        ok = False
    required = spec.get("required", False)
    if not isinstance(required, bool):
        errors.add((*path, "required"), f"required is true or false, got {required!r}")
        ok = False

    base: Source | None = None
    if len(kinds) == 1:
        kind = kinds[0]
        arg, at = spec[kind], (*path, kind)
        if kind == "path":
            base = _parse_path(arg, at, errors)
        elif kind == "value":
            base = _parse_value(arg, at, errors)
        elif kind == "template":
            base = _parse_template(arg, at, errors)
        else:
            base = _parse_first_of(arg, at, errors)
    if not ok or base is None or pipeline is None:
        return None
    return Source(
        base.kind,
        base._read,
        attributes=base.attributes,
        label=base.label,
        pipeline=pipeline,
        default=default,
        required=required,
        spec=spec,
    )


def _path_source(name: str, spec: Any) -> Source:
    def read(data: Mapping[str, Any]) -> Any:
        return data.get(name, MISSING)

    return Source("path", read, attributes=(name,), label=name, spec=spec)


def _parse_path(arg: Any, path: KeyPath, errors: ErrorCollector) -> Source | None:
    if not isinstance(arg, str) or not arg:
        errors.add(path, f"path must be an attribute name, got {kind_of(arg)}")
        return None
    return _path_source(arg, arg)


def _parse_value(arg: Any, path: KeyPath, errors: ErrorCollector) -> Source | None:
    if not is_flat(arg):
        errors.add(path, "value must be text, a number, a boolean, null or a list of those")
        return None
    if isinstance(arg, list):
        items = tuple(arg)

        def read_list(data: Mapping[str, Any]) -> Any:
            return list(items)  # a fresh list: nothing downstream may change the constant

        return Source("value", read_list, label="value", spec=arg)
    return Source("value", lambda data: arg, label="value", spec=arg)


def parse_template(template: str) -> list[str | tuple[str]]:
    """Split a template into literal text and ``(attribute,)`` placeholders.

    Raises ValueError naming the problem (unclosed or stray brace, empty placeholder).
    """
    parts: list[str | tuple[str]] = []
    literal: list[str] = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c == "{":
            if template.startswith("{", i + 1):
                literal.append("{")
                i += 2
                continue
            end = template.find("}", i + 1)
            if end < 0:
                raise ValueError(f"unclosed {{ at character {i + 1} (write {{{{ for a literal {{)")
            name = template[i + 1 : end].strip()
            if not name or "{" in name:
                raise ValueError(f"empty or malformed placeholder at character {i + 1}")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append((name,))
            i = end + 1
        elif c == "}":
            if template.startswith("}", i + 1):
                literal.append("}")
                i += 2
                continue
            raise ValueError(f"single }} at character {i + 1} (write }}}} for a literal }})")
        else:
            literal.append(c)
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def _render(value: Any) -> str:
    if value is MISSING or value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(text_of(v) for v in value if v is not None)
    return text_of(value)


def _parse_template(arg: Any, path: KeyPath, errors: ErrorCollector) -> Source | None:
    if not isinstance(arg, str):
        errors.add(path, f"template must be text, got {kind_of(arg)}")
        return None
    try:
        parts = parse_template(arg)
    except ValueError as exc:
        errors.add(path, f"invalid template: {exc}")
        return None
    names = [p[0] for p in parts if isinstance(p, tuple)]
    label = f"template: {arg}"
    if not names:
        constant = "".join(p for p in parts if isinstance(p, str))
        return Source("template", lambda data: constant, label=label, spec=arg)
    compiled = tuple(parts)

    def read(data: Mapping[str, Any]) -> Any:
        out: list[str] = []
        found = False
        for part in compiled:
            if isinstance(part, str):
                out.append(part)
                continue
            value = data.get(part[0], MISSING)
            if not found and value is not MISSING and not is_blank(value):
                found = True
            out.append(_render(value))
        return "".join(out) if found else MISSING

    return Source("template", read, attributes=names, label=label, spec=arg)


def _parse_first_of(arg: Any, path: KeyPath, errors: ErrorCollector) -> Source | None:
    if not isinstance(arg, list) or not arg:
        errors.add(path, "first_of needs a non-empty list of attribute names")
        return None
    ok = True
    for i, name in enumerate(arg):
        if not isinstance(name, str) or not name:
            errors.add((*path, i), f"an attribute name must be non-empty text, got {name!r}")
            ok = False
    if not ok:
        return None
    names = tuple(arg)

    def read(data: Mapping[str, Any]) -> Any:
        for name in names:
            value = data.get(name, MISSING)
            if value is not MISSING and not is_blank(value):
                return value
        return MISSING

    return Source(
        "first_of", read, attributes=names, label=f"first_of: {', '.join(names)}", spec=arg
    )


__all__ = ["KINDS", "MISSING", "Source", "SpecErrors", "parse_source", "parse_template"]
