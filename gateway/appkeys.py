"""Every typed key of the application's state, in one place.

The application factory (:func:`gateway.app.create_app`) puts each object under its key once;
handlers read them with ``request.config_dict[KEY]`` (which also works in the admin
sub-application) and get the right type back. The types are imported for the type checker only,
so any module may import this one without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.auth.keys import SecretBox
    from gateway.config import Settings
    from gateway.delivery.engine import DeliveryEngine
    from gateway.ingest.api import Ingest
    from gateway.mapping.loader import MappingRegistry
    from gateway.mapping.watch import MappingReloader
    from gateway.metrics import Metrics
    from gateway.store.base import Store

#: The settings the application was built with.
SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
#: The store (opened on start-up, closed on clean-up).
STORE: web.AppKey[Store] = web.AppKey("store")
#: The live mappings of every group.
MAPPINGS: web.AppKey[MappingRegistry] = web.AppKey("mappings")
#: Reloads :data:`MAPPINGS` (file watcher, SIGHUP, ``POST /admin/v1/reload``).
RELOADER: web.AppKey[MappingReloader] = web.AppKey("reloader")
#: The delivery engine (started only when ``Settings.delivery`` is on).
ENGINE: web.AppKey[DeliveryEngine] = web.AppKey("engine")
#: What the producer API needs (key ring, verifier, limits, ...).
INGEST: web.AppKey[Ingest] = web.AppKey("ingest")
#: The application's Prometheus metrics.
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
#: Encrypts access-key secrets with the master key (the admin API creates keys with it).
SECRET_BOX: web.AppKey[SecretBox] = web.AppKey("secret_box")
#: The admin API's bearer token, on the admin sub-application; empty: the admin API is off.
ADMIN_TOKEN: web.AppKey[str] = web.AppKey("admin_token", str)
