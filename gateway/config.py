"""Settings: every option of the gateway, from command-line flags and ``GATEWAY_*`` variables.

Precedence: a flag given on the command line, then the ``GATEWAY_<NAME>`` environment variable,
then the default here. Every command (``serve``, ``keys``, ...) builds its settings the same way,
so they all find the same store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

ENV_PREFIX = "GATEWAY_"

#: The shortest admin token accepted: 16 random characters are beyond guessing over HTTP.
MIN_ADMIN_TOKEN_LENGTH = 16


class Settings(BaseModel):
    """The gateway's settings. Field names are the flag names with ``-`` for ``_``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on.")
    data_dir: Path = Field(
        Path("./var"), description="Directory for the SQLite store and key file."
    )
    mappings: Path = Field(Path("./mappings"), description="Directory of per-group mapping files.")
    region: str = Field("us-east-1", description="SigV4 region producers sign for.")
    service: str = Field("execute-api", description="SigV4 service name producers sign for.")
    store: str | None = Field(
        None, description="Store URL; default: SQLite file gateway.db in the data directory."
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="SQLite durability: FULL survives power loss; NORMAL survives crashes only.",
    )
    master_key: SecretStr | None = Field(
        None,
        description="Key that encrypts access-key secrets at rest; default: DATA_DIR/master.key.",
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the admin API (/admin/v1); unset: admin API off."
    )
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest single-record request body.")
    max_batch_bytes: int = Field(5 << 20, gt=0, description="Largest batch request body.")
    max_batch_records: int = Field(1000, gt=0, description="Most records in one batch.")
    max_inflight_bytes: int = Field(
        128 << 20,
        gt=0,
        description="Request body bytes (as sent and decompressed) held by all requests of a "
        "process together; beyond it producers get 503 OVERLOADED.",
    )
    body_timeout: float = Field(
        60.0, gt=0, description="Seconds a request body may take to arrive; then 408."
    )
    max_attributes: int = Field(200, gt=0, description="Most attributes in one record.")
    max_key_length: int = Field(128, gt=0, description="Longest attribute name, in characters.")
    max_value_length: int = Field(
        16384, gt=0, description="Longest string value (each list item too), in characters."
    )
    max_list_items: int = Field(1000, gt=0, description="Most items in one list value.")
    rate_limit: float = Field(
        1000.0, gt=0, description="Default requests per second per access key (token bucket)."
    )
    rate_burst: int = Field(2000, gt=0, description="Default bucket size per access key.")
    max_pending_writes: int = Field(
        50000, gt=0, description="Records waiting for a commit before ingest answers 503."
    )
    clock_skew: float = Field(300.0, gt=0, description="Allowed SigV4 clock skew, in seconds.")
    idempotency_ttl: float = Field(
        86400.0, gt=0, description="How long Idempotency-Key answers are kept, in seconds."
    )
    key_cache_ttl: float = Field(
        2.0, gt=0, description="Seconds an access key is cached (a revocation's longest delay)."
    )
    delivery: bool = Field(
        True, description="Run the delivery engine in this process (off: ingest only)."
    )
    console: bool = Field(
        True, description="Serve the web console at /console (sign-in needs an admin token)."
    )
    delivery_lease: float = Field(
        60.0,
        gt=0,
        description="Seconds a claimed delivery is leased; after a crash, the longest wait "
        "before another process (or the restarted one) sends it.",
    )
    delivery_poll_interval: float = Field(
        1.0, gt=0, description="Seconds between looks for due deliveries (new records wake it)."
    )
    delivery_max_in_flight: int = Field(
        10000, gt=0, description="Deliveries claimed and not yet finished, all lanes together."
    )
    retention: float = Field(
        7 * 86400.0,
        gt=0,
        description="Seconds delivered records are kept before they are purged (dead ones "
        "stay until replayed).",
    )
    workers: int = Field(
        1,
        ge=1,
        description="Processes serving the port (SO_REUSEPORT) under a parent that restarts "
        "them; on SQLite only worker 0 delivers.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    destinations_allow: str = Field(
        "",
        description="Address ranges deliveries may go to although denied otherwise (CIDRs or "
        "loopback, private, link-local, metadata; comma-separated), e.g. 169.254.169.254/32.",
    )
    destinations_deny: str = Field(
        "",
        description="Address ranges deliveries may not go to, on top of link-local and cloud "
        "metadata (always denied unless allowed), e.g. loopback,private.",
    )

    @field_validator("destinations_allow", "destinations_deny")
    @classmethod
    def _ranges(cls, v: str) -> str:
        from gateway.integrations.destinations import parse_ranges

        parse_ranges(v)  # a ValueError names the bad item
        return v

    @field_validator("admin_token")
    @classmethod
    def _strong_admin_token(cls, token: SecretStr | None) -> SecretStr | None:
        # The message never contains the token: it is printed and may be logged.
        if token is None:
            return None
        value = token.get_secret_value()
        if len(value) < MIN_ADMIN_TOKEN_LENGTH:
            raise PydanticCustomError(
                "weak_admin_token",
                "the admin token is too short: at least {minimum} characters are needed, it has "
                "{length}; make one with: openssl rand -hex 32",
                {"length": len(value), "minimum": MIN_ADMIN_TOKEN_LENGTH},
            )
        if not all("!" <= c <= "~" for c in value):
            # It travels in an HTTP header, where spaces are trimmed and other characters are
            # mangled by some clients: only visible ASCII matches reliably.
            raise PydanticCustomError(
                "weak_admin_token",
                "the admin token may only hold visible ASCII characters (no spaces, no "
                "accented letters); make one with: openssl rand -hex 32",
            )
        return token

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        # A batch larger than the commit queue could never be accepted.
        if self.max_pending_writes < self.max_batch_records:
            raise ValueError(
                f"max_pending_writes ({self.max_pending_writes}) must be at least "
                f"max_batch_records ({self.max_batch_records})"
            )
        if self.max_inflight_bytes < max(self.max_body_bytes, self.max_batch_bytes):
            raise ValueError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least the largest "
                "request body allowed (max_body_bytes, max_batch_bytes)"
            )
        return self

    @property
    def store_url(self) -> str:
        """The store URL, defaulting to the SQLite file in the data directory."""
        return self.store or f"sqlite:///{(self.data_dir / 'gateway.db').as_posix()}"


def env_name(field: str) -> str:
    """``data_dir`` -> ``GATEWAY_DATA_DIR``."""
    return ENV_PREFIX + field.upper()


def load_settings(
    overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Settings from ``GATEWAY_*`` variables with ``overrides`` (flags given) on top.

    Raises :class:`SettingsError` naming every bad option and where it came from.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in Settings.model_fields:
        var = env_name(name)
        if var in env and env[var] != "":
            values[name] = env[var]
            sources[name] = var
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
            sources[name] = "--" + name.replace("_", "-")
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if err["loc"]:
                name = str(err["loc"][0])
                problems.append(f"{sources.get(name, name)}: {err['msg']}")
            else:
                problems.append(err["msg"])
        raise SettingsError(problems) from None


class SettingsError(Exception):
    """Bad settings; ``problems`` names each option and what is wrong with it."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
