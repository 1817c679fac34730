"""Real peers and waits for testing code that runs behind the fault proxy.

Owns small, real test peers: :class:`EchoServer` (asyncio; echoes or sinks, records what
each peer sent and how its connection ended), :class:`ThreadedEchoServer` (blocking,
for synchronous tests), and deadline-bound waits (:func:`wait_until`,
:func:`wait_until_sync`). Everything binds 127.0.0.1 on a port the OS picks.

Must not import pytest or the fault proxy's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import socketserver
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType


async def wait_until(
    predicate: Callable[[], object | Awaitable[object]],
    timeout_s: float = 5.0,
    interval_s: float = 0.01,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` (a plain or async callable) until it returns something truthy.

    Raises:
        TimeoutError: still false after ``timeout_s`` (the message names ``what``).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(interval_s)


def wait_until_sync(
    predicate: Callable[[], object],
    timeout_s: float = 5.0,
    interval_s: float = 0.01,
    what: str = "condition",
) -> None:
    """Blocking :func:`wait_until` for synchronous code."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s} s")
        time.sleep(interval_s)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> bool:
    """Return True if a TCP connect to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


@dataclass(eq=False)
class Peer:
    """One connection accepted by an :class:`EchoServer`.

    Attributes:
        received: every byte the peer sent, in order.
        closed: set once the connection ended (EOF, reset or server stop).
        error: the exception that ended the read (``ConnectionResetError`` on RST), if any.
        writer: the server side of the connection, to send unprompted data.
    """

    writer: asyncio.StreamWriter
    received: bytearray = field(default_factory=bytearray)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None


class EchoServer:
    """An asyncio TCP server on 127.0.0.1 that echoes (or only records) what it gets.

    Args:
        echo: write back every chunk received (False = sink).
    """

    def __init__(self, *, echo: bool = True) -> None:
        self.echo = echo
        self.peers: list[Peer] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port."""
        assert self._server is not None, "EchoServer not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, ready to use as a proxy's upstream."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Bind and serve."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(writer)
        self.peers.append(peer)
        task = asyncio.create_task(self._serve(peer, reader))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, peer: Peer, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(65536):
                peer.received += data
                if self.echo and not peer.writer.is_closing():
                    peer.writer.write(data)
                    await peer.writer.drain()
        except (ConnectionError, OSError) as exc:
            peer.error = exc
        finally:
            peer.writer.close()
            peer.closed.set()

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for peer in self.peers:
            peer.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> EchoServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                sock.sendall(data)


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class ThreadedEchoServer:
    """A blocking echo server on 127.0.0.1 in a background thread."""

    def __init__(self) -> None:
        self._server = _ThreadingServer(("127.0.0.1", 0), _EchoHandler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Serve in the background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> ThreadedEchoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
