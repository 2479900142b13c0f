"""AWS Signature Version 4 verification, from the raw request, for non-S3 services.

Pure: no aiohttp, no store. A caller turns its request into a :class:`SigV4Request`, calls
:meth:`SigV4Verifier.parse` (structure, dates, scope, signed headers; needs no secret), looks up
the access key, then calls :meth:`SigV4Verifier.verify` with the secret. Errors carry an HTTP
status, a code and a message worded like AWS's own, so a developer who knows AWS recognises them;
a mismatch carries the canonical request and string to sign the server computed (never the
secret or the signing key).

Canonicalisation follows AWS's rules for non-S3 services and its published test suite: the path
as received (still percent-encoded), dot segments and repeated slashes removed, then encoded once
more; query pairs decoded and re-encoded, sorted by name then value; header values trimmed with
inner runs of white space collapsed, repeated headers joined with commas; the payload hash
computed from the body bytes received.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_PRESIGNED_EXPIRES = 7 * 24 * 3600
_DATE_RE = re.compile(r"^\d{8}T\d{6}Z$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UNRESERVED = "-_.~"


@dataclass(slots=True)
class SigV4Request:
    """A request as received: what SigV4 signs."""

    method: str
    raw_path: str  # as received on the wire, still percent-encoded, without the query
    query_string: str  # raw, after '?'; '' if none
    headers: list[tuple[str, str]]  # as received, in order; repeated names allowed
    body: bytes


class SigV4Error(Exception):
    """Authentication failed: HTTP status, code, AWS-like message and safe debugging extras."""

    def __init__(
        self, status: int, code: str, message: str, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra: dict[str, Any] = extra or {}


@dataclass(slots=True)
class ParsedAuth:
    """What a request's signature claims, checked for structure but not yet verified."""

    access_key_id: str
    date: str
    scope_date: str
    region: str
    service: str
    signed_headers: list[str]
    signature: str
    presigned: bool
    session_token: str | None = None
    payload_hash: str = field(default="", repr=False)


def _incomplete(message: str) -> SigV4Error:
    return SigV4Error(401, "INCOMPLETE_SIGNATURE", message)


# -- canonicalisation ----------------------------------------------------------------------


def canonical_path(raw_path: str) -> str:
    """The canonical URI of a non-S3 request: normalised, then encoded once more."""
    if not raw_path:
        return "/"
    segments: list[str] = []
    for seg in raw_path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if segments:
                segments.pop()
            continue
        segments.append(seg)
    path = "/" + "/".join(segments)
    if raw_path.endswith("/") and path != "/":
        path += "/"
    return quote(path, safe="/~")


def canonical_query(query_string: str, *, drop_signature: bool = False) -> str:
    """The canonical query string: pairs decoded, re-encoded, sorted by name then value."""
    if not query_string:
        return ""
    pairs: list[tuple[str, str]] = []
    for part in query_string.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = quote(unquote(name), safe=_UNRESERVED)
        if drop_signature and name == "X-Amz-Signature":
            continue
        pairs.append((name, quote(unquote(value), safe=_UNRESERVED)))
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def header_map(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased names to canonical values (trimmed, spaces collapsed, repeats comma-joined)."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.strip().lower()
        value = " ".join(value.split())  # trim, and collapse inner runs of white space
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def canonical_request(
    req: SigV4Request,
    signed_headers: list[str],
    payload_hash: str,
    *,
    presigned: bool = False,
    headers: dict[str, str] | None = None,
) -> str:
    """The canonical request AWS's algorithm signs."""
    h = header_map(req.headers) if headers is None else headers
    canonical_headers = "".join(f"{n}:{h.get(n, '')}\n" for n in signed_headers)
    return "\n".join(
        (
            req.method.upper(),
            canonical_path(req.raw_path),
            canonical_query(req.query_string, drop_signature=presigned),
            canonical_headers,
            ";".join(signed_headers),
            payload_hash,
        )
    )


def string_to_sign(date: str, scope: str, canonical: str) -> str:
    """The string to sign for a canonical request."""
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{date}\n{scope}\n{digest}"


_KEY_CACHE: OrderedDict[tuple[bytes, str, str, str], bytes] = OrderedDict()
_KEY_CACHE_SIZE = 1024


def _derive(secret: str, scope_date: str, region: str, service: str) -> bytes:
    key = hmac.new(("AWS4" + secret).encode(), scope_date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signing_key(secret: str, scope_date: str, region: str, service: str) -> bytes:
    """The derived signing key, cached per (secret, date, region, service).

    The cache is keyed by a hash of the secret, so no secret string sits in it.
    """
    ck = (hashlib.sha256(secret.encode()).digest(), scope_date, region, service)
    key = _KEY_CACHE.get(ck)
    if key is None:
        key = _derive(secret, scope_date, region, service)
        _KEY_CACHE[ck] = key
        if len(_KEY_CACHE) > _KEY_CACHE_SIZE:
            _KEY_CACHE.popitem(last=False)
    return key


def _epoch(date: str) -> float:
    # Slicing beats strptime by an order of magnitude; _DATE_RE has checked the shape.
    fields = (date[0:4], date[4:6], date[6:8], date[9:11], date[11:13], date[13:15])
    year, month, day, hour, minute, second = map(int, fields)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise _incomplete(f"X-Amz-Date is not a valid date: '{date}'.")
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def _fmt(ts: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ts))


# -- verification --------------------------------------------------------------------------


class SigV4Verifier:
    """Verifies SigV4 header and presigned-query authentication for one region and service."""

    def __init__(
        self, region: str, service: str, *, clock_skew: float = 300.0, cache_size: int = 1024
    ) -> None:
        global _KEY_CACHE_SIZE
        self.region = region
        self.service = service
        self.clock_skew = clock_skew
        _KEY_CACHE_SIZE = max(_KEY_CACHE_SIZE, cache_size)

    def parse(self, req: SigV4Request, now: float) -> ParsedAuth:
        """Check the request's signature claims; raise :class:`SigV4Error` when malformed."""
        try:
            return self._parse(req, now)
        except SigV4Error:
            raise
        except Exception as exc:  # attacker input: nothing but SigV4Error may escape
            raise _incomplete(f"Malformed request signature: {type(exc).__name__}") from None

    def _parse(self, req: SigV4Request, now: float) -> ParsedAuth:
        headers = header_map(req.headers)
        auth = headers.get("authorization")
        query = _query_params(req.query_string) if "X-Amz-" in req.query_string else {}
        if auth is not None:
            parsed = self._parse_header(auth, headers)
        elif "X-Amz-Algorithm" in query or "X-Amz-Signature" in query:
            parsed = self._parse_query(query, now)
        else:
            raise SigV4Error(401, "MISSING_AUTHENTICATION_TOKEN", "Missing Authentication Token")
        self._check_scope(parsed)
        if not parsed.presigned:
            self._check_time(parsed.date, now)
        self._check_signed_headers(parsed, headers, req.body)
        return parsed

    def _parse_header(self, auth: str, headers: dict[str, str]) -> ParsedAuth:
        algorithm, _, rest = auth.partition(" ")
        if algorithm != ALGORITHM:
            raise SigV4Error(
                401,
                "UNSUPPORTED_ALGORITHM",
                f"Authorization header uses an unsupported algorithm: {algorithm[:40]!r}; "
                f"only {ALGORITHM} is accepted.",
            )
        params: dict[str, str] = {}
        for part in rest.split(","):
            name, eq, value = part.strip().partition("=")
            if eq:
                params[name.strip()] = value.strip()
        missing = [p for p in ("Credential", "Signature", "SignedHeaders") if not params.get(p)]
        if missing:
            text = " ".join(f"Authorization header requires '{p}' parameter." for p in missing)
            raise _incomplete(f"{text} Authorization={ALGORITHM} {rest[:200]}")
        date = headers.get("x-amz-date") or headers.get("date")
        if not date:
            raise _incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a "
                "'Date' header."
            )
        if not _DATE_RE.match(date):
            raise _incomplete(
                f"Date must be in ISO-8601 'basic format'. Got '{date[:40]}'. See "
                "http://en.wikipedia.org/wiki/ISO_8601"
            )
        return self._credential(
            params["Credential"],
            date,
            params["SignedHeaders"],
            params["Signature"],
            presigned=False,
            token=headers.get("x-amz-security-token"),
        )

    def _parse_query(self, query: dict[str, str], now: float) -> ParsedAuth:
        algorithm = query.get("X-Amz-Algorithm", "")
        if algorithm != ALGORITHM:
            raise SigV4Error(
                401,
                "UNSUPPORTED_ALGORITHM",
                f"X-Amz-Algorithm only supports '{ALGORITHM}', not {algorithm[:40]!r}.",
            )
        required = ("X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature")
        missing = [p for p in required if not query.get(p)]
        if missing:
            raise _incomplete(
                " ".join(
                    f"Query-string authentication requires the {p} parameter." for p in missing
                )
            )
        date = query["X-Amz-Date"]
        if not _DATE_RE.match(date):
            raise _incomplete(f"X-Amz-Date must be in ISO-8601 'basic format'. Got '{date[:40]}'.")
        expires_text = query.get("X-Amz-Expires", "")
        if not expires_text.isdigit():
            raise _incomplete("X-Amz-Expires must be a whole number of seconds.")
        expires = int(expires_text)
        if expires > MAX_PRESIGNED_EXPIRES:
            raise _incomplete("X-Amz-Expires must be less than a week (in seconds).")
        signed_at = _epoch(date)
        if now > signed_at + expires:
            raise SigV4Error(
                401,
                "REQUEST_EXPIRED",
                f"Request has expired: signed at {date}, valid for {expires} s, now {_fmt(now)}.",
            )
        if signed_at > now + self.clock_skew:
            raise SigV4Error(
                401,
                "REQUEST_NOT_YET_VALID",
                f"Signature not yet current: {date} is still later than "
                f"{_fmt(now + self.clock_skew)} ({_fmt(now)} + 5 min.)",
            )
        return self._credential(
            query["X-Amz-Credential"],
            date,
            query["X-Amz-SignedHeaders"],
            query["X-Amz-Signature"],
            presigned=True,
            token=query.get("X-Amz-Security-Token"),
        )

    @staticmethod
    def _credential(
        credential: str,
        date: str,
        signed: str,
        signature: str,
        *,
        presigned: bool,
        token: str | None,
    ) -> ParsedAuth:
        parts = credential.split("/")
        if len(parts) != 5 or not all(parts):
            raise _incomplete(
                "Credential should be of the form "
                "'<access key id>/<date>/<region>/<service>/aws4_request', "
                f"not '{credential[:120]}'."
            )
        if parts[4] != "aws4_request":
            raise SigV4Error(
                401,
                "INVALID_CREDENTIAL_SCOPE",
                "Credential should be scoped with a valid terminator: 'aws4_request', "
                f"not '{parts[4][:40]}'.",
            )
        if not _HEX64.match(signature):
            raise _incomplete("Signature must be 64 lower-case hexadecimal characters.")
        names = signed.split(";")
        if any(not n or n != n.lower() or n.strip() != n for n in names):
            raise _incomplete("SignedHeaders must be lower-case header names separated by ';'.")
        return ParsedAuth(
            access_key_id=parts[0],
            date=date,
            scope_date=parts[1],
            region=parts[2],
            service=parts[3],
            signed_headers=names,
            signature=signature,
            presigned=presigned,
            session_token=token,
        )

    def _check_scope(self, auth: ParsedAuth) -> None:
        if auth.scope_date != auth.date[:8]:
            raise SigV4Error(
                401,
                "INVALID_CREDENTIAL_SCOPE",
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
                f"from HTTP: '{auth.scope_date[:20]}' != '{auth.date[:8]}', from '{auth.date}'.",
            )
        if auth.region != self.region:
            raise SigV4Error(
                401,
                "INVALID_CREDENTIAL_SCOPE",
                f"Credential should be scoped to a valid region, not '{auth.region[:40]}'. "
                f"This gateway accepts '{self.region}'.",
            )
        if auth.service != self.service:
            raise SigV4Error(
                401,
                "INVALID_CREDENTIAL_SCOPE",
                f"Credential should be scoped to correct service: '{self.service}'. ",
            )

    def _check_time(self, date: str, now: float) -> None:
        signed_at = _epoch(date)
        if signed_at < now - self.clock_skew:
            raise SigV4Error(
                401,
                "REQUEST_EXPIRED",
                f"Signature expired: {date} is now earlier than {_fmt(now - self.clock_skew)} "
                f"({_fmt(now)} - 5 min.)",
            )
        if signed_at > now + self.clock_skew:
            raise SigV4Error(
                401,
                "REQUEST_NOT_YET_VALID",
                f"Signature not yet current: {date} is still later than "
                f"{_fmt(now + self.clock_skew)} ({_fmt(now)} + 5 min.)",
            )

    def _check_signed_headers(self, auth: ParsedAuth, headers: dict[str, str], body: bytes) -> None:
        signed = set(auth.signed_headers)
        if "host" not in signed and ":authority" not in signed:
            raise SigV4Error(
                401,
                "HEADERS_NOT_SIGNED",
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            )
        if not auth.presigned and "x-amz-date" not in signed and "date" not in signed:
            raise SigV4Error(
                401,
                "HEADERS_NOT_SIGNED",
                "'X-Amz-Date' or 'Date' must be a 'SignedHeader' in the AWS Authorization.",
            )
        body_hash = hashlib.sha256(body).hexdigest()
        auth.payload_hash = body_hash
        claimed = headers.get("x-amz-content-sha256")
        if claimed is not None:
            if claimed == UNSIGNED_PAYLOAD:
                raise SigV4Error(
                    400,
                    "UNSIGNED_PAYLOAD_NOT_ACCEPTED",
                    "x-amz-content-sha256: UNSIGNED-PAYLOAD is not accepted; sign the payload.",
                )
            if claimed != body_hash:
                raise SigV4Error(
                    400,
                    "CONTENT_SHA256_MISMATCH",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                    {"client_computed_content_sha256": claimed[:64], "sha256_received": body_hash},
                )
        unsigned = sorted(
            name
            for name in headers
            if name.startswith("x-amz-")
            and name not in signed
            and name != "x-amz-content-sha256"  # checked against the body above
        )
        if unsigned:
            raise SigV4Error(
                401,
                "HEADERS_NOT_SIGNED",
                "There were headers present in the request which were not signed: "
                + ", ".join(unsigned),
            )

    def verify(self, req: SigV4Request, auth: ParsedAuth, secret_access_key: str) -> None:
        """Recompute the signature with the secret; raise SIGNATURE_DOES_NOT_MATCH if it differs."""
        payload = auth.payload_hash or hashlib.sha256(req.body).hexdigest()
        creq = canonical_request(req, auth.signed_headers, payload, presigned=auth.presigned)
        scope = f"{auth.scope_date}/{auth.region}/{auth.service}/aws4_request"
        sts = string_to_sign(auth.date, scope, creq)
        key = signing_key(secret_access_key, auth.scope_date, auth.region, auth.service)
        expected = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, auth.signature):
            raise SigV4Error(
                401,
                "SIGNATURE_DOES_NOT_MATCH",
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method. Consult the service "
                "documentation for details.",
                {"canonical_request": creq, "string_to_sign": sts},
            )


def _query_params(query_string: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in query_string.split("&"):
        name, _, value = part.partition("=")
        out.setdefault(unquote(name), unquote(value))
    return out
