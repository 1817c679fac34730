"""One client connection as the hub sees it: who it is, and its bounded send queue.

Fan-out appends already-encoded frames to each peer's queue (a deque: no task, no copy per
recipient); one writer task per connection drains the queue, coalescing consecutive
broadcasts into one batch frame when the peer lags. A queue that overflows is dropped: a
replica gets ``resync required`` and no more broadcasts until it says hello again; a plain
Yjs client is closed with 4011 (its provider reconnects and syncs by state vector).

Owns the queue discipline and the writer loop. Imports ``crdtstate.sync.wire`` and relay
metrics; must not import the hub or aiohttp (sending is a callable given by ``relay.ws``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

from crdtstate._ids import ReplicaId, Seq
from crdtstate.sync import wire
from relay.auth import TokenBucket
from relay.config import Access, LimitSettings
from relay.metrics import RelayMetrics

__all__ = ["Peer", "PeerKind"]

_log = logging.getLogger("relay.peer")

_BATCH_BYTES_MAX: Final = 1024 * 1024
_BATCH_FRAMES_MAX: Final = 1024
_DIRECT_SLACK: Final = 4
_BROADCAST: Final = bytes((wire.MessageType.CRDTSTATE, wire.ExtType.BROADCAST))


class PeerKind(enum.Enum):
    """What a connection turned out to be."""

    PENDING = "pending"
    """Connected, no sync message or hello yet: receives nothing but direct answers."""
    YJS = "yjs"
    """A plain Yjs client (sent a sync message): receives y-protocols updates."""
    REPLICA = "replica"
    """A crdtstate replica (sent a hello): receives extension broadcasts and acks."""


class Peer:
    """A connection's identity, rights, limits and outbound queue.

    Args:
        conn_id: short random id, used in the origin of plain Yjs updates.
        access: what the connection's token allows.
        send: writes one frame to the socket.
        close: closes the socket with a code and reason.
        limits: the relay limits (queue bounds, rates).
        metrics: relay metrics.
    """

    def __init__(
        self,
        conn_id: str,
        access: Access,
        send: Callable[[bytes], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        limits: LimitSettings,
        metrics: RelayMetrics,
    ) -> None:
        now = time.monotonic()
        self.conn_id = conn_id
        self.access = access
        self.kind = PeerKind.PENDING
        self.replica_id: ReplicaId | None = None
        self.public_key = b""
        self.instance = ""
        self.desynced = False
        self.errors = 0
        self.awareness_ids: set[int] = set()
        self.update_bucket = TokenBucket(limits.conn_updates_per_s, limits.conn_updates_burst, now)
        self.byte_bucket = TokenBucket(
            limits.conn_bytes_per_s,
            max(limits.conn_bytes_per_s, 2 * limits.update_bytes_max),
            now,
        )
        self._send = send
        self._close = close
        self._metrics = metrics
        self._frames_max = limits.queue_frames_max
        self._bytes_max = limits.queue_bytes_max
        # Encoded frames; extension broadcasts are recognised by their first two bytes, so
        # queueing one costs an append and no tuple.
        self._queue: deque[bytes] = deque()
        self._queue_bytes = 0
        self._oldest_at = 0.0
        self._wake = asyncio.Event()
        self._close_request: tuple[int, str] | None = None
        self.closed = False
        self.head_seq: Callable[[], int] = lambda: 0
        """The namespace's head, for resync-required frames (set by the hub)."""

    @property
    def origin(self) -> str:
        """How this connection's updates are attributed in broadcasts."""
        if self.replica_id is not None:
            return self.replica_id
        return f"yjs:{self.conn_id}"

    @property
    def closing(self) -> bool:
        """True once a close was requested: the reader must stop acting on frames."""
        return self._close_request is not None or self.closed

    @property
    def queue_len(self) -> int:
        """Frames waiting to be written."""
        return len(self._queue)

    def send(self, frame: bytes) -> None:
        """Queue a direct frame (ack, answer, error); overflow closes the connection."""
        if self.closing:
            return
        # Direct frames answer what the peer sent (its rate is limited), so they get a
        # looser bound than fan-out; beyond it the peer is not reading even its own acks.
        if (
            len(self._queue) >= _DIRECT_SLACK * self._frames_max
            or self._queue_bytes >= _DIRECT_SLACK * self._bytes_max
        ):
            self._overflow(hard=True)
            return
        self._push(frame)

    def send_catch_up(self, frame: bytes) -> None:
        """Queue a catch-up snapshot right after a welcome, whatever its size.

        One per hello: its size is that of the document diff the replica asked for, and the
        live broadcasts queued behind it are still bounded.
        """
        if not self.closing:
            self._push(frame)

    def broadcast(self, frame: bytes) -> None:
        """Queue a fan-out frame (shared by every recipient); on overflow, desync a replica
        or close a plain Yjs client. Consecutive extension broadcasts may be coalesced."""
        if self.desynced or self._close_request is not None or self.closed:
            return
        queue = self._queue
        # A first frame always fits (one large update must get through an empty queue).
        if queue and (
            len(queue) >= self._frames_max or self._queue_bytes + len(frame) > self._bytes_max
        ):
            self._overflow(hard=self.kind is not PeerKind.REPLICA)
            return
        self._push(frame)

    def _push(self, frame: bytes) -> None:
        if not self._queue:
            self._oldest_at = time.monotonic()
            self._wake.set()
        self._queue.append(frame)
        self._queue_bytes += len(frame)

    def _overflow(self, *, hard: bool) -> None:
        self._queue.clear()
        self._queue_bytes = 0
        if hard:
            self.request_close(wire.CloseCode.TOO_SLOW, "send queue overflow")
            return
        self._metrics.resyncs.inc()
        self.desynced = True
        self._push(
            wire.encode(
                wire.ResyncRequired(Seq(self.head_seq()), "send queue overflow; send a new hello")
            )
        )

    def reset_queue(self) -> None:
        """Drop everything queued (a new hello restarts the stream)."""
        self._queue.clear()
        self._queue_bytes = 0
        self.desynced = False

    def request_close(self, code: int, reason: str) -> None:
        """Close after the frames already queued are written (an error frame first)."""
        if self._close_request is None and not self.closed:
            self._close_request = (code, reason)
            self._wake.set()

    async def run_writer(self) -> None:
        """Write queued frames until a close is requested or the socket fails."""
        metrics = self._metrics
        try:
            while True:
                if not self._queue:
                    if self._close_request is not None:
                        break
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                waited = time.monotonic() - self._oldest_at
                frame = self._next_frame()
                if self._queue:
                    # What stays queued is measured from now on (an underestimate, cheap).
                    self._oldest_at = time.monotonic()
                await self._send(frame)
                metrics.sent_bytes.inc(len(frame))
                metrics.fanout_lag.observe(waited)
        except (ConnectionError, RuntimeError, OSError) as exc:
            _log.debug("send failed", extra={"conn": self.conn_id, "error": str(exc)})
        finally:
            self.closed = True
            self._queue.clear()
            self._queue_bytes = 0
        code, reason = self._close_request or (wire.CloseCode.NORMAL, "")
        with contextlib.suppress(ConnectionError, RuntimeError, OSError):
            await self._close(code, reason)

    def _next_frame(self) -> bytes:
        queue = self._queue
        frame = queue.popleft()
        self._queue_bytes -= len(frame)
        if not queue or not frame.startswith(_BROADCAST) or not queue[0].startswith(_BROADCAST):
            return frame
        # The peer lags: coalesce the run of broadcasts waiting behind this one.
        frames = [frame]
        size = len(frame)
        while queue and len(frames) < _BATCH_FRAMES_MAX and queue[0].startswith(_BROADCAST):
            nxt = queue[0]
            if size + len(nxt) > _BATCH_BYTES_MAX:
                break
            queue.popleft()
            self._queue_bytes -= len(nxt)
            frames.append(nxt)
            size += len(nxt)
        return wire.batch_frames(frames)
