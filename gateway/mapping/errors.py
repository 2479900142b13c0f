"""The two kinds of mapping error: one found while mapping a record, one found in a spec.

:class:`MappingError` is raised per record at send time (a permanent failure of that delivery,
never a retry): it names the integration field, the source attribute and the offending value.
:class:`SpecError` is found at load time in a mapping file; parsers collect every one of them
into a :class:`SpecErrors` so an operator sees all mistakes of a file at once, each with its key
path (which a loader turns into a line number).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

KeyPath = tuple[str | int, ...]

#: Longest ``repr`` of an offending value kept in a MappingError (records can be large, and
#: error texts end up in logs, the store and the admin API).
MAX_VALUE_REPR = 100

T = TypeVar("T")


class _NoValue:
    """Marks a MappingError that has no offending value (e.g. a required attribute is absent)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()


def short_repr(value: Any, limit: int = MAX_VALUE_REPR) -> str:
    """``repr(value)``, cut to ``limit`` characters with a trailing ``...`` when longer."""
    try:
        text = repr(value)
    except Exception:  # a repr that fails must not hide the mapping error being reported
        text = f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class MappingError(Exception):
    """A record could not be mapped: a transform failed, a value does not fit its field, or a
    required attribute is missing.

    ``value`` is the offending value's ``repr``, at most :data:`MAX_VALUE_REPR` characters
    (``None`` when there is no value, e.g. a missing attribute). ``field``, ``source`` and
    ``integration`` may be ``None`` where the raiser does not know them; outer layers fill
    them in with :meth:`with_context` as the error travels up.
    """

    def __init__(
        self,
        message: str,
        *,
        value: Any = NO_VALUE,
        field: str | None = None,
        source: str | None = None,
        integration: str | None = None,
    ) -> None:
        self.message = message
        self.value: str | None = None if value is NO_VALUE else short_repr(value)
        self.field = field
        self.source = source
        self.integration = integration
        super().__init__(message)

    def with_context(
        self,
        *,
        field: str | None = None,
        source: str | None = None,
        integration: str | None = None,
    ) -> MappingError:
        """Fill in whichever of field, source and integration are still unknown (in place).

        Returns ``self`` so a caller can ``raise exc.with_context(field=name) from None``;
        information set closer to the failure is never overwritten.
        """
        if self.field is None:
            self.field = field
        if self.source is None:
            self.source = source
        if self.integration is None:
            self.integration = integration
        return self

    def to_dict(self) -> dict[str, str | None]:
        """A JSON-ready form for previews, the admin API and delivery records."""
        return {
            "integration": self.integration,
            "field": self.field,
            "source": self.source,
            "value": self.value,
            "message": self.message,
        }

    def __str__(self) -> str:
        parts = []
        if self.integration is not None:
            parts.append(f"integration {self.integration!r}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        if self.source is not None:
            parts.append(f"source {self.source!r}")
        if self.value is not None:
            parts.append(f"value {self.value}")
        where = ", ".join(parts)
        return f"{where}: {self.message}" if where else self.message

    def __repr__(self) -> str:
        return f"MappingError({str(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the error picklable (e.g. across process pools) despite keyword-only arguments.
        return (_rebuild_mapping_error, (self.to_dict(),))


def _rebuild_mapping_error(state: dict[str, str | None]) -> MappingError:
    err = MappingError(state["message"] or "")
    err.value = state["value"]
    err.field = state["field"]
    err.source = state["source"]
    err.integration = state["integration"]
    return err


def format_key_path(path: Sequence[str | int]) -> str:
    """``("fields", "firstname", "transform", 0)`` -> ``fields.firstname.transform[0]``."""
    out = ""
    for key in path:
        if isinstance(key, int):
            out += f"[{key}]"
        else:
            out += f".{key}" if out else str(key)
    return out or "(top level)"


class SpecError(Exception):
    """One mistake in a mapping spec, found at load time, at ``path`` (keys and list indexes
    from the part of the file handed to the parser)."""

    def __init__(self, path: Iterable[str | int], message: str) -> None:
        self.path: KeyPath = tuple(path)
        self.message = message
        super().__init__(self.path, message)

    def prefixed(self, prefix: Iterable[str | int]) -> SpecError:
        """The same error with ``prefix`` put in front of its key path."""
        return SpecError((*prefix, *self.path), self.message)

    def __str__(self) -> str:
        return f"{format_key_path(self.path)}: {self.message}"

    def __repr__(self) -> str:
        return f"SpecError({self.path!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpecError):
            return NotImplemented
        return (self.path, self.message) == (other.path, other.message)

    def __hash__(self) -> int:
        return hash((self.path, self.message))

    def __reduce__(self) -> tuple[Any, ...]:
        return (SpecError, (self.path, self.message))


class SpecErrors(Exception):
    """Every mistake found in a spec; what the ``parse_*`` functions raise."""

    def __init__(self, errors: Iterable[SpecError]) -> None:
        self.errors: list[SpecError] = list(errors)
        super().__init__(self.errors)

    def prefixed(self, prefix: Iterable[str | int]) -> SpecErrors:
        """The same errors with ``prefix`` put in front of every key path."""
        prefix = tuple(prefix)
        return SpecErrors(e.prefixed(prefix) for e in self.errors)

    def __iter__(self) -> Iterator[SpecError]:
        return iter(self.errors)

    def __len__(self) -> int:
        return len(self.errors)

    def __str__(self) -> str:
        if len(self.errors) == 1:
            return str(self.errors[0])
        return f"{len(self.errors)} errors:\n" + "\n".join(f"  {e}" for e in self.errors)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SpecErrors, (self.errors,))


class ErrorCollector:
    """Gathers spec errors while parsing goes on, so one call reports all of them.

    Typical use::

        errors = ErrorCollector()
        when = errors.collect(parse_condition, spec["when"], path=("when",))
        ...
        errors.raise_if_any()
    """

    def __init__(self) -> None:
        self.errors: list[SpecError] = []

    def add(self, path: Iterable[str | int], message: str) -> None:
        """Record one error at ``path``."""
        self.errors.append(SpecError(path, message))

    def extend(self, errors: Iterable[SpecError]) -> None:
        """Record errors found elsewhere (e.g. a caught :class:`SpecErrors`)."""
        self.errors.extend(errors)

    def collect(self, parse: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call ``parse``; on :class:`SpecErrors` record them and return ``None``."""
        try:
            return parse(*args, **kwargs)
        except SpecErrors as exc:
            self.errors.extend(exc.errors)
            return None
        except SpecError as exc:
            self.errors.append(exc)
            return None

    def __bool__(self) -> bool:
        return bool(self.errors)

    def raise_if_any(self) -> None:
        """Raise :class:`SpecErrors` with everything recorded, if anything was."""
        if self.errors:
            raise SpecErrors(self.errors)
