"""Transforms: the closed list of value conversions a mapping file may name.

A spec is a name (``lower``), a one-key mapping of a name to its argument (``{join: ";"}``), or a
list of those applied in order. :func:`parse_transforms` checks a spec once, at load time, and
compiles it into a :class:`Pipeline` (regexes compiled, time zones and phone regions resolved);
:meth:`Pipeline.apply` then runs per record per field and raises only :class:`MappingError`.

Rules every transform follows (docs/transforms.md is the operator's version of this):

* ``None`` (a null or missing attribute) passes through unchanged; only ``default`` acts on it.
* Text transforms applied to a list work on each item (``None`` items stay ``None``);
  ``split`` splits every item and flattens, ``join`` turns a list into text, ``default`` looks at
  the whole value.
* A value of the wrong type is a MappingError naming the transform and the value: nothing is
  converted silently (``lower`` of a number is an error: put ``to_string`` first).
* Parsing transforms (``to_int``, ``to_float``, ``to_bool``, ``date``, ``e164``, ``sha256``) treat
  empty or whitespace-only text as "no value" and give ``None``: forms send ``""`` for an
  unfilled input, and that is not a malformed number.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import unicodedata
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from types import MappingProxyType
from typing import Any, Literal

import phonenumbers

from gateway.mapping.errors import ErrorCollector, KeyPath, MappingError, SpecErrors

Fn = Callable[[Any], Any]

# ---------------------------------------------------------------------------------------------
# Shared value helpers (also used by sources and fieldtypes, so every part of the mapper
# writes numbers and booleans as text the same way).

TRUE_WORDS = frozenset({"true", "t", "yes", "y", "on", "1", "ja"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "off", "0", "nej"})

_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def kind_of(value: Any) -> str:
    """How a value's type is named in error messages (operators know JSON, not Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def is_blank(value: Any) -> bool:
    """True for "no value": None, empty or whitespace-only text, an empty list."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value or value.isspace()
    if isinstance(value, list):
        return not value
    return False


def text_of(value: Any) -> str:
    """A scalar written as text: numbers as JSON writes them, booleans as ``true``/``false``.

    Raises MappingError for lists, objects and anything else that is not a scalar.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # Python refuses to write ints of more than 4300 digits
            raise MappingError("number too large to write as text", value=value) from None
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float
    raise MappingError(f"{kind_of(value)} cannot be written as text", value=value)


def parse_int_text(text: str) -> int | None:
    """``text`` as an int if it is a plain decimal integer (sign allowed), else None."""
    if _INT_RE.fullmatch(text) is None:
        return None
    try:
        return int(text)
    except ValueError:  # more digits than Python converts
        return None


def parse_float_text(text: str) -> float | None:
    """``text`` as a finite float if it is a decimal number (``4.2``, ``-1e3``), else None.

    No ``nan``/``inf``, no digit separators, no decimal comma: what cannot be read without
    guessing is refused.
    """
    if _FLOAT_RE.fullmatch(text) is None:
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def bool_of_text(text: str) -> bool | None:
    """``text`` (trimmed, any case) as a boolean per TRUE_WORDS / FALSE_WORDS, else None."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def parse_iso8601(text: str) -> datetime | None:
    """An ISO 8601 date or date-time (``Z`` and offsets allowed), else None."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def phone_to_e164(value: Any, region: str | None, who: str) -> str | None:
    """A phone number (text or int) in E.164 (``+46701234567``); None for blank text.

    ``region`` is the ISO 3166 region assumed for numbers written without ``+``. ``who`` names
    the transform or field type in error messages.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MappingError(f"{who} expects text or a number, got {kind_of(value)}", value=value)
    text = value.strip() if isinstance(value, str) else text_of(value)
    if not text:
        return None
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            reason = (
                "no country code: write it as +<country code><number> or give a default region"
                if region is None
                else "invalid country code"
            )
        else:
            # str() is "(<code>) <sentence>."; the sentence is what an operator can act on.
            reason = re.sub(r"^\(\d+\)\s*", "", str(exc)).rstrip(".")
        raise MappingError(f"{who}: not a phone number ({reason})", value=value) from None
    if not phonenumbers.is_valid_number(number):
        where = f" (default region {region})" if region else ""
        raise MappingError(f"{who}: not a valid phone number{where}", value=value)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_region(region: Any) -> tuple[str | None, str | None]:
    """A phone default region, upper-cased: ``(region, None)`` or ``(None, error message)``."""
    if isinstance(region, bool):
        # YAML 1.1 reads a bare NO (Norway) as false; say so rather than "unknown region False".
        return (
            None,
            f'phone region must be quoted text (YAML read it as {str(region).lower()}): "NO"',
        )
    if not isinstance(region, str) or region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        return None, (
            f"unknown phone region {region!r}: use a two-letter ISO 3166 code such as SE, "
            "NO, DE, GB or US"
        )
    return region.upper(), None


def _wrong_type(name: str, value: Any, expected: str = "text") -> MappingError:
    return MappingError(f"{name} expects {expected}, got {kind_of(value)}", value=value)


def _per_item(fn: Fn) -> Fn:
    """Lift a scalar function: None passes, lists are mapped item by item (None items kept)."""

    def apply(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, list):
            return [None if item is None else fn(item) for item in value]
        return fn(value)

    return apply


def _text_only(name: str, fn: Callable[[str], Any]) -> Fn:
    """A per-item transform that accepts only text."""

    def apply(value: Any) -> Any:
        if not isinstance(value, str):
            raise _wrong_type(name, value)
        return fn(value)

    return _per_item(apply)


# ---------------------------------------------------------------------------------------------
# The pipeline.


@dataclass(frozen=True, slots=True)
class Step:
    """One compiled transform: its name, the spec it came from (for display) and its function."""

    name: str
    spec: Any
    fn: Fn


class Pipeline:
    """Compiled transforms applied in order; build with :func:`parse_transforms`."""

    __slots__ = ("steps",)

    def __init__(self, steps: Iterable[Step] = ()) -> None:
        self.steps: tuple[Step, ...] = tuple(steps)

    def apply(self, value: Any) -> Any:
        """Run every step on ``value`` (None stands for a missing value).

        Raises only MappingError; its message names the transform and its value is the
        offending one.
        """
        for step in self.steps:
            try:
                value = step.fn(value)
            except MappingError:
                raise
            except Exception as exc:
                # Library code (phonenumbers, strptime, zoneinfo) may fail in ways we did not
                # foresee; one odd value must fail its own delivery, never crash a lane.
                raise MappingError(
                    f"{step.name}: internal error: {type(exc).__name__}: {exc}", value=value
                ) from exc
        return value

    @property
    def names(self) -> tuple[str, ...]:
        """The transforms' names, in order."""
        return tuple(s.name for s in self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __repr__(self) -> str:
        return f"Pipeline({[s.spec for s in self.steps]!r})"


EMPTY_PIPELINE = Pipeline()

# ---------------------------------------------------------------------------------------------
# The registry.

_NOARG: Any = object()
Builder = Callable[[Any, KeyPath, ErrorCollector], Fn | None]


@dataclass(frozen=True, slots=True)
class TransformInfo:
    """A transform's declaration: how it is written and what it does to lists."""

    name: str
    arg: Literal["none", "optional", "required"]
    lists: Literal["items", "flatten", "join", "whole"]
    summary: str
    example: Any  # a valid spec, shown in error messages and checked by the tests
    build: Builder


_REGISTRY: dict[str, TransformInfo] = {}


def _transform(
    name: str,
    arg: Literal["none", "optional", "required"],
    lists: Literal["items", "flatten", "join", "whole"],
    summary: str,
    example: Any,
) -> Callable[[Builder], Builder]:
    def register(build: Builder) -> Builder:
        _REGISTRY[name] = TransformInfo(name, arg, lists, summary, example, build)
        return build

    return register


# -- case, whitespace, words -------------------------------------------------------------------

_TRIM_RE = re.compile(r"^[\s\u200b\ufeff]+|[\s\u200b\ufeff]+$")


@_transform("lower", "none", "items", "Lower-case text.", "lower")
def _lower(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn:
    return _text_only("lower", str.lower)


@_transform("upper", "none", "items", "Upper-case text.", "upper")
def _upper(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn:
    return _text_only("upper", str.upper)


@_transform("trim", "none", "items", "Remove leading and trailing whitespace.", "trim")
def _trim(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn:
    # Zero-width space and BOM are not whitespace to str.strip(), but pasted text carries them.
    return _text_only("trim", lambda s: _TRIM_RE.sub("", s))


@_transform("first_word", "none", "items", "The first word of text.", "first_word")
def _first_word(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn:
    def first(s: str) -> str:
        words = s.split(None, 1)  # no separator: any run of Unicode whitespace
        return words[0] if words else ""

    return _text_only("first_word", first)


@_transform(
    "rest_words", "none", "items", "All words but the first, joined by one space.", "rest_words"
)
def _rest_words(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn:
    return _text_only("rest_words", lambda s: " ".join(s.split()[1:]))


@_transform(
    "truncate", "required", "items", "Keep at most N characters of text.", {"truncate": 100}
)
def _truncate(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn | None:
    if isinstance(arg, bool) or not isinstance(arg, int) or arg < 0:
        errors.add(path, f"truncate needs a whole number of characters >= 0, got {arg!r}")
        return None
    limit = arg
    return _text_only("truncate", lambda s: s[:limit])


def _affix(name: str, arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn | None:
    if isinstance(arg, bool) or not isinstance(arg, str | int | float):
        errors.add(path, f"{name} needs text, got {kind_of(arg)}")
        return None
    affix = text_of(arg)
    before = name == "prefix"

    def apply(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _wrong_type(name, value, "text or a number")
        text = text_of(value)
        if not text:
            return text  # nothing to decorate: "" must stay "no value", not become the affix
        return affix + text if before else text + affix

    return _per_item(apply)


@_transform("prefix", "required", "items", "Put text before the value.", {"prefix": "ORD-"})
def _prefix(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn | None:
    return _affix("prefix", arg, path, errors)


@_transform("suffix", "required", "items", "Put text after the value.", {"suffix": " AB"})
def _suffix(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn | None:
    return _affix("suffix", arg, path, errors)


# -- regex replace -----------------------------------------------------------------------------


@_transform(
    "replace",
    "required",
    "items",
    "Replace every match of a regular expression.",
    {"replace": {"pattern": "\\s+", "with": " "}},
)
def _replace(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn | None:
    if not isinstance(arg, dict):
        errors.add(path, 'replace needs {pattern: "<regex>", with: "<text>"}')
        return None
    ok = _check_keys(arg, {"pattern", "with"}, path, errors, "replace")
    pattern, repl = arg.get("pattern"), arg.get("with", "")
    if not isinstance(pattern, str) or not pattern:
        errors.add((*path, "pattern"), "replace needs a pattern (a regular expression)")
        return None
    if not isinstance(repl, str):
        errors.add((*path, "with"), f"replace 'with' must be text, got {kind_of(repl)}")
        ok = False
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        errors.add((*path, "pattern"), f"invalid regular expression: {exc}")
        return None
    if isinstance(repl, str):
        message = _check_replacement(pattern, repl)
        if message:
            errors.add((*path, "with"), f"invalid replacement: {message}")
            ok = False
    if not ok:
        return None
    return _text_only("replace", lambda s: regex.sub(repl, s))


def _check_replacement(pattern: str, repl: str) -> str | None:
    """Check ``\\1``/``\\g<name>`` references in ``repl`` now rather than at the first match.

    ``pattern`` plus an empty alternative always matches "" with the same groups, and
    ``Match.expand`` reports bad references and escapes as ``re.error``. The newline ends a
    trailing comment in verbose patterns.
    """
    try:
        match = re.compile(pattern + "\n|").match("")
    except re.error:
        return None
    if match is None:
        return None
    try:
        match.expand(repl)
    except (re.error, IndexError) as exc:
        return str(exc)
    return None


# -- lists -------------------------------------------------------------------------------------


@_transform(
    "split",
    "optional",
    "flatten",
    'Split text into a list at a separator (default ",").',
    {"split": ";"},
)
def _split(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn | None:
    sep = "," if arg is _NOARG or arg is None else arg
    if not isinstance(sep, str) or not sep:
        errors.add(path, f"split needs a non-empty separator text, got {arg!r}")
        return None

    def one(text: Any) -> list[str]:
        if not isinstance(text, str):
            raise _wrong_type("split", text)
        return text.split(sep) if text else []

    def apply(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, list):
            # Already a list: split each item and flatten, so the result stays a flat list.
            return [part for item in value if item is not None for part in one(item)]
        return one(value)

    return apply


@_transform("join", "required", "join", "Join a list into text with a separator.", {"join": ";"})
def _join(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn | None:
    if not isinstance(arg, str):
        errors.add(path, f'join needs a separator text (e.g. {{join: ";"}}), got {kind_of(arg)}')
        return None
    sep = arg

    def apply(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, list):
            parts = []
            for item in value:
                if item is None:
                    continue
                if not isinstance(item, str | int | float):
                    raise _wrong_type("join", item, "a list of text or numbers")
                parts.append(text_of(item))
            return sep.join(parts)
        if not isinstance(value, str | int | float):
            raise _wrong_type("join", value, "a list")
        return text_of(value)  # a single value is a one-item list

    return apply


# -- type conversion ---------------------------------------------------------------------------


@_transform("to_string", "none", "items", "Numbers and booleans as text (true/false).", "to_string")
def _to_string(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn:
    def apply(value: Any) -> str:
        if not isinstance(value, str | int | float):
            raise _wrong_type("to_string", value, "text, a number or a boolean")
        return text_of(value)

    return _per_item(apply)


@_transform("to_int", "none", "items", "A whole number from a number or decimal text.", "to_int")
def _to_int(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn:
    def apply(value: Any) -> int | None:
        if isinstance(value, bool):
            raise _wrong_type("to_int", value, "a number or text")
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if value.is_integer():
                return int(value)
            raise MappingError("to_int: not a whole number", value=value)
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            number = parse_int_text(text)
            if number is not None:
                return number
            decimal = parse_float_text(text)
            if decimal is not None and decimal.is_integer():
                return int(decimal)  # "42.0" and "1e3" are whole numbers too
            raise MappingError("to_int: not a whole number", value=value)
        raise _wrong_type("to_int", value, "a number or text")

    return _per_item(apply)


@_transform("to_float", "none", "items", "A decimal number from a number or text.", "to_float")
def _to_float(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn:
    def apply(value: Any) -> float | None:
        if isinstance(value, bool):
            raise _wrong_type("to_float", value, "a number or text")
        if isinstance(value, int | float):
            try:
                number = float(value)
            except OverflowError:
                raise MappingError("to_float: number too large", value=value) from None
            if not math.isfinite(number):
                raise MappingError("to_float: not a finite number", value=value)
            return number
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            parsed = parse_float_text(text)
            if parsed is None:
                raise MappingError(
                    "to_float: not a decimal number (use . for decimals)", value=value
                )
            return parsed
        raise _wrong_type("to_float", value, "a number or text")

    return _per_item(apply)


@_transform("to_bool", "none", "items", "A boolean from yes/no-style text or 1/0.", "to_bool")
def _to_bool(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn:
    def apply(value: Any) -> bool | None:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return value == 1
        if isinstance(value, str):
            if not value.strip():
                return None
            result = bool_of_text(value)
            if result is not None:
                return result
            raise MappingError(
                "to_bool: not a boolean word (true/false, yes/no, y/n, on/off, 1/0, ja/nej)",
                value=value,
            )
        if isinstance(value, int | float):
            raise MappingError("to_bool: only the numbers 1 and 0 are booleans", value=value)
        raise _wrong_type("to_bool", value, "a boolean, 1/0 or text")

    return _per_item(apply)


# -- dates -------------------------------------------------------------------------------------

_EPOCH_UNITS = {"epoch_s": timedelta(seconds=1), "epoch_ms": timedelta(milliseconds=1)}
_SPECIAL_INPUTS = {"iso8601", *_EPOCH_UNITS}


def resolve_zone(name: Any) -> tuple[tzinfo | None, str | None]:
    """A time zone by IANA name (``Europe/Stockholm``, ``UTC``): ``(zone, None)`` or
    ``(None, error message)``."""
    if not isinstance(name, str) or not name:
        return None, f"time zone must be an IANA name such as Europe/Stockholm, got {name!r}"
    if name.upper() == "UTC":
        return UTC, None
    try:
        return zoneinfo.ZoneInfo(name), None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None, f"unknown time zone {name!r} (an IANA name such as Europe/Stockholm)"


def check_strftime(fmt: str, *, parsing: bool) -> str | None:
    """An error message for a date format that cannot work, or None.

    Catches the usual mistakes at load time: Java/Excel style formats without ``%`` and, for
    input formats, directives strptime does not know (it reports those only when called).
    """
    if "%" not in fmt:
        return f"date format {fmt!r} has no % directives (use Python's, e.g. %Y-%m-%d)"
    sample = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
    try:
        text = sample.strftime(fmt)
    except ValueError as exc:
        return f"invalid date format {fmt!r}: {exc}"
    if parsing:
        try:
            datetime.strptime(text, fmt)
        except ValueError as exc:
            if "directive" in str(exc) or "stray %" in str(exc):
                return f"invalid date format {fmt!r}: {exc}"
    return None


def format_datetime(dt: datetime, output: str) -> Any:
    """``dt`` written as ``output``: ``iso8601``, ``epoch_s``, ``epoch_ms`` or a strftime format."""
    if output == "iso8601":
        return dt.isoformat()
    if output in _EPOCH_UNITS:
        return (dt - _EPOCH) // _EPOCH_UNITS[output]  # floor, exact even for milliseconds
    return dt.strftime(output)


@_transform(
    "date",
    "optional",
    "items",
    "Parse a date/time and write it in another format and time zone.",
    {"date": {"input": ["%d/%m/%Y", "iso8601"], "output": "%Y-%m-%d", "tz": "Europe/Stockholm"}},
)
def _date(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn | None:
    if arg is _NOARG or arg is None:
        arg = {}
    if not isinstance(arg, dict):
        errors.add(path, "date needs {input: [formats], output: format, tz: zone} (all optional)")
        return None
    ok = _check_keys(arg, {"input", "output", "tz", "output_tz"}, path, errors, "date")
    inputs = arg.get("input", ["iso8601"])
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        errors.add((*path, "input"), "input must be a format or a non-empty list of formats")
        inputs, ok = [], False
    for i, fmt in enumerate(inputs):
        at = (*path, "input", i) if isinstance(arg.get("input"), list) else (*path, "input")
        if not isinstance(fmt, str):
            errors.add(at, f"an input format must be text, got {kind_of(fmt)}")
            ok = False
        elif fmt not in _SPECIAL_INPUTS:
            message = check_strftime(fmt, parsing=True)
            if message:
                errors.add(at, message)
                ok = False
    output = arg.get("output", "iso8601")
    if not isinstance(output, str):
        errors.add((*path, "output"), f"output must be a format, got {kind_of(output)}")
        ok = False
    elif output != "iso8601" and output not in _EPOCH_UNITS:
        message = check_strftime(output, parsing=False)
        if message:
            errors.add((*path, "output"), message)
            ok = False
    zone, message = resolve_zone(arg.get("tz", "UTC"))
    if message:
        errors.add((*path, "tz"), message)
        ok = False
    out_zone = zone
    if "output_tz" in arg:
        out_zone, message = resolve_zone(arg["output_tz"])
        if message:
            errors.add((*path, "output_tz"), message)
            ok = False
    if not ok or zone is None or out_zone is None:
        return None
    in_zone: tzinfo = zone
    to_zone: tzinfo = out_zone
    formats = tuple(inputs)
    epoch_format = next((f for f in formats if f in _EPOCH_UNITS), None)

    def parse(value: Any) -> datetime | None:
        if isinstance(value, bool):
            raise _wrong_type("date", value, "text or a number")
        if isinstance(value, int | float):
            if epoch_format is None:
                raise MappingError("date: a number needs input epoch_s or epoch_ms", value=value)
            return _from_epoch(value, epoch_format)
        if not isinstance(value, str):
            raise _wrong_type("date", value, "text or a number")
        text = value.strip()
        if not text:
            return None
        for fmt in formats:
            if fmt == "iso8601":
                dt = parse_iso8601(text)
            elif fmt in _EPOCH_UNITS:
                number: float | int | None = parse_int_text(text)
                if number is None:
                    number = parse_float_text(text)
                dt = None if number is None else _from_epoch(number, fmt)
            else:
                try:
                    dt = datetime.strptime(text, fmt)
                except ValueError:
                    dt = None
            if dt is not None:
                return dt
        raise MappingError(
            f"date: does not match any input format ({', '.join(formats)})", value=value
        )

    def apply(value: Any) -> Any:
        dt = parse(value)
        if dt is None:
            return None
        try:
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=in_zone)  # naive input: wall-clock time in tz
            return format_datetime(dt.astimezone(to_zone), output)
        except (OverflowError, ValueError) as exc:
            raise MappingError(f"date: out of range ({exc})", value=value) from None

    return _per_item(apply)


def _from_epoch(number: float | int, unit: str) -> datetime:
    try:
        if isinstance(number, int):
            return _EPOCH + number * _EPOCH_UNITS[unit]  # exact integer arithmetic
        if not math.isfinite(number):
            raise ValueError("not finite")
        return _EPOCH + timedelta(seconds=number * _EPOCH_UNITS[unit].total_seconds())
    except (OverflowError, ValueError):
        raise MappingError(f"date: {unit} timestamp out of range", value=number) from None


# -- phone numbers and hashing -----------------------------------------------------------------


@_transform(
    "e164",
    "optional",
    "items",
    "A phone number in E.164 (+46701234567); the argument is the default region.",
    {"e164": "SE"},
)
def _e164(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn | None:
    region = None
    if arg is not _NOARG and arg is not None:
        region, message = check_region(arg)
        if message:
            errors.add(path, message)
            return None

    def apply(value: Any) -> str | None:
        return phone_to_e164(value, region, "e164")

    return _per_item(apply)


_HEX64_RE = re.compile(r"[0-9a-fA-F]{64}")
_PHONE_LIKE_RE = re.compile(r"\+?[0-9\s().\-/]+")
_SHA256_MODES = ("auto", "email", "phone", "text", "raw")


def normalise_for_hash(text: str, mode: str = "auto") -> str | None:
    """The normalised form of an identifier before hashing (Meta / Google customer match).

    e-mail: trimmed, lower-cased. phone: digits only (E.164 without ``+``). text: trimmed,
    lower-cased. raw: as is. auto: e-mail when it holds ``@``, phone when it is only digits,
    spaces, ``+ ( ) . - /`` with at least 7 digits, text otherwise. Unicode is NFC-normalised
    first so ``å`` typed either way hashes the same. Returns None for blank text.
    """
    if mode == "raw":
        return text
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        return None
    if mode == "auto":
        if "@" in text:
            mode = "email"
        elif _PHONE_LIKE_RE.fullmatch(text) and sum(c.isdigit() for c in text) >= 7:
            mode = "phone"
        else:
            mode = "text"
    if mode == "phone":
        # NFKC turns full-width and other compatibility digits into 0-9.
        digits = "".join(c for c in unicodedata.normalize("NFKC", text) if "0" <= c <= "9")
        return digits or None
    return text.lower()


@_transform(
    "sha256",
    "optional",
    "items",
    "Normalise an identifier, then hash it (hex SHA-256).",
    "sha256",
)
def _sha256(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn | None:
    mode = "auto" if arg is _NOARG or arg is None else arg
    if mode not in _SHA256_MODES:
        errors.add(path, f"sha256 takes one of {', '.join(_SHA256_MODES)}, got {arg!r}")
        return None

    def apply(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise _wrong_type("sha256", value, "text or a whole number")
        text = text_of(value)
        if mode != "raw" and _HEX64_RE.fullmatch(text.strip()):
            return text.strip().lower()  # already hashed: hashing twice would never match
        normal = normalise_for_hash(text, mode)
        if normal is None:
            if mode == "phone" and text.strip():
                raise MappingError("sha256: a phone number needs digits", value=value)
            return None
        return hashlib.sha256(normal.encode("utf-8")).hexdigest()

    return _per_item(apply)


# -- lookup and default ------------------------------------------------------------------------

_SCALAR = (str, int, float, bool)


@_transform(
    "lookup",
    "required",
    "items",
    "Replace a value by its entry in a table.",
    {"lookup": {"table": {"S": "small", "M": "medium"}, "default": "other"}},
)
def _lookup(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn | None:
    if not isinstance(arg, dict) or "table" not in arg:
        errors.add(path, "lookup needs {table: {from: to, ...}, default: value (optional)}")
        return None
    ok = _check_keys(arg, {"table", "default"}, path, errors, "lookup")
    table_spec = arg["table"]
    if not isinstance(table_spec, dict) or not table_spec:
        errors.add((*path, "table"), "table must be a non-empty mapping of from: to")
        return None
    table: dict[str, Any] = {}
    for key, to in table_spec.items():
        at = (*path, "table", key if isinstance(key, str | int) else str(key))
        if not isinstance(key, _SCALAR):
            errors.add(at, "a table key must be text or a number (null is never looked up)")
            ok = False
            continue
        # Keys compare as text: YAML reads `1:` as a number, records may send "1".
        name = text_of(key)
        if name in table:
            errors.add(at, f"table key {name!r} appears twice (keys compare as text)")
            ok = False
        if to is not None and not isinstance(to, _SCALAR):
            errors.add(at, f"a table value must be text, a number, a boolean or null, got {to!r}")
            ok = False
        table[name] = to
    has_default = "default" in arg
    default = arg.get("default")
    if has_default and default is not None and not isinstance(default, _SCALAR):
        errors.add((*path, "default"), "default must be text, a number, a boolean or null")
        ok = False
    if not ok:
        return None

    def apply(value: Any) -> Any:
        if not isinstance(value, _SCALAR):
            raise _wrong_type("lookup", value, "text or a number")
        key = text_of(value)
        if key in table:
            return table[key]
        if has_default:
            return default
        raise MappingError("lookup: not in the table and no default given", value=value)

    return _per_item(apply)


@_transform(
    "default",
    "required",
    "whole",
    "Use a value when there is none (null, missing, empty text, empty list).",
    {"default": "unknown"},
)
def _default(arg: Any, path: KeyPath, errors: ErrorCollector) -> Fn | None:
    if not is_flat(arg) or arg is None:
        errors.add(path, "default needs a value: text, a number, a boolean or a list of those")
        return None
    fallback = arg

    def apply(value: Any) -> Any:
        if is_blank(value):
            return list(fallback) if isinstance(fallback, list) else fallback
        return value

    return apply


# ---------------------------------------------------------------------------------------------
# Parsing specs.


def is_flat(value: Any) -> bool:
    """True for values a record may hold: a scalar, null, or a list of those."""
    if value is None or isinstance(value, _SCALAR):
        return True
    if isinstance(value, list):
        return all(v is None or isinstance(v, _SCALAR) for v in value)
    return False


def suggest(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss, else ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(
    spec: dict[Any, Any], allowed: set[str], path: KeyPath, errors: ErrorCollector, who: str
) -> bool:
    ok = True
    for key in spec:
        if key not in allowed:
            errors.add(
                (*path, key if isinstance(key, str | int) else str(key)),
                f"unknown key {key!r} for {who}; allowed: {', '.join(sorted(allowed))}"
                + suggest(str(key), allowed),
            )
            ok = False
    return ok


TRANSFORMS: Mapping[str, TransformInfo] = MappingProxyType(_REGISTRY)
"""Every transform by name: the closed list (for docs, ``gateway check`` and the preview)."""


def parse_transforms(spec: Any, path: Iterable[str | int] = ()) -> Pipeline:
    """Check a transform spec and compile it into a Pipeline.

    ``spec`` is None (no transforms), one transform, or a list of them. ``path`` is where the
    spec sits in its file (e.g. ``("fields", "firstname", "transform")``); every error names
    its full key path. Raises :class:`SpecErrors` with all problems found, not just the first.
    """
    base = tuple(path)
    if spec is None:
        return EMPTY_PIPELINE
    errors = ErrorCollector()
    items = spec if isinstance(spec, list) else [spec]
    steps = []
    for i, item in enumerate(items):
        step = _parse_one(item, (*base, i) if isinstance(spec, list) else base, errors)
        if step is not None:
            steps.append(step)
    errors.raise_if_any()
    return Pipeline(steps)


def _parse_one(item: Any, path: KeyPath, errors: ErrorCollector) -> Step | None:
    if isinstance(item, str):
        name, arg, arg_path = item, _NOARG, path
    elif isinstance(item, dict) and len(item) == 1:
        name, arg = next(iter(item.items()))
        arg_path = (*path, name) if isinstance(name, str) else path
        if not isinstance(name, str):
            errors.add(path, f"a transform name must be text, got {name!r}")
            return None
    elif isinstance(item, dict):
        keys = ", ".join(repr(k) for k in item) or "none"
        errors.add(
            path,
            f"a transform is a name or a mapping of one name to its argument, got keys {keys} "
            "(write several transforms as a list)",
        )
        return None
    else:
        errors.add(
            path,
            f"a transform is a name (lower) or {{name: argument}} ({{join: ';'}}), "
            f"got {kind_of(item)}",
        )
        return None
    info = _REGISTRY.get(name)
    if info is None:
        errors.add(path, f"unknown transform {name!r}" + suggest(name, _REGISTRY))
        return None
    if info.arg == "none" and arg is not _NOARG and arg is not None:
        # `- lower:` (a null argument) is a harmless YAML slip and is accepted.
        errors.add(arg_path, f"{name} takes no argument; write just {name}")
        return None
    if info.arg == "required" and (arg is _NOARG or arg is None):
        errors.add(path, f"{name} needs an argument, e.g. {_example_text(info.example)}")
        return None
    before = len(errors.errors)
    fn = info.build(arg, arg_path, errors)
    if fn is None:
        if len(errors.errors) == before:  # a builder must say why it refused
            errors.add(arg_path, f"invalid argument for {name}")
        return None
    return Step(name, item, fn)


def _example_text(example: Any) -> str:
    if isinstance(example, dict):
        (name, arg), *_ = example.items()
        return f"{{{name}: {arg!r}}}"
    return str(example)


__all__ = [
    "EMPTY_PIPELINE",
    "FALSE_WORDS",
    "TRANSFORMS",
    "TRUE_WORDS",
    "Pipeline",
    "SpecErrors",
    "Step",
    "TransformInfo",
    "bool_of_text",
    "is_blank",
    "is_flat",
    "kind_of",
    "normalise_for_hash",
    "parse_transforms",
    "text_of",
]
