"""A Toxiproxy-API-compatible fault proxy on asyncio (spec: specs/toxiproxy-api.md).

Public API::

    FaultProxyServer    in-process server: await start() / stop(), .port, .url, .seed
    FaultProxyProcess   the server as a subprocess (python -m chaos toxiproxy), stopped by pid
    FaultProxyThread    the server on its own loop in a thread, for blocking callers
    RecordedRequest     what a ``recorder`` callback receives for each API request
    API_VERSION         the Toxiproxy API level emulated
    FaultProxyError, ApiError, ListenError

Layers, each importing only those before it: ``errors`` → ``addr``, ``model`` → ``toxics``
→ ``link`` → ``proxy`` → ``collection`` → ``api`` → ``server`` → ``runner``, ``cli``.
``testing`` (echo servers, waits) stands apart. Nothing here imports the rest of crdtstate
beyond :mod:`crdtstate.errors`.
"""

from __future__ import annotations

from chaos.faultproxy.api import API_VERSION, RecordedRequest
from chaos.faultproxy.errors import ApiError, FaultProxyError, ListenError
from chaos.faultproxy.runner import FaultProxyProcess, FaultProxyThread
from chaos.faultproxy.server import FaultProxyServer

__all__ = [
    "API_VERSION",
    "ApiError",
    "FaultProxyError",
    "FaultProxyProcess",
    "FaultProxyServer",
    "FaultProxyThread",
    "ListenError",
    "RecordedRequest",
]
