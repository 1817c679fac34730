"""Snapshots and log trimming of one namespace.

A snapshot is the namespace document (a full Yjs update) at sequence number S; it replaces
the log before S for loading and catch-up. The log is trimmed only below the watermark: the
lowest sequence number every live replica (seen within ``replica_ttl_s``) reported applied in
its hello or heartbeats, so compaction alone never forces a replica into a full resync.
Epoch compaction (restarting the doc to shed tombstones) comes later.

Owns the snapshot and trim decisions. Imports the backend interface and settings; must not
import the hub (it is handed the namespace's head and state).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from crdtstate._ids import Namespace, Seq
from relay.backend.base import Backend, StoredSnapshot
from relay.config import SnapshotSettings

__all__ = ["SnapshotOutcome", "take_snapshot", "watermark"]

_log = logging.getLogger("relay.compaction")


@dataclass(frozen=True, slots=True)
class SnapshotOutcome:
    """What a snapshot did.

    Attributes:
        seq: the snapshot's sequence number.
        bytes: its size.
        watermark: lowest applied seq over live replicas (``seq`` when none).
        trimmed: log entries dropped.
    """

    seq: Seq
    bytes: int
    watermark: Seq
    trimmed: int


async def watermark(
    backend: Backend, namespace: Namespace, fallback: Seq, policy: SnapshotSettings, now: float
) -> Seq:
    """Lowest applied seq over replicas seen within ``policy.replica_ttl_s``, or ``fallback``."""
    marks = [
        r.applied_seq
        for r in await backend.replicas(namespace)
        if now - r.last_seen <= policy.replica_ttl_s
    ]
    return min(marks) if marks else fallback


async def take_snapshot(
    backend: Backend,
    namespace: Namespace,
    seq: Seq,
    state: bytes,
    policy: SnapshotSettings,
    now: float,
) -> SnapshotOutcome:
    """Store ``state`` as the snapshot at ``seq``, then trim below the watermark.

    Args:
        backend: storage.
        namespace: the namespace.
        seq: committed head when ``state`` was encoded (the state holds at least 1..seq).
        state: the full document as a Yjs update.
        policy: snapshot settings.
        now: unix seconds.

    Raises:
        BackendError: the snapshot was not stored (the log is untouched).
    """
    await backend.write_snapshot(namespace, StoredSnapshot(seq, state))
    mark = await watermark(backend, namespace, seq, policy, now)
    # Entries at or below the watermark are applied everywhere; never trim past the snapshot.
    trimmed = await backend.trim_below(namespace, Seq(min(seq, mark) + 1))
    _log.info(
        "snapshot stored",
        extra={
            "namespace": namespace,
            "seq": seq,
            "bytes": len(state),
            "watermark": mark,
            "trimmed": trimmed,
        },
    )
    return SnapshotOutcome(seq, len(state), mark, trimmed)
