"""GCounter and PNCounter: one slot per replica, value = sum, bad steps refused."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Doc, Map

from crdtstate import ValidationError
from crdtstate.crdt.counter import MAX_STEP


def sync(*docs: Any) -> None:
    for a in docs:
        for b in docs:
            if a is not b:
                b.apply_update(a.export_update(b.state_vector()))


def test_gcounter_sums_every_replicas_increments(make_doc: Any) -> None:
    a, b, c = make_doc("a"), make_doc("b"), make_doc("c")
    a.state.hits.inc()
    a.state.hits.inc(4)
    b.state.hits.inc(10)
    assert a.state.hits.value == 5 and b.state.hits.value == 10
    sync(a, b, c)
    for doc in (a, b, c):
        assert doc.state.hits.value == 15
        assert doc.state.hits.by_replica() == {"a": 5, "b": 10}
    assert set(a.root_map("hits").keys()) == {"a", "b"}


def test_pncounter_keeps_increments_and_decrements_apart(make_doc: Any) -> None:
    a, b = make_doc("a"), make_doc("b")
    a.state.karma.inc(3)
    a.state.karma.dec(5)
    b.state.karma.dec(1)
    sync(a, b)
    assert a.state.karma.value == b.state.karma.value == -3
    assert a.state.karma.by_replica() == {"a": -2, "b": -1}
    assert set(a.root_map("karma").keys()) == {"+a", "-a", "-b"}
    assert a.to_dict()["karma"] == -3


def test_concurrent_increments_from_the_same_start_all_count(make_doc: Any) -> None:
    docs = [make_doc(name) for name in "abcd"]
    sync(*docs)
    for i, doc in enumerate(docs):
        for _ in range(i + 1):
            doc.state.hits.inc(2)
            doc.state.karma.dec()
    sync(*docs)
    assert {doc.state.hits.value for doc in docs} == {2 * (1 + 2 + 3 + 4)}
    assert {doc.state.karma.value for doc in docs} == {-(1 + 2 + 3 + 4)}
    assert len({doc.digest() for doc in docs}) == 1


def test_a_new_process_of_a_replica_continues_its_slot(make_doc: Any) -> None:
    old = make_doc("a")
    old.state.hits.inc(7)
    new = make_doc("a", client_id=1234)  # same replica id, fresh Yjs client id
    new.apply_update(old.export_update())
    new.state.hits.inc(1)
    other = make_doc("b")
    other.apply_update(old.export_update())
    other.apply_update(new.export_update())
    assert new.state.hits.value == other.state.hits.value == 8


@pytest.mark.parametrize(
    "step",
    [0, -1, MAX_STEP + 1, 1.0, True, "1", None, 10**5000],
    ids=["zero", "negative", "too-big", "float", "bool", "str", "none", "huge"],
)
@pytest.mark.parametrize("method", ["hits.inc", "karma.inc", "karma.dec"])
def test_bad_steps_are_refused_naming_the_field(make_doc: Any, method: str, step: Any) -> None:
    doc = make_doc("a")
    field_name, op = method.split(".")
    before = doc.state_vector()
    with pytest.raises(ValidationError) as info:
        getattr(getattr(doc.state, field_name), op)(step)
    assert info.value.field == field_name
    assert f"{op} takes an integer from 1 to {MAX_STEP}" in str(info.value)
    assert doc.state_vector() == before


def test_the_largest_step_is_accepted(make_doc: Any) -> None:
    doc = make_doc("a")
    doc.state.hits.inc(MAX_STEP)
    doc.state.hits.inc(MAX_STEP)
    assert doc.state.hits.value == 2 * MAX_STEP


def test_foreign_counter_slots_are_skipped_and_reported(make_doc: Any) -> None:
    raw: Doc[Any] = Doc(client_id=600)
    hits = raw.get("hits", type=Map)
    hits["x"] = "-4"  # negative total
    hits["y"] = 12  # a number, not canonical JSON text
    karma = raw.get("karma", type=Map)
    karma["x"] = "3"  # no +/- prefix
    karma["+y"] = "2"  # fine
    doc = make_doc("a")
    doc.apply_update(raw.get_update())
    assert doc.state.hits.value == 0 and doc.state.karma.value == 2
    assert {(v.field, v.key) for v in doc.violations()} == {
        ("hits", "x"),
        ("hits", "y"),
        ("karma", "x"),
    }
    doc.state.hits.inc()
    assert doc.state.hits.value == 1


def test_a_garbage_own_slot_restarts_from_zero(make_doc: Any) -> None:
    raw: Doc[Any] = Doc(client_id=601)
    raw.get("hits", type=Map)["a"] = "garbage"
    doc = make_doc("a")
    doc.apply_update(raw.get_update())
    doc.state.hits.inc(2)
    assert doc.state.hits.value == 2
    assert doc.violations() == []  # the garbage slot was overwritten


def test_own_slot_total_survives_a_restart(tmp_path: Any) -> None:
    """The own-slot total is cached for speed; after reopening, increments continue from
    the recovered total instead of restarting the slot at zero."""
    from crdtstate import PNCounter, Replica, Schema

    class Karma(Schema):
        karma = PNCounter()

    with Replica.open(tmp_path, "ns", Karma) as replica:
        replica.state.karma.inc(5)
        replica.state.karma.dec(2)
    with Replica.open(tmp_path, "ns", Karma) as replica:
        replica.state.karma.inc(1)
        assert replica.state.karma.value == 4
        assert list(replica.state.karma.by_replica().values()) == [4]
    with Replica.open(tmp_path, "ns", Karma) as replica:
        assert replica.state.karma.value == 4


def test_own_slot_cache_follows_a_merged_older_incarnation(make_doc: Any) -> None:
    """A remote update carrying this replica's own slot (state restored from a peer)
    invalidates the cached total, so the next increment builds on the merged slot."""
    a, twin = make_doc("a"), make_doc("a")
    twin.state.hits.inc(7)
    a.state.hits.inc(1)
    a.apply_update(twin.export_update(a.state_vector()))
    merged = a.state.hits.value
    a.state.hits.inc(1)
    assert a.state.hits.value == merged + 1
