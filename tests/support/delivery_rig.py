"""A store, mappings and a delivery engine in process, records written straight to the store.

Tests of the engine use this instead of the HTTP ingest path: they choose each record's
integrations and see every delivery's state.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.delivery.engine import DeliveryEngine, EngineSettings
from gateway.ids import delivery_id, record_id
from gateway.mapping.loader import MappingRegistry
from gateway.store import open_store
from gateway.store.base import Delivery, DeliveryState, IngestWrite, NewRecord, Store

FAST_RETRY = "retry: {base: 20ms, cap: 100ms, max_attempts: 30}"


def http_entry(name: str, url: str, options: str = FAST_RETRY, extra: str = "") -> str:
    """A mapping entry of type http sending ``email`` and ``n`` as a JSON object."""
    return textwrap.dedent(
        f"""\
        - name: {name}
          type: http
          connection:
            url: "{url}"
        {textwrap.indent(extra, "    ")}
          fields:
            email: email
            n: n
          options: {{{options}}}
        """
    )


class Rig:
    """Build with ``await Rig.create(tmp_path, entries)``; ``close()`` at the end."""

    def __init__(self, store: Store, registry: MappingRegistry, engine: DeliveryEngine) -> None:
        self.store = store
        self.registry = registry
        self.engine = engine
        self.n = 0
        self.record_of: dict[str, str] = {}

    @classmethod
    async def create(
        cls,
        tmp_path: Path,
        entries: list[str],
        *,
        group: str = "shop",
        settings: EngineSettings | None = None,
        start: bool = True,
    ) -> Rig:
        mappings = tmp_path / "mappings"
        mappings.mkdir(exist_ok=True)
        cls.write_mapping(mappings, group, entries)
        registry = MappingRegistry(mappings)
        registry.reload()
        assert not registry.all_problems(), [str(p) for p in registry.all_problems()]
        store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
        await store.open()
        engine = DeliveryEngine(
            store, registry, settings or EngineSettings(lease_seconds=30, poll_interval=0.05)
        )
        rig = cls(store, registry, engine)
        if start:
            await engine.start()
        return rig

    @staticmethod
    def write_mapping(mappings: Path, group: str, entries: list[str]) -> None:
        body = "".join(textwrap.indent(e, "  ") for e in entries)
        (mappings / f"{group}.yaml").write_text(
            f"group_key: {group}\nintegrations:\n{body}" if entries else f"group_key: {group}\n"
        )

    async def close(self) -> None:
        await self.engine.stop()
        await self.store.close()

    async def add(
        self, integrations: list[str], data: dict[str, Any] | None = None, group: str = "shop"
    ) -> list[str]:
        """Store one record with a delivery per integration; return the delivery ids."""
        self.n += 1
        data = data if data is not None else {"email": f"u{self.n}@example.com", "n": self.n}
        ids = [delivery_id() for _ in integrations]
        rid = record_id()
        self.record_of.update(dict.fromkeys(ids, rid))
        rec = NewRecord(
            rid, group, "AKTEST", orjson.dumps(data), time.time(), list(integrations), ids
        )
        result = await self.store.commit_ingest(IngestWrite([rec]))
        assert result.committed
        self.engine.notify()
        return ids

    async def deliveries(self, ids: list[str]) -> list[Delivery]:
        out = []
        for d in ids:
            found = await self._get(d)
            assert found is not None, d
            out.append(found)
        return out

    async def _get(self, did: str) -> Delivery | None:
        rec = await self.store.get_record(self.record_of[did])
        assert rec is not None
        return next((d for d in rec.deliveries if d.id == did), None)

    async def wait_settled(self, ids: list[str], within: float = 15.0) -> list[Delivery]:
        """Wait until none of the deliveries is pending; return them."""
        deadline = time.monotonic() + within
        while True:
            ds = await self.deliveries(ids)
            if all(d.state != DeliveryState.PENDING for d in ds):
                return ds
            if time.monotonic() > deadline:
                raise AssertionError(f"still pending after {within}s: {ds}")
            await asyncio.sleep(0.05)
