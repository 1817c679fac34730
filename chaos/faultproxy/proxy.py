"""One proxy: its listener, its live connections and its two toxic chains.

Owns spec §7.1 and §7.5 for a single proxy: enabled ⇔ one bound listening socket; disable
closes the listener and drops every live connection; the bound address replaces the
configured one so re-enabling re-binds the same port; toxics added, updated or removed
here reach every live connection at once and every future one.

Must not import aiohttp or the API layer; raises :class:`ListenError` for bind problems
and leaves HTTP statuses to the caller.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from chaos.faultproxy.addr import bind_listener, bound_address, resolve_listen
from chaos.faultproxy.link import Connection
from chaos.faultproxy.model import Attributes
from chaos.faultproxy.toxics import Direction, Toxic

log = logging.getLogger(__name__)


class Proxy:
    """A named TCP proxy from ``listen`` to ``upstream``.

    Attributes:
        name: immutable, unique in its collection.
        listen: as configured until first bound, then the bound address (``1.2.3.4:5``).
        upstream: ``host:port``, stored verbatim, dialled per client connection.
    """

    def __init__(
        self, name: str, listen: str, upstream: str, *, seed: str, dial_timeout_s: float
    ) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self._seed = seed
        self._dial_timeout_s = dial_timeout_s
        self._server: asyncio.Server | None = None
        self._chains: dict[Direction, list[Toxic]] = {d: [] for d in Direction}
        self._connections: dict[Connection, asyncio.Task[None]] = {}
        self._ordinal = 0

    @property
    def enabled(self) -> bool:
        """True while the proxy has a bound listening socket."""
        return self._server is not None

    @property
    def connection_count(self) -> int:
        """Number of live client connections (dialing or open)."""
        return len(self._connections)

    async def start(self) -> None:
        """Bind the listener (no-op when already bound).

        Raises:
            ListenError: the address does not parse, resolve or bind; nothing changes.
        """
        if self._server is not None:
            return
        target = await resolve_listen(self.listen)
        sock = bind_listener(target)
        try:
            self._server = await asyncio.start_server(self._accept, sock=sock)
        except BaseException:
            sock.close()
            raise
        self.listen = bound_address(sock)
        log.info("proxy %s listening on %s, upstream %s", self.name, self.listen, self.upstream)

    def stop(self) -> list[asyncio.Task[None]]:
        """Close the listener and drop every live connection (idempotent).

        Returns:
            The tasks of the dropped connections; they finish within a loop iteration or
            two, and a caller shutting down may await them.
        """
        if self._server is not None:
            self._server.close()
            self._server = None
            log.info("proxy %s stopped", self.name)
        tasks = list(self._connections.values())
        for connection in list(self._connections):
            connection.abort()
        return tasks

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # a connection accepted as the listener closed
            writer.transport.abort()
            return
        ordinal = self._ordinal
        self._ordinal += 1
        connection = Connection(
            f"{self.name}#{ordinal}", reader, writer, rng_seed=f"{self._seed}:{ordinal}"
        )
        task = connection.start(self.upstream, self.chain, self._dial_timeout_s)
        self._connections[connection] = task
        task.add_done_callback(lambda done: self._forget(connection, done))

    def _forget(self, connection: Connection, task: asyncio.Task[None]) -> None:
        self._connections.pop(connection, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("proxy %s: connection failed", self.name, exc_info=task.exception())
            connection.abort()

    # -- toxics --------------------------------------------------------------------------------

    def chain(self, direction: Direction) -> list[Toxic]:
        """Return a copy of the toxics of one direction, in chain order."""
        return list(self._chains[direction])

    def toxics(self) -> list[Toxic]:
        """Return every toxic: upstream ones in creation order, then downstream ones."""
        return [toxic for direction in Direction for toxic in self._chains[direction]]

    def find_toxic(self, name: str) -> Toxic | None:
        """Return the toxic called ``name`` (either stream), or None."""
        return next((toxic for toxic in self.toxics() if toxic.name == name), None)

    def add_toxic(self, toxic: Toxic) -> None:
        """Append ``toxic`` to its direction's chain and attach it to live connections."""
        self._chains[toxic.direction].append(toxic)
        for connection in list(self._connections):
            connection.attach(toxic)

    def update_toxic(
        self, toxic: Toxic, *, toxicity: float | None, attributes: Attributes | None
    ) -> None:
        """Change a toxic's parameters; live links re-draw toxicity and release held data."""
        if toxicity is not None:
            toxic.toxicity = toxicity
        if attributes is not None:
            toxic.attributes = attributes
        for connection in list(self._connections):
            connection.update(toxic)

    def remove_toxic(self, toxic: Toxic) -> None:
        """Remove ``toxic`` from its chain and from every live link (per-type removal)."""
        self._chains[toxic.direction].remove(toxic)
        for connection in list(self._connections):
            connection.detach(toxic)

    def remove_all_toxics(self) -> None:
        """Remove every toxic, each with its normal removal semantics."""
        for toxic in self.toxics():
            self.remove_toxic(toxic)

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON object the API shows for this proxy."""
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [toxic.to_wire() for toxic in self.toxics()],
        }
