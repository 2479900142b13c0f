"""``gateway keys create|list|revoke``: producers' access keys, straight in the store."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

from gateway.cli.common import (
    STORE_OPTIONS,
    StoreSession,
    add_settings_flags,
    print_json,
    settings_of,
)
from gateway.cli.table import utc

if TYPE_CHECKING:
    from gateway.cli.common import SubParsers


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create an access key; print its id and secret once."""
    from gateway.auth.keys import create_key

    settings = settings_of(args)
    missing = [g for g in args.group if not (settings.mappings / f"{g}.yaml").exists()]
    for g in missing:
        print(
            f"warning: no mapping file {settings.mappings / (g + '.yaml')}: records for group "
            f"'{g}' are refused until it exists",
            file=sys.stderr,
        )

    async def run() -> Any:
        async with StoreSession(settings) as (store, box):
            return await create_key(
                store, box, args.group, args.name, args.rate_limit, args.rate_burst
            )

    key = asyncio.run(run())
    if args.json:
        print_json(
            {
                "access_key_id": key.access_key_id,
                "secret_access_key": key.secret_access_key,
                "groups": key.groups,
                "name": key.name,
            }
        )
    else:
        print(f"access key id:     {key.access_key_id}")
        print(f"secret access key: {key.secret_access_key}")
        print(f"groups:            {', '.join(key.groups)}")
        if key.name:
            print(f"name:              {key.name}")
        print("The secret is shown only now; store it safely.")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List access keys, never their secrets."""
    settings = settings_of(args)

    async def run() -> list[Any]:
        async with StoreSession(settings) as (store, _):
            return await store.list_access_keys()

    rows = [
        {
            "access_key_id": k.access_key_id,
            "name": k.name,
            "groups": k.groups,
            "created_at": utc(k.created_at),
            "revoked_at": utc(k.revoked_at),
            # A rotated key (admin API) stays valid until its revoked_at.
            "state": (
                "active"
                if k.revoked_at is None
                else "expiring"
                if k.revoked_at > time.time()
                else "revoked"
            ),
            "rate_limit": k.rate_limit,
            "rate_burst": k.rate_burst,
        }
        for k in asyncio.run(run())
    ]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no access keys; create one with: gateway keys create --group GROUP")
        return 0
    print(f"{'ACCESS KEY ID':<22}{'STATE':<10}{'CREATED':<22}{'NAME':<20}GROUPS")
    for r in rows:
        state = r["state"]
        print(
            f"{r['access_key_id']:<22}{state:<10}{r['created_at']:<22}{(r['name'] or '-'):<20}"
            f"{','.join(r['groups'])}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke a key; a running server refuses it within GATEWAY_KEY_CACHE_TTL seconds."""
    settings = settings_of(args)

    async def run() -> bool:
        async with StoreSession(settings) as (store, _):
            return await store.revoke_access_key(args.access_key_id, time.time())

    if not asyncio.run(run()):
        print(f"error: no access key {args.access_key_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.access_key_id}")
    return 0


def add_parsers(sub: SubParsers) -> None:
    """``gateway keys create|list|revoke``."""
    keys = sub.add_parser("keys", help="manage producers' access keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = ksub.add_parser("create", help="create a key (the secret is printed once)")
    create.add_argument(
        "--group", action="append", required=True, help="a group the key may send to (repeatable)"
    )
    create.add_argument("--name", help="a label for the key")
    create.add_argument(
        "--rate-limit", type=float, help="requests per second (default: the server's)"
    )
    create.add_argument("--rate-burst", type=int, help="token bucket size (default: the server's)")
    create.add_argument("--json", action="store_true", help="print JSON")
    create.set_defaults(func=cmd_keys_create)
    lst = ksub.add_parser("list", help="list keys (never their secrets)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=cmd_keys_list)
    revoke = ksub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("access_key_id", metavar="ACCESS_KEY_ID")
    revoke.set_defaults(func=cmd_keys_revoke)
    for p in (create, lst, revoke):
        add_settings_flags(p, STORE_OPTIONS)
