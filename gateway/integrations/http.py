"""The ``http`` type: any HTTP endpoint, JSON body of the mapped fields."""

from __future__ import annotations

from gateway.integrations.base import Action, IntegrationType, Param, register

HTTP = register(
    IntegrationType(
        name="http",
        description="Sends mapped records to any HTTP endpoint as JSON (webhooks, own APIs).",
        connection=(
            Param(
                "url",
                "url",
                "Endpoint URL; may use {field} placeholders filled from mapped fields.",
                required=True,
                example="https://hooks.example.com/signup",
            ),
            Param(
                "method",
                description="HTTP method.",
                default="POST",
                choices=("POST", "PUT", "PATCH"),
            ),
            Param(
                "auth",
                "object",
                "Authentication: {type: none|bearer|basic|api_key|oauth2_client_credentials|"
                "standard_webhooks|sigv4, ...its parameters}.",
                example={"type": "bearer", "token": "${WEBHOOK_TOKEN}"},
            ),
            Param("connect_timeout", "number", "Seconds to connect.", default=5),
            Param("read_timeout", "number", "Seconds to wait for the answer.", default=30),
            Param(
                "insecure_skip_tls_verify",
                "boolean",
                "Turn off TLS certificate checks (logged as a warning; for tests only).",
                default=False,
            ),
        ),
        settings=(
            Param("headers", "object", "Extra request headers.", default={}),
            Param(
                "body",
                description="object: one record per request, the JSON object of mapped fields; "
                "array: a JSON array of records per batch.",
                default="object",
                choices=("object", "array"),
            ),
        ),
        actions=(Action("send", "Send the mapped fields as a JSON body.", open_fields=True),),
        default_options={"batch_size": 1, "concurrency": 8},
    )
)
