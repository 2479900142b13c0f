"""``gateway serve``: one process, or ``--workers N`` under a parent (:mod:`gateway.workers`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from typing import TYPE_CHECKING

from gateway.cli.common import ENV_ONLY, StoreSession, add_settings_flags, settings_of
from gateway.config import Settings

if TYPE_CHECKING:
    from gateway.cli.common import SubParsers

#: The record the bootstrap key's curl command sends (the demo group's mapping expects it).
DEMO_RECORD = {"epost": "john.doe@example.com", "namn": "John Doe", "some_tags": ["TAG1", "TAG2"]}


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM or SIGINT; pending commits finish before it exits. With
    --workers N, N processes share the port under this one, which restarts any that dies."""
    from gateway import workers
    from gateway.app import create_app, serve
    from gateway.store.base import StoreError

    settings = settings_of(args)
    worker = workers.current()
    if worker is None and settings.workers > 1:
        return _serve_workers(args, settings)
    if worker is not None:
        workers.setup_process(worker)
        settings = workers.worker_settings(settings, worker.number)
    elif args.bootstrap_key:
        asyncio.run(_bootstrap_key(settings, args.bootstrap_key))
    app = create_app(settings)
    if worker is not None:
        workers.attach(app, worker)
    loop = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # uvloop is optional: plain asyncio works, only slower
        pass
    try:
        serve(
            app,
            host=settings.host,
            port=settings.port,
            announce=(
                workers.ready_notifier(worker)
                if worker is not None
                else lambda line: print(line, file=sys.stderr, flush=True)
            ),
            loop=loop,
            # A worker shares the port with the others, and handles stop signals itself.
            reuse_port=True if worker is not None else None,
            handle_signals=worker is None,
        )
    except StoreError as exc:
        # What had opened is closed by now (serve runs the clean-up); the URL is not printed:
        # it may carry a password.
        print(f"error: the store: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve_workers(args: argparse.Namespace, settings: Settings) -> int:
    """The parent of ``serve --workers N``: checks, the once-only preparation, then the
    supervisor until every worker has exited."""
    from gateway import workers
    from gateway.store.base import StoreError

    try:
        workers.check(settings)
        asyncio.run(workers.prepare(settings))
    except workers.WorkersError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StoreError, ValueError) as exc:
        print(f"error: the store: {exc}", file=sys.stderr)
        return 1
    if args.bootstrap_key:
        asyncio.run(_bootstrap_key(settings, args.bootstrap_key))
    # The workers get the flags given here (never a secret: those are variables only, which
    # they inherit); not --workers (they are workers) nor --bootstrap-key (done above).
    flags = [
        f"--{name.replace('_', '-')}={value}"
        for name in Settings.model_fields
        if name != "workers" and (value := getattr(args, name, None)) is not None
    ]
    return workers.Supervisor(settings, flags).run()


async def _bootstrap_key(settings: Settings, group: str) -> None:
    """On a store with no keys yet, make one for ``group`` and show how to use it."""
    from gateway.auth.keys import create_key

    async with StoreSession(settings) as (store, box):
        if await store.list_access_keys():
            return
        key = await create_key(store, box, [group], name="bootstrap")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}/v1/records"
    body = json.dumps({"group_key": group, "data": DEMO_RECORD}, ensure_ascii=False)
    curl = (
        f"curl --aws-sigv4 {shlex.quote(f'aws:amz:{settings.region}:{settings.service}')} "
        f"--user {shlex.quote(f'{key.access_key_id}:{key.secret_access_key}')} \\\n"
        f"  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(body)} \\\n  {url}"
    )
    print(
        f"\nNo access keys yet: created one for group '{group}'. The secret is shown only now.\n"
        f"  access key id:     {key.access_key_id}\n"
        f"  secret access key: {key.secret_access_key}\n\n"
        f"Send the demo record:\n\n{curl}\n",
        file=sys.stderr,
        flush=True,
    )


def add_parsers(sub: SubParsers) -> None:
    """``gateway serve``."""
    serve = sub.add_parser("serve", help="run the gateway", description=cmd_serve.__doc__)
    add_settings_flags(serve, [n for n in Settings.model_fields if n not in ENV_ONLY])
    serve.add_argument(
        "--bootstrap-key",
        metavar="GROUP",
        default=None,
        help="if the store has no access keys yet, create one for GROUP and print it with a "
        "ready-to-paste curl command (the quick start uses 'demo')",
    )
    serve.set_defaults(func=cmd_serve)
