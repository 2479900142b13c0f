"""The baseline: a bare aiohttp handler that reads the body and answers 202, nothing else.

Run the same way as the gateway (uvloop, no access log), so the ratio measures the gateway's
own work: SigV4 verification, validation, idempotency and the durable commit.
"""

from __future__ import annotations

import os
import sys

import orjson
import uvloop
from aiohttp import web


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(
        body=orjson.dumps({"id": "rec_x", "status": "accepted", "integrations": []}),
        status=202,
        content_type="application/json",
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/records", accept)
    app.router.add_post("/v1/records/batch", accept)
    app.router.add_get("/healthz", healthz)  # compare.py starts it like a gateway
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1] if sys.argv[1:2] != ["serve"] else os.environ["GATEWAY_PORT"]),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
