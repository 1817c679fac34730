"""What the sync client needs from a replica: the seam between ``sync`` and ``replica``.

The sync client (and the deterministic simulation) drive a replica only through this
protocol, so the same client code runs over a real websocket, an in-memory transport or a
simulated network. This module owns the protocol only; it imports no I/O and no pycrdt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from crdtstate._ids import Namespace, OpId, ReplicaId, Seq
from crdtstate.store.base import OutboxEntry


class SyncTarget(Protocol):
    """A replica as seen by a sync client.

    Every method is called from the event loop thread that runs the client; implementations
    that may be written from other threads guard their own state.
    """

    @property
    def replica_id(self) -> ReplicaId:
        """Stable id of this replica."""
        ...

    @property
    def namespace(self) -> Namespace:
        """The namespace (document) this replica holds."""
        ...

    @property
    def public_key(self) -> bytes:
        """Raw 32-byte ed25519 public key the relay binds to ``replica_id``."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` with the replica's identity key (64-byte ed25519 signature)."""
        ...

    def state_vector(self) -> bytes:
        """Encoded Yjs state vector of the local document."""
        ...

    def export_update(self, since_state_vector: bytes | None = None) -> bytes:
        """Yjs update holding everything local that ``since_state_vector`` lacks."""
        ...

    def apply_remote(self, update: bytes, seq: Seq | None, *, full_state: bool = False) -> None:
        """Apply an update received from the relay and record ``seq`` as applied.

        ``full_state`` marks a relay snapshot: a whole document's state, which a target
        may apply without checking that it integrated (it depends on nothing else).

        Raises:
            InvalidUpdate: the bytes are not a usable update; nothing was changed.
        """
        ...

    @property
    def applied_seq(self) -> Seq:
        """Highest relay sequence number applied locally (0 before the first)."""
        ...

    def note_applied(self, seq: Seq) -> None:
        """Record that ``seq`` is applied without new bytes (the echo of an own update)."""
        ...

    def pending_outbox(self, limit: int, after: OpId) -> list[OutboxEntry]:
        """Durable, unacknowledged local updates with op id > ``after``, oldest first."""
        ...

    def on_ack(self, op_id: OpId, seq: Seq) -> None:
        """The relay durably sequenced local update ``op_id`` as ``seq``."""
        ...

    def set_outbox_listener(self, callback: Callable[[], None] | None) -> None:
        """Register ``callback`` to be called (from any thread) when new durable outbox
        entries exist; the client then sends them. ``None`` removes it."""
        ...

    def heartbeat(self) -> dict[str, Any]:
        """A JSON-able heartbeat: applied seq, state vector (hex), digest, outbox length,
        recovery seconds, clock offset, schema version, process start time."""
        ...
