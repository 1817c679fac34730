"""Replica: identity, the write path into a real SQLite store, merging, restarts, events."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import crdtstate.replica as replica_module
from crdtstate import (
    Change,
    CrdtStateError,
    Durability,
    InvalidUpdate,
    Replica,
    SchemaError,
    StoreClosedError,
)


def fill(r: Replica[Any]) -> None:
    s: Any = r.state
    s.flag.set(True)
    s.title.set("hello")
    s.hits.inc(2)
    s.karma.inc(5)
    s.karma.dec(1)
    s.followers.add("bob")
    s.followers.add("eve")
    s.followers.remove("eve")
    s.config.set("retries", 3)
    s.memory.append({"said": "hi"})


EXPECTED = {
    "config": {"retries": 3},
    "flag": True,
    "followers": ["bob"],
    "hits": 2,
    "karma": 4,
    "memory": [{"said": "hi"}],
    "title": "hello",
}


def test_identity_is_created_once_and_kept(tmp_path: Path, all_kinds: Any) -> None:
    with Replica.open(tmp_path, "ns", all_kinds) as first:
        replica_id, key = first.replica_id, first.public_key
        signature = first.sign(b"data")
    with Replica.open(tmp_path, "other-ns", all_kinds) as second:
        assert (second.replica_id, second.public_key) == (replica_id, key)
        assert second.namespace == "other-ns"
    assert len(key) == 32 and len(signature) == 64
    with Replica.open(tmp_path / "fixed", "ns", all_kinds, replica_id="agent-1") as fixed:
        assert fixed.replica_id == "agent-1"
        assert repr(fixed) == "<Replica 'agent-1' of 'ns'>"


@pytest.mark.parametrize("namespace", ["", "has space", "../escape", "x" * 129, "-lead"])
def test_bad_namespaces_are_refused_naming_them(tmp_path: Path, namespace: str) -> None:
    with pytest.raises(ValueError, match="invalid namespace"):
        Replica.open(tmp_path, namespace)
    assert not list(tmp_path.glob("*.sqlite3"))


def test_a_bad_durability_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"durability must be one of \['sync', 'batch'\]"):
        Replica.open(tmp_path / "data", "ns", durability="eventually")
    assert not (tmp_path / "data").exists()  # refused before anything was created


@pytest.mark.parametrize("durability", ["sync", "batch"])
def test_a_restart_recovers_the_state(tmp_path: Path, all_kinds: Any, durability: str) -> None:
    with Replica.open(tmp_path, "ns", all_kinds, durability=durability) as r:
        assert r.store.durability is Durability(durability)
        fill(r)
        assert r.to_dict() == EXPECTED
        digest, client_id = r.digest(), r.doc.client_id
    with Replica.open(tmp_path, "ns", all_kinds, durability=durability) as again:
        assert again.to_dict() == EXPECTED
        assert again.digest() == digest
        assert again.recovery_seconds > 0
        assert float(again.store.get_meta("last_recovery_seconds") or 0) > 0
        assert again.doc.client_id != client_id  # a fresh Yjs client id per start
        again.state.hits.inc()
        assert again.state.hits.value == 3
        assert again.violations() == []


def test_two_replicas_in_separate_directories_merge_by_update(
    tmp_path: Path, all_kinds: Any, vector_of: Any
) -> None:
    with (
        Replica.open(tmp_path / "a", "ns", all_kinds) as a,
        Replica.open(tmp_path / "b", "ns", all_kinds) as b,
    ):
        assert a.replica_id != b.replica_id
        fill(a)
        b.state.hits.inc(10)
        b.state.followers.add("zoe")
        b.apply_update(a.export_update(b.state_vector()))
        a.apply_update(b.export_update(a.state_vector()))
        assert vector_of(a) == vector_of(b)
        assert a.digest() == b.digest()
        assert a.state.hits.value == 12
        assert a.state.followers.value == ["bob", "zoe"]
        assert (a.outbox_len(), b.outbox_len()) == (11, 3)  # declaration + own writes only
        b.flush()
        fields = {e.op["field"] for e in b.pending_outbox(100, 0)}  # type: ignore[arg-type]
        assert fields == {"_schema", "hits", "followers"}
    with Replica.open(tmp_path / "b", "ns", all_kinds) as b:
        assert b.state.title.value == "hello"  # merged state survived the restart


def test_each_write_enters_the_outbox_with_its_operation(tmp_path: Path, all_kinds: Any) -> None:
    with Replica.open(tmp_path, "ns", all_kinds) as r:
        start = r.last_op_id
        r.state.karma.inc(3)
        r.state.followers.add("bob")
        assert r.last_op_id == start + 2
        r.flush()
        entries = r.pending_outbox(10, start)
        assert entries[0].op == {"field": "karma", "op": "inc", "n": 3}
        assert entries[1].op["op"] == "add" and entries[1].op["value"] == "bob"
        assert r.outbox_len() == start + 2
        r.on_ack(entries[0].op_id, 1)  # type: ignore[arg-type]
        assert r.outbox_len() == start + 1
        heartbeat = r.heartbeat()
        assert heartbeat["digest"] == r.digest() and heartbeat["outbox"] == start + 1
        assert heartbeat["replica_id"] == r.replica_id


def test_a_refused_update_changes_neither_state_nor_store(tmp_path: Path, all_kinds: Any) -> None:
    with Replica.open(tmp_path, "ns", all_kinds) as r:
        fill(r)
        before = (r.to_dict(), r.state_vector(), r.outbox_len(), r.store.tail_stats())
        with pytest.raises(InvalidUpdate):
            r.apply_update(b"\x05\x06garbage")
        assert (r.to_dict(), r.state_vector(), r.outbox_len(), r.store.tail_stats()) == before


def test_subscribe_reports_local_and_remote_changes(tmp_path: Path, all_kinds: Any) -> None:
    with (
        Replica.open(tmp_path / "a", "ns", all_kinds) as a,
        Replica.open(tmp_path / "b", "ns", all_kinds) as b,
    ):
        seen: list[Change] = []
        unsubscribe = a.subscribe("followers", seen.append)
        a.state.followers.add("bob")
        b.state.followers.add("eve")
        a.apply_update(b.export_update())
        a.state.followers.remove("bob")
        unsubscribe()
        a.state.followers.add("late")
        assert seen == [
            Change("followers", [], ["bob"], local=True),
            Change("followers", ["bob"], ["bob", "eve"], local=False),
            Change("followers", ["bob", "eve"], ["eve"], local=True),
        ]


async def test_watch_yields_local_and_remote_changes(tmp_path: Path, all_kinds: Any) -> None:
    async with Replica.open(tmp_path / "a", "ns", all_kinds) as a:
        other = Replica.open(tmp_path / "b", "ns", all_kinds)
        try:
            changes = a.watch("title")
            pending = asyncio.ensure_future(anext(changes))
            for _ in range(1000):  # the iterator subscribes once its task first runs
                if a.doc.has_subscribers("title"):
                    break
                await asyncio.sleep(0)
            assert a.doc.has_subscribers("title")
            a.state.title.set("local")
            first = await asyncio.wait_for(pending, timeout=10)
            other.apply_update(a.export_update())
            other.state.title.set("remote")  # after seeing "local": it wins
            a.apply_update(other.export_update())
            second = await asyncio.wait_for(anext(changes), timeout=10)
            await changes.aclose()
            assert first == Change("title", "", "local", local=True)
            assert second == Change("title", "local", "remote", local=False)
            a.state.title.set("after close")
            assert not a.doc.has_subscribers("title")
        finally:
            other.close()


def test_a_closed_replica_refuses_writes_without_touching_the_doc(
    tmp_path: Path, all_kinds: Any
) -> None:
    r = Replica.open(tmp_path, "ns", all_kinds)
    r.state.title.set("kept")
    r.close()
    r.close()  # idempotent
    before = r.export_update()
    for write in (
        lambda: r.state.title.set("lost"),
        lambda: r.state.memory.append({"lost": 1}),
        lambda: r.state.hits.inc(),
        lambda: r.state.followers.add("x"),
        lambda: r.apply_update(before),
        lambda: r.flush(),
        lambda: r.declare("x", "gcounter"),
    ):
        with pytest.raises(StoreClosedError, match="closed"):
            write()
    assert r.export_update() == before
    assert r.state.title.value == "kept"


def test_periodic_snapshots_keep_the_tail_short(
    tmp_path: Path, all_kinds: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica_module, "SNAPSHOT_EVERY_UPDATES", 25)
    with Replica.open(tmp_path, "ns", all_kinds) as r:
        longest = 0
        for i in range(200):
            r.state.memory.append({"i": i})
            r.state.hits.inc()
            longest = max(longest, r.store.tail_stats()[0])
        assert longest < 25
        r.flush()
        expected = r.to_dict()
    with Replica.open(tmp_path, "ns", all_kinds) as again:
        assert again.to_dict() == expected
        assert len(again.state.memory) == 200
        assert again.store.tail_stats()[0] < 25


def test_declare_and_field_at_run_time(tmp_path: Path) -> None:
    r: Replica[Any]
    with Replica.open(tmp_path, "ns") as r:
        score: Any = r.declare("score", "pncounter", "int")
        score.dec(2)
        assert score.value == -2
        assert r.field("score") is score
        with pytest.raises(SchemaError, match="already declared as pncounter"):
            r.declare("score", "orset", "str")
    with Replica.open(tmp_path, "ns") as r:
        assert r.to_dict() == {"score": -2}


def test_relay_calls_need_a_relay(tmp_path: Path, all_kinds: Any) -> None:
    with Replica.open(tmp_path, "ns", all_kinds) as r:
        assert r.sync_client is None
        with pytest.raises(CrdtStateError, match="no relay configured"):
            r.wait_synced(timeout_s=1)
