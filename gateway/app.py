"""The aiohttp application: routes, middlewares, its resources, and serving it.

:func:`create_app` builds the application. Each resource it holds is one cleanup context,
entered in this order on start-up and exited in reverse on clean-up: the store, the master key
check, the mappings (first load and watcher), the delivery engine, housekeeping, the SIGHUP
handler. When one fails to start, aiohttp exits those that had started, provided the
application's clean-up runs: :func:`serve` runs it after a failed start-up too, which
``web.run_app`` does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_runner import GracefulExit

from gateway import logs
from gateway.admin import api as admin
from gateway.appkeys import (
    ENGINE,
    INGEST,
    MAPPINGS,
    METRICS,
    RELOADER,
    SECRET_BOX,
    SETTINGS,
    STORE,
)
from gateway.auth.keys import KeyRing, SecretBox, load_master_key
from gateway.auth.sigv4 import SigV4Verifier
from gateway.config import Settings
from gateway.console import app as console
from gateway.delivery.engine import DeliveryEngine, EngineSettings
from gateway.errors import ApiError, json_response
from gateway.ingest import api, protocol, webhooks
from gateway.ingest.body import BodyBudget
from gateway.ingest.ratelimit import KeyedLimiter
from gateway.ingest.validate import Limits
from gateway.integrations import destinations
from gateway.mapping.loader import MappingRegistry
from gateway.mapping.webhook_sources import SourceRegistry, SourceReloader
from gateway.metrics import Metrics, calls_both, metrics_handler
from gateway.store import open_store
from gateway.store.base import Store, StoreError, StoreUnavailable

# The application's keys live in gateway.appkeys; these names stay importable from here.
__all__ = [
    "ENGINE",
    "INGEST",
    "MAPPINGS",
    "METRICS",
    "RELOADER",
    "SETTINGS",
    "STORE",
    "create_app",
    "openapi_document",
    "serve",
]

#: Seconds ``serve`` gives requests in flight once a stop signal came.
SHUTDOWN_TIMEOUT = 10.0

# aiohttp's own HTTP errors, as envelope codes.
_HTTP_CODES = {
    400: "INVALID_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
}


_PROBES = frozenset({"/healthz", "/readyz"})


@web.middleware
async def envelope_and_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error in the documented envelope; log one JSON line per request."""
    started = time.perf_counter()
    code = None
    info = request[logs.REQUEST_INFO] = logs.RequestInfo()
    try:
        response = await handler(request)
    except ApiError as err:
        response, code = err.response(), err.code
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "HTTP_ERROR")
        message = exc.reason if exc.status != 413 else exc.text or exc.reason
        response = ApiError(exc.status, code, message).response()
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except asyncio.CancelledError:
        raise
    except StoreUnavailable as exc:
        # Raised outside a handler's own store call (the key ring's or the idempotency lookup
        # while the database is down): the producer must retry, as for a failed commit.
        code = "STORE_UNAVAILABLE"
        response = ApiError(
            503, code, f"The store is unavailable: {exc}", headers={"Retry-After": "5"}
        ).response()
    except Exception as exc:
        logs.log(
            "internal_error",
            "error",
            path=request.path,
            error=repr(exc),
            traceback=traceback.format_exc(limit=20),
        )
        code = "INTERNAL_ERROR"
        response = ApiError(500, code, "internal error; the event is logged").response()
    if code is not None and request.path.startswith("/v1/"):
        metrics = request.config_dict.get(METRICS)
        if metrics is not None:
            metrics.request_refused(code)
    if info.headers:
        response.headers.update(info.headers)
    # Probes (a container's HEALTHCHECK every few seconds) would drown the request log.
    quiet = request.path in _PROBES and response.status < 400
    logs.log(
        "request",
        "debug" if quiet else "info",
        method=request.method,
        path=request.path,
        status=response.status,
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
        access_key_id=info.access_key_id,
        group=info.group_key,
        record_id=info.record_id,
        records=info.records,
        code=code,
    )
    return response


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the store answers and the mappings directory is readable."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        await request.app[STORE].ping()
        checks["store"] = {"status": "ok"}
    except StoreError as exc:
        checks["store"] = {"status": "failing", "detail": str(exc)}
    mappings = request.app[MAPPINGS]
    if mappings.error or not mappings.directory.is_dir():
        detail = mappings.error or f"mappings directory {mappings.directory} is missing"
        checks["mappings"] = {"status": "failing", "detail": detail}
    else:
        checks["mappings"] = {"status": "ok", "detail": f"{len(mappings)} groups"}
        problems = mappings.all_problems() + request.app[webhooks.SOURCES].all_problems()
        if problems:
            # A bad file leaves its previous version live: ready, but the operator must see it.
            checks["mappings"]["errors"] = [str(p) for p in problems]
    ready = all(c["status"] == "ok" for c in checks.values())
    return json_response(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status=200 if ready else 503,
    )


def openapi_document() -> bytes:
    """The OpenAPI 3.1 document of the producer API, as shipped in the package."""
    return resources.files("gateway").joinpath("openapi.json").read_bytes()


async def openapi(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return web.Response(body=openapi_document(), content_type="application/json")


def create_app(settings: Settings, store: Store | None = None) -> web.Application:
    """Build the application. ``store`` defaults to the one ``settings`` names, opened on start."""
    logs.set_level(settings.log_level)
    destinations.configure(settings.destinations_allow, settings.destinations_deny)
    the_store = store or open_store(
        settings.store_url,
        synchronous=settings.sqlite_synchronous,
        max_pending_writes=settings.max_pending_writes,
    )
    master = load_master_key(
        settings.data_dir, settings.master_key.get_secret_value() if settings.master_key else None
    )
    mappings = MappingRegistry(settings.mappings)
    app = web.Application(
        middlewares=[envelope_and_log],
        client_max_size=max(settings.max_body_bytes, settings.max_batch_bytes),
        handler_args=protocol.HANDLER_ARGS,
    )
    protocol.install(app)
    app[SETTINGS] = settings
    app[STORE] = the_store
    app[MAPPINGS] = mappings
    sources = SourceRegistry(mappings)  # webhook sources: <mappings>/sources/*.yaml
    app[RELOADER] = SourceReloader(mappings, sources)
    app[SECRET_BOX] = SecretBox(master)
    webhooks.add_routes(app, sources)
    metrics = Metrics(the_store, mappings)
    app[METRICS] = metrics
    engine = DeliveryEngine(
        the_store,
        mappings,
        EngineSettings(
            lease_seconds=settings.delivery_lease,
            poll_interval=settings.delivery_poll_interval,
            max_in_flight=settings.delivery_max_in_flight,
        ),
        hooks=metrics.hooks,
    )
    metrics.engine = engine
    app[ENGINE] = engine
    app[INGEST] = api.Ingest(
        store=the_store,
        keys=KeyRing(the_store, app[SECRET_BOX], ttl=settings.key_cache_ttl),
        verifier=SigV4Verifier(settings.region, settings.service, clock_skew=settings.clock_skew),
        limiter=KeyedLimiter(settings.rate_limit, settings.rate_burst),
        mappings=mappings,
        limits=Limits(
            max_attributes=settings.max_attributes,
            max_key_length=settings.max_key_length,
            max_value_length=settings.max_value_length,
            max_list_items=settings.max_list_items,
        ),
        max_body_bytes=settings.max_body_bytes,
        max_batch_bytes=settings.max_batch_bytes,
        max_batch_records=settings.max_batch_records,
        budget=BodyBudget(settings.max_inflight_bytes),
        body_timeout=settings.body_timeout,
        idempotency_ttl=settings.idempotency_ttl,
        signature_ttl=2 * settings.clock_skew,
        on_commit=(
            calls_both(metrics.records_committed, engine.notify)
            if settings.delivery
            else metrics.records_committed
        ),
    )
    add_routes(app)
    if settings.console:
        console.mount(app, master)
    app.cleanup_ctx.extend(
        [
            _stopped_log,
            _store,
            _master_key_check,
            _mappings,
            _engine,
            _housekeeping_task,
            _sighup,
        ]
    )
    return app


def add_routes(app: web.Application) -> None:
    """Every route: the producer API, the admin sub-application, health, metrics, OpenAPI."""
    settings = app[SETTINGS]
    api.add_routes(app)
    admin.mount(app, settings.admin_token.get_secret_value() if settings.admin_token else None)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)  # unauthenticated: keep it off the internet
    app.router.add_get("/openapi.json", openapi)


# -- resources: one cleanup context each, in start-up order ----------------------------------


async def _stopped_log(app: web.Application) -> AsyncIterator[None]:
    # First in, last out: the final line, after everything else closed (or failed to open).
    yield
    logs.log("stopped")
    logs.flush()


async def _store(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.open()
    yield
    # Last of all: pending commits finish before the store closes, so every 202 sent is durable.
    await store.close()


async def _master_key_check(app: web.Application) -> AsyncIterator[None]:
    # A wrong master key (MasterKeyError) stops the start-up before anything is served.
    await app[INGEST].keys.check_master_key()
    yield


async def _mappings(app: web.Application) -> AsyncIterator[None]:
    reloader = app[RELOADER]
    await reloader.reload("start")
    watcher = asyncio.create_task(reloader.watch(), name="mappings-watcher")
    yield
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


async def _engine(app: web.Application) -> AsyncIterator[None]:
    if not app[SETTINGS].delivery:
        yield
        return
    engine = app[ENGINE]
    await engine.start()
    yield
    await engine.stop()


async def _housekeeping_task(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(
        _housekeeping(app[STORE], app[SETTINGS].retention), name="housekeeping"
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sighup(app: web.Application) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
        loop.add_signal_handler(signal.SIGHUP, app[RELOADER].reload_soon, "SIGHUP")
    logs.log("started", groups=len(app[MAPPINGS]))
    yield
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.remove_signal_handler(signal.SIGHUP)


# -- serving ---------------------------------------------------------------------------------


def make_runner(app: web.Application, *, handle_signals: bool) -> web.AppRunner:
    """The runner that serves ``app``: no access log (:func:`envelope_and_log` writes one line
    per request); requests in flight get :data:`SHUTDOWN_TIMEOUT` seconds after a stop."""
    return web.AppRunner(
        app, access_log=None, handle_signals=handle_signals, shutdown_timeout=SHUTDOWN_TIMEOUT
    )


def _announce(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    reuse_port: bool | None,
    handle_signals: bool,
    announce: Callable[[str], None],
) -> None:
    runner = make_runner(app, handle_signals=handle_signals)
    try:
        await runner.setup()  # the application's start-up: every cleanup context, in order
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
        await site.start()
        announce(f"======== Running on {site.name} ========\n(Press CTRL+C to quit)")
        await asyncio.Event().wait()  # until a stop signal cancels this task
    finally:
        # Also after a failed start-up: exits the contexts that had started (the store).
        await runner.cleanup()


def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    reuse_port: bool | None = None,
    handle_signals: bool = True,
    announce: Callable[[str], None] = _announce,
    loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Serve ``app`` on ``host``:``port`` until SIGTERM or SIGINT (with ``handle_signals``; a
    worker raises :class:`GracefulExit` itself), then stop gracefully.

    As ``web.run_app`` does, except that a failure during start-up runs the application's
    clean-up before it propagates, so whatever had opened is closed. ``announce`` is called
    with a line naming the address once the server listens.
    """
    loop = loop or asyncio.new_event_loop()
    main = loop.create_task(
        _serve(
            app,
            host,
            port,
            reuse_port=reuse_port,
            handle_signals=handle_signals,
            announce=announce,
        )
    )
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                # Only this task first: requests in flight, the engine and pending commits
                # finish in its clean-up while everything else still runs.
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            if rest:
                loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()


async def _housekeeping(store: Store, retention: float) -> None:
    """Periodic chores: flush logs, purge expired idempotency entries and delivered records
    past their retention (in chunks, so the writer is never held long)."""
    last_purge = 0.0
    # Every five minutes; a short retention (tests, tiny disks) is honoured closer than that.
    every = min(300.0, max(retention / 4, 1.0))
    while True:
        await asyncio.sleep(1.0)
        logs.flush()
        now = time.time()
        if now - last_purge >= every:
            last_purge = now
            try:
                removed = await store.purge_idempotency(now)
                if removed:
                    logs.log("idempotency_purged", removed=removed)
                purged = 0
                while True:
                    n = await store.purge_delivered(now - retention)
                    purged += n
                    if n == 0:
                        break
                    await asyncio.sleep(0.05)
                if purged:
                    logs.log("records_purged", removed=purged, retention_s=retention)
            except StoreError as exc:
                logs.log("purge_failed", "warning", error=str(exc))
