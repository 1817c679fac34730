"""The relay's storage interface: what the hub needs to persist a namespace's log.

Small and async on purpose, so a NATS JetStream backend (a stream per namespace: the stream
assigns sequence numbers, ``Nats-Msg-Id`` deduplicates, a KV bucket holds snapshots and the
replica table) can implement it as honestly as SQLite does. The backend, not the relay,
assigns sequence numbers.

Owns the ``Backend`` protocol and its value types. Imports only ``crdtstate._ids``; must not
import pycrdt, aiohttp or anything else of the relay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from crdtstate._ids import Namespace, OpId, ReplicaId, Seq

__all__ = [
    "AppendResult",
    "Backend",
    "BackendError",
    "LogEntry",
    "NamespaceMeta",
    "NewEntry",
    "ReplicaRecord",
    "StoredSnapshot",
]


class BackendError(Exception):
    """The storage failed; nothing of the failed call is durable.

    Deliberately outside the crdtstate tree: it never leaves the relay process.
    """


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An accepted update to append.

    Attributes:
        origin: replica id of the writer, or ``yjs:<connection id>``.
        replica_id: the writer's replica id, None for plain Yjs clients.
        op_id: the writer's op id; 0 = not deduplicated (repair or plain Yjs update).
        update: Yjs v1 update bytes.
    """

    origin: str
    replica_id: ReplicaId | None
    op_id: OpId
    update: bytes


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an appended entry landed; ``duplicate`` = it was stored before at ``seq``."""

    seq: Seq
    duplicate: bool


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One stored update of a namespace's log."""

    seq: Seq
    origin: str
    update: bytes


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    """The namespace document as a full Yjs update, holding every update up to ``seq``."""

    seq: Seq
    update: bytes


@dataclass(frozen=True, slots=True)
class NamespaceMeta:
    """What a namespace's storage says about itself.

    Attributes:
        incarnation: random id created with the namespace's storage; a new one means the
            history replicas saw is gone.
        head: highest sequence number ever assigned (0 = none).
        trimmed_below: log entries with seq below this were dropped (a snapshot covers them).
    """

    incarnation: str
    head: Seq
    trimmed_below: Seq


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """What the relay remembers of one replica of a namespace.

    Attributes:
        replica_id: the replica.
        public_key: the ed25519 key bound by its first hello.
        applied_seq: highest seq it reported applied (hello or heartbeat).
        last_seen: unix seconds of its last hello or heartbeat.
        heartbeat: its latest heartbeat (JSON text), "" before the first.
    """

    replica_id: ReplicaId
    public_key: bytes
    applied_seq: Seq
    last_seen: float
    heartbeat: str


class Backend(Protocol):
    """Durable log, snapshots and replica table of every namespace."""

    async def open(self) -> None:
        """Open the storage (create it on first use).

        Raises:
            BackendError: the storage cannot be opened.
        """
        ...

    async def close(self) -> None:
        """Flush and close; further calls fail."""
        ...

    async def open_namespace(self, namespace: Namespace) -> NamespaceMeta:
        """Return the namespace's metadata, creating its storage (and incarnation) if new."""
        ...

    async def append(self, namespace: Namespace, entries: Sequence[NewEntry]) -> list[AppendResult]:
        """Durably append ``entries`` in order, in one commit; idempotent per (replica, op).

        An entry with ``op_id > 0`` whose (replica id, op id) was appended before (in an
        earlier call or earlier in this batch) is not stored again; its result carries the
        original seq and ``duplicate=True``. Returns one result per entry, in order. When it
        returns, every new entry is durable.

        Raises:
            BackendError: nothing of the batch is stored.
        """
        ...

    async def read_after(self, namespace: Namespace, seq: Seq, limit: int) -> list[LogEntry]:
        """Up to ``limit`` stored entries with seq > ``seq``, in seq order."""
        ...

    async def head(self, namespace: Namespace) -> Seq:
        """Highest seq assigned in the namespace (0 = none)."""
        ...

    async def write_snapshot(self, namespace: Namespace, snapshot: StoredSnapshot) -> None:
        """Store ``snapshot`` durably, replacing an older one (a newer one is kept)."""
        ...

    async def read_snapshot(self, namespace: Namespace) -> StoredSnapshot | None:
        """The latest snapshot, or None."""
        ...

    async def trim_below(self, namespace: Namespace, seq: Seq) -> int:
        """Drop log entries with seq < ``seq`` (must be covered by a stored snapshot).

        Returns:
            How many entries were dropped.
        """
        ...

    async def bind_replica(
        self, namespace: Namespace, replica_id: ReplicaId, public_key: bytes, now: float
    ) -> bytes:
        """Bind ``replica_id`` to ``public_key`` unless already bound; return the bound key."""
        ...

    async def record_replica(
        self,
        namespace: Namespace,
        replica_id: ReplicaId,
        applied_seq: Seq,
        heartbeat: str | None,
        now: float,
    ) -> None:
        """Remember a replica's applied seq (and heartbeat, when given) as of ``now``."""
        ...

    async def replicas(self, namespace: Namespace) -> list[ReplicaRecord]:
        """Every replica ever bound in the namespace."""
        ...

    async def namespaces(self) -> list[Namespace]:
        """Every namespace with storage."""
        ...
