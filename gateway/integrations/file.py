"""The ``file`` type: append mapped records to a local NDJSON file (local use and the demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from gateway.integrations.base import Action, IntegrationType, OutboundRequest, Param, register


def build(
    integration: Any, batch: list[tuple[str, dict[str, Any]]], *, redact: bool = False
) -> list[OutboundRequest]:
    """One append of NDJSON lines per batch (method ``APPEND``, url ``file://<path>``)."""
    conn = integration.connection.redacted() if redact else integration.connection.value
    path = Path(str(conn["path"])).resolve()
    body = b"".join(orjson.dumps(fields) + b"\n" for _, fields in batch)
    return [OutboundRequest("APPEND", path.as_uri(), {}, body, [d for d, _ in batch])]


FILE = register(
    IntegrationType(
        name="file",
        description="Appends each mapped record as one JSON line to a local file (NDJSON).",
        connection=(
            Param(
                "path",
                description="File to append to; created with its directory if missing.",
                required=True,
                example="./var/deliveries.ndjson",
            ),
        ),
        actions=(
            Action(
                "append",
                "Append the mapped fields as one JSON object per line; fsync per batch.",
                open_fields=True,
            ),
        ),
        default_options={"batch_size": 100, "concurrency": 1},
        build=build,
    )
)
