"""The fault proxy server in-process: the API site and the proxies on one event loop.

Owns the lifecycle of spec §1: load the ``-config`` file (populate format) before the API
listens, bind the API on exactly one socket (``localhost`` → ``127.0.0.1``), log the seed,
and on stop close every listener and every connection it opened.

Must not import the command line; :mod:`chaos.faultproxy.cli` wraps this.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from importlib import metadata
from pathlib import Path
from types import TracebackType

from aiohttp import web

from chaos.faultproxy.addr import bind_listener, format_hostport, resolve_listen
from chaos.faultproxy.api import Recorder, make_app
from chaos.faultproxy.collection import DIAL_TIMEOUT_S, ProxyCollection
from chaos.faultproxy.errors import ApiError, FaultProxyError
from chaos.faultproxy.model import parse_populate

log = logging.getLogger(__name__)

DEFAULT_API_PORT = 8474
"""Toxiproxy's API port; toxiproxy-python's default."""

STOP_TIMEOUT_S = 5.0
"""Bound on waiting for dropped connections to wind down at stop."""


def implementation_version() -> str:
    """Return ``crdtstate-chaos/<distribution version>`` (the ``X-Fault-Proxy`` header)."""
    try:
        version = metadata.version("crdtstate")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"crdtstate-chaos/{version}"


class FaultProxyServer:
    """A Toxiproxy-API-compatible fault proxy running in the caller's event loop.

    Args:
        host: API bind host; a hostname binds its first IPv4 address only.
        port: API port; 0 picks a free one (read :attr:`port` after :meth:`start`).
        seed: seed of every random draw (toxicity, jitter, slicer); None draws one.
        config_path: JSON array in ``/populate`` format, applied before the API listens.
        recorder: called with every API request (see :class:`RecordedRequest`).
        dial_timeout_s: bound on each upstream dial.

    Example::

        async with FaultProxyServer("127.0.0.1", 0) as server:
            ...  # drive http://127.0.0.1:{server.port} with any Toxiproxy client
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_API_PORT,
        *,
        seed: int | None = None,
        config_path: Path | str | None = None,
        recorder: Recorder | None = None,
        dial_timeout_s: float = DIAL_TIMEOUT_S,
    ) -> None:
        self.host = host
        self.seed = secrets.randbits(63) if seed is None else seed
        self._requested_port = port
        self._config_path = None if config_path is None else Path(config_path)
        self._recorder = recorder
        self.collection = ProxyCollection(self.seed, dial_timeout_s)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._bound_host = host

    @property
    def port(self) -> int:
        """The bound API port.

        Raises:
            FaultProxyError: the server is not started.
        """
        if self._port is None:
            raise FaultProxyError("the fault proxy server is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:8474``."""
        return f"http://{format_hostport(self._bound_host, self.port)}"

    async def start(self) -> None:
        """Load the config file, then bind and serve the API.

        Raises:
            ListenError: the API address cannot be resolved or bound.
            FaultProxyError: already started.
        """
        if self._runner is not None:
            raise FaultProxyError("the fault proxy server is already started")
        log.info("fault proxy seed %d", self.seed)
        if self._config_path is not None:
            await self._load_config(self._config_path)
        target = await resolve_listen(format_hostport(self.host, self._requested_port))
        sock = bind_listener(target)
        app = make_app(
            self.collection, implementation=implementation_version(), recorder=self._recorder
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_host, self._port = str(sock.getsockname()[0]), int(sock.getsockname()[1])
        log.info("Toxiproxy API listening on %s", self.url)

    async def _load_config(self, path: Path) -> None:
        # Errors are logged and the server keeps what was created before them (spec §1.1).
        try:
            specs = parse_populate(path.read_bytes())
            async with self.collection.lock:
                proxies = await self.collection.populate(specs)
        except OSError as exc:
            log.error("config %s unreadable: %s", path, exc)
        except ApiError as exc:
            log.error("config %s rejected: %s", path, exc.message)
        else:
            log.info("config %s: %d proxies", path, len(proxies))

    async def stop(self) -> None:
        """Stop the API and every proxy: all listeners and connections are closed."""
        dropped = self.collection.close()
        if dropped:
            await asyncio.wait(dropped, timeout=STOP_TIMEOUT_S)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    async def __aenter__(self) -> FaultProxyServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
