"""Webhook source files: ``sources/<name>.yaml`` beside the mapping files.

A source file says how ``POST /v1/webhooks/<name>`` is verified, which events it accepts, and
which group the events become records of (docs/webhook-sources.md). Its own file, not a block
in the group's mapping file, because a source belongs to the sender, not to the group: its
secret is the sender's, several senders may feed one group, and the URL names the source, so
rotating a sender's secret or adding a sender never touches (or re-versions) a live mapping.

Loading follows the mapping files' rules: every problem names file, line and key path; secrets
come from ``${ENV}`` / ``${file:...}`` references and are never shown; a file that fails to
load never replaces a good live version; only changed files are compiled again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.ids import GROUP_KEY_RE
from gateway.mapping.errors import KeyPath, SpecError, format_key_path
from gateway.mapping.loader import MappingRegistry, Problem, ReloadResult, changes, yaml_files
from gateway.mapping.secrets import has_reference, resolve
from gateway.mapping.watch import MappingReloader
from gateway.mapping.yamlsrc import YamlError, line_of, load_with_lines

SCHEMES = ("standard_webhooks", "hmac_sha256", "bearer")
ENCODINGS = ("hex", "base64")
#: Webhook source names are URL path segments and file names: the group keys' alphabet.
NAME_RE = GROUP_KEY_RE
SOURCES_DIR = "sources"

_TOP = frozenset({"group_key", "description", "verify", "events"})
_VERIFY = {
    "standard_webhooks": frozenset({"scheme", "secret"}),
    "hmac_sha256": frozenset({"scheme", "secret", "header", "encoding", "prefix"}),
    "bearer": frozenset({"scheme", "token"}),
}
_EVENTS = frozenset({"accept", "type", "id", "timestamp", "data"})


@dataclass(frozen=True, slots=True)
class WebhookSource:
    """One compiled source file. ``key`` is the secret's bytes (HMAC key or bearer token):
    never printed; ``repr`` leaves it out."""

    name: str
    group_key: str
    scheme: str
    key: bytes = field(repr=False)
    accept: frozenset[str]
    type_path: str = "type"
    id_path: str = "id"
    timestamp_path: str | None = None
    data_path: str = "data"
    header: str | None = None  # hmac_sha256: the header holding the signature
    encoding: str = "hex"  # hmac_sha256: how the signature is written
    prefix: str = ""  # hmac_sha256: text before the signature ("sha256=")
    description: str | None = None


def _text(value: Any, path: KeyPath, errors: list[SpecError], *, required: bool) -> str | None:
    if value is None:
        if required:
            errors.append(SpecError(path, "required"))
        return None
    if not isinstance(value, str) or not value:
        errors.append(SpecError(path, "must be non-empty text"))
        return None
    return value


def _unknown(
    block: dict[Any, Any], allowed: frozenset[str], at: KeyPath, errors: list[SpecError]
) -> None:
    for key in block:
        if key not in allowed:
            errors.append(
                SpecError((*at, str(key)), f"unknown key; allowed: {', '.join(sorted(allowed))}")
            )


def _secret(
    block: dict[Any, Any],
    key: str,
    errors: list[SpecError],
    environ: Mapping[str, str] | None,
) -> str | None:
    path: KeyPath = ("verify", key)
    raw = block.get(key)
    if raw is None:
        errors.append(SpecError(path, "required"))
        return None
    if not isinstance(raw, str) or not raw:
        errors.append(SpecError(path, "must be text: a ${ENV_VAR} or ${file:/path} reference"))
        return None
    if not has_reference(raw):
        # Same rule as connection secrets: a secret written into the file would end up in
        # version control and backups.
        errors.append(
            SpecError(
                path, "write the secret as a ${ENV_VAR} or ${file:/path} reference, not in the file"
            )
        )
        return None
    before = len(errors)
    resolved = resolve(raw, path, errors, environ)
    if len(errors) > before:
        return None
    value = resolved.value
    if not isinstance(value, str) or not value:
        errors.append(SpecError(path, "the reference resolves to empty text"))
        return None
    return value


def _standard_key(secret: str, errors: list[SpecError]) -> bytes:
    # The Standard Webhooks secret is base64 with a "whsec_" prefix (standardwebhooks.com).
    try:
        text = secret.removeprefix("whsec_")
        # Padding optional, as the reference implementation takes it.
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        # The message never quotes the value: it is a secret.
        errors.append(
            SpecError(
                ("verify", "secret"), "a Standard Webhooks secret is whsec_ followed by base64"
            )
        )
    return key


def compile_source(
    data: Any, name: str, environ: Mapping[str, str] | None = None
) -> tuple[WebhookSource | None, list[SpecError]]:
    """Check one parsed source file; return the source, or None and every problem found."""
    errors: list[SpecError] = []
    if not NAME_RE.fullmatch(name):
        errors.append(
            SpecError(
                (),
                "the file name (the source's name in /v1/webhooks/<name>) must be 1 to 128 "
                "letters, digits, '_', '-' or '.', starting with a letter or digit",
            )
        )
    if not isinstance(data, dict):
        errors.append(SpecError((), "a source file is a mapping with group_key, verify, events"))
        return None, errors
    _unknown(data, _TOP, (), errors)
    group_key = _text(data.get("group_key"), ("group_key",), errors, required=True)
    if group_key is not None and not GROUP_KEY_RE.fullmatch(group_key):
        errors.append(SpecError(("group_key",), "not a valid group key"))
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        errors.append(SpecError(("description",), "must be text"))
        description = None

    scheme: str | None = None
    key = b""
    header: str | None = None
    encoding = "hex"
    prefix = ""
    verify = data.get("verify")
    if not isinstance(verify, dict):
        errors.append(SpecError(("verify",), "required: a mapping with scheme and its secret"))
    else:
        scheme = _text(verify.get("scheme"), ("verify", "scheme"), errors, required=True)
        if scheme is not None and scheme not in SCHEMES:
            errors.append(
                SpecError(("verify", "scheme"), f"unknown scheme; one of: {', '.join(SCHEMES)}")
            )
            scheme = None
        if scheme is not None:
            _unknown(verify, _VERIFY[scheme], ("verify",), errors)
            secret = _secret(verify, "token" if scheme == "bearer" else "secret", errors, environ)
            if secret is not None:
                key = (
                    _standard_key(secret, errors)
                    if scheme == "standard_webhooks"
                    else secret.encode()
                )
            if scheme == "hmac_sha256":
                header = _text(verify.get("header"), ("verify", "header"), errors, required=True)
                enc = verify.get("encoding", "hex")
                if enc not in ENCODINGS:
                    errors.append(
                        SpecError(("verify", "encoding"), f"one of: {', '.join(ENCODINGS)}")
                    )
                else:
                    encoding = enc
                pre = verify.get("prefix", "")
                if not isinstance(pre, str):
                    errors.append(SpecError(("verify", "prefix"), "must be text"))
                else:
                    prefix = pre

    accept: frozenset[str] = frozenset()
    paths = {"type": "type", "id": "id", "timestamp": None, "data": "data"}
    events = data.get("events")
    if not isinstance(events, dict):
        errors.append(SpecError(("events",), "required: a mapping with accept (event types)"))
    else:
        _unknown(events, _EVENTS, ("events",), errors)
        raw_accept = events.get("accept")
        if (
            not isinstance(raw_accept, list)
            or not raw_accept
            or not all(isinstance(t, str) and t for t in raw_accept)
        ):
            errors.append(
                SpecError(("events", "accept"), "required: a non-empty list of event types")
            )
        else:
            accept = frozenset(raw_accept)
        for k in ("type", "id", "timestamp"):
            if k in events:
                paths[k] = _text(events[k], ("events", k), errors, required=True)
        if "data" in events:
            # "" (or ".") flattens the whole event; otherwise the dotted path of an object.
            d = events["data"]
            if not isinstance(d, str):
                errors.append(SpecError(("events", "data"), "must be text (a dotted path)"))
            else:
                paths["data"] = "" if d in ("", ".") else d
        if scheme == "standard_webhooks":
            for k in ("id", "timestamp"):
                if k in events:
                    errors.append(
                        SpecError(
                            ("events", k),
                            f"standard_webhooks takes the event {k} from the signed "
                            f"webhook-{k} header; remove this key",
                        )
                    )

    if errors or scheme is None or group_key is None:
        return None, errors
    return (
        WebhookSource(
            name=name,
            group_key=group_key,
            scheme=scheme,
            key=key,
            accept=accept,
            type_path=paths["type"] or "type",
            id_path=paths["id"] or "id",
            timestamp_path=paths["timestamp"],
            data_path=paths["data"] or "",
            header=header,
            encoding=encoding,
            prefix=prefix,
            description=description,
        ),
        [],
    )


def load_source(
    path: Path, environ: Mapping[str, str] | None = None
) -> tuple[WebhookSource | None, list[Problem]]:
    """Compile one source file; return it, or None and every problem (file, line, key path)."""
    name = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return None, [Problem(name, None, "(file)", f"cannot read: {exc.strerror}")]
    except UnicodeDecodeError as exc:
        return None, [Problem(name, None, "(file)", f"not UTF-8: {exc}")]
    try:
        data, lines = load_with_lines(text)
    except YamlError as exc:
        return None, [Problem(name, exc.line, "(yaml)", exc.message)]
    source, errors = compile_source(data, path.stem, environ)
    problems = [
        Problem(name, line_of(lines, e.path), format_key_path(e.path) or "(file)", e.message)
        for e in errors
    ]
    problems.sort(key=lambda p: (p.line or 0, p.path))
    return source, problems


@dataclass(slots=True)
class SourcesReload:
    """What a reload of the source files did."""

    loaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, list[Problem]] = field(default_factory=dict)
    seconds: float = 0.0


class SourceRegistry:
    """The live webhook sources, from ``<mappings>/sources/*.yaml``.

    A source whose group has no mapping file is a problem of the source file (found by
    ``gateway check`` and on reload), checked against ``mappings`` after they were reloaded.
    """

    def __init__(
        self,
        mappings: MappingRegistry,
        directory: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.mappings = mappings
        self.directory = directory or mappings.directory / SOURCES_DIR
        self._environ = environ
        self._live: dict[str, WebhookSource] = {}
        self._stamps: dict[str, tuple[int, int]] = {}
        self.problems: dict[str, list[Problem]] = {}

    def get(self, name: str) -> WebhookSource | None:
        """The live source of that name, or None."""
        return self._live.get(name)

    def names(self) -> list[str]:
        """Every live source's name, sorted."""
        return sorted(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def all_problems(self) -> list[Problem]:
        """Problems of every source file whose latest version failed to load."""
        return [p for ps in self.problems.values() for p in ps]

    def _group_known(self, group_key: str) -> bool:
        if self.mappings.get(group_key) is not None:
            return True
        # A group whose file exists but is broken is the mapping file's problem, not this one's.
        return (self.mappings.directory / f"{group_key}.yaml").exists()

    def reload(self) -> SourcesReload:
        """Pick up added, changed and removed source files; bad ones leave the old version."""
        started = time.perf_counter()
        result = SourcesReload()
        try:
            entries = yaml_files(self.directory)
        except FileNotFoundError:
            entries = {}  # no sources/ directory: no webhook sources, not an error
        except OSError as exc:
            problem = Problem(
                str(self.directory), None, "(directory)", f"cannot read: {exc.strerror}"
            )
            self.problems = {str(self.directory): [problem]}
            result.failed[str(self.directory)] = [problem]
            result.seconds = time.perf_counter() - started
            return result
        # Built aside and swapped in, like the live set: /readyz reads it from the event loop
        # while this runs in a thread.
        problems_now = dict(self.problems)
        problems_now.pop(str(self.directory), None)
        live = dict(self._live)
        # Failed files are tried again on every reload (a source may wait for its group's
        # file or a secret to appear).
        changed, gone = changes(entries, self._stamps, retry=problems_now)
        for entry in changed:
            source, problems = load_source(Path(entry.path), self._environ)
            if source is not None and not self._group_known(source.group_key):
                problems = [
                    Problem(
                        entry.path,
                        _line_of_group(Path(entry.path)),
                        "group_key",
                        f"no mapping file for group '{source.group_key}' in "
                        f"{self.mappings.directory}",
                    )
                ]
                source = None
            if source is None:
                # Reported only when its problems changed, so a poll does not repeat the same
                # warning.
                if problems_now.get(entry.path) != problems:
                    result.failed[entry.path] = problems
                problems_now[entry.path] = problems
                continue
            problems_now.pop(entry.path, None)
            live[source.name] = source
            result.loaded.append(source.name)
        for name in gone:
            problems_now.pop(str(self.directory / name), None)
            if live.pop(name[: -len(".yaml")], None) is not None:
                result.removed.append(name[: -len(".yaml")])
        self._live = live  # one assignment: readers see the old set or the new one
        self.problems = problems_now
        result.seconds = time.perf_counter() - started
        return result


def _line_of_group(path: Path) -> int | None:
    try:
        _, lines = load_with_lines(path.read_text())
    except (OSError, UnicodeDecodeError, YamlError):
        return None
    return line_of(lines, ("group_key",))


class SourceReloader(MappingReloader):
    """The mappings' reloader that reloads the webhook source files after the mappings, on
    every trigger (file watch, which sees ``sources/`` too, SIGHUP, admin reload, poll)."""

    def __init__(self, registry: MappingRegistry, sources: SourceRegistry) -> None:
        super().__init__(registry)
        self.sources = sources

    async def reload(self, reason: str) -> ReloadResult:
        """Reload the mappings, then the sources (whose groups they name); the answer's
        ``failed`` lists the files of both that failed."""
        result = await super().reload(reason)
        async with self._lock:
            sources = await asyncio.to_thread(self.sources.reload)
        if sources.loaded or sources.removed or reason in ("SIGHUP", "admin", "start"):
            logs.log(
                "webhook_sources_loaded",
                reason=reason,
                loaded=sources.loaded,
                removed=sources.removed,
                live=len(self.sources),
            )
        for file, problems in sources.failed.items():
            logs.log(
                "webhook_source_invalid", "warning", file=file, errors=[str(p) for p in problems]
            )
        result.failed.update(sources.failed)
        return result
