"""Operational HTTP endpoints: ``/healthz``, ``/metrics`` and the admin snapshot trigger.

``/`` and ``/v1/namespaces*`` are :mod:`relay.dashboard`'s and :mod:`relay.views`'. Must
not import the sync client.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from crdtstate._ids import validate_namespace
from relay.auth import token_from_request
from relay.backend.base import BackendError
from relay.hub import OverloadedError
from relay.keys import AUTHORIZER, BACKEND, HUB, METRICS

__all__ = ["event_loop_name", "routes"]

routes = web.RouteTableDef()


def event_loop_name() -> str:
    """``uvloop`` or ``asyncio``: which event loop runs the relay (``event_loop`` setting)."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """200 with a small JSON status while serving, 503 while draining."""
    hub = request.app[HUB]
    body = {
        "status": "draining" if hub.draining else "ok",
        "namespaces": len(hub.namespaces),
        "connections": hub.connections,
        "event_loop": event_loop_name(),
    }
    return web.json_response(body, status=503 if hub.draining else 200)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of the relay's registry.

    The drift gauges are computed here, per scrape, from the loaded namespaces' heartbeats.
    """
    from relay.drift_view import drift_samples  # at the first scrape, not at start

    relay_metrics = request.app[METRICS]
    namespaces, replicas = await drift_samples(request.app[HUB], request.app[BACKEND], time.time())
    relay_metrics.drift.set(namespaces, replicas)
    data = generate_latest(relay_metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.post("/admin/namespaces/{namespace}/snapshot")
async def snapshot(request: web.Request) -> web.Response:
    """Store a snapshot of a namespace now (admin token, or anyone in open dev mode)."""
    if not request.app[AUTHORIZER].is_admin(token_from_request(request.query, request.headers)):
        raise web.HTTPUnauthorized(text="admin token required")
    try:
        namespace = validate_namespace(request.match_info["namespace"])
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    hub = request.app[HUB]
    if hub.draining:
        raise web.HTTPServiceUnavailable(text="relay is shutting down")
    live = None
    try:
        live = await hub.acquire(namespace)
        live.refs += 1
        outcome = await hub.snapshot(namespace)
    except OverloadedError as exc:
        raise web.HTTPServiceUnavailable(text=str(exc)) from exc
    except BackendError as exc:
        raise web.HTTPInternalServerError(text=f"snapshot failed: {exc}") from exc
    finally:
        if live is not None:
            live.refs -= 1
            hub.release(live)
    return web.json_response(
        {
            "namespace": namespace,
            "seq": outcome.seq,
            "bytes": outcome.bytes,
            "watermark": outcome.watermark,
            "trimmed": outcome.trimmed,
        }
    )
