"""The relay's aiohttp application: routes, typed state, lifecycle.

``make_app(settings)`` wires storage, hub, metrics and authorization into one
``web.Application``; ``cleanup_ctx`` opens the backend before the first request and, at
shutdown, drains the hub and closes the backend. Must not import the sync client.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from aiohttp import web

from relay.auth import Authorizer
from relay.backend.base import Backend
from relay.backend.sqlite import SqliteBackend
from relay.config import RelaySettings
from relay.dashboard import setup_dashboard
from relay.hub import Hub
from relay.keys import AUTHORIZER, BACKEND, HUB, METRICS, SETTINGS
from relay.metrics import RelayMetrics
from relay.ops import routes as ops_routes
from relay.views import setup_views
from relay.ws import handle_websocket

__all__ = ["DB_FILE", "configured_backend", "make_app"]

DB_FILE = "relay.sqlite3"


def make_app(
    settings: RelaySettings,
    *,
    environ: Mapping[str, str] | None = None,
    backend: Backend | None = None,
) -> web.Application:
    """Build the relay application.

    Args:
        settings: validated settings.
        environ: environment for ``token_env`` secrets (default ``os.environ``).
        backend: storage to use instead of SQLite under ``settings.data_dir``.
    """
    app = web.Application(client_max_size=1024 * 1024)
    metrics = RelayMetrics()
    store = backend or configured_backend(settings)
    app[SETTINGS] = settings
    app[AUTHORIZER] = Authorizer(settings, os.environ if environ is None else environ)
    app[METRICS] = metrics
    app[BACKEND] = store
    app[HUB] = Hub(settings, store, metrics)
    app.router.add_get("/yjs/{namespace}", handle_websocket)
    app.router.add_routes(ops_routes)
    setup_views(app)
    setup_dashboard(app)
    app.cleanup_ctx.append(_lifecycle)
    return app


def configured_backend(settings: RelaySettings) -> Backend:
    """The storage ``[backend]`` names; nats-py (an extra) is imported only when used."""
    if settings.backend.kind == "nats":
        from relay.backend.nats import NatsBackend

        conf = settings.backend
        return NatsBackend(
            conf.url,
            prefix=conf.prefix,
            replicas=conf.replicas,
            timeout_s=conf.timeout_s,
            connect_timeout_s=conf.timeout_s,
            max_entry_bytes=settings.limits.update_bytes_max,
        )
    return SqliteBackend(Path(settings.data_dir) / DB_FILE, fsync=settings.fsync)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    backend = app[BACKEND]
    await backend.open()
    hub = app[HUB]
    await hub.start()
    yield
    if not hub.draining:
        await hub.drain()
    await backend.close()
