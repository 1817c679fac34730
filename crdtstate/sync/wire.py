"""Wire format of the relay protocol: Yjs sync frames plus crdtstate's versioned extensions.

Pure and sans-I/O: every function maps bytes to frame objects or back; nothing here reads a
clock, a socket or a file. The byte layout is specified in ``docs/protocol.md``; this module is
its executable form and the two must agree.

Encoding primitives follow lib0 (the encoding y-protocols uses): ``varuint`` is an unsigned
LEB128 integer (7 bits per byte, low group first, high bit = more bytes follow), ``varbytes``
is a varuint length followed by that many bytes, ``varstring`` is varbytes holding UTF-8.

Owns: message and sub-message numbers, error and close codes, frame dataclasses,
``encode``/``decode``, the awareness-update codec the relay needs, and the byte string an
update signature covers (:func:`signing_payload`). Imports only ``crdtstate._ids`` and
``crdtstate.errors``; must not import pycrdt, asyncio, aiohttp or anything above ``sync.wire``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from crdtstate._ids import OpId, ReplicaId, Seq, validate_replica_id
from crdtstate.errors import RemoteProtocolError

__all__ = [
    "EMPTY_UPDATE",
    "PROTOCOL_VERSION",
    "PROTOCOL_VERSION_MIN",
    "Ack",
    "AuthDenied",
    "Awareness",
    "AwarenessEntry",
    "Broadcast",
    "BroadcastBatch",
    "CloseCode",
    "ErrorCode",
    "ErrorFrame",
    "ExtType",
    "Frame",
    "FrameError",
    "Heartbeat",
    "Hello",
    "MessageType",
    "QueryAwareness",
    "ResyncRequired",
    "Snapshot",
    "SyncStep1",
    "SyncStep2",
    "SyncType",
    "SyncUpdate",
    "Update",
    "Welcome",
    "batch_frames",
    "decode",
    "decode_awareness_update",
    "encode",
    "encode_ack",
    "encode_awareness_update",
    "encode_broadcast",
    "encode_sync_update",
    "is_empty_update",
    "negotiate_version",
    "signing_payload",
]

PROTOCOL_VERSION: Final = 1
"""Extension protocol version this code speaks (the highest)."""

PROTOCOL_VERSION_MIN: Final = 1
"""Lowest extension protocol version this code still speaks."""

EMPTY_UPDATE: Final = b"\x00\x00"
"""A Yjs v1 update with no structs and an empty delete set: carries nothing."""

_VARUINT_BYTES_MAX: Final = 8
"""lib0 numbers are JavaScript-safe integers (< 2**53): at most 8 groups of 7 bits."""

_VARUINT_VALUE_MAX: Final = (1 << 53) - 1

_PUBLIC_KEY_LEN: Final = 32
_SIGNATURE_LEN: Final = 64
_ORIGIN_LEN_MAX: Final = 128
_INCARNATION_LEN_MAX: Final = 64
_INSTANCE_LEN_MAX: Final = 64
_MESSAGE_LEN_MAX: Final = 1024
_NO_OP_ID: Final = OpId(0)

_SIGNING_DOMAIN: Final = b"crdtstate/update/v1\x00"
"""Prefix of every signed byte string: a signature over it can never be replayed as a
signature over some other kind of crdtstate message (or another protocol's)."""


class MessageType(enum.IntEnum):
    """First varuint of every frame (y-protocols numbers 0-3, ours 100)."""

    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3
    CRDTSTATE = 100


class SyncType(enum.IntEnum):
    """Second varuint of a :attr:`MessageType.SYNC` frame."""

    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


class ExtType(enum.IntEnum):
    """Second varuint of a :attr:`MessageType.CRDTSTATE` frame."""

    HELLO = 0
    WELCOME = 1
    UPDATE = 2
    ACK = 3
    BROADCAST = 4
    BROADCAST_BATCH = 5
    SNAPSHOT = 6
    RESYNC_REQUIRED = 7
    HEARTBEAT = 8
    ERROR = 9


class ErrorCode(enum.IntEnum):
    """Codes carried by an :class:`ErrorFrame`. Stable: they are part of the protocol."""

    MALFORMED = 1
    """The frame could not be decoded (truncated, bad length, bad UTF-8, bad field)."""
    UNKNOWN_TYPE = 2
    """Unknown message type or extension type."""
    UNSUPPORTED_VERSION = 3
    """The hello's protocol version is outside what the relay speaks."""
    BAD_SIGNATURE = 4
    """The signature does not verify against the replica's registered key."""
    MISSING_SIGNATURE = 5
    """The namespace requires signed updates and this one has none."""
    INVALID_UPDATE = 6
    """The Yjs update bytes cannot be applied."""
    UPDATE_TOO_LARGE = 7
    """The update is larger than the relay's update size limit."""
    RATE_LIMITED = 8
    """The connection or namespace exceeded its update rate."""
    FORBIDDEN = 9
    """The token does not allow this (a write with a read-only token)."""
    QUOTA_EXCEEDED = 10
    """The namespace's document reached its byte quota."""
    NOT_READY = 11
    """An extension update arrived before a hello (or after a resync-required)."""
    IDENTITY_CONFLICT = 12
    """The replica id is bound to another public key."""
    INTERNAL = 13
    """The relay failed to store the update; it was not sequenced. Resend later."""
    OVERLOADED = 14
    """The relay holds too many namespaces or connections; retry later."""


class CloseCode(enum.IntEnum):
    """Websocket close codes the relay uses (RFC 6455 codes and 4000-4999 private ones)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    """The relay is shutting down (drain); reconnect elsewhere or later."""
    MESSAGE_TOO_BIG = 1009
    """A websocket message exceeded the frame size limit (sent by aiohttp itself)."""
    INTERNAL_ERROR = 1011
    """The namespace's storage failed; reconnect later."""
    UNAUTHORIZED = 4001
    """No token, or a token that does not grant access to this namespace."""
    UNSUPPORTED_VERSION = 4002
    """No common extension protocol version."""
    FORBIDDEN = 4003
    """A write with a read-only token (or an unsigned plain Yjs write where refused)."""
    BAD_NAMESPACE = 4004
    """The URL does not name a valid namespace."""
    POLICY = 4008
    """Too many protocol errors on this connection."""
    IDENTITY_CONFLICT = 4009
    """The hello's public key differs from the one bound to its replica id."""
    REPLACED = 4010
    """A newer connection with the same replica id and key took over."""
    TOO_SLOW = 4011
    """A plain Yjs subscriber (or one that stopped reading) overflowed its send queue."""
    OVERLOADED = 4013
    """Too many namespaces or connections; retry later."""


class FrameError(RemoteProtocolError):
    """Bytes that are not a valid frame.

    Attributes:
        code: the :class:`ErrorCode` a relay answers with (``MALFORMED`` or ``UNKNOWN_TYPE``).
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.MALFORMED) -> None:
        super().__init__(message)
        self.code = code


# -- frames -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """y-protocols sync step 1: the sender's state vector; answered with step 2."""

    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """y-protocols sync step 2: everything the step-1 sender lacks."""

    update: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    """y-protocols incremental update."""

    update: bytes


@dataclass(frozen=True, slots=True)
class Awareness:
    """y-protocols awareness update (opaque here; see :func:`decode_awareness_update`)."""

    update: bytes


@dataclass(frozen=True, slots=True)
class AuthDenied:
    """y-protocols auth message, permission denied, with a reason for a person."""

    reason: str


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    """y-protocols query-awareness: asks for every known awareness state."""


@dataclass(frozen=True, slots=True)
class Hello:
    """Replica -> relay: opens the crdtstate extension on this connection.

    Attributes:
        version: highest extension protocol version the replica speaks.
        replica_id: stable id of the replica.
        public_key: raw 32-byte ed25519 public key to bind to ``replica_id``.
        last_seq: highest relay sequence number the replica has applied (0 = none).
        state_vector: the replica document's encoded Yjs state vector.
        incarnation: namespace incarnation id the replica last saw ("" = never connected).
        instance: random id of this process run of the replica; lets the relay tell a quick
            restart (new instance) from two live copies fighting over one replica id.
    """

    version: int
    replica_id: ReplicaId
    public_key: bytes
    last_seq: Seq
    state_vector: bytes
    incarnation: str
    instance: str


@dataclass(frozen=True, slots=True)
class Welcome:
    """Relay -> replica: answer to a hello; catch-up frames follow it.

    Attributes:
        version: the extension protocol version used from now on.
        head_seq: the namespace's highest durable sequence number when the hello was handled.
        incarnation: random id created with the namespace's storage. A replica seeing a
            different one than it last saw knows the relay lost state.
    """

    version: int
    head_seq: Seq
    incarnation: str


@dataclass(frozen=True, slots=True)
class Update:
    """Replica -> relay: one local write.

    Attributes:
        op_id: the replica's id of the write (> 0), or 0 for a state-repair update that is
            sequenced without deduplication.
        signature: 64-byte ed25519 signature over :func:`signing_payload`, or b"" (unsigned).
        update: the Yjs v1 update.
    """

    op_id: OpId
    signature: bytes
    update: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """Relay -> replica: update ``op_id`` is durably sequenced as ``seq``.

    ``duplicate`` is true when the update had been sequenced before; ``seq`` is then the
    original sequence number.
    """

    op_id: OpId
    seq: Seq
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Relay -> replica: the update sequenced as ``seq``, written by ``origin``.

    ``origin`` is a replica id, or ``yjs:<connection id>`` for a plain Yjs client.
    """

    seq: Seq
    origin: str
    update: bytes


@dataclass(frozen=True, slots=True)
class BroadcastBatch:
    """Relay -> replica: consecutive broadcasts coalesced into one frame, in seq order."""

    entries: tuple[Broadcast, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Relay -> replica: catch-up by state: ``update`` brings the replica to seq ``seq``.

    It is the relay document's diff against the state vector of the hello, so it holds
    every update up to ``seq`` the replica lacked (possibly a little more; applying again
    what is already there is harmless in Yjs).
    """

    seq: Seq
    update: bytes


@dataclass(frozen=True, slots=True)
class ResyncRequired:
    """Relay -> replica: the relay stopped sending broadcasts (the replica's send queue
    overflowed); send a new hello on this connection to catch up again."""

    head_seq: Seq
    reason: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Replica -> relay: JSON object (UTF-8 text) describing the replica's health."""

    payload: str


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """Relay -> replica: something the replica sent was refused.

    ``op_id`` names the refused update (0 when the error is not about an update).
    """

    code: int
    message: str
    op_id: OpId = _NO_OP_ID


Frame = (
    SyncStep1
    | SyncStep2
    | SyncUpdate
    | Awareness
    | AuthDenied
    | QueryAwareness
    | Hello
    | Welcome
    | Update
    | Ack
    | Broadcast
    | BroadcastBatch
    | Snapshot
    | ResyncRequired
    | Heartbeat
    | ErrorFrame
)
"""Every frame :func:`decode` returns and :func:`encode` accepts."""


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's state inside an awareness update.

    ``state`` is JSON text; ``"null"`` means the client went away.
    """

    client_id: int
    clock: int
    state: str


# -- lib0 primitives -----------------------------------------------------------------------


_ONE_BYTE: Final = tuple(bytes((value,)) for value in range(0x80))
"""Encodings of 0..127 (lengths of small updates, most seqs' low values): no allocation."""


def _varuint(value: int) -> bytes:
    if value < 0x80:
        if value < 0:
            raise ValueError(f"varuint cannot encode negative {value}")
        return _ONE_BYTE[value]
    if value > _VARUINT_VALUE_MAX:
        raise ValueError(f"varuint {value} exceeds 2**53-1")
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _varbytes(data: bytes) -> bytes:
    return _varuint(len(data)) + data


def _varstring(text: str) -> bytes:
    return _varbytes(text.encode("utf-8"))


class _Reader:
    """Cursor over a frame; every read checks bounds and raises :class:`FrameError`."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varuint(self, what: str) -> int:
        data = self.data
        pos = self.pos
        result = 0
        shift = 0
        for count in range(_VARUINT_BYTES_MAX):
            if pos >= len(data):
                raise FrameError(f"truncated frame: {what} ends after {count} byte(s)")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                if result > _VARUINT_VALUE_MAX:
                    raise FrameError(f"{what} exceeds 2**53-1")
                return result
            shift += 7
        raise FrameError(f"{what} is longer than {_VARUINT_BYTES_MAX} bytes")

    def varbytes(self, what: str, max_len: int | None = None) -> bytes:
        length = self.varuint(f"length of {what}")
        remaining = len(self.data) - self.pos
        if length > remaining:
            raise FrameError(
                f"truncated frame: {what} claims {length} bytes, only {remaining} remain"
            )
        if max_len is not None and length > max_len:
            raise FrameError(f"{what} is {length} bytes, at most {max_len} allowed")
        start = self.pos
        self.pos = start + length
        return self.data[start : self.pos]

    def varstring(self, what: str, max_len: int | None = None) -> str:
        raw = self.varbytes(what, max_len)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError(f"{what} is not valid UTF-8") from exc

    def rest(self) -> int:
        return len(self.data) - self.pos

    def end(self, what: str) -> None:
        if self.pos != len(self.data):
            raise FrameError(f"{what} frame has {self.rest()} unexpected trailing byte(s)")


# -- encoding -------------------------------------------------------------------------------

_SYNC = bytes((MessageType.SYNC,))
_EXT = bytes((MessageType.CRDTSTATE,))
_EXT_BROADCAST_HEADER: Final = _EXT + bytes((ExtType.BROADCAST,))
_EXT_BATCH_HEADER: Final = _EXT + bytes((ExtType.BROADCAST_BATCH,))
_EXT_ACK_HEADER: Final = _EXT + bytes((ExtType.ACK,))
_SYNC_UPDATE_HEADER: Final = _SYNC + bytes((SyncType.UPDATE,))


def encode_broadcast(seq: int, origin: str, update: bytes) -> bytes:
    """Encode a :class:`Broadcast` frame (the relay's hot path: no dataclass needed)."""
    return b"".join(
        (_EXT_BROADCAST_HEADER, _varuint(seq), _varstring(origin), _varuint(len(update)), update)
    )


def encode_sync_update(update: bytes) -> bytes:
    """Encode a y-protocols sync update frame (what plain Yjs clients receive)."""
    return b"".join((_SYNC_UPDATE_HEADER, _varuint(len(update)), update))


def encode_ack(op_id: int, seq: int, duplicate: bool = False) -> bytes:
    """Encode an :class:`Ack` frame."""
    return b"".join(
        (_EXT_ACK_HEADER, _varuint(op_id), _varuint(seq), b"\x01" if duplicate else b"\x00")
    )


def batch_frames(broadcast_frames: Sequence[bytes]) -> bytes:
    """Coalesce already-encoded broadcast frames into one :class:`BroadcastBatch` frame.

    The batch body is the broadcast bodies back to back, so the relay builds it by slicing
    the bytes it already encoded for other subscribers, never re-encoding an update.

    Args:
        broadcast_frames: frames made by :func:`encode_broadcast`, in seq order.

    Returns:
        One frame; the frame itself when there is exactly one.

    Raises:
        ValueError: a frame is not a broadcast frame, or the sequence is empty.
    """
    if not broadcast_frames:
        raise ValueError("batch_frames needs at least one broadcast frame")
    if len(broadcast_frames) == 1:
        return broadcast_frames[0]
    header_len = len(_EXT_BROADCAST_HEADER)
    parts = [_EXT_BATCH_HEADER, _varuint(len(broadcast_frames))]
    for frame in broadcast_frames:
        if frame[:header_len] != _EXT_BROADCAST_HEADER:
            raise ValueError("batch_frames accepts only frames made by encode_broadcast")
        parts.append(frame[header_len:])
    return b"".join(parts)


def _ext(ext_type: ExtType, *parts: bytes) -> bytes:
    return b"".join((_EXT, bytes((ext_type,)), *parts))


def _broadcast_body(entry: Broadcast) -> bytes:
    return b"".join((_varuint(entry.seq), _varstring(entry.origin), _varbytes(entry.update)))


def encode(frame: Frame) -> bytes:
    """Encode any frame to the bytes of one websocket binary message.

    Raises:
        ValueError: a field is out of range (negative number, oversize string).
        TypeError: ``frame`` is not a frame.
    """
    match frame:
        case SyncStep1(state_vector=sv):
            return b"".join((_SYNC, bytes((SyncType.STEP1,)), _varbytes(sv)))
        case SyncStep2(update=update):
            return b"".join((_SYNC, bytes((SyncType.STEP2,)), _varbytes(update)))
        case SyncUpdate(update=update):
            return encode_sync_update(update)
        case Awareness(update=update):
            return bytes((MessageType.AWARENESS,)) + _varbytes(update)
        case AuthDenied(reason=reason):
            # y-protocols auth: varuint 0 = permission denied, then the reason.
            return bytes((MessageType.AUTH, 0)) + _varstring(reason)
        case QueryAwareness():
            return bytes((MessageType.QUERY_AWARENESS,))
        case Hello():
            if len(frame.public_key) != _PUBLIC_KEY_LEN:
                raise ValueError(f"public_key must be {_PUBLIC_KEY_LEN} bytes")
            return _ext(
                ExtType.HELLO,
                _varuint(frame.version),
                _varstring(frame.replica_id),
                _varbytes(frame.public_key),
                _varuint(frame.last_seq),
                _varbytes(frame.state_vector),
                _varstring(frame.incarnation),
                _varstring(frame.instance),
            )
        case Welcome():
            return _ext(
                ExtType.WELCOME,
                _varuint(frame.version),
                _varuint(frame.head_seq),
                _varstring(frame.incarnation),
            )
        case Update():
            if len(frame.signature) not in (0, _SIGNATURE_LEN):
                raise ValueError(f"signature must be empty or {_SIGNATURE_LEN} bytes")
            return _ext(
                ExtType.UPDATE,
                _varuint(frame.op_id),
                _varbytes(frame.signature),
                _varbytes(frame.update),
            )
        case Ack():
            return encode_ack(frame.op_id, frame.seq, frame.duplicate)
        case Broadcast():
            return encode_broadcast(frame.seq, frame.origin, frame.update)
        case BroadcastBatch(entries=entries):
            return _ext(
                ExtType.BROADCAST_BATCH,
                _varuint(len(entries)),
                *(_broadcast_body(e) for e in entries),
            )
        case Snapshot():
            return _ext(ExtType.SNAPSHOT, _varuint(frame.seq), _varbytes(frame.update))
        case ResyncRequired():
            return _ext(ExtType.RESYNC_REQUIRED, _varuint(frame.head_seq), _varstring(frame.reason))
        case Heartbeat():
            return _ext(ExtType.HEARTBEAT, _varstring(frame.payload))
        case ErrorFrame():
            return _ext(
                ExtType.ERROR,
                _varuint(frame.code),
                _varstring(frame.message[:_MESSAGE_LEN_MAX]),
                _varuint(frame.op_id),
            )
    raise TypeError(f"not a frame: {type(frame).__name__}")


# -- decoding -------------------------------------------------------------------------------


def decode(data: bytes) -> Frame:
    """Decode one websocket binary message.

    y-protocols frames (types 0-3) ignore trailing bytes, as y-protocols' own readers do;
    extension frames (type 100) must be exact.

    Raises:
        FrameError: the bytes are not a frame; ``code`` says whether the frame was
            malformed or of an unknown type, the message says what was wrong.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(f"frame must be bytes, got {type(data).__name__}")
    reader = _Reader(bytes(data))
    if not reader.data:
        raise FrameError("empty frame")
    msg_type = reader.varuint("message type")
    if msg_type == MessageType.CRDTSTATE:
        return _decode_ext(reader)
    if msg_type == MessageType.SYNC:
        sync_type = reader.varuint("sync message type")
        if sync_type == SyncType.STEP1:
            return SyncStep1(reader.varbytes("state vector"))
        if sync_type == SyncType.STEP2:
            return SyncStep2(reader.varbytes("sync step 2 update"))
        if sync_type == SyncType.UPDATE:
            return SyncUpdate(reader.varbytes("sync update"))
        raise FrameError(f"unknown sync message type {sync_type}", ErrorCode.UNKNOWN_TYPE)
    if msg_type == MessageType.AWARENESS:
        return Awareness(reader.varbytes("awareness update"))
    if msg_type == MessageType.AUTH:
        auth_type = reader.varuint("auth message type")
        if auth_type != 0:
            raise FrameError(f"unknown auth message type {auth_type}", ErrorCode.UNKNOWN_TYPE)
        return AuthDenied(reader.varstring("auth reason"))
    if msg_type == MessageType.QUERY_AWARENESS:
        return QueryAwareness()
    raise FrameError(f"unknown message type {msg_type}", ErrorCode.UNKNOWN_TYPE)


def _read_broadcast(reader: _Reader) -> Broadcast:
    seq = reader.varuint("seq")
    origin = reader.varstring("origin", _ORIGIN_LEN_MAX)
    update = reader.varbytes("update")
    return Broadcast(Seq(seq), origin, update)


def _decode_ext(reader: _Reader) -> Frame:
    ext_type = reader.varuint("crdtstate message type")
    frame: Frame
    if ext_type == ExtType.HELLO:
        version = reader.varuint("version")
        replica_text = reader.varstring("replica id", 64)
        try:
            replica_id = validate_replica_id(replica_text)
        except ValueError as exc:
            raise FrameError(str(exc)) from exc
        public_key = reader.varbytes("public key", _PUBLIC_KEY_LEN)
        if len(public_key) != _PUBLIC_KEY_LEN:
            raise FrameError(f"public key is {len(public_key)} bytes, expected {_PUBLIC_KEY_LEN}")
        frame = Hello(
            version=version,
            replica_id=replica_id,
            public_key=public_key,
            last_seq=Seq(reader.varuint("last seq")),
            state_vector=reader.varbytes("state vector"),
            incarnation=reader.varstring("incarnation", _INCARNATION_LEN_MAX),
            instance=reader.varstring("instance", _INSTANCE_LEN_MAX),
        )
    elif ext_type == ExtType.WELCOME:
        frame = Welcome(
            version=reader.varuint("version"),
            head_seq=Seq(reader.varuint("head seq")),
            incarnation=reader.varstring("incarnation", _INCARNATION_LEN_MAX),
        )
    elif ext_type == ExtType.UPDATE:
        op_id = OpId(reader.varuint("op id"))
        signature = reader.varbytes("signature", _SIGNATURE_LEN)
        if len(signature) not in (0, _SIGNATURE_LEN):
            raise FrameError(f"signature is {len(signature)} bytes, expected 0 or {_SIGNATURE_LEN}")
        frame = Update(op_id, signature, reader.varbytes("update"))
    elif ext_type == ExtType.ACK:
        op_id = OpId(reader.varuint("op id"))
        seq = Seq(reader.varuint("seq"))
        flags = reader.varuint("ack flags")
        if flags > 1:
            raise FrameError(f"unknown ack flags {flags}")
        frame = Ack(op_id, seq, bool(flags))
    elif ext_type == ExtType.BROADCAST:
        frame = _read_broadcast(reader)
    elif ext_type == ExtType.BROADCAST_BATCH:
        count = reader.varuint("batch count")
        # Each entry takes at least 3 bytes: refuse counts the frame cannot hold before
        # allocating anything for them.
        if count * 3 > reader.rest():
            raise FrameError(f"batch claims {count} entries, frame too short")
        frame = BroadcastBatch(tuple(_read_broadcast(reader) for _ in range(count)))
    elif ext_type == ExtType.SNAPSHOT:
        frame = Snapshot(Seq(reader.varuint("seq")), reader.varbytes("snapshot update"))
    elif ext_type == ExtType.RESYNC_REQUIRED:
        frame = ResyncRequired(
            Seq(reader.varuint("head seq")), reader.varstring("reason", _MESSAGE_LEN_MAX)
        )
    elif ext_type == ExtType.HEARTBEAT:
        frame = Heartbeat(reader.varstring("heartbeat payload"))
    elif ext_type == ExtType.ERROR:
        frame = ErrorFrame(
            code=reader.varuint("error code"),
            message=reader.varstring("error message", _MESSAGE_LEN_MAX * 4),
            op_id=OpId(reader.varuint("op id")),
        )
    else:
        raise FrameError(f"unknown crdtstate message type {ext_type}", ErrorCode.UNKNOWN_TYPE)
    reader.end(ExtType(ext_type).name.lower())
    return frame


# -- awareness ------------------------------------------------------------------------------


def decode_awareness_update(data: bytes, entries_max: int = 1024) -> list[AwarenessEntry]:
    """Decode the payload of an :class:`Awareness` frame (y-protocols awareness update).

    Layout: varuint count, then per client: varuint client id, varuint clock, varstring
    state (JSON text, ``null`` when the client left).

    Raises:
        FrameError: malformed payload or more than ``entries_max`` entries.
    """
    reader = _Reader(bytes(data))
    count = reader.varuint("awareness entry count")
    if count > entries_max:
        raise FrameError(f"awareness update has {count} entries, at most {entries_max}")
    if count * 3 > reader.rest():
        raise FrameError(f"awareness update claims {count} entries, payload too short")
    entries = []
    for _ in range(count):
        client_id = reader.varuint("awareness client id")
        clock = reader.varuint("awareness clock")
        state = reader.varstring("awareness state")
        entries.append(AwarenessEntry(client_id, clock, state))
    return entries


def encode_awareness_update(entries: Iterable[AwarenessEntry]) -> bytes:
    """Encode awareness entries into an awareness update payload."""
    items = list(entries)
    parts = [_varuint(len(items))]
    for entry in items:
        parts.append(_varuint(entry.client_id))
        parts.append(_varuint(entry.clock))
        parts.append(_varstring(entry.state))
    return b"".join(parts)


# -- helpers ----------------------------------------------------------------------------------


def signing_payload(namespace: str, replica_id: str, op_id: int, update: bytes) -> bytes:
    """The exact bytes an update's ed25519 signature covers.

    ``b"crdtstate/update/v1\\x00" || varstring(namespace) || varstring(replica_id) ||
    varuint(op_id) || varbytes(update)``: the domain prefix keeps the signature from meaning
    anything elsewhere, and length prefixes make the concatenation unambiguous. The
    namespace and replica id stop a signed update from being replayed into another
    namespace or under another replica's name.
    """
    return b"".join(
        (
            _SIGNING_DOMAIN,
            _varstring(namespace),
            _varstring(replica_id),
            _varuint(op_id),
            _varbytes(update),
        )
    )


def negotiate_version(offered: int) -> int | None:
    """The version to speak with a peer whose highest version is ``offered``, or None."""
    if offered < PROTOCOL_VERSION_MIN:
        return None
    return min(offered, PROTOCOL_VERSION)


def is_empty_update(update: bytes) -> bool:
    """True when ``update`` is the canonical empty Yjs update (nothing to sequence)."""
    return update == EMPTY_UPDATE
