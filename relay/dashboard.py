"""The relay's HTML dashboard: ``/`` and its three static files, no build step.

The page is static; its script polls the JSON views (:mod:`relay.views`) and renders
namespaces, replicas (lag, drift, alerts) and field values. It holds no data, so it is
served without a token; the token, given in the page's URL (``/?token=T``), is sent by the
script as a bearer header. Headers keep the page from running anything but its own script
and from leaking that URL (with its token) as a referrer.

Imports aiohttp only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

__all__ = ["STATIC_DIR", "setup_dashboard"]

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"

_FILES: Final = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
"""Everything served: a fixed list, so no path from a URL ever reaches the filesystem."""

_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def setup_dashboard(app: web.Application) -> None:
    """Add ``/`` and ``/static/{name}`` to ``app``."""
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _static)


def _file(name: str) -> web.Response:
    content_type = _FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound(text=f"no static file {name!r}")
    body = (STATIC_DIR / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_HEADERS)


async def _index(_request: web.Request) -> web.Response:
    return _file("index.html")


async def _static(request: web.Request) -> web.Response:
    return _file(request.match_info["name"])
