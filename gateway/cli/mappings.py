"""``gateway check``, ``preview`` and ``integrations``: mapping files and integration types,
offline (no store, no running gateway)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.common import add_settings_flags, print_json, settings_of

if TYPE_CHECKING:
    from gateway.cli.common import SubParsers


def cmd_check(args: argparse.Namespace) -> int:
    """Validate every mapping file and webhook source file (sources/*.yaml); list every
    problem; exit 1 if there is any, 2 if the directory cannot be read."""
    from gateway.mapping.loader import MappingRegistry  # here: other commands start faster
    from gateway.mapping.webhook_sources import SourceRegistry

    directory = Path(args.dir) if args.dir else settings_of(args).mappings
    registry = MappingRegistry(directory)
    result = registry.reload()
    if registry.error:
        # Not a problem in a file: nothing was checked. Say so, and fail unlike a bad file.
        if args.json:
            print_json(
                {
                    "ok": False,
                    "groups": 0,
                    "integrations": 0,
                    "problems": [
                        {
                            "file": str(directory),
                            "line": None,
                            "path": "(directory)",
                            "message": registry.error,
                        }
                    ],
                }
            )
        else:
            print(f"error: {registry.error}", file=sys.stderr)
        return 2
    sources = SourceRegistry(registry)  # webhook sources: <directory>/sources/*.yaml
    sourced = sources.reload()
    problems = [p.to_dict() for p in registry.all_problems() + sources.all_problems()]
    integrations = sum(len(m.integrations) for g in registry.groups() if (m := registry.get(g)))
    if args.json:
        print_json(
            {
                "ok": not problems,
                "groups": len(registry),
                "integrations": integrations,
                "webhook_sources": len(sources),
                "problems": problems,
            }
        )
    else:
        for p in problems:
            where = f"{p['file']}:{p['line']}" if p["line"] else p["file"]
            print(f"{where}: {p['path']}: {p['message']}")
        files = (
            len(result.loaded) + len(result.failed) + len(sourced.loaded) + len(sources.problems)
        )
        failed = len(result.failed) + len(sources.problems)
        extra = f", {len(sources)} webhook source(s)" if len(sources) else ""
        if problems:
            print(f"{len(problems)} problem(s) in {failed} of {files} file(s)")
        else:
            print(
                f"ok: {len(registry)} group(s), {integrations} integration(s){extra} in {directory}"
            )
    return 1 if problems else 0


def cmd_preview(args: argparse.Namespace) -> int:
    """Run a record through a group's mapping and print, for each integration, whether its
    condition matched, the mapped fields or the mapping error, and the request that would be
    sent (secrets shown as ***). Nothing is sent or stored. Exit 1 when the group has no valid
    mapping, the data would be refused, or an integration cannot map or build the record."""
    from gateway.mapping.loader import MappingRegistry
    from gateway.preview import limits_of, preview_group

    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        print(f"error: --data is not valid JSON: {exc}", file=sys.stderr)
        return 2
    settings = settings_of(args)
    registry = MappingRegistry(settings.mappings)
    registry.reload()
    if registry.error:
        print(f"error: {registry.error}", file=sys.stderr)
        return 1
    doc = preview_group(registry, args.group, data, limits=limits_of(settings))
    if doc is None:
        problems = registry.problems_of(args.group)
        if problems:
            print(f"error: the mapping file of group {args.group!r} has errors:", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
        else:
            print(
                f"error: no mapping for group {args.group!r} in {settings.mappings}",
                file=sys.stderr,
            )
        return 1
    failed = bool(doc["data_errors"]) or any(
        "error" in i or "error" in i.get("rollup", {}) for i in doc["integrations"]
    )
    if args.json:
        print_json(doc)
        return 1 if failed else 0
    print(f"group {doc['group_key']} (mapping version {doc['version']}); nothing is sent")
    for e in doc["data_errors"]:
        print(f"  data error: {e['field']}: {e['message']}")
    for i in doc["integrations"]:
        state = "disabled" if not i["enabled"] else "matched" if i["matched"] else "not matched"
        print(f"\n{i['name']} ({i['type']}, {i['action']}): {state}")
        if "error" in i:
            e = i["error"]
            where = ", ".join(
                f"{k} {e[k]}" for k in ("field", "source", "value") if e.get(k) is not None
            )
            print(f"  error: {e['message']}" + (f" ({where})" if where else ""))
        if "rollup" in i:  # docs/links-and-rollups.md: the bucket, then the one-record report
            b = i["rollup"]
            if "error" in b:
                print(f"  rollup error: {b['error']}")
            else:
                print(f"  rollup: adds {json.dumps(b['adds'])} to {json.dumps(b['key'])} in "
                      f"{b['window_start']} .. {b['window_end']}, reported after "
                      f"{b['reported_after']}; the report of this record alone:")  # fmt: skip
        if "fields" in i:
            print("  fields:" if i["fields"] else "  fields: (none mapped)")
            for k, v in i["fields"].items():
                print(f"    {k} = {json.dumps(v, ensure_ascii=False)}")
        for r in [i["request"]] if "request" in i else i.get("requests", []):
            print("  request:")
            print(f"    {r['method']} {r['url']}")
            for hk, hv in r["headers"].items():
                print(f"    {hk}: {hv}")
            body = (
                r["body"]
                if isinstance(r["body"], str)
                else json.dumps(r["body"], ensure_ascii=False)
            )
            print("    " + body.rstrip("\n").replace("\n", "\n    "))
    return 1 if failed else 0


def cmd_integrations(args: argparse.Namespace) -> int:
    """Print the catalog of integration types (all, or one)."""
    from gateway.integrations import catalog
    from gateway.integrations.base import all_types, get_type

    types = all_types()
    if args.type:
        one = get_type(args.type)
        if one is None:
            names = ", ".join(t.name for t in types)
            print(f"error: no integration type {args.type!r}; known: {names}", file=sys.stderr)
            return 1
        types = [one]
    if args.json:
        print_json([catalog.type_json(t) for t in types])
    elif args.markdown:
        sys.stdout.write(catalog.markdown(types))
    else:
        print("\n\n".join(catalog.text(t) for t in types))
    return 0


def add_parsers(sub: SubParsers) -> None:
    """``gateway check``, ``gateway preview`` and ``gateway integrations``."""
    check = sub.add_parser(
        "check", help="validate every mapping file", description=cmd_check.__doc__
    )
    check.add_argument(
        "dir", nargs="?", metavar="DIR", help="mappings directory [GATEWAY_MAPPINGS]"
    )
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=cmd_check)
    add_settings_flags(check, ["mappings"])

    prev = sub.add_parser(
        "preview",
        help="dry-run a record through a group's mapping",
        description=cmd_preview.__doc__,
    )
    prev.add_argument("--group", required=True, help="the group key")
    prev.add_argument("--data", required=True, help="the record's data as a JSON object")
    prev.add_argument("--json", action="store_true", help="print JSON")
    add_settings_flags(prev, ["mappings"])
    prev.set_defaults(func=cmd_preview)

    integ = sub.add_parser(
        "integrations",
        help="print the catalog of integration types",
        description=cmd_integrations.__doc__,
    )
    integ.add_argument("type", nargs="?", metavar="TYPE", help="only this type")
    fmt = integ.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument(
        "--markdown", action="store_true", help="print Markdown (docs/integrations.md)"
    )
    integ.set_defaults(func=cmd_integrations)
