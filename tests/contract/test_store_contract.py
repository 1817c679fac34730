"""One suite for every Store: SqliteStore and MemoryStore, in SYNC and BATCH modes.

Each test gets a ``StoreHarness`` that opens the store under test and can reopen it (a
clean restart). The SQLite BATCH store uses a long batch interval so that nothing becomes
durable until something waits for it: "durable" is then decided by the test, not by timing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtstate._ids import OpId, Seq
from crdtstate.errors import StoreClosedError
from crdtstate.store import (
    Durability,
    MemoryStore,
    OutboxEntry,
    SqliteStore,
    Store,
    open_store,
)

_BATCH_INTERVAL_S = 30.0  # far longer than any test: BATCH commits happen only on demand


class StoreHarness:
    """Opens the store under test and reopens it as a restart would."""

    def __init__(self, kind: str, durability: Durability, tmp_path: Path) -> None:
        self.kind = kind
        self.durability = durability
        self.path = tmp_path / "ns.sqlite3"
        self.store: Store = self._open()

    def _open(self) -> Store:
        if self.kind == "memory":
            return MemoryStore(self.durability, clock=lambda: 1234.5)
        return open_store(self.path, self.durability, batch_interval_s=_BATCH_INTERVAL_S)

    def reopen(self) -> Store:
        self.store.close()
        if isinstance(self.store, MemoryStore):
            self.store.reopen()
        else:
            self.store = self._open()
        return self.store

    def close(self) -> None:
        self.store.close()


@pytest.fixture(
    params=[
        ("sqlite", Durability.SYNC),
        ("sqlite", Durability.BATCH),
        ("memory", Durability.SYNC),
        ("memory", Durability.BATCH),
    ],
    ids=lambda p: f"{p[0]}-{p[1].value}",
)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreHarness]:
    kind, durability = request.param
    h = StoreHarness(kind, durability, tmp_path)
    try:
        yield h
    finally:
        h.close()


def _op(n: int) -> dict[str, Any]:
    return {"field": "karma", "op": "inc", "n": n}


def _append(store: Store, count: int, start: int = 0) -> list[OpId]:
    return [store.append_local(f"u{start + i}".encode(), _op(start + i)) for i in range(count)]


# ------------------------------------------------------------------------------- op ids


def test_op_ids_start_at_one_and_increase_by_one(harness: StoreHarness) -> None:
    assert _append(harness.store, 5) == [1, 2, 3, 4, 5]


def test_op_ids_continue_after_reopen_even_when_everything_was_acked_and_snapshotted(
    harness: StoreHarness,
) -> None:
    store = harness.store
    ids = _append(store, 3)
    for op_id in ids:
        store.ack(op_id, Seq(op_id))
    store.write_snapshot(b"snap")
    store = harness.reopen()
    assert store.outbox_len() == 0
    assert store.load().last_op_id == 3
    assert store.append_local(b"next", _op(9)) == 4


def test_append_is_durable_as_its_mode_promises(harness: StoreHarness) -> None:
    store = harness.store
    ids = _append(store, 3)
    if harness.durability is Durability.SYNC:
        assert store.durable_op_id == ids[-1]
        assert [e.op_id for e in store.outbox()] == ids
    else:
        assert store.durable_op_id == 0
        assert store.outbox() == []
    assert store.outbox_len() == 3
    store.flush()
    assert store.durable_op_id == ids[-1]
    assert [e.op_id for e in store.outbox()] == ids


# ------------------------------------------------------------------------------- outbox


def test_outbox_returns_durable_entries_with_update_op_and_time(harness: StoreHarness) -> None:
    store = harness.store
    ids = _append(store, 3)
    store.flush()
    entries = store.outbox()
    assert [e.op_id for e in entries] == ids
    assert [e.update for e in entries] == [b"u0", b"u1", b"u2"]
    assert [e.op for e in entries] == [_op(0), _op(1), _op(2)]
    assert all(isinstance(e, OutboxEntry) and e.created_at > 0 for e in entries)


def test_outbox_honours_after_and_limit(harness: StoreHarness) -> None:
    store = harness.store
    _append(store, 10)
    store.flush()
    assert [e.op_id for e in store.outbox(limit=3)] == [1, 2, 3]
    assert [e.op_id for e in store.outbox(limit=3, after=OpId(3))] == [4, 5, 6]
    assert [e.op_id for e in store.outbox(after=OpId(8))] == [9, 10]
    assert store.outbox(limit=0) == []
    assert store.outbox(after=OpId(10)) == []


def test_outbox_never_returns_an_entry_beyond_durable_op_id(harness: StoreHarness) -> None:
    store = harness.store
    _append(store, 4)
    durable_before = store.durable_op_id
    entries = store.outbox()
    assert all(e.op_id <= store.durable_op_id for e in entries)
    assert len(entries) >= durable_before


def test_outbox_len_counts_unacked_entries_durable_or_not(harness: StoreHarness) -> None:
    store = harness.store
    _append(store, 4)
    assert store.outbox_len() == 4
    store.flush()
    store.ack(OpId(2), Seq(7))
    assert store.outbox_len() == 3


def test_ack_drops_the_entry_and_is_idempotent(harness: StoreHarness) -> None:
    store = harness.store
    _append(store, 3)
    store.flush()
    store.ack(OpId(2), Seq(10))
    store.ack(OpId(2), Seq(10))
    store.ack(OpId(99), Seq(11))  # unknown: ignored
    assert [e.op_id for e in store.outbox()] == [1, 3]
    assert store.outbox_len() == 2
    store = harness.reopen()
    assert [e.op_id for e in store.outbox()] == [1, 3]
    store.ack(OpId(2), Seq(10))
    assert store.outbox_len() == 2


def test_acked_update_stays_in_the_tail_until_a_snapshot(harness: StoreHarness) -> None:
    store = harness.store
    _append(store, 2)
    store.flush()
    store.ack(OpId(1), Seq(1))
    assert store.load().tail == [b"u0", b"u1"]


def test_outbox_survives_reopen(harness: StoreHarness) -> None:
    _append(harness.store, 3)
    harness.store.flush()
    store = harness.reopen()
    assert [(e.op_id, e.update, e.op) for e in store.outbox()] == [
        (1, b"u0", _op(0)),
        (2, b"u1", _op(1)),
        (3, b"u2", _op(2)),
    ]
    assert store.outbox_len() == 3
    assert store.durable_op_id == 3


# ------------------------------------------------------------------------ tail, snapshot


def test_load_returns_local_and_remote_updates_in_append_order(harness: StoreHarness) -> None:
    store = harness.store
    store.append_local(b"l1", _op(1))
    store.append_remote(b"r1", Seq(5))
    store.append_local(b"l2", _op(2))
    store.append_remote(b"r2", None)
    state = store.load()
    assert state.snapshot is None
    assert state.tail == [b"l1", b"r1", b"l2", b"r2"]
    assert state.last_op_id == 2
    assert state.read_seconds >= 0
    assert harness.reopen().load().tail == [b"l1", b"r1", b"l2", b"r2"]


def test_remote_updates_never_enter_the_outbox(harness: StoreHarness) -> None:
    store = harness.store
    store.append_remote(b"r", Seq(1))
    store.flush()
    assert store.outbox() == []
    assert store.outbox_len() == 0


def test_snapshot_replaces_the_tail_before_it(harness: StoreHarness) -> None:
    store = harness.store
    store.append_remote(b"r1", Seq(1))
    store.append_remote(b"r2", Seq(2))
    store.write_snapshot(b"S1")
    store.append_remote(b"r3", Seq(3))
    state = store.load()
    assert (state.snapshot, state.tail) == (b"S1", [b"r3"])
    state = harness.reopen().load()
    assert (state.snapshot, state.tail) == (b"S1", [b"r3"])


def test_snapshot_keeps_unacked_outbox_entries_with_their_updates(harness: StoreHarness) -> None:
    store = harness.store
    _append(store, 3)
    store.flush()
    store.ack(OpId(1), Seq(1))
    store.write_snapshot(b"S")
    assert store.load().tail == []
    assert [(e.op_id, e.update) for e in store.outbox()] == [(2, b"u1"), (3, b"u2")]
    store = harness.reopen()
    assert [(e.op_id, e.update) for e in store.outbox()] == [(2, b"u1"), (3, b"u2")]
    assert store.load().tail == []
    store.ack(OpId(2), Seq(2))
    assert [e.op_id for e in store.outbox()] == [3]
    assert harness.reopen().load().tail == []


def test_newer_snapshot_wins(harness: StoreHarness) -> None:
    store = harness.store
    store.write_snapshot(b"S1")
    store.append_local(b"u", _op(1))
    store.write_snapshot(b"S2")
    assert store.load().snapshot == b"S2"
    assert harness.reopen().load().snapshot == b"S2"


def test_tail_stats_count_updates_since_the_snapshot(harness: StoreHarness) -> None:
    store = harness.store
    assert store.tail_stats() == (0, 0)
    store.append_local(b"abc", _op(1))
    store.append_remote(b"de", None)
    assert store.tail_stats() == (2, 5)
    store.write_snapshot(b"S")
    assert store.tail_stats() == (0, 0)
    store.append_remote(b"f", None)
    assert store.tail_stats() == (1, 1)
    assert harness.reopen().tail_stats() == (1, 1)


# -------------------------------------------------------------------------- applied seq


def test_applied_seq_is_the_highest_recorded(harness: StoreHarness) -> None:
    store = harness.store
    assert store.load().applied_seq == 0
    store.append_remote(b"r", Seq(4))
    store.note_applied(Seq(9))
    store.note_applied(Seq(6))
    store.append_remote(b"r", None)
    assert store.load().applied_seq == 9
    assert harness.reopen().load().applied_seq == 9


def test_reset_applied_lowers_the_recorded_seq(harness: StoreHarness) -> None:
    """A new relay log restarts numbering; the old maximum must not survive a reopen."""
    store = harness.store
    store.note_applied(Seq(40))
    store.reset_applied(Seq(0))
    store.append_remote(b"r", Seq(3))
    store.flush()
    assert store.load().applied_seq == 3
    assert harness.reopen().load().applied_seq == 3


# ---------------------------------------------------------------------------------- meta


def test_meta_round_trips_and_survives_reopen(harness: StoreHarness) -> None:
    store = harness.store
    assert store.get_meta("replica_id") is None
    store.set_meta("replica_id", "r1")
    store.set_meta("replica_id", "r2")
    store.set_meta("emoji", "é✓\U0001f600")
    assert store.get_meta("replica_id") == "r2"
    store = harness.reopen()
    assert store.get_meta("replica_id") == "r2"
    assert store.get_meta("emoji") == "é✓\U0001f600"


# ------------------------------------------------------------------ listeners, lifecycle


def test_durable_listener_sees_every_advance_up_to_durable_op_id(harness: StoreHarness) -> None:
    seen: list[OpId] = []
    store = harness.store
    store.add_durable_listener(seen.append)
    _append(store, 3)
    store.flush()
    store.append_remote(b"r", Seq(1))
    store.flush()
    assert seen, "listener was never called"
    assert seen == sorted(set(seen))
    assert seen[-1] == store.durable_op_id == 3


def test_a_failing_listener_does_not_stop_durability(harness: StoreHarness) -> None:
    def boom(_: OpId) -> None:
        raise RuntimeError("listener bug")

    harness.store.add_durable_listener(boom)
    _append(harness.store, 2)
    harness.store.flush()
    assert harness.store.durable_op_id == 2


def test_close_is_idempotent_and_later_calls_raise_closed(harness: StoreHarness) -> None:
    store = harness.store
    _append(store, 2)
    store.close()
    store.close()
    with pytest.raises(StoreClosedError):
        store.append_local(b"u", _op(1))
    with pytest.raises(StoreClosedError):
        store.flush()
    with pytest.raises(StoreClosedError):
        store.outbox()
    assert [e.op_id for e in harness.reopen().outbox()] == [1, 2]


def test_close_makes_batch_appends_durable(harness: StoreHarness) -> None:
    _append(harness.store, 3)
    store = harness.reopen()
    assert store.load().tail == [b"u0", b"u1", b"u2"]


def test_flush_with_nothing_pending_returns(harness: StoreHarness) -> None:
    harness.store.flush()
    harness.store.flush(timeout_s=5.0)


def test_store_satisfies_the_protocol(harness: StoreHarness) -> None:
    assert isinstance(harness.store, Store)
    assert isinstance(harness.store, SqliteStore | MemoryStore)
    assert harness.store.durability is harness.durability


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("update", "op", "error"),
    [
        ("text", _op(1), TypeError),
        (None, _op(1), TypeError),
        (b"u", ["not", "a", "mapping"], TypeError),
        (b"u", {"n": math.nan}, TypeError),
        (b"u", {"n": object()}, TypeError),
        (b"u", {"n": (1, 2)}, ValueError),
        (b"u", {1: "int key"}, ValueError),
    ],
)
def test_bad_append_is_refused_and_stores_nothing(
    harness: StoreHarness, update: Any, op: Any, error: type[Exception]
) -> None:
    store = harness.store
    with pytest.raises(error) as info:
        store.append_local(update, op)
    assert str(info.value)
    assert store.outbox_len() == 0
    assert store.tail_stats() == (0, 0)
    assert store.append_local(b"ok", _op(1)) == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.append_remote(b"r", -1),
        lambda s: s.append_remote(b"r", True),
        lambda s: s.append_remote(bytearray(b"r"), "5"),
        lambda s: s.note_applied(2**63),
        lambda s: s.ack("1", 1),
        lambda s: s.ack(1, None),
        lambda s: s.write_snapshot(["S"]),
        lambda s: s.set_meta("k", 5),
        lambda s: s.set_meta("", "v"),
        lambda s: s.set_meta("k", "\ud800"),
        lambda s: s.get_meta(None),
        lambda s: s.outbox(limit=-1),
        lambda s: s.outbox(after=-5),
        lambda s: s.flush(timeout_s=-1),
        lambda s: s.add_durable_listener("not callable"),
    ],
)
def test_bad_arguments_raise_a_clear_error_and_leave_the_store_usable(
    harness: StoreHarness, call: Any
) -> None:
    store = harness.store
    with pytest.raises((TypeError, ValueError)) as info:
        call(store)
    assert str(info.value)
    store.append_local(b"u", _op(1))
    store.flush()
    assert store.load().tail == [b"u"]
    assert store.load().applied_seq == 0


_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_anything = st.recursive(
    _json_leaf | st.binary(max_size=4) | st.tuples(st.integers()),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(op=st.dictionaries(st.text(max_size=6), _anything, max_size=4), update=st.binary())
def test_any_op_is_either_stored_exactly_or_refused(
    harness: StoreHarness, op: dict[str, Any], update: bytes
) -> None:
    store = harness.store
    before = store.outbox_len()
    try:
        op_id = store.append_local(update, op)
    except (TypeError, ValueError) as exc:
        assert str(exc)
        assert store.outbox_len() == before
        return
    store.flush()
    (entry,) = store.outbox(after=OpId(op_id - 1), limit=1)
    assert (entry.op_id, entry.update, entry.op) == (op_id, update, op)
    store.ack(op_id, Seq(op_id))
