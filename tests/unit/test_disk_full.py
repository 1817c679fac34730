"""A full disk under a replica: the store, the write path and the sync session.

The disk fills for real as far as SQLite can tell: ``PRAGMA max_page_count`` caps the
store's file at its current size, so the next commit that needs a page fails with
SQLITE_FULL exactly as on a full file system; raising the cap frees the space again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crdtstate import Durability, Replica
from crdtstate.errors import StoreError, StoreFullError
from crdtstate.store import MemoryStore, SqliteStore, Store, open_store
from crdtstate.sync import wire
from crdtstate.sync.session import ConnectionState, StoreFailed, SyncSession, SyncSettings
from tests.conftest import AllKinds

_BIG = "x" * 6000  # more than a page: a write of it needs new pages
_OP = {"field": "title", "op": "set"}
_SETTINGS = SyncSettings(resend_delay_s=0.5, instance="test")


def _sqlite(store: Store) -> SqliteStore:
    assert isinstance(store, SqliteStore)
    return store


def fill_disk(store: Store) -> None:
    """Cap the store's file at its current size (the next new page is SQLITE_FULL)."""
    sqlite = _sqlite(store)
    sqlite.flush()
    conn = sqlite._wconn
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")


def free_disk(store: Store) -> None:
    """Lift the cap: the store's retries succeed from now on."""
    _sqlite(store)._wconn.execute("PRAGMA max_page_count = 1073741823")


def make_failing(replica: Replica[Any]) -> None:
    """Fill the disk and make the store notice: one large write fails to commit."""
    fill_disk(replica.store)
    with pytest.raises(StoreFullError):
        replica.state.memory.append({"blob": _BIG})
        replica.flush(10)


# -- the store --------------------------------------------------------------------------------


def test_sqlite_full_is_store_full_error_kept_retried_and_refusing_new_writes(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "s.sqlite3", Durability.SYNC)
    try:
        store.append_local(b"small", _OP)
        fill_disk(store)
        with pytest.raises(StoreFullError, match="SQLITE_FULL"):
            store.append_local(_BIG.encode(), _OP)
        assert store.outbox_len() == 2  # queued: kept and retried, not lost
        with pytest.raises(StoreFullError, match="SQLITE_FULL"):
            store.check_writable()
        with pytest.raises(StoreFullError):
            store.append_remote(_BIG.encode(), None)
        with pytest.raises(StoreFullError):
            store.append_local(b"refused", _OP)
        assert store.outbox_len() == 2  # refused before anything was queued
        free_disk(store)
        store.flush(10)
        store.check_writable()
        assert [e.update for e in store.outbox()] == [b"small", _BIG.encode()]
    finally:
        store.close()


def test_memory_store_full_disk_and_no_error_without_a_write_to_retry() -> None:
    store = MemoryStore(Durability.BATCH)
    store.fail_commits("disk full", full=True)
    store.flush()  # nothing pending: nothing fails, no error sticks
    store.check_writable()
    store.append_local(b"u1", _OP)
    with pytest.raises(StoreFullError, match="disk full"):
        store.flush()
    with pytest.raises(StoreFullError):
        store.check_writable()
    store.fail_commits(None)
    store.flush()
    store.check_writable()


# -- the local write path ---------------------------------------------------------------------


def test_local_write_on_a_full_disk_raises_and_is_neither_lost_nor_half_applied(
    tmp_path: Path,
) -> None:
    with Replica.open(tmp_path, "ns", AllKinds, durability="sync") as r:
        s: Any = r.state
        s.title.set("before")
        fill_disk(r.store)
        # The write that meets the full disk: SYNC queued it, the store keeps retrying it.
        with pytest.raises(StoreFullError, match=r"local write not durable.*SQLITE_FULL"):
            s.memory.append({"blob": _BIG})
        outbox, sv, digest = r.outbox_len(), r.state_vector(), r.digest()
        # Later writes are refused before the doc changes.
        with pytest.raises(StoreFullError, match="SQLITE_FULL"):
            s.title.set(_BIG)
        with pytest.raises(StoreFullError):
            s.karma.inc(1)
        with pytest.raises(StoreFullError):
            r.import_update(r.export_update())
        assert s.title.value == "before"
        assert (r.outbox_len(), r.state_vector(), r.digest()) == (outbox, sv, digest)
        free_disk(r.store)
        r.flush(10)
        s.title.set("after")
        expected = r.to_dict()
    with Replica.open(tmp_path, "ns", AllKinds) as again:
        assert again.to_dict() == expected
        assert again.to_dict()["memory"] == [{"blob": _BIG}]
        assert again.outbox_len() == outbox + 1  # the write on the full disk, then "after"


def test_a_write_the_store_refuses_after_the_doc_changed_is_stored_before_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The window between the check before the doc changes and the append: the store's
    # writer thread reports its first failing commit in between. Widened here by letting
    # the check pass.
    with Replica.open(tmp_path, "ns", AllKinds, durability="batch") as r:
        s: Any = r.state
        make_failing(r)
        monkeypatch.setattr(r.store, "check_writable", lambda: None)
        before = r.outbox_len()
        with pytest.raises(StoreFullError, match="applied in memory"):
            s.title.set("kept")
        assert s.title.value == "kept"
        assert r.outbox_len() == before  # not in the store yet ...
        monkeypatch.undo()
        with pytest.raises(StoreFullError):
            s.karma.inc(2)  # ... and refused writes do not overtake it
        free_disk(r.store)
        r.flush(10)  # the store's retry, then the kept write
        assert [e.op["field"] for e in r.store.outbox()][-1] == "title"
        s.karma.inc(2)
        r.flush(10)
        expected = r.to_dict()
    with Replica.open(tmp_path, "ns", AllKinds) as again:
        assert again.to_dict() == expected
        assert again.to_dict()["title"] == "kept"


# -- the sync session -------------------------------------------------------------------------


def _updates(tmp_path: Path, count: int) -> tuple[list[bytes], dict[str, Any]]:
    """``count`` Yjs updates of another replica (large ones), and its final state."""
    updates = []
    with Replica.open(tmp_path / "src", "ns", AllKinds, store=MemoryStore()) as src:
        s: Any = src.state
        for i in range(count):
            sv = src.state_vector()
            s.memory.append({"n": i, "blob": _BIG})
            updates.append(src.export_update(sv))
        return updates, src.to_dict()


def relayed(replica: Replica[Any]) -> list[Any]:
    """The log entries that came from the relay (not the local one ``make_failing`` wrote)."""
    return [entry for entry in replica.to_dict()["memory"] if "n" in entry]


def _frames(*frames: Any) -> list[bytes]:
    return [wire.encode(frame) for frame in frames]


def _hello(frames: list[bytes]) -> wire.Hello:
    hellos = [f for f in map(wire.decode, frames) if isinstance(f, wire.Hello)]
    assert len(hellos) == 1, hellos
    return hellos[0]


def test_session_does_not_apply_or_claim_what_the_store_refuses_and_catches_up_after(
    tmp_path: Path,
) -> None:
    updates, expected = _updates(tmp_path, 4)
    data = tmp_path / "b"
    with Replica.open(data, "ns", AllKinds) as r:
        session = SyncSession(r, _SETTINGS)
        session.connection_made(0.0)
        for frame in _frames(
            wire.Welcome(wire.PROTOCOL_VERSION, wire.Seq(0), "inc-1"),
            wire.Broadcast(wire.Seq(1), "src", updates[0]),
        ):
            session.receive(frame, 0.0)
        assert session.applied_seq == 1 and session.state is ConnectionState.LIVE
        make_failing(r)  # seq 1 is still queued in the store, retried
        digest = r.digest()
        # Seq 2 arrives on a full disk: refused, not applied, not claimed, not raised.
        batch = wire.BroadcastBatch(
            (
                wire.Broadcast(wire.Seq(2), "src", updates[1]),
                wire.Broadcast(wire.Seq(3), "src", updates[2]),
            )
        )
        assert session.receive(wire.encode(batch), 1.0) == []
        assert session.applied_seq == 1 and r.applied_seq == 1
        assert r.digest() == digest
        assert isinstance(session.store_error, StoreFullError)
        assert "SQLITE_FULL" in (session.last_error or "")
        events = session.events()
        assert len(events) == 1 and isinstance(events[0], StoreFailed)
        assert isinstance(events[0].error, StoreFullError)
        # What follows is dropped: no hello storm while the disk is full.
        late = wire.Broadcast(wire.Seq(4), "src", updates[3])
        assert session.receive(wire.encode(late), 1.1) == []
        assert session.head_seq == 4 and not session.caught_up()
        assert not any(isinstance(wire.decode(f), wire.Hello) for f in session.tick(1.2))
        # Space is back: after resend_delay_s the session asks from what it applied.
        free_disk(r.store)
        r.flush(10)
        hello = _hello(session.tick(1.6))
        assert hello.last_seq == 1
        catch_up = _frames(
            wire.Welcome(wire.PROTOCOL_VERSION, wire.Seq(4), "inc-1"),
            *(wire.Broadcast(wire.Seq(n + 1), "src", updates[n]) for n in range(1, 4)),
        )
        for frame in catch_up:
            session.receive(frame, 2.0)
        assert session.caught_up() and session.applied_seq == 4
        assert session.store_error is None
        assert relayed(r) == expected["memory"]
        r.flush(10)
    with Replica.open(data, "ns", AllKinds) as again:
        assert again.applied_seq == 4
        assert relayed(again) == expected["memory"]


def test_session_reconnect_while_the_disk_is_full_retries_from_applied_seq(
    tmp_path: Path,
) -> None:
    updates, expected = _updates(tmp_path, 2)
    with Replica.open(tmp_path / "b", "ns", AllKinds) as r:
        session = SyncSession(r, _SETTINGS)
        session.connection_made(0.0)
        session.receive(wire.encode(wire.Welcome(wire.PROTOCOL_VERSION, wire.Seq(0), "i")), 0.0)
        make_failing(r)
        snapshot = wire.Snapshot(wire.Seq(2), r.export_update(None))
        session.receive(wire.encode(wire.Broadcast(wire.Seq(1), "src", updates[0])), 0.1)
        session.receive(wire.encode(snapshot), 0.1)  # a refused snapshot claims nothing
        assert session.applied_seq == 0
        session.connection_lost("reset")
        free_disk(r.store)
        r.flush(10)
        assert _hello(session.connection_made(0.2)).last_seq == 0
        for frame in _frames(
            wire.Welcome(wire.PROTOCOL_VERSION, wire.Seq(2), "i"),
            wire.Broadcast(wire.Seq(1), "src", updates[0]),
            wire.Broadcast(wire.Seq(2), "src", updates[1]),
        ):
            session.receive(frame, 0.3)
        assert session.caught_up() and session.applied_seq == 2
        assert relayed(r) == expected["memory"]


def test_session_relay_incarnation_not_saved_on_a_full_disk_is_saved_later(
    tmp_path: Path,
) -> None:
    with Replica.open(tmp_path, "ns", AllKinds) as r:
        make_failing(r)
        session = SyncSession(r, _SETTINGS)
        session.connection_made(0.0)
        welcome = wire.Welcome(wire.PROTOCOL_VERSION, wire.Seq(0), "inc-2")
        session.receive(wire.encode(welcome), 0.0)  # set_meta refused: not raised
        assert session.state is ConnectionState.LIVE
        assert isinstance(session.store_error, StoreError)
        assert r.relay_incarnation == ""
        session.tick(0.1)
        assert r.relay_incarnation == ""
        free_disk(r.store)
        r.flush(10)
        session.tick(0.2)
        assert r.relay_incarnation == "inc-2"
        assert session.store_error is None
