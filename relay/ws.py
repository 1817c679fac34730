"""The websocket endpoint ``/yjs/<namespace>``: authenticate, then dispatch frames.

One reader loop per connection decodes each binary message with ``crdtstate.sync.wire`` and
hands it to the namespace; replies and fan-out go through the connection's
:class:`~relay.peer.Peer` queue, written by its writer task (fan-out to an idle connection is
written at once). Frames are written to the transport as raw websocket frames, everything
waiting in one write (permessage-deflate is never negotiated). Nothing a client sends raises out
of here: a bad frame becomes an error frame (counted in ``/metrics``) and, for the refusals
documented in ``docs/protocol.md``, a close with a documented code.

Must not import ``crdtstate.sync.client`` or ``crdtstate.replica``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
from collections.abc import Sequence
from typing import Final

from aiohttp import WSMsgType, web

from crdtstate._ids import Namespace, OpId, validate_namespace
from crdtstate.sync import wire
from relay.auth import Authorizer, token_from_request
from relay.backend.base import BackendError
from relay.config import RelaySettings
from relay.hub import Hub, LiveNamespace, OverloadedError, Refusal
from relay.keys import AUTHORIZER, HUB, METRICS, SETTINGS
from relay.metrics import RelayMetrics
from relay.peer import Peer, PeerKind

__all__ = ["handle_websocket"]

_log = logging.getLogger("relay.ws")

_WRITER_STOP_TIMEOUT_S: Final = 6.0
_CLOSE_TIMEOUT_S: Final = 5.0
"""How long a close waits for the client's close frame."""
_DRAIN_ABOVE: Final = 256 * 1024
"""Bytes waiting in the socket's buffer above which the writer waits for it to drain."""
_BINARY_FIN: Final = 0x82
_SYNC: Final = int(wire.MessageType.SYNC)
_SYNC_STEP2: Final = int(wire.SyncType.STEP2)
_SYNC_UPDATE: Final = int(wire.SyncType.UPDATE)
_PACK_LEN16: Final = struct.Struct("!BBH").pack
_PACK_LEN64: Final = struct.Struct("!BBQ").pack
_SMALL_HEADERS: Final = tuple(bytes((_BINARY_FIN, size)) for size in range(126))
_MEMO_BYTES_MAX: Final = 256 * 1024
"""Largest write kept for the next subscriber (not a catch-up snapshot held for nothing)."""


def _frame_header(size: int) -> bytes:
    """RFC 6455 header of an unmasked, unfragmented binary frame (server to client)."""
    if size < 126:
        return _SMALL_HEADERS[size]
    if size < 65536:
        return _PACK_LEN16(_BINARY_FIN, 126, size)
    return _PACK_LEN64(_BINARY_FIN, 127, size)


class _LastEncoded:
    """The frames last put on the wire, their bytes and where each frame ends in them:
    fan-out hands one list to every subscriber, so the batch is framed once, not once per
    subscriber, and a subscriber that sent some of its updates gets the same bytes with
    those frames cut out. Lists given to :func:`_on_the_wire` are never changed afterwards
    (the hub and the peers build a new list for every write); holding the last one keeps
    its identity from being reused."""

    frames: list[bytes] | None = None
    data = b""
    ends: list[int] = []


def _encode(frames: list[bytes]) -> tuple[bytes, list[int]]:
    """``frames`` as websocket frames, back to back, and the end offset of each."""
    parts: list[bytes] = []
    append = parts.append
    ends: list[int] = []
    end = 0
    for frame in frames:
        size = len(frame)
        header = _SMALL_HEADERS[size] if size < 126 else _frame_header(size)
        append(header)
        append(frame)
        end += len(header) + size
        ends.append(end)
    return b"".join(parts), ends


def _on_the_wire(frames: list[bytes], skip: Sequence[int] = ()) -> bytes:
    """``frames`` as websocket frames, back to back (one transport write), leaving out the
    frames at the indices in ``skip`` (ascending): a sender's own updates.

    Cutting byte ranges out of the batch framed once keeps the per-subscriber work
    constant; filtering and framing the rest per subscriber grew with the batch, which is
    most of the fan-out cost with many writers."""
    if frames is _LastEncoded.frames:
        data, ends = _LastEncoded.data, _LastEncoded.ends
    elif len(frames) == 1 and not skip:
        frame = frames[0]
        return _frame_header(len(frame)) + frame
    else:
        data, ends = _encode(frames)
        if len(data) <= _MEMO_BYTES_MAX:
            _LastEncoded.frames = frames
            _LastEncoded.data = data
            _LastEncoded.ends = ends
    if not skip:
        return data
    view = memoryview(data)
    kept: list[memoryview] = []
    start = 0
    for index in skip:
        kept.append(view[start : ends[index - 1] if index else 0])
        start = ends[index]
    kept.append(view[start:])
    return b"".join(kept)


async def handle_websocket(request: web.Request) -> web.StreamResponse:
    """aiohttp handler of ``GET /yjs/{namespace}``."""
    settings: RelaySettings = request.app[SETTINGS]
    hub: Hub = request.app[HUB]
    metrics: RelayMetrics = request.app[METRICS]
    authorizer: Authorizer = request.app[AUTHORIZER]
    limits = settings.limits
    if hub.draining:
        raise web.HTTPServiceUnavailable(text="relay is shutting down")
    ws = web.WebSocketResponse(
        max_msg_size=limits.frame_bytes_max,
        # permessage-deflate off: CPU per edit matters more than bytes for small updates.
        compress=False,
        heartbeat=limits.ws_heartbeat_s,
        autoping=True,
        timeout=_CLOSE_TIMEOUT_S,
    )
    await ws.prepare(request)
    try:
        namespace = validate_namespace(request.match_info["namespace"])
    except ValueError as exc:
        metrics.reject("bad_namespace")
        await ws.close(code=wire.CloseCode.BAD_NAMESPACE, message=str(exc)[:120].encode())
        return ws
    access = authorizer.access_for(namespace, token_from_request(request.query, request.headers))
    if access is None:
        metrics.reject("unauthorized")
        await _refuse(ws, wire.CloseCode.UNAUTHORIZED, "no token with access to this namespace")
        return ws
    if hub.connections >= limits.connections_max:
        metrics.reject("overloaded")
        await _refuse(ws, wire.CloseCode.OVERLOADED, "too many connections")
        return ws
    try:
        live = await hub.acquire(namespace)
    except OverloadedError as exc:
        metrics.reject("overloaded")
        await _refuse(ws, wire.CloseCode.OVERLOADED, str(exc))
        return ws
    except BackendError as exc:
        _log.error("namespace load failed", extra={"namespace": namespace, "error": str(exc)})
        await ws.close(code=wire.CloseCode.INTERNAL_ERROR, message=b"namespace unavailable")
        return ws

    async def send(frame: bytes) -> None:
        await ws.send_bytes(frame)

    transport = request.transport
    payload_writer = request.writer

    def write(frames: list[bytes], skip: Sequence[int] = ()) -> None:
        # Frames are encoded here and written to the transport in one call (one syscall,
        # usually one packet) instead of one ``send_bytes`` each: per-recipient sending is
        # most of a relay's work. Safe beside aiohttp's own writes (pings, close) because
        # compression is off, so every write is a whole frame, and nothing is written once
        # the websocket is closing (callers check).
        assert transport is not None
        transport.write(_on_the_wire(frames, skip))

    async def send_many(frames: list[bytes]) -> None:
        if ws.closed or transport is None or transport.is_closing():
            raise ConnectionResetError("websocket is closing")
        write(frames)
        if transport.get_write_buffer_size() > _DRAIN_ABOVE:
            await payload_writer.drain()  # waits while the socket is paused for writing

    def write_now(frames: list[bytes], skip: Sequence[int] = ()) -> bool:
        if (
            ws.closed
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > _DRAIN_ABOVE
        ):
            return False
        write(frames, skip)
        return True

    async def close(code: int, reason: str) -> None:
        await ws.close(code=code, message=reason.encode()[:120])

    peer = Peer(
        secrets.token_hex(4),
        access,
        send,
        close,
        limits,
        metrics,
        send_many=send_many,
        write_now=write_now,
    )
    hub.connections += 1
    metrics.connections.labels("pending").inc()
    writer = asyncio.create_task(peer.run_writer(), name=f"writer:{peer.conn_id}")
    live.attach(peer)
    try:
        await _read_loop(ws, hub, live, peer, metrics, settings, namespace)
    except (TimeoutError, ConnectionError) as exc:
        _log.debug("connection lost", extra={"conn": peer.conn_id, "error": str(exc)})
    finally:
        # Let the writer finish its close handshake before the peer leaves the namespace:
        # a drain waits for every peer to be gone before the server stops.
        peer.request_close(wire.CloseCode.NORMAL, "")
        try:
            await asyncio.wait_for(asyncio.shield(writer), _WRITER_STOP_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close(code=wire.CloseCode.NORMAL)
        live.detach(peer)
        hub.release(live)
        hub.connections -= 1
        metrics.connections.labels(peer.kind.value).dec()
    return ws


async def _refuse(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_bytes(wire.encode(wire.AuthDenied(reason)))
        await ws.close(code=code, message=reason.encode()[:120])


async def _read_loop(
    ws: web.WebSocketResponse,
    hub: Hub,
    live: LiveNamespace,
    peer: Peer,
    metrics: RelayMetrics,
    settings: RelaySettings,
    namespace: Namespace,
) -> None:
    errors_max = settings.limits.errors_per_connection_max
    async for msg in ws:
        if peer.closing or hub.draining or live.failed:
            # Frames after a refusal, a takeover or the start of a drain are not acted on;
            # an unacknowledged update is resent by the replica elsewhere or later.
            if peer.closed:
                break
            continue
        if msg.type is WSMsgType.BINARY:
            refusal = await _dispatch(live, peer, msg.data)
        elif msg.type is WSMsgType.TEXT:
            refusal = Refusal(
                wire.ErrorCode.MALFORMED, "text messages are not frames; send binary", "malformed"
            )
        else:
            # CLOSE / CLOSING / CLOSED / ERROR (including a frame above the size limit,
            # which aiohttp answers by closing with 1009).
            if msg.type is WSMsgType.ERROR:
                code = getattr(msg.data, "code", None) or ws.close_code
                too_big = code == wire.CloseCode.MESSAGE_TOO_BIG
                metrics.reject("frame_too_large" if too_big else "ws_error")
            break
        if refusal is not None:
            _refused(peer, refusal, metrics, errors_max, namespace)
        elif live.sequencer.full:
            # Backpressure: stop reading this socket until the commit queue has room.
            await live.sequencer.wait_room()


def _refused(
    peer: Peer, refusal: Refusal, metrics: RelayMetrics, errors_max: int, namespace: str
) -> None:
    metrics.reject(refusal.reason)
    peer.errors += 1
    # Refusals that close the connection are worth a line; the others are counted in
    # /metrics and logged at debug, so a flood of bad frames cannot flood the log.
    _log.log(
        logging.INFO if refusal.close is not None else logging.DEBUG,
        "frame refused",
        extra={
            "namespace": namespace,
            "conn": peer.conn_id,
            "replica": peer.replica_id,
            "reason": refusal.reason,
            "detail": refusal.message,
        },
    )
    if peer.kind is PeerKind.YJS:
        # Plain Yjs clients cannot read error frames: a refused write is an auth denial.
        if refusal.close is not None:
            peer.send(wire.encode(wire.AuthDenied(refusal.message)))
            peer.request_close(refusal.close, refusal.message)
    else:
        peer.send(wire.encode(wire.ErrorFrame(refusal.code, refusal.message, refusal.op_id)))
        if refusal.close is not None:
            peer.request_close(refusal.close, refusal.message)
    if peer.errors > errors_max and not peer.closing:
        peer.request_close(wire.CloseCode.POLICY, "too many protocol errors")


def _sync_update(data: bytes) -> bytes | None:
    """The update carried by a sync update or sync step 2 frame whose length takes one or two
    varuint bytes, read without building a frame object; None for anything else (then
    ``wire.decode`` decides, errors included). Trailing bytes are ignored, as there."""
    if len(data) < 3 or data[0] != _SYNC or (data[1] != _SYNC_UPDATE and data[1] != _SYNC_STEP2):
        return None
    length = data[2]
    start = 3
    if length >= 0x80:
        if len(data) < 4 or data[3] >= 0x80:
            return None
        length = (length & 0x7F) | (data[3] << 7)
        start = 4
    end = start + length
    if end > len(data):
        return None
    return bytes(data[start:end])


async def _dispatch(live: LiveNamespace, peer: Peer, data: bytes) -> Refusal | None:
    update = _sync_update(data)
    if update is not None:
        # The hot path (every edit of a plain Yjs client), same as the match arm below.
        if wire.is_empty_update(update):
            return None
        live.mark_yjs(peer)
        return live.accept_update(peer, update, OpId(0), b"", False)
    try:
        frame = wire.decode(data)
    except wire.FrameError as exc:
        reason = "unknown_type" if exc.code is wire.ErrorCode.UNKNOWN_TYPE else "malformed"
        return Refusal(exc.code, str(exc), reason)
    match frame:
        case wire.Update(op_id=op_id, signature=signature, update=update):
            if peer.kind is not PeerKind.REPLICA:
                return Refusal(
                    wire.ErrorCode.NOT_READY,
                    "send a hello before updates",
                    "not_ready",
                    None,
                    op_id,
                )
            return live.accept_update(peer, update, op_id, signature, True)
        case wire.SyncUpdate(update=update) | wire.SyncStep2(update=update):
            if wire.is_empty_update(update):
                return None
            live.mark_yjs(peer)
            return live.accept_update(peer, update, OpId(0), b"", False)
        case wire.SyncStep1(state_vector=state_vector):
            return live.answer_step1(peer, state_vector)
        case wire.Hello():
            return await live.hello(peer, frame)
        case wire.Awareness(update=payload):
            return live.awareness(peer, data, payload)
        case wire.QueryAwareness():
            live.query_awareness(peer)
            return None
        case wire.Heartbeat(payload=payload):
            return await live.heartbeat(peer, payload)
        case wire.AuthDenied():
            return None
    return Refusal(
        wire.ErrorCode.UNKNOWN_TYPE,
        f"{type(frame).__name__} frames are sent by the relay, not to it",
        "unknown_type",
    )
