"""The aiohttp application: routes, middlewares, startup and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources

from aiohttp import web

from gateway import logs
from gateway.admin import api as admin
from gateway.auth.keys import KeyRing, MasterKeyError, SecretBox, load_master_key
from gateway.auth.sigv4 import SigV4Verifier
from gateway.config import Settings
from gateway.delivery.engine import ENGINE, DeliveryEngine, EngineSettings
from gateway.errors import ApiError, json_response
from gateway.ingest import api
from gateway.ingest.ratelimit import KeyedLimiter
from gateway.ingest.validate import Limits
from gateway.mapping.loader import MappingRegistry
from gateway.mapping.watch import MappingReloader
from gateway.metrics import METRICS, Metrics, calls_both, metrics_handler
from gateway.store import open_store
from gateway.store.base import Store, StoreError, StoreUnavailable

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
MAPPINGS = web.AppKey("mappings", MappingRegistry)
RELOADER = web.AppKey("reloader", MappingReloader)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own HTTP errors, as envelope codes.
_HTTP_CODES = {
    400: "INVALID_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
}


@web.middleware
async def envelope_and_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error in the documented envelope; log one JSON line per request."""
    started = time.perf_counter()
    code = None
    try:
        response = await handler(request)
    except ApiError as err:
        response, code = err.response(), err.code
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "HTTP_ERROR")
        message = exc.reason if exc.status != 413 else exc.text or exc.reason
        err = ApiError(exc.status, code, message)
        response = err.response()
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
        metrics = request.app.get(METRICS)
        if metrics is not None:
            metrics.request_refused(code)
    info = logs.info(request)
    if info.headers:
        response.headers.update(info.headers)
    logs.log(
        "request",
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
    checks: dict[str, dict[str, str]] = {}
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
        problems = mappings.all_problems()
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
    )
    app[SETTINGS] = settings
    app[STORE] = the_store
    app[MAPPINGS] = mappings
    app[RELOADER] = MappingReloader(mappings)
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
    app[api.INGEST] = api.Ingest(
        store=the_store,
        keys=KeyRing(the_store, SecretBox(master), ttl=settings.key_cache_ttl),
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
        idempotency_ttl=settings.idempotency_ttl,
        signature_ttl=2 * settings.clock_skew,
        on_commit=(
            calls_both(metrics.records_committed, engine.notify)
            if settings.delivery
            else metrics.records_committed
        ),
    )
    api.add_routes(app)
    admin.add_routes(app, settings.admin_token.get_secret_value() if settings.admin_token else None)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)  # unauthenticated: keep it off the internet
    app.router.add_get("/openapi.json", openapi)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.open()
    try:
        await app[api.INGEST].keys.check_master_key()
    except MasterKeyError:
        await store.close()
        raise
    reloader = app[RELOADER]
    await reloader.reload("start")
    settings = app[SETTINGS]
    engine = app[ENGINE]
    if settings.delivery:
        await engine.start()
    housekeeping = asyncio.create_task(_housekeeping(store, settings.retention))
    watcher = asyncio.create_task(reloader.watch())
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
        loop.add_signal_handler(signal.SIGHUP, reloader.reload_soon, "SIGHUP")
    logs.log("started", groups=len(app[MAPPINGS]))
    yield
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.remove_signal_handler(signal.SIGHUP)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    housekeeping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await housekeeping
    if settings.delivery:
        await engine.stop()
    # Pending commits finish before the store closes: every 202 sent is durable.
    await store.close()
    logs.log("stopped")
    logs.flush()


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
