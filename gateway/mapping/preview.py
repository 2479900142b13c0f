"""Preview: a record run through a group's mapping, nothing sent and nothing stored.

For each integration: whether its condition matched, the mapped fields or the mapping error,
and the request that would be sent, with every secret redacted. ``gateway preview`` and
``POST /admin/v1/preview`` answer this same document.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.ingest.validate import Limits, validate_data
from gateway.mapping.errors import MappingError
from gateway.mapping.model import CompiledMapping

PREVIEW_DELIVERY_ID = "dlv_preview"


def _body(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")


def preview(mapping: CompiledMapping, data: Any) -> dict[str, Any]:
    """The preview document of ``data`` through ``mapping``."""
    problems = validate_data(data, Limits())
    doc: dict[str, Any] = {
        "group_key": mapping.group_key,
        "version": mapping.version,
        "data_errors": problems,
        "integrations": [],
    }
    if problems:
        return doc
    for integ in mapping.integrations:
        entry: dict[str, Any] = {
            "name": integ.name,
            "type": integ.type.name,
            "action": integ.action.name,
            "enabled": integ.enabled,
            "matched": integ.condition is None or integ.condition.matches(data),
        }
        if integ.enabled and entry["matched"]:
            try:
                fields = integ.map(data)
            except MappingError as exc:
                entry["error"] = exc.to_dict()
            else:
                entry["fields"] = fields
                if integ.type.build is not None:
                    requests = integ.type.build(integ, [(PREVIEW_DELIVERY_ID, fields)], redact=True)
                    entry["requests"] = [
                        {
                            "method": r.method,
                            "url": r.url,
                            "headers": r.headers,
                            "body": _body(r.body),
                        }
                        for r in requests
                    ]
        doc["integrations"].append(entry)
    return doc
