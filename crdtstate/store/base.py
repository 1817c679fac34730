"""The ``Store`` protocol: what a replica needs from its local persistence.

A store keeps, for one namespace of one replica: the latest local snapshot (a full Yjs
update), the tail of Yjs updates appended after it, the outbox of local writes not yet
acknowledged by the relay (each with its semantic operation), the highest relay sequence
number applied, and a small string key/value table (meta).

Owns the protocol and its value types only. Handles bytes and JSON-able dicts: must not
import pycrdt, nor anything above the store (doc, sync, replica).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from crdtstate._ids import OpId, Seq

__all__ = ["NO_OP_ID", "NO_SEQ", "Durability", "LoadedState", "OutboxEntry", "Store"]

NO_OP_ID: Final = OpId(0)
"""The op id before the first local write."""

NO_SEQ: Final = Seq(0)
"""The relay sequence number before the first applied update."""


class Durability(enum.StrEnum):
    """When a local write counts as durable."""

    SYNC = "sync"
    """``append_local`` returns after the write is fsynced."""
    BATCH = "batch"
    """``append_local`` returns at once; group commit every ``batch_interval_s``.

    ``flush()`` waits for the commit."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One local write not yet acknowledged by the relay.

    Attributes:
        op_id: assigned by the store, strictly increasing, starts at 1.
        update: the Yjs update of this local write.
        op: its semantic operation, e.g. ``{"field": "karma", "op": "inc", "n": 3}``.
        created_at: unix seconds (or the store's injected clock).
    """

    op_id: OpId
    update: bytes
    op: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class LoadedState:
    """Everything a replica needs to rebuild its doc at start.

    Attributes:
        snapshot: latest local snapshot (a full Yjs update) or None.
        tail: every update appended after that snapshot, in append order.
        applied_seq: highest relay sequence number recorded with ``note_applied`` or
            ``append_remote`` (0 = none).
        last_op_id: highest op id that is durable (0 = none).
        read_seconds: time ``load()`` took.
    """

    snapshot: bytes | None
    tail: list[bytes]
    applied_seq: Seq
    last_op_id: OpId
    read_seconds: float


@runtime_checkable
class Store(Protocol):
    """Local persistence of one namespace of one replica.

    Attributes:
        path: the store's file, or None for an in-memory store.
        durability: when ``append_local`` counts as durable.
    """

    path: Path | None
    durability: Durability

    def load(self) -> LoadedState:
        """Read back the snapshot, the tail and the counters."""
        ...

    def append_local(self, update: bytes, op: Mapping[str, Any]) -> OpId:
        """Append a local write to the tail AND the outbox in one atomic step.

        SYNC: returns only once fsynced; a failed commit raises ``StoreError`` with the
        write still queued (it is retried). BATCH: returns at once; when it raises, it took
        nothing.

        Returns:
            The new op id.
        """
        ...

    def append_remote(self, update: bytes, seq: Seq | None) -> None:
        """Append a remote update already applied to the doc (tail only, never the outbox).

        If ``seq`` is given it is recorded as ``applied_seq`` atomically with the update.
        Never waits for fsync: a lost remote update is fetched again from the relay.
        """
        ...

    def check_writable(self) -> None:
        """Return if a write would be taken now; otherwise raise the error refusing it.

        A replica calls it before changing its doc, so a store that is failing its commits
        (a full disk) refuses a write before the doc holds what the store cannot take.

        Raises:
            StoreFullError: the disk (or the store's size limit) is full.
            StoreError: commits are failing for another reason.
            StoreClosedError: the store is closed.
        """
        ...

    def note_applied(self, seq: Seq) -> None:
        """Record ``applied_seq`` without an update (our own echo)."""
        ...

    def reset_applied(self, seq: Seq) -> None:
        """Set ``applied_seq`` to exactly ``seq``, even if lower.

        Used when the relay's log was replaced (a new relay incarnation): its sequence
        numbers restart, and the highest number seen so far means nothing any more.
        """
        ...

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until everything appended before the call is durable.

        Raises:
            StoreError: on timeout, or when a commit failed.
        """
        ...

    @property
    def durable_op_id(self) -> OpId:
        """Highest op id known durable."""
        ...

    def outbox(self, limit: int = 1000, after: OpId = NO_OP_ID) -> list[OutboxEntry]:
        """Unacknowledged, already durable entries with ``op_id > after``, ascending."""
        ...

    def outbox_len(self) -> int:
        """Number of unacknowledged entries, durable or not."""
        ...

    def ack(self, op_id: OpId, seq: Seq) -> None:
        """The relay sequenced ``op_id`` as ``seq``: drop it from the outbox.

        Idempotent; unknown ids are ignored.
        """
        ...

    def add_durable_listener(self, callback: Callable[[OpId], None]) -> None:
        """Call ``callback(durable_op_id)`` each time ``durable_op_id`` advances.

        Called from the store's writer thread (or inline for a store without one).
        """
        ...

    def write_snapshot(self, snapshot: bytes) -> None:
        """Store a snapshot covering every update appended before this call.

        Once durable, tail rows before it are deleted (outbox rows are kept until acked).
        Atomic: a crash leaves either the old or the new snapshot.
        """
        ...

    def tail_stats(self) -> tuple[int, int]:
        """Return (updates in the tail since the snapshot, their total bytes)."""
        ...

    def get_meta(self, key: str) -> str | None:
        """Return the meta value of ``key`` or None."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Set a meta value; durable before returning."""
        ...

    def close(self) -> None:
        """Flush, stop the writer, release the lock. Idempotent."""
        ...
