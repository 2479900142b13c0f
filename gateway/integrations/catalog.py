"""The catalog of integration types, rendered from their declarations.

``gateway integrations [TYPE]`` prints it; ``docs/integrations.md`` is generated from it
(``gateway integrations --markdown > docs/integrations.md``) and a test fails when it is stale.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.integrations.base import Action, IntegrationType, Param, all_types


def _param_json(p: Param) -> dict[str, Any]:
    d: dict[str, Any] = {"name": p.name, "type": p.type, "required": p.required}
    if p.default is not None:
        d["default"] = p.default
    if p.choices:
        d["choices"] = list(p.choices)
    if p.secret:
        d["secret"] = True
    d["description"] = p.description
    if p.example is not None:
        d["example"] = p.example
    return d


def _action_json(a: Action) -> dict[str, Any]:
    return {
        "name": a.name,
        "description": a.description,
        "open_fields": a.open_fields,
        "settings": [_param_json(p) for p in a.settings],
        "fields": [
            {
                k: v
                for k, v in {
                    "name": f.name,
                    "type": f.type,
                    "required": f.required,
                    "format": f.format,
                    "description": f.description,
                    "example": f.example,
                }.items()
                if v is not None
            }
            for f in a.fields
        ],
    }


def type_json(t: IntegrationType) -> dict[str, Any]:
    """One type's declaration as JSON-ready data."""
    return {
        "type": t.name,
        "description": t.description,
        "connection": [_param_json(p) for p in t.connection],
        "settings": [_param_json(p) for p in t.settings],
        "actions": [_action_json(a) for a in t.actions],
        "default_options": t.default_options,
    }


def _params_table(params: tuple[Param, ...]) -> list[str]:
    lines = ["| key | type | required | default | description |", "|---|---|---|---|---|"]
    for p in params:
        default = "" if p.default is None else f"`{json.dumps(p.default)}`"
        desc = p.description
        if p.choices:
            desc += " One of: " + ", ".join(f"`{c}`" for c in p.choices) + "."
        if p.secret:
            desc += " Secret: give it as `${ENV_VAR}` or `${file:/path}`."
        if p.secret_keys:
            keys = ", ".join(f"`{k}`" for k in p.secret_keys)
            desc += f" Secrets ({keys}) must be `${{ENV_VAR}}` or `${{file:/path}}` references."
        lines.append(
            f"| `{p.name}` | {p.type} | {'yes' if p.required else 'no'} | {default} | {desc} |"
        )
    return lines


def markdown(types: list[IntegrationType] | None = None) -> str:
    """The whole catalog as Markdown (the content of docs/integrations.md)."""
    types = all_types() if types is None else types
    out = [
        "# Integration catalog",
        "",
        "Generated from the integration types' declarations by "
        "`gateway integrations --markdown`; do not edit by hand.",
        "",
    ]
    for t in types:
        out += [f"## `{t.name}`", "", t.description, ""]
        if t.connection:
            out += ["### connection", "", *_params_table(t.connection), ""]
        if t.settings:
            out += ["### settings", "", *_params_table(t.settings), ""]
        for a in t.actions:
            out += [f"### action `{a.name}`", "", a.description, ""]
            if a.settings:
                out += ["Settings:", "", *_params_table(a.settings), ""]
            if a.open_fields:
                out += ["Fields: any names the mapping defines.", ""]
            if a.fields:
                out += ["| field | type | required | description |", "|---|---|---|---|"]
                for f in a.fields:
                    fmt = f" (format `{f.format}`)" if f.format else ""
                    out.append(
                        f"| `{f.name}` | {f.type}{fmt} | {'yes' if f.required else 'no'} "
                        f"| {f.description} |"
                    )
                out.append("")
        if t.default_options:
            opts = ", ".join(f"`{k}: {v}`" for k, v in t.default_options.items())
            out += [f"Default options: {opts}.", ""]
    return "\n".join(out).rstrip() + "\n"


def text(t: IntegrationType) -> str:
    """One type for a terminal."""
    out = [f"{t.name}: {t.description}"]

    def params(title: str, ps: tuple[Param, ...], indent: str = "  ") -> None:
        if not ps:
            return
        out.append(f"{indent}{title}:")
        for p in ps:
            flags = ", ".join(
                x
                for x in (
                    "required" if p.required else "",
                    f"default {json.dumps(p.default)}" if p.default is not None else "",
                    "secret" if p.secret else "",
                )
                if x
            )
            out.append(
                f"{indent}  {p.name} ({p.type}{', ' + flags if flags else ''}): {p.description}"
            )

    params("connection", t.connection)
    params("settings", t.settings)
    for a in t.actions:
        out.append(f"  action {a.name}: {a.description}")
        params("settings", a.settings, "    ")
        if a.open_fields:
            out.append("    fields: any names the mapping defines")
        for f in a.fields:
            req = ", required" if f.required else ""
            out.append(f"    field {f.name} ({f.type}{req}): {f.description}")
    return "\n".join(out)
