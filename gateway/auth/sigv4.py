"""AWS Signature Version 4 verification, from the raw request, for non-S3 services.

Pure: no aiohttp, no store, no clock of its own. A caller turns its request into a
:class:`SigV4Request`, calls :meth:`SigV4Verifier.parse` (structure, algorithm, dates, credential
scope, signed-header rules; needs no secret), looks up the access key (async, elsewhere), then
calls :meth:`SigV4Verifier.verify` with the secret. Every refusal is a :class:`SigV4Error` with an
HTTP status, an UPPER_SNAKE code and a message worded like AWS's own, so a developer who knows AWS
recognises it; a signature mismatch carries the canonical request and string to sign the server
computed (never the secret or the signing key).

Canonicalisation (AWS's rules for non-S3 services, checked against AWS's published test suite and
against botocore, requests-aws4auth and friends):

- path: the raw path as received (still percent-encoded), dot segments and repeated slashes
  removed (botocore's ``remove_dot_segments``), then percent-encoded once more with ``/`` and
  ``~`` safe. A client that sends ``/%E1%88%B4`` has signed ``/%25E1%2588%25B4``.
- query: pairs split on ``&`` and the first ``=``, percent-decoded (``+`` stays ``+``), encoded
  again with only unreserved characters safe, sorted by name then value.
- headers: names lower-cased, values trimmed with inner runs of white space collapsed to one
  space, repeated headers joined with ``,`` in the order received.
- payload: SHA-256 of the body bytes received; ``x-amz-content-sha256`` must agree with it.

Error codes (status 401 unless noted): MISSING_AUTHENTICATION_TOKEN, INCOMPLETE_SIGNATURE,
UNSUPPORTED_ALGORITHM, SIGNATURE_DOES_NOT_MATCH, REQUEST_EXPIRED, REQUEST_NOT_YET_VALID,
INVALID_CREDENTIAL_SCOPE, HEADERS_NOT_SIGNED, and with status 400: CONTENT_SHA256_MISMATCH,
UNSIGNED_PAYLOAD_NOT_ACCEPTED, AUTHORIZATION_QUERY_PARAMETERS_ERROR (bad X-Amz-Expires),
INVALID_ARGUMENT (both an Authorization header and X-Amz-Algorithm in the query).

Strings arrive as aiohttp decodes them (UTF-8 with ``surrogateescape``), so every str->bytes step
here re-encodes with ``surrogateescape`` to get the bytes that were on the wire back, and falls
back to ``surrogatepass`` so that no input, however odd, raises anything but :class:`SigV4Error`.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from email.utils import parsedate_tz
from typing import Any
from urllib.parse import quote_from_bytes, unquote, unquote_to_bytes

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_PRESIGNED_EXPIRES = 7 * 24 * 3600  # AWS's limit for X-Amz-Expires: one week
_HEADER_AUTH_PARAMS = ("Credential", "SignedHeaders", "Signature")
_QUERY_AUTH_PARAMS = frozenset(
    {
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
    }
)
_QUERY_REQUIRED = (
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
# re.ASCII: \d must not match other scripts' digits, which int() would happily accept.
_ISO_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z", re.ASCII)
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_EXPIRES = re.compile(r"-?\d{1,12}", re.ASCII)  # bounded, so int() never meets a huge number
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+|:authority", re.ASCII)  # lower-case tokens
_MAX_ECHO = 512  # how much of a client's own input an error message quotes back
_LATEST = 253402300799  # 9999-12-31T23:59:59Z: beyond it strftime cannot format a date


@dataclass(slots=True)
class SigV4Request:
    """A request as received: everything SigV4 signs, nothing decoded or normalised."""

    method: str
    raw_path: str  # as received on the wire, still percent-encoded, without the query
    query_string: str  # raw, after '?'; '' if none
    headers: list[tuple[str, str]]  # as received, in order; repeated names allowed, any case
    body: bytes


class SigV4Error(Exception):
    """A refused request: HTTP status, UPPER_SNAKE code, AWS-like message, safe debugging extras.

    ``extra`` never holds the secret or the signing key; on a mismatch it holds the canonical
    request and string to sign the server computed.
    """

    def __init__(
        self, status: int, code: str, message: str, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra: dict[str, Any] = extra if extra is not None else {}

    def __repr__(self) -> str:
        return f"SigV4Error({self.status}, {self.code!r}, {self.message!r})"


@dataclass(slots=True)
class ParsedAuth:
    """What a request's signature claims: checked for structure, dates and scope, not verified."""

    access_key_id: str
    date: str  # ISO-8601 basic, e.g. 20150830T123600Z (converted when it came from a Date header)
    scope_date: str
    region: str
    service: str
    signed_headers: list[str]
    signature: str
    presigned: bool
    session_token: str | None = None
    # The x-amz-content-sha256 header as sent (None when absent), checked by check_payload.
    content_sha256: str | None = None
    # The body hash parse() computed, with the very bytes object it hashed: verify() reuses it
    # only for that same (immutable) object, so a different body can never ride on a stale hash.
    _payload: tuple[bytes, str] | None = field(default=None, repr=False, compare=False)
    # The canonical header map parse_head built, with the very header list it was built from:
    # verify() reuses it only for that same list object (one pass over the headers a request).
    _headers: tuple[list[tuple[str, str]], dict[str, str]] | None = field(
        default=None, repr=False, compare=False
    )


# -- bytes and text ---------------------------------------------------------------------------


def _utf8(text: str) -> bytes:
    """The bytes a str stands for: the wire bytes for aiohttp's surrogateescape-decoded text."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Lone surrogates that surrogateescape did not make: no wire bytes to restore, but any
        # deterministic encoding is fine, and raising is not (this is attacker input).
        return text.encode("utf-8", "surrogatepass")


def _printable(text: str) -> str:
    """Text safe to put in a JSON error body: bytes that are not UTF-8 shown as \\xNN escapes."""
    if text.isascii():
        return text
    return _utf8(text).decode("utf-8", "backslashreplace")


def _echo(text: str) -> str:
    """A client's own input, quoted back in a message: shortened and made printable."""
    return _printable(text[:_MAX_ECHO])


# -- canonicalisation -------------------------------------------------------------------------


def canonical_path(raw_path: str) -> str:
    """The canonical URI of a non-S3 request: dot segments and empty segments removed from the
    raw path (as botocore does), then percent-encoded once more with ``/~`` safe."""
    found = _PATHS.get(raw_path)
    if found is None:
        found = _canonical_path(raw_path)
        _memo_put(_PATHS, raw_path, found)
    return found


def _canonical_path(raw_path: str) -> str:
    if not raw_path:
        return "/"
    path = raw_path
    if "//" in path or "/." in path or path[0] != "/":
        # botocore's remove_dot_segments: also drops empty segments (AWS collapses '//'), and
        # keeps a trailing slash only when something is left before it.
        segments: list[str] = []
        for seg in path.split("/"):
            if not seg or seg == ".":
                continue
            if seg == "..":
                if segments:
                    segments.pop()
            else:
                segments.append(seg)
        first = "/" if path[0] == "/" else ""
        last = "/" if path[-1] == "/" and segments else ""
        path = first + "/".join(segments) + last or "/"
    return quote_from_bytes(_utf8(path), safe="/~")


def _encode_component(raw: str) -> str:
    """A query name or value: percent-decoded to bytes, encoded with only unreserved safe."""
    data = _utf8(raw)
    if "%" in raw:
        data = unquote_to_bytes(data)  # bytes, not str: %FF must stay the byte 0xFF
    return quote_from_bytes(data, safe="")  # unreserved (A-Za-z0-9-_.~) is always safe


def canonical_query(query_string: str, *, drop_signature: bool = False) -> str:
    """The canonical query string: pairs decoded and re-encoded, sorted by name then value.

    ``+`` is a literal plus, not a space (SigV4 signs it as ``%2B``); empty pieces between
    ``&&`` are not parameters. With ``drop_signature`` (presigned requests) X-Amz-Signature is
    left out, as AWS requires.
    """
    if not query_string:
        return ""
    pairs: list[tuple[str, str]] = []
    for part in query_string.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = _encode_component(name)
        if drop_signature and name == "X-Amz-Signature":
            continue
        pairs.append((name, _encode_component(value)))
    pairs.sort()  # tuples: by encoded name, then encoded value (all ASCII, so byte order)
    return "&".join([f"{n}={v}" for n, v in pairs])


def header_map(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased header names to canonical values: trimmed, inner white space runs collapsed to
    one space (obs-fold line breaks included), repeated headers joined with ``,`` in order."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.strip().lower()
        # str.split() with no argument: what botocore's signer does, so values with tabs or
        # folded lines canonicalise the same on both sides.
        value = " ".join(value.split())
        if key in out:
            out[key] += "," + value
        else:
            out[key] = value
    return out


def _canonical_request(
    req: SigV4Request,
    headers: dict[str, str],
    signed_headers: list[str],
    payload_hash: str,
    presigned: bool,
) -> str:
    lines = "".join([f"{name}:{headers.get(name.lower(), '')}\n" for name in signed_headers])
    return "\n".join(
        (
            req.method.upper(),
            canonical_path(req.raw_path),
            canonical_query(req.query_string, drop_signature=presigned),
            lines,
            ";".join(signed_headers),
            payload_hash,
        )
    )


def canonical_request(
    req: SigV4Request, signed_headers: list[str], payload_hash: str, *, presigned: bool = False
) -> str:
    """The canonical request SigV4 signs, for the given signed header names (in the order given,
    which a correct signer has sorted) and payload hash. A signed header the request lacks
    contributes an empty value (and so a mismatch, not an exception)."""
    return _canonical_request(req, header_map(req.headers), signed_headers, payload_hash, presigned)


def string_to_sign(date: str, scope: str, canonical_request: str) -> str:
    """The string to sign: algorithm, request date, credential scope, hash of the canonical
    request."""
    digest = hashlib.sha256(_utf8(canonical_request)).hexdigest()
    return f"{ALGORITHM}\n{date}\n{scope}\n{digest}"


# -- signing keys -----------------------------------------------------------------------------

# Cache keys hold a keyed hash of the secret, never the secret string; the per-process key
# means the cache does not even hold a plain SHA-256 that could be matched against guesses.
_CACHE_HASH_KEY = os.urandom(32)


def _derive(secret: bytes, scope_date: str, region: str, service: str) -> bytes:
    key = hmac.digest(b"AWS4" + secret, _utf8(scope_date), "sha256")
    key = hmac.digest(key, _utf8(region), "sha256")
    key = hmac.digest(key, _utf8(service), "sha256")
    return hmac.digest(key, b"aws4_request", "sha256")


class SigningKeyCache:
    """An LRU cache of derived signing keys per (secret, date, region, service).

    Keyed by a keyed BLAKE2b hash of the secret, so no secret string is kept. Thread-safe: the
    lock is uncontended on an event loop and costs next to nothing.
    """

    __slots__ = ("_entries", "_lock", "maxsize")

    def __init__(self, maxsize: int = 1024) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[tuple[bytes, str, str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, secret: str, scope_date: str, region: str, service: str) -> bytes:
        """The signing key, derived once and then served from the cache."""
        secret_bytes = _utf8(secret)
        if self.maxsize <= 0:
            return _derive(secret_bytes, scope_date, region, service)
        digest = hashlib.blake2b(secret_bytes, key=_CACHE_HASH_KEY, digest_size=32).digest()
        ck = (digest, scope_date, region, service)
        with self._lock:
            key = self._entries.get(ck)
            if key is not None:
                self._entries.move_to_end(ck)
                return key
        key = _derive(secret_bytes, scope_date, region, service)  # outside the lock: 4 HMACs
        with self._lock:
            # Another thread may have stored it meanwhile: keep one object per inputs.
            key = self._entries.setdefault(ck, key)
            self._entries.move_to_end(ck)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return key

    def clear(self) -> None:
        """Forget every key (e.g. after a secret is revoked)."""
        with self._lock:
            self._entries.clear()


_DEFAULT_KEYS = SigningKeyCache(1024)


def signing_key(secret: str, scope_date: str, region: str, service: str) -> bytes:
    """The SigV4 signing key for a secret and credential scope (cached, LRU, 1024 entries)."""
    return _DEFAULT_KEYS.get(secret, scope_date, region, service)


# -- memoised parses ----------------------------------------------------------------------------

# Producers send the same X-Amz-Date for every request of a second, the same Credential and
# SignedHeaders for every request of a day, to the same few paths: these pure parses are
# memoised (successes only: a refusal takes the full path and raises each time). Bounded: a
# cache that fills up is emptied, so odd input costs at most the uncached path.
_MEMO_MAX = 512
_MAX_SCOPES_PER_KEY = 8


def _memo_put(cache: dict[str, Any], key: str, value: Any) -> None:
    if len(cache) >= _MEMO_MAX:
        cache.clear()
    cache[key] = value


_EPOCHS: dict[str, int | None] = {}
_CREDENTIALS: dict[str, tuple[str, ...]] = {}
_SIGNED_HEADERS: dict[str, tuple[str, ...]] = {}
_PATHS: dict[str, str] = {}


# -- dates ------------------------------------------------------------------------------------


def _iso_epoch(value: str) -> int | None:
    """Seconds since the epoch for an ISO-8601 basic date (20150830T123600Z), else None."""
    try:
        return _EPOCHS[value]
    except KeyError:
        pass
    ts = _parse_iso(value)
    _memo_put(_EPOCHS, value, ts)  # None too: it is as pure as a date
    return ts


def _parse_iso(value: str) -> int | None:
    m = _ISO_DATE.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second = map(int, m.groups())
    if not (1 <= month <= 12 and year >= 1 and hour < 24 and minute < 60 and second < 60):
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    # Slicing plus timegm is an order of magnitude faster than strptime, on every request.
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


def _http_date_epoch(value: str) -> int | None:
    """Seconds since the epoch for a Date header: ISO-8601 basic, or RFC 1123/2822 (what
    botocore writes when the request carries a Date header), else None."""
    ts = _iso_epoch(value)
    if ts is not None:
        return ts
    try:
        parsed = parsedate_tz(value)
        if parsed is None:
            return None
        # No zone given means GMT here (mktime_tz would assume local time).
        ts = calendar.timegm((*parsed[:6], 0, 0, 0)) - (parsed[9] or 0)
    except Exception:  # the stdlib date parser raises assorted errors on odd input
        return None
    return ts if 0 <= ts <= _LATEST else None


def _fmt(ts: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(min(max(ts, 0), _LATEST)))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min."


# -- errors -----------------------------------------------------------------------------------


def _incomplete(message: str) -> SigV4Error:
    return SigV4Error(401, "INCOMPLETE_SIGNATURE", message)


def _scope_error(message: str) -> SigV4Error:
    return SigV4Error(401, "INVALID_CREDENTIAL_SCOPE", message)


def _not_signed(message: str) -> SigV4Error:
    return SigV4Error(401, "HEADERS_NOT_SIGNED", message)


_UNSUPPORTED = (
    f"The authorization mechanism you have provided is not supported. Please use {ALGORITHM}."
)
_MISSING_DATE = (
    "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
)
_BAD_CREDENTIAL = (
    "Authorization header is malformed; the Credential is mal-formed; expecting "
    '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'
)
_QUERY_INCOMPLETE = (
    "AWS query-string parameters must include 'X-Amz-Algorithm', 'X-Amz-Credential', "
    "'X-Amz-Signature', 'X-Amz-Date', 'X-Amz-SignedHeaders', 'X-Amz-Expires'. "
    "Re-examine the query-string parameters."
)
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check "
    "your AWS Secret Access Key and signing method. Consult the service documentation for "
    "details."
)


# -- verification -----------------------------------------------------------------------------


class SigV4Verifier:
    """Verifies SigV4 header auth and presigned query auth for one region and service."""

    __slots__ = ("_keys", "clock_skew", "region", "service")

    def __init__(
        self, region: str, service: str, *, clock_skew: float = 300.0, cache_size: int = 1024
    ) -> None:
        self.region = region
        self.service = service
        self.clock_skew = clock_skew
        self._keys = SigningKeyCache(cache_size)

    # parse ----------------------------------------------------------------------------------

    def parse(self, req: SigV4Request, now: float) -> ParsedAuth:
        """Header auth or presigned query auth: check structure, algorithm, dates (clock skew;
        presigned X-Amz-Expires, at most 7 days), credential scope, that host and the request
        date are signed, that every x-amz-* header present is signed (x-amz-content-sha256 may
        be unsigned but must equal the body's hash), and refuse UNSIGNED-PAYLOAD.

        Needs no secret. Raises :class:`SigV4Error` and nothing else, whatever the input.
        """
        auth = self.parse_head(req, now)
        self.check_payload(auth, req.body)
        return auth

    def parse_head(self, req: SigV4Request, now: float) -> ParsedAuth:
        """:meth:`parse` for a request whose body has not been read yet: every check but the
        payload hash (``req.body`` is not looked at). Call :meth:`check_payload` with the body
        once it is read.

        The point is to refuse a request before its body costs memory or time.
        """
        headers = header_map(req.headers)
        authorization = headers.get("authorization")
        if authorization:
            if "X-Amz-Algorithm" in req.query_string and (
                "X-Amz-Algorithm" in _auth_query_params(req.query_string, strict=False)
            ):
                raise SigV4Error(
                    400,
                    "INVALID_ARGUMENT",
                    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter "
                    "or the Authorization header should be specified.",
                )
            auth = self._parse_header(authorization, headers, now)
        else:
            query = _auth_query_params(req.query_string, strict=True)
            if "X-Amz-Algorithm" not in query:
                raise SigV4Error(
                    401, "MISSING_AUTHENTICATION_TOKEN", "Missing Authentication Token"
                )
            auth = self._parse_query(query, now)
        self._check_scope(auth)
        self._check_headers(auth, headers)
        auth._headers = (req.headers, headers)
        return auth

    def _parse_header(self, value: str, headers: dict[str, str], now: float) -> ParsedAuth:
        algorithm, _, rest = value.partition(" ")
        if algorithm != ALGORITHM:
            raise SigV4Error(401, "UNSUPPORTED_ALGORITHM", _UNSUPPORTED)
        params: dict[str, str] = {}
        for part in rest.split(","):
            part = part.strip()
            if not part:
                continue
            name, eq, val = part.partition("=")
            if not eq:
                raise _incomplete(
                    "Invalid key=value pair (missing equal-sign) in Authorization header: "
                    f"'{_echo(part)}'."
                )
            name = name.strip()
            if name in params:
                raise _incomplete(f"Authorization header has '{_echo(name)}' more than once.")
            params[name] = val.strip()
        problems = [
            f"Authorization header requires '{p}' parameter."
            for p in _HEADER_AUTH_PARAMS
            if not params.get(p)
        ]
        date_header = "x-amz-date" if "x-amz-date" in headers else "date"
        date_value = headers.get(date_header, "")
        if not date_value:
            problems.append(_MISSING_DATE)
        if problems:
            raise _incomplete(" ".join(problems) + f" Authorization={_echo(value)}")
        parse_date = _iso_epoch if date_header == "x-amz-date" else _http_date_epoch
        ts = parse_date(date_value)
        if ts is None:
            raise _incomplete(
                f"Date must be in ISO-8601 'basic format'. Got '{_echo(date_value)}'. "
                "See http://en.wikipedia.org/wiki/ISO_8601"
            )
        # The string to sign carries the ISO form, whichever header the date came from.
        date = date_value if date_header == "x-amz-date" else _fmt(ts)
        auth = _claims(
            params["Credential"],
            date,
            params["SignedHeaders"],
            params["Signature"],
            presigned=False,
            token=headers.get("x-amz-security-token"),
        )
        # An unsigned x-amz-date falls to the x-amz-* rule later; a Date header needs saying.
        if date_header == "date" and "date" not in auth.signed_headers:
            raise _not_signed(
                "There were headers present in the request which were not signed: date"
            )
        self._check_skew(date, ts, now)
        return auth

    def _parse_query(self, query: dict[str, str], now: float) -> ParsedAuth:
        if query["X-Amz-Algorithm"] != ALGORITHM:
            raise SigV4Error(
                401,
                "UNSUPPORTED_ALGORITHM",
                f"X-Amz-Algorithm only supports '{ALGORITHM}', "
                f"not '{_echo(query['X-Amz-Algorithm'])}'.",
            )
        if not all(query.get(p) for p in _QUERY_REQUIRED):
            raise _incomplete(_QUERY_INCOMPLETE)
        date = query["X-Amz-Date"]
        ts = _iso_epoch(date)
        if ts is None:
            raise _incomplete(
                "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"; "
                f"got '{_echo(date)}'."
            )
        expires_text = query["X-Amz-Expires"]
        if not _EXPIRES.fullmatch(expires_text):
            raise _query_error("X-Amz-Expires should be a number")
        expires = int(expires_text)
        if expires < 0:
            raise _query_error("X-Amz-Expires must be non-negative")
        if expires > MAX_PRESIGNED_EXPIRES:
            raise _query_error(
                "X-Amz-Expires must be less than a week (in seconds) that is "
                f"{MAX_PRESIGNED_EXPIRES}"
            )
        auth = _claims(
            query["X-Amz-Credential"],
            date,
            query["X-Amz-SignedHeaders"],
            query["X-Amz-Signature"],
            presigned=True,
            token=query.get("X-Amz-Security-Token"),
        )
        # A presigned URL is good from its date (less the clock skew) for X-Amz-Expires seconds.
        if now > ts + expires:
            raise SigV4Error(
                401,
                "REQUEST_EXPIRED",
                f"Request has expired: X-Amz-Date {date} + X-Amz-Expires {expires} s = "
                f"{_fmt(ts + expires)} is now earlier than {_fmt(now)}.",
            )
        if ts > now + self.clock_skew:
            raise self._not_yet(date, now)
        return auth

    def _check_skew(self, date: str, ts: int, now: float) -> None:
        if ts < now - self.clock_skew:
            raise SigV4Error(
                401,
                "REQUEST_EXPIRED",
                f"Signature expired: {date} is now earlier than {_fmt(now - self.clock_skew)} "
                f"({_fmt(now)} - {_minutes(self.clock_skew)})",
            )
        if ts > now + self.clock_skew:
            raise self._not_yet(date, now)

    def _not_yet(self, date: str, now: float) -> SigV4Error:
        return SigV4Error(
            401,
            "REQUEST_NOT_YET_VALID",
            f"Signature not yet current: {date} is still later than "
            f"{_fmt(now + self.clock_skew)} ({_fmt(now)} + {_minutes(self.clock_skew)})",
        )

    def _check_scope(self, auth: ParsedAuth) -> None:
        if auth.scope_date != auth.date[:8]:
            raise _scope_error(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
                f"from HTTP: '{_echo(auth.scope_date)}' != '{auth.date[:8]}', "
                f"from '{auth.date}'."
            )
        if auth.region != self.region:
            raise _scope_error(
                f"Credential should be scoped to a valid region, not '{_echo(auth.region)}'."
            )
        if auth.service != self.service:
            raise _scope_error(f"Credential should be scoped to correct service: '{self.service}'.")

    def _check_headers(self, auth: ParsedAuth, headers: dict[str, str]) -> None:
        signed = set(auth.signed_headers)
        if "host" not in signed and ":authority" not in signed:
            raise _not_signed(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
            )
        claimed = headers.get("x-amz-content-sha256")
        auth.content_sha256 = claimed
        if claimed is not None and (
            claimed == UNSIGNED_PAYLOAD or claimed.startswith("STREAMING-")
        ):
            raise SigV4Error(
                400,
                "UNSIGNED_PAYLOAD_NOT_ACCEPTED",
                f"x-amz-content-sha256 '{_echo(claimed)}' is not accepted: this service "
                "requires a signed payload (the hex SHA-256 of the body).",
            )
        # x-amz-content-sha256 is exempt: some signers send it unsigned, and check_payload
        # holds it to the body, which the signature covers through the payload hash.
        unsigned = [
            name
            for name in headers
            if name.startswith("x-amz-") and name not in signed and name != "x-amz-content-sha256"
        ]
        if unsigned:
            raise _not_signed(
                "There were headers present in the request which were not signed: "
                + ", ".join(_echo(n) for n in sorted(unsigned))
            )

    def signed_content_sha256(self, auth: ParsedAuth) -> str | None:
        """The payload hash the request declares in a *signed* x-amz-content-sha256 header
        (64 hex digits), else None. With it the signature can be verified before the body is
        read (:meth:`verify` with ``payload_hash``); :meth:`check_payload` then holds the body
        to it."""
        claimed = auth.content_sha256
        if (
            claimed is not None
            and _SIGNATURE.fullmatch(claimed)
            and "x-amz-content-sha256" in auth.signed_headers
        ):
            return claimed
        return None

    def check_payload(self, auth: ParsedAuth, body: bytes) -> None:
        """Hash the body; refuse it (400 CONTENT_SHA256_MISMATCH) when it disagrees with the
        x-amz-content-sha256 header sent. :meth:`verify` reuses the hash."""
        payload_hash = hashlib.sha256(body).hexdigest()
        auth._payload = (body, payload_hash)
        claimed = auth.content_sha256
        if claimed is not None and claimed != payload_hash:
            raise SigV4Error(
                400,
                "CONTENT_SHA256_MISMATCH",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                {
                    "client_computed_content_sha256": _echo(claimed),
                    "computed_content_sha256": payload_hash,
                },
            )

    # verify ---------------------------------------------------------------------------------

    def verify(
        self,
        req: SigV4Request,
        auth: ParsedAuth,
        secret_access_key: str,
        *,
        payload_hash: str | None = None,
        signing_keys: dict[tuple[str, str, str], bytes] | None = None,
    ) -> None:
        """Compute the canonical request and string to sign from the raw request and its body
        bytes, sign with the secret, and compare in constant time. Raises
        :class:`SigV4Error` SIGNATURE_DOES_NOT_MATCH (with ``canonical_request`` and
        ``string_to_sign`` in ``extra``) when the signatures differ.

        ``payload_hash`` (from :meth:`signed_content_sha256`) verifies before the body is
        read; the caller must then hold the body to it with :meth:`check_payload`.
        ``signing_keys``: a dict the caller keeps with this secret (and drops with it), where
        derived signing keys are cached by scope; without it the verifier's LRU serves them."""
        cached = auth._payload
        if payload_hash is not None:
            pass
        elif cached is not None and cached[0] is req.body:
            payload_hash = cached[1]
        else:
            payload_hash = hashlib.sha256(req.body).hexdigest()
        mapped = auth._headers
        headers = mapped[1] if mapped is not None and mapped[0] is req.headers else None
        if headers is None:
            headers = header_map(req.headers)
        creq = _canonical_request(req, headers, auth.signed_headers, payload_hash, auth.presigned)
        scope = f"{auth.scope_date}/{auth.region}/{auth.service}/{TERMINATOR}"
        sts = string_to_sign(auth.date, scope, creq)
        if signing_keys is not None:
            # The caller's own cache, kept with the access key: no hashing of the secret to
            # find the key, one derivation per key and scope (in practice per day).
            sk = (auth.scope_date, auth.region, auth.service)
            key = signing_keys.get(sk)
            if key is None:
                if len(signing_keys) >= _MAX_SCOPES_PER_KEY:
                    signing_keys.clear()
                key = signing_keys[sk] = self._keys.get(
                    secret_access_key, auth.scope_date, auth.region, auth.service
                )
        else:
            key = self._keys.get(secret_access_key, auth.scope_date, auth.region, auth.service)
        expected = hmac.digest(key, _utf8(sts), "sha256").hex().encode()
        # Bytes on both sides: compare_digest refuses non-ASCII str, and a signature is
        # whatever the client sent.
        if not hmac.compare_digest(expected, _utf8(auth.signature)):
            raise SigV4Error(
                401,
                "SIGNATURE_DOES_NOT_MATCH",
                _MISMATCH,
                {"canonical_request": _printable(creq), "string_to_sign": _printable(sts)},
            )


def _query_error(message: str) -> SigV4Error:
    return SigV4Error(400, "AUTHORIZATION_QUERY_PARAMETERS_ERROR", message)


def _auth_query_params(query_string: str, *, strict: bool) -> dict[str, str]:
    """The presigning parameters (X-Amz-Algorithm, ...) of a raw query string, decoded.

    With ``strict``, one given twice is refused: which of the two would count is ambiguous.
    """
    found: dict[str, str] = {}
    if "X-Amz-" not in query_string and "%" not in query_string:
        return found  # the common case: no presigning, nothing to decode
    for part in query_string.split("&"):
        name, _, value = part.partition("=")
        name = unquote(name)  # str in, str out: never raises, whatever the text
        if name not in _QUERY_AUTH_PARAMS:
            continue
        if name in found and strict:
            raise _incomplete(f"The query-string parameter {name} must be given only once.")
        found.setdefault(name, unquote(value))
    return found


def _claims(
    credential: str,
    date: str,
    signed_headers: str,
    signature: str,
    *,
    presigned: bool,
    token: str | None,
) -> ParsedAuth:
    """The structural checks shared by header and query auth; scope values are checked later."""
    parts = _CREDENTIALS.get(credential)
    if parts is None:
        parts = tuple(credential.split("/"))
        if len(parts) != 5 or not all(parts):
            raise _incomplete(_BAD_CREDENTIAL)
        if parts[4] != TERMINATOR:
            raise _scope_error(
                f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
                f"not '{_echo(parts[4])}'."
            )
        _memo_put(_CREDENTIALS, credential, parts)
    if not _SIGNATURE.fullmatch(signature):
        raise _incomplete(
            "Signature should be 64 hexadecimal characters (the hex HMAC-SHA256 of the string "
            f"to sign), not '{_echo(signature)}'."
        )
    known = _SIGNED_HEADERS.get(signed_headers)
    if known is None:
        known = tuple(signed_headers.split(";"))
        if not all(_HEADER_NAME.fullmatch(n) for n in known):
            raise _incomplete(
                "SignedHeaders must be lower-case header names separated by ';', "
                f"not '{_echo(signed_headers)}'."
            )
        _memo_put(_SIGNED_HEADERS, signed_headers, known)
    names = list(known)  # each request its own list: callers may hold on to it
    return ParsedAuth(
        access_key_id=parts[0],
        date=date,
        scope_date=parts[1],
        region=parts[2],
        service=parts[3],
        signed_headers=names,
        signature=signature.lower(),
        presigned=presigned,
        session_token=token,
    )
