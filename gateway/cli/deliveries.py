"""``gateway deliveries list|replay`` and ``gateway status``: clients of a running gateway's
admin API (:mod:`gateway.cli.adminclient`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from gateway.cli.adminclient import (
    AdminClient,
    CliFailure,
    add_admin_flags,
    admin_command,
)
from gateway.cli.common import print_json
from gateway.cli.table import age, cut, table

if TYPE_CHECKING:
    from gateway.cli.common import SubParsers


def _deliveries_list(args: argparse.Namespace, api: AdminClient) -> int:
    """List deliveries, oldest first, following the pages until --limit or the end."""
    if args.limit < 0:
        raise CliFailure(2, "error: --limit must be 0 (no limit) or more")
    if not 1 <= args.page_size <= 1000:
        raise CliFailure(2, "error: --page-size must be from 1 to 1000")
    items, cursor = api.pages(
        "/admin/v1/deliveries",
        {
            "state": args.state,
            "group": args.group,
            "integration": args.integration,
            "created_after": args.created_after,
            "created_before": args.created_before,
        },
        "deliveries",
        cursor=args.cursor,
        limit=args.limit,
        page_size=args.page_size,
    )
    if args.json:
        print_json({"deliveries": items, "next_cursor": cursor})
        return 0
    if not items:
        print("no deliveries match")
        return 0
    table(
        ["ID", "STATE", "GROUP", "INTEGRATION", "ATTEMPTS", "CREATED", "LAST ERROR"],
        [
            [
                d["id"],
                d["state"],
                d["group_key"],
                d["integration"],
                str(d["attempts"]),
                d["created_at"] or "-",
                cut(d["last_error"], 70),
            ]
            for d in items
        ],
    )
    print(f"\n{len(items)} deliver{'y' if len(items) == 1 else 'ies'}")
    if cursor is not None:
        print(f"more match: go on with --cursor {cursor}")
    return 0


def _deliveries_replay(args: argparse.Namespace, api: AdminClient) -> int:
    """Put dead (or, with --state delivered, delivered) deliveries back to pending: they are
    sent again at once, through the mapping live now. By --id, or by a filter."""
    filters = {
        "state": args.state,
        "group": args.group,
        "integration": args.integration,
        "created_after": args.created_after,
        "created_before": args.created_before,
    }
    given = {k: v for k, v in filters.items() if v is not None}
    if args.id and given:
        raise CliFailure(2, "error: give --id, or filter options (--state, --group, ...), not both")
    if not args.id and not given:
        raise CliFailure(
            2,
            "error: say what to replay: --id ID (repeatable), or a filter such as "
            "--state dead (every dead delivery), --group G, --integration I",
        )
    body: dict[str, Any] = {"ids": args.id} if args.id else {"filter": given}
    if args.limit is not None:
        body["limit"] = args.limit
    answer = api.call("POST", "/admin/v1/deliveries/replay", body)
    if args.json:
        print_json(answer)
        return 0
    n = answer["replayed"]
    if not n:
        print("nothing replayed: no dead or delivered delivery matched")
        return 0
    print(f"replayed {n} deliver{'y' if n == 1 else 'ies'} (pending again, due now):")
    for did in answer["ids"]:
        print(f"  {did}")
    if not args.id and n == (args.limit or 10000):
        print("the limit was reached: run the command again for the rest")
    return 0


def _blocked_keys(lanes: list[dict[str, Any]]) -> None:
    """Per-key ordering: the keys a dead record holds (``ordering_on_dead: block``)."""
    rows = [
        [lane["group_key"], lane["integration"], cut(b["ordering_key"], 40), b["record_id"],
         str(b["waiting"]), b["since"] or "-"]
        for lane in lanes
        for b in lane.get("blocked_keys") or []
    ]  # fmt: skip
    if rows:
        print("\nblocked keys (a dead record holds them; replay it to go on):")
        table(["GROUP", "INTEGRATION", "KEY", "OLDEST DEAD RECORD", "WAITING", "SINCE"], rows)


def _status(args: argparse.Namespace, api: AdminClient) -> int:
    """Every lane (group, integration) at a glance: breaker, pause, backlog, oldest pending
    delivery, dead deliveries, last error."""
    answer = api.call("GET", "/admin/v1/lanes")
    if args.json:
        print_json(answer)
        return 0
    lanes = answer["lanes"]
    if not lanes:
        print("no lanes: no group's mapping has an integration, and nothing is pending or dead")
        return 0
    rows = []
    for lane in lanes:
        name = lane["integration"]
        if not lane["in_mapping"]:
            name += " (not in mapping)"
        elif lane["enabled"] is False:
            name += " (disabled)"
        breaker = lane["breaker"]
        if lane.get("breaker_retry_in"):
            breaker += f" ({age(lane['breaker_retry_in'])})"
        backlog = lane["backlog"]
        rows.append(
            [
                lane["group_key"],
                name,
                breaker,
                "yes" if lane["paused"] else "no",
                str(backlog["pending"]),
                age(backlog["oldest_pending_age"]),
                str(backlog["dead"]),
                cut(lane["last_error"], 60),
            ]
        )
    table(
        ["GROUP", "INTEGRATION", "BREAKER", "PAUSED", "BACKLOG", "OLDEST", "DEAD", "LAST ERROR"],
        rows,
    )
    _blocked_keys(lanes)
    if not answer.get("delivery_engine", True):
        print(
            "\nnote: this gateway process does not run the delivery engine (GATEWAY_DELIVERY "
            "is off): breaker, queue and last error come from the processes that do, not shown"
        )
    return 0


cmd_deliveries_list = admin_command(_deliveries_list)
cmd_deliveries_replay = admin_command(_deliveries_replay)
cmd_status = admin_command(_status)


def add_parsers(sub: SubParsers) -> None:
    """``gateway deliveries list|replay`` and ``gateway status``."""
    dl = sub.add_parser(
        "deliveries", help="list and replay deliveries (through a running gateway's admin API)"
    )
    dsub = dl.add_subparsers(dest="deliveries_command", required=True, metavar="ACTION")
    dlist = dsub.add_parser(
        "list", help="list deliveries, oldest first", description=_deliveries_list.__doc__
    )
    dlist.add_argument(
        "--state", choices=["pending", "delivered", "dead"], help="only deliveries in this state"
    )
    dlist.add_argument("--limit", type=int, default=1000, help="at most N (0: all; default 1000)")
    dlist.add_argument("--cursor", help="go on from a cursor an earlier listing printed")
    dlist.add_argument("--page-size", type=int, default=500, help=argparse.SUPPRESS)
    dlist.set_defaults(func=cmd_deliveries_list)
    replay = dsub.add_parser(
        "replay",
        help="send dead (or delivered) deliveries again",
        description=_deliveries_replay.__doc__,
    )
    replay.add_argument("--id", action="append", metavar="ID", help="a delivery id (repeatable)")
    replay.add_argument(
        "--state",
        choices=["dead", "delivered"],
        help="replay every delivery in this state that the other filters match",
    )
    replay.add_argument("--limit", type=int, help="at most N by a filter (default and most: 10000)")
    replay.set_defaults(func=cmd_deliveries_replay)
    for p in (dlist, replay):
        p.add_argument("--group", help="only this group")
        p.add_argument("--integration", help="only this integration (name in the mapping)")
        p.add_argument("--created-after", metavar="TIME", help="ISO 8601, e.g. 2025-05-01T12:00Z")
        p.add_argument("--created-before", metavar="TIME", help="ISO 8601")
        p.add_argument("--json", action="store_true", help="print JSON")
        add_admin_flags(p)

    status = sub.add_parser(
        "status", help="every lane at a glance (a running gateway)", description=_status.__doc__
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    add_admin_flags(status)
    status.set_defaults(func=cmd_status)
