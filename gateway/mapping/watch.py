"""Reloading mapping files while the gateway runs: on file changes, SIGHUP and admin request.

Every trigger goes through :meth:`MappingReloader.reload`, one reload at a time, run in a
thread so compiling many files never blocks the event loop. File changes are seen with
watchfiles (inotify on Linux); a slow poll backs it up where events do not arrive (some
network file systems) or the directory is missing for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from gateway import logs
from gateway.mapping.loader import MappingRegistry, ReloadResult

POLL_SECONDS = 30.0
RETRY_SECONDS = 2.0


def log_reload(result: ReloadResult, reason: str) -> None:
    """Log what a reload changed and every error (never a secret: only file problems).

    A reload someone asked for (SIGHUP, the admin API) is logged even when nothing changed.
    """
    if result.loaded or result.removed or reason in ("SIGHUP", "admin", "start"):
        logs.log(
            "mappings_loaded",
            reason=reason,
            loaded=result.loaded,
            removed=result.removed,
            seconds=round(result.seconds, 3),
        )
    for file, problems in result.failed.items():
        logs.log("mapping_invalid", "warning", file=file, errors=[str(p) for p in problems])


class MappingReloader:
    """Serialises reloads of one registry and watches its directory."""

    def __init__(self, registry: MappingRegistry) -> None:
        self.registry = registry
        self._lock = asyncio.Lock()
        # Called after every reload (the admin API records hand edits as versions).
        self.listeners: list[Callable[[ReloadResult, str], Awaitable[None]]] = []

    async def reload(self, reason: str) -> ReloadResult:
        """Reload now (after any reload already running) and log the outcome."""
        async with self._lock:
            result = await asyncio.to_thread(self.registry.reload)
        log_reload(result, reason)
        for listener in self.listeners:
            try:
                await listener(result, reason)
            except Exception as exc:  # a listener's failure never stops reloads
                logs.log("reload_listener_failed", "warning", error=repr(exc))
        return result

    def reload_soon(self, reason: str) -> None:
        """Schedule a reload from a callback (a signal handler)."""
        task = asyncio.ensure_future(self.reload(reason))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def watch(self) -> None:
        """Reload on every change in the directory until cancelled."""
        from watchfiles import awatch

        poller = asyncio.create_task(self._poll())
        try:
            while True:
                try:
                    async for _ in awatch(self.registry.directory, debounce=200, step=50):
                        await self.reload("watch")
                except (OSError, RuntimeError) as exc:  # directory missing or unwatchable
                    logs.log("mappings_watch_failed", "warning", error=str(exc))
                await asyncio.sleep(RETRY_SECONDS)
                await self.reload("retry")
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            await self.reload("poll")
