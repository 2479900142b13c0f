"""``gateway serve`` with the ingest path cut short at a chosen stage, for the cost ladder.

    python bench/stage_server.py STAGE serve

Stages (each includes everything before it):
- ``respond``: the gateway's app and middleware, the handler answers 202 at once;
- ``auth``: + read body, SigV4 verification, key lookup, rate limit;
- ``validate``: + JSON parsing, idempotency keys, flat-data validation, fan-out;
- ``full``: + the durable group commit (the real gateway).
Only for benchmarks: it patches the handler in this process, never the installed package.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from gateway import cli
from gateway.ingest import api
from gateway.ingest.body import Held
from gateway.store.base import IngestResult

ACCEPTED = b'{"id":"rec_x","status":"accepted","integrations":[]}'


def main() -> int:
    stage = sys.argv[1]
    if stage == "respond":

        async def handler(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=ACCEPTED, status=202, content_type="application/json")

        api.post_record = handler
    elif stage == "auth":

        async def handler(request: web.Request) -> web.Response:
            ing = request.app[api.INGEST]
            held = Held(ing.budget)
            try:
                await api._admit(ing, request, ing.max_body_bytes, held)
            finally:
                held.release()
            return web.Response(body=ACCEPTED, status=202, content_type="application/json")

        api.post_record = handler
    elif stage == "validate":

        async def commit_ingest(self, write):  # type: ignore[no-untyped-def]
            return IngestResult(committed=True)

        from gateway.store.sqlite import SQLiteStore

        SQLiteStore.commit_ingest = commit_ingest  # type: ignore[method-assign]
    elif stage != "full":
        raise SystemExit(f"unknown stage {stage!r}")
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
