"""``SyncClient``: keeps one replica in sync with the relay, in the background.

Runs a :class:`~crdtstate.sync.session.SyncSession` over a
:class:`~crdtstate.transport.base.Transport`: connects to one URL or rotates through a list,
sends the hello and the outbox, applies what the relay sends, heartbeats, and reconnects with
capped, jittered exponential backoff. Callers wait for acknowledgements
(:meth:`SyncClient.wait_acked`), for another replica's write (:meth:`SyncClient.wait_seq`) or
for full sync (:meth:`SyncClient.synced`). Everything runs on the event loop that called
:meth:`SyncClient.start`; the replica's outbox listener may fire from any thread.

Imports the session, the transports, ids and errors; must not import the replica or the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from crdtstate._ids import OpId, Seq
from crdtstate.errors import (
    AuthError,
    ConnectError,
    CrdtStateError,
    ProtocolError,
    SyncTimeout,
    TransportError,
)
from crdtstate.sync import wire
from crdtstate.sync.session import (
    Acked,
    ConnectionState,
    Fatal,
    Rejected,
    StoreFailed,
    SyncSession,
    SyncSettings,
)
from crdtstate.sync.target import SyncTarget
from crdtstate.transport.base import ConnectionClosed, Connector, Transport
from crdtstate.transport.websocket import connect_websocket

__all__ = ["ConnectionState", "SyncClient", "SyncSettings", "relay_url"]

_log = logging.getLogger("crdtstate.sync")

_TICK_S: Final = 0.5

_PERMANENT_CLOSE: Final = {
    wire.CloseCode.UNAUTHORIZED: AuthError,
    wire.CloseCode.FORBIDDEN: AuthError,
    wire.CloseCode.IDENTITY_CONFLICT: AuthError,
    wire.CloseCode.BAD_NAMESPACE: ProtocolError,
    wire.CloseCode.UNSUPPORTED_VERSION: ProtocolError,
}


def relay_url(base: str, namespace: str) -> str:
    """The websocket URL of ``namespace`` on the relay at ``base``.

    ``ws://host:port`` (or ``http://``) becomes ``ws://host:port/yjs/<namespace>``; a URL
    whose path already contains ``/yjs/`` is used as given.
    """
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path
    if "/yjs/" not in path:
        path = f"{path.rstrip('/')}/yjs/{namespace}"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class SyncClient:
    """Background sync of one replica with a relay.

    Args:
        target: the replica (see :class:`~crdtstate.sync.target.SyncTarget`).
        urls: relay base URL or URLs (``ws://host:port``), tried in turn on failure.
        token: the namespace token, or None (open dev relay).
        settings: tuning (backoff, window, heartbeat).
        connector: opens a transport for ``(url, token)``; default: websocket.
        rng: randomness for backoff jitter (seed it for a deterministic simulation).
        clock: monotonic seconds (injectable for a simulation).
    """

    def __init__(
        self,
        target: SyncTarget,
        urls: str | Sequence[str],
        token: str | None = None,
        *,
        settings: SyncSettings | None = None,
        connector: Connector | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        url_list = [urls] if isinstance(urls, str) else list(urls)
        if not url_list:
            raise ValueError("SyncClient needs at least one relay URL")
        self.target = target
        self.settings = settings or SyncSettings()
        self.urls = [relay_url(u, target.namespace) for u in url_list]
        self._token = token
        self._connector = connector or self._connect_ws
        self._rng = rng or random.Random()
        self._clock = clock
        self.session = SyncSession(target, self.settings)
        self._state = ConnectionState.DISCONNECTED
        self.connected_url: str | None = None
        self.fatal: CrdtStateError | None = None
        self.reconnects = 0
        self._acked: OrderedDict[OpId, Seq] = OrderedDict()
        self._changed = asyncio.Condition()
        self._outbox_event = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._transport: Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- observation ----------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """Connection state (the session's while connected)."""
        if self._state in (ConnectionState.STOPPED, ConnectionState.FAILED):
            return self._state
        if self._transport is not None:
            return self.session.state
        return self._state

    @property
    def head_seq(self) -> Seq:
        """The relay's head as last seen."""
        return self.session.head_seq

    @property
    def applied_seq(self) -> Seq:
        """Highest relay seq applied by the replica through this client."""
        return self.session.applied_seq

    @property
    def lag(self) -> int:
        """Relay head minus applied seq, in sequence numbers."""
        return self.session.lag

    @property
    def last_error(self) -> str | None:
        """The latest problem seen (refusal, disconnect reason), for a person."""
        return self.session.last_error

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting in the background (returns at once)."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        self.target.set_outbox_listener(self._outbox_ready)
        self._task = asyncio.create_task(self._run(), name=f"sync:{self.target.namespace}")

    async def stop(self) -> None:
        """Disconnect and stop; unacknowledged writes stay in the replica's outbox."""
        self._stopping.set()
        self.target.set_outbox_listener(None)
        task, self._task = self._task, None
        transport = self._transport
        if transport is not None:
            with contextlib.suppress(TransportError):
                await transport.close(wire.CloseCode.NORMAL, "client stopping")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._state is not ConnectionState.FAILED:
            self._state = ConnectionState.STOPPED
        self.session.state = self._state
        await self._notify()

    def _outbox_ready(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._outbox_event.set()
        else:
            loop.call_soon_threadsafe(self._outbox_event.set)

    # -- waiting --------------------------------------------------------------------------

    async def _wait(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = self._clock() + timeout_s
        async with self._changed:
            while not ready():
                if self.fatal is not None:
                    raise self.fatal
                if self._state is ConnectionState.STOPPED:
                    raise SyncTimeout(f"{what}: the sync client is stopped")
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise SyncTimeout(self._timeout_message(what, timeout_s))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(remaining, _TICK_S))

    def _timeout_message(self, what: str, timeout_s: float) -> str:
        detail = f"state {self.state.value}, applied {self.applied_seq}, head {self.head_seq}"
        if self.session.rejected:
            detail += f", rejected ops {sorted(self.session.rejected)[:5]}"
        if self.last_error:
            detail += f", last error: {self.last_error}"
        return f"{what} not done within {timeout_s} s ({detail})"

    async def wait_acked(self, op_id: OpId, timeout_s: float) -> Seq:
        """Wait until local write ``op_id`` is durably sequenced by the relay.

        Returns:
            Its sequence number.

        Raises:
            SyncTimeout: not acknowledged in time (the write stays in the outbox).
            AuthError: the relay refused this replica for good.
        """
        await self._wait(lambda: op_id in self._acked, timeout_s, f"ack of op {op_id}")
        return self._acked[op_id]

    async def wait_seq(self, seq: Seq, timeout_s: float) -> None:
        """Wait until this replica applied relay sequence number ``seq``.

        Raises:
            SyncTimeout: not applied in time.
        """
        await self._wait(lambda: self.session.applied_seq >= seq, timeout_s, f"apply of seq {seq}")

    async def synced(self, timeout_s: float) -> None:
        """Wait until every durable local write is acknowledged and the replica applied
        everything up to the relay's head.

        Raises:
            SyncTimeout: not synced in time.
        """

        def ready() -> bool:
            return self.session.caught_up() and not self.target.pending_outbox(1, OpId(0))

        await self._wait(ready, timeout_s, "sync")

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- connection loop ------------------------------------------------------------------

    async def _connect_ws(self, url: str, token: str | None) -> Transport:
        return await connect_websocket(
            url,
            token,
            timeout_s=self.settings.connect_timeout_s,
            heartbeat_s=self.settings.ws_heartbeat_s,
            max_msg_size=self.settings.frame_bytes_max,
        )

    def _backoff_s(self, attempt: int) -> float:
        s = self.settings
        delay = min(s.backoff_s_max, s.backoff_s_initial * float(2 ** min(attempt, 30)))
        return delay * (1.0 - s.backoff_jitter * self._rng.random())

    async def _run(self) -> None:
        attempt = 0
        index = 0
        while not self._stopping.is_set():
            url = self.urls[index % len(self.urls)]
            self._state = ConnectionState.CONNECTING
            await self._notify()
            reached_live = False
            try:
                transport = await self._connector(url, self._token)
            except AuthError as exc:
                self._fail(exc)
                return
            except ConnectError as exc:
                self.session.connection_lost(str(exc))
            else:
                self.connected_url = url
                try:
                    reached_live = await self._run_connection(transport)
                except (AuthError, ProtocolError) as exc:
                    self._fail(exc)
                    return
                finally:
                    self.connected_url = None
            if self._stopping.is_set():
                break
            self._state = ConnectionState.DISCONNECTED
            await self._notify()
            attempt = 0 if reached_live else attempt + 1
            if not reached_live:
                index += 1  # rotate to the next relay after a failure
            self.reconnects += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._backoff_s(attempt))

    def _fail(self, exc: CrdtStateError) -> None:
        self.fatal = exc
        self._state = ConnectionState.FAILED
        self.session.state = ConnectionState.FAILED
        self.session.last_error = str(exc)
        _log.error("sync stopped for good: %s", exc)
        asyncio.get_running_loop().create_task(self._notify())

    async def _run_connection(self, transport: Transport) -> bool:
        """Run one connection until it ends; True if it reached the live state."""
        self._transport = transport
        session = self.session
        reached_live = False
        pump = asyncio.create_task(self._pump(transport))
        try:
            await self._send_all(transport, session.connection_made(self._clock()))
            while True:
                data = await transport.receive()
                out = session.receive(data, self._clock())
                await self._send_all(transport, out)
                if self._handle_events():
                    raise self.fatal or AuthError("refused by the relay")
                if session.state is ConnectionState.LIVE:
                    reached_live = True
                await self._notify()
        except ConnectionClosed as exc:
            session.connection_lost(str(exc))
            error = _PERMANENT_CLOSE.get(exc.code)  # type: ignore[call-overload]
            if error is not None:
                raise error(f"relay closed the connection: {exc}") from exc
            return reached_live
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, TransportError):
                await pump
            self._transport = None
            with contextlib.suppress(TransportError):
                await transport.close()
            if session.state not in (ConnectionState.FAILED, ConnectionState.STOPPED):
                session.state = ConnectionState.DISCONNECTED

    def _handle_events(self) -> bool:
        """Record acks; True when a fatal refusal arrived."""
        fatal = False
        for event in self.session.events():
            if isinstance(event, Acked):
                self._acked[event.op_id] = event.seq
                if len(self._acked) > self.settings.acked_remember_max:
                    self._acked.popitem(last=False)
            elif isinstance(event, Rejected):
                _log.warning("relay rejected op %s: %s", event.op_id, event.message)
            elif isinstance(event, Fatal):
                self.fatal = event.error
                fatal = True
            elif isinstance(event, StoreFailed):
                _log.warning("local store refused relay updates, retrying: %s", event.error)
        return fatal

    async def _pump(self, transport: Transport) -> None:
        """Send outbox entries when they appear, heartbeats and resends when due."""
        session = self.session
        while True:
            # not asyncio.wait_for: on Python 3.11 it swallows a cancel that arrives as the
            # event is set (a write as the connection drops), and this loop never ended
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TICK_S):
                    await self._outbox_event.wait()
            self._outbox_event.clear()
            await self._send_all(transport, session.tick(self._clock()))

    @staticmethod
    async def _send_all(transport: Transport, frames: list[bytes]) -> None:
        for frame in frames:
            await transport.send(frame)
