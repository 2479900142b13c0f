"""``gateway groups ...`` and ``gateway tokens ...``: the management API of a running gateway
(docs/admin-api.md), through :mod:`gateway.cli.adminclient`.

``gateway groups apply FILE`` onboards or updates a group from a mapping file in one command:
it creates the group when it does not exist (``--create-key`` also makes its access key) and
otherwise replaces it, naming the version it read (If-Match), so a change made meanwhile is
refused rather than overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import yaml

from gateway.cli.adminclient import AdminClient, CliFailure, add_admin_flags, admin_command
from gateway.cli.common import print_json
from gateway.cli.table import table

if TYPE_CHECKING:
    from gateway.cli.common import SubParsers

BASE = "/admin/v1"


def _g(group: str) -> str:
    return f"{BASE}/groups/{quote(group, safe='')}"


def _list(args: argparse.Namespace, api: AdminClient) -> int:
    """List every group with its version and integrations."""
    groups: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = api.call(
            "GET", f"{BASE}/groups?limit=1000" + (f"&cursor={quote(cursor)}" if cursor else "")
        )
        groups += page["groups"]
        if page["next_cursor"] in (None, cursor):
            break
        cursor = page["next_cursor"]
    if args.json:
        print_json({"groups": groups})
        return 0
    if not groups:
        print("no groups")
        return 0
    table(
        ["GROUP", "VERSION", "LIVE", "INTEGRATIONS", "PROBLEMS"],
        [
            [
                g["group_key"],
                g["version"],
                "yes" if g["live_version"] == g["version"] else (g["live_version"] or "no"),
                ", ".join(i["name"] for i in g["integrations"]) or "-",
                str(len(g["problems"])),
            ]
            for g in groups
        ],
    )
    return 0


def _show(args: argparse.Namespace, api: AdminClient) -> int:
    """Show one group: its version and content (secrets as the references the file holds)."""
    g = api.call("GET", _g(args.group))
    if args.json:
        print_json(g)
        return 0
    print(f"group {g['group_key']}: version {g['version']}, changed {g['updated_at']}")
    if g["live_version"] != g["version"]:
        print(f"live version: {g['live_version'] or 'none'}")
    for p in g["problems"]:
        print(f"problem: line {p['line']}: {p['path']}: {p['message']}")
    print(yaml.safe_dump(g["content"], sort_keys=False, allow_unicode=True), end="")
    return 0


def _created_key(answer: dict[str, Any]) -> None:
    key = answer.get("access_key")
    if key:
        print(f"access key id:     {key['access_key_id']}")
        print(f"secret access key: {key['secret_access_key']}")
        print("(the secret is shown only now: store it safely)")


def _apply(args: argparse.Namespace, api: AdminClient) -> int:
    """Create or replace a group from a mapping file (YAML). The group key is the file's
    ``group_key``, else the file name."""
    path = Path(args.file)
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CliFailure(2, f"error: cannot read {path}: {exc}") from None
    if not isinstance(content, dict):
        raise CliFailure(2, f"error: {path} is not a mapping file (a YAML mapping)")
    group = str(content.setdefault("group_key", path.stem))
    try:
        current = api.call("GET", _g(group))
    except CliFailure as failure:
        if not failure.lines or "UNKNOWN_GROUP" not in failure.lines[0]:
            raise
        current = None
    if current is None:
        answer = api.call(
            "POST", f"{BASE}/groups", {**content, "create_key": bool(args.create_key)}
        )
        action = "created"
    else:
        if args.create_key:
            raise CliFailure(2, f"error: group {group} exists; make keys with `gateway keys`")
        answer = api.call("PUT", _g(group), content, {"If-Match": f'"{current["version"]}"'})
        action = "unchanged" if answer["version"] == current["version"] else "updated"
    if args.json:
        print_json({**answer, "action": action})
        return 0
    print(f"group {group} {action}: version {answer['version']}")
    _created_key(answer)
    return 0


def _clone(args: argparse.Namespace, api: AdminClient) -> int:
    """Make a new group with the same integrations (secrets stay references)."""
    body: dict[str, Any] = {"create_key": bool(args.create_key)}
    if args.new_group:
        body["group_key"] = args.new_group
    answer = api.call("POST", _g(args.group) + "/clone", body)
    if args.json:
        print_json(answer)
        return 0
    print(f"group {answer['group_key']} created from {args.group}: version {answer['version']}")
    _created_key(answer)
    return 0


def _versions(args: argparse.Namespace, api: AdminClient) -> int:
    """List a group's versions, oldest first."""
    answer = api.call("GET", _g(args.group) + "/versions")
    if args.json:
        print_json(answer)
        return 0
    table(
        ["NUMBER", "VERSION", "WHEN", "BY", "ACTION", ""],
        [
            [
                str(v["number"]),
                v["version"],
                v["created_at"],
                v["actor"],
                v["action"],
                "current" if v["version"] == answer["current_version"] else "",
            ]
            for v in answer["versions"]
        ],
    )
    return 0


def _rollback(args: argparse.Namespace, api: AdminClient) -> int:
    """Write an old version's text back as a new version."""
    current = api.call("GET", _g(args.group))
    answer = api.call(
        "POST",
        _g(args.group) + "/rollback",
        {"version": args.version},
        {"If-Match": f'"{current["version"]}"'},
    )
    if args.json:
        print_json(answer)
        return 0
    print(f"group {args.group} rolled back to version {args.version}: now {answer['version']}")
    return 0


def _tokens_create(args: argparse.Namespace, api: AdminClient) -> int:
    """Make a scoped admin token; its secret is printed once."""
    body: dict[str, Any] = {"role": args.role}
    if args.group:
        body["groups"] = args.group
    if args.name:
        body["name"] = args.name
    answer = api.call("POST", f"{BASE}/tokens", body)
    if args.json:
        print_json(answer)
        return 0
    print(f"token id: {answer['token_id']} (role {answer['role']})")
    print(f"token:    {answer['token']}")
    print("(shown only now: store it safely)")
    return 0


def _tokens_list(args: argparse.Namespace, api: AdminClient) -> int:
    """List scoped admin tokens (never a secret)."""
    answer = api.call("GET", f"{BASE}/tokens")
    if args.json:
        print_json(answer)
        return 0
    table(
        ["ID", "ROLE", "GROUPS", "NAME", "CREATED", "REVOKED"],
        [
            [
                t["token_id"],
                t["role"],
                ", ".join(t["groups"]) if t["groups"] is not None else "(all)",
                t["name"] or "-",
                t["created_at"],
                t["revoked_at"] or "-",
            ]
            for t in answer["tokens"]
        ],
    )
    return 0


def _tokens_revoke(args: argparse.Namespace, api: AdminClient) -> int:
    """Revoke a scoped admin token now."""
    api.call("DELETE", f"{BASE}/tokens/{quote(args.token_id, safe='')}")
    if args.json:
        print_json({"revoked": args.token_id})
    else:
        print(f"token {args.token_id} revoked")
    return 0


def add_parsers(sub: SubParsers) -> None:
    """``gateway groups list|show|apply|clone|versions|rollback`` and ``gateway tokens
    create|list|revoke``."""
    gp = sub.add_parser("groups", help="groups over a running gateway's management API")
    gsub = gp.add_subparsers(dest="groups_command", required=True, metavar="ACTION")
    made = []
    p = gsub.add_parser("list", help="every group", description=_list.__doc__)
    p.set_defaults(func=admin_command(_list))
    made.append(p)
    p = gsub.add_parser("show", help="one group", description=_show.__doc__)
    p.add_argument("group")
    p.set_defaults(func=admin_command(_show))
    made.append(p)
    p = gsub.add_parser(
        "apply", help="create or replace a group from a file", description=_apply.__doc__
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--create-key", action="store_true", help="on create, also make an access key")
    p.set_defaults(func=admin_command(_apply))
    made.append(p)
    p = gsub.add_parser(
        "clone", help="a new group with the same integrations", description=_clone.__doc__
    )
    p.add_argument("group")
    p.add_argument(
        "--as", dest="new_group", metavar="NEW", help="the new group key (default: generated)"
    )
    p.add_argument("--create-key", action="store_true", help="also make an access key")
    p.set_defaults(func=admin_command(_clone))
    made.append(p)
    p = gsub.add_parser("versions", help="a group's versions", description=_versions.__doc__)
    p.add_argument("group")
    p.set_defaults(func=admin_command(_versions))
    made.append(p)
    p = gsub.add_parser("rollback", help="write an old version back", description=_rollback.__doc__)
    p.add_argument("group")
    p.add_argument("version", type=int, help="the version NUMBER (from `gateway groups versions`)")
    p.set_defaults(func=admin_command(_rollback))
    made.append(p)

    tp = sub.add_parser("tokens", help="scoped admin tokens of a running gateway")
    tsub = tp.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    p = tsub.add_parser("create", help="make a token", description=_tokens_create.__doc__)
    p.add_argument("--role", required=True, choices=["read", "write", "admin"])
    p.add_argument("--group", action="append", metavar="G", help="limit to this group (repeatable)")
    p.add_argument("--name", help="what the token is for")
    p.set_defaults(func=admin_command(_tokens_create))
    made.append(p)
    p = tsub.add_parser("list", help="every token", description=_tokens_list.__doc__)
    p.set_defaults(func=admin_command(_tokens_list))
    made.append(p)
    p = tsub.add_parser("revoke", help="revoke a token", description=_tokens_revoke.__doc__)
    p.add_argument("token_id")
    p.set_defaults(func=admin_command(_tokens_revoke))
    made.append(p)
    for p in made:
        p.add_argument("--json", action="store_true", help="print JSON")
        add_admin_flags(p)
