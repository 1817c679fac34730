"""The memory backend keeps the relay backend's contract, and crashes lose only what they may.

The simulation trusts this backend to behave as SQLite does: sequence numbers without gaps,
deduplication by (replica, op), snapshots that only move forward, trimming that never passes
the snapshot; and, for the planted "ack before durable" bug, appends that a crash can undo.
"""

from __future__ import annotations

import pytest

from crdtstate._ids import Namespace, OpId, ReplicaId, Seq
from relay.backend.base import BackendError, NewEntry, StoredSnapshot
from relay.backend.memory import MemoryBackend

NS = Namespace("ns")
R = ReplicaId("r1")


def _entry(op: int, data: bytes = b"u") -> NewEntry:
    return NewEntry("r1", R, OpId(op), data)


async def _opened(**kwargs: bool) -> MemoryBackend:
    backend = MemoryBackend(incarnation=lambda: "inc", **kwargs)
    await backend.open()
    await backend.open_namespace(NS)
    return backend


async def test_append_sequences_and_deduplicates() -> None:
    backend = await _opened()
    first = await backend.append(NS, [_entry(1), _entry(2), _entry(1)])
    assert [(r.seq, r.duplicate) for r in first] == [(1, False), (2, False), (1, True)]
    again = await backend.append(NS, [_entry(2), NewEntry("yjs:x", None, OpId(0), b"y")])
    assert [(r.seq, r.duplicate) for r in again] == [(2, True), (3, False)]
    assert await backend.head(NS) == 3
    assert [e.seq for e in await backend.read_after(NS, Seq(1), 10)] == [2, 3]
    assert await backend.lookup_op(NS, R, OpId(2)) == 2


async def test_snapshots_move_forward_and_trim_stops_at_them() -> None:
    backend = await _opened()
    await backend.append(NS, [_entry(n) for n in range(1, 6)])
    assert await backend.trim_below(NS, Seq(4)) == 0  # no snapshot covers anything yet
    await backend.write_snapshot(NS, StoredSnapshot(Seq(3), b"s3"))
    await backend.write_snapshot(NS, StoredSnapshot(Seq(2), b"s2"))  # older: ignored
    assert (await backend.read_snapshot(NS)) == StoredSnapshot(Seq(3), b"s3")
    assert await backend.trim_below(NS, Seq(10)) == 3  # only up to the snapshot
    assert [e.seq for e in await backend.read_after(NS, Seq(0), 10)] == [4, 5]
    meta = await backend.open_namespace(NS)
    assert (meta.incarnation, meta.head, meta.trimmed_below) == ("inc", 5, 4)


async def test_a_crash_keeps_durable_appends() -> None:
    backend = await _opened()
    await backend.append(NS, [_entry(1)])
    backend.crash()
    with pytest.raises(BackendError):
        await backend.head(NS)
    await backend.open()
    assert await backend.head(NS) == 1 and backend.durable_head(NS) == 1


async def test_volatile_appends_are_lost_by_a_crash_until_synced() -> None:
    backend = await _opened(durable_appends=False)
    await backend.append(NS, [_entry(1)])
    backend.sync()
    await backend.append(NS, [_entry(2), _entry(3)])
    assert await backend.head(NS) == 3 and backend.durable_head(NS) == 1
    backend.crash()
    await backend.open()
    assert await backend.head(NS) == 1
    assert [e.seq for e in await backend.read_after(NS, Seq(0), 10)] == [1]
    # The lost ops are not remembered as sequenced: a resend is new again.
    assert [(r.seq, r.duplicate) for r in await backend.append(NS, [_entry(2)])] == [(2, False)]


async def test_failing_appends_store_nothing() -> None:
    backend = await _opened()
    backend.fail_appends("disk full")
    with pytest.raises(BackendError, match="disk full"):
        await backend.append(NS, [_entry(1)])
    backend.fail_appends(None)
    assert [r.seq for r in await backend.append(NS, [_entry(1)])] == [1]


async def test_replicas_bind_once_and_record_their_progress() -> None:
    backend = await _opened()
    assert await backend.bind_replica(NS, R, b"k" * 32, 1.0) == b"k" * 32
    assert await backend.bind_replica(NS, R, b"x" * 32, 2.0) == b"k" * 32
    await backend.record_replica(NS, R, Seq(4), '{"a":1}', 3.0)
    await backend.record_replica(NS, R, Seq(5), None, 4.0)
    [record] = await backend.replicas(NS)
    assert (record.applied_seq, record.last_seen, record.heartbeat) == (5, 4.0, '{"a":1}')
    assert await backend.namespaces() == [NS]
