"""The OpenAPI document: valid OpenAPI 3.1, and in step with the routes the app registers."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web
from openapi_spec_validator import validate

from gateway.app import openapi_document
from gateway.ingest import api, webhooks
from gateway.mapping.loader import MappingRegistry
from gateway.mapping.webhook_sources import SourceRegistry


def test_document_is_valid_openapi_31() -> None:
    doc = json.loads(openapi_document())
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_every_route_is_documented_with_its_method() -> None:
    app = web.Application()
    api.add_routes(app)
    webhooks.add_routes(app, SourceRegistry(MappingRegistry(Path("mappings"))))
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    routes |= {
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    }
    paths = json.loads(openapi_document())["paths"]
    documented = {(m, p) for p, ops in paths.items() for m in ops if m != "parameters"}
    assert routes == documented


def test_every_error_response_uses_the_envelope() -> None:
    doc = json.loads(openapi_document())
    for name, resp in doc["components"]["responses"].items():
        schema = resp["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}, name
