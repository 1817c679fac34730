"""One client connection as the hub sees it: who it is, and its bounded send queue.

Fan-out appends already-encoded frames to each peer's queue (a deque: no task, no copy per
recipient); one writer task per connection drains the queue, everything waiting in one socket
write, coalescing consecutive broadcasts into one batch frame when the peer lags. A queue
that overflows is dropped: a replica gets ``resync required`` and no more broadcasts until
it says hello again; a plain Yjs client is closed with 4011 (its provider reconnects and
syncs by state vector).

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
from collections.abc import Awaitable, Callable, Sequence
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
_WRITE_FRAMES_MAX: Final = 4096
_WRITE_BYTES_MAX: Final = 1024 * 1024
"""Most frames and bytes the writer takes from the queue for one socket write."""
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
        send_many: writes several frames at once (one socket write); without it the
            writer calls ``send`` once per frame.
        write_now: writes frames at once, without waiting, if the socket takes them
            (returns False when it is closing or backed up), leaving out those at the
            indices given as its second argument: fan-out to an idle connection then needs
            no queue and no writer wake-up.
    """

    def __init__(
        self,
        conn_id: str,
        access: Access,
        send: Callable[[bytes], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        limits: LimitSettings,
        metrics: RelayMetrics,
        send_many: Callable[[list[bytes]], Awaitable[None]] | None = None,
        write_now: Callable[[list[bytes], Sequence[int]], bool] | None = None,
    ) -> None:
        now = time.monotonic()
        self.conn_id = conn_id
        self._yjs_origin = f"yjs:{conn_id}"
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
        self._send_many = send_many
        # Direct writes keep the order only if the writer hands frames to the socket before
        # it awaits anything, which ``send_many`` does and a per-frame ``send`` loop does not.
        self._write_now = write_now if send_many is not None else None
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
        self._writing = False
        self.closed = False
        self.head_seq: Callable[[], int] = lambda: 0
        """The namespace's head, for resync-required frames (set by the hub)."""

    @property
    def origin(self) -> str:
        """How this connection's updates are attributed in broadcasts."""
        replica_id = self.replica_id
        return self._yjs_origin if replica_id is None else replica_id

    @property
    def closing(self) -> bool:
        """True once a close was requested: the reader must stop acting on frames."""
        return self._close_request is not None or self.closed

    @property
    def queue_len(self) -> int:
        """Frames waiting to be written."""
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """True when nothing waits in the queue and the writer is not handing frames to
        the socket (or waiting for it to drain a large write)."""
        return not self._queue and not self._writing

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

    def broadcast_many(self, frames: list[bytes], size: int, skip: Sequence[int] = ()) -> int:
        """Send or queue several fan-out frames at once, in order, except those at the
        indices in ``skip`` (ascending; the connection's own updates). ``size``: the total
        bytes of what is sent. Overflow as in :meth:`broadcast`. The list is shared with
        other recipients and never changed.

        Returns the bytes written directly (0 when queued or dropped): with nothing queued
        and a socket that takes them, the frames are written now; the caller counts them
        in ``sent_bytes`` (once per fan-out, not once per recipient).
        """
        if self.desynced or self._close_request is not None or self.closed:
            return 0
        queue = self._queue
        # Nothing waits before these frames, and the writer holds none (it hands what it
        # takes to the socket before it awaits anything): writing now keeps the order.
        if not queue and self._write_now is not None and self._write_now(frames, skip):
            return size
        if skip:
            frames = [frame for index, frame in enumerate(frames) if index not in skip]
            if not frames:
                return 0
        if not queue and len(frames) == 1:
            self._push(frames[0])  # a first frame always fits
            return 0
        if (
            len(queue) + len(frames) > self._frames_max
            or self._queue_bytes + size > self._bytes_max
        ):
            self._overflow(hard=self.kind is not PeerKind.REPLICA)
            return 0
        if not queue:
            self._oldest_at = time.monotonic()
            self._wake.set()
        queue.extend(frames)
        self._queue_bytes += size
        return 0

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
                now = time.monotonic()
                waited = now - self._oldest_at
                frames, size = self._next_frames()
                if self._queue:
                    # What stays queued is measured from now on (an underestimate, cheap).
                    self._oldest_at = now
                # Everything queued goes out in one socket write: after a group commit a
                # subscriber has one frame per update waiting, and a write per frame (a
                # syscall, a loopback packet) would cost more than the rest of the fan-out.
                self._writing = True
                if self._send_many is not None:
                    await self._send_many(frames)
                else:
                    for frame in frames:
                        await self._send(frame)
                self._writing = False
                # Metrics per write, not per frame: they are not free either.
                metrics.sent_bytes.inc(size)
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

    def _next_frames(self) -> tuple[list[bytes], int]:
        """Frames for one socket write (whole queue, up to a bound) and their size."""
        queue = self._queue
        if (
            self.kind is not PeerKind.REPLICA
            and len(queue) <= _WRITE_FRAMES_MAX
            and self._queue_bytes <= _WRITE_BYTES_MAX
        ):
            # Nothing to coalesce (extension broadcasts go to replicas only): take it all.
            frames = list(queue)
            size = self._queue_bytes
            queue.clear()
            self._queue_bytes = 0
            return frames, size
        frames = []
        size = 0
        while queue and len(frames) < _WRITE_FRAMES_MAX and size < _WRITE_BYTES_MAX:
            frame = self._next_frame()
            frames.append(frame)
            size += len(frame)
        return frames, size

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
