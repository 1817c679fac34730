"""The Toxiproxy HTTP API on aiohttp: routes, handlers, error shapes, browser guard.

Owns spec §2 and the wire side of §4: JSON bodies whatever the content type, errors as
``{"error": ..., "status": ...}\\n`` (JSON), 404 ``404 page not found`` for unknown paths and
an empty 405 for a wrong method (as gorilla/mux answers), 403 for browser user agents,
``X-Toxiproxy-Request-Id`` and ``X-Fault-Proxy`` headers on every answer. Handlers only
translate between HTTP and :class:`ProxyCollection`; mutations run under its lock and never
wait on the data plane.

Must not import sockets or the data plane directly.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from chaos.faultproxy.collection import ProxyCollection
from chaos.faultproxy.errors import ApiError
from chaos.faultproxy.model import (
    ProxyInput,
    ProxyUpdateInput,
    ToxicInput,
    ToxicUpdateInput,
    parse_body,
    parse_populate,
)

log = logging.getLogger(__name__)

API_VERSION = "2.12.0"
"""The Toxiproxy API level emulated (≥ 2.6.0 makes the Ruby client use PATCH)."""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One API request as received, for audit logs and client-conformance tests.

    Attributes:
        method: HTTP method.
        path: the raw path (percent-encoding kept), without the query.
        body: the request body bytes.
        user_agent: the ``User-Agent`` header, or ``""``.
        content_type: the ``Content-Type`` header, or ``""``.
    """

    method: str
    path: str
    body: bytes
    user_agent: str
    content_type: str


Recorder = Callable[[RecordedRequest], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

COLLECTION: web.AppKey[ProxyCollection] = web.AppKey("collection")
RECORDER: web.AppKey[Recorder] = web.AppKey("recorder")
IMPLEMENTATION: web.AppKey[str] = web.AppKey("implementation")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_response(value: Any, status: int = 200) -> web.Response:
    """Return ``value`` as a compact JSON response."""
    return web.Response(status=status, body=_dumps(value), content_type="application/json")


def error_response(error: ApiError) -> web.Response:
    """Return the Toxiproxy error shape: JSON ``{error, status}`` and a newline."""
    return web.Response(
        status=error.status, body=_dumps(error.body()) + b"\n", content_type="application/json"
    )


def _collection(request: web.Request) -> ProxyCollection:
    return request.app[COLLECTION]


# -- handlers ------------------------------------------------------------------------------------


async def get_version(request: web.Request) -> web.Response:
    """``GET /version``: exactly ``{"version": "2.12.0"}`` and a newline."""
    body = json.dumps({"version": API_VERSION}).encode() + b"\n"
    return web.Response(body=body, headers={"Content-Type": "application/json;charset=utf-8"})


async def list_proxies(request: web.Request) -> web.Response:
    """``GET /proxies``: every proxy by name, sorted."""
    return json_response(_collection(request).to_wire())


async def create_proxy(request: web.Request) -> web.Response:
    """``POST /proxies``: 201 with the proxy, bound address filled in."""
    collection = _collection(request)
    spec = parse_body(await request.read(), ProxyInput)
    async with collection.lock:
        proxy = await collection.create(spec)
    return json_response(proxy.to_wire(), status=201)


async def populate(request: web.Request) -> web.Response:
    """``POST /populate``: 201 ``{"proxies": [...]}`` in input order."""
    collection = _collection(request)
    specs = parse_populate(await request.read())
    async with collection.lock:
        proxies = await collection.populate(specs)
    return json_response({"proxies": [proxy.to_wire() for proxy in proxies]}, status=201)


async def get_proxy(request: web.Request) -> web.Response:
    """``GET /proxies/{proxy}``."""
    return json_response(_collection(request).get(request.match_info["proxy"]).to_wire())


async def update_proxy(request: web.Request) -> web.Response:
    """``POST|PATCH /proxies/{proxy}``: update listen/upstream/enabled; 200 with the proxy."""
    collection = _collection(request)
    async with collection.lock:
        proxy = collection.get(request.match_info["proxy"])
        spec = parse_body(await request.read(), ProxyUpdateInput)
        await collection.update(proxy, spec)
    return json_response(proxy.to_wire())


async def delete_proxy(request: web.Request) -> web.Response:
    """``DELETE /proxies/{proxy}``: 204."""
    collection = _collection(request)
    async with collection.lock:
        collection.delete(collection.get(request.match_info["proxy"]))
    return web.Response(status=204)


async def list_toxics(request: web.Request) -> web.Response:
    """``GET /proxies/{proxy}/toxics``: upstream toxics, then downstream ones."""
    proxy = _collection(request).get(request.match_info["proxy"])
    return json_response([toxic.to_wire() for toxic in proxy.toxics()])


async def create_toxic(request: web.Request) -> web.Response:
    """``POST /proxies/{proxy}/toxics``: **200** (not 201) with the toxic."""
    collection = _collection(request)
    async with collection.lock:
        proxy = collection.get(request.match_info["proxy"])
        spec = parse_body(await request.read(), ToxicInput)
        toxic = collection.add_toxic(proxy, spec)
    return json_response(toxic.to_wire())


async def get_toxic(request: web.Request) -> web.Response:
    """``GET /proxies/{proxy}/toxics/{toxic}``."""
    collection = _collection(request)
    proxy = collection.get(request.match_info["proxy"])
    return json_response(collection.get_toxic(proxy, request.match_info["toxic"]).to_wire())


async def update_toxic(request: web.Request) -> web.Response:
    """``POST|PATCH /proxies/{proxy}/toxics/{toxic}``: merge attributes, set toxicity."""
    collection = _collection(request)
    async with collection.lock:
        proxy = collection.get(request.match_info["proxy"])
        toxic = collection.get_toxic(proxy, request.match_info["toxic"])
        spec = parse_body(await request.read(), ToxicUpdateInput)
        collection.update_toxic(proxy, toxic, spec)
    return json_response(toxic.to_wire())


async def delete_toxic(request: web.Request) -> web.Response:
    """``DELETE /proxies/{proxy}/toxics/{toxic}``: 204; held data is released."""
    collection = _collection(request)
    async with collection.lock:
        proxy = collection.get(request.match_info["proxy"])
        collection.remove_toxic(proxy, collection.get_toxic(proxy, request.match_info["toxic"]))
    return web.Response(status=204)


async def reset(request: web.Request) -> web.Response:
    """``POST /reset``: enable every proxy, remove every toxic; 204."""
    collection = _collection(request)
    async with collection.lock:
        await collection.reset()
    return web.Response(status=204)


# -- middleware ----------------------------------------------------------------------------------


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await _dispatch(request, handler)
    response.headers["X-Toxiproxy-Request-Id"] = uuid.uuid4().hex
    response.headers["X-Fault-Proxy"] = request.app[IMPLEMENTATION]
    return response


async def _dispatch(request: web.Request, handler: Handler) -> web.StreamResponse:
    routing_error = request.match_info.http_exception
    if routing_error is not None:
        if routing_error.status == 405:
            return web.Response(status=405)
        return web.Response(status=404, text="404 page not found\n")
    # Stops web pages from driving the proxy through a user's browser.
    if request.headers.get("User-Agent", "").startswith("Mozilla/"):
        return web.Response(status=403, text="User agent not allowed\n")
    recorder = request.app.get(RECORDER)
    try:
        if recorder is not None:
            recorder(
                RecordedRequest(
                    request.method,
                    request.raw_path.split("?", 1)[0],
                    await request.read(),
                    request.headers.get("User-Agent", ""),
                    request.headers.get("Content-Type", ""),
                )
            )
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:  # e.g. 413 from an oversized body
        return error_response(ApiError(exc.status, exc.reason))
    except Exception:
        log.exception("API handler failed: %s %s", request.method, request.path)
        return error_response(ApiError(500, "internal error"))


def make_app(
    collection: ProxyCollection, *, implementation: str, recorder: Recorder | None = None
) -> web.Application:
    """Build the API application over ``collection``.

    Args:
        collection: the proxies the API drives.
        implementation: value of the ``X-Fault-Proxy`` header (e.g. ``crdtstate-chaos/0.1.0``).
        recorder: called with every routed request before it is handled.

    Returns:
        The aiohttp application (no cleanup of its own: the owner stops the collection).
    """
    app = web.Application(middlewares=[_middleware])
    app[COLLECTION] = collection
    app[IMPLEMENTATION] = implementation
    if recorder is not None:
        app[RECORDER] = recorder
    app.router.add_get("/version", get_version)
    app.router.add_get("/proxies", list_proxies)
    app.router.add_post("/proxies", create_proxy)
    app.router.add_post("/populate", populate)
    app.router.add_post("/reset", reset)
    app.router.add_get("/proxies/{proxy}", get_proxy)
    app.router.add_post("/proxies/{proxy}", update_proxy)
    app.router.add_patch("/proxies/{proxy}", update_proxy)
    app.router.add_delete("/proxies/{proxy}", delete_proxy)
    app.router.add_get("/proxies/{proxy}/toxics", list_toxics)
    app.router.add_post("/proxies/{proxy}/toxics", create_toxic)
    app.router.add_get("/proxies/{proxy}/toxics/{toxic}", get_toxic)
    app.router.add_post("/proxies/{proxy}/toxics/{toxic}", update_toxic)
    app.router.add_patch("/proxies/{proxy}/toxics/{toxic}", update_toxic)
    app.router.add_delete("/proxies/{proxy}/toxics/{toxic}", delete_toxic)
    return app
