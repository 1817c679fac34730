"""MemoryStore beyond the shared contract: crashes, injected commit failures, determinism."""

from __future__ import annotations

from typing import Any

import pytest

from crdtstate._ids import OpId, Seq
from crdtstate.errors import StoreError
from crdtstate.store import Durability, MemoryStore


def _op(n: int) -> dict[str, Any]:
    return {"field": "karma", "op": "inc", "n": n}


def test_crash_loses_pending_batch_writes_and_keeps_flushed_ones() -> None:
    store = MemoryStore(Durability.BATCH)
    store.append_local(b"a", _op(1))
    store.flush()
    store.append_local(b"b", _op(2))
    store.append_remote(b"r", Seq(3))
    assert store.pending_count() == 2
    store.crash()
    state = store.load()
    assert state.tail == [b"a"]
    assert state.applied_seq == 0
    assert state.last_op_id == 1
    assert store.outbox_len() == 1
    # The lost op id was never durable, so it is handed out again.
    assert store.append_local(b"b2", _op(2)) == 2


def test_crash_keeps_every_sync_append() -> None:
    store = MemoryStore(Durability.SYNC)
    ids = [store.append_local(f"u{i}".encode(), _op(i)) for i in range(3)]
    store.crash()
    assert [e.op_id for e in store.outbox()] == ids


def test_crash_loses_a_pending_ack_so_the_entry_is_resent() -> None:
    store = MemoryStore(Durability.BATCH)
    store.append_local(b"a", _op(1))
    store.flush()
    store.ack(OpId(1), Seq(1))
    assert store.outbox_len() == 0
    store.crash()
    assert [e.op_id for e in store.outbox()] == [1]


def test_crash_loses_a_pending_snapshot_and_keeps_the_old_one() -> None:
    store = MemoryStore(Durability.BATCH)
    store.write_snapshot(b"S1")
    store.append_remote(b"r", None)
    store.flush()
    store.write_snapshot(b"S2")
    assert store.tail_stats() == (0, 0)
    store.crash()
    assert (store.load().snapshot, store.load().tail) == (b"S1", [b"r"])
    assert store.tail_stats() == (1, 1)


def test_crash_drops_listeners_of_the_dead_process() -> None:
    seen: list[OpId] = []
    store = MemoryStore(Durability.SYNC)
    store.add_durable_listener(seen.append)
    store.append_local(b"a", _op(1))
    store.crash()
    store.append_local(b"b", _op(2))
    assert seen == [1]


def test_commit_pending_calls_listeners_inline_once_per_advance() -> None:
    seen: list[OpId] = []
    store = MemoryStore(Durability.BATCH)
    store.add_durable_listener(seen.append)
    store.append_local(b"a", _op(1))
    store.append_local(b"b", _op(2))
    assert seen == []
    store.commit_pending()
    store.commit_pending()
    assert seen == [2]


def test_failed_commits_are_reported_and_retried_not_lost() -> None:
    store = MemoryStore(Durability.BATCH)
    store.append_local(b"u1", _op(1))
    store.fail_commits("disk full")
    with pytest.raises(StoreError, match="disk full"):
        store.flush()
    with pytest.raises(StoreError, match="disk full"):
        store.append_local(b"u2", _op(2))
    assert store.outbox_len() == 1
    store.fail_commits(None)
    store.flush()
    assert [e.op_id for e in store.outbox()] == [1]
    assert store.append_local(b"u2", _op(2)) == 2


def test_sync_append_during_failure_raises_but_stays_queued() -> None:
    store = MemoryStore(Durability.SYNC)
    store.fail_commits("read-only file system")
    with pytest.raises(StoreError, match="read-only"):
        store.append_local(b"u1", _op(1))
    store.fail_commits(None)
    store.flush()
    assert [e.update for e in store.outbox()] == [b"u1"]


def test_close_while_commits_fail_says_how_many_writes_are_lost() -> None:
    store = MemoryStore(Durability.BATCH)
    store.append_local(b"u1", _op(1))
    store.append_remote(b"r", None)
    store.fail_commits("disk full")
    with pytest.raises(StoreError, match="2 writes not durable"):
        store.close()
    store.close()  # idempotent even after a failed close
    store.fail_commits(None)
    store.reopen()
    assert store.load().tail == []


def test_reopen_needs_close_first() -> None:
    store = MemoryStore()
    with pytest.raises(StoreError, match="close"):
        store.reopen()


def test_without_a_clock_everything_is_deterministic() -> None:
    def run() -> list[Any]:
        store = MemoryStore(Durability.BATCH)
        for i in range(5):
            store.append_local(f"u{i}".encode(), _op(i))
            store.append_remote(b"r", Seq(i + 1))
        store.write_snapshot(b"S")
        state = store.load()
        return [state, store.outbox(), store.tail_stats()]

    first, second = run(), run()
    assert first == second
    assert first[0].read_seconds == 0.0
    assert all(e.created_at == 0.0 for e in first[1])


def test_a_given_clock_stamps_outbox_entries() -> None:
    ticks = iter([10.0, 20.0])
    store = MemoryStore(Durability.SYNC, clock=lambda: next(ticks))
    store.append_local(b"a", _op(1))
    store.append_local(b"b", _op(2))
    assert [e.created_at for e in store.outbox()] == [10.0, 20.0]


def test_unknown_durability_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="durability"):
        MemoryStore("eventually")  # type: ignore[arg-type]
