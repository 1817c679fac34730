"""In-memory backend: the relay's storage interface without a disk, for the simulation.

The deterministic simulation (``chaos/sim``) runs the real hub and sequencer over this
backend, so a simulated relay crash must lose exactly what a real one would and nothing
more. Everything a call stores is durable when the call returns (as with SQLite and
``synchronous=FULL``) and survives :meth:`MemoryBackend.crash`; the storage of a whole
relay is lost only by dropping the object (a wiped disk: the next one gets a new
incarnation).

Three knobs exist for fault injection, none of them for production use:
``durable_appends=False`` makes ``append`` return before its entries are durable (they
become durable at :meth:`MemoryBackend.sync`; a crash before that loses them, as a relay
on a disk that lies about fsync would); :meth:`MemoryBackend.fail_appends` makes appends
fail (a full disk); the seeded ``incarnation`` factory keeps a simulation reproducible.

No call ever suspends (each ``async def`` returns without awaiting), which is what lets the
simulation drive the hub's coroutines deterministically. Owns nothing but this class;
imports only the backend interface and ``crdtstate._ids``.
"""

from __future__ import annotations

import bisect
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from crdtstate._ids import Namespace, OpId, ReplicaId, Seq
from relay.backend.base import (
    AppendResult,
    BackendError,
    LogEntry,
    NamespaceMeta,
    NewEntry,
    ReplicaRecord,
    StoredSnapshot,
)

__all__ = ["MemoryBackend"]


@dataclass
class _Namespace:
    """Everything stored for one namespace."""

    incarnation: str
    head: int = 0
    trimmed_below: int = 0
    seqs: list[int] = field(default_factory=list)  # ascending, parallel to ``entries``
    entries: list[LogEntry] = field(default_factory=list)
    ops: dict[tuple[str, int], int] = field(default_factory=dict)
    snapshot: StoredSnapshot | None = None
    replicas: dict[str, ReplicaRecord] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _VolatileAppend:
    """What one non-durable append changed, so a crash can take it back."""

    namespace: str
    head_before: int
    log_rows: int
    op_keys: tuple[tuple[str, int], ...]


class MemoryBackend:
    """:class:`relay.backend.base.Backend` in memory. See the module docstring.

    Args:
        incarnation: makes the incarnation id of a new namespace (random by default).
        durable_appends: False = appends are durable only after :meth:`sync`.
    """

    def __init__(
        self,
        *,
        incarnation: Callable[[], str] | None = None,
        durable_appends: bool = True,
    ) -> None:
        self._new_incarnation = incarnation or (lambda: secrets.token_hex(16))
        self.durable_appends = durable_appends
        self._namespaces: dict[str, _Namespace] = {}
        self._volatile: list[_VolatileAppend] = []
        self._failure: str | None = None
        self._open = False

    # -- fault injection and introspection (synchronous: the simulation calls them) --------

    def crash(self) -> None:
        """Lose every append not yet durable (newest first) and close, as kill -9 would."""
        for change in reversed(self._volatile):
            ns = self._namespaces[change.namespace]
            ns.head = change.head_before
            if change.log_rows:
                del ns.seqs[-change.log_rows :]
                del ns.entries[-change.log_rows :]
            for key in change.op_keys:
                ns.ops.pop(key, None)
        self._volatile.clear()
        self._open = False

    def sync(self) -> None:
        """Make every append so far durable (only matters with ``durable_appends=False``)."""
        self._volatile.clear()

    def fail_appends(self, cause: str | None) -> None:
        """Make every append fail with ``cause`` (e.g. "disk full"); None heals."""
        self._failure = cause

    def durable_head(self, namespace: str) -> Seq:
        """Highest seq that would survive a crash now (0 = none)."""
        ns = self._namespaces.get(namespace)
        if ns is None:
            return Seq(0)
        for change in self._volatile:
            if change.namespace == namespace:
                return Seq(change.head_before)
        return Seq(ns.head)

    def incarnation_of(self, namespace: str) -> str | None:
        """The namespace's incarnation id, or None before it has storage."""
        ns = self._namespaces.get(namespace)
        return None if ns is None else ns.incarnation

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """See :meth:`Backend.open`."""
        self._open = True

    async def close(self) -> None:
        """See :meth:`Backend.close`; appends still volatile are kept (a clean close)."""
        self._volatile.clear()
        self._open = False

    def _ns(self, namespace: str) -> _Namespace:
        if not self._open:
            raise BackendError("memory backend is not open")
        ns = self._namespaces.get(namespace)
        if ns is None:
            raise BackendError(f"namespace {namespace!r} has no storage (open_namespace first)")
        return ns

    # -- namespaces -------------------------------------------------------------------------

    async def open_namespace(self, namespace: Namespace) -> NamespaceMeta:
        """See :meth:`Backend.open_namespace`."""
        if not self._open:
            raise BackendError("memory backend is not open")
        ns = self._namespaces.get(namespace)
        if ns is None:
            ns = self._namespaces[namespace] = _Namespace(self._new_incarnation())
        return NamespaceMeta(ns.incarnation, Seq(ns.head), Seq(ns.trimmed_below))

    async def namespaces(self) -> list[Namespace]:
        """See :meth:`Backend.namespaces`."""
        return [Namespace(name) for name in sorted(self._namespaces)]

    # -- log --------------------------------------------------------------------------------

    async def append(self, namespace: Namespace, entries: Sequence[NewEntry]) -> list[AppendResult]:
        """See :meth:`Backend.append` (atomic: a failure stores nothing)."""
        ns = self._ns(namespace)
        if self._failure is not None:
            raise BackendError(f"memory backend: append failed: {self._failure}")
        if not entries:
            return []
        head_before = head = ns.head
        results: list[AppendResult] = []
        new_ops: list[tuple[str, int]] = []
        rows = 0
        for entry in entries:
            if entry.op_id > 0 and entry.replica_id is not None:
                key = (str(entry.replica_id), int(entry.op_id))
                original = ns.ops.get(key)
                if original is not None:
                    results.append(AppendResult(Seq(original), True))
                    continue
                head += 1
                ns.ops[key] = head
                new_ops.append(key)
            else:
                head += 1
            ns.seqs.append(head)
            ns.entries.append(LogEntry(Seq(head), entry.origin, bytes(entry.update)))
            rows += 1
            results.append(AppendResult(Seq(head), False))
        ns.head = head
        if not self.durable_appends:
            self._volatile.append(_VolatileAppend(namespace, head_before, rows, tuple(new_ops)))
        return results

    async def read_after(self, namespace: Namespace, seq: Seq, limit: int) -> list[LogEntry]:
        """See :meth:`Backend.read_after`."""
        ns = self._ns(namespace)
        start = bisect.bisect_right(ns.seqs, int(seq))
        return ns.entries[start : start + max(0, limit)]

    async def head(self, namespace: Namespace) -> Seq:
        """See :meth:`Backend.head`."""
        return Seq(self._ns(namespace).head)

    async def lookup_op(
        self, namespace: Namespace, replica_id: ReplicaId, op_id: OpId
    ) -> Seq | None:
        """The seq an op was sequenced as, or None (as :class:`SqliteBackend` offers)."""
        seq = self._ns(namespace).ops.get((str(replica_id), int(op_id)))
        return None if seq is None else Seq(seq)

    # -- snapshots --------------------------------------------------------------------------

    async def write_snapshot(self, namespace: Namespace, snapshot: StoredSnapshot) -> None:
        """See :meth:`Backend.write_snapshot`."""
        ns = self._ns(namespace)
        if ns.snapshot is None or snapshot.seq >= ns.snapshot.seq:
            ns.snapshot = StoredSnapshot(snapshot.seq, bytes(snapshot.update))

    async def read_snapshot(self, namespace: Namespace) -> StoredSnapshot | None:
        """See :meth:`Backend.read_snapshot`."""
        return self._ns(namespace).snapshot

    async def trim_below(self, namespace: Namespace, seq: Seq) -> int:
        """See :meth:`Backend.trim_below` (never past what the snapshot covers)."""
        ns = self._ns(namespace)
        covered = ns.snapshot.seq + 1 if ns.snapshot is not None else 0
        limit = min(int(seq), covered)
        if limit <= 1:
            return 0
        cut = bisect.bisect_left(ns.seqs, limit)
        del ns.seqs[:cut]
        del ns.entries[:cut]
        ns.trimmed_below = max(ns.trimmed_below, limit)
        return cut

    # -- replicas ---------------------------------------------------------------------------

    async def bind_replica(
        self, namespace: Namespace, replica_id: ReplicaId, public_key: bytes, now: float
    ) -> bytes:
        """See :meth:`Backend.bind_replica`."""
        ns = self._ns(namespace)
        record = ns.replicas.get(replica_id)
        if record is None:
            record = ns.replicas[replica_id] = ReplicaRecord(
                replica_id, bytes(public_key), Seq(0), now, ""
            )
        return record.public_key

    async def record_replica(
        self,
        namespace: Namespace,
        replica_id: ReplicaId,
        applied_seq: Seq,
        heartbeat: str | None,
        now: float,
    ) -> None:
        """See :meth:`Backend.record_replica`."""
        ns = self._ns(namespace)
        record = ns.replicas.get(replica_id)
        if record is None:
            return
        ns.replicas[replica_id] = ReplicaRecord(
            replica_id,
            record.public_key,
            applied_seq,
            now,
            record.heartbeat if heartbeat is None else heartbeat,
        )

    async def replicas(self, namespace: Namespace) -> list[ReplicaRecord]:
        """See :meth:`Backend.replicas`."""
        ns = self._ns(namespace)
        return [ns.replicas[name] for name in sorted(ns.replicas)]
