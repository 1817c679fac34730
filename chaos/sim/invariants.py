"""Invariants checked while a seed runs, at the moment they could first break.

End-of-run checkers see only the outcome; a broken invariant seen when it happens names the
step, the replica and the frame, which makes a failing seed far quicker to understand. Two
invariants from the issue, each checked on both sides of the wire:

- applied sequence numbers: a replica applies the relay's sequence numbers in order, each
  exactly one above the last (a catch-up snapshot may jump ahead: it covers everything up
  to its number), counted from zero again only when the relay's incarnation changes;
  and the relay never tells a replica that its head is behind what the replica applied
  within one incarnation (that would mean the relay lost sequenced updates);
- durability before acknowledgement: a replica sends only updates its store made durable
  (so after a crash its state holds everything it ever sent), and the relay acknowledges or
  broadcasts only sequence numbers its backend made durable.

:class:`CheckedTarget` stands between the real :class:`~crdtstate.sync.session.SyncSession`
and the real :class:`~crdtstate.replica.Replica` (it implements the same
:class:`~crdtstate.sync.target.SyncTarget` protocol and forwards every call), so the checks
see exactly what the session makes the replica do.

Owns the checks. Imports the replica's public surface and the wire format only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from crdtstate._ids import Namespace, OpId, ReplicaId, Seq
from crdtstate.replica import Replica
from crdtstate.store.base import OutboxEntry

__all__ = ["CheckedTarget", "update_op_id"]

_UPDATE_HEADER: Final = b"\x64\x02"  # MessageType.CRDTSTATE (100), ExtType.UPDATE (2)


def update_op_id(frame: bytes) -> int | None:
    """The op id of an extension update frame, or None for any other frame."""
    if frame[:2] != _UPDATE_HEADER:
        return None
    value = shift = 0
    for byte in frame[2:10]:
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value
        shift += 7
    return None


class CheckedTarget:
    """The replica as its session sees it, with the applied-seq invariant checked.

    Args:
        replica: the real replica every call is forwarded to.
        report: called with a description of each violation.
        signed: sign updates with the replica's key; False sends them unsigned (the
            simulated relay runs in open mode and accepts both), which spares an ed25519
            signature and its verification per update, a fifth of a seed's CPU time.

    Attributes:
        frame_kind: kind of the frame the session is handling (set by the caller).
        durable_head: durable head of the relay backend that sent that frame.
        last_seq: the highest seq applied in the current relay incarnation.
    """

    def __init__(
        self, replica: Replica[Any], report: Callable[[str], None], *, signed: bool = True
    ) -> None:
        self._replica = replica
        self._report = report
        self._signed = signed
        self.frame_kind = ""
        self.durable_head: Callable[[], int] = lambda: 0
        self.last_seq = int(replica.applied_seq)

    # -- checks -----------------------------------------------------------------------------

    def _check(self, seq: int, how: str) -> None:
        durable = self.durable_head()
        if seq > durable:
            self._report(
                f"{self.replica_id} applied seq {seq} ({how}, {self.frame_kind} frame) which "
                f"the relay had not made durable (durable head {durable})"
            )
        if self.frame_kind == "snapshot":
            if seq < self.last_seq:
                self._report(
                    f"{self.replica_id} applied a snapshot at seq {seq} below seq "
                    f"{self.last_seq} it had applied already"
                )
        elif seq != self.last_seq + 1:
            self._report(
                f"{self.replica_id} applied seq {seq} ({how}, {self.frame_kind} frame) after "
                f"seq {self.last_seq}: sequence numbers must follow each other"
            )

    # -- SyncTarget -------------------------------------------------------------------------

    @property
    def replica_id(self) -> ReplicaId:
        """See :class:`SyncTarget`."""
        return self._replica.replica_id

    @property
    def namespace(self) -> Namespace:
        """See :class:`SyncTarget`."""
        return self._replica.namespace

    @property
    def public_key(self) -> bytes:
        """See :class:`SyncTarget`."""
        return self._replica.public_key

    def sign(self, data: bytes) -> bytes:
        """See :class:`SyncTarget` (empty when the seed runs unsigned)."""
        return self._replica.sign(data) if self._signed else b""

    def state_vector(self) -> bytes:
        """See :class:`SyncTarget`."""
        return self._replica.state_vector()

    def export_update(self, since_state_vector: bytes | None = None) -> bytes:
        """See :class:`SyncTarget`."""
        return self._replica.export_update(since_state_vector)

    def apply_remote(self, update: bytes, seq: Seq | None, *, full_state: bool = False) -> None:
        """See :class:`SyncTarget`; checks ``seq`` first."""
        if seq is not None:
            self._check(int(seq), "remote update")
        self._replica.apply_remote(update, seq, full_state=full_state)
        if seq is not None:  # only once applied: a failing store leaves it unapplied
            self.last_seq = max(self.last_seq, int(seq))

    @property
    def applied_seq(self) -> Seq:
        """See :class:`SyncTarget`."""
        return self._replica.applied_seq

    def note_applied(self, seq: Seq) -> None:
        """See :class:`SyncTarget`; checks ``seq`` first."""
        self._check(int(seq), "own update")
        self._replica.note_applied(seq)
        self.last_seq = max(self.last_seq, int(seq))

    def reset_applied(self, seq: Seq) -> None:
        """Forget the old relay log's numbers (the session found another incarnation)."""
        self.last_seq = int(seq)
        self._replica.reset_applied(seq)

    @property
    def relay_incarnation(self) -> str:
        """The relay log the replica follows."""
        return self._replica.relay_incarnation

    def set_relay_incarnation(self, incarnation: str) -> None:
        """Follow another relay log."""
        self._replica.set_relay_incarnation(incarnation)

    def pending_outbox(self, limit: int, after: OpId) -> list[OutboxEntry]:
        """See :class:`SyncTarget`."""
        return self._replica.pending_outbox(limit, after)

    def on_ack(self, op_id: OpId, seq: Seq) -> None:
        """See :class:`SyncTarget`."""
        self._replica.on_ack(op_id, seq)

    def set_outbox_listener(self, callback: Callable[[], None] | None) -> None:
        """See :class:`SyncTarget`."""
        self._replica.set_outbox_listener(callback)

    def heartbeat(self) -> dict[str, Any]:
        """See :class:`SyncTarget`."""
        return self._replica.heartbeat()
