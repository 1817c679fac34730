"""Sans-I/O sync session: the replica side of the relay protocol as a state machine.

Like h11 or pycrdt's ``_sync.py``, this module never touches a socket, a clock or a thread:
the client feeds it what arrived (:meth:`SyncSession.receive`) and the current time, and sends
the frames it returns. The session drives the replica only through
:class:`~crdtstate.sync.target.SyncTarget`: it applies catch-up and broadcasts, records the
applied sequence number, sends durable outbox entries (signed), forwards acks, resends after a
reconnect, and falls back to a state-vector sync when it sees a gap or a relay that lost state.

One session lives across reconnects of one client; :meth:`SyncSession.connection_made` starts
each connection over. Imports ``sync.wire``, ``sync.target``, ids and errors; must not import
asyncio, aiohttp, pycrdt, the store or the replica.
"""

from __future__ import annotations

import enum
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from crdtstate._ids import OpId, Seq
from crdtstate.errors import AuthError, CrdtStateError, InvalidUpdate, ProtocolError, StoreError
from crdtstate.sync import wire
from crdtstate.sync.target import SyncTarget

__all__ = [
    "Acked",
    "ConnectionState",
    "Event",
    "Fatal",
    "Rejected",
    "StoreFailed",
    "SyncSession",
    "SyncSettings",
]

_TRANSIENT_ERRORS: Final = frozenset(
    {
        wire.ErrorCode.RATE_LIMITED,
        wire.ErrorCode.INTERNAL,
        wire.ErrorCode.QUOTA_EXCEEDED,
        wire.ErrorCode.NOT_READY,
        wire.ErrorCode.OVERLOADED,
    }
)
_FATAL_ERRORS: Final = {
    wire.ErrorCode.FORBIDDEN: AuthError,
    wire.ErrorCode.IDENTITY_CONFLICT: AuthError,
    wire.ErrorCode.UNSUPPORTED_VERSION: ProtocolError,
}


class ConnectionState(enum.Enum):
    """Where a sync client stands with the relay."""

    DISCONNECTED = "disconnected"
    """Not connected (before the first attempt, or waiting to reconnect)."""
    CONNECTING = "connecting"
    """Opening a connection."""
    HANDSHAKE = "handshake"
    """Hello sent, waiting for the welcome."""
    CATCHING_UP = "catching_up"
    """Welcomed; applying what the relay had before the welcome."""
    LIVE = "live"
    """Caught up with the relay's head as of the welcome; receiving live broadcasts."""
    STOPPED = "stopped"
    """Stopped by the owner."""
    FAILED = "failed"
    """Refused for good (credentials, identity, version); see ``last_error``."""


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """Tuning of the sync client. Units in the names.

    Attributes:
        window: most updates sent and not yet acknowledged.
        heartbeat_interval_s: how often a heartbeat is sent while connected.
        heartbeat_min_interval_s: least time between two heartbeats; within that limit one
            is also sent as soon as the replica goes live and after its applied sequence
            number or acknowledged writes change, so drift views show a caught-up replica
            as caught up without waiting for the periodic one.
        resend_delay_s: wait before resending an update refused for a transient reason,
            and before asking the relay again for updates the local store refused.
        backoff_s_initial: first reconnect delay.
        backoff_s_max: cap of the reconnect delay.
        backoff_jitter: fraction of the delay randomized away (0..1).
        connect_timeout_s: limit on opening one connection.
        ws_heartbeat_s: websocket ping interval (detects dead connections).
        frame_bytes_max: largest frame accepted from the relay.
        acked_remember_max: how many (op id -> seq) acks are kept for ``wait_acked``.
        instance: id of this process run (random by default).
    """

    window: int = 256
    heartbeat_interval_s: float = 10.0
    heartbeat_min_interval_s: float = 0.5
    resend_delay_s: float = 0.5
    backoff_s_initial: float = 0.1
    backoff_s_max: float = 10.0
    backoff_jitter: float = 0.5
    connect_timeout_s: float = 10.0
    ws_heartbeat_s: float = 20.0
    frame_bytes_max: int = 256 * 1024 * 1024
    acked_remember_max: int = 65536
    instance: str = field(default_factory=lambda: secrets.token_hex(8))


@dataclass(frozen=True, slots=True)
class Acked:
    """Local update ``op_id`` was durably sequenced as ``seq``."""

    op_id: OpId
    seq: Seq


@dataclass(frozen=True, slots=True)
class Rejected:
    """The relay refused local update ``op_id`` for good (it stays in the outbox)."""

    op_id: OpId
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Fatal:
    """The relay refused this replica for good; reconnecting will not help."""

    error: CrdtStateError


@dataclass(frozen=True, slots=True)
class StoreFailed:
    """The local store refused what the relay sent (disk full): it was not applied.

    Nothing past it is recorded as applied; the session asks the relay again after
    ``resend_delay_s`` (and with every reconnect) until the store takes it.
    """

    error: StoreError


Event = Acked | Rejected | Fatal | StoreFailed


class SyncSession:
    """The replica side of one client's conversation with the relay.

    Args:
        target: the replica.
        settings: client settings (window, heartbeat interval, instance id).
    """

    def __init__(self, target: SyncTarget, settings: SyncSettings | None = None) -> None:
        self.target = target
        self.settings = settings or SyncSettings()
        self.state = ConnectionState.DISCONNECTED
        self.head_seq = Seq(0)
        self.applied_seq = Seq(target.applied_seq)
        self.incarnation: str = str(getattr(target, "relay_incarnation", "") or "")
        self.last_error: str | None = None
        self.store_error: StoreError | None = None
        """The local store's refusal while it lasts (None once an update is applied)."""
        self.rejected: dict[OpId, Rejected] = {}
        self.gaps = 0
        self._events: list[Event] = []
        self._relay_sv: bytes | None = None
        self._repair_pending = False
        self._sent_up_to = OpId(0)
        self._inflight = 0
        self._resend_at: float | None = None
        self._resend_from: OpId | None = None
        self._next_heartbeat = 0.0
        self._last_heartbeat: float | None = None
        self._heartbeat_mark: tuple[ConnectionState, int, int] | None = None
        self._acks_seen = 0
        self._resync_requested = False
        # Set while relay updates cannot be taken (the store refuses them, or a snapshot
        # was unreadable): nothing is applied until then, when the session asks the relay
        # again from what it really applied.
        self._paused_until: float | None = None
        self._resync_deferred = False
        self._incarnation_unsaved = False
        self._now = 0.0  # of the frame being handled

    # -- inputs ---------------------------------------------------------------------------

    def connection_made(self, now: float) -> list[bytes]:
        """A new connection is open: returns the hello to send first."""
        self.state = ConnectionState.HANDSHAKE
        self._relay_sv = None
        self._sent_up_to = OpId(0)
        self._inflight = 0
        self._resend_at = None
        self._resend_from = None
        self._resync_requested = False
        self._paused_until = None  # the hello asks from what was really applied
        self._resync_deferred = False
        self._next_heartbeat = now + self.settings.heartbeat_interval_s
        self._heartbeat_mark = None
        return [self._hello()]

    def connection_lost(self, error: str | None = None) -> None:
        """The connection closed; in-flight updates will be resent on the next one."""
        if self.state not in (ConnectionState.STOPPED, ConnectionState.FAILED):
            self.state = ConnectionState.DISCONNECTED
        if error:
            self.last_error = error

    def receive(self, data: bytes, now: float) -> list[bytes]:
        """Handle one frame from the relay; returns the frames to send in answer."""
        self._now = now
        try:
            frame = wire.decode(data)
        except wire.FrameError as exc:
            self.last_error = f"relay sent an undecodable frame: {exc}"
            return []
        out: list[bytes] = []
        match frame:
            case wire.SyncStep1(state_vector=sv):
                # Kept only to compute a state-repair update; we do not answer with our
                # unsigned state (the outbox carries our writes, signed).
                self._relay_sv = sv
                if self._repair_pending and self.state in (
                    ConnectionState.CATCHING_UP,
                    ConnectionState.LIVE,
                ):
                    out.extend(self._repair())
            case wire.Welcome():
                out.extend(self._on_welcome(frame))
            case wire.Snapshot(seq=seq, update=update):
                self.head_seq = Seq(max(self.head_seq, seq))
                applied = (
                    None
                    if self._paused_until is not None
                    else self._apply(update, seq, full_state=True)
                )
                if applied is False and self._paused_until is None:
                    # Not claimed: a snapshot we cannot apply must not stand for the state
                    # up to its seq. Ask again after the pause a refusing store also gets.
                    self._paused_until = self._now + self.settings.resend_delay_s
                if applied:
                    self.applied_seq = seq
                    self._check_live()
            case wire.Broadcast():
                out.extend(self._on_broadcast(frame))
            case wire.BroadcastBatch(entries=entries):
                for entry in entries:
                    out.extend(self._on_broadcast(entry))
            case wire.Ack():
                out.extend(self._on_ack(frame, now))
            case wire.ResyncRequired(reason=reason):
                self.last_error = f"relay asked for a resync: {reason}"
                # The relay dropped everything it had queued for us, the welcome answering
                # an earlier hello included: a resync already requested must not swallow
                # this one, or the session waits for that welcome forever.
                self._resync_requested = False
                out.extend(self._resync())
            case wire.ErrorFrame():
                self._on_error(frame, now)
            case wire.AuthDenied(reason=reason):
                self.last_error = f"relay denied access: {reason}"
            case wire.SyncUpdate(update=update) | wire.SyncStep2(update=update):
                # Not expected after a hello; harmless to apply (no seq attached).
                if self._paused_until is None:
                    self._apply(update, None)
            case _:
                pass  # awareness, and frames only a relay receives
        if self.state in (ConnectionState.CATCHING_UP, ConnectionState.LIVE):
            out.extend(self._pump())
        return out

    def outbox_changed(self, now: float) -> list[bytes]:
        """New durable outbox entries may exist: returns update frames to send."""
        if self._resend_at is not None and now >= self._resend_at:
            self._rewind()
        out: list[bytes] = []
        if self._paused_until is not None and now >= self._paused_until:
            out.extend(self._resume_applying())
        if self._incarnation_unsaved and not self._repair_pending:
            self._persist_incarnation()
        if self.state not in (ConnectionState.CATCHING_UP, ConnectionState.LIVE):
            return out
        out.extend(self._pump())
        return out

    def tick(self, now: float) -> list[bytes]:
        """Time passed: returns a heartbeat when due and resends refused updates."""
        out = self.outbox_changed(now)
        if self.state not in (ConnectionState.CATCHING_UP, ConnectionState.LIVE):
            return out
        mark = (self.state, int(self.applied_seq), self._acks_seen)
        changed = mark != self._heartbeat_mark and (
            self._last_heartbeat is None
            or now - self._last_heartbeat >= self.settings.heartbeat_min_interval_s
        )
        if changed or now >= self._next_heartbeat:
            self._heartbeat_mark = mark
            self._last_heartbeat = now
            self._next_heartbeat = now + self.settings.heartbeat_interval_s
            out.append(self._heartbeat())
        return out

    def events(self) -> list[Event]:
        """Events since the last call (acks, rejections, fatal refusals)."""
        events, self._events = self._events, []
        return events

    # -- observations -----------------------------------------------------------------------

    @property
    def lag(self) -> int:
        """Relay head (as last seen) minus the applied sequence number."""
        return max(0, self.head_seq - self.applied_seq)

    @property
    def inflight(self) -> int:
        """Updates sent on this connection and not yet answered."""
        return self._inflight

    def caught_up(self) -> bool:
        """True when live and applied up to the relay head as last seen."""
        return self.state is ConnectionState.LIVE and self.applied_seq >= self.head_seq

    # -- internals ----------------------------------------------------------------------------

    def _hello(self) -> bytes:
        target = self.target
        return wire.encode(
            wire.Hello(
                version=wire.PROTOCOL_VERSION,
                replica_id=target.replica_id,
                public_key=target.public_key,
                last_seq=self.applied_seq,
                state_vector=target.state_vector(),
                incarnation=self.incarnation,
                instance=self.settings.instance,
            )
        )

    def _on_welcome(self, welcome: wire.Welcome) -> list[bytes]:
        lost = (bool(self.incarnation) and welcome.incarnation != self.incarnation) or (
            (welcome.incarnation == self.incarnation or not self.incarnation)
            and self.applied_seq > welcome.head_seq
        )
        if welcome.incarnation != self.incarnation or lost:
            # Sequence numbers of another log mean nothing here: the relay answers this hello
            # with a state-vector snapshot, which resets applied_seq.
            self.applied_seq = Seq(0)
            resetter: Callable[[Seq], None] | None = getattr(self.target, "reset_applied", None)
            if resetter is not None:
                resetter(Seq(0))
            # Whatever the store refused belonged to the old log; the snapshot replaces it.
            self._paused_until = None
            self._resync_deferred = False
        if lost:
            self._repair_pending = True
            self.last_error = "relay lost state (new incarnation or head behind us); repairing"
        if welcome.incarnation != self.incarnation:
            self.incarnation = welcome.incarnation
            # Persisted only once nothing is left to repair: a replica restarted before its
            # repair was acknowledged must still see a new incarnation, and repair again.
            if not self._repair_pending:
                self._persist_incarnation()
        self.head_seq = welcome.head_seq
        self._resync_requested = False
        self.state = ConnectionState.CATCHING_UP
        self._check_live()
        out: list[bytes] = []
        if self._repair_pending:
            # The relay's sync step 1 precedes its welcome, unless the relay dropped it from
            # our send queue when it took our hello: it cannot come later, so without it the
            # repair carries the whole state (export_update(None)).
            out.extend(self._repair())
        return out

    def _persist_incarnation(self) -> None:
        setter: Callable[[str], None] | None = getattr(self.target, "set_relay_incarnation", None)
        if setter is None:
            return
        try:
            setter(self.incarnation)
        except StoreError as exc:
            # Until it is saved a restarted replica takes the relay for a new one and does
            # a full resync and a repair: safe, only slower. Tried again with every tick.
            self._incarnation_unsaved = True
            self._store_failed(exc, None)
            return
        if self._incarnation_unsaved:
            self._incarnation_unsaved = False
            if self._paused_until is None:
                self.store_error = None

    def _repaired(self) -> None:
        self._repair_pending = False
        self._persist_incarnation()

    def _repair(self) -> list[bytes]:
        # Pending until the relay acknowledges the repair (the only op-0 update we send):
        # a repair lost with its connection, or refused while the relay's storage failed,
        # goes again with the next welcome.
        update = self.target.export_update(self._relay_sv)
        if wire.is_empty_update(update):
            self._repaired()
            return []
        op_id = OpId(0)
        signature = self.target.sign(
            wire.signing_payload(self.target.namespace, self.target.replica_id, op_id, update)
        )
        return [wire.encode(wire.Update(op_id, signature, update))]

    def _check_live(self) -> None:
        if self.state is ConnectionState.CATCHING_UP and self.applied_seq >= self.head_seq:
            self.state = ConnectionState.LIVE

    def _apply(self, update: bytes, seq: Seq | None, *, full_state: bool = False) -> bool | None:
        """Apply ``update``: True if applied, False if invalid, None if the store refused."""
        try:
            self.target.apply_remote(update, seq, full_state=full_state)
        except InvalidUpdate as exc:
            self.last_error = f"relay sent an update we cannot apply: {exc}"
            return False
        except StoreError as exc:
            self._store_failed(exc, self._now)
            return None
        self.store_error = None
        return True

    def _store_failed(self, error: StoreError, now: float | None) -> None:
        """The store refused a write: say so, and (``now`` given) stop applying for a while.

        What the relay sends meanwhile is dropped, not applied: the retry (or the next
        connection) asks for everything after ``applied_seq`` again.
        """
        self.last_error = f"local store refused a relay update, retrying: {error}"
        if self.store_error is None:
            self._events.append(StoreFailed(error))
        self.store_error = error
        if now is not None and self._paused_until is None:
            self._paused_until = now + self.settings.resend_delay_s

    def _resume_applying(self) -> list[bytes]:
        self._paused_until = None
        deferred, self._resync_deferred = self._resync_deferred, False
        if self.state in (ConnectionState.CATCHING_UP, ConnectionState.LIVE) or (
            deferred and self.state is ConnectionState.HANDSHAKE
        ):
            # What arrived meanwhile was dropped, the answer to a resync asked before
            # included: this hello must go regardless.
            self._resync_requested = False
            return self._resync()
        # Not connected (the next hello asks from applied_seq), or a welcome is on its
        # way whose catch-up starts at or below applied_seq.
        return []

    def _on_broadcast(self, entry: wire.Broadcast) -> list[bytes]:
        seq = entry.seq
        own = entry.origin == self.target.replica_id
        return self._on_seq(seq, None if own else entry.update)

    def _on_seq(self, seq: Seq, update: bytes | None) -> list[bytes]:
        """Account for ``seq`` (``update`` None: our own update, already local)."""
        if seq > self.head_seq:
            self.head_seq = seq
        if seq <= self.applied_seq or self._paused_until is not None:
            return []
        if seq == self.applied_seq + 1:
            if update is None:
                self.target.note_applied(seq)
            else:
                applied = self._apply(update, seq)
                if applied is None:
                    return []  # the store refused it: asked again after a pause
                if not applied:
                    return self._resync()
            self.applied_seq = seq
            self._check_live()
            return []
        # A gap: keep the bytes (Yjs holds what it cannot integrate yet) but do not claim
        # the seq; catch up again from what we really applied.
        self.gaps += 1
        if update is not None and self._apply(update, None) is None:
            return []
        return self._resync()

    def _resync(self) -> list[bytes]:
        if self._paused_until is not None:
            self._resync_deferred = True  # sent when the store is tried again
            return []
        if self._resync_requested:
            return []
        self._resync_requested = True
        self.state = ConnectionState.HANDSHAKE
        # The relay drops what it queued for us: unanswered updates go again after welcome.
        self._sent_up_to = OpId(0)
        self._inflight = 0
        return [self._hello()]

    def _on_ack(self, ack: wire.Ack, now: float) -> list[bytes]:
        if ack.op_id == 0:
            if self._repair_pending:
                self._repaired()
        else:
            self._acks_seen += 1
            self._inflight = max(0, self._inflight - 1)
            self.rejected.pop(ack.op_id, None)
            self.target.on_ack(ack.op_id, ack.seq)
            self._events.append(Acked(ack.op_id, ack.seq))
        if ack.duplicate:
            if ack.seq > self.head_seq:
                self.head_seq = ack.seq
            return []
        return self._on_seq(ack.seq, None)

    def _on_error(self, error: wire.ErrorFrame, now: float) -> None:
        self.last_error = f"relay error {error.code}: {error.message}"
        try:
            fatal = _FATAL_ERRORS.get(wire.ErrorCode(error.code))
        except ValueError:  # a code from a newer relay: not fatal by default
            fatal = None
        if fatal is not None:
            self.state = ConnectionState.FAILED
            self._events.append(Fatal(fatal(self.last_error)))
            return
        if error.op_id == 0:
            return
        self._inflight = max(0, self._inflight - 1)
        if error.code in _TRANSIENT_ERRORS:
            # Resend from the refused op after a pause (duplicates are acked, not stored).
            if self._resend_from is None or error.op_id < self._resend_from:
                self._resend_from = error.op_id
            if self._resend_at is None:
                self._resend_at = now + self.settings.resend_delay_s
            return
        rejected = Rejected(error.op_id, error.code, error.message)
        self.rejected[error.op_id] = rejected
        self._events.append(rejected)

    def _rewind(self) -> None:
        assert self._resend_from is not None
        self._sent_up_to = OpId(min(self._sent_up_to, self._resend_from - 1))
        self._resend_at = None
        self._resend_from = None

    def _pump(self) -> list[bytes]:
        window = self.settings.window
        if self._inflight >= window or self._resend_at is not None:
            return []
        target = self.target
        entries = target.pending_outbox(window - self._inflight, self._sent_up_to)
        out = []
        for entry in entries:
            if entry.op_id in self.rejected:
                self._sent_up_to = OpId(max(self._sent_up_to, entry.op_id))
                continue
            signature = target.sign(
                wire.signing_payload(target.namespace, target.replica_id, entry.op_id, entry.update)
            )
            out.append(wire.encode(wire.Update(entry.op_id, signature, entry.update)))
            self._sent_up_to = OpId(max(self._sent_up_to, entry.op_id))
            self._inflight += 1
        return out

    def _heartbeat(self) -> bytes:
        try:
            data = dict(self.target.heartbeat())
        except CrdtStateError as exc:
            data = {"error": str(exc)}
        data["applied_seq"] = int(self.applied_seq)
        data.setdefault("instance", self.settings.instance)
        return wire.encode(wire.Heartbeat(json.dumps(data, default=str, separators=(",", ":"))))
