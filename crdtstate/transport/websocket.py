"""Websocket transport over the aiohttp client.

Translates aiohttp's errors at the seam: an unreachable relay or a failed upgrade is a
``ConnectError`` (``AuthError`` for 401/403), a closed socket is
:class:`~crdtstate.transport.base.ConnectionClosed` with the close code. Imports aiohttp and
the transport protocol; must not import the session or the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import aiohttp

from crdtstate.errors import AuthError, ConnectError
from crdtstate.transport.base import ConnectionClosed

__all__ = ["WebsocketTransport", "connect_websocket"]

_ABNORMAL: Final = 1006


class WebsocketTransport:
    """An open websocket to the relay. Made by :func:`connect_websocket`."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self._session = session
        self._ws = ws
        self._send_lock = asyncio.Lock()
        self._closed: ConnectionClosed | None = None

    def _closed_error(self) -> ConnectionClosed:
        if self._closed is None:
            code = self._ws.close_code or _ABNORMAL
            reason = ""
            self._closed = ConnectionClosed(code, reason)
        return self._closed

    async def send(self, data: bytes) -> None:
        """Send one binary message.

        Raises:
            ConnectionClosed: the socket is closed.
        """
        if self._ws.closed:
            raise self._closed_error()
        try:
            async with self._send_lock:
                await self._ws.send_bytes(data)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise self._closed_error() from exc

    async def receive(self) -> bytes:
        """The next binary message (text messages are skipped).

        Raises:
            ConnectionClosed: with the relay's close code.
        """
        while True:
            try:
                msg = await self._ws.receive()
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                raise self._closed_error() from exc
            if msg.type is aiohttp.WSMsgType.BINARY:
                return bytes(msg.data)
            if msg.type is aiohttp.WSMsgType.TEXT:
                continue
            if msg.type is aiohttp.WSMsgType.CLOSE and self._closed is None:
                self._closed = ConnectionClosed(int(msg.data or _ABNORMAL), str(msg.extra or ""))
            await self._finish()
            raise self._closed_error()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket and its HTTP session (idempotent)."""
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            await self._ws.close(code=code, message=reason.encode()[:120])
        await self._finish()

    async def _finish(self) -> None:
        if not self._session.closed:
            await self._session.close()


async def connect_websocket(
    url: str,
    token: str | None,
    *,
    timeout_s: float = 10.0,
    heartbeat_s: float | None = 20.0,
    max_msg_size: int = 256 * 1024 * 1024,
) -> WebsocketTransport:
    """Open a websocket to ``url`` (the full ``ws://.../yjs/<namespace>`` URL).

    Args:
        url: websocket URL.
        token: sent as ``Authorization: Bearer``; None for none.
        timeout_s: limit on connecting and upgrading.
        heartbeat_s: ping interval that detects a dead connection; None = off.
        max_msg_size: largest message accepted.

    Raises:
        AuthError: the relay answered the upgrade with 401 or 403.
        ConnectError: anything else went wrong while connecting.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=timeout_s))
    try:
        ws = await asyncio.wait_for(
            session.ws_connect(
                url,
                headers=headers,
                compress=0,
                heartbeat=heartbeat_s,
                autoping=True,
                max_msg_size=max_msg_size,
            ),
            timeout_s,
        )
    except aiohttp.WSServerHandshakeError as exc:
        await session.close()
        if exc.status in (401, 403):
            raise AuthError(f"relay {url} refused the connection: {exc.status}") from exc
        raise ConnectError(f"relay {url} refused the upgrade: {exc.status} {exc.message}") from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        await session.close()
        raise ConnectError(f"cannot connect to {url}: {exc or type(exc).__name__}") from exc
    except BaseException:
        await session.close()
        raise
    return WebsocketTransport(session, ws)
