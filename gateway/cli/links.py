"""``gateway links``: what integrations called the records' subjects (a licence id for an
e-mail), through a running gateway's admin API (:mod:`gateway.cli.adminclient`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from gateway.cli.adminclient import (
    AdminClient,
    CliFailure,
    add_admin_flags,
    admin_command,
)
from gateway.cli.common import print_json
from gateway.cli.table import table

if TYPE_CHECKING:
    from gateway.cli.common import SubParsers


def _links(args: argparse.Namespace, api: AdminClient) -> int:
    """List links (group, integration, link key -> external id), following the pages until
    --limit or the end."""
    if args.limit < 0:
        raise CliFailure(2, "error: --limit must be 0 (no limit) or more")
    items, cursor = api.pages(
        "/admin/v1/links",
        {"group": args.group, "integration": args.integration, "key": args.key},
        "links",
        cursor=args.cursor,
        limit=args.limit,
    )
    if args.json:
        print_json({"links": items, "next_cursor": cursor})
        return 0
    if not items:
        print("no links match")
        return 0
    table(
        ["GROUP", "INTEGRATION", "KEY", "EXTERNAL ID", "UPDATED", "BY DELIVERY"],
        [
            [
                x["group_key"],
                x["integration"],
                x["link_key"],
                x["external_id"],
                x["updated_at"] or "-",
                x["delivery_id"] or "-",
            ]
            for x in items
        ],
    )
    print(f"\n{len(items)} link{'' if len(items) == 1 else 's'}")
    if cursor is not None:
        print(f"more match: go on with --cursor {cursor}")
    return 0


cmd_links = admin_command(_links)


def add_parsers(sub: SubParsers) -> None:
    """``gateway links``."""
    p = sub.add_parser(
        "links",
        help="list links: the ids integrations gave records (through a running gateway)",
        description=_links.__doc__,
    )
    p.add_argument("--group", help="only this group")
    p.add_argument("--integration", help="only this integration (name in the mapping)")
    p.add_argument("--key", help="only this link key (e.g. an e-mail, lower-cased)")
    p.add_argument("--limit", type=int, default=1000, help="at most N (0: all; default 1000)")
    p.add_argument("--cursor", help="go on from a cursor an earlier listing printed")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_admin_flags(p)
    p.set_defaults(func=cmd_links)
