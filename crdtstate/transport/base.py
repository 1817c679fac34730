"""The ``Transport`` seam: a message pipe between a sync client and a relay.

A transport moves whole binary messages (one frame each) in both directions and reports how
the connection ended. The sync client runs the same session code over a real websocket
(:mod:`crdtstate.transport.websocket`) or an in-memory pipe (:mod:`crdtstate.transport.memory`,
for tests and the deterministic simulation).

Owns the protocol and the close error. Imports only ids and errors; handles only bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from crdtstate.errors import ClosedError

__all__ = ["ConnectionClosed", "Connector", "Transport"]


class ConnectionClosed(ClosedError):
    """The connection ended.

    Attributes:
        code: the websocket close code (1006 when it ended without a close frame).
        reason: the close reason text, possibly empty.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class Transport(Protocol):
    """One open connection carrying binary messages."""

    async def send(self, data: bytes) -> None:
        """Send one message.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        ...

    async def receive(self) -> bytes:
        """The next message.

        Raises:
            ConnectionClosed: the connection ended (with the peer's close code).
        """
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (idempotent)."""
        ...


Connector = Callable[[str, str | None], Awaitable[Transport]]
"""``connector(url, token)`` opens a transport, raising ``ConnectError`` or ``AuthError``."""
