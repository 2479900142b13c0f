"""The ``file`` type: append mapped records to a local NDJSON file (local use and the demo)."""

from __future__ import annotations

from gateway.integrations.base import Action, IntegrationType, Param, register

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
    )
)
