"""Reading AWS's SigV4 test suite (vendored in tests/data/aws4_testsuite, Apache-2.0).

Each case is a folder holding NAME.req (the raw request), .creq, .sts, .authz and .sreq. The
fixed inputs are in tests/data/aws4_testsuite/README.md.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from pathlib import Path

from gateway.auth.sigv4 import SigV4Request

SUITE = Path(__file__).parent.parent / "data" / "aws4_testsuite"
ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
DATE = "20150830T123600Z"
REGION = "us-east-1"
SERVICE = "service"
SCOPE = f"{DATE[:8]}/{REGION}/{SERVICE}/aws4_request"
NOW = float(calendar.timegm((2015, 8, 30, 12, 36, 0, 0, 0, 0)))


@dataclass(frozen=True)
class Case:
    """One case folder of the suite."""

    path: Path

    @property
    def name(self) -> str:
        """The case name, which is also the folder's and its files' name."""
        return self.path.name

    def read(self, ext: str) -> bytes:
        """The raw bytes of NAME.ext (the .req files hold raw UTF-8, e.g. get-utf8)."""
        return (self.path / f"{self.name}.{ext}").read_bytes()

    def text(self, ext: str) -> str:
        """NAME.ext as text (.creq, .sts, .authz)."""
        return self.read(ext).decode("utf-8")


def cases() -> list[Case]:
    """Every case, subfolders included (normalize-path/, post-sts-token/), sorted by name."""
    return sorted((Case(p.parent) for p in SUITE.rglob("*.req")), key=lambda c: c.name)


def parse_raw(raw: bytes) -> SigV4Request:
    """A raw HTTP/1.1 request as the suite writes it, read the way a server reads the wire.

    The request target is kept raw (not decoded, not normalised); it may hold a literal space
    (get-space), so the method is the first word and the version the last. Header lines that
    start with white space continue the previous value (obs-fold, get-header-value-multiline);
    RFC 9112 lets a recipient replace each fold with a space, which we do. Lines end in LF in
    the suite; CRLF is accepted too. Text is decoded as aiohttp does (UTF-8, surrogateescape).
    """
    raw = raw.replace(b"\r\n", b"\n")
    head, sep, body = raw.partition(b"\n\n")
    lines = head.decode("utf-8", "surrogateescape").split("\n")
    method, _, rest = lines[0].partition(" ")
    target, _, _version = rest.rpartition(" ")
    path, _, query = target.partition("?")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            if not headers:
                raise ValueError(f"continuation line before any header: {line!r}")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line}")
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"not a header line: {line!r}")
        headers.append((name, value))
    return SigV4Request(method, path, query, headers, body if sep else b"")


def header_value(req: SigV4Request, name: str) -> str | None:
    """The first value of a header, any case; None when absent."""
    for n, v in req.headers:
        if n.lower() == name.lower():
            return v.strip()
    return None


def without_header(req: SigV4Request, name: str) -> SigV4Request:
    """A copy of the request without any header of that name."""
    headers = [(n, v) for n, v in req.headers if n.lower() != name.lower()]
    return SigV4Request(req.method, req.raw_path, req.query_string, headers, req.body)


def with_header(req: SigV4Request, name: str, value: str) -> SigV4Request:
    """A copy of the request with that header replaced (or added) at the end."""
    req = without_header(req, name)
    req.headers.append((name, value))
    return req


def authorization(signed_headers: list[str], signature: str) -> str:
    """The Authorization header value the suite's signer writes."""
    return (
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{SCOPE}, "
        f"SignedHeaders={';'.join(signed_headers)}, Signature={signature}"
    )
