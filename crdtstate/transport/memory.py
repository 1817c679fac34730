"""In-memory transport: two connected ends exchanging messages through asyncio queues.

Used by tests and the simulation to run the real session code with no sockets. Imports only
the transport protocol.
"""

from __future__ import annotations

import asyncio
from typing import Final

from crdtstate.transport.base import ConnectionClosed

__all__ = ["MemoryTransport", "memory_pipe"]

_ABNORMAL: Final = 1006


class MemoryTransport:
    """One end of an in-memory pipe (see :func:`memory_pipe`)."""

    def __init__(self, inbox: asyncio.Queue[bytes | ConnectionClosed]) -> None:
        self._inbox = inbox
        self.peer: MemoryTransport | None = None
        self.closed: ConnectionClosed | None = None

    async def send(self, data: bytes) -> None:
        """Deliver ``data`` to the other end.

        Raises:
            ConnectionClosed: this end or the other end is closed.
        """
        if self.closed is not None:
            raise self.closed
        peer = self.peer
        if peer is None or peer.closed is not None:
            raise ConnectionClosed(_ABNORMAL, "peer closed")
        peer._inbox.put_nowait(bytes(data))

    async def receive(self) -> bytes:
        """The next message from the other end.

        Raises:
            ConnectionClosed: with the code the closing end gave.
        """
        if self.closed is not None and self._inbox.empty():
            raise self.closed
        item = await self._inbox.get()
        if isinstance(item, ConnectionClosed):
            self.closed = item
            raise item
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close both directions; the other end's ``receive`` raises with ``code``."""
        if self.closed is not None:
            return
        self.closed = ConnectionClosed(code, reason)
        self._inbox.put_nowait(self.closed)
        peer = self.peer
        if peer is not None and peer.closed is None:
            peer._inbox.put_nowait(ConnectionClosed(code, reason))


def memory_pipe() -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected transports: what one sends, the other receives, in order."""
    a = MemoryTransport(asyncio.Queue())
    b = MemoryTransport(asyncio.Queue())
    a.peer = b
    b.peer = a
    return a, b
