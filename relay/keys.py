"""Typed keys of the relay's aiohttp application state.

Owns the keys only; imports the types they name.
"""

from __future__ import annotations

from aiohttp import web

from relay.auth import Authorizer
from relay.backend.base import Backend
from relay.config import RelaySettings
from relay.hub import Hub
from relay.metrics import RelayMetrics

__all__ = ["AUTHORIZER", "BACKEND", "HUB", "METRICS", "SETTINGS"]

SETTINGS = web.AppKey("settings", RelaySettings)
AUTHORIZER = web.AppKey("authorizer", Authorizer)
METRICS = web.AppKey("metrics", RelayMetrics)
BACKEND = web.AppKey("backend", Backend)
HUB = web.AppKey("hub", Hub)
