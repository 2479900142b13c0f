"""The ``file`` type: append mapped records to a local NDJSON file (local use and the demo)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from gateway.integrations.base import (
    Action,
    IntegrationType,
    OutboundRequest,
    Param,
    TokenProvider,
    register,
)


def build(
    integration: Any,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """One append of the batch's NDJSON lines: method ``APPEND``, url ``file://<absolute
    path>`` (a relative path is taken from the gateway's working directory), the lines as
    body. The delivery engine writes and fsyncs; building touches no file."""
    path = os.path.abspath(os.path.expanduser(str(integration.connection.value["path"])))
    body = b"".join(orjson.dumps(fields) + b"\n" for _, fields in batch)
    return [
        OutboundRequest(
            "APPEND",
            Path(path).as_uri(),
            {"Content-Type": "application/x-ndjson"},
            body,
            [d for d, _ in batch],
        )
    ]


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
