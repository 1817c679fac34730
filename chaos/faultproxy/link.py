"""One proxied TCP connection: its two links and how it ends.

Owns spec §7.2-§7.5 for a single connection: dial the upstream (bounded), then run two
links, each reading its source in chunks of at most 32 KiB, passing every chunk through the
stages of its direction's toxics in chain order, and writing the result to its destination
with backpressure. Toxics are attached, updated and detached on live links at any time
without losing, duplicating or reordering a byte. Ends: graceful (EOF travels through the
chain, then the destination is closed, which ends the other link too), abort (disable,
delete), RST (``reset_peer``).

Model: a link runs one chunk at a time through its chain (a stage that waits holds the
chunks behind it), while its reader may run ahead of the chain: by one chunk, or by up to
1024 chunks while a latency toxic is active, so a delayed stream is not throttled (chunks
are stamped when read and a latency stage releases them at stamp + delay). Consequence:
two bandwidth toxics on one stream throttle in series, not to the slower of the two.

Must not import aiohttp or the API; knows proxies only through the toxics it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable

from chaos.faultproxy.addr import split_host_port
from chaos.faultproxy.errors import ListenError
from chaos.faultproxy.toxics import (
    EOF,
    TOXIC_TYPES,
    Chunk,
    Direction,
    EndOfStream,
    Item,
    Stage,
    Toxic,
)

log = logging.getLogger(__name__)

READ_SIZE_BYTES = 32 * 1024
"""Largest chunk a link reads at once (the reference's Go copy buffer)."""

QUEUE_LEN_MAX = 1024
"""Chunks a link may read ahead while a latency toxic holds many in flight."""


class _Channel:
    """Single-producer single-consumer queue whose capacity may change while in use."""

    def __init__(self, capacity: Callable[[], int]) -> None:
        self._items: deque[Item] = deque()
        self._capacity = capacity
        self._getter: asyncio.Future[None] | None = None
        self._putter: asyncio.Future[None] | None = None

    async def put(self, item: Item) -> None:
        while len(self._items) >= self._capacity():
            self._putter = asyncio.get_running_loop().create_future()
            try:
                await self._putter
            finally:
                self._putter = None
        self._items.append(item)
        self._wake(self._getter)

    async def get(self) -> Item:
        while not self._items:
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        item = self._items.popleft()
        self._wake(self._putter)
        return item

    def kick(self) -> None:
        """Re-check the capacity (a toxic changed)."""
        self._wake(self._putter)

    @staticmethod
    def _wake(future: asyncio.Future[None] | None) -> None:
        if future is not None and not future.done():
            future.set_result(None)


class Link:
    """One direction of a connection: source socket → toxic stages → destination socket."""

    def __init__(
        self,
        connection: Connection,
        direction: Direction,
        source: asyncio.StreamReader,
        destination: asyncio.StreamWriter,
        rng: random.Random,
    ) -> None:
        self.connection = connection
        self.direction = direction
        self.rng = rng
        self.stages: list[Stage] = []
        self._source = source
        self._destination = destination
        self._channel = _Channel(self._capacity)
        self._ended = False

    # -- LinkContext ---------------------------------------------------------------------------

    def close_connection(self) -> None:
        """Close the whole connection gracefully (a toxic ended it)."""
        self.connection.close()

    def reset_connection(self) -> None:
        """Close the whole connection with TCP RST."""
        self.connection.reset()

    # -- toxics ----------------------------------------------------------------------------------

    def attach(self, toxic: Toxic) -> None:
        """Append ``toxic`` to this link's chain; it acts on the very next item."""
        stage = TOXIC_TYPES[toxic.type].stage(toxic, self)
        self.stages.append(stage)
        stage.attach()
        self._channel.kick()

    def update(self, toxic: Toxic) -> None:
        """``toxic``'s parameters changed: re-draw, release held data."""
        for stage in self.stages:
            if stage.toxic is toxic:
                stage.update()
        self._channel.kick()

    def detach(self, toxic: Toxic) -> None:
        """Remove ``toxic`` from this link's chain; data it holds goes on at once."""
        for stage in [stage for stage in self.stages if stage.toxic is toxic]:
            self.stages.remove(stage)
            stage.detach()
        self._channel.kick()

    def _capacity(self) -> int:
        for stage in self.stages:
            if stage.active and TOXIC_TYPES[stage.toxic.type].holds_many:
                return QUEUE_LEN_MAX
        return 1

    # -- data --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Pump items until the stream ends; then the destination is closed."""
        reader = asyncio.create_task(self._read_loop(), name=f"read-{self.direction.value}")
        try:
            while not self._ended:
                item = await self._channel.get()
                await self._traverse(item, frozenset())
        finally:
            for stage in self.stages:
                stage.dispose()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await self._source.read(READ_SIZE_BYTES)
            except (ConnectionError, OSError):
                data = b""  # a reset source ends the stream like EOF does
            if not data:
                await self._channel.put(EOF)
                return
            await self._channel.put(Chunk(data, loop.time()))

    def _next_stage(self, visited: frozenset[Stage]) -> Stage | None:
        # The chain may change while an item is inside it: the item goes on through the
        # stages of the current chain it has not visited yet, which keeps chain order
        # because the chain only ever grows at its end or loses members.
        for stage in self.stages:
            if stage not in visited:
                return stage
        return None

    async def _traverse(self, item: Item, visited: frozenset[Stage]) -> None:
        stage = self._next_stage(visited)
        if stage is None:
            await self._deliver(item)
            return
        visited = visited | {stage}
        if not stage.active:
            await self._traverse(item, visited)
            return
        async with contextlib.aclosing(stage.pipe(item)) as outputs:
            async for output in outputs:
                if self._ended:
                    return
                await self._traverse(output, visited)

    async def _deliver(self, item: Item) -> None:
        if self._ended:
            return
        writer = self._destination
        if isinstance(item, EndOfStream):
            self._ended = True
            writer.close()
            return
        if writer.is_closing():
            self._ended = True
            return
        writer.write(item.data)
        try:
            await writer.drain()
        except (ConnectionError, OSError):
            self._ended = True
            self.connection.abort()


class ConnectionState(enum.Enum):
    """Lifecycle of a proxied connection."""

    DIALING = "dialing"
    OPEN = "open"
    CLOSED = "closed"


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


def _set_linger_zero(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Connection:
    """A client connection accepted by a proxy and its upstream connection."""

    def __init__(
        self,
        name: str,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        rng_seed: str,
    ) -> None:
        self.name = name
        self.state = ConnectionState.DIALING
        self.links: dict[Direction, Link] = {}
        self._client_reader = client_reader
        self._client_writer = client_writer
        self._upstream_writer: asyncio.StreamWriter | None = None
        self._rng_seed = rng_seed
        self._task: asyncio.Task[None] | None = None

    def start(
        self,
        upstream: str,
        chain: Callable[[Direction], Iterable[Toxic]],
        dial_timeout_s: float,
    ) -> asyncio.Task[None]:
        """Start dialing ``upstream`` and then piping; return the connection's task.

        Args:
            upstream: ``host:port`` to dial.
            chain: returns the proxy's toxics of a direction at the moment the links start.
            dial_timeout_s: a dial slower than this counts as failed.
        """
        self._task = asyncio.create_task(self._run(upstream, chain, dial_timeout_s), name=self.name)
        return self._task

    async def _run(
        self,
        upstream: str,
        chain: Callable[[Direction], Iterable[Toxic]],
        dial_timeout_s: float,
    ) -> None:
        try:
            reader, writer = await asyncio.wait_for(_dial(upstream), dial_timeout_s)
        except (OSError, TimeoutError, ListenError, ValueError, UnicodeError) as exc:
            # Toxiproxy accepts, then closes: the client reads EOF (spec §7.2).
            log.info("%s: upstream %s unreachable: %s", self.name, upstream, exc)
            self.state = ConnectionState.CLOSED
            self._client_writer.close()
            return
        if self.state is ConnectionState.CLOSED:  # aborted while dialing
            _abort(writer)
            return
        self._upstream_writer = writer
        self.state = ConnectionState.OPEN
        for direction, source, destination in (
            (Direction.UPSTREAM, self._client_reader, writer),
            (Direction.DOWNSTREAM, reader, self._client_writer),
        ):
            rng = random.Random(f"{self._rng_seed}:{direction.value}")
            link = Link(self, direction, source, destination, rng)
            self.links[direction] = link
            for toxic in chain(direction):
                link.attach(toxic)
        try:
            await asyncio.gather(*(link.run() for link in self.links.values()))
        finally:
            self.state = ConnectionState.CLOSED

    # -- toxics --------------------------------------------------------------------------------

    def attach(self, toxic: Toxic) -> None:
        """Attach a newly added toxic to this connection's link of its direction."""
        link = self.links.get(toxic.direction)
        if link is not None and self.state is ConnectionState.OPEN:
            link.attach(toxic)

    def update(self, toxic: Toxic) -> None:
        """Propagate an update of ``toxic`` to the live link."""
        link = self.links.get(toxic.direction)
        if link is not None and self.state is ConnectionState.OPEN:
            link.update(toxic)

    def detach(self, toxic: Toxic) -> None:
        """Detach a removed toxic from the live link."""
        link = self.links.get(toxic.direction)
        if link is not None and self.state is ConnectionState.OPEN:
            link.detach(toxic)

    # -- ends ----------------------------------------------------------------------------------

    def _writers(self) -> list[asyncio.StreamWriter]:
        writers = [self._client_writer]
        if self._upstream_writer is not None:
            writers.append(self._upstream_writer)
        return writers

    def _finish(self) -> bool:
        if self.state is ConnectionState.CLOSED:
            return False
        self.state = ConnectionState.CLOSED
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        return True

    def abort(self) -> None:
        """Drop both sockets now: held data is discarded, kernel-buffered bytes still go."""
        self._finish()
        for writer in self._writers():
            _abort(writer)

    def close(self) -> None:
        """Close both sockets gracefully (flush what was written, then FIN)."""
        if self._finish():
            for writer in self._writers():
                writer.close()

    def reset(self) -> None:
        """Close both sockets with TCP RST (``SO_LINGER`` 0, then close).

        A reset that fires after the connection already ended does nothing.
        """
        if not self._finish():
            return
        for writer in self._writers():
            _set_linger_zero(writer)
            _abort(writer)


async def _dial(upstream: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port_text = split_host_port(upstream)
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ListenError(f"dial tcp {upstream}: invalid port")
    return await asyncio.open_connection(host, int(port_text))
